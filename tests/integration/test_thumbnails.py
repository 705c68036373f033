"""Live thumbnails over HTTP, from a Stream fed with a real H.264 clip (320x240, a keyframe
a second), served by an aiohttp app with `thumbnail_routes` on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from fractions import Fraction

import aiohttp
import av
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.http.thumbnails import thumbnail_routes
from gateway.media.registry import StreamRegistry
from gateway.media.stream import Codec, MediaFrame, Stream
from gateway.media.thumbnails import Thumbnails
from tests.conftest import free_port
from tests.integration.conftest import AccessUnits

pytestmark = pytest.mark.timeout(60)

VIDEO_TB = Fraction(1, 90000)


async def feed(stream: Stream, units: AccessUnits, fps: int = 30) -> None:
    """Push the clip into ``stream`` in real time, looping, with rising timestamps."""
    count = 0
    while True:
        for data, keyframe in units:
            stream.push(MediaFrame("video", "H264", data, count * 90000 // fps, VIDEO_TB, keyframe))
            count += 1
            await asyncio.sleep(1 / fps)


@contextlib.asynccontextmanager
async def fed_stream(registry: StreamRegistry, name: str, units: AccessUnits) -> AsyncIterator[Stream]:
    stream = registry.claim(name)
    stream.set_codecs(Codec("H264", 90000), None)
    task = asyncio.ensure_future(feed(stream, units))
    try:
        async with asyncio.timeout(10):
            while stream.keyframe is None:
                await asyncio.sleep(0.01)
        yield stream
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class Site:
    def __init__(self, thumbnails: Thumbnails, url: str, session: aiohttp.ClientSession) -> None:
        self.thumbnails, self.url, self.session = thumbnails, url, session


@pytest_asyncio.fixture
async def site(clip_units: AccessUnits) -> AsyncIterator[Site]:
    registry = StreamRegistry()
    thumbnails = Thumbnails(registry, max_age=5.0)  # long: the concurrency test counts decodes
    app = web.Application()
    app.router.add_routes(thumbnail_routes(thumbnails))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with (
        fed_stream(registry, "dock-1/165-0-7/normal-0", clip_units),
        aiohttp.ClientSession() as session,
    ):
        yield Site(thumbnails, f"http://127.0.0.1:{port}", session)
    await runner.cleanup()


def decode(data: bytes, codec: str) -> av.VideoFrame:
    context = av.CodecContext.create(codec, "r")
    frames = context.decode(av.Packet(data)) + context.decode(None)
    assert frames
    return frames[0]


STREAM_PATH = "/api/streams/dock-1/165-0-7/normal-0"


async def test_jpeg_at_a_width_keeps_the_aspect(site: Site) -> None:
    async with site.session.get(f"{site.url}{STREAM_PATH}/thumbnail.jpg?width=160") as response:
        assert response.status == 200
        assert response.content_type == "image/jpeg"
        assert response.headers["Cache-Control"] == "no-store"
        picture = decode(await response.read(), "mjpeg")
    assert (picture.width, picture.height) == (160, 120)
    async with site.session.get(f"{site.url}{STREAM_PATH}/thumbnail.jpg?width=1000") as response:
        picture = decode(await response.read(), "mjpeg")
    assert (picture.width, picture.height) == (1000, 750)


async def test_jpeg_and_png_at_the_stream_size(site: Site) -> None:
    async with site.session.get(f"{site.url}{STREAM_PATH}/thumbnail.jpg") as response:
        assert response.status == 200
        picture = decode(await response.read(), "mjpeg")
    assert (picture.width, picture.height) == (320, 240)
    async with site.session.get(f"{site.url}{STREAM_PATH}/thumbnail.png") as response:
        assert response.status == 200 and response.content_type == "image/png"
        picture = decode(await response.read(), "png")
    assert (picture.width, picture.height) == (320, 240)
    assert (await site.thumbnails.png("dock-1/165-0-7/normal-0")).startswith(b"\x89PNG")


async def test_hundred_concurrent_requests_cost_one_decode(site: Site) -> None:
    async def get() -> bytes:
        async with site.session.get(f"{site.url}{STREAM_PATH}/thumbnail.jpg?width=240") as response:
            assert response.status == 200
            return await response.read()

    images = await asyncio.gather(*(get() for _ in range(100)))
    assert len(set(images)) == 1
    assert site.thumbnails.decodes == 1 and site.thumbnails.encodes == 1


async def test_unknown_stream_is_404(site: Site) -> None:
    for path in ("/api/streams/nope/thumbnail.jpg", "/api/streams/dock-1/x/thumbnail.jpg?width=100"):
        async with site.session.get(f"{site.url}{path}") as response:
            assert response.status == 404
            body = await response.json()
            assert "not found" in body["error"]
    assert site.thumbnails.decodes == 0


@pytest.mark.parametrize("width", ["abc", "15", "3841", "-20", "0x40", "1.5", "9" * 40])
async def test_bad_width_is_400(site: Site, width: str) -> None:
    url = f"{site.url}{STREAM_PATH}/thumbnail.jpg"
    async with site.session.get(url, params={"width": width}) as response:
        assert response.status == 400
        assert "width must be an integer from 16 to 3840" in (await response.json())["error"]
    assert site.thumbnails.decodes == 0
