"""Sans-I/O demultiplexing of every WebRTC session on one UDP port and one ICE-TCP port.

Many peer connections share one socket, so each datagram must be given to the right one
(as pion's UDP mux and MediaMTX's single WebRTC port do):

1. a datagram from a remote address already bound to a session goes to that session;
2. otherwise it must be a STUN Binding request whose USERNAME starts with the ICE username
   fragment (ufrag) of a registered session, signed with that session's password
   (MESSAGE-INTEGRITY, RFC 8489 section 14.5): it binds its source address to the session;
3. a STUN response to a request a session sent (by transaction id) goes to that session
   without binding anything (a check's answer, or a STUN server's);
4. anything else is dropped, with the reason (unknown ufrag, wrong integrity, media from an
   address ICE has not checked, ...), for counting.

Checking the signature here, before a session sees anything, keeps an unauthenticated
sender from binding an address. ICE-TCP (RFC 6544) uses the same identification for the
first frame of a TCP connection; its frames are RFC 4571: a 16-bit length, then the packet.

Plain data in, decisions out: no sockets, no asyncio, no aioice.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

S = TypeVar("S")
Address = tuple[str, int]

COOKIE = 0x2112A442
_COOKIE_BYTES = struct.pack("!I", COOKIE)
HEADER = 20
BINDING_REQUEST = 0x0001
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
FINGERPRINT = 0x8028
# Remote addresses one session may bind (a browser's host, reflexive and relay paths, per
# family); more would only come from someone replaying a signed request from many ports.
MAX_ADDRESSES = 16
# Outstanding STUN transactions remembered for routing their responses (oldest forgotten).
MAX_TRANSACTIONS = 4096
MAX_FRAME = 0xFFFF  # RFC 4571: a 16-bit length


class Drop(enum.Enum):
    """Why a datagram or a TCP connection's first frame was refused (a metrics label)."""

    NOT_STUN = "not_stun"  # media or garbage from an address no ICE check has bound
    MALFORMED_STUN = "malformed_stun"
    NOT_A_BINDING_REQUEST = "not_a_binding_request"  # an unexpected STUN response or indication
    NO_USERNAME = "no_username"
    UNKNOWN_UFRAG = "unknown_ufrag"
    BAD_INTEGRITY = "bad_integrity"
    TOO_MANY_ADDRESSES = "too_many_addresses"


@dataclass(frozen=True, slots=True)
class StunHeader:
    """What the demux reads of a STUN message: its type, transaction id and, for a request,
    the USERNAME and where MESSAGE-INTEGRITY sits."""

    message_type: int
    transaction_id: bytes
    username: str | None
    integrity_offset: int | None  # byte offset of the MESSAGE-INTEGRITY attribute

    @property
    def is_binding_request(self) -> bool:
        return self.message_type == BINDING_REQUEST

    @property
    def is_response(self) -> bool:
        return self.message_type & 0x0110 in (0x0100, 0x0110)  # success or error class


def looks_like_stun(data: bytes) -> bool:
    """RFC 7983: a first byte of 0-3 is STUN (DTLS is 20-63, RTP/RTCP 128-191)."""
    return len(data) >= HEADER and data[0] < 4


def parse_stun(data: bytes) -> StunHeader | None:
    """The header and routing attributes of a STUN message, or None if ``data`` is not a
    well-formed one (wrong cookie, length, attribute framing)."""
    if not looks_like_stun(data):
        return None
    message_type, length, cookie = struct.unpack_from("!HHI", data)
    if cookie != COOKIE or length % 4 or HEADER + length != len(data):
        return None
    username: str | None = None
    integrity: int | None = None
    pos = HEADER
    while pos < len(data):
        if pos + 4 > len(data):
            return None
        kind, size = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + size
        if end > len(data):
            return None
        if integrity is None:  # attributes after MESSAGE-INTEGRITY are not covered by it
            if kind == USERNAME:
                try:
                    username = data[pos + 4 : end].decode("utf-8")
                except UnicodeDecodeError:
                    return None
            elif kind == MESSAGE_INTEGRITY:
                if size != 20:
                    return None
                integrity = pos
        pos = end + (-size % 4)
    if pos != len(data):
        return None
    return StunHeader(message_type, bytes(data[8:20]), username, integrity)


def integrity_valid(data: bytes, header: StunHeader, key: bytes) -> bool:
    """MESSAGE-INTEGRITY of a short-term credential (the ICE password): HMAC-SHA1 over the
    message up to the attribute, with the header's length covering the attribute."""
    offset = header.integrity_offset
    if offset is None:
        return False
    covered = bytearray(data[:offset])
    struct.pack_into("!H", covered, 2, offset + 24 - HEADER)
    expected = hmac.new(key, bytes(covered), hashlib.sha1).digest()
    return hmac.compare_digest(expected, data[offset + 4 : offset + 24])


@dataclass(eq=False)
class _Entry(Generic[S]):
    ufrag: str
    key: bytes
    session: S
    addresses: set[Address] = field(default_factory=set)
    removed: bool = False


class Demux(Generic[S]):
    """The routing table of one shared port: ufrag → session, remote address → session,
    outstanding transaction → session."""

    def __init__(self, max_addresses: int = MAX_ADDRESSES, max_transactions: int = MAX_TRANSACTIONS) -> None:
        self._by_ufrag: dict[str, _Entry[S]] = {}
        self._by_address: dict[Address, _Entry[S]] = {}
        self._by_session: dict[int, _Entry[S]] = {}
        self._transactions: OrderedDict[bytes, _Entry[S]] = OrderedDict()
        self._max_addresses = max_addresses
        self._max_transactions = max_transactions

    def __len__(self) -> int:
        return len(self._by_ufrag)

    @property
    def addresses(self) -> int:
        return len(self._by_address)

    def register(self, ufrag: str, password: str, session: S) -> bool:
        """Route checks signed for ``ufrag`` to ``session``. False if another session holds
        the ufrag (the caller gives this one sockets of its own)."""
        if ufrag in self._by_ufrag or id(session) in self._by_session:
            return False
        entry = _Entry(ufrag, password.encode("utf-8"), session)
        self._by_ufrag[ufrag] = entry
        self._by_session[id(session)] = entry
        return True

    def remove(self, session: S) -> None:
        """Forget ``session``: its ufrag, its addresses, its transactions."""
        entry = self._by_session.pop(id(session), None)
        if entry is None:
            return
        entry.removed = True
        del self._by_ufrag[entry.ufrag]
        for address in entry.addresses:
            if self._by_address.get(address) is entry:
                del self._by_address[address]
        entry.addresses.clear()

    def sent_request(self, session: S, data: bytes) -> None:
        """``session`` sends ``data``: if it is a STUN request, remember its transaction so
        the response finds the session even from an address not yet bound."""
        if len(data) < HEADER or data[0] != 0 or data[1] != 1 or data[4:8] != _COOKIE_BYTES:
            return  # not a Binding request
        entry = self._by_session.get(id(session))
        if entry is None:
            return
        self._transactions[bytes(data[8:20])] = entry
        while len(self._transactions) > self._max_transactions:
            self._transactions.popitem(last=False)

    def identify(self, data: bytes) -> S | Drop:
        """The session a signed Binding request names, without binding its address (the
        first frame of an ICE-TCP connection)."""
        found = self._authenticate(data)
        return found if isinstance(found, Drop) else found.session

    def route(self, data: bytes, address: Address) -> S | Drop:
        """The session a datagram from ``address`` belongs to, or why it is dropped."""
        entry = self._by_address.get(address)
        if entry is not None:
            if looks_like_stun(data):
                return self._route_stun_from_bound(data, address, entry)
            return entry.session
        header = parse_stun(data)
        if header is None:
            return Drop.MALFORMED_STUN if looks_like_stun(data) else Drop.NOT_STUN
        if header.is_response:
            owner = self._transactions.pop(header.transaction_id, None)
            if owner is None or owner.removed:
                return Drop.NOT_A_BINDING_REQUEST
            return owner.session
        found = self._authenticate(data, header)
        if isinstance(found, Drop):
            return found
        return self._bind(found, address)

    def _route_stun_from_bound(self, data: bytes, address: Address, entry: _Entry[S]) -> S | Drop:
        """STUN from a bound address goes to its session, except a Binding request that does
        not name the session's ufrag: signed for another registered session, it moves the
        address there (the browser reused its socket for a new peer connection); otherwise
        (no USERNAME, unknown ufrag, wrong signature) it is dropped like any unchecked one."""
        header = parse_stun(data)
        if header is None:
            return entry.session  # aioice answers or ignores it, as on a socket of its own
        if header.is_response:
            self._transactions.pop(header.transaction_id, None)
            return entry.session
        ufrag = (header.username or "").partition(":")[0]
        if not header.is_binding_request or ufrag == entry.ufrag:
            return entry.session
        found = self._authenticate(data, header)
        if isinstance(found, Drop):
            return found
        return self._bind(found, address)

    def _authenticate(self, data: bytes, header: StunHeader | None = None) -> _Entry[S] | Drop:
        header = header or parse_stun(data)
        if header is None:
            return Drop.MALFORMED_STUN if looks_like_stun(data) else Drop.NOT_STUN
        if not header.is_binding_request:
            return Drop.NOT_A_BINDING_REQUEST
        if header.username is None:
            return Drop.NO_USERNAME
        entry = self._by_ufrag.get(header.username.partition(":")[0])
        if entry is None:
            return Drop.UNKNOWN_UFRAG
        if not integrity_valid(data, header, entry.key):
            return Drop.BAD_INTEGRITY
        return entry

    def _bind(self, entry: _Entry[S], address: Address) -> S | Drop:
        previous = self._by_address.get(address)
        if previous is entry:
            return entry.session
        # The limit holds for an address moving in from another session too (else signed
        # requests could pile up a session's addresses past it); a refused move keeps it.
        if len(entry.addresses) >= self._max_addresses:
            return Drop.TOO_MANY_ADDRESSES
        if previous is not None:
            previous.addresses.discard(address)
        entry.addresses.add(address)
        self._by_address[address] = entry
        return entry.session


class FrameError(ValueError):
    """A framing error on an ICE-TCP connection: it must be closed."""


class FrameReader:
    """RFC 4571 framing: a stream of 16-bit big-endian lengths, each followed by a packet.
    Holds at most one partial frame (at most 65537 bytes)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held of a frame not complete yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        buffer = self._buffer
        pos = 0
        while len(buffer) - pos >= 2:
            (length,) = struct.unpack_from("!H", buffer, pos)
            if length == 0:
                raise FrameError("empty frame")
            if len(buffer) - pos - 2 < length:
                break
            frames.append(bytes(buffer[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        del buffer[:pos]
        return frames


def frame(packet: bytes) -> bytes:
    """``packet`` with its RFC 4571 length prefix."""
    if not 0 < len(packet) <= MAX_FRAME:
        raise FrameError(f"a {len(packet)}-byte packet cannot be framed")
    return struct.pack("!H", len(packet)) + packet
