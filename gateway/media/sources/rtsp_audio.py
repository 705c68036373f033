"""An RTSP audio track into a Stream, for publishers (ANNOUNCE/RECORD) and pulls alike:
Opus, PCMU and PCMA relayed as they are; AAC, which WebRTC cannot carry, transcoded to
Opus once for every viewer (the only transcoding, audio only)."""

from __future__ import annotations

from fractions import Fraction

from gateway.media.audio_transcode import OPUS, OPUS_TIME_BASE, AacToOpus
from gateway.media.rtsp.record import AudioUnit, PushTrack
from gateway.media.stream import Codec, MediaFrame, Stream


class RtspAudioFeed:
    def __init__(self, track: PushTrack) -> None:
        self.transcoder: AacToOpus | None = None
        if track.aac_config is not None:
            self.transcoder = AacToOpus(track.aac_config)
            self.codec = OPUS
        elif track.audio_codec is not None:
            self.codec = Codec(track.audio_codec, track.clock_rate)
        else:
            raise ValueError(f"audio track {track.encoding!r} is not relayed")
        self._time_base = Fraction(1, track.clock_rate)
        self.frames = 0  # pushed to the stream

    def push(self, stream: Stream, unit: AudioUnit) -> None:
        if self.transcoder is not None:
            pts_ms = unit.timestamp * 1000 // unit.clock_rate
            for data, pts in self.transcoder.transcode(unit.data, pts_ms):
                stream.push(MediaFrame("audio", "opus", data, pts, OPUS_TIME_BASE, True))
                self.frames += 1
        else:
            stream.push(MediaFrame("audio", unit.codec, unit.data, unit.timestamp, self._time_base, True))
            self.frames += 1
