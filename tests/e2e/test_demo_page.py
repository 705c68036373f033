"""The demo page (gateway/static/, served by the gateway's HTTP port) publishes and plays in Chromium.

It uses our own raw-protocol client (gateway/static/skyrelay-client.js), not the WebSDK. With its
"WebRTC over TCP" switch on, it publishes and plays in a Chromium whose UDP is blocked.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from playwright.async_api import Browser, Page

from .conftest import RTC_RECORDER
from .harness import Harness
from .ice import assert_tcp_only, free_tcp_udp_port, remote_sdp, requests, selected_pair, webrtc_env

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
    await assert_live_video(demo, page, play)

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


async def test_demo_page_tcp_switch_udp_blocked(
    chromium_udp_blocked: Browser, make_gateway: Callable[[dict[str, str]], Any]
) -> None:
    """The switch sends `transport: "TCP"` in publishStream and playStream; a browser whose UDP
    datagrams are all dropped then publishes and plays over ICE-TCP."""
    udp_port, tcp_port = free_tcp_udp_port(), free_tcp_udp_port()
    gateway = make_gateway(webrtc_env(udp_port, tcp_port, ice_timeout=10))
    demo = Harness(chromium_udp_blocked, gateway, gateway.http_url, init_scripts=[RTC_RECORDER])
    page = await demo.open(f"{gateway.http_url}/?ws={quote(gateway.ws_url, safe='')}", "demo")
    assert not await page.is_checked("#webrtc-tcp")
    await page.check("#webrtc-tcp")
    await page.click("#connect")
    await demo.wait_for(
        page,
        "document.querySelector('#conn-status').textContent",
        lambda s: s == "ESTABLISHED",
        timeout=10,
        what="demo page connects",
    )

    name = f"demo-tcp-{uuid.uuid4().hex[:8]}"
    pub = CARD.format(kind="publish", name=name)
    play = CARD.format(kind="play", name=name)
    card_status = "sel => document.querySelector(sel)?.dataset.status || null"

    await page.fill("#publish-name", name)
    await page.click("#publish")
    answer = await remote_sdp(demo, page, "publish", pc=0)
    assert [(r["message"], r["transport"]) for r in await requests(page)] == [("publishStream", "TCP")]
    assert_tcp_only(demo, answer, tcp_port, "publish answer")
    await demo.wait_for(
        page,
        card_status,
        lambda s: s == "PUBLISHING",
        fail_if=lambda s: s == "FAILED",
        timeout=15,
        what="publish card PUBLISHING over TCP",
        arg=pub,
    )

    await page.fill("#play-name", name)
    await page.click("#play")
    answer = await remote_sdp(demo, page, "play", pc=1)
    assert [(r["message"], r["transport"]) for r in await requests(page)][1:] == [("playStream", "TCP")]
    assert_tcp_only(demo, answer, tcp_port, "play answer")
    await demo.wait_for(
        page,
        card_status,
        lambda s: s == "PLAYING",
        fail_if=lambda s: s == "FAILED",
        timeout=15,
        what="play card PLAYING over TCP",
        arg=play,
    )
    pair = await selected_pair(demo, page, "player", pc=1)
    assert pair["local"]["protocol"] == "tcp" and pair["remote"]["port"] == tcp_port, pair
    assert await page.get_attribute(play, "data-transport") == "TCP"
    await assert_live_video(demo, page, play)

    await page.click(f"{play} .stop")
    await demo.wait_for(
        page, card_status, lambda s: s == "STOPPED", timeout=10, what="play STOPPED", arg=play
    )
    await page.click(f"{pub} .stop")
    await demo.wait_for(
        page, card_status, lambda s: s == "UNPUBLISHED", timeout=10, what="UNPUBLISHED", arg=pub
    )
    errors = [line for line in demo.console if "pageerror" in line]
    assert not errors, demo.report(f"page errors: {errors}")


async def assert_live_video(demo: Harness, page: Page, card: str) -> None:
    """The card's <video> decodes, and keeps decoding new frames: live video, not a still."""
    await demo.wait_for(
        page,
        "sel => document.querySelector(sel + ' video')?.videoWidth || 0",
        lambda w: w > 0,
        timeout=10,
        what=f"{card} <video> decodes (videoWidth > 0)",
        arg=card,
    )
    decoded = "sel => document.querySelector(sel + ' video')?.getVideoPlaybackQuality().totalVideoFrames || 0"
    first = await page.evaluate(decoded, card)
    await demo.wait_for(
        page,
        decoded,
        lambda frames: frames >= first + 20,
        timeout=10,
        what=f"{card} <video> keeps decoding new frames",
        arg=card,
    )
