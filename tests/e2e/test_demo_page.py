"""The demo page (gateway/static/, served by the gateway's HTTP port) publishes and plays in Chromium.

It uses our own raw-protocol client (gateway/static/skyrelay-client.js), not the WebSDK.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import pytest
from playwright.async_api import Browser

from .harness import Harness

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

CARD = '.stream[data-kind="{kind}"][data-name="{name}"]'
METRIC = ' [data-metric="videoRate"]'


@pytest.fixture
def demo(chromium: Browser, gateway: Any) -> Harness:
    return Harness(browser=chromium, gateway=gateway, static_url=gateway.http_url)


async def test_demo_page_publish_play_metrics(demo: Harness) -> None:
    gateway = demo.gateway
    page = await demo.open(f"{gateway.http_url}/?ws={quote(gateway.ws_url, safe='')}", "demo")
    assert await page.input_value("#ws-url") == gateway.ws_url

    await page.click("#connect")
    await demo.wait_for(
        page,
        "document.querySelector('#conn-status').textContent",
        lambda s: s == "ESTABLISHED",
        timeout=10,
        what="demo page connects",
    )

    name = f"demo-{uuid.uuid4().hex[:8]}"
    pub = CARD.format(kind="publish", name=name)
    play = CARD.format(kind="play", name=name)
    card_status = "sel => document.querySelector(sel)?.dataset.status || null"

    await page.fill("#publish-name", name)
    await page.click("#publish")
    await demo.wait_for(
        page,
        card_status,
        lambda s: s == "PUBLISHING",
        fail_if=lambda s: s == "FAILED",
        timeout=15,
        what="publish card PUBLISHING",
        arg=pub,
    )

    await page.fill("#play-name", name)
    await page.click("#play")
    await demo.wait_for(
        page,
        card_status,
        lambda s: s == "PLAYING",
        fail_if=lambda s: s == "FAILED",
        timeout=15,
        what="play card PLAYING",
        arg=play,
    )
    await demo.wait_for(
        page,
        "sel => document.querySelector(sel + ' video')?.videoWidth || 0",
        lambda w: w > 0,
        timeout=10,
        what="played <video> decodes (videoWidth > 0)",
        arg=play,
    )
    # Live video, not a still picture: new frames keep being decoded.
    decoded = "sel => document.querySelector(sel + ' video')?.getVideoPlaybackQuality().totalVideoFrames || 0"
    first = await page.evaluate(decoded, play)
    await demo.wait_for(
        page,
        decoded,
        lambda frames: frames >= first + 20,
        timeout=10,
        what="played <video> keeps decoding new frames",
        arg=play,
    )

    video_rate = "sel => Number(document.querySelector(sel)?.dataset.value || 0)"
    for card in (play, pub):
        await demo.wait_for(
            page,
            video_rate,
            lambda rate: rate > 0,
            timeout=5,
            what=f"metrics panel of {card} shows videoRate > 0",
            arg=card + METRIC,
        )

    await page.click(f"{play} .stop")
    await demo.wait_for(
        page, card_status, lambda s: s == "STOPPED", timeout=10, what="play STOPPED", arg=play
    )
    await page.click(f"{pub} .stop")
    await demo.wait_for(
        page, card_status, lambda s: s == "UNPUBLISHED", timeout=10, what="UNPUBLISHED", arg=pub
    )
    unknown = CARD.format(kind="play", name=f"{name}-unknown")
    await page.fill("#play-name", f"{name}-unknown")
    await page.click("#play")
    await demo.wait_for(
        page,
        "sel => [document.querySelector(sel)?.dataset.status,"
        " document.querySelector(sel + ' .info')?.textContent]",
        lambda s: s == ["FAILED", "Stream not found"],
        timeout=10,
        what="play of an unknown name shows FAILED / Stream not found",
        arg=unknown,
    )

    errors = [line for line in demo.console if "pageerror" in line]
    assert not errors, demo.report(f"page errors: {errors}")
