"""hls.js in headless Chromium turns the telemetry `emsg` boxes of the gateway's HLS into
metadata cues: ID3 ``TXXX`` frames whose value is the sample's JSON, timed inside the video
hls.js buffered."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.async_api import Browser

from gateway.media.emsg import TELEMETRY_DESCRIPTION
from gateway.media.registry import StreamRegistry
from tests.e2e.test_hls_chromium import NAME, PLAYER, hlsjs, serve_hls, wait_state
from tests.integration.test_hls import ClipCamera
from tests.telemetry_boxes import Sample

__all__ = ["hlsjs"]  # the fixture

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

PLAYER_CUES = """
  window.e2e.cues = () => {
    const out = [];
    for (const track of video.textTracks) {
      if (track.kind !== "metadata") continue;
      track.mode = "hidden";
      for (const cue of track.cues || []) {
        const value = cue.value || {};
        out.push({start: cue.startTime, key: value.key, info: value.info, data: value.data});
      }
    }
    const ranges = [];
    for (let i = 0; i < video.buffered.length; i++) {
      ranges.push([video.buffered.start(i), video.buffered.end(i)]);
    }
    return {cues: out, buffered: ranges};
  };
"""


class TelemetryCamera(ClipCamera):
    """The clip in real time, and 10 Hz of telemetry for its stream on the registry's hub."""

    def __init__(self, registry: StreamRegistry, name: str, units: Any) -> None:
        super().__init__(registry, name, units)
        self._telemetry = asyncio.ensure_future(self._publish(registry, name))

    async def _publish(self, registry: StreamRegistry, name: str) -> None:
        n = 0
        while True:
            registry.telemetry.publish(Sample("SN", n, height=50 + n), [name])
            n += 1
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        self._telemetry.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._telemetry
        await super().stop()


@pytest.fixture
async def hls_site_with_telemetry(hlsjs: Path) -> AsyncIterator[str]:
    async for url in serve_hls(hlsjs, TelemetryCamera):
        yield url


async def test_hlsjs_exposes_telemetry_as_metadata_cues(
    chromium: Browser, hls_site_with_telemetry: str
) -> None:
    page = await chromium.new_page()
    try:
        # The same player page, plus a reader of the metadata text track's cues.
        html = PLAYER.replace("</script>\n</body>", PLAYER_CUES + "</script>\n</body>")
        await page.route(
            lambda url: "/player-cues.html" in url,
            lambda route: route.fulfill(body=html, content_type="text/html"),
        )
        src = f"{hls_site_with_telemetry}/hls/{quote(NAME)}/index.m3u8"
        await page.goto(f"{hls_site_with_telemetry}/player-cues.html?src={quote(src, safe='')}")
        await wait_state(page, "decoded frames", lambda s: s.get("frames", 0) > 30)
        seen: dict[str, Any] = {}
        async with asyncio.timeout(30):
            while len((seen := await page.evaluate("() => window.e2e.cues()"))["cues"]) < 10:
                await asyncio.sleep(0.25)
    finally:
        await page.close()
    cues, buffered = seen["cues"], seen["buffered"]
    numbers = []
    for cue in cues:
        assert cue["key"] == "TXXX" and cue["info"] == TELEMETRY_DESCRIPTION, cue
        sample = json.loads(cue["data"])
        assert sample == Sample("SN", sample["n"], height=50 + sample["n"]).to_json()
        numbers.append(sample["n"])
        # On the video's timeline: inside what hls.js buffered (a frame of slack at the edges).
        assert any(start - 0.04 <= cue["start"] <= end + 0.04 for start, end in buffered), (cue, buffered)
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    starts = [cue["start"] for cue in cues]
    assert starts == sorted(starts)
