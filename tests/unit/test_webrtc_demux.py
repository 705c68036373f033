"""gateway.media.webrtc.demux: STUN parsing and MESSAGE-INTEGRITY, the shared-port routing table
and RFC 4571 framing, on plain data. Every STUN message here is built and signed by aioice's own
STUN code (an independent implementation), and aioice's `check_message_integrity` is the oracle
the demux's signature check must agree with."""

from __future__ import annotations

import itertools
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import pytest
from aioice import stun
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.media.webrtc.demux import (
    COOKIE,
    MAX_FRAME,
    Demux,
    Drop,
    FrameError,
    FrameReader,
    StunHeader,
    frame,
    integrity_valid,
    looks_like_stun,
    parse_stun,
)

FAST = settings(max_examples=150, deadline=None)

_txids = itertools.count(1)


def new_txid() -> bytes:
    return next(_txids).to_bytes(12, "big")


@dataclass(eq=False)
class Session:
    """What the demux routes to: any object; identity is what counts."""

    name: str

    def __repr__(self) -> str:
        return f"Session({self.name})"


def stun_bytes(
    method_class: stun.Class,
    attributes: dict[str, Any] | None = None,
    password: str | None = None,
    fingerprint: bool = True,
    txid: bytes | None = None,
) -> bytes:
    """A STUN Binding message as aioice builds it: signed with ``password`` if given (aioice
    always appends FINGERPRINT after MESSAGE-INTEGRITY; ``fingerprint=False`` takes it off)."""
    message = stun.Message(stun.Method.BINDING, method_class, txid or new_txid(), dict(attributes or {}))
    if password is not None:
        message.add_message_integrity(password.encode("utf-8"))
        if not fingerprint:
            del message.attributes["FINGERPRINT"]
    elif fingerprint:
        message.add_fingerprint()
    return bytes(message)


def request(
    username: str | None,
    password: str | None,
    fingerprint: bool = True,
    txid: bytes | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """A connectivity check as a browser sends it: USERNAME ``<our ufrag>:<theirs>``, PRIORITY,
    ICE-CONTROLLING, signed with our password."""
    attributes: dict[str, Any] = {}
    if username is not None:
        attributes["USERNAME"] = username
    attributes.update({"PRIORITY": 1853824767, "ICE-CONTROLLING": 0x1122334455667788})
    attributes.update(extra or {})
    return stun_bytes(stun.Class.REQUEST, attributes, password, fingerprint, txid)


def response(txid: bytes, password: str | None = "pw", error: bool = False) -> bytes:
    if error:
        return stun_bytes(stun.Class.ERROR, {"ERROR-CODE": (487, "Role Conflict")}, password, txid=txid)
    return stun_bytes(stun.Class.RESPONSE, {"XOR-MAPPED-ADDRESS": ("192.0.2.7", 40000)}, password, txid=txid)


def indication() -> bytes:
    return stun_bytes(stun.Class.INDICATION)


def with_length(data: bytes, length: int) -> bytes:
    return data[:2] + struct.pack("!H", length) + data[4:]


def header_with(body: bytes, message_type: int = 0x0001, cookie: int = COOKIE) -> bytes:
    """A STUN message written by hand: header over ``body`` (attributes), length = len(body)."""
    return struct.pack("!HHI12s", message_type, len(body), cookie, new_txid()) + body


def attribute(kind: int, value: bytes, pad: bool = True) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + (bytes(-len(value) % 4) if pad else b"")


DTLS_CLIENT_HELLO_START = bytes([22, 0xFE, 0xFD]) + bytes(30)  # content type 22, DTLS 1.2
RTP = bytes([0x80, 96]) + bytes(30)
RTCP = bytes([0x81, 200]) + bytes(30)

A = ("192.0.2.1", 50000)
B = ("192.0.2.1", 50001)
C = ("2001:db8::1", 50000)


def demux_with(*sessions: tuple[str, str, Session], **kwargs: int) -> Demux[Session]:
    demux: Demux[Session] = Demux(**kwargs)
    for ufrag, password, session in sessions:
        assert demux.register(ufrag, password, session)
    return demux


# --- parse_stun ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fingerprint", [True, False])
def test_parse_signed_binding_request(fingerprint: bool) -> None:
    txid = new_txid()
    data = request("ufragA:remote", "passwordA", fingerprint=fingerprint, txid=txid)
    header = parse_stun(data)
    assert header is not None
    assert header.message_type == 0x0001 and header.is_binding_request and not header.is_response
    assert header.transaction_id == txid
    assert header.username == "ufragA:remote"
    # MESSAGE-INTEGRITY is the last 24 bytes, or the last before FINGERPRINT's 8; aioice agrees.
    assert header.integrity_offset == len(data) - 24 - (8 if fingerprint else 0)
    assert header.integrity_offset == len(stun.parse_message(data)._integrity_data or b"")
    assert data[header.integrity_offset : header.integrity_offset + 4] == b"\x00\x08\x00\x14"


def test_parse_unsigned_request_has_no_integrity_offset() -> None:
    header = parse_stun(request("u:r", None))
    assert header is not None and header.username == "u:r" and header.integrity_offset is None
    header = parse_stun(request(None, "pw"))
    assert header is not None and header.username is None and header.integrity_offset is not None


@pytest.mark.parametrize("error", [False, True])
def test_parse_responses(error: bool) -> None:
    txid = new_txid()
    header = parse_stun(response(txid, error=error))
    assert header is not None
    assert header.message_type == (0x0111 if error else 0x0101)
    assert header.transaction_id == txid
    assert header.is_response and not header.is_binding_request
    assert header.username is None and header.integrity_offset is not None


def test_parse_indication() -> None:
    header = parse_stun(indication())
    assert header is not None and header.message_type == 0x0011
    assert not header.is_response and not header.is_binding_request


def test_parse_ignores_attributes_after_integrity() -> None:
    """A USERNAME or a second MESSAGE-INTEGRITY after the first is not covered by it: unread."""
    signed = request("real:r", "pw", fingerprint=False)
    extra = attribute(0x0006, b"forged:r") + attribute(0x0008, bytes(20))
    data = with_length(signed + extra, len(signed) - 20 + len(extra))
    header = parse_stun(data)
    assert header is not None and header.username == "real:r"
    assert header.integrity_offset == len(signed) - 24
    assert integrity_valid(data, header, b"pw")


def _malformed() -> dict[str, bytes]:
    good = request("u:r", "pw")
    body = good[20:]
    return {
        "empty": b"",
        "shorter than a header": good[:19],
        "wrong cookie": good[:4] + b"\x21\x12\xa4\x43" + good[8:],
        "length longer than data": with_length(good, len(body) + 4),
        "length shorter than data": with_length(good, len(body) - 4),
        "trailing bytes": good + bytes(4),
        "length not a multiple of 4": header_with(attribute(0x0006, b"u:r12", pad=False) + b"\x00"),
        "odd length, matching": header_with(attribute(0x0006, b"ab", pad=False)),
        "truncated attribute": with_length(good[:-4], len(body) - 4),
        "attribute past the end": header_with(struct.pack("!HH", 0x0006, 200) + b"u:rr"),
        "attribute length 0xffff": header_with(struct.pack("!HH", 0x8022, 0xFFFF) + bytes(8)),
        "non-UTF-8 USERNAME": header_with(attribute(0x0006, b"u\xff:r") + attribute(0x0008, bytes(20))),
        "MESSAGE-INTEGRITY of 16 bytes": header_with(
            attribute(0x0006, b"u:r") + attribute(0x0008, bytes(16))
        ),
        "MESSAGE-INTEGRITY of 32 bytes": header_with(
            attribute(0x0006, b"u:r") + attribute(0x0008, bytes(32))
        ),
    }


@pytest.mark.parametrize("name", list(_malformed()))
def test_parse_malformed_is_none(name: str) -> None:
    assert parse_stun(_malformed()[name]) is None


def test_looks_like_stun_by_first_byte() -> None:
    """RFC 7983: 0-3 STUN, 20-63 DTLS, 128-191 RTP/RTCP; and a STUN header is 20 bytes."""
    assert looks_like_stun(request("u:r", "pw"))
    for first in range(4):
        assert looks_like_stun(bytes([first]) + bytes(19))
    assert not looks_like_stun(bytes(19))
    for first in [*range(20, 64), *range(128, 192)]:
        assert not looks_like_stun(bytes([first]) + bytes(40))
        assert parse_stun(bytes([first]) + bytes(40)) is None
    assert not looks_like_stun(DTLS_CLIENT_HELLO_START) and not looks_like_stun(RTP)


# --- integrity_valid ---------------------------------------------------------------------------------


def _signed(fingerprint: bool = True) -> tuple[bytes, StunHeader]:
    data = request("ufragA:remote", "passwordA", fingerprint=fingerprint)
    header = parse_stun(data)
    assert header is not None
    return data, header


@pytest.mark.parametrize("fingerprint", [True, False])
def test_integrity_right_and_wrong_password(fingerprint: bool) -> None:
    data, header = _signed(fingerprint)
    assert integrity_valid(data, header, b"passwordA")
    assert not integrity_valid(data, header, b"passwordB")
    assert not integrity_valid(data, header, b"")
    unsigned = request("ufragA:remote", None)
    unsigned_header = parse_stun(unsigned)
    assert unsigned_header is not None and not integrity_valid(unsigned, unsigned_header, b"passwordA")


@pytest.mark.parametrize("fingerprint", [True, False])
def test_integrity_any_flipped_bit_in_covered_part_fails(fingerprint: bool) -> None:
    """Every bit up to the end of MESSAGE-INTEGRITY's value, as the demux sees it (parsed again):
    either the message no longer parses or its signature is wrong."""
    data, header = _signed(fingerprint)
    assert header.integrity_offset is not None
    covered_end = header.integrity_offset + 24
    for bit in range(covered_end * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        reparsed = parse_stun(bytes(flipped))
        assert reparsed is None or not integrity_valid(bytes(flipped), reparsed, b"passwordA"), bit
        # With the original parse too, except the length field: the HMAC is computed with the
        # length rewritten (RFC 8489 14.5) and parse_stun checks the real one against the data.
        if bit // 8 not in (2, 3) and not header.integrity_offset <= bit // 8 < header.integrity_offset + 4:
            assert not integrity_valid(bytes(flipped), header, b"passwordA"), bit


def test_integrity_ignores_what_follows_it() -> None:
    data, header = _signed(fingerprint=True)
    changed_fingerprint = data[:-4] + bytes(b ^ 0xFF for b in data[-4:])
    reparsed = parse_stun(changed_fingerprint)
    assert reparsed == header and integrity_valid(changed_fingerprint, reparsed, b"passwordA")
    software = attribute(0x8022, b"appended later")
    appended = with_length(data + software, len(data) - 20 + len(software))
    reparsed = parse_stun(appended)
    assert reparsed is not None and integrity_valid(appended, reparsed, b"passwordA")


usernames = st.text(max_size=60)
passwords = st.text(min_size=1, max_size=40)
extras = st.fixed_dictionaries(
    {},
    optional={
        "PRIORITY": st.integers(0, 2**32 - 1),
        "ICE-CONTROLLED": st.integers(0, 2**64 - 1),
        "USE-CANDIDATE": st.none(),
        "SOFTWARE": st.text(max_size=30),
        "XOR-MAPPED-ADDRESS": st.tuples(st.sampled_from(["192.0.2.9", "2001:db8::9"]), st.integers(0, 65535)),
    },
)


@FAST
@given(
    username=st.none() | usernames,
    password=passwords,
    key=st.none() | passwords,
    extra=extras,
    fingerprint=st.booleans(),
    message_class=st.sampled_from(list(stun.Class)),
)
def test_integrity_agrees_with_aioice(
    username: str | None,
    password: str,
    key: str | None,
    extra: dict[str, Any],
    fingerprint: bool,
    message_class: stun.Class,
) -> None:
    attributes = dict(extra)
    if username is not None:
        attributes = {"USERNAME": username, **extra}
    data = stun_bytes(message_class, attributes, password, fingerprint)
    header = parse_stun(data)
    assert header is not None
    assert header.username == username
    assert header.message_type == 0x0001 | message_class
    check = (key if key is not None else password).encode("utf-8")
    oracle = stun.parse_message(data)
    assert header.transaction_id == oracle.transaction_id
    assert integrity_valid(data, header, check) == oracle.check_message_integrity(check)
    assert integrity_valid(data, header, password.encode("utf-8"))


@FAST
@given(
    password=passwords,
    fingerprint=st.booleans(),
    position=st.integers(0, 10_000),
    xor=st.integers(1, 255),
)
def test_integrity_of_corrupted_messages_agrees_with_aioice(
    password: str, fingerprint: bool, position: int, xor: int
) -> None:
    """A signed request with one byte changed: where both parsers accept it, both checks agree."""
    data = bytearray(request("ufrag:remote", password, fingerprint=fingerprint))
    data[position % len(data)] ^= xor
    header = parse_stun(bytes(data))
    try:
        oracle = stun.parse_message(bytes(data))
    except (ValueError, struct.error, KeyError):
        return  # aioice refuses it (a bad FINGERPRINT or method, say)
    if header is None:
        return
    key = password.encode("utf-8")
    assert integrity_valid(bytes(data), header, key) == oracle.check_message_integrity(key)


# --- Demux.route ----------------------------------------------------------------------------------------


def test_signed_request_binds_its_address() -> None:
    alice, bob = Session("alice"), Session("bob")
    demux = demux_with(("ufA", "pwA", alice), ("ufB", "pwB", bob))
    assert demux.route(request("ufA:x", "pwA"), A) is alice
    assert demux.addresses == 1
    for media in (DTLS_CLIENT_HELLO_START, RTP, RTCP, b"\x01"):
        assert demux.route(media, A) is alice
    # A later unsigned check from the bound address is for aioice to judge.
    assert demux.route(request("ufA:x", None), A) is alice
    assert demux.route(RTP, B) is Drop.NOT_STUN  # other addresses stay unbound
    assert demux.route(request("ufB:y", "pwB", fingerprint=False), B) is bob
    assert demux.addresses == 2 and len(demux) == 2


def test_unknown_ufrag_is_dropped() -> None:
    alice = Session("alice")
    demux = demux_with(("ufA", "pwA", alice))
    assert demux.route(request("ufX:x", "pwA"), A) is Drop.UNKNOWN_UFRAG
    assert demux.route(request("ufA", "pwA"), B) is alice  # no ':' at all: the whole name is the ufrag
    assert demux.route(request("ufAx:y", "pwA"), C) is Drop.UNKNOWN_UFRAG  # a prefix is not a match
    assert demux.addresses == 1


def test_bad_integrity_binds_nothing() -> None:
    alice = Session("alice")
    demux = demux_with(("ufA", "pwA", alice))
    assert demux.route(request("ufA:x", "wrong"), A) is Drop.BAD_INTEGRITY
    assert demux.route(request("ufA:x", None), A) is Drop.BAD_INTEGRITY  # unsigned
    assert demux.addresses == 0
    assert demux.route(RTP, A) is Drop.NOT_STUN
    assert demux.route(DTLS_CLIENT_HELLO_START, A) is Drop.NOT_STUN
    # The session still works for its real peer.
    assert demux.route(request("ufA:x", "pwA"), B) is alice
    assert demux.route(RTP, B) is alice


def test_unbound_drops_by_reason() -> None:
    alice = Session("alice")
    demux = demux_with(("ufA", "pwA", alice))
    assert demux.route(RTP, A) is Drop.NOT_STUN
    assert demux.route(b"", A) is Drop.NOT_STUN
    for malformed in _malformed().values():
        assert demux.route(malformed, A) in (Drop.MALFORMED_STUN, Drop.NOT_STUN)
        if looks_like_stun(malformed):
            assert demux.route(malformed, A) is Drop.MALFORMED_STUN
    assert demux.route(request(None, "pwA"), A) is Drop.NO_USERNAME
    assert demux.route(response(new_txid()), A) is Drop.NOT_A_BINDING_REQUEST
    assert demux.route(response(new_txid(), error=True), A) is Drop.NOT_A_BINDING_REQUEST
    assert demux.route(indication(), A) is Drop.NOT_A_BINDING_REQUEST
    assert demux.addresses == 0
    assert demux.route(request("ufA:x", "pwA"), A) is alice  # and the session still works


def test_response_to_a_sent_request_routes_once_and_binds_nothing() -> None:
    alice, bob = Session("alice"), Session("bob")
    demux = demux_with(("ufA", "pwA", alice), ("ufB", "pwB", bob))
    txid = new_txid()
    demux.sent_request(alice, request("remote:ufA", "remotepw", txid=txid))
    assert demux.route(response(txid, "remotepw"), A) is alice
    assert demux.addresses == 0
    assert demux.route(RTP, A) is Drop.NOT_STUN
    assert demux.route(response(txid, "remotepw"), A) is Drop.NOT_A_BINDING_REQUEST  # only once
    # An error response to a STUN server query goes home too.
    txid = new_txid()
    demux.sent_request(bob, request(None, None, txid=txid))
    assert demux.route(response(txid, None, error=True), B) is bob


def test_response_from_a_bound_address_goes_to_its_session() -> None:
    alice = Session("alice")
    demux = demux_with(("ufA", "pwA", alice))
    assert demux.route(request("ufA:x", "pwA"), A) is alice
    txid = new_txid()
    demux.sent_request(alice, request("x:ufA", "remote", txid=txid))
    assert demux.route(response(txid, "remote"), A) is alice
    assert demux.route(response(new_txid(), "remote"), A) is alice  # aioice ignores an unknown one
    assert demux.route(response(txid, "remote"), B) is Drop.NOT_A_BINDING_REQUEST  # consumed


def test_sent_request_ignores_non_requests() -> None:
    alice = Session("alice")
    demux = demux_with(("ufA", "pwA", alice))
    txid = new_txid()
    demux.sent_request(alice, response(txid))
    demux.sent_request(alice, stun_bytes(stun.Class.INDICATION, txid=txid))
    demux.sent_request(alice, RTP + txid)
    demux.sent_request(alice, request("x:ufA", "pw", txid=txid)[:19])
    allocate = bytes(stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST, txid))
    demux.sent_request(alice, allocate)
    demux.sent_request(Session("stranger"), request("x:ufA", "pw", txid=txid))  # not registered
    assert demux.route(response(txid), A) is Drop.NOT_A_BINDING_REQUEST


def test_transaction_table_is_bounded() -> None:
    alice = Session("alice")
    demux = demux_with(("ufA", "pwA", alice), max_transactions=3)
    txids = [new_txid() for _ in range(5)]
    for txid in txids:
        demux.sent_request(alice, request("x:ufA", "pw", txid=txid))
    assert demux.route(response(txids[0]), A) is Drop.NOT_A_BINDING_REQUEST
    assert demux.route(response(txids[1]), A) is Drop.NOT_A_BINDING_REQUEST
    for txid in txids[2:]:
        assert demux.route(response(txid), A) is alice


def test_addresses_per_session_are_bounded() -> None:
    alice, bob = Session("alice"), Session("bob")
    demux = demux_with(("ufA", "pwA", alice), ("ufB", "pwB", bob), max_addresses=2)
    assert demux.route(request("ufA:x", "pwA"), A) is alice
    assert demux.route(request("ufA:x", "pwA"), B) is alice
    assert demux.route(request("ufA:x", "pwA"), C) is Drop.TOO_MANY_ADDRESSES
    assert demux.route(RTP, C) is Drop.NOT_STUN
    assert demux.addresses == 2
    # Addresses already bound to it are still fine, signed checks included.
    assert demux.route(request("ufA:x", "pwA"), A) is alice
    assert demux.route(RTP, B) is alice
    # Another session is not affected by alice's limit.
    assert demux.route(request("ufB:y", "pwB"), C) is bob


def test_bound_address_moves_to_the_session_its_signed_request_names() -> None:
    """A browser reusing its socket for a new peer connection."""
    alice, bob = Session("alice"), Session("bob")
    demux = demux_with(("ufA", "pwA", alice), ("ufB", "pwB", bob))
    assert demux.route(request("ufA:x", "pwA"), A) is alice
    assert demux.route(request("ufB:y", "pwB"), A) is bob
    assert demux.route(RTP, A) is bob
    assert demux.addresses == 1
    demux.remove(alice)  # alice no longer owns A: removing it must not unbind bob's address
    assert demux.route(RTP, A) is bob
    assert demux.addresses == 1


def test_bound_address_keeps_its_session_on_a_bad_request_for_another() -> None:
    alice, bob = Session("alice"), Session("bob")
    demux = demux_with(("ufA", "pwA", alice), ("ufB", "pwB", bob))
    assert demux.route(request("ufA:x", "pwA"), A) is alice
    assert demux.route(request("ufB:y", "pwA"), A) is Drop.BAD_INTEGRITY
    assert demux.route(request("ufB:y", None), A) is Drop.BAD_INTEGRITY
    assert demux.route(request("ufZ:y", "pwB"), A) is Drop.UNKNOWN_UFRAG
    assert demux.route(RTP, A) is alice
    # Malformed STUN and indications from a bound address are aioice's business, as on a
    # socket of its own; a request without USERNAME (which aioice would refuse) is dropped.
    assert demux.route(_malformed()["wrong cookie"], A) is alice
    assert demux.route(indication(), A) is alice
    assert demux.route(request(None, "pwB"), A) is Drop.NO_USERNAME
    assert demux.route(RTP, A) is alice


def test_moving_into_a_full_session_is_refused() -> None:
    """The per-session limit holds when an address moves in from another session too."""
    alice, bob = Session("alice"), Session("bob")
    demux = demux_with(("ufA", "pwA", alice), ("ufB", "pwB", bob), max_addresses=1)
    assert demux.route(request("ufA:x", "pwA"), A) is alice
    assert demux.route(request("ufB:y", "pwB"), B) is bob
    assert demux.route(request("ufB:y", "pwB"), A) is Drop.TOO_MANY_ADDRESSES
    assert demux.route(RTP, A) is alice and demux.route(RTP, B) is bob
    assert demux.addresses == 2


def test_remove_forgets_ufrag_addresses_and_transactions() -> None:
    alice, bob = Session("alice"), Session("bob")
    demux = demux_with(("ufA", "pwA", alice), ("ufB", "pwB", bob))
    assert demux.route(request("ufA:x", "pwA"), A) is alice
    assert demux.route(request("ufA:x", "pwA"), C) is alice
    assert demux.route(request("ufB:y", "pwB"), B) is bob
    pending = new_txid()
    demux.sent_request(alice, request("x:ufA", "remote", txid=pending))
    demux.remove(alice)
    assert len(demux) == 1 and demux.addresses == 1
    assert demux.route(RTP, A) is Drop.NOT_STUN and demux.route(RTP, C) is Drop.NOT_STUN
    assert demux.route(request("ufA:x", "pwA"), A) is Drop.UNKNOWN_UFRAG
    assert demux.route(response(pending, "remote"), A) is Drop.NOT_A_BINDING_REQUEST
    assert demux.identify(request("ufA:x", "pwA")) is Drop.UNKNOWN_UFRAG
    demux.sent_request(alice, request("x:ufA", "remote", txid=pending))  # a late send: ignored
    assert demux.route(response(pending, "remote"), A) is Drop.NOT_A_BINDING_REQUEST
    demux.remove(alice)  # twice: nothing
    # bob keeps working.
    assert demux.route(RTP, B) is bob
    assert demux.route(request("ufB:y", "pwB"), A) is bob
    # The ufrag and the session object can be registered again, with no old state.
    assert demux.register("ufA", "pwA2", alice)
    assert demux.route(RTP, C) is Drop.NOT_STUN
    assert demux.route(response(pending, "remote"), C) is Drop.NOT_A_BINDING_REQUEST
    assert demux.route(request("ufA:x", "pwA2"), C) is alice


def test_register_refuses_duplicates() -> None:
    alice, bob = Session("alice"), Session("bob")
    demux: Demux[Session] = Demux()
    assert len(demux) == 0 and demux.addresses == 0
    assert demux.register("ufA", "pwA", alice)
    assert not demux.register("ufA", "pwB", bob)  # same ufrag
    assert not demux.register("ufC", "pwC", alice)  # same session
    assert len(demux) == 1
    # The refused registrations changed nothing.
    assert demux.route(request("ufA:x", "pwB"), A) is Drop.BAD_INTEGRITY
    assert demux.route(request("ufC:x", "pwC"), A) is Drop.UNKNOWN_UFRAG
    assert demux.route(request("ufA:x", "pwA"), A) is alice
    assert demux.register("ufB", "pwB", bob)
    assert len(demux) == 2
    demux.remove(Session("never registered"))
    assert len(demux) == 2 and demux.addresses == 1


# --- Demux.identify (the first frame of an ICE-TCP connection) ------------------------------------------


def test_identify_names_the_session_without_binding() -> None:
    alice = Session("alice")
    demux = demux_with(("ufA", "pwA", alice))
    assert demux.identify(request("ufA:x", "pwA")) is alice
    assert demux.identify(request("ufA:x", "pwA", fingerprint=False)) is alice
    assert demux.addresses == 0
    assert demux.route(RTP, A) is Drop.NOT_STUN


def test_identify_drops_by_reason() -> None:
    alice = Session("alice")
    demux = demux_with(("ufA", "pwA", alice))
    assert demux.identify(RTP) is Drop.NOT_STUN
    assert demux.identify(DTLS_CLIENT_HELLO_START) is Drop.NOT_STUN
    assert demux.identify(b"") is Drop.NOT_STUN
    assert demux.identify(_malformed()["wrong cookie"]) is Drop.MALFORMED_STUN
    assert demux.identify(_malformed()["non-UTF-8 USERNAME"]) is Drop.MALFORMED_STUN
    assert demux.identify(response(new_txid())) is Drop.NOT_A_BINDING_REQUEST
    assert demux.identify(indication()) is Drop.NOT_A_BINDING_REQUEST
    assert demux.identify(request(None, "pwA")) is Drop.NO_USERNAME
    assert demux.identify(request("ufB:x", "pwA")) is Drop.UNKNOWN_UFRAG
    assert demux.identify(request("ufA:x", "pwB")) is Drop.BAD_INTEGRITY
    assert demux.identify(request("ufA:x", None)) is Drop.BAD_INTEGRITY
    # A response the session is waiting for is not a first frame either.
    txid = new_txid()
    demux.sent_request(alice, request("x:ufA", "pw", txid=txid))
    assert demux.identify(response(txid)) is Drop.NOT_A_BINDING_REQUEST
    assert demux.identify(request("ufA:x", "pwA")) is alice


# --- never raises on arbitrary input ------------------------------------------------------------------


def _stunlike() -> st.SearchStrategy[bytes]:
    """Bytes that get past the header checks, so the attribute walk sees arbitrary input."""

    def build(message_type: int, body: bytes, txid: bytes) -> bytes:
        body = body + bytes(-len(body) % 4)
        return struct.pack("!HHI12s", message_type & 0x3FFF, len(body), COOKIE, txid) + body

    attributes = st.lists(
        st.tuples(st.sampled_from([0x0006, 0x0008, 0x8028, 0x0024, 0x8022, 0xC057]), st.binary(max_size=40)),
        max_size=5,
    ).map(lambda items: b"".join(attribute(kind, value) for kind, value in items))
    return st.builds(
        build,
        st.sampled_from([0x0001, 0x0101, 0x0111, 0x0011]) | st.integers(0, 0x3FFF),
        attributes | st.binary(max_size=80),
        st.sampled_from([b"\x00" * 12, b"\x01" * 12]),
    )


arbitrary_data = st.binary(max_size=200) | _stunlike() | st.just(request("ufA:x", "pwA"))
arbitrary_address = st.tuples(
    st.sampled_from(["192.0.2.1", "::1", "", "\x00\U0010ffff"]), st.integers(0, 65535)
)


@FAST
@given(packets=st.lists(st.tuples(arbitrary_data, arbitrary_address), max_size=20))
def test_route_and_parse_never_raise(packets: list[tuple[bytes, tuple[str, int]]]) -> None:
    alice, bob = Session("alice"), Session("bob")
    demux = demux_with(("ufA", "pwA", alice), ("ufB", "pwB", bob), max_addresses=3, max_transactions=2)
    demux.route(request("ufA:x", "pwA"), ("192.0.2.1", 1))
    demux.sent_request(bob, request("x:ufB", "pw", txid=b"\x01" * 12))
    for data, address in packets:
        header = parse_stun(data)
        assert header is None or isinstance(header, StunHeader)
        if header is not None:
            integrity_valid(data, header, b"pwA")
        assert demux.route(data, address) in (alice, bob, *Drop)
        assert demux.identify(data) in (alice, bob, *Drop)
        demux.sent_request(alice, data)
    assert demux.addresses <= 6


# --- a model of the routing table, against any sequence of operations -----------------------------------

UFRAGS = ["u0", "u1", "u2", "u3"]
ADDRESSES = [("192.0.2.1", 1), ("192.0.2.1", 2), ("::1", 1), ("::1", 2)]
MAX_ADDRESSES = 2
MAX_TRANSACTIONS = 4


@dataclass(eq=False)
class _Registration:
    """The model's record of one registration (a session registered again is a new one)."""

    session: Session
    ufrag: str
    password: str
    live: bool = True


class DemuxModel(RuleBasedStateMachine):
    """Demux against a plain model of its rules; after every step the answer is the model's, no
    removed session is returned, and the address count is that of the live sessions."""

    def __init__(self) -> None:
        super().__init__()
        self.demux: Demux[Session] = Demux(max_addresses=MAX_ADDRESSES, max_transactions=MAX_TRANSACTIONS)
        self.sessions = [Session(f"s{i}") for i in range(4)]
        self.live: dict[int, _Registration] = {}  # session index → registration
        self.bound: dict[tuple[str, int], _Registration] = {}
        self.transactions: OrderedDict[bytes, _Registration] = OrderedDict()
        self.removed: set[int] = set()  # ids of sessions removed and not registered again

    @initialize()
    def start(self) -> None:
        assert self.demux.register("u0", "p0", self.sessions[0])
        self.live[0] = _Registration(self.sessions[0], "u0", "p0")

    def _by_ufrag(self, ufrag: str) -> _Registration | None:
        return next((r for r in self.live.values() if r.ufrag == ufrag), None)

    def _check(self, got: Session | Drop, expected: Session | Drop) -> None:
        assert got is expected, (got, expected)
        assert not (isinstance(got, Session) and id(got) in self.removed)

    @rule(
        session_pick=st.integers(0, 4), ufrag_pick=st.integers(0, 4), password=st.sampled_from(["p0", "p1"])
    )
    def register(self, session_pick: int, ufrag_pick: int, password: str) -> None:
        # Mostly a free session under a free ufrag (the small picks, which Hypothesis favours),
        # sometimes any, so that duplicates are tried too.
        free = [i for i in range(len(self.sessions)) if i not in self.live]
        index = free[session_pick % len(free)] if free and session_pick < 3 else session_pick % 4
        unused = [u for u in UFRAGS if self._by_ufrag(u) is None]
        ufrag = unused[ufrag_pick % len(unused)] if unused and ufrag_pick < 3 else UFRAGS[ufrag_pick % 4]
        expected = index not in self.live and self._by_ufrag(ufrag) is None
        assert self.demux.register(ufrag, password, self.sessions[index]) is expected
        if expected:
            self.live[index] = _Registration(self.sessions[index], ufrag, password)
            self.removed.discard(id(self.sessions[index]))

    @rule(index=st.integers(0, 3))
    def remove(self, index: int) -> None:
        self.demux.remove(self.sessions[index])
        registration = self.live.pop(index, None)
        if registration is not None:
            registration.live = False
            self.removed.add(id(registration.session))
            self.bound = {a: r for a, r in self.bound.items() if r is not registration}

    def _password(self, ufrag: str, signed: bool) -> str:
        """The password ``ufrag`` is registered with, or another one (so both cases come up)."""
        target = self._by_ufrag(ufrag)
        right = target.password if target is not None else "p0"
        return right if signed else {"p0": "p1", "p1": "p0"}[right]

    def _ufrag(self, pick: int) -> str:
        """Mostly a live session's ufrag, the newest first (the interesting case), sometimes any."""
        live = [r.ufrag for r in reversed(self.live.values())]  # the newest first
        return live[pick % len(live)] if live and pick < 8 else UFRAGS[pick % len(UFRAGS)]

    @rule(pick=st.integers(0, 9), signed=st.booleans(), address=st.sampled_from(ADDRESSES))
    def check(self, pick: int, signed: bool, address: tuple[str, int]) -> None:
        self._route_check(self._ufrag(pick), signed, address)

    @precondition(lambda self: bool(self.bound) and len(self.live) > 1)
    @rule(address_pick=st.integers(0, len(ADDRESSES) - 1), ufrag_pick=st.integers(0, 3), signed=st.booleans())
    def move(self, address_pick: int, ufrag_pick: int, signed: bool) -> None:
        """A bound address checks another live session (a browser reusing its socket)."""
        address = sorted(self.bound)[address_pick % len(self.bound)]
        others = [r.ufrag for r in self.live.values() if r is not self.bound[address]]
        self._route_check(others[ufrag_pick % len(others)], signed, address)

    def _route_check(self, ufrag: str, signed: bool, address: tuple[str, int]) -> None:
        password = self._password(ufrag, signed)
        got = self.demux.route(request(f"{ufrag}:remote", password), address)
        current = self.bound.get(address)
        if current is not None and current.ufrag == ufrag:
            return self._check(got, current.session)
        target = self._by_ufrag(ufrag)
        if target is None:
            return self._check(got, Drop.UNKNOWN_UFRAG)
        if target.password != password:
            return self._check(got, Drop.BAD_INTEGRITY)
        if sum(r is target for r in self.bound.values()) >= MAX_ADDRESSES:
            return self._check(got, Drop.TOO_MANY_ADDRESSES)
        self.bound[address] = target
        self._check(got, target.session)

    @rule(address=st.sampled_from(ADDRESSES))
    def media(self, address: tuple[str, int]) -> None:
        current = self.bound.get(address)
        self._check(self.demux.route(RTP, address), current.session if current else Drop.NOT_STUN)

    @rule(index=st.integers(0, 3))
    def send(self, index: int) -> None:
        txid = new_txid()
        self.demux.sent_request(self.sessions[index], request("remote:x", "pw", txid=txid))
        if index in self.live:
            self.transactions[txid] = self.live[index]
            while len(self.transactions) > MAX_TRANSACTIONS:
                self.transactions.popitem(last=False)

    @precondition(lambda self: bool(self.transactions))
    @rule(pick=st.integers(0, MAX_TRANSACTIONS - 1), address=st.sampled_from(ADDRESSES))
    def answer(self, pick: int, address: tuple[str, int]) -> None:
        txid = list(self.transactions)[pick % len(self.transactions)]
        got = self.demux.route(response(txid), address)
        owner = self.transactions.pop(txid)
        current = self.bound.get(address)
        if current is not None:
            return self._check(got, current.session)
        self._check(got, owner.session if owner.live else Drop.NOT_A_BINDING_REQUEST)

    @rule(ufrag=st.sampled_from(UFRAGS), signed=st.booleans())
    def identify(self, ufrag: str, signed: bool) -> None:
        password = self._password(ufrag, signed)
        target = self._by_ufrag(ufrag)
        expected: Session | Drop = Drop.UNKNOWN_UFRAG
        if target is not None:
            expected = target.session if target.password == password else Drop.BAD_INTEGRITY
        self._check(self.demux.identify(request(f"{ufrag}:remote", password)), expected)

    @invariant()
    def counts(self) -> None:
        assert len(self.demux) == len(self.live)
        assert self.demux.addresses == len(self.bound)
        assert all(r.live for r in self.bound.values())


DemuxModel.TestCase.settings = settings(max_examples=120, stateful_step_count=50, deadline=None)
TestDemuxModel = DemuxModel.TestCase


# --- RFC 4571 framing ----------------------------------------------------------------------------------


@FAST
@given(
    packets=st.lists(st.binary(min_size=1, max_size=1500), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 1 << 16), max_size=12),
)
def test_frames_survive_any_chunking(packets: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(packet) for packet in packets)
    points = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    reader = FrameReader()
    received: list[bytes] = []
    fed = 0
    for start, end in itertools.pairwise(points):
        received += reader.feed(stream[start:end])
        fed += end - start
        assert reader.pending == fed - sum(2 + len(p) for p in received)
        assert received == packets[: len(received)]
    assert received == packets
    assert reader.pending == 0


def test_largest_frame_byte_by_byte_header_and_in_one_piece() -> None:
    big = bytes(range(256)) * 255 + bytes(255)
    assert len(big) == MAX_FRAME
    reader = FrameReader()
    assert reader.feed(frame(big)[:1]) == []
    assert reader.pending == 1
    assert reader.feed(frame(big)[1:2]) == []
    assert reader.pending == 2
    assert reader.feed(frame(big)[2:] + frame(b"x")) == [big, b"x"]
    assert reader.pending == 0


def test_pending_counts_held_bytes() -> None:
    reader = FrameReader()
    assert reader.pending == 0
    assert reader.feed(b"") == [] and reader.pending == 0
    assert reader.feed(frame(b"abc") + b"\x00\x05ab") == [b"abc"]
    assert reader.pending == 4
    assert reader.feed(b"cd") == [] and reader.pending == 6
    assert reader.feed(b"e\x00") == [b"abcde"] and reader.pending == 1


@pytest.mark.parametrize(
    "chunks",
    [
        [b"\x00\x00"],
        [b"\x00", b"\x00"],
        [frame(b"ok") + b"\x00\x00" + frame(b"after")],
        [frame(b"ok"), b"\x00\x00"],
    ],
)
def test_empty_frame_is_an_error(chunks: list[bytes]) -> None:
    reader = FrameReader()
    with pytest.raises(FrameError):
        for chunk in chunks:
            reader.feed(chunk)


@FAST
@given(packet=st.binary(min_size=1, max_size=3000))
def test_frame_round_trip(packet: bytes) -> None:
    framed = frame(packet)
    assert framed[:2] == struct.pack("!H", len(packet)) and framed[2:] == packet
    assert FrameReader().feed(framed) == [packet]


def test_frame_refuses_what_cannot_be_framed() -> None:
    with pytest.raises(FrameError):
        frame(b"")
    with pytest.raises(FrameError):
        frame(bytes(MAX_FRAME + 1))
    assert len(frame(bytes(MAX_FRAME))) == MAX_FRAME + 2
    assert issubclass(FrameError, ValueError)
