"""The per-address connection limit on every TCP port of a running `skyrelay serve` (issue
11, probe finding 7): on the WebSocket, HTTP, RTMP, RTSP and embedded MQTT ports, one
address gets `max_connections_per_ip` connections and the next one is closed at once; other
addresses, and the connections already open, go on. Refusals are counted in /metrics by port
and logged once per burst. A witness stream keeps playing throughout.

The hostile address is 127.0.0.2 (all of 127/8 is loopback on Linux): the witness and the
gateway's own MQTT client use 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from gateway.media.rtmp.protocol import HANDSHAKE_SIZE
from gateway.media.synthetic import EncodedVideoTrack
from tests.conftest import GatewayProcess
from tests.integration.conftest import AccessUnits
from tests.integration.witness import Witness

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMIT = 5
HOSTILE, OTHER = "127.0.0.2", "127.0.0.3"
KINDS = ["websocket", "http", "rtmp", "rtsp", "mqtt"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(
        extra_env={
            "SKYRELAY_MAX_CONNECTIONS_PER_IP": str(LIMIT),
            # The RTMP connections held here only shake hands: give them time.
            "SKYRELAY_RTMP_HANDSHAKE_TIMEOUT": "300",
        }
    )
    gw.start(tmp_path_factory.mktemp("gateway"))
    try:
        yield gw
    finally:
        gw.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def witness(gateway: GatewayProcess, clip_units: AccessUnits) -> AsyncIterator[Witness]:
    started = await Witness.start(gateway.ws_url, EncodedVideoTrack(clip_units, fps=30), gateway)
    yield started
    await started.stop()


def port_of(gateway: GatewayProcess, kind: str) -> int:
    return {
        "websocket": gateway.ws_port,
        "http": gateway.http_port,
        "rtmp": gateway.rtmp_port,
        "rtsp": gateway.rtsp_port,
        "mqtt": gateway.mqtt_broker_port,
    }[kind]


def mqtt_connect(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT, clean session, keep alive 60 s."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    return bytes([0x10, len(body)]) + body


def hello(kind: str, port: int, index: int) -> tuple[bytes, bytes]:
    """What a client of ``kind`` says first, and how the gateway's answer begins."""
    if kind == "websocket":
        request = (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        return request.encode(), b"HTTP/1.1 101"
    if kind == "http":
        return f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode(), b"HTTP/1.1 200"
    if kind == "rtmp":
        return b"\x03" + bytes(HANDSHAKE_SIZE), b"\x03"
    if kind == "rtsp":
        return f"OPTIONS rtsp://127.0.0.1:{port}/ RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode(), b"RTSP/1.0 200"
    return mqtt_connect(f"limit-{index}"), b"\x20\x02\x00\x00"


class Held:
    """A connection from ``source`` that got its answer (or was closed)."""

    def __init__(self, writer: asyncio.StreamWriter | None, answered: bool) -> None:
        self.writer, self.answered = writer, answered

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()


async def open_one(gateway: GatewayProcess, kind: str, source: str, index: int) -> Held:
    port = port_of(gateway, kind)
    request, answer = hello(kind, port, index)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(request)
        async with asyncio.timeout(20):
            got = await reader.readexactly(len(answer))
    except (ConnectionError, asyncio.IncompleteReadError):
        writer.close()
        return Held(None, False)
    return Held(writer, got == answer)


def refusal_lines(gateway: GatewayProcess, kind: str) -> list[dict[str, Any]]:
    lines = []
    for line in gateway.log_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == "connections_refused" and entry.get("port_kind") == kind:
                lines.append(entry)
    return lines


def refused_metric(gateway: GatewayProcess, kind: str) -> float:
    return gateway.metric("skyrelay_connections_refused_total", port_kind=kind)


@pytest.mark.parametrize("kind", KINDS)
async def test_one_address_over_the_limit_is_refused_and_the_others_go_on(
    gateway: GatewayProcess, witness: Witness, kind: str
) -> None:
    assert refused_metric(gateway, kind) == 0
    held = [await open_one(gateway, kind, HOSTILE, i) for i in range(LIMIT)]
    try:
        assert all(h.answered for h in held), "a connection within the limit was not served"
        # A burst over the limit: every one closed at once, one log line for all of them.
        refused = [await open_one(gateway, kind, HOSTILE, LIMIT + i) for i in range(3)]
        assert not any(r.answered for r in refused)
        assert refused_metric(gateway, kind) == 3
        # (With several workers, one line from each worker that refused some.)
        assert 1 <= len(refusal_lines(gateway, kind)) <= gateway.worker_count
        line = refusal_lines(gateway, kind)[0]
        assert (line["peer"], line["limit"], line["level"]) == (HOSTILE, LIMIT, "warning")
        # Another address is served; so is this one once one of its connections ends.
        other = await open_one(gateway, kind, OTHER, 100)
        assert other.answered
        await other.close()
        await held.pop().close()
        async with asyncio.timeout(20):  # until the gateway has seen the close
            while True:
                again = await open_one(gateway, kind, HOSTILE, 200)
                if again.answered:
                    break
                await asyncio.sleep(0.1)
        held.append(again)
    finally:
        for h in held:
            await h.close()
    assert gateway.proc is not None and gateway.proc.poll() is None
    await witness.assert_streaming()


async def test_every_port_kind_is_counted_in_metrics(gateway: GatewayProcess) -> None:
    with urllib.request.urlopen(f"{gateway.http_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "# TYPE skyrelay_connections_refused_total counter" in text
    kinds = set(re.findall(r'^skyrelay_connections_refused_total{.*port_kind="(\w+)"}', text, re.M))
    assert kinds == {*KINDS, "webrtc_tcp"}  # ICE-TCP's limit: test_webrtc_ports.py
