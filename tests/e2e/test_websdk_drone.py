"""A drone camera played with the unmodified Flashphoner WebSDK in headless Chromium: the play
request makes the (simulated) DJI dock push RTMP over the DJI Cloud API, and the browser
shows live video. Real Mosquitto, real ffmpeg push, real browser."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.async_api import Browser

from tests.conftest import GatewayProcess, MosquittoProcess

from .harness import Harness, StaticServer
from .test_websdk_chromium import assert_video_decodes

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

DRONE_VIDEO = "SIMAIRCRAFT0001/53-0-0/normal-0"


@pytest.fixture
def drone_gateway(
    make_gateway: Callable[[dict[str, str]], GatewayProcess], mosquitto: MosquittoProcess
) -> Iterator[GatewayProcess]:
    gateway = make_gateway({"SKYRELAY_MQTT": mosquitto.url, "SKYRELAY_LIVE_LINGER": "1"})
    dock = subprocess.Popen(
        [sys.executable, "-m", "gateway", "dock-sim", "--mqtt", mosquitto.url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield gateway
    finally:
        dock.terminate()
        dock.wait(timeout=10)


async def devices(gateway: GatewayProcess) -> dict[str, Any]:
    def get() -> dict[str, Any]:
        with urllib.request.urlopen(gateway.http_url + "/api/devices", timeout=5) as reply:
            return json.loads(reply.read())

    return await asyncio.to_thread(get)


async def test_websdk_plays_a_drone_camera(
    chromium: Browser, drone_gateway: GatewayProcess, static_server: StaticServer
) -> None:
    harness = Harness(browser=chromium, gateway=drone_gateway, static_url=static_server.url)
    # The dock announces itself every few seconds; a play before that is "Stream not found".
    async with asyncio.timeout(30):
        while not any(g["online"] for g in (await devices(drone_gateway))["gateways"]):
            await asyncio.sleep(0.2)
    page = await harness.open_websdk("drone")
    await page.evaluate("([label, name]) => e2e.play(label, name)", ["play", DRONE_VIDEO])
    await harness.wait_status(page, "play", "PLAYING", timeout=45)
    await assert_video_decodes(harness, page, "play")
    size = await page.evaluate("label => e2e.video(label)", "play")
    assert (size["width"], size["height"]) == (1280, 720)
    await page.evaluate("label => e2e.stop(label)", "play")
    await harness.wait_status(page, "play", "STOPPED", timeout=10)
