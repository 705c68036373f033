"""Helpers for the ICE transport tests: WebRTC port settings, SDP candidates, and what a page's
RTCPeerConnections did (read through rtc_recorder.js, which the harness must inject)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from playwright.async_api import Page

from gateway.config import usable_cores
from tests.ports import free_port_block

from .harness import Harness


def free_port_range() -> range:
    """Loopback ports free for both TCP and UDP, one per worker of a gateway started with the
    default worker count (worker i listens on the first + i)."""
    count = usable_cores()
    first = free_port_block(count)
    return range(first, first + count)


def webrtc_env(udp_ports: range, tcp_ports: range, ice_timeout: float) -> dict[str, str]:
    """Gateway settings (environment) for the shared WebRTC UDP ports and the ICE-TCP ports.
    Never the defaults (8189): other gateways may run on this machine at the same time."""
    return {
        "SKYRELAY_WEBRTC_UDP_PORT": str(udp_ports.start),
        "SKYRELAY_WEBRTC_TCP_PORT": str(tcp_ports.start),
        "SKYRELAY_ICE_TIMEOUT": str(ice_timeout),
    }


@dataclass(frozen=True)
class SdpCandidate:
    transport: str  # "udp" or "tcp", lower case
    address: str
    port: int
    type: str  # host, srflx, ...
    tcptype: str | None

    def __str__(self) -> str:
        tcp = f" tcptype {self.tcptype}" if self.tcptype else ""
        return f"{self.transport} {self.address}:{self.port} typ {self.type}{tcp}"


def sdp_candidates(sdp: str) -> list[SdpCandidate]:
    """The `a=candidate:` lines of an SDP (RFC 8839 grammar: foundation component transport
    priority address port typ TYPE, then name/value pairs such as tcptype)."""
    found = []
    for line in sdp.splitlines():
        if not line.startswith("a=candidate:"):
            continue
        fields = line[len("a=candidate:") :].split()
        extra = dict(zip(fields[6::2], fields[7::2], strict=False))
        found.append(
            SdpCandidate(
                transport=fields[2].lower(),
                address=fields[4],
                port=int(fields[5]),
                type=fields[7] if fields[6] == "typ" else "",
                tcptype=extra.get("tcptype"),
            )
        )
    return found


async def remote_sdp(harness: Harness, page: Page, what: str, pc: int = 0, timeout: float = 15) -> str:
    """The first remote description (the gateway's answer) applied to the page's `pc`-th
    RTCPeerConnection (in creation order)."""
    descriptions: list[dict[str, Any]] = await harness.wait_for(
        page,
        "pc => e2eRtc.remoteDescriptions().filter(d => d.pc === pc)",
        lambda d: bool(d),
        timeout=timeout,
        what=f"{what}: the gateway's answer applied",
        arg=pc,
    )
    answer = descriptions[0]
    assert answer["type"] == "answer", answer
    return str(answer["sdp"])


async def requests(page: Page) -> list[dict[str, Any]]:
    """The publishStream/playStream requests the page sent: message, name, transport."""
    sent: list[dict[str, Any]] = await page.evaluate("e2eRtc.requests()")
    return sent


def assert_tcp_only(harness: Harness, sdp: str, tcp_ports: range, what: str) -> None:
    """An answer to `transport: "TCP"`: only ICE-TCP passive candidates, on the WebRTC TCP port
    of the worker that answered (one of ``tcp_ports``)."""
    candidates = sdp_candidates(sdp)
    ok = (
        bool(candidates)
        and all(c.transport == "tcp" and c.tcptype == "passive" and c.port in tcp_ports for c in candidates)
        and len({c.port for c in candidates}) == 1
    )
    if not ok:
        found = ", ".join(map(str, candidates)) or "none"
        pytest.fail(
            harness.report(
                f"{what}: the answer must carry only `tcp ... tcptype passive` candidates on one "
                f"port of {tcp_ports}; it has: {found}"
            )
        )


def assert_udp_and_tcp(harness: Harness, sdp: str, udp_ports: range, tcp_ports: range, what: str) -> None:
    """An answer to the default transport: UDP candidates on the shared UDP port and ICE-TCP
    passive candidates on the TCP port of the worker that answered (the same worker: the
    same place in ``udp_ports`` and ``tcp_ports``), UDP first by priority."""
    candidates = sdp_candidates(sdp)
    udp = [c for c in candidates if c.transport == "udp"]
    tcp = [c for c in candidates if c.transport == "tcp"]
    workers = {c.port - udp_ports.start for c in udp if c.type == "host"}
    workers |= {c.port - tcp_ports.start for c in tcp}
    ok = (
        bool(udp)
        and bool(tcp)
        and all(c.port in udp_ports for c in udp if c.type == "host")
        and all(c.port in tcp_ports and c.tcptype == "passive" for c in tcp)
        and len(workers) == 1
    )
    if not ok:
        found = ", ".join(map(str, candidates)) or "none"
        pytest.fail(
            harness.report(
                f"{what}: the answer must carry UDP host candidates on a port of {udp_ports} and "
                f"`tcp ... tcptype passive` ones on the same worker's of {tcp_ports}; it has: {found}"
            )
        )
    priorities = candidate_priorities(sdp)
    assert max(priorities["tcp"]) < min(priorities["udp"]), f"{what}: UDP must outrank TCP: {priorities}"


def candidate_priorities(sdp: str) -> dict[str, list[int]]:
    by_transport: dict[str, list[int]] = {"udp": [], "tcp": []}
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            by_transport.setdefault(fields[2].lower(), []).append(int(fields[3]))
    return by_transport


async def selected_pair(
    harness: Harness, page: Page, what: str, pc: int | None = None, timeout: float = 15
) -> dict[str, Any]:
    """The candidate pair (getStats) of the page's `pc`-th RTCPeerConnection, or of its only
    connected one, once it is connected."""

    def connected(pcs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            p
            for p in pcs
            if p["connectionState"] == "connected" and p["selected"] and (pc is None or p["index"] == pc)
        ]

    pcs: list[dict[str, Any]] = await harness.wait_for(
        page,
        "e2eRtc.peerConnections()",
        lambda pcs: bool(connected(pcs)),
        timeout=timeout,
        what=f"{what}: a connected RTCPeerConnection with a selected candidate pair",
    )
    found = connected(pcs)
    assert len(found) == 1, f"{what}: one connected peer connection expected: {pcs}"
    pair: dict[str, Any] = found[0]["selected"]
    return pair
