"""hls.js (fetched from npm at test time) plays the gateway's HLS in headless Debian Chromium:
a Stream fed from a pre-encoded clip (and, in two tests, an Opus track: a tone, or none sent),
packaged by `HlsService`, served by `hls_routes` on loopback together with the page and
hls.js (one origin)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import quote

import av
import numpy as np
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page

from gateway.http.hls import hls_routes
from gateway.media.registry import StreamRegistry
from gateway.media.sinks.hls import HlsService
from gateway.media.stream import Codec, MediaFrame
from gateway.media.synthetic import make_h264_clip, read_access_units
from tests.conftest import free_port
from tests.integration.conftest import CACHE
from tests.integration.test_hls import ClipCamera, until

from .hlsjs import BUNDLE_NAME, HlsJsUnavailable, hlsjs_bundle

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

NAME = "SN/53-0-0/normal-0"
PLAYER = """<!doctype html>
<html><body>
<video id="video" muted autoplay playsinline></video>
<script src="/hls.min.js"></script>
<script>
  const video = document.getElementById("video");
  const errors = [];
  const hls = new Hls();
  hls.on(Hls.Events.ERROR, (event, data) => errors.push(`${data.type}:${data.details}:${data.fatal}`));
  hls.loadSource(new URLSearchParams(location.search).get("src"));
  hls.attachMedia(video);
  video.play().catch(() => {});
  window.e2e = {
    state: () => ({
      supported: Hls.isSupported(),
      frames: video.getVideoPlaybackQuality().totalVideoFrames,
      width: video.videoWidth,
      height: video.videoHeight,
      time: video.currentTime,
      // Chromium's count of audio bytes decoded (0 without audio).
      audioBytes: video.webkitAudioDecodedByteCount,
      errors,
    }),
  };
</script>
</body></html>
"""


@pytest.fixture(scope="session")
def hlsjs() -> Path:
    try:
        return hlsjs_bundle()
    except HlsJsUnavailable as exc:
        problem = str(exc)
    pytest.fail(f"cannot get hls.js for browser tests: {problem}", pytrace=False)


class ToneCamera(ClipCamera):
    """The clip, and a 440 Hz tone as 20 ms Opus packets (PyAV's encoder, once) on an audio
    clock of its own, both in real time."""

    def __init__(self, registry: StreamRegistry, name: str, units: Any) -> None:
        super().__init__(registry, name, units)
        assert self.stream.video_codec is not None
        self.stream.set_codecs(self.stream.video_codec, Codec("opus", 48000))
        encoder = av.CodecContext.create("libopus", "w")
        encoder.sample_rate, encoder.layout, encoder.format = 48000, "stereo", "s16"
        encoder.time_base = Fraction(1, 48000)
        encoder.open()
        self.packets: list[bytes] = []
        for i in range(50):
            tone = (8000 * np.sin(2 * np.pi * 440 * (np.arange(960) + i * 960) / 48000)).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(
                np.stack([tone, tone]).T.reshape(1, -1).copy(), format="s16", layout="stereo"
            )
            frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, Fraction(1, 48000)
            self.packets += [bytes(packet) for packet in encoder.encode(frame)]
        self._audio = asyncio.ensure_future(self._audio_run())

    async def _audio_run(self) -> None:
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        while True:
            while sent * 0.02 <= loop.time() - start:
                data = self.packets[sent % len(self.packets)]
                self.stream.push(
                    MediaFrame("audio", "opus", data, 123_456 + sent * 960, Fraction(1, 48000), True)
                )
                sent += 1
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._audio.cancel()
        await asyncio.gather(self._audio, return_exceptions=True)
        await super().stop()


class SilentCamera(ClipCamera):
    """The clip, on a stream that says it has Opus audio and never sends any."""

    def __init__(self, registry: StreamRegistry, name: str, units: Any) -> None:
        super().__init__(registry, name, units)
        assert self.stream.video_codec is not None
        self.stream.set_codecs(self.stream.video_codec, Codec("opus", 48000))


async def serve_hls(hlsjs: Path, camera_type: Callable[..., ClipCamera]) -> AsyncIterator[str]:
    """The page, hls.js and the HLS of NAME (a 320x240 clip) on one loopback origin."""
    units = read_access_units(
        make_h264_clip(CACHE, width=320, height=240, fps=30, seconds=4, bitrate=300_000, gop=30)
    )
    registry = StreamRegistry()
    camera = camera_type(registry, NAME, units)
    service = HlsService(registry)

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PLAYER, content_type="text/html")

    async def script(request: web.Request) -> web.FileResponse:
        return web.FileResponse(hlsjs, headers={"Content-Type": "text/javascript"})

    app = web.Application()
    app.add_routes([web.get("/player.html", page), web.get(f"/{BUNDLE_NAME}", script), *hls_routes(service)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await until(lambda: registry.get(NAME) is not None)
        yield f"http://127.0.0.1:{port}"
    finally:
        await service.stop()
        await runner.cleanup()
        await camera.stop()


@pytest.fixture
async def hls_site(hlsjs: Path) -> AsyncIterator[str]:
    async for url in serve_hls(hlsjs, ClipCamera):
        yield url


@pytest.fixture
async def hls_site_with_audio(hlsjs: Path) -> AsyncIterator[str]:
    async for url in serve_hls(hlsjs, ToneCamera):
        yield url


@pytest.fixture
async def hls_site_without_the_audio(hlsjs: Path) -> AsyncIterator[str]:
    async for url in serve_hls(hlsjs, SilentCamera):
        yield url


async def state(page: Page) -> dict[str, Any]:
    return await page.evaluate("() => window.e2e.state()")


async def wait_state(page: Page, what: str, check: Any, timeout: float = 30.0) -> dict[str, Any]:
    last: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout):
            while not check(last := await state(page)):
                await asyncio.sleep(0.25)
    except TimeoutError:
        pytest.fail(f"hls.js: {what} did not happen; last state {last}")
    return last


async def play(chromium: Browser, site: str, *, audio: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Play NAME's HLS: the state at the first decoded frames, and once 30 more came (and,
    with ``audio``, more audio was decoded too)."""
    page = await chromium.new_page()
    try:
        src = f"{site}/hls/{quote(NAME)}/index.m3u8"
        await page.goto(f"{site}/player.html?src={quote(src, safe='')}")
        first = await wait_state(page, "first decoded frames", lambda s: s.get("frames", 0) > 0)
        assert first["supported"] and (first["width"], first["height"]) == (320, 240), first
        # Live, not a still picture: frames keep being decoded and the clock runs.
        last = await wait_state(
            page,
            "more decoded frames",
            lambda s: (
                s["frames"] > first["frames"] + 30
                and s["time"] > first["time"]
                and (not audio or s["audioBytes"] > first["audioBytes"])
            ),
        )
        assert not [e for e in last["errors"] if e.endswith(":true")], last["errors"]  # nothing fatal
        return first, last
    finally:
        await page.close()


async def test_hlsjs_plays_live_hls(chromium: Browser, hls_site: str) -> None:
    _, last = await play(chromium, hls_site, audio=False)
    assert last["audioBytes"] == 0  # a stream without audio


async def test_hlsjs_plays_live_hls_with_opus_audio(chromium: Browser, hls_site_with_audio: str) -> None:
    """Video and Opus in the same fMP4 segments: hls.js plays them, and Chromium decodes the
    audio (its byte count grows) as well as the video."""
    first, last = await play(chromium, hls_site_with_audio, audio=True)
    assert last["audioBytes"] > first["audioBytes"] >= 0, (first, last)


async def test_hlsjs_plays_a_stream_whose_audio_never_comes(
    chromium: Browser, hls_site_without_the_audio: str
) -> None:
    """The init segment declares the Opus track the stream announced; the player would wait
    for its samples for ever (the picture frozen) if silence did not fill the track."""
    first, last = await play(chromium, hls_site_without_the_audio, audio=True)
    assert last["audioBytes"] > first["audioBytes"] >= 0, (first, last)
