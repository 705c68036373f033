"""RTMP ingest with real ffmpeg pushes: one port for every push, unguessable keys, H.264 from
FLV (AVCC) to WebRTC players without transcoding; an AAC track does not disturb the video."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.media.ingest_keys import IngestKeys
from gateway.media.registry import StreamRegistry
from gateway.media.sources.rtmp import RtmpIngestServer
from gateway.wcs.client import WcsClient, WcsError
from tests.conftest import free_port
from tests.integration.conftest import FrameCounter, play_and_decode, wait_stream

AAC = ("-c:a", "aac", "-b:a", "64k")


class Pushes:
    """ffmpeg RTMP pushes started by a test, all stopped after it."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, clip: Path, url: str, *, audio: bool = False, audio_codec: tuple[str, ...] = AAC
    ) -> subprocess.Popen[bytes]:
        inputs = ["-re", "-stream_loop", "-1", "-i", str(clip)]
        codecs = ["-map", "0:v", "-c:v", "copy"]
        if audio:
            inputs += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]
            codecs += ["-map", "1:a", *audio_codec]
        cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", *inputs, *codecs, "-f", "flv", url]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)


@pytest.fixture
def pushes() -> Iterator[Pushes]:
    started = Pushes()
    yield started
    started.stop_all()


def rtmp_url(gateway: Gateway, key: str) -> str:
    return f"rtmp://127.0.0.1:{gateway.config.rtmp_port}/live/{key}"


async def test_pushes_reach_webrtc_players_on_one_port(
    local_gateway: Gateway, clip: Path, pushes: Pushes
) -> None:
    keys = [local_gateway.ingest_keys.issue(f"drone-{i}") for i in range(2)]
    for key in keys:
        pushes.start(clip, rtmp_url(local_gateway, key.key))
    for key in keys:
        await wait_stream(local_gateway, key.stream_name)
        counter = await play_and_decode(local_gateway, key.stream_name)
        assert (counter.frames[-1].width, counter.frames[-1].height) == (320, 240)
        stream = local_gateway.registry.get(key.stream_name)
        assert stream is not None and (stream.width, stream.height) == (320, 240)
        assert stream.video_codec is not None and stream.video_codec.name == "H264"


async def test_aac_audio_reaches_webrtc_players_as_opus_and_the_video_is_untouched(
    local_gateway: Gateway, clip: Path, pushes: Pushes
) -> None:
    key = local_gateway.ingest_keys.issue("with-audio")
    pushes.start(clip, rtmp_url(local_gateway, key.key), audio=True)
    await wait_stream(local_gateway, "with-audio")
    stream = local_gateway.registry.get("with-audio")
    assert stream is not None and stream.audio_codec is not None and stream.audio_codec.name == "opus"
    client = await WcsClient.connect(f"ws://127.0.0.1:{local_gateway.config.ws_port}")
    player = await client.play("with-audio")
    await player.wait_status("PLAYING")
    counter = FrameCounter(player).start()
    await counter.wait_frames(30)
    assert (counter.frames[-1].width, counter.frames[-1].height) == (320, 240)
    audio = next(t for t in player.tracks if t.kind == "audio")
    async with asyncio.timeout(20):  # aiortc decodes the Opus: 440 Hz sine, 48 kHz
        decoded = [await audio.recv() for _ in range(50)]
    assert {frame.sample_rate for frame in decoded} == {48000}
    assert max(abs(int(v)) for frame in decoded[-10:] for v in frame.to_ndarray().ravel()) > 1000
    await counter.stop()
    await client.close()


@pytest.mark.parametrize(("options", "codec"), [(("pcm_mulaw",), "PCMU"), (("pcm_alaw",), "PCMA")])
async def test_g711_audio_reaches_webrtc_players_as_it_is(
    local_gateway: Gateway, clip: Path, pushes: Pushes, options: tuple[str, ...], codec: str
) -> None:
    key = local_gateway.ingest_keys.issue("g711")
    g711 = ("-c:a", *options, "-ar", "8000", "-ac", "1")
    pushes.start(clip, rtmp_url(local_gateway, key.key), audio=True, audio_codec=g711)
    await wait_stream(local_gateway, "g711")
    stream = local_gateway.registry.get("g711")
    assert stream is not None and stream.audio_codec is not None
    assert (stream.audio_codec.name, stream.audio_codec.clock_rate) == (codec, 8000)
    client = await WcsClient.connect(f"ws://127.0.0.1:{local_gateway.config.ws_port}")
    player = await client.play("g711")
    await player.wait_status("PLAYING")
    counter = FrameCounter(player).start()
    await counter.wait_frames(30)
    audio = next(t for t in player.tracks if t.kind == "audio")
    async with asyncio.timeout(20):  # aiortc decodes the G.711 it was sent: the 440 Hz sine
        decoded = [await audio.recv() for _ in range(50)]
    assert max(abs(int(v)) for frame in decoded[-10:] for v in frame.to_ndarray().ravel()) > 1000
    assert {frame.samples for frame in decoded} == {160}  # 20 ms packets
    await counter.stop()
    await client.close()


async def test_a_push_by_name_publishes_when_access_is_open(
    local_gateway: Gateway, clip: Path, pushes: Pushes
) -> None:
    """Not a key: an encoder (OBS, ffmpeg) publishing rtmp://host/live/{name}; the demo's
    open access allows it (see test_access.py for tokens)."""
    pushes.start(clip, rtmp_url(local_gateway, "obs-camera"))
    await wait_stream(local_gateway, "obs-camera")
    counter = await play_and_decode(local_gateway, "obs-camera")
    assert (counter.frames[-1].width, counter.frames[-1].height) == (320, 240)


async def test_unknown_key_is_refused_without_an_access_policy(clip: Path, pushes: Pushes) -> None:
    registry, keys = StreamRegistry(), IngestKeys()
    server = RtmpIngestServer(registry, keys, host="127.0.0.1", port=free_port())
    await server.start()
    try:
        proc = pushes.start(clip, f"rtmp://127.0.0.1:{server.port}/live/not-a-key")
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 15) != 0
        assert len(registry) == 0
    finally:
        await server.stop()


async def test_key_serves_one_push_at_a_time_until_revoked(
    local_gateway: Gateway, clip: Path, pushes: Pushes
) -> None:
    key = local_gateway.ingest_keys.issue("once")
    first = pushes.start(clip, rtmp_url(local_gateway, key.key))
    await wait_stream(local_gateway, "once")
    # A second push with the same key while the first is on: refused.
    concurrent = pushes.start(clip, rtmp_url(local_gateway, key.key))
    assert await asyncio.wait_for(asyncio.to_thread(concurrent.wait), 15) != 0
    assert first.poll() is None
    first.terminate()
    await asyncio.wait_for(asyncio.to_thread(first.wait), 10)
    async with asyncio.timeout(10):
        while len(local_gateway.registry):
            await asyncio.sleep(0.05)
    # The device reconnects with the same URL after a glitch: accepted.
    pushes.start(clip, rtmp_url(local_gateway, key.key))
    await wait_stream(local_gateway, "once")
    # Revoked (the stream is over): refused.
    local_gateway.ingest_keys.revoke(key.key)
    late = pushes.start(clip, rtmp_url(local_gateway, key.key))
    assert await asyncio.wait_for(asyncio.to_thread(late.wait), 15) != 0
    client = await WcsClient.connect(f"ws://127.0.0.1:{local_gateway.config.ws_port}")
    with pytest.raises(WcsError, match="Stream not found"):
        await client.play("never-issued")
    await client.close()
