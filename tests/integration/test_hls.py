"""HLS out on loopback: `HlsService` packaging a Stream fed from a pre-encoded clip, served by
an aiohttp app with `hls_routes`, read by a real ffprobe; the playlist slides, idle and ended
streams stop being packaged, and bad requests get JSON 404s."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import pytest_asyncio
from aiohttp import web

from gateway.http.hls import hls_routes
from gateway.media.registry import StreamRegistry
from gateway.media.sinks.hls import HlsService
from tests.conftest import free_port
from tests.integration.conftest import AccessUnits, ClipCamera

NAME = "SN/53-0-0/normal-0"  # a DJI video_id: slashes in the path


@dataclass
class HlsServer:
    registry: StreamRegistry
    service: HlsService
    camera: ClipCamera
    port: int

    def url(self, name: str, file: str = "index.m3u8") -> str:
        return f"http://127.0.0.1:{self.port}/hls/{quote(name)}/{file}"


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def hls_server(clip_units: AccessUnits) -> AsyncIterator[HlsServer]:
    registry = StreamRegistry()
    camera = ClipCamera(registry, NAME, clip_units)
    await until(lambda: registry.get(NAME) is not None)
    service = HlsService(registry, window=3)
    app = web.Application()
    app.add_routes(hls_routes(service))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield HlsServer(registry, service, camera, port)
    finally:
        await service.stop()
        await runner.cleanup()
        await camera.stop()


async def fetch(url: str) -> tuple[int, str, bytes]:
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        return response.status, response.content_type, await response.read()


def media_sequence(playlist: str) -> int:
    match = re.search(r"^#EXT-X-MEDIA-SEQUENCE:(\d+)$", playlist, re.M)
    assert match, playlist
    return int(match.group(1))


async def run(*cmd: str, timeout: float = 30.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_ffprobe_reads_the_playlist(hls_server: HlsServer) -> None:
    code, out, err = await run(
        "ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height", "-of", "json",
        hls_server.url(NAME),
    )  # fmt: skip
    assert code == 0, err
    streams = json.loads(out)["streams"]
    assert [(s["codec_name"], s["width"], s["height"]) for s in streams] == [("h264", 320, 240)]


async def test_ffmpeg_decodes_segments_without_errors(hls_server: HlsServer) -> None:
    status, _, body = await fetch(hls_server.url(NAME))
    assert status == 200
    code, _, err = await run(
        "ffmpeg", "-v", "error", "-nostdin", "-i", hls_server.url(NAME), "-frames:v", "45", "-f", "null", "-",
    )  # fmt: skip
    assert code == 0 and not err.strip(), err


async def test_playlist_slides_within_the_window(hls_server: HlsServer) -> None:
    status, content_type, body = await fetch(hls_server.url(NAME))
    assert status == 200 and content_type == "application/vnd.apple.mpegurl"
    first = body.decode()
    assert first.startswith("#EXTM3U\n")
    assert "#EXT-X-VERSION:7" in first and '#EXT-X-MAP:URI="init-0.mp4"' in first
    start = media_sequence(first)
    playlist = first
    async with asyncio.timeout(20):
        while media_sequence(playlist) < start + 4:
            await asyncio.sleep(0.3)
            status, _, body = await fetch(hls_server.url(NAME))
            assert status == 200
            playlist = body.decode()
            segments = re.findall(r"^seg-(\d+)\.m4s$", playlist, re.M)
            assert 1 <= len(segments) <= 3
            assert [int(s) for s in segments] == list(
                range(media_sequence(playlist), media_sequence(playlist) + len(segments))
            )
    target = int(re.search(r"#EXT-X-TARGETDURATION:(\d+)", playlist).group(1))  # type: ignore[union-attr]
    durations = [float(d) for d in re.findall(r"#EXTINF:([\d.]+),", playlist)]
    assert all(0 < d and round(d) <= target for d in durations)
    # Every listed segment and the init segment are served, as fMP4 fragments.
    status, content_type, init = await fetch(hls_server.url(NAME, "init-0.mp4"))
    assert status == 200 and init[4:8] == b"ftyp" and b"moov" in init
    for sequence in re.findall(r"^seg-(\d+)\.m4s$", playlist, re.M):
        status, _, data = await fetch(hls_server.url(NAME, f"seg-{sequence}.m4s"))
        assert status == 200 and data[4:8] == b"moof"
    # A segment that slid out of memory is gone.
    status, _, body = await fetch(hls_server.url(NAME, f"seg-{start}.m4s"))
    assert status == 404 and "error" in json.loads(body)


async def test_unknown_stream_and_files_are_404(hls_server: HlsServer) -> None:
    for url in (
        hls_server.url("nope"),
        # A traversal the client does not normalise away: the name reaches the service.
        f"http://127.0.0.1:{hls_server.port}/hls/..%2F..%2Fetc%2Fpasswd/index.m3u8",
        hls_server.url("nope", "seg-0.m4s"),
        hls_server.url("nope", "init-0.mp4"),
        # Live, but nobody loaded its playlist: segments are not made.
        hls_server.url(NAME, "seg-0.m4s"),
    ):
        status, content_type, body = await fetch(url)
        assert status == 404, url
        assert content_type == "application/json" and "error" in json.loads(body)
    status, _, _ = await fetch(hls_server.url(NAME))
    assert status == 200
    for file in ("seg-999999.m4s", "init-7.mp4", "seg-x.m4s", "..%2F..%2Fsecret"):
        status, _, _ = await fetch(hls_server.url(NAME, file))
        assert status == 404, file


async def test_ended_stream_stops_packaging(hls_server: HlsServer) -> None:
    status, _, _ = await fetch(hls_server.url(NAME))
    assert status == 200
    packager = hls_server.service.packagers[NAME]
    hls_server.registry.release(hls_server.camera.stream)
    await until(lambda: packager.closed and NAME not in hls_server.service.packagers)
    assert not packager.stream.subscriptions
    status, _, body = await fetch(hls_server.url(NAME))
    assert status == 404 and "error" in json.loads(body)


async def test_idle_stream_stops_packaging(clip_units: AccessUnits) -> None:
    registry = StreamRegistry()
    camera = ClipCamera(registry, NAME, clip_units)
    service = HlsService(registry, idle_timeout=1.0)
    try:
        await until(lambda: registry.get(NAME) is not None)
        assert (await service.playlist(NAME)).startswith("#EXTM3U")
        packager = service.packagers[NAME]
        assert len(camera.stream.subscriptions) == 1
        await until(lambda: NAME not in service.packagers)
        assert packager.closed and not camera.stream.subscriptions
        # Asked again: packaging starts again.
        assert (await service.playlist(NAME)).startswith("#EXTM3U")
        assert service.packagers[NAME] is not packager
    finally:
        await service.stop()
        await camera.stop()
    assert not camera.stream.subscriptions
