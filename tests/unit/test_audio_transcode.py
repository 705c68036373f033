"""Audio transcoding with PyAV: AAC to Opus (a 440 Hz tone in, 20 ms Opus packets at 48 kHz
out), and Opus, PCMU or PCMA to AAC for RTMP republishing (a tone in, AAC frames out that
decode back to the same tone, stamped on a 48 kHz clock from the source's times)."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from gateway.media.audio_transcode import (
    AAC_FRAME_SAMPLES,
    AacToOpus,
    AudioTranscodeError,
    ToAac,
    aac_transcodable,
)
from tests.conftest import dominant_frequency


def aac_tone(seconds: float = 1.0, rate: int = 44100) -> tuple[bytes, list[bytes]]:
    encoder = av.CodecContext.create("aac", "w")
    encoder.sample_rate, encoder.layout, encoder.format, encoder.bit_rate = rate, "stereo", "fltp", 128_000
    encoder.open()
    frames: list[bytes] = []
    for i in range(int(seconds * rate / 1024)):
        t = (np.arange(1024) + i * 1024) / rate
        tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = rate, i * 1024
        frames += [bytes(packet) for packet in encoder.encode(frame)]
    return bytes(encoder.extradata or b""), frames


def test_aac_becomes_20_ms_opus_packets_on_a_48_khz_clock() -> None:
    config, frames = aac_tone()
    transcoder = AacToOpus(config)
    packets = [
        p for i, f in enumerate(frames) for p in transcoder.transcode(f, 1000 + i * 1024 * 1000 // 44100)
    ]
    assert len(packets) >= 45  # about 50 per second, less the encoder's look-ahead
    stamps = [pts for _, pts in packets]
    assert stamps[0] == 1000 * 48 and all(b - a == 960 for a, b in zip(stamps, stamps[1:], strict=False))
    decoder = av.CodecContext.create("opus", "r")
    decoded = [f for data, _ in packets for f in decoder.decode(av.Packet(data))]
    assert {f.sample_rate for f in decoded} == {48000}
    assert np.abs(np.concatenate([f.to_ndarray().ravel() for f in decoded[-10:]])).max() > 0.1


def test_garbage_frames_are_dropped_and_counted() -> None:
    config, frames = aac_tone(0.2)
    transcoder = AacToOpus(config)
    assert transcoder.transcode(b"\xff\xff\xff garbage", 0) == []
    assert transcoder.failures == 1
    assert sum(len(transcoder.transcode(f, 0)) for f in frames) > 0  # and it goes on


# --- to AAC -------------------------------------------------------------------------------------

OPUS_CLOCK = Fraction(1, 48000)
G711_CLOCK = Fraction(1, 8000)


def tone(start: int, samples: int, rate: int, frequency: float = 440.0) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * frequency * (np.arange(samples) + start) / rate)


def opus_tone(seconds: float, channels: int = 2) -> list[bytes]:
    """20 ms Opus packets of a 440 Hz tone, as a WebRTC publisher sends them."""
    layout = "stereo" if channels == 2 else "mono"
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format, encoder.bit_rate = 48000, layout, "s16", 64_000
    encoder.open()
    packets: list[bytes] = []
    for i in range(int(seconds * 50)):
        pcm = (tone(i * 960, 960, 48000) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(pcm, channels)[None, :], format="s16", layout=layout)
        frame.sample_rate, frame.pts = 48000, i * 960
        packets += [bytes(packet) for packet in encoder.encode(frame)]
    return packets


def g711_tone(seconds: float, codec: str = "pcm_mulaw") -> list[bytes]:
    """20 ms G.711 frames (160 bytes at 8 kHz) of a 440 Hz tone."""
    encoder = av.CodecContext.create(codec, "w")
    encoder.sample_rate, encoder.layout, encoder.format = 8000, "mono", "s16"
    encoder.open()
    pcm = (tone(0, int(seconds * 8000), 8000) * 32767).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
    frame.sample_rate, frame.pts = 8000, 0
    data = b"".join(bytes(packet) for packet in encoder.encode(frame))
    return [data[i : i + 160] for i in range(0, len(data), 160)]


def decode_aac(config: bytes, frames: list[bytes]) -> tuple[np.ndarray, list[av.AudioFrame]]:
    decoder = av.CodecContext.create("aac", "r")
    decoder.extradata = config
    decoded = [frame for data in frames for frame in decoder.decode(av.Packet(data))]
    return np.concatenate([frame.to_ndarray()[0] for frame in decoded]), decoded


def test_opus_becomes_aac_lc_of_the_same_tone() -> None:
    transcoder = ToAac()
    # AudioSpecificConfig: AAC-LC (object type 2), 48 kHz (index 3), 2 channels.
    assert transcoder.audio_specific_config[:2] == bytes([0x11, 0x90])
    start = 123_456  # a WebRTC publisher's RTP clock starts anywhere
    out = [
        packet
        for i, data in enumerate(opus_tone(2.0))
        for packet in transcoder.transcode("opus", data, start + i * 960, OPUS_CLOCK)
    ]
    assert len(out) >= 2 * 48000 // AAC_FRAME_SAMPLES - 3  # less what the encoder still holds
    stamps = [pts for _, pts in out]
    # The first frame holds the encoder's priming: 1024 samples before the first sample in.
    assert stamps[0] == start - AAC_FRAME_SAMPLES
    assert all(b - a == AAC_FRAME_SAMPLES for a, b in zip(stamps, stamps[1:], strict=False))
    samples, decoded = decode_aac(transcoder.audio_specific_config, [data for data, _ in out])
    assert {(f.sample_rate, f.layout.name) for f in decoded} == {(48000, "stereo")}
    steady = samples[48000 // 2 :]
    assert abs(dominant_frequency(steady, 48000) - 440) < 5
    assert 0.3 < np.abs(steady).max() < 0.7


def test_pcmu_and_pcma_become_aac_of_the_same_tone() -> None:
    for codec, ffmpeg_codec in [("PCMU", "pcm_mulaw"), ("PCMA", "pcm_alaw")]:
        assert aac_transcodable(codec)
        transcoder = ToAac()
        out = [
            packet
            for i, data in enumerate(g711_tone(2.0, ffmpeg_codec))
            for packet in transcoder.transcode(codec, data, 8000 + i * 160, G711_CLOCK)
        ]
        stamps = [pts for _, pts in out]
        assert stamps[0] == 48000 - AAC_FRAME_SAMPLES  # 1 s on the 8 kHz clock is 48000 at 48 kHz
        assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))
        samples, _ = decode_aac(transcoder.audio_specific_config, [data for data, _ in out])
        assert abs(dominant_frequency(samples[48000 // 2 :], 48000) - 440) < 5, codec


def test_a_new_source_codec_goes_on_with_the_same_encoder() -> None:
    """A publisher that comes back with PCMU instead of Opus: the AAC stream goes on, with
    the same configuration and timestamps that follow on."""
    transcoder = ToAac()
    config = transcoder.audio_specific_config
    out = [
        p for i, d in enumerate(opus_tone(1.0)) for p in transcoder.transcode("opus", d, i * 960, OPUS_CLOCK)
    ]
    out += [
        p
        for i, d in enumerate(g711_tone(1.0))
        for p in transcoder.transcode("PCMU", d, 8000 + i * 160, G711_CLOCK)
    ]
    assert transcoder.audio_specific_config == config
    stamps = [pts for _, pts in out]
    assert all(b - a == AAC_FRAME_SAMPLES for a, b in zip(stamps, stamps[1:], strict=False))
    assert stamps[-1] > 48000 + 48000 // 2


def test_a_gap_is_filled_with_silence_and_a_long_one_restarts_the_timeline() -> None:
    packets = opus_tone(3.0)
    transcoder = ToAac()
    out: list[tuple[bytes, int]] = []
    for i, data in enumerate(packets[:50]):
        out += transcoder.transcode("opus", data, i * 960, OPUS_CLOCK)
    # 200 ms lost (or Opus DTX): silence keeps the audio on time and continuous.
    for i, data in enumerate(packets[60:100], start=60):
        out += transcoder.transcode("opus", data, i * 960, OPUS_CLOCK)
    stamps = [pts for _, pts in out]
    assert all(b - a == AAC_FRAME_SAMPLES for a, b in zip(stamps, stamps[1:], strict=False))
    assert stamps[-1] >= 100 * 960 - 4 * AAC_FRAME_SAMPLES  # less what the encoder holds
    # 10 s missing: not filled; the next frames start where the source says.
    later = 10 * 48000
    restarted = [
        packet
        for i, data in enumerate(packets[100:150])
        for packet in transcoder.transcode("opus", data, later + i * 960, OPUS_CLOCK)
    ]
    tail = [pts for _, pts in restarted if pts < later - AAC_FRAME_SAMPLES]
    new = [pts for _, pts in restarted if pts >= later - AAC_FRAME_SAMPLES]
    assert tail and all(pts < 101 * 960 for pts in tail)  # what was buffered, on the old timeline
    assert new[0] == later - AAC_FRAME_SAMPLES
    assert all(b - a == AAC_FRAME_SAMPLES for a, b in zip(new, new[1:], strict=False))


def test_what_cannot_be_transcoded_raises_and_the_next_frame_goes_on() -> None:
    assert not aac_transcodable("G722")
    transcoder = ToAac()
    with pytest.raises(AudioTranscodeError, match="G722"):
        transcoder.transcode("G722", b"\x00" * 160, 0, OPUS_CLOCK)
    with pytest.raises(AudioTranscodeError, match="undecodable"):
        transcoder.transcode("opus", b"\xff\xff\xff garbage", 0, OPUS_CLOCK)
    assert transcoder.transcode("opus", b"", 0, OPUS_CLOCK) == []
    packets = opus_tone(0.5)
    out = [p for i, d in enumerate(packets) for p in transcoder.transcode("opus", d, i * 960, OPUS_CLOCK)]
    assert len(out) >= 15
