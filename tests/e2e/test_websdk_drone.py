"""A drone camera played with the unmodified Flashphoner WebSDK in headless Chromium: the play
request makes the (simulated) DJI dock push RTMP over the DJI Cloud API, and the browser
shows live video. Real Mosquitto, real ffmpeg push, real browser."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from playwright.async_api import Browser

from tests.conftest import GatewayProcess, MosquittoProcess

from .drone import AIRCRAFT, DRONE_VIDEO, dock_sim, wait_dock_online
from .harness import Harness, StaticServer
from .test_websdk_chromium import assert_video_decodes

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.fixture
def drone_gateway(
    make_gateway: Callable[[dict[str, str]], GatewayProcess], mosquitto: MosquittoProcess
) -> Iterator[GatewayProcess]:
    gateway = make_gateway({"SKYRELAY_MQTT": mosquitto.url, "SKYRELAY_LIVE_LINGER": "1"})
    with dock_sim(mosquitto.url):
        yield gateway


async def test_websdk_plays_a_drone_camera(
    chromium: Browser, drone_gateway: GatewayProcess, static_server: StaticServer
) -> None:
    harness = Harness(browser=chromium, gateway=drone_gateway, static_url=static_server.url)
    await wait_dock_online(drone_gateway)
    page = await harness.open_websdk("drone")
    await page.evaluate("([label, name]) => e2e.play(label, name)", ["play", DRONE_VIDEO])
    await harness.wait_status(page, "play", "PLAYING", timeout=45)
    await assert_video_decodes(harness, page, "play")
    size = await page.evaluate("label => e2e.video(label)", "play")
    assert (size["width"], size["height"]) == (1280, 720)
    await page.evaluate("label => e2e.stop(label)", "play")
    await harness.wait_status(page, "play", "STOPPED", timeout=10)


def rtp_diff(a: int, b: int) -> int:
    """Ticks from RTP timestamp ``a`` to ``b`` on the wrapping 32-bit clock (negative: before)."""
    d = (b - a) % 2**32
    return d - 2**32 if d >= 2**31 else d


async def test_websdk_receives_telemetry_events(
    chromium: Browser, drone_gateway: GatewayProcess, static_server: StaticServer
) -> None:
    """The unmodified WebSDK hands the `telemetry` stream events of a drone camera to
    `stream.on(STREAM_EVENT)`: stamped on the player's RTP clock, increasing, with the aircraft's
    sample. A second player of the same camera with `custom: {telemetry: false}` gets none."""
    harness = Harness(browser=chromium, gateway=drone_gateway, static_url=static_server.url)
    await wait_dock_online(drone_gateway)
    page = await harness.open_websdk("drone")
    await page.evaluate("([label, name]) => e2e.play(label, name)", ["tele", DRONE_VIDEO])
    await page.evaluate(
        "([label, name]) => e2e.play(label, name, {custom: {telemetry: false}})", ["quiet", DRONE_VIDEO]
    )
    await harness.wait_status(page, "tele", "PLAYING", timeout=45)
    await harness.wait_status(page, "quiet", "PLAYING", timeout=45)
    await assert_video_decodes(harness, page, "quiet")

    events = await harness.wait_for(
        page,
        "label => e2e.state.streams[label].telemetry",
        lambda t: len(t) >= 10,
        timeout=30,
        what="tele: 10 telemetry stream events",
        arg="tele",
    )
    stamps = [e["rtpTimestamp"] for e in events]
    assert all(isinstance(s, int) for s in stamps), stamps
    steps = [rtp_diff(a, b) for a, b in zip(stamps, stamps[1:], strict=False)]
    # Two samples within one frame interval share a stamp; none goes back, and time moves on.
    assert all(step >= 0 for step in steps) and sum(steps) > 0, stamps
    for event in events:
        assert event["stream"] == DRONE_VIDEO
        assert (event["sn"], event["kind"]) == (AIRCRAFT, "aircraft"), event
        assert isinstance(event["aircraft"]["height"], int | float), event
        assert isinstance(event["aircraft"]["battery"], int), event

    # The opted-out player played all along (its video decodes now too) and got no telemetry.
    await assert_video_decodes(harness, page, "quiet")
    quiet = await page.evaluate("label => e2e.state.streams[label]", "quiet")
    assert quiet["status"] == "PLAYING", quiet
    assert quiet["telemetry"] == [] and "telemetry" not in quiet["streamEvents"], quiet
    for label in ("tele", "quiet"):
        await page.evaluate("label => e2e.stop(label)", label)
        await harness.wait_status(page, label, "STOPPED", timeout=10)
