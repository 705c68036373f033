"""gateway.net_limits: the per-address connection limit every TCP listener shares, and its
log (one line per burst of refusals, not one per connection)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.net_limits import BURST_GAP, REMIND, ConnectionLimits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refusal_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "connections_refused"]


def test_each_address_and_port_kind_has_its_own_count() -> None:
    limits = ConnectionLimits(2)
    assert limits.admit("rtmp", "10.0.0.1") and limits.admit("rtmp", "10.0.0.1")
    assert not limits.admit("rtmp", "10.0.0.1")
    assert limits.admit("rtmp", "10.0.0.2")  # another address
    assert limits.admit("rtsp", "10.0.0.1")  # another port
    assert limits.refused == {"rtmp": 1}
    limits.release("rtmp", "10.0.0.1")
    assert limits.admit("rtmp", "10.0.0.1")  # room again


def test_the_table_forgets_addresses_with_no_connection() -> None:
    limits = ConnectionLimits(3)
    for _ in range(3):
        limits.admit("http", "10.0.0.1")
    for _ in range(3):
        limits.release("http", "10.0.0.1")
    limits.release("http", "10.0.0.9")  # never admitted: nothing to forget, no error
    assert limits.open == {}


def test_registered_kinds_show_with_no_refusal() -> None:
    limits = ConnectionLimits(1)
    limits.register("mqtt")
    assert limits.refused == {"mqtt": 0}


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        ConnectionLimits(0)


def test_a_burst_of_refusals_is_logged_once() -> None:
    clock = Clock()
    limits = ConnectionLimits(1, clock=clock)
    limits.admit("rtmp", "10.0.0.1")
    with structlog.testing.capture_logs() as logs:
        for _ in range(500):
            clock.now += 0.01
            assert not limits.admit("rtmp", "10.0.0.1")
    lines = refusal_lines(logs)
    assert len(lines) == 1
    assert lines[0]["port_kind"] == "rtmp" and lines[0]["peer"] == "10.0.0.1" and lines[0]["limit"] == 1
    assert limits.refused["rtmp"] == 500


def test_a_new_burst_after_a_quiet_gap_is_logged_again() -> None:
    clock = Clock()
    limits = ConnectionLimits(1, clock=clock)
    limits.admit("rtsp", "10.0.0.1")
    with structlog.testing.capture_logs() as logs:
        limits.admit("rtsp", "10.0.0.1")
        clock.now += BURST_GAP + 1
        limits.admit("rtsp", "10.0.0.1")
    assert len(refusal_lines(logs)) == 2


def test_a_burst_that_goes_on_is_reminded_with_its_count() -> None:
    clock = Clock()
    limits = ConnectionLimits(1, clock=clock)
    limits.admit("http", "10.0.0.1")
    with structlog.testing.capture_logs() as logs:
        for _ in range(int(REMIND) * 2 + 1):  # one refusal a second for two minutes
            limits.admit("http", "10.0.0.1")
            clock.now += 1.0
    lines = refusal_lines(logs)
    assert len(lines) == 3
    assert [line["refused"] for line in lines] == [1, int(REMIND), int(REMIND)]


def test_port_kinds_have_bursts_of_their_own() -> None:
    limits = ConnectionLimits(1, clock=Clock())
    with structlog.testing.capture_logs() as logs:
        for kind in ("rtmp", "rtsp", "rtmp", "rtsp"):
            limits.admit(kind, "10.0.0.1")
            limits.admit(kind, "10.0.0.1")
    assert sorted(line["port_kind"] for line in refusal_lines(logs)) == ["rtmp", "rtsp"]


@settings(max_examples=300)
@given(
    limit=st.integers(1, 5),
    steps=st.lists(st.tuples(st.booleans(), st.sampled_from(["a", "b"]), st.sampled_from(["ws", "rtmp"]))),
)
def test_open_connections_never_exceed_the_limit(limit: int, steps: list[tuple[bool, str, str]]) -> None:
    """Whatever order connections come and go in, an address never holds more than the limit,
    the counts match what was admitted, and every refusal is counted."""
    limits = ConnectionLimits(limit)
    held: dict[tuple[str, str], int] = {}
    refused = 0
    for connect, ip, kind in steps:
        key = (kind, ip)
        if connect:
            if limits.admit(kind, ip):
                held[key] = held.get(key, 0) + 1
            else:
                assert held.get(key, 0) == limit
                refused += 1
        elif held.get(key, 0) > 0:  # a listener releases only what it admitted
            limits.release(kind, ip)
            held[key] -= 1
        assert all(0 < count <= limit for count in limits.open.values())
        assert limits.open == {k: v for k, v in held.items() if v}
    assert sum(limits.refused.values()) == refused


# --- the hooks, on real sockets ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def echo_server(
    limits: ConnectionLimits, *, streams: bool, read_sizes: list[int] | None = None
) -> AsyncIterator[int]:
    """An echo server on 127.0.0.1 behind ``limits``: asyncio streams or a bare protocol.
    ``read_sizes`` gets each admitted connection's transport read size."""
    sizes = [] if read_sizes is None else read_sizes

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sizes.append(writer.transport.max_size)  # type: ignore[attr-defined]
        while data := await reader.read(1 << 20):
            writer.write(data)
        writer.close()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            sizes.append(transport.max_size)  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    if streams:
        server = await asyncio.start_server(limits.guard_streams("echo", echo), "127.0.0.1", 0)
    else:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(limits.guard_factory("echo", Echo), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int) -> tuple[asyncio.StreamWriter, bool]:
    """A connection that says hello; True if it was echoed, False if it was closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hello")
    try:
        async with asyncio.timeout(10):
            echoed = await reader.read(5) == b"hello"
    except ConnectionError:
        echoed = False
    return writer, echoed


@pytest.mark.parametrize("streams", [True, False], ids=["start_server", "protocol"])
async def test_hooks_close_the_connection_over_the_limit_and_serve_the_others(streams: bool) -> None:
    limits = ConnectionLimits(3)
    async with echo_server(limits, streams=streams) as port:
        results = [await exchange(port) for _ in range(4)]
        assert [echoed for _, echoed in results] == [True, True, True, False]
        assert limits.refused == {"echo": 1}
        first, _ = results[0]
        first.close()
        await first.wait_closed()
        async with asyncio.timeout(10):  # the server hears of the close, then has room again
            while limits.open.get(("echo", "127.0.0.1"), 0) > 2:
                await asyncio.sleep(0.01)
        writer, echoed = await exchange(port)
        assert echoed
        for w in [writer, *(w for w, _ in results[1:])]:
            w.close()
        async with asyncio.timeout(10):
            while limits.open:
                await asyncio.sleep(0.01)


def test_peer_ip_of_a_socket_without_an_address() -> None:
    from gateway.net_limits import peer_ip

    class NoPeer(asyncio.BaseTransport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return None

    assert peer_ip(NoPeer()) == "?"  # the real addresses: the hooks above


async def test_bounded_datagram_reads_still_take_any_udp_datagram_whole() -> None:
    """`bound_reads` (asyncio's 256 KiB read costs an mmap per datagram): the
    largest IPv4 UDP datagram and a small one arrive whole."""
    from gateway.net_limits import READ_SIZE, bound_reads

    loop = asyncio.get_running_loop()
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Receiver(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            bound_reads(transport)

        def datagram_received(self, data: bytes, addr: Any) -> None:
            got.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
    sender, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    try:
        assert transport.max_size == READ_SIZE  # type: ignore[attr-defined]
        address = transport.get_extra_info("sockname")
        for data in (bytes(range(256)) * 255 + b"\x01" * 227, b"\x80" * 1200):  # 65507 bytes, 1200
            sender.sendto(data, address)
            assert await asyncio.wait_for(got.get(), 5) == data
    finally:
        transport.close()
        sender.close()


async def test_the_webrtc_port_reads_datagrams_into_bounded_buffers() -> None:
    from gateway.media.webrtc.icemux import IceMux
    from gateway.net_limits import READ_SIZE
    from tests.ports import free_port

    mux = IceMux("127.0.0.1", udp_port=free_port(), tcp_port=0, ice_timeout=5.0)
    await mux.start()
    try:
        assert [p.transport.max_size for p in mux.udp_ports.values()] == [READ_SIZE]
    finally:
        await mux.stop()


@pytest.mark.parametrize("streams", [True, False], ids=["start_server", "protocol"])
async def test_admitted_connections_read_in_bounded_pieces_and_lose_nothing(streams: bool) -> None:
    """Both hooks bound an admitted connection's reads (`bound_reads`); 1 MB still echoes
    whole."""
    from gateway.net_limits import READ_SIZE

    sizes: list[int] = []
    async with echo_server(ConnectionLimits(3), streams=streams, read_sizes=sizes) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = bytes(range(256)) * 4096
        writer.write(data)
        async with asyncio.timeout(10):
            assert await reader.readexactly(len(data)) == data
        assert sizes == [READ_SIZE]
        writer.close()
