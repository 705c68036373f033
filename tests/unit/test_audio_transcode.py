"""AAC to Opus with PyAV: a 440 Hz tone in, 20 ms Opus packets at 48 kHz out."""

from __future__ import annotations

import av
import numpy as np

from gateway.media.audio_transcode import AacToOpus


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
