"""The UDP-blocking shim works: a Chromium whose UDP datagrams are dropped cannot reach a
gateway that offers only UDP candidates, while the same page in an ordinary Chromium can.

The gateway runs with ICE-TCP off (`webrtc_tcp_port` 0, which today's gateway, UDP only,
ignores) and a short ICE timeout, so the blocked publish ends FAILED quickly.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from playwright.async_api import Browser

from .conftest import RTC_RECORDER
from .harness import Harness, StaticServer
from .ice import free_port_range, remote_sdp, sdp_candidates

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

ICE_TIMEOUT = 3.0
PUBLISH = "([label, name]) => e2e.publish(label, name)"


@pytest.fixture
def udp_only_gateway(make_gateway: Callable[[dict[str, str]], Any]) -> Any:
    return make_gateway(
        {
            "SKYRELAY_WEBRTC_UDP_PORT": str(free_port_range().start),
            "SKYRELAY_WEBRTC_TCP_PORT": "0",
            "SKYRELAY_ICE_TIMEOUT": str(ICE_TIMEOUT),
        }
    )


async def test_udp_blocked_chromium_cannot_connect_over_udp(
    chromium_udp_blocked: Browser, chromium: Browser, udp_only_gateway: Any, static_server: StaticServer
) -> None:
    blocked = Harness(chromium_udp_blocked, udp_only_gateway, static_server.url, init_scripts=[RTC_RECORDER])
    page = await blocked.open_websdk("blocked publisher")
    await page.evaluate(
        "([label, name]) => e2e.publish(label, name)", ["pub", f"blocked-{uuid.uuid4().hex[:8]}"]
    )
    answer = await remote_sdp(blocked, page, "blocked publisher")
    transports = {c.transport for c in sdp_candidates(answer)}
    assert transports == {"udp"}, f"the gateway must offer UDP candidates only here: {answer}"

    stream = await blocked.wait_for(
        page,
        "label => e2e.state.streams[label]",
        lambda s: s["status"] == "FAILED",
        fail_if=lambda s: s["status"] == "PUBLISHING",
        timeout=ICE_TIMEOUT + 15,
        what="UDP-blocked publisher FAILED (ICE timeout), never PUBLISHING",
        arg="pub",
    )
    assert stream["info"] == "Failed by ICE timeout", stream
    assert "PUBLISHING" not in stream["events"], stream
    # The shim drops datagrams without failing socket(): Chromium still gathered its UDP host
    # candidates; they just never reached the gateway.
    gathered = await page.evaluate("e2eRtc.localCandidates()")
    assert any(c["protocol"] == "udp" and c["type"] == "host" for c in gathered), gathered
    pcs = await page.evaluate("e2eRtc.peerConnections()")
    assert pcs, "the WebSDK created no RTCPeerConnection"
    assert all(pc["connectionState"] != "connected" for pc in pcs), pcs

    # The same page and gateway in an ordinary Chromium: connects over UDP.
    open_ = Harness(chromium, udp_only_gateway, static_server.url, init_scripts=[RTC_RECORDER])
    page = await open_.open_websdk("open publisher")
    await page.evaluate(
        "([label, name]) => e2e.publish(label, name)", ["pub", f"open-{uuid.uuid4().hex[:8]}"]
    )
    await open_.wait_status(page, "pub", "PUBLISHING")
    await page.evaluate("label => e2e.stop(label)", "pub")
    await open_.wait_status(page, "pub", "UNPUBLISHED", timeout=10)
    assert udp_only_gateway.health()
