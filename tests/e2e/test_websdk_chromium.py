"""The unmodified Flashphoner WebSDK in headless Chromium publishes and plays through the gateway.

Each test uses its own pages (each page has its own Flashphoner session): one publishes the
fake camera, another plays it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from playwright.async_api import Page

from .harness import Harness

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]


def stream_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def publish(harness: Harness, name: str) -> Page:
    page = await harness.open_websdk("publisher")
    await page.evaluate("([label, name]) => e2e.publish(label, name)", ["pub", name])
    await harness.wait_status(page, "pub", "PUBLISHING")
    return page


async def play(harness: Harness, name: str) -> Page:
    page = await harness.open_websdk("player")
    await page.evaluate("([label, name]) => e2e.play(label, name)", ["play", name])
    await harness.wait_status(page, "play", "PLAYING")
    return page


async def assert_video_decodes(harness: Harness, page: Page, label: str) -> None:
    """videoWidth > 0, and over about 2 s currentTime advancing and new frames decoded: live
    video, not a still picture (a frozen frame still has a width and a running clock)."""
    first: dict[str, Any] = await harness.wait_for(
        page,
        "label => e2e.video(label)",
        lambda v: bool(v) and v["width"] > 0 and v["time"] > 0,
        timeout=30,
        what=f"{label}: <video> has decoded frames",
        arg=label,
    )
    await asyncio.sleep(2)
    second = await page.evaluate("label => e2e.video(label)", label)
    advanced = second["time"] - first["time"] if second else 0.0
    decoded = second["frames"] - first["frames"] if second else 0
    # The fake camera runs at 20-30 fps: 2 s must decode far more than 10 new frames.
    if not second or second["width"] <= 0 or advanced < 1.0 or decoded < 10:
        pytest.fail(harness.report(f"{label}: playback did not advance: {first} -> {second}"))


async def test_publish_play_stop_unpublish(harness: Harness) -> None:
    name = stream_name("cam")
    publisher = await publish(harness, name)
    # Join late: the cached keyframe is old, so live video needs the keyframe the gateway
    # asks the browser for (PLI on the publisher's media SSRC, not its RTX one).
    await asyncio.sleep(2)
    player = await play(harness, name)
    await assert_video_decodes(harness, player, "play")

    await player.evaluate("label => e2e.stop(label)", "play")
    await harness.wait_status(player, "play", "STOPPED", timeout=10)

    await publisher.evaluate("label => e2e.stop(label)", "pub")
    await harness.wait_status(publisher, "pub", "UNPUBLISHED", timeout=10)
    assert harness.gateway.health()


async def test_play_unknown_name_fails(harness: Harness) -> None:
    page = await harness.open_websdk("player")
    await page.evaluate("([label, name]) => e2e.play(label, name)", ["nope", stream_name("nope")])
    stream = await harness.wait_status(page, "nope", "FAILED", timeout=10)
    if stream["info"] != "Stream not found":
        pytest.fail(harness.report(f"FAILED with getInfo() {stream['info']!r}; stream {stream}"))


async def test_player_stopped_by_publisher_stop(harness: Harness) -> None:
    name = stream_name("cam")
    publisher = await publish(harness, name)
    player = await play(harness, name)

    await publisher.evaluate("label => e2e.stop(label)", "pub")
    await harness.wait_status(publisher, "pub", "UNPUBLISHED", timeout=10)
    stream = await harness.wait_for(
        player,
        "label => e2e.state.streams[label]",
        lambda s: s["status"] in ("FAILED", "STOPPED", "UNPUBLISHED"),
        timeout=10,
        what="player: terminal status after the publisher stopped",
        arg="play",
    )
    if stream["info"] != "Stopped by publisher stop":
        pytest.fail(harness.report(f"player ended with getInfo() {stream['info']!r}; stream {stream}"))
