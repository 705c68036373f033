"""HLS and DVR with audio, with real peers on loopback: ffmpeg pushes H.264 and AAC (a 440 Hz
tone) over RTMP to an in-process gateway, which makes the AAC Opus at the source; the HLS
playlist read by ffprobe/ffmpeg has an Opus stream that decodes to the tone, and a DVR file
has one that PyAV decodes, in time with the video."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import av
import numpy as np
import pytest
import pytest_asyncio

from gateway.app import Gateway
from gateway.media.stream import Stream
from tests.conftest import dominant_frequency
from tests.integration.conftest import local_config, wait_stream
from tests.integration.test_rtmp_ingest import Pushes, rtmp_url
from tests.integration.test_rtsp import run_tool

NAME = "with-audio"


@pytest.fixture
def pushes() -> Iterator[Pushes]:
    started = Pushes()
    yield started
    started.stop_all()


@pytest_asyncio.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    gateway = Gateway(local_config(recordings_dir=tmp_path / "recordings", record_segment_seconds=60.0))
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def pushed_with_audio(gateway: Gateway, clip: Path, pushes: Pushes) -> Stream:
    """``NAME`` pushed by ffmpeg with AAC audio, once its Opus audio flows."""
    pushes.start(clip, rtmp_url(gateway, NAME), audio=True)
    await wait_stream(gateway, NAME)
    stream = gateway.registry.get(NAME)
    assert stream is not None and stream.audio_codec is not None and stream.audio_codec.name == "opus"
    return stream


async def test_hls_has_the_audio_as_opus_that_ffmpeg_decodes(
    gateway: Gateway, clip: Path, pushes: Pushes
) -> None:
    await pushed_with_audio(gateway, clip, pushes)
    playlist = f"http://127.0.0.1:{gateway.config.http_port}/hls/{quote(NAME)}/index.m3u8"
    code, out, err = await run_tool(
        "ffprobe", "-v", "error", "-show_entries", "stream=codec_name,codec_type,sample_rate,width,height",
        "-of", "json", playlist,
        timeout=60,
    )  # fmt: skip
    assert code == 0, err
    streams = {s["codec_type"]: s for s in json.loads(out)["streams"]}
    assert (streams["video"]["codec_name"], streams["video"]["width"]) == ("h264", 320)
    assert (streams["audio"]["codec_name"], streams["audio"]["sample_rate"]) == ("opus", "48000")

    # Two seconds of the audio, decoded: the pushed tone.
    code, pcm, err = await run_tool(
        "ffmpeg", "-v", "error", "-nostdin", "-i", playlist, "-map", "0:a:0", "-t", "2",
        "-f", "s16le", "-ac", "1", "-ar", "48000", "-",
        timeout=60,
    )  # fmt: skip
    assert code == 0, err
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    assert len(samples) >= 48000  # at least a second (ffmpeg stops at -t 2)
    assert dominant_frequency(samples[-48000:], 48000) == pytest.approx(440, abs=5)
    assert np.abs(samples[-48000:]).max() > 1000


async def test_a_recording_has_the_audio_as_opus_in_time_with_the_video(
    gateway: Gateway, clip: Path, pushes: Pushes
) -> None:
    stream = await pushed_with_audio(gateway, clip, pushes)
    recorder = gateway.recorders.start(stream)
    try:
        async with asyncio.timeout(30):
            while recorder.bytes_written < 200_000:  # a few seconds of the clip
                await asyncio.sleep(0.1)
    finally:
        await gateway.recorders.stop(NAME)
    (path,) = recorder.files
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, audio.codec_context.name, audio.sample_rate) == (
            "h264",
            "opus",
            48000,
        )
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        for packet in container.demux():
            if packet.pts is None or packet.time_base is None:
                continue
            t = float(packet.pts * packet.time_base)
            first.setdefault(packet.stream.type, t)
            last[packet.stream.type] = t
    # Both tracks on one timeline: the file starts at a keyframe (0), the audio with it
    # (its first frame is put at the live video's time when it came) and ends with it.
    assert first["video"] == 0 and 0 <= first["audio"] < 0.5, first
    assert abs(last["audio"] - last["video"]) < 0.5, last
    with av.open(str(path)) as container:
        decoded = [frame.to_ndarray()[0] for frame in container.decode(audio=0)]
    samples = np.concatenate(decoded)
    assert len(samples) > 48000 and {f.shape[0] for f in decoded} <= {960, 1920, 2880}
    assert dominant_frequency(samples[-48000:], 48000) == pytest.approx(440, abs=5)
