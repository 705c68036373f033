"""A per-IP connection limit for every TCP port the gateway listens on (WebSocket, HTTP,
RTMP, RTSP, the embedded MQTT broker), shared by their listeners.

One address may hold at most ``max_per_ip`` connections on each port kind; the one over the
limit is closed as soon as it is accepted, before any byte is read. Refusals are counted by
port kind (``/metrics``) and logged once per burst, not once per connection: a flood from
one address must not flood the log too.

Listeners hook in at accept time: `guard_streams` wraps an ``asyncio.start_server``
callback, `guard` wraps an asyncio protocol (aiohttp's request handler, a websockets
connection)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.log import get_logger

log = get_logger(__name__)

DEFAULT_MAX_PER_IP = 256
# The accept queue of every TCP listener (the kernel caps it at net.core.somaxconn).
# asyncio's default, 100, overflows when hundreds of clients connect at once (a fleet
# reconnecting after a restart; the tests' floods): the kernel then drops the handshake's
# last ACK, and a client that connected but says nothing is never accepted nor told.
LISTEN_BACKLOG = 1024
# What asyncio's transports ask recv/recvfrom for on every read. Their default, 256 KiB, is
# above glibc's mmap threshold: each read then costs an mmap and munmap of 256 KiB (a UDP
# datagram: about 16 us of CPU here, against 1.8 us with 64 KiB; a TCP read of 1200 bytes:
# 23 against 8). 65536 holds any UDP datagram, and is a large TCP read.
READ_SIZE = 65536
# Refusals closer together than this are one burst (one log line). A burst that goes on
# gets one more line per REMIND seconds, with the number refused since the last one.
BURST_GAP = 10.0
REMIND = 60.0

StreamCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def bound_reads(transport: asyncio.BaseTransport) -> None:
    """Have a transport (UDP or TCP) read into buffers of `READ_SIZE` (asyncio's selector
    transports keep the size in ``max_size``; another transport is left as it is)."""
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = READ_SIZE  # type: ignore[attr-defined]


def peer_ip(transport: asyncio.BaseTransport) -> str:
    """The remote address of an accepted connection ("?" when the socket cannot tell)."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple | list) and peer:
        return str(peer[0])
    return "?"


class OtherProcesses(Protocol):
    """The connections other worker processes hold (`gateway.cluster.shared_counts`)."""

    def elsewhere(self, kind: str, ip: str) -> int: ...

    def add_own(self, kind: str, ip: str, delta: int) -> None: ...


class ConnectionLimits:
    """Open connections by (port kind, remote address), and the refusals over the limit.
    Sans-I/O at its core (`admit`/`release`, an injected clock); `guard*` are the hooks.
    With several workers, ``others`` adds their connections, so the limit is the machine's."""

    def __init__(
        self,
        max_per_ip: int = DEFAULT_MAX_PER_IP,
        *,
        clock: Callable[[], float] = time.monotonic,
        others: OtherProcesses | None = None,
    ) -> None:
        if max_per_ip < 1:
            raise ValueError("max_per_ip must be at least 1")
        self.max_per_ip = max_per_ip
        self.others = others
        self._clock = clock
        self.open: dict[tuple[str, str], int] = {}  # only addresses with a connection open
        self.refused: dict[str, int] = {}  # by port kind, since start: a counter
        self._last_refusal: dict[str, float] = {}  # by port kind
        self._last_line: dict[str, tuple[float, int]] = {}  # by port kind: when, refused then

    def register(self, kind: str) -> None:
        """A port kind that exists (so /metrics shows it, with 0 refusals)."""
        self.refused.setdefault(kind, 0)

    def admit(self, kind: str, ip: str) -> bool:
        """Count a new connection from ``ip`` on ``kind``; False (and counted as refused)
        when that address already holds the limit there."""
        key = (kind, ip)
        held = self.open.get(key, 0)
        others = self.others
        if held + (others.elsewhere(kind, ip) if others is not None else 0) < self.max_per_ip:
            self.open[key] = held + 1
            if others is not None:
                others.add_own(kind, ip, 1)
            return True
        self._refuse(kind, ip)
        return False

    def release(self, kind: str, ip: str) -> None:
        if self.others is not None and (kind, ip) in self.open:
            self.others.add_own(kind, ip, -1)
        key = (kind, ip)
        held = self.open.get(key, 0) - 1
        if held > 0:
            self.open[key] = held
        else:
            self.open.pop(key, None)  # the table holds only addresses with connections

    def _refuse(self, kind: str, ip: str) -> None:
        now = self._clock()
        total = self.refused.get(kind, 0) + 1
        self.refused[kind] = total
        last_refusal = self._last_refusal.get(kind)
        self._last_refusal[kind] = now
        new_burst = last_refusal is None or now - last_refusal > BURST_GAP
        line = self._last_line.get(kind)
        if new_burst or line is None or now - line[0] >= REMIND:
            since = 1 if new_burst or line is None else total - line[1]
            self._last_line[kind] = (now, total)
            log.warning(
                "connections_refused",
                port_kind=kind,
                peer=ip,
                limit=self.max_per_ip,
                refused=since,
                info="too many connections from one address; more are refused quietly",
            )

    # --- hooks ------------------------------------------------------------------------------

    def guard_streams(self, kind: str, callback: StreamCallback) -> StreamCallback:
        """``callback`` for ``asyncio.start_server``, run only for admitted connections."""
        self.register(kind)

        async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ip = peer_ip(writer.transport)
            if not self.admit(kind, ip):
                writer.transport.abort()
                return
            bound_reads(writer.transport)
            try:
                await callback(reader, writer)
            finally:
                self.release(kind, ip)

        return guarded

    def guard(self, kind: str, protocol: asyncio.Protocol) -> asyncio.Protocol:
        """``protocol`` (a new connection's) behind the limit: a refused connection is
        aborted before ``protocol`` hears of it."""
        self.register(kind)
        return _Guarded(self, kind, protocol)

    def guard_factory(
        self, kind: str, factory: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` whose connections are guarded."""
        self.register(kind)
        return lambda: _Guarded(self, kind, factory())


class _Guarded(asyncio.Protocol):
    """Passes every callback on to the wrapped protocol once the connection is admitted."""

    def __init__(self, limits: ConnectionLimits, kind: str, inner: asyncio.Protocol) -> None:
        self._limits, self._kind, self._inner = limits, kind, inner
        self._ip: str | None = None  # set once admitted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ip = peer_ip(transport)
        if not self._limits.admit(self._kind, ip):
            assert isinstance(transport, asyncio.Transport)  # a TCP listener's
            transport.abort()  # connection_lost follows; the inner protocol never knew
            return
        self._ip = ip
        bound_reads(transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ip is None:
            return
        self._limits.release(self._kind, self._ip)
        self._ip = None
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._ip is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._ip is not None else None

    def pause_writing(self) -> None:
        if self._ip is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._ip is not None:
            self._inner.resume_writing()
