"""An aiortc peer that connects over ICE-TCP (RFC 6544 active, RFC 4571 framing), as a
browser that cannot use UDP does: aioice itself has no TCP candidates, so this gives a
client's aioice Connection one protocol over a TCP connection to the server's passive
candidate, before the answer's candidates are paired.

Test-side only. It also exposes the TCP transport, so a test can stop reading (a viewer
whose socket no longer drains).
"""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

import aioice.ice
from aioice.candidate import Candidate, candidate_foundation

from gateway.media.webrtc.demux import FrameReader, frame
from gateway.wcs.client import ClientStream

PASSIVE = re.compile(r"a=candidate:\S+ 1 tcp \d+ (\S+) (\d+) typ host tcptype passive", re.IGNORECASE)


class _Framed(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.protocol: _TcpStun | None = None
        self.peer: tuple[str, int] = ("", 0)
        self._reader = FrameReader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])

    def data_received(self, data: bytes) -> None:
        for packet in self._reader.feed(data):
            if self.protocol is not None:
                self.protocol.datagram_received(packet, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.protocol is not None:
            self.protocol.connection_lost(exc)

    # What aioice needs of a transport.
    def sendto(self, data: bytes, addr: Any = None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default) if self.transport else default

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport else 0

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _TcpStun(aioice.ice.StunProtocol):
    async def close(self) -> None:
        self.transport.close()
        self.connection_lost(None)


class IceTcpPath:
    """The client's TCP connection to the server's passive candidate."""

    def __init__(self, receive_buffer: int | None = None) -> None:
        self.link: _Framed | None = None
        self._receive_buffer = receive_buffer  # a small one backs the server up sooner

    async def __call__(self, stream: ClientStream, answer: str) -> None:
        """A `before_answer` hook: connect to the answer's passive TCP candidate and add the
        path to the client's ICE connection."""
        found = PASSIVE.search(answer)
        assert found, "the answer has no passive ICE-TCP candidate"
        host, port = found.group(1), int(found.group(2))
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        if self._receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        _, link = await loop.create_connection(_Framed, sock=sock)
        self.link = link
        connection = _ice_connection(stream)
        local = link.get_extra_info("sockname")
        protocol = _TcpStun(connection)
        protocol.transport = link  # type: ignore[assignment]
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "tcp", local[0]),
            component=1,
            transport="tcp",
            priority=(126 << 24) | (((6 << 13) + 8191) << 8) | 255,
            host=local[0],
            port=local[1],
            type="host",
            tcptype="active",
        )
        link.protocol = protocol
        connection._protocols.append(protocol)

    def pause(self) -> None:
        """Stop reading: the server's writes back up in its send buffer."""
        assert self.link is not None and self.link.transport is not None
        self.link.transport.pause_reading()

    def resume(self) -> None:
        assert self.link is not None and self.link.transport is not None
        self.link.transport.resume_reading()


def _ice_connection(stream: ClientStream) -> aioice.ice.Connection:
    """The ICE connection that remains once the answer bundles every m-line: the first's."""
    first = stream.pc.getTransceivers()[0]
    return first.sender.transport.transport._connection
