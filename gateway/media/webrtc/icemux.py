"""Every WebRTC session on one UDP port and one ICE-TCP port: the glue between the sans-I/O
demux (`demux.py`) and aioice.

aioice opens UDP sockets of its own for each peer connection (two per session here). The
gateway instead gives each aioice `Connection` protocols whose transport writes through one
shared socket per address family (UDP), or through one accepted TCP connection with
RFC 4571 framing (ICE-TCP, RFC 6544 passive candidates). Incoming datagrams and frames are
routed by `Demux`: the ufrag of a signed Binding request, then the remote address.

aioice/aiortc internals used here, all reached through `aiortc_compat` and checked by its
`check()` when the mux starts (a missing one stops the start with its name, instead of
failing per session):

- a peer connection's ICE transports and the aioice `Connection` of each;
- on that ``Connection``, replaced per instance: ``get_component_candidates`` (gathering),
  ``add_remote_candidate`` (end-of-candidates is ignored while ICE-TCP may still connect)
  and ``close`` (the session leaves the tables); read or extended: its protocols (a TCP
  connection's protocol joins the others), its end-of-candidates flag (reset: the offer's
  end-of-candidates was applied before the mux saw the connection), ``local_username``,
  ``local_password``, ``stun_server``;
- ``aioice.ice.StunProtocol``: subclassed; aioice calls its ``datagram_received``,
  ``request``, ``send_stun``, ``send_data``, ``close`` and reads ``transport`` and
  ``local_candidate``; ``connection_lost`` tells the Connection a protocol is gone; a
  datagram that is not STUN goes straight to its ``receiver`` (the Connection).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import socket
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aioice.ice
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import RTCPeerConnection

from gateway.log import get_logger
from gateway.media.webrtc import aiortc_compat
from gateway.media.webrtc.demux import Demux, Drop, FrameError, FrameReader, frame
from gateway.net_limits import LISTEN_BACKLOG, ConnectionLimits, bound_reads

log = get_logger(__name__)

Address = tuple[str, int]

# Socket buffers of the shared UDP socket: every publisher's media arrives on it.
UDP_BUFFER_BYTES = 4 * 1024 * 1024
# A TCP session with this much unsent is congested: packets are dropped, as a full UDP
# socket would. Above the fan-out's own limit, so a viewer skips to a keyframe first.
MAX_TCP_UNSENT = 2 * 1024 * 1024
# The kernel's send buffer of an ICE-TCP connection. Left to autotuning it grows to
# megabytes: a viewer on a slow path would fall tens of seconds behind before the fan-out
# saw congestion. This bounds it to about a second of 2 Mbit/s video (the kernel doubles it).
TCP_SEND_BUFFER = 128 * 1024
# TCP connections that have not yet sent a signed Binding request, at most.
MAX_PENDING_TCP = 4096
# A TCP connection bound to a session that receives nothing for this long is closed
# (browsers send consent checks every few seconds, RFC 7675).
TCP_IDLE_TIMEOUT = 30.0
# RFC 6544 section 4.2: the local preference of a passive host TCP candidate, below UDP's
# 65535 so that UDP wins where both work.
TCP_LOCAL_PREFERENCE = (4 << 13) + 8191


class IceMuxError(RuntimeError):
    """The shared ports cannot be opened, or this aioice lacks what the mux needs."""


class _MuxProtocol(aioice.ice.StunProtocol):
    """An aioice protocol whose transport is a share of a port the gateway owns."""

    def __init__(self, connection: aioice.ice.Connection, transport: Any, candidate: Candidate) -> None:
        super().__init__(connection)
        self.transport = transport
        self.local_candidate = candidate

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        # RFC 7983: a first byte above 3 is not STUN (DTLS 20-63, SRTP/SRTCP 128-191). aioice
        # parses every datagram as STUN and hands it to the connection when that raises: an
        # exception per media packet. Hand it on directly, as aioice then does.
        if data and isinstance(data, bytes) and data[0] > 3:
            self.receiver.data_received(data, self.local_candidate.component)
            return
        super().datagram_received(data, addr)

    async def close(self) -> None:
        # The base close waits for a datagram transport's connection_lost: there is none.
        self.transport.close()
        self.connection_lost(None)


class _UdpShare:
    """What one session's protocol sees of the shared UDP socket of its address family."""

    def __init__(self, port: _UdpPort, session: _Session, sockname: Address) -> None:
        self._port = port
        self._session = session
        self._sockname = sockname
        self._closed = False

    def sendto(self, data: bytes, address: Address) -> None:
        transport = self._port.transport
        if self._closed or transport is None:
            return  # like a closed asyncio datagram transport: dropped
        if data[0] < 2:  # STUN (SRTP and DTLS never start below 20): its response must find us
            self._port.mux.udp.sent_request(self._session, data)
        transport.sendto(data, address)

    def get_write_buffer_size(self) -> int:
        transport = self._port.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    @property
    def shared_transport(self) -> asyncio.DatagramTransport | None:
        """The port's transport, whose unsent bytes and closing are this share's (None once
        the port is closed): what the fan-out asks once for all the port's viewers."""
        return self._port.transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":  # the fan-out floor sends its bursts on it (sendmmsg)
            transport = self._port.transport
            return transport.get_extra_info("socket") if transport is not None else default
        return self._sockname if name == "sockname" else default

    def is_closing(self) -> bool:
        transport = self._port.transport
        return self._closed or transport is None or transport.is_closing()

    def close(self) -> None:
        self._closed = True


class _UdpPort(asyncio.DatagramProtocol):
    """One shared UDP socket: each datagram goes to the session the demux names."""

    def __init__(self, mux: IceMux, family: int) -> None:
        self.mux = mux
        self.family = family
        # asyncio's datagram transport; typed Any as its stub lacks get_write_buffer_size.
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        bound_reads(transport)  # every session's media comes through this read

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        address = (addr[0], addr[1])
        found = self.mux.udp.route(data, address)
        if isinstance(found, Drop):
            self.mux.dropped[("udp", found.value)] += 1
            return
        found.deliver_udp(self.family, data, address)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for one remote address; its session's ICE notices on its own


class _FramedTcp:
    """What a session's protocol sees of one ICE-TCP connection: RFC 4571 frames."""

    def __init__(self, link: _TcpLink, sockname: Address) -> None:
        self._link = link
        self._sockname = sockname

    def sendto(self, data: bytes, address: Address) -> None:
        transport = self._link.transport
        if transport is None or transport.is_closing() or len(data) > 0xFFFF:
            return
        if transport.get_write_buffer_size() > MAX_TCP_UNSENT:
            self._link.mux.dropped[("tcp", "send_buffer_full")] += 1
            return
        transport.write(frame(data))

    def write_framed(self, data: bytes) -> None:
        """Packets already framed (RFC 4571), in one write: the fan-out floor's burst."""
        transport = self._link.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_TCP_UNSENT:
            self._link.mux.dropped[("tcp", "send_buffer_full")] += 1
            return
        transport.write(data)

    def get_write_buffer_size(self) -> int:
        transport = self._link.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._sockname if name == "sockname" else default

    def is_closing(self) -> bool:
        transport = self._link.transport
        return transport is None or transport.is_closing()

    def close(self) -> None:
        self._link.close("session_closed")


class _TcpLink(asyncio.Protocol):
    """One accepted ICE-TCP connection. Its first frame must be a Binding request signed
    for a registered session, within the ICE timeout; then every frame goes to that
    session's protocol for this connection."""

    def __init__(self, mux: IceMux) -> None:
        self.mux = mux
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)
        self.family = socket.AF_INET
        self.protocol: _MuxProtocol | None = None
        self.session: _Session | None = None
        self._reader = FrameReader()
        self._timer: asyncio.TimerHandle | None = None
        self._last_received = 0.0
        self._closed_reason: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (peer[0], peer[1])
        sock = transport.get_extra_info("socket")
        self.family = sock.family if sock is not None else socket.AF_INET
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, TCP_SEND_BUFFER)
        if len(self.mux.pending_links) >= MAX_PENDING_TCP:
            self.close("too_many_pending")
            return
        self.mux.pending_links.add(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.mux.ice_timeout, self.close, "ice_timeout")

    def data_received(self, data: bytes) -> None:
        if self._closed_reason is not None:
            return
        try:
            frames = self._reader.feed(data)
        except FrameError:
            self.close("bad_frame")
            return
        if frames:
            self._last_received = asyncio.get_running_loop().time()
        for packet in frames:
            if self._closed_reason is not None:
                return  # closed while a packet before this one was handled
            if self.protocol is None and not self._bind(packet):
                return
            assert self.protocol is not None
            self.protocol.datagram_received(packet, self.peer)

    def _bind(self, first: bytes) -> bool:
        found = self.mux.tcp.identify(first)
        if isinstance(found, Drop):
            self.close(found.value)
            return False
        protocol = found.accept_link(self)
        if protocol is None:
            self.close("session_closed")
            return False
        self.protocol, self.session = protocol, found
        self.mux.pending_links.discard(self)
        self.mux.bound_links.add(self)
        self._cancel_timer()
        self._schedule_idle_check()
        return True

    def _schedule_idle_check(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(TCP_IDLE_TIMEOUT / 3, self._idle_check)

    def _idle_check(self) -> None:
        if asyncio.get_running_loop().time() - self._last_received > TCP_IDLE_TIMEOUT:
            self.close("idle")
        else:
            self._schedule_idle_check()

    def close(self, reason: str) -> None:
        """Close the connection (once) and count why."""
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        self.mux.tcp_closed[reason] += 1
        self._cancel_timer()
        if self.transport is not None:
            if reason in ("session_closed", "idle"):
                self.transport.close()
            else:
                self.transport.abort()  # nothing worth flushing to a peer that never checked in

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed_reason is None:
            self._closed_reason = "peer_closed"
            self.mux.tcp_closed["peer_closed"] += 1
        self._cancel_timer()
        self.mux.pending_links.discard(self)
        self.mux.bound_links.discard(self)
        if self.session is not None:
            self.session.links.discard(self)
        if self.protocol is not None:
            self.protocol.connection_lost(exc)  # aioice: this path is gone

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Session:
    """One aioice Connection on the shared ports."""

    def __init__(
        self,
        mux: IceMux,
        connection: aioice.ice.Connection,
        udp: bool,
        original_gather: Callable[..., Awaitable[list[Candidate]]],
    ) -> None:
        self.mux = mux
        self.connection = connection
        self.use_udp = udp
        self.udp_protocols: dict[int, _MuxProtocol] = {}
        self.tcp_candidates: dict[int, Candidate] = {}
        self.links: set[_TcpLink] = set()
        self._original_gather = original_gather
        self.removed = False

    async def gather(self, component: int, addresses: list[str], timeout: int = 5) -> list[Candidate]:
        """aioice's gathering for this connection: host candidates on the shared ports."""
        mux, connection = self.mux, self.connection
        candidates: list[Candidate] = []
        if self.use_udp and not mux.udp_ports:
            candidates += await self._original_gather(
                component=component, addresses=addresses, timeout=timeout
            )
        elif self.use_udp:
            if not mux.udp.register(connection.local_username, connection.local_password, self):
                log.warning("ice_mux_ufrag_in_use", ufrag=connection.local_username)
                return await self._original_gather(component=component, addresses=addresses, timeout=timeout)
            for address in addresses:
                family = _family(address)
                port = mux.udp_ports.get(family)
                if port is None or not mux.serves(address):
                    continue
                candidate = Candidate(
                    foundation=candidate_foundation("host", "udp", address),
                    component=component,
                    transport="udp",
                    priority=candidate_priority(component, "host"),
                    host=address,
                    port=mux.udp_port,
                    type="host",
                )
                candidates.append(candidate)
                if family not in self.udp_protocols:  # one per family: they share its socket
                    protocol = _MuxProtocol(
                        connection, _UdpShare(port, self, (address, mux.udp_port)), candidate
                    )
                    self.udp_protocols[family] = protocol
                    aiortc_compat.add_ice_protocol(connection, protocol)
            candidates += await self._reflexive(timeout)
        if mux.tcp_servers:
            if not mux.tcp.register(connection.local_username, connection.local_password, self):
                log.warning("ice_mux_ufrag_in_use", ufrag=connection.local_username, transport="tcp")
            else:
                for address in addresses:
                    family = _family(address)
                    if family not in mux.tcp_families or not mux.serves(address):
                        continue
                    candidate = Candidate(
                        foundation=candidate_foundation("host", "tcp", address),
                        component=component,
                        transport="tcp",
                        priority=(126 << 24) | (TCP_LOCAL_PREFERENCE << 8) | (256 - component),
                        host=address,
                        port=mux.tcp_port,
                        type="host",
                        tcptype="passive",
                    )
                    candidates.append(candidate)
                    self.tcp_candidates.setdefault(family, candidate)
        return candidates

    async def _reflexive(self, timeout: float) -> list[Candidate]:
        """Server-reflexive candidates through the shared IPv4 socket (with --stun-server)."""
        stun_server = self.connection.stun_server
        protocol = self.udp_protocols.get(socket.AF_INET)
        if stun_server is None or protocol is None:
            return []
        task = asyncio.ensure_future(aioice.ice.server_reflexive_candidate(protocol, stun_server))
        done, _ = await asyncio.wait([task], timeout=timeout)
        if not done:
            task.cancel()
            return []
        if task.exception() is not None:
            return []
        return [task.result()[0]]

    def deliver_udp(self, family: int, data: bytes, address: Address) -> None:
        protocol = self.udp_protocols.get(family)
        if protocol is None:
            self.mux.dropped[("udp", "wrong_family")] += 1
            return
        protocol.datagram_received(data, address)

    def accept_link(self, link: _TcpLink) -> _MuxProtocol | None:
        """A protocol of this connection for a TCP connection that checked in."""
        candidate = self.tcp_candidates.get(link.family)
        if self.removed or candidate is None:
            return None
        protocol = _MuxProtocol(
            self.connection, _FramedTcp(link, (candidate.host, candidate.port)), candidate
        )
        aiortc_compat.add_ice_protocol(self.connection, protocol)
        self.links.add(link)
        return protocol

    def remove(self) -> None:
        """The connection closed: out of the tables, its TCP connections closed."""
        if self.removed:
            return
        self.removed = True
        self.mux.udp.remove(self)
        self.mux.tcp.remove(self)
        self.mux.sessions.discard(self)
        for link in list(self.links):
            link.close("session_closed")
        self.links.clear()


def _family(address: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


class IceMux:
    """The shared WebRTC ports: ``udp_port`` (0: each peer connection opens its own
    sockets, as aioice does) and ``tcp_port`` for ICE-TCP (0: none)."""

    def __init__(
        self,
        host: str,
        udp_port: int,
        tcp_port: int,
        ice_timeout: float,
        connection_limits: ConnectionLimits | None = None,
    ) -> None:
        self.host = host
        self.connection_limits = connection_limits  # per remote address, as on every TCP port
        self.udp_port = udp_port
        self.tcp_port = tcp_port
        self.ice_timeout = ice_timeout
        self.udp: Demux[_Session] = Demux()
        self.tcp: Demux[_Session] = Demux()
        self.udp_ports: dict[int, _UdpPort] = {}
        self.tcp_servers: list[asyncio.Server] = []
        self.tcp_families: set[int] = set()
        self.sessions: set[_Session] = set()
        self.pending_links: set[_TcpLink] = set()
        self.bound_links: set[_TcpLink] = set()
        self.dropped: Counter[tuple[str, str]] = Counter()  # (transport, reason) -> datagrams/frames
        self.tcp_closed: Counter[str] = Counter()  # reason -> TCP connections
        self._bound: list[str] = []
        # The connections put on the shared ports (weak: a closed peer connection goes).
        self._adopted: weakref.WeakSet[aioice.ice.Connection] = weakref.WeakSet()

    @property
    def enabled(self) -> bool:
        return bool(self.udp_port or self.tcp_port)

    def _bind_addresses(self) -> list[str]:
        if self.host in ("", "0.0.0.0", "::"):
            return ["0.0.0.0", "::"]
        return [self.host]

    def serves(self, address: str) -> bool:
        """Whether a candidate on ``address`` reaches the shared sockets."""
        family = _family(address)
        for bound in self._bound:
            if _family(bound) == family and (bound in ("0.0.0.0", "::") or bound == address):
                return True
        return False

    async def start(self) -> None:
        # First, so that the log tells which fast paths this aiortc offers even with the
        # ports off; with them on, a missing internal stops the start here, named.
        try:
            await aiortc_compat.check(port_mux=self.enabled)
        except aiortc_compat.InternalsMissing as exc:
            raise IceMuxError(str(exc)) from None
        if not self.enabled:
            return
        loop = asyncio.get_running_loop()
        addresses = self._bind_addresses()
        try:
            for address in addresses:
                family = _family(address)
                if self.udp_port:
                    sock = _udp_socket(address, self.udp_port)
                    if sock is None:
                        continue  # no IPv6 on this machine
                    _, port = await loop.create_datagram_endpoint(
                        functools.partial(_UdpPort, self, family), sock=sock
                    )
                    self.udp_ports[family] = port
                if address not in self._bound:
                    self._bound.append(address)
            if self.tcp_port:
                for address in addresses:
                    try:
                        server = await loop.create_server(
                            self._link_factory(),
                            address,
                            self.tcp_port,
                            reuse_address=True,
                            backlog=LISTEN_BACKLOG,
                        )
                    except OSError as exc:
                        if _family(address) == socket.AF_INET6 and len(addresses) > 1 and _no_ipv6(exc):
                            continue
                        raise
                    self.tcp_servers.append(server)
                    self.tcp_families.add(_family(address))
        except OSError as exc:
            await self.stop()
            raise IceMuxError(
                f"cannot open the WebRTC ports (UDP {self.udp_port or 'off'}, TCP {self.tcp_port or 'off'}) "
                f"on {self.host}: {exc.strerror or exc}"
            ) from exc
        log.info(
            "webrtc_ports_listening",
            udp_port=self.udp_port or None,
            tcp_port=self.tcp_port or None,
            addresses=self._bound,
        )

    async def stop(self) -> None:
        for session in list(self.sessions):
            session.remove()
        for link in list(self.pending_links | self.bound_links):
            link.close("stopping")
        for server in self.tcp_servers:
            server.close()
        for server in self.tcp_servers:
            await server.wait_closed()
        self.tcp_servers.clear()
        for port in self.udp_ports.values():
            if port.transport is not None:
                port.transport.close()
        self.udp_ports.clear()

    def _link_factory(self) -> Callable[[], asyncio.Protocol]:
        """ICE-TCP connections, behind the per-address limit of every TCP port if one is set."""
        factory: Callable[[], asyncio.Protocol] = lambda: _TcpLink(self)  # noqa: E731
        limits = self.connection_limits
        return factory if limits is None else limits.guard_factory("webrtc_tcp", factory)

    def adopt(self, pc: RTCPeerConnection, tcp_only: bool = False) -> None:
        """Put ``pc``'s ICE on the shared ports; call between setRemoteDescription and
        setLocalDescription (before gathering). ``tcp_only``: ICE-TCP candidates only."""
        if tcp_only and not self.tcp_servers:
            raise IceMuxError("WebRTC over TCP is off on this server (webrtc_tcp_port = 0)")
        if not self.enabled:
            return
        for transport in aiortc_compat.ice_transports(pc):
            connection = aiortc_compat.ice_connection(transport)
            if connection in self._adopted:
                continue
            self._adopt_connection(connection, udp=not tcp_only)

    def _adopt_connection(self, connection: aioice.ice.Connection, udp: bool) -> None:
        session = _Session(self, connection, udp, connection.get_component_candidates)
        self._adopted.add(connection)
        self.sessions.add(session)
        connection.get_component_candidates = session.gather  # type: ignore[method-assign]
        original_add = connection.add_remote_candidate
        original_close = connection.close

        async def add_remote_candidate(candidate: Candidate | None) -> None:
            # A browser that can only reach the TCP port connects after its UDP checks
            # failed; end-of-candidates must not end ICE before that (the peer's ICE
            # timeout still does).
            if candidate is None and self.tcp_servers:
                return
            await original_add(candidate)

        async def close() -> None:
            try:
                await original_close()
            finally:
                session.remove()

        connection.add_remote_candidate = add_remote_candidate  # type: ignore[method-assign,assignment]
        if self.tcp_servers:
            # The offer was applied already: forget an end-of-candidates it carried.
            aiortc_compat.forget_remote_candidates_end(connection)
        connection.close = close  # type: ignore[method-assign]

    def figures(self) -> dict[str, Any]:
        """For /healthz and /metrics."""
        return {
            "udp_port": self.udp_port if self.udp_ports else None,
            "tcp_port": self.tcp_port if self.tcp_servers else None,
            "udp_sockets": len(self.udp_ports),
            "sessions": len(self.sessions),
            "udp_addresses": self.udp.addresses,
            "tcp_connections": len(self.bound_links),
            "tcp_pending": len(self.pending_links),
            "dropped": {
                f"{transport}:{reason}": n for (transport, reason), n in sorted(self.dropped.items())
            },
            "tcp_closed": dict(sorted(self.tcp_closed.items())),
        }


def _udp_socket(address: str, port: int) -> socket.socket | None:
    family = _family(address)
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        if family == socket.AF_INET6 and _no_ipv6(exc):
            return None
        raise
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER_BYTES)
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        if family == socket.AF_INET6 and _no_ipv6(exc):
            return None
        raise
    sock.setblocking(False)
    return sock


def _no_ipv6(exc: OSError) -> bool:
    return exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
