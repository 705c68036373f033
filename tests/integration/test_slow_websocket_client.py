"""A WebSocket client that floods requests and never reads the answers (issue 11, probe
finding 8): its outbox overflows once, which is logged once and closes it once, however many
frames it goes on sending. A witness stream keeps playing throughout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from gateway.media.synthetic import EncodedVideoTrack
from tests.conftest import GatewayProcess
from tests.integration.conftest import AccessUnits
from tests.integration.witness import Witness

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Each gets a `fail` answer of about 200 bytes ("Unknown message '...'").
FRAME = json.dumps({"message": "x" * 64, "data": [{}]}).encode()


def masked_text_frame(payload: bytes) -> bytes:
    """A client's text frame (RFC 6455 5.2): masked, with the all-zero key (XOR is a no-op)."""
    if len(payload) <= 125:
        return bytes([0x81, 0x80 | len(payload)]) + bytes(4) + payload
    return bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + bytes(4) + payload


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def witness(gateway: GatewayProcess, clip_units: AccessUnits) -> AsyncIterator[Witness]:
    started = await Witness.start(gateway.ws_url, EncodedVideoTrack(clip_units, fps=30), gateway)
    yield started
    await started.stop()


async def flooding_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket connection with a tiny receive buffer, upgraded, that will read no more."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    async with asyncio.timeout(10):
        response = await reader.readuntil(b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 101")
    return reader, writer


async def test_a_client_that_floods_and_never_reads_is_logged_once_and_closed_once(
    gateway: GatewayProcess, witness: Witness
) -> None:
    connected = len(gateway.log_events("client_connected"))
    _, writer = await flooding_client(gateway.ws_port)
    async with asyncio.timeout(10):
        while len(gateway.log_events("client_connected")) == connected:
            await asyncio.sleep(0.05)
    session = gateway.log_events("client_connected")[-1]["session"]
    frame = masked_text_frame(FRAME)
    sent = 0

    async def flood() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            while True:  # until the gateway stops reading or drops us
                writer.write(frame * 100)
                await writer.drain()
                sent += 100

    flooder = asyncio.ensure_future(flood())
    close_tasks = []
    try:
        async with asyncio.timeout(120):
            while not gateway.log_events("client_too_slow"):
                await asyncio.sleep(0.1)
            # While the gateway closes it (its close handshake waits for a client that does
            # not read, then gives up), there is one close task for it, not one per frame.
            while not [e for e in gateway.log_events("client_disconnected") if e["session"] == session]:
                try:
                    health = gateway.health()
                except OSError:
                    pytest.fail("the gateway stopped answering /healthz under the flood")
                close_tasks.append(health["task_kinds"].get("Connection.close", 0))
                await asyncio.sleep(0.2)
    finally:
        flooder.cancel()
        await asyncio.gather(flooder, return_exceptions=True)
        writer.close()
    assert sent > 1000  # it did flood
    slow = gateway.log_events("client_too_slow")
    assert len(slow) == 1 and slow[0]["session"] == session
    assert close_tasks and max(close_tasks) <= 1
    assert gateway.proc is not None and gateway.proc.poll() is None
    await witness.assert_streaming()
