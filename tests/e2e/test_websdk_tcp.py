"""WebRTC over ICE-TCP with the unmodified Flashphoner WebSDK in headless Chromium.

The gateway listens on its own WebRTC UDP port and ICE-TCP port (settings `webrtc_udp_port`,
`webrtc_tcp_port`; never the 8189 defaults, other gateways may run here). A stream created with
`transport: "TCP"` gets an answer with only `tcp ... tcptype passive` candidates; without it the
answer has both, UDP outranking TCP.

`chromium_udp_blocked` drops every UDP datagram the browser sends (LD_PRELOAD shim, see
udp_block.c; test_udp_block.py shows it keeps a UDP-only session from connecting).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from tests.conftest import GatewayProcess

from .conftest import RTC_RECORDER
from .harness import Harness, StaticServer
from .ice import (
    assert_tcp_only,
    assert_udp_and_tcp,
    free_port_range,
    remote_sdp,
    requests,
    selected_pair,
    webrtc_env,
)
from .test_websdk_chromium import assert_video_decodes

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

ICE_TIMEOUT = 10.0
PUBLISH = "([label, name, options]) => e2e.publish(label, name, options)"
PLAY = "([label, name, options]) => e2e.play(label, name, options)"
TCP = {"transport": "TCP"}


@dataclass(frozen=True)
class WebRtcPorts:
    """Each worker's UDP and ICE-TCP port (worker i: ``udp[i]``, ``tcp[i]``)."""

    udp: range
    tcp: range


@pytest.fixture(scope="module")
def webrtc_ports() -> WebRtcPorts:
    return WebRtcPorts(udp=free_port_range(), tcp=free_port_range())


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, webrtc_ports: WebRtcPorts) -> Iterator[GatewayProcess]:
    """This module's gateway: UDP and ICE-TCP on the ports of `webrtc_ports`."""
    gw = GatewayProcess(extra_env=webrtc_env(webrtc_ports.udp, webrtc_ports.tcp, ICE_TIMEOUT))
    gw.start(tmp_path_factory.mktemp("gateway-tcp"))
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def harness_open(chromium: Browser, gateway: GatewayProcess, static_server: StaticServer) -> Harness:
    """An ordinary (UDP-capable) Chromium, with the RTCPeerConnection recorder."""
    return Harness(chromium, gateway, static_server.url, init_scripts=[RTC_RECORDER])


def stream_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def start(harness: Harness, kind: str, name: str, options: dict[str, Any] | None) -> tuple[Page, str]:
    """A page that publishes or plays `name` with createStream `options`; returns it and the
    gateway's answer (once applied), after checking the request's `transport` field."""
    label = "pub" if kind == "publish" else "play"
    page = await harness.open_websdk(f"{kind}er")
    await page.evaluate(PUBLISH if kind == "publish" else PLAY, [label, name, options or {}])
    answer = await remote_sdp(harness, page, f"{kind} {name}")
    sent = await requests(page)
    message = "publishStream" if kind == "publish" else "playStream"
    assert [r["message"] for r in sent] == [message], sent
    expected = (options or {}).get("transport")
    assert sent[0]["transport"] == expected, f"the WebSDK sent transport {sent[0]['transport']!r}: {sent}"
    return page, answer


async def test_tcp_transport_publish_play_udp_blocked(
    harness_udp_blocked: Harness, webrtc_ports: WebRtcPorts
) -> None:
    harness = harness_udp_blocked
    name = stream_name("tcp")

    publisher, answer = await start(harness, "publish", name, TCP)
    assert_tcp_only(harness, answer, webrtc_ports.tcp, "publish answer")
    await harness.wait_status(publisher, "pub", "PUBLISHING")
    pair = await selected_pair(harness, publisher, "publisher")
    assert pair["local"]["protocol"] == "tcp", pair
    assert pair["remote"]["port"] in webrtc_ports.tcp, pair

    player, answer = await start(harness, "play", name, TCP)
    assert_tcp_only(harness, answer, webrtc_ports.tcp, "play answer")
    await harness.wait_status(player, "play", "PLAYING")
    pair = await selected_pair(harness, player, "player")
    assert pair["local"]["protocol"] == "tcp", pair
    assert pair["remote"]["port"] in webrtc_ports.tcp, pair
    await assert_video_decodes(harness, player, "play")

    await player.evaluate("label => e2e.stop(label)", "play")
    await harness.wait_status(player, "play", "STOPPED", timeout=10)
    await publisher.evaluate("label => e2e.stop(label)", "pub")
    await harness.wait_status(publisher, "pub", "UNPUBLISHED", timeout=10)
    assert harness.gateway.health()


async def test_default_transport_udp_blocked_connects_over_tcp(
    harness_udp_blocked: Harness, webrtc_ports: WebRtcPorts
) -> None:
    harness = harness_udp_blocked
    publisher, answer = await start(harness, "publish", stream_name("both-blocked"), None)
    assert_udp_and_tcp(harness, answer, webrtc_ports.udp, webrtc_ports.tcp, "publish answer")
    await harness.wait_status(publisher, "pub", "PUBLISHING")
    pair = await selected_pair(harness, publisher, "publisher")
    assert pair["local"]["protocol"] == "tcp" and pair["remote"]["protocol"] == "tcp", pair
    assert pair["remote"]["port"] in webrtc_ports.tcp, pair
    await publisher.evaluate("label => e2e.stop(label)", "pub")
    await harness.wait_status(publisher, "pub", "UNPUBLISHED", timeout=10)


async def test_default_transport_open_browser_prefers_udp(
    harness_open: Harness, webrtc_ports: WebRtcPorts
) -> None:
    harness = harness_open
    name = stream_name("both-open")
    publisher, answer = await start(harness, "publish", name, None)
    assert_udp_and_tcp(harness, answer, webrtc_ports.udp, webrtc_ports.tcp, "publish answer")
    await harness.wait_status(publisher, "pub", "PUBLISHING")
    player, answer = await start(harness, "play", name, None)
    assert_udp_and_tcp(harness, answer, webrtc_ports.udp, webrtc_ports.tcp, "play answer")
    await harness.wait_status(player, "play", "PLAYING")
    # Chromium opens the TCP connection during checks too; the pair it keeps is UDP's, on
    # the shared UDP port. Checked after a moment, so a late switch to TCP would show.
    await asyncio.sleep(1)
    for page, who in ((publisher, "publisher"), (player, "player")):
        pair = await selected_pair(harness, page, who)
        assert pair["local"]["protocol"] == "udp" and pair["remote"]["protocol"] == "udp", (who, pair)
        assert pair["remote"]["port"] in webrtc_ports.udp, (who, pair)
    await assert_video_decodes(harness, player, "play")
    await player.evaluate("label => e2e.stop(label)", "play")
    await harness.wait_status(player, "play", "STOPPED", timeout=10)
    await publisher.evaluate("label => e2e.stop(label)", "pub")
    await harness.wait_status(publisher, "pub", "UNPUBLISHED", timeout=10)
