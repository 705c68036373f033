"""hls.js (fetched from npm at test time) plays the gateway's HLS in headless Debian Chromium:
a Stream fed from a pre-encoded clip, packaged by `HlsService`, served by `hls_routes` on
loopback together with the page and hls.js (one origin)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from playwright.async_api import Browser, Page

from gateway.http.hls import hls_routes
from gateway.media.registry import StreamRegistry
from gateway.media.sinks.hls import HlsService
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


@pytest.fixture
async def hls_site(hlsjs: Path) -> AsyncIterator[str]:
    """The page, hls.js and the HLS of NAME (a 320x240 clip) on one loopback origin."""
    units = read_access_units(
        make_h264_clip(CACHE, width=320, height=240, fps=30, seconds=4, bitrate=300_000, gop=30)
    )
    registry = StreamRegistry()
    camera = ClipCamera(registry, NAME, units)
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


async def test_hlsjs_plays_live_hls(chromium: Browser, hls_site: str) -> None:
    page = await chromium.new_page()
    try:
        src = f"{hls_site}/hls/{quote(NAME)}/index.m3u8"
        await page.goto(f"{hls_site}/player.html?src={quote(src, safe='')}")
        first = await wait_state(page, "first decoded frames", lambda s: s.get("frames", 0) > 0)
        assert first["supported"] and (first["width"], first["height"]) == (320, 240), first
        # Live, not a still picture: frames keep being decoded and the clock runs.
        last = await wait_state(
            page,
            "more decoded frames",
            lambda s: s["frames"] > first["frames"] + 30 and s["time"] > first["time"],
        )
        assert not [e for e in last["errors"] if e.endswith(":true")], last["errors"]  # nothing fatal
    finally:
        await page.close()
