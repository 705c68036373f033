"""Audio transcoding, the only transcoding skyrelay does: AAC to Opus for WebRTC viewers of
RTMP and RTSP sources (browsers do not take AAC), and Opus, PCMU or PCMA to AAC for RTMP
republishing (RTMP servers take AAC, FLV carries neither Opus nor G.711).

Audio only: video is never touched. `AacToOpus` is one decoder and one encoder per stream,
shared by every viewer; `ToAac` one per republish connection. PyAV's FFmpeg does the work;
a frame of audio costs well under a millisecond to decode, resample and re-encode.
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


AAC_RATE = 48000
AAC_BIT_RATE = 128_000
AAC_TIME_BASE = Fraction(1, AAC_RATE)
AAC_FRAME_SAMPLES = 1024
# What the stream's audio is decoded with, by codec name (lower case): FFmpeg decoder, and
# for G.711 the rate and layout RTP implies (its packets do not say).
AAC_SOURCES = {
    "opus": ("opus", 48000, "stereo"),
    "pcmu": ("pcm_mulaw", 8000, "mono"),
    "pcma": ("pcm_alaw", 8000, "mono"),
}
# A source timestamp this close to the samples counted so far is rounding, not a gap: audio
# stays continuous. Up to MAX_SILENCE missing (packet loss, Opus DTX) is filled with silence
# so the audio stays in time with the video; a larger jump restarts the timeline there.
JITTER = AAC_RATE // 50  # 20 ms
MAX_SILENCE = AAC_RATE  # 1 s


class AudioTranscodeError(ValueError):
    """A frame that could not be transcoded (its codec, or its data)."""


def aac_transcodable(codec: str) -> bool:
    """Whether `ToAac` takes audio of ``codec`` (as a Stream names it)."""
    return codec.lower() in AAC_SOURCES


class ToAac:
    """Decode Opus, PCMU or PCMA frames and encode AAC-LC at 48 kHz stereo, timestamped on a
    48 kHz clock from the source's times. The source codec may change from one frame to the
    next (a new publisher): the encoder, and so the AudioSpecificConfig, stay the same."""

    channels = 2

    def __init__(self, bit_rate: int = AAC_BIT_RATE) -> None:
        self.bit_rate = bit_rate
        self.encoder = self._open_encoder()
        self.audio_specific_config = bytes(self.encoder.extradata or b"")
        self.resampler: av.audio.resampler.AudioResampler | None = None
        self._input: tuple[str, str, int] | None = None  # format, layout, rate the resampler takes
        self.codec: str | None = None
        self.decoder: av.AudioCodecContext | None = None
        self._next_pts: int | None = None  # of the next sample into the encoder, at 48 kHz

    def _open_encoder(self) -> av.AudioCodecContext:
        encoder = av.CodecContext.create("aac", "w")
        encoder.sample_rate = AAC_RATE
        encoder.layout = "stereo"
        encoder.format = "fltp"
        encoder.bit_rate = self.bit_rate
        encoder.time_base = AAC_TIME_BASE
        encoder.open()
        return encoder

    def transcode(self, codec: str, frame: bytes, pts: int, time_base: Fraction) -> list[tuple[bytes, int]]:
        """Raw AAC frames (data, pts at 48 kHz) for one frame of ``codec``; [] while the
        encoder fills its first 1024 samples. The first AAC frame is stamped 1024 samples
        before the first sample in: it holds the encoder's priming, which FLV cannot tell a
        player to skip, so the source's audio plays at the source's times. Raises
        AudioTranscodeError for a codec it cannot decode or a frame the decoder rejects."""
        decoder = self._decoder(codec)
        if not frame:
            return []  # an empty packet would tell the decoder the stream ended
        try:
            decoded = decoder.decode(av.Packet(frame))
        except av.error.FFmpegError as exc:
            raise AudioTranscodeError(f"{codec} frame undecodable: {exc}") from None
        start = round(pts * time_base * AAC_RATE)
        out: list[tuple[bytes, int]] = []
        if self._next_pts is None:
            self._next_pts = start
        elif not -JITTER <= start - self._next_pts <= JITTER:
            if 0 < start - self._next_pts <= MAX_SILENCE:
                out += self._encode(silence(start - self._next_pts))
            else:
                out += self._restart(start)
        for audio in decoded:
            for resampled in self._resample(audio):
                out += self._encode(resampled)
        return out

    def _decoder(self, codec: str) -> av.AudioCodecContext:
        if codec == self.codec and self.decoder is not None:
            return self.decoder
        source = AAC_SOURCES.get(codec.lower())
        if source is None:
            raise AudioTranscodeError(f"no decoder for {codec} audio")
        name, rate, layout = source
        decoder = av.CodecContext.create(name, "r")
        assert isinstance(decoder, av.AudioCodecContext)  # an audio codec's context
        decoder.sample_rate, decoder.layout = rate, layout
        self.codec, self.decoder = codec, decoder
        return decoder

    def _resample(self, audio: av.AudioFrame) -> list[av.AudioFrame]:
        """To the encoder's format; a resampler is made for what the decoder gives, anew
        when that changes (another codec, another channel count)."""
        shape = (audio.format.name, audio.layout.name, audio.sample_rate)
        if self.resampler is None or shape != self._input:
            self.resampler = av.audio.resampler.AudioResampler(format="fltp", layout="stereo", rate=AAC_RATE)
            self._input = shape
        audio.pts = None  # stamped by `_encode`, from the samples counted
        return self.resampler.resample(audio)

    def _encode(self, audio: av.AudioFrame) -> list[tuple[bytes, int]]:
        assert self._next_pts is not None
        audio.pts, audio.time_base = self._next_pts, AAC_TIME_BASE
        self._next_pts += audio.samples
        return self._packets(audio)

    def _restart(self, start: int) -> list[tuple[bytes, int]]:
        """The source jumped: the samples buffered so far end the old timeline, a new
        encoder starts the new one at ``start``."""
        out = self._packets(None)  # flush
        self.encoder = self._open_encoder()
        self._next_pts = start
        return out

    def _packets(self, audio: av.AudioFrame | None) -> list[tuple[bytes, int]]:
        # The encoder cuts 1024-sample frames and stamps them from our pts, less its priming.
        packets = self.encoder.encode(audio)
        return [(bytes(packet), packet.pts) for packet in packets if packet.pts is not None]


def silence(samples: int) -> av.AudioFrame:
    """``samples`` of silence in the AAC encoder's format."""
    audio = av.AudioFrame(format="fltp", layout="stereo", samples=samples)
    for plane in audio.planes:
        plane.update(bytes(plane.buffer_size))
    audio.sample_rate = AAC_RATE
    return audio
