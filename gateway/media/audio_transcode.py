"""AAC to Opus, for WebRTC viewers of RTMP and RTSP sources (browsers do not take AAC).

The one place skyrelay transcodes, and only audio: one decoder and one encoder per stream,
shared by every viewer. Video is never touched. PyAV's FFmpeg does the work; a frame of
AAC (1024 samples) costs well under a millisecond to decode, resample and re-encode.
"""

from __future__ import annotations

from fractions import Fraction

import av
import av.audio.resampler

from gateway.log import get_logger
from gateway.media.stream import Codec

log = get_logger(__name__)

OPUS = Codec("opus", 48000, {"minptime": "10", "useinbandfec": "1"})
OPUS_TIME_BASE = Fraction(1, 48000)


class AacToOpus:
    """Decode raw AAC frames (after their AudioSpecificConfig) and encode 20 ms Opus
    packets at 48 kHz stereo, timestamped on a 48 kHz clock from the source's times."""

    def __init__(self, audio_specific_config: bytes, bit_rate: int = 64_000) -> None:
        self.decoder = av.CodecContext.create("aac", "r")
        self.decoder.extradata = audio_specific_config
        self.encoder = av.CodecContext.create("libopus", "w")
        self.encoder.sample_rate = 48000
        self.encoder.layout = "stereo"
        self.encoder.format = "s16"
        self.encoder.bit_rate = bit_rate
        self.encoder.time_base = OPUS_TIME_BASE
        self.encoder.open()
        self.resampler = av.audio.resampler.AudioResampler(format="s16", layout="stereo", rate=48000)
        self._next_pts: int | None = None  # of the next sample into the encoder
        self._out_pts: int | None = None  # of the next Opus packet out (from 0-based encoder delay)
        self.failures = 0

    def transcode(self, frame: bytes, pts_ms: int) -> list[tuple[bytes, int]]:
        """Opus packets (data, pts at 48 kHz) for one AAC frame; [] while the encoder fills
        its first 20 ms, or for a frame the decoder rejects (counted, logged once)."""
        try:
            decoded = self.decoder.decode(av.Packet(frame))
        except av.error.FFmpegError as exc:
            self.failures += 1
            if self.failures == 1:
                log.warning("aac_frame_undecodable", reason=str(exc))
            return []
        out: list[tuple[bytes, int]] = []
        for audio in decoded:
            for resampled in self.resampler.resample(audio):
                if self._next_pts is None:
                    self._next_pts = self._out_pts = pts_ms * 48
                resampled.pts, resampled.time_base = self._next_pts, OPUS_TIME_BASE
                self._next_pts += resampled.samples
                for packet in self.encoder.encode(resampled):
                    # Our own packet clock: the encoder's pts start negative (its delay).
                    assert self._out_pts is not None
                    out.append((bytes(packet), self._out_pts))
                    self._out_pts += packet.duration or 960
        return out
