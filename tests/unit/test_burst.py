"""The fan-out floor's buffers and bursts (gateway/media/webrtc/burst.py, floor.py): the C
layouts against cffi's own, socket addresses, the GSO rule, RFC 4571 framing of a burst,
and whole bursts protected by libsrtp in place and sent with sendmmsg (or GSO) to a real
local socket, checked by decrypting them with pylibsrtp: each written by the floor in
Python and by its C burst (burst.c)."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import cffi
import pylibsrtp
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.media.webrtc import aiortc_compat, burst, floor, native
from gateway.media.webrtc.demux import FrameReader

KEY = bytes(range(1, 31))
HEADER = bytes.fromhex("906000000000000011223344bede000110300000")  # as aiortc, mid "0"
UNIT_TIMESTAMP = 0x1234  # the stream's RTP timestamp of the units the batch tests write

ffi = cffi.FFI()
ffi.cdef(
    """
    struct iovec { void *iov_base; size_t iov_len; };
    struct msghdr {
        void *msg_name; unsigned int msg_namelen; struct iovec *msg_iov; size_t msg_iovlen;
        void *msg_control; size_t msg_controllen; int msg_flags;
    };
    struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
    """
)


def test_struct_layouts_are_cffis() -> None:
    assert burst.IOVEC.size == ffi.sizeof("struct iovec")
    assert burst.MSGHDR.size == ffi.sizeof("struct msghdr")
    assert burst.MMSGHDR.size == ffi.sizeof("struct mmsghdr")
    assert burst.GSO_CONTROL.size == 24  # CMSG_SPACE(sizeof(uint16_t)) on LP64


@given(
    count=st.integers(1, 8),
    iov=st.integers(0, 2**48),
    name=st.integers(0, 2**48),
    namelen=st.sampled_from([16, 28]),
    control=st.one_of(st.just(0), st.integers(1, 2**48)),
)
def test_mmsghdr_array_is_byte_for_byte_what_c_would_build(
    count: int, iov: int, name: int, namelen: int, control: int
) -> None:
    ours = bytearray(burst.MMSGHDR.size * count)
    burst.pack_mmsghdrs(memoryview(ours), count, iov, name, namelen, control)
    theirs = ffi.new("struct mmsghdr[]", count)
    for index in range(count):
        hdr = theirs[index].msg_hdr
        hdr.msg_name = ffi.cast("void *", name)
        hdr.msg_namelen = namelen
        hdr.msg_iov = ffi.cast("struct iovec *", iov + index * ffi.sizeof("struct iovec"))
        hdr.msg_iovlen = 1
        if control:  # GSO: message i carries UDP_SEGMENT message i
            hdr.msg_control = ffi.cast("void *", control + index * 24)
            hdr.msg_controllen = 24
    assert bytes(ours) == bytes(ffi.buffer(theirs))


@given(base=st.integers(0, 2**48), length=st.integers(0, 65535))
def test_iovec_is_cffis(base: int, length: int) -> None:
    theirs = ffi.new("struct iovec *", {"iov_base": ffi.cast("void *", base), "iov_len": length})
    assert burst.IOVEC.pack(base, length) == bytes(ffi.buffer(theirs))


def test_gso_control() -> None:
    control = bytearray(48)
    burst.pack_gso_control(memoryview(control), 1210, 24)
    assert struct.unpack_from("@NiiH", control, 24) == (18, 17, 103, 1210)
    burst.GSO_SEGMENT.pack_into(control, 24 + burst.CMSGHDR.size, 999)
    assert struct.unpack_from("@NiiH", control, 24) == (18, 17, 103, 999)


@given(st.lists(st.integers(1, 1500), max_size=150))
def test_gso_runs_cover_the_packets_in_order_each_sendable_as_one(lengths: list[int]) -> None:
    runs = burst.gso_runs(lengths)
    covered = [i for first, count, _, _ in runs for i in range(first, first + count)]
    assert covered == list(range(len(lengths)))
    for first, count, segment, size in runs:
        run = lengths[first : first + count]
        assert segment == run[0] and size == sum(run)
        assert count == 1 or burst.gso_segment(run) == segment
    # Fewest: a run ends only where the next packet could not join it.
    for (first, count, segment, size), following in zip(runs, runs[1:], strict=False):
        nxt = lengths[following[0]]
        assert (
            lengths[first + count - 1] < segment
            or nxt > segment
            or count == burst.GSO_MAX_SEGMENTS
            or size + nxt > burst.GSO_MAX_BYTES
        )


@given(st.lists(st.integers(1, 1500), max_size=80))
def test_gso_segment_only_for_equal_sizes_but_a_shorter_last(lengths: list[int]) -> None:
    segment = burst.gso_segment(lengths)
    fits = (
        2 <= len(lengths) <= burst.GSO_MAX_SEGMENTS
        and sum(lengths) <= burst.GSO_MAX_BYTES
        and len(set(lengths[:-1])) == 1
        and lengths[-1] <= lengths[0]
    )
    assert (segment is not None) == fits
    if segment is not None:
        assert segment == lengths[0]


@given(size=st.integers(1, 1400), count=st.integers(2, 40), last=st.integers(1, 1400))
def test_gso_segment_of_a_run(size: int, count: int, last: int) -> None:
    lengths = [size] * (count - 1) + [last]
    assert (burst.gso_segment(lengths) == size) == (last <= size and sum(lengths) <= burst.GSO_MAX_BYTES)


def test_aiortcs_fu_a_fragments_are_rarely_gso_sized() -> None:
    """aiortc's H.264 packetizer spreads a NAL over fragments of two sizes (the larger
    first): one GSO send fits only when they come out equal (finding recorded in
    docs/performance.md)."""
    from fractions import Fraction

    import av
    from aiortc.codecs.h264 import H264Encoder

    fits = 0
    sizes = range(2000, 60000, 97)
    for size in sizes:
        packet = av.Packet(b"\x00\x00\x00\x01\x65" + b"\xaa" * size)
        packet.pts, packet.time_base = 0, Fraction(1, 90000)
        payloads, _ = H264Encoder().pack(packet)
        fits += burst.gso_segment([len(p) for p in payloads]) is not None
    assert fits < len(sizes) / 2


@given(
    st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(str),
    ),
    st.integers(0, 65535),
)
def test_sockaddr_round_trip(host: str, port: int) -> None:
    family, data = burst.sockaddr(host, port)
    assert len(data) == (16 if family == socket.AF_INET else 28)
    assert burst.parse_sockaddr(data) == (family, host, port)


@given(st.lists(st.binary(min_size=1, max_size=1500), max_size=20))
def test_split_framed_undoes_rfc4571_framing(packets: list[bytes]) -> None:
    framed = b"".join(struct.pack("!H", len(p)) + p for p in packets)
    assert burst.split_framed(framed) == packets
    assert FrameReader().feed(framed) == packets  # what the ICE-TCP peer's reader sees
    if framed:
        with pytest.raises(ValueError):
            burst.split_framed(framed[:-1])


# --- whole bursts through libsrtp and the kernel -----------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def floor_checked() -> Iterator[None]:
    assert floor.self_test() is None, floor.STATE.reason
    yield


@pytest.fixture(params=["python", "c"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The floor in Python, then its C burst (built by the start check where there is a C
    compiler: the test setup installs gcc, so there it must have built). Yields the count of
    bursts the C burst wrote, checked at the end: all of them with "c", none with "python"."""
    if request.param == "c":
        if native.compiler() is None:
            pytest.skip("no C compiler here: the C burst cannot be built")
        assert floor.native_available(), floor.native_reason()
    calls = [0]
    through_c = floor.FloorPath._send_native

    def counted(self: floor.FloorPath, *args: Any) -> None:
        calls[0] += 1
        through_c(self, *args)

    monkeypatch.setattr(floor.FloorPath, "_send_native", counted)
    before = floor.STATE.want_native
    floor.want_native(request.param == "c")
    try:
        yield calls
    finally:
        floor.want_native(before)
    if request.param == "python":
        assert calls[0] == 0


def inbound() -> pylibsrtp.Session:
    return pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))


def outbound() -> pylibsrtp.Session:
    return pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))


def plain(payloads: list[bytes], sequence: int, timestamp: int, payload_type: int = 102) -> list[bytes]:
    out = []
    for index, payload in enumerate(payloads):
        packet = bytearray(HEADER)
        marker = 0x80 if index == len(payloads) - 1 else 0
        struct.pack_into("!BHI", packet, 1, marker | payload_type, (sequence + index) & 0xFFFF, timestamp)
        out.append(bytes(packet) + payload)
    return out


class Transport:
    """What the floor sees of a viewer's asyncio transport, over a real UDP socket."""

    def __init__(self, sock: socket.socket, unsent: int = 0) -> None:
        self.sock = sock
        self.unsent = unsent
        self.sendto_calls = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def is_closing(self) -> bool:
        return self.sock.fileno() < 0

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        self.sendto_calls += 1
        self.sock.sendto(data, address)


class Framed:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write_framed(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    receiver.settimeout(2.0)
    sender.bind(("127.0.0.1", 0))
    sender.setblocking(False)
    yield receiver, sender
    receiver.close()
    sender.close()


bursts = st.lists(st.binary(min_size=1, max_size=1300), min_size=1, max_size=30)


@contextlib.contextmanager
def floor_setting(want: Callable[[Any], None], state: str, value: object) -> Iterator[None]:
    """One of the floor's settings for one test: they are the process's (a gateway started in
    this process earlier set them from its configuration), so each is put back after."""
    before = getattr(floor.STATE, state)
    want(value)
    try:
        yield
    finally:
        want(before)


def gso_wanted(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """GSO runs on or off."""
    return floor_setting(floor.want_gso, "want_gso", enabled)


def threads(count: int) -> contextlib.AbstractContextManager[None]:
    """A batch split over ``count`` threads (from `floor.SPLIT_AT` viewers)."""
    return floor_setting(floor.want_threads, "threads", count)


@pytest.mark.usefixtures("implementation")
@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(payloads=bursts, sequence=st.integers(0, 0xFFFF), timestamp=st.integers(0, 2**32 - 1))
def test_a_sendmmsg_burst_arrives_as_its_packets(
    sockets: tuple[socket.socket, socket.socket], payloads: list[bytes], sequence: int, timestamp: int
) -> None:
    receiver, sender = sockets
    transport = Transport(sender)
    path = floor.FloorPath(outbound(), transport, receiver.getsockname())
    with gso_wanted(False):  # one message per packet here; GSO runs have a test of their own
        path.send(HEADER, 102, payloads, sequence, timestamp, sum(map(len, payloads)))
    got = [receiver.recv(2048) for _ in payloads]
    session = inbound()
    assert [session.unprotect(p) for p in got] == plain(payloads, sequence, timestamp)
    assert transport.sendto_calls == 0 and path.bursts == 1 and path.gso_bursts == 0


@pytest.mark.usefixtures("implementation")
@settings(max_examples=30, deadline=None)
@given(payloads=bursts, sequence=st.integers(0, 0xFFFF), timestamp=st.integers(0, 2**32 - 1))
def test_a_framed_burst_is_one_write_of_rfc4571_frames(
    payloads: list[bytes], sequence: int, timestamp: int
) -> None:
    link = Framed()
    path = floor.FloorPath(outbound(), link, ("127.0.0.1", 9))
    path.send(HEADER, 102, payloads, sequence, timestamp, sum(map(len, payloads)))
    (written,) = link.writes
    session = inbound()
    packets = FrameReader().feed(written)
    assert [session.unprotect(p) for p in packets] == plain(payloads, sequence, timestamp)


def test_protected_bytes_equal_session_protect(
    implementation: list[int], request: pytest.FixtureRequest
) -> None:
    payloads = [bytes(range(256)) * 4, b"\x01\x02\x03"]
    link = Framed()
    floor.FloorPath(outbound(), link, ("127.0.0.1", 9)).send(HEADER, 102, payloads, 65535, 7, 1027)
    reference = outbound()
    assert burst.split_framed(link.writes[0]) == [reference.protect(p) for p in plain(payloads, 65535, 7)]
    assert implementation[0] == (1 if request.node.callspec.params["implementation"] == "c" else 0)


@pytest.mark.usefixtures("implementation")
def test_gso_burst_when_enabled(sockets: tuple[socket.socket, socket.socket]) -> None:
    if not floor.gso_available():
        pytest.skip("this kernel took no UDP GSO send in the floor's start check")
    receiver, sender = sockets
    with gso_wanted(True):
        payloads = [bytes([i]) * 1100 for i in range(5)] + [b"\x07" * 200]
        path = floor.FloorPath(outbound(), Transport(sender), receiver.getsockname())
        path.send(HEADER, 102, payloads, 10, 20, sum(map(len, payloads)))
        assert path.gso_bursts == 1
        uneven = [b"\x01" * 1000, b"\x02" * 999, b"\x03" * 1000]  # two runs: one sendmmsg of two
        path.send(HEADER, 102, uneven, 16, 21, 2999)
        assert path.gso_bursts == 2 and path.bursts == 2
        single = [b"\x01" * 1000, b"\x02" * 1001]  # as many runs as packets: plain sendmmsg
        path.send(HEADER, 102, single, 19, 22, 2001)
        assert path.gso_bursts == 2 and path.bursts == 3
    session = inbound()
    got = [session.unprotect(receiver.recv(2048)) for _ in range(len(payloads) + len(uneven) + len(single))]
    assert got == plain(payloads, 10, 20) + plain(uneven, 16, 21) + plain(single, 19, 22)


@pytest.mark.usefixtures("implementation")
def test_asyncio_keeps_the_order_while_it_holds_unsent_packets(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    """A transport with unsent data (the kernel's buffer was full) gets the whole burst,
    packet by packet: it queues them behind the others, and its size still tells the
    fan-out the viewer is congested."""
    receiver, sender = sockets
    transport = Transport(sender, unsent=1)
    path = floor.FloorPath(outbound(), transport, receiver.getsockname())
    payloads = [b"a" * 100, b"b" * 200, b"c" * 300]
    path.send(HEADER, 102, payloads, 1, 2, 600)
    assert transport.sendto_calls == 3 and path.handed_to_asyncio == 3
    session = inbound()
    assert [session.unprotect(receiver.recv(2048)) for _ in payloads] == plain(payloads, 1, 2)


@pytest.mark.usefixtures("implementation")
def test_a_closed_transport_raises(sockets: tuple[socket.socket, socket.socket]) -> None:
    receiver, sender = sockets
    path = floor.FloorPath(outbound(), Transport(sender), receiver.getsockname())
    sender.close()
    with pytest.raises(OSError):
        path.send(HEADER, 102, [b"x"], 1, 2, 1)


def test_an_address_of_another_family_than_the_socket_is_refused(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    _, sender = sockets
    with pytest.raises(AttributeError):
        floor.FloorPath(outbound(), Transport(sender), ("::1", 9))


def test_a_mismatch_at_start_turns_the_floor_off_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(burst, "RTP_PATCH", struct.Struct("<BHI"))  # a wrong header patch
    try:
        reason = floor.self_test()
        assert reason is not None and "differ from Session.protect" in reason
        assert not floor.available() and floor.STATE.reason == reason
    finally:
        monkeypatch.undo()
        assert floor.self_test() is None and floor.available()


async def test_check_logs_the_floor_and_why_it_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    with structlog.testing.capture_logs() as logs:
        report = await aiortc_compat.check(port_mux=False)
    (entry,) = [e for e in logs if e["event"] == "aiortc_internals"]
    assert report.available("fanout_floor") and entry["fanout_floor"] is True
    monkeypatch.setattr(burst, "RTP_PATCH", struct.Struct("<BHI"))
    with structlog.testing.capture_logs() as logs:
        report = await aiortc_compat.check(port_mux=False)
    (entry,) = [e for e in logs if e["event"] == "aiortc_internals"]
    assert entry["fanout_floor"] is False and entry["log_level"] == "warning"
    assert any("differ from Session.protect" in name for name in entry["missing"])
    assert not floor.available()
    monkeypatch.undo()
    assert floor.self_test() is None


def test_a_libc_without_sendmmsg_turns_the_floor_off_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """cffi raises AttributeError for a symbol libc lacks (an old libc, another OS)."""

    class NoSendmmsg:
        def __init__(self) -> None:
            raise AttributeError("function/symbol 'sendmmsg' not found in library '<None>'")

    monkeypatch.setattr(floor, "_scratch", None)
    monkeypatch.setattr(floor, "_Libc", NoSendmmsg)
    reason = floor.self_test()
    assert reason is not None and "sendmmsg" in reason and not floor.available()
    monkeypatch.undo()
    assert floor.self_test() is None and floor.available()


@pytest.mark.usefixtures("implementation")
def test_a_packet_libsrtp_refuses_stops_the_burst_before_anything_is_sent(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    """A session keyed for another SSRC than the header's: srtp_protect refuses the first
    packet, the floor raises FloorError naming libsrtp's status, and nothing was sent."""
    receiver, sender = sockets
    policy = pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_SPECIFIC, ssrc_value=1)
    transport = Transport(sender)
    path = floor.FloorPath(pylibsrtp.Session(policy), transport, receiver.getsockname())
    with pytest.raises(floor.FloorError, match="srtp_protect"):
        path.send(HEADER, 102, [b"a" * 100, b"b" * 100], 1, 2, 200)
    receiver.settimeout(0.2)
    with pytest.raises(TimeoutError):
        receiver.recv(2048)
    assert transport.sendto_calls == 0 and path.bursts == 0


# --- the C burst's batch: one call per access unit for many viewers ----------------------------


@pytest.fixture
def c_burst() -> Iterator[None]:
    if native.compiler() is None:
        pytest.skip("no C compiler here: the C burst cannot be built")
    assert floor.native_available(), floor.native_reason()
    with floor_setting(floor.want_native, "want_native", True):
        yield


def batch_viewers(
    sender: socket.socket, count: int, refusing: int = -1, unreachable: int = -1
) -> tuple[list[floor.FloorPath], list[socket.socket], list[tuple[int, int]]]:
    """``count`` viewers on one sending socket (as on the shared UDP port), each with its own
    receiver, SRTP session, sequence number and timestamp; viewer ``refusing`` has a session
    libsrtp refuses the header's SSRC for, viewer ``unreachable`` an address the kernel
    refuses (port 0)."""
    paths, receivers, numbering = [], [], []
    for index in range(count):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        receiver.settimeout(2.0)
        receivers.append(receiver)
        session = outbound()
        if index == refusing:
            policy = pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_SPECIFIC, ssrc_value=1)
            session = pylibsrtp.Session(policy)
        address = ("127.0.0.1", 0) if index == unreachable else receiver.getsockname()
        path = floor.FloorPath(session, Transport(sender), address)
        sequence, timestamp = (0xFFF0 + 7 * index) & 0xFFFF, (0xFFFFFF00 + 1000 * index) & 0xFFFFFFFF
        # Each viewer's own origin: its timestamps are origin + the stream's (UNIT_TIMESTAMP).
        slot = path.batch_slot(HEADER, 102, timestamp - UNIT_TIMESTAMP)
        assert slot is not None
        slot.sequence = sequence
        paths.append(path)
        numbering.append((sequence, timestamp))
    return paths, receivers, numbering


@pytest.mark.usefixtures("c_burst")
@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(payloads=bursts, viewers=st.integers(1, 5), gso=st.booleans())
def test_a_batch_gives_each_viewer_its_own_packets(
    sockets: tuple[socket.socket, socket.socket], payloads: list[bytes], viewers: int, gso: bool
) -> None:
    _, sender = sockets
    paths, receivers, numbering = batch_viewers(sender, viewers)
    try:
        with gso_wanted(gso):
            packed = floor.Packed(floor.scratch().native, payloads)
            failures = floor.send_batch(paths, packed, sum(map(len, payloads)), UNIT_TIMESTAMP)
        assert failures == []
        for path, receiver, (sequence, timestamp) in zip(paths, receivers, numbering, strict=True):
            got = [receiver.recv(2048) for _ in payloads]
            session = inbound()
            assert [session.unprotect(p) for p in got] == plain(payloads, sequence, timestamp)
            assert path.bursts == 1 and path.handed_to_asyncio == 0
            assert path.slot.sequence == (sequence + len(payloads)) & 0xFFFF  # the next unit's
            assert path.slot.timestamp == timestamp
            if not gso:
                assert path.gso_bursts == 0
    finally:
        for receiver in receivers:
            receiver.close()


@pytest.mark.usefixtures("c_burst")
@pytest.mark.parametrize("bad", ["refusing", "unreachable"])
def test_a_viewer_that_fails_in_a_batch_is_named_and_the_others_get_theirs(
    sockets: tuple[socket.socket, socket.socket], bad: str
) -> None:
    """The second of three viewers fails (libsrtp refuses its packets, or the kernel its
    address): the batch names it with the error, and the first and third get their packets."""
    _, sender = sockets
    paths, receivers, numbering = batch_viewers(sender, 3, **{bad: 1})
    payloads = [b"a" * 1000, b"b" * 1000, b"c" * 300]
    try:
        with gso_wanted(False):
            failures = floor.send_batch(
                paths, floor.Packed(floor.scratch().native, payloads), 2300, UNIT_TIMESTAMP
            )
        ((index, error),) = failures
        assert index == 1
        assert isinstance(error, floor.FloorError if bad == "refusing" else OSError)
        for viewer in (0, 2):
            session = inbound()
            got = [receivers[viewer].recv(2048) for _ in payloads]
            assert [session.unprotect(p) for p in got] == plain(payloads, *numbering[viewer])
            assert paths[viewer].bursts == 1
        receivers[1].settimeout(0.2)
        with pytest.raises(TimeoutError):
            receivers[1].recv(2048)
        # Every slot moves on, the failed one's too: its unit's numbers were used.
        assert [p.slot.sequence for p in paths] == [(seq + 3) & 0xFFFF for seq, _ in numbering]
    finally:
        for receiver in receivers:
            receiver.close()


@pytest.mark.usefixtures("c_burst")
@pytest.mark.parametrize("helper", [False, True], ids=["one-thread", "helper"])
def test_units_in_a_row_are_numbered_by_the_slots(
    sockets: tuple[socket.socket, socket.socket], helper: bool
) -> None:
    """Three units written with nothing set between them: each viewer's sequence numbers
    run on from unit to unit (across the wrap), and its timestamps are its origin plus
    each unit's."""
    _, sender = sockets
    paths, receivers, numbering = batch_viewers(sender, 2 * floor.SPLIT_AT)
    units = [([b"a" * 1000, b"b" * 500], 0), ([b"c" * 700], 3000), ([b"d" * 900] * 3 + [b"e"], 6000)]
    try:
        with threads(2 if helper else 1), gso_wanted(False):
            for payloads, step in units:
                packed = floor.Packed(floor.scratch().native, payloads)
                assert floor.send_batch(paths, packed, sum(map(len, payloads)), UNIT_TIMESTAMP + step) == []
        for receiver, (sequence, timestamp) in zip(receivers, numbering, strict=True):
            session = inbound()
            for payloads, step in units:
                got = [session.unprotect(receiver.recv(2048)) for _ in payloads]
                assert got == plain(payloads, sequence, (timestamp + step) & 0xFFFFFFFF)
                sequence = (sequence + len(payloads)) & 0xFFFF
    finally:
        for receiver in receivers:
            receiver.close()


@pytest.mark.usefixtures("c_burst")
def test_a_batch_sends_gso_runs_when_enabled(sockets: tuple[socket.socket, socket.socket]) -> None:
    if not floor.gso_available():
        pytest.skip("this kernel refused UDP GSO at the start check")
    _, sender = sockets
    paths, receivers, numbering = batch_viewers(sender, 2)
    payloads = [b"a" * 1000, b"b" * 1000, b"c" * 300]  # one GSO run: equal sizes, a shorter last
    try:
        with gso_wanted(True):
            assert (
                floor.send_batch(paths, floor.Packed(floor.scratch().native, payloads), 2300, UNIT_TIMESTAMP)
                == []
            )
        for path, receiver, (sequence, timestamp) in zip(paths, receivers, numbering, strict=True):
            session = inbound()
            got = [session.unprotect(receiver.recv(2048)) for _ in payloads]
            assert got == plain(payloads, sequence, timestamp)
            assert path.bursts == path.gso_bursts == 1
    finally:
        for receiver in receivers:
            receiver.close()


@pytest.mark.usefixtures("c_burst")
@pytest.mark.parametrize("gso", [False, True])
def test_a_batch_shared_with_the_helper_thread_gives_each_viewer_its_own_packets(
    sockets: tuple[socket.socket, socket.socket], gso: bool
) -> None:
    """Both threads take viewers until none is left; the helper takes some (a batch is
    tried up to 20 times for it, should its core be busy) and every viewer gets its own
    packets, once."""
    _, sender = sockets
    payloads = [bytes((i + j) & 0xFF for j in range(1100)) for i in range(5)] + [b"z" * 77]
    helper = floor.helper_scratch()
    assert helper is not None
    before = helper.native_scratch.taken
    for _ in range(20):
        paths, receivers, numbering = batch_viewers(sender, 4 * floor.SPLIT_AT)
        try:
            with threads(2), gso_wanted(gso):
                packed = floor.Packed(floor.scratch().native, payloads)
                assert floor.send_batch(paths, packed, sum(map(len, payloads)), UNIT_TIMESTAMP) == []
            assert not floor.STATE.helper_failed
            for path, receiver, (sequence, timestamp) in zip(paths, receivers, numbering, strict=True):
                session = inbound()
                got = [session.unprotect(receiver.recv(2048)) for _ in payloads]
                assert got == plain(payloads, sequence, timestamp)
                assert path.bursts == 1 and path.handed_to_asyncio == 0
        finally:
            for receiver in receivers:
                receiver.close()
        if helper.native_scratch.taken > before:
            break
    assert helper.native_scratch.taken > before, "the helper thread took no viewer in 20 batches"


@pytest.mark.usefixtures("c_burst")
def test_failures_in_a_shared_batch_are_named_and_the_rest_is_sent(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    """Two viewers fail, whichever thread takes them (libsrtp refuses one, the kernel the
    other's address): both are named, every other viewer gets its packets, those after
    each failure too."""
    _, sender = sockets
    count = floor.SPLIT_AT + 2
    split = count // 2
    paths, receivers, numbering = batch_viewers(sender, count, refusing=1, unreachable=split + 1)
    payloads = [b"a" * 1000, b"b" * 1000, b"c" * 300]
    try:
        with threads(2), gso_wanted(False):
            failures = floor.send_batch(
                paths, floor.Packed(floor.scratch().native, payloads), 2300, UNIT_TIMESTAMP
            )
        assert sorted((index, type(error)) for index, error in failures) == [
            (1, floor.FloorError),
            (split + 1, OSError),
        ]
        for viewer in set(range(count)) - {1, split + 1}:
            session = inbound()
            got = [session.unprotect(receivers[viewer].recv(2048)) for _ in payloads]
            assert got == plain(payloads, *numbering[viewer])
    finally:
        for receiver in receivers:
            receiver.close()


@pytest.mark.usefixtures("c_burst")
def test_a_helper_thread_that_cannot_start_leaves_one_thread(
    sockets: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """sky_fanout2 refusing (its pthread_create failed): the batch is written by the event
    loop's thread alone, the reason logged once, and later batches do not ask again."""
    lib = floor.scratch().native
    assert lib is not None
    original = lib.lib

    class Refusing:
        calls = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(original, name)

        def sky_fanout2(self, *args: Any) -> int:
            Refusing.calls += 1
            return -1

    monkeypatch.setattr(lib, "lib", Refusing())
    monkeypatch.setattr(floor.STATE, "helper_failed", False)
    monkeypatch.setattr(floor, "_logged", set())
    _, sender = sockets
    payloads = [b"a" * 1000, b"b" * 200]
    with threads(2), structlog.testing.capture_logs() as logs:
        for _ in range(2):
            paths, receivers, numbering = batch_viewers(sender, floor.SPLIT_AT)
            try:
                assert floor.send_batch(paths, floor.Packed(lib, payloads), 1200, UNIT_TIMESTAMP) == []
                for receiver, (sequence, timestamp) in zip(receivers, numbering, strict=True):
                    session = inbound()
                    got = [session.unprotect(receiver.recv(2048)) for _ in payloads]
                    assert got == plain(payloads, sequence, timestamp)
            finally:
                for receiver in receivers:
                    receiver.close()
    assert Refusing.calls == 1 and floor.STATE.helper_failed
    assert [e["event"] for e in logs].count("fanout_threads_unavailable") == 1
