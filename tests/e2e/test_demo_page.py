"""The demo page (gateway/static/, served by the gateway's HTTP port) publishes and plays in Chromium.

It uses our own raw-protocol client (gateway/static/skyrelay-client.js), not the WebSDK. With its
"WebRTC over TCP" switch on, it publishes and plays in a Chromium whose UDP is blocked. Playing
the simulated dock's drone camera, it shows the aircraft's telemetry over the video, timed to
the frame on screen.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from playwright.async_api import Browser, Page

from tests.conftest import GatewayProcess

from .conftest import RTC_RECORDER
from .drone import DRONE_VIDEO, dock_sim, wait_dock_online
from .harness import Harness
from .ice import assert_tcp_only, free_port_range, remote_sdp, requests, selected_pair, webrtc_env

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
    udp_ports, tcp_ports = free_port_range(), free_port_range()
    gateway = make_gateway(webrtc_env(udp_ports, tcp_ports, ice_timeout=10))
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
    assert_tcp_only(demo, answer, tcp_ports, "publish answer")
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
    assert_tcp_only(demo, answer, tcp_ports, "play answer")
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
    assert pair["local"]["protocol"] == "tcp" and pair["remote"]["port"] in tcp_ports, pair
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


@pytest.fixture
def drone_demo(
    chromium: Browser, make_gateway: Callable[[dict[str, str]], GatewayProcess]
) -> Iterator[Harness]:
    """A gateway (its embedded MQTT broker) and the simulated dock flying its aircraft."""
    gateway = make_gateway({"SKYRELAY_LIVE_LINGER": "1"})
    with dock_sim(f"mqtt://127.0.0.1:{gateway.mqtt_broker_port}"):
        yield Harness(browser=chromium, gateway=gateway, static_url=gateway.http_url)


HUD = """sel => Object.fromEntries(
  [...document.querySelectorAll(sel + ' [data-hud]')].map(e => [e.dataset.hud, e.textContent]))"""
HUD_STATE = """sel => { const h = document.querySelector(sel + ' .hud');
  return h && { hidden: h.hidden, shown: Number(h.dataset.shown || 0), via: h.dataset.via || null,
                frame: h.dataset.frameRtp || null, sample: h.dataset.sampleRtp || null }; }"""
TRACK_PIXELS = """sel => { const c = document.querySelector(sel + ' canvas.track');
  const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0; for (let i = 3; i < data.length; i += 4) if (data[i]) n++; return n; }"""
RTP_SECOND = 90_000


def rtp_diff(a: int, b: int) -> int:
    """Ticks from RTP timestamp ``a`` to ``b`` on the wrapping 32-bit clock (negative: before)."""
    d = (b - a) % 2**32
    return d - 2**32 if d >= 2**31 else d


async def test_demo_page_drone_hud(drone_demo: Harness) -> None:
    """One click plays the simulated drone camera; the HUD over the video shows the aircraft's
    telemetry, changing as it flies, and its track; the sample shown is the latest stamped at
    or before the frame on screen (on the player's own RTP clock)."""
    demo, gateway = drone_demo, drone_demo.gateway
    await wait_dock_online(gateway)
    page = await demo.open(f"{gateway.http_url}/?ws={quote(gateway.ws_url, safe='')}", "demo")
    button = page.locator("#drones button", has_text=DRONE_VIDEO)
    await demo.wait_for(
        page,
        "() => [...document.querySelectorAll('#drones button')].some(b => !b.disabled)",
        bool,
        timeout=15,
        what="the drone camera's play button",
    )
    await button.click()
    card = CARD.format(kind="play", name=DRONE_VIDEO)
    await demo.wait_for(
        page,
        "sel => document.querySelector(sel)?.dataset.status || null",
        lambda s: s == "PLAYING",
        fail_if=lambda s: s == "FAILED",
        timeout=45,
        what="drone camera card PLAYING",
        arg=card,
    )
    await assert_live_video(demo, page, card)
    state = await demo.wait_for(
        page,
        HUD_STATE,
        lambda h: bool(h) and not h["hidden"] and h["shown"] >= 1,
        timeout=30,
        what="the HUD shows a telemetry sample",
        arg=card,
    )
    # The page's offer had a data channel: the telemetry comes on it.
    assert state["via"] == "datachannel", state

    first = await page.evaluate(HUD, card)
    assert re.fullmatch(r"-?\d+\.\d m", first["height"]), first
    assert re.fullmatch(r"\d+ %", first["battery"]), first
    await demo.wait_for(
        page,
        HUD,
        lambda hud: (hud["height"], hud["heading"]) != (first["height"], first["heading"]),
        timeout=20,
        what=f"the HUD's height or heading changes from {first}",
        arg=card,
    )
    later = await page.evaluate(HUD, card)
    assert re.fullmatch(r"\d+ %", later["battery"]), later
    await demo.wait_for(
        page, TRACK_PIXELS, lambda n: n > 0, timeout=10, what="the track canvas is drawn", arg=card
    )

    # Frame and sample stamps are set together, in each frame's callback: the sample shown
    # is stamped at or before the frame, and not long before.
    await assert_hud_in_sync(demo, page, card)

    # A lens switch restarts the dock's push: the HUD goes on, in sync with the new video.
    shown = (await page.evaluate(HUD_STATE, card))["shown"]
    await page.select_option(f"{card} .controls .lens", "zoom")
    await page.wait_for_selector(f"{card} .controls[data-result=ok]", timeout=30_000)
    await demo.wait_for(
        page,
        HUD_STATE,
        lambda h: h["shown"] >= shown + 10,
        timeout=30,
        what="the HUD goes on after a lens switch",
        arg=card,
    )
    await assert_hud_in_sync(demo, page, card)

    await page.click(f"{card} .stop")
    errors = [line for line in demo.console if "pageerror" in line]
    assert not errors, demo.report(f"page errors: {errors}")


async def assert_hud_in_sync(demo: Harness, page: Page, card: str) -> None:
    """Frame and sample stamps are set together, in each frame's callback: over 2 s of
    frames, the sample shown is stamped at or before the frame, and less than 1 s before."""
    readings = []
    for _ in range(20):
        readings.append(await page.evaluate(HUD_STATE, card))
        await page.wait_for_timeout(100)
    for state in readings:
        frame, sample = int(state["frame"]), int(state["sample"])
        if not 0 <= rtp_diff(sample, frame) < RTP_SECOND:
            pytest.fail(demo.report(f"sample {sample} shown with frame {frame}; readings {readings}"))
    assert len({r["frame"] for r in readings}) > 1, readings  # frames went on meanwhile


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


# The client's telemetry logic on plain data, in Chromium (the module as the page loads it).
CLIENT_LOGIC = """async () => {
  const m = await import('./skyrelay-client.js');
  const out = {};
  const W = 2 ** 32;
  out.before = [m.rtpAtOrBefore(W - 100, 50), m.rtpAtOrBefore(50, W - 100), m.rtpAtOrBefore(7, 7),
                m.rtpDiff(W - 100, 50), m.rtpDiff(50, W - 100)];
  const p = (rtp, n) => ({ rtpTimestamp: rtp, stream: 's', sample: { sn: 'A', receivedAt: n } });
  // Stamps across the 32-bit wrap, arriving out of order.
  const b = new m.TelemetryBuffer();
  for (const [rtp, n] of [[W - 9000, 1], [W - 3000, 3], [W - 6000, 2], [3000, 5], [0, 4]]) b.add(p(rtp, n));
  out.order = b.timed.map(x => x.sample.receivedAt);
  out.beforeAll = b.pick(W - 9001);
  out.picks = [W - 9000, W - 4000, W - 1, 0, 2999, 100000].map(f => b.pick(f).sample.receivedAt);
  out.left = b.timed.length;  // older than the last choice: gone
  out.unknownFrame = b.pick(undefined).sample.receivedAt;  // no frame stamp: the last received
  // Only unstamped samples (video not started when they came): the newest one.
  const u = new m.TelemetryBuffer();
  u.add(p(null, 1)); u.add(p(null, 2));
  out.unstamped = [u.pick(5000).sample.receivedAt, u.pick(undefined).sample.receivedAt];
  // A stamp far ahead of the frame is from an earlier timeline: dropped, the right one chosen.
  const r = new m.TelemetryBuffer();
  r.add(p(5000000, 1)); r.add(p(1000, 2));
  out.restart = [r.pick(2000).sample.receivedAt, r.timed.length];
  const cap = new m.TelemetryBuffer(4);
  for (let i = 0; i < 10; i++) cap.add(p(i * 100, i));
  out.capped = cap.timed.map(x => x.sample.receivedAt);
  // A sample comes on the data channel and the WebSocket: one event; malformed ones: none.
  const client = new m.SkyrelayClient('ws://127.0.0.1:9');
  const session = new m.MediaSession(client, 's', false);
  const got = [];
  session.addEventListener('telemetry', e => got.push([e.detail.sample.receivedAt, e.detail.via]));
  session._telemetry(p(10, 1), 'websocket');
  session._telemetry(p(10, 1), 'datachannel');
  for (const bad of [null, 5, 'x', {}, { sample: 7 }, { rtpTimestamp: 1 }]) {
    session._telemetry(bad, 'websocket');
  }
  session.telemetryChannel = { readyState: 'open' };  // once the channel is open, only its copies
  session._telemetry(p(20, 2), 'websocket');
  session._telemetry(p(20, 2), 'datachannel');
  session._telemetry(p(20, 2), 'datachannel');
  session.pc.close();
  out.events = got;
  // followFrames without requestVideoFrameCallback, or with frames that carry no RTP
  // timestamp (not WebRTC): the newest sample.
  const f = new m.TelemetryBuffer();
  f.add(p(100, 1)); f.add(p(50, 2));
  const seen = [];
  const record = kind => (x, rtp) => seen.push([kind, x.sample.receivedAt, rtp ?? null]);
  const stopPlain = m.followFrames({}, f, record('plain'));
  const frames = [];
  const video = { requestVideoFrameCallback: cb => frames.push(cb) };
  const stopRvfc = m.followFrames(video, f, record('rvfc'));
  frames.shift()(0, { mediaTime: 1 });
  frames.shift()(0, { rtpTimestamp: 120 });
  await new Promise(r => setTimeout(r, 250));
  stopPlain(); stopRvfc();
  frames.shift()(0, { rtpTimestamp: 200 });  // after stop: not shown, not asked again
  out.follow = [
    seen.filter(s => s[0] === 'rvfc'), seen.some(s => s[0] === 'plain' && s[1] === 2), frames.length,
  ];
  return out;
}"""


async def test_client_telemetry_logic(demo: Harness) -> None:
    page = await demo.open(f"{demo.gateway.http_url}/", "logic")
    out = await page.evaluate(CLIENT_LOGIC)
    assert out["before"] == [True, False, True, 150, -150]
    assert out["order"] == [1, 2, 3, 4, 5]
    assert out["beforeAll"] is None
    assert out["picks"] == [1, 2, 3, 4, 4, 5]
    assert out["left"] == 1
    assert out["unknownFrame"] == 4
    assert out["unstamped"] == [2, 2]
    assert out["restart"] == [2, 1]
    assert out["capped"] == [6, 7, 8, 9]
    assert out["events"] == [[1, "websocket"], [2, "datachannel"]]
    assert out["follow"] == [[["rvfc", 2, None], ["rvfc", 1, 120]], True, 0]
    errors = [line for line in demo.console if "pageerror" in line]
    assert not errors, demo.report(f"page errors: {errors}")
