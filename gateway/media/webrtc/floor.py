"""The floor of a viewer's cost: one synchronous burst per access unit and viewer.

The fast fan-out (`fanout.py`) made per viewer and packet a header copy, a ``bytes`` for
pylibsrtp's ``Session.protect`` (which copies it in and out of its own buffer) and a
``sendto`` through asyncio. Here, per viewer and access unit:

- every packet is laid out (header template, patched; payload) in one reused buffer and
  protected in place by libsrtp's ``srtp_protect`` through pylibsrtp's cffi binding, on
  the viewer's own ``srtp_t`` (`aiortc_compat.srtp_context`);
- UDP: one ``sendmmsg`` (its ``mmsghdr``/``iovec`` arrays are reused too: a burst only
  writes each packet's base and length); with UDP GSO (``fanout_gso``) its messages are
  runs of packets the kernel cuts itself (`burst.gso_runs`: each of one size but a shorter
  last, as `rtp_frames.h264_payloads` cuts a NAL unit), so an access unit of two slices
  is two datagrams' worth of work for the socket layer instead of eight;
- ICE-TCP: the packets are laid out with their RFC 4571 length prefixes, and the whole
  burst is one write on the connection's asyncio transport.

What the kernel does not take (a full socket buffer: ``EAGAIN``, or any error) goes
through the viewer's asyncio transport packet by packet, as before: asyncio queues it and
reports errors as it always did, so its write-buffer size still tells the fan-out that a
viewer is congested (the 512 KiB check) and the order of packets on the socket is kept
(a burst goes the old way whole while asyncio still holds unsent data).

`self_test()` runs at start (from `aiortc_compat.check()`): the floor's bytes for a known
packet must equal ``Session.protect``'s, and a burst sent to a local socket must arrive as
its packets; otherwise the floor is off, with the reason logged once, and every viewer
keeps the fast fan-out's per-packet path.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cffi  # type: ignore[import-untyped]  # no stubs (types-cffi is not a dependency)
import pylibsrtp

from gateway.log import get_logger
from gateway.media.webrtc import aiortc_compat, burst, native

log = get_logger(__name__)

# Messages one sendmmsg call carries at most (the kernel's UIO_MAXIOV); a larger access
# unit (over about 1.3 MB) takes the per-packet path.
MAX_MESSAGES = 1024
# Room libsrtp may write after a packet (SRTP_MAX_TRAILER_LEN: tag and MKI).
TRAILER = 16 + 128
# What each packet may grow by when protected and framed (tag, RFC 4571 prefix).
PER_PACKET_GROWTH = 16 + 2
INITIAL_CAPACITY = 256 * 1024
GSO_AT = burst.CMSGHDR.size  # where a UDP_SEGMENT message holds its segment size
# A batch of at least this many viewers is shared between the event loop's thread and the C
# burst's helper thread (``fanout_threads = 2``): below it, waking the helper costs more
# than what it would write.
SPLIT_AT = 8
# The longest RTP header a batch (`send_batch`) lays out: aiortc's with a few extensions is
# 20-40 bytes; a viewer whose header is longer is written alone.
MAX_HEADER = 128

_CDEF = burst.CDEF_STRUCTS + "int sendmmsg(int fd, struct mmsghdr *msgvec, unsigned int vlen, int flags);\n"


class FloorError(RuntimeError):
    """libsrtp refused a packet (the burst stops there)."""


@dataclass
class _State:
    checked: bool = False
    available: bool = False
    gso: bool = False  # the kernel took a GSO burst in the self-test
    want_gso: bool = False  # the gateway's setting (fanout_gso)
    use_gso: bool = False  # both
    reason: str | None = None
    native: bool = False  # the C burst (burst.c) passed the self-test
    want_native: bool = True  # the gateway's setting (fanout_native)
    use_native: bool = False  # both
    native_reason: str | None = None  # why the C burst is not used
    threads: int = 1  # the gateway's setting (fanout_threads): a batch's threads at most
    helper_failed: bool = False  # the C burst's helper thread could not be started


STATE = _State()
_logged: set[str] = set()


def available() -> bool:
    """Whether the floor passed its start check in this process."""
    return STATE.available


def gso_available() -> bool:
    return STATE.gso


def want_gso(enabled: bool) -> None:
    """Send runs of packets whose sizes allow it as GSO messages (if the kernel has it)."""
    STATE.want_gso = enabled
    STATE.use_gso = enabled and STATE.gso


def want_native(enabled: bool) -> None:
    """Write bursts with the C burst (`native`) if it builds and passes the self-test."""
    STATE.want_native = enabled
    STATE.use_native = enabled and STATE.native


def want_threads(count: int) -> None:
    """Split a batch of at least `SPLIT_AT` viewers over this many threads (1 or 2)."""
    STATE.threads = max(1, min(2, count))


def native_available() -> bool:
    return STATE.native


def disable(reason: str) -> None:
    STATE.checked, STATE.available, STATE.gso, STATE.reason = True, False, False, reason
    STATE.native = STATE.use_native = False
    if _scratch is not None:
        _scratch.detach_native()


def log_once(event: str, reason: str, **fields: Any) -> None:
    """One log line per distinct reason in this process (never per packet or viewer)."""
    if reason not in _logged:
        _logged.add(reason)
        log.warning(event, reason=reason, **fields)


class _Libc:
    def __init__(self) -> None:
        self.ffi = cffi.FFI()
        self.ffi.cdef(_CDEF)
        self.lib: Any = self.ffi.dlopen(None)
        self.sendmmsg = self.lib.sendmmsg  # AttributeError when libc lacks it


class Scratch:
    """The process's reused buffers. One event loop thread writes one burst at a time."""

    def __init__(self, libc: _Libc) -> None:
        self.libc = libc
        self.srtp_ffi, self.srtp_lib = aiortc_compat.srtp_binding()
        self.protect = self.srtp_lib.srtp_protect
        self.len_p = self.srtp_ffi.new("int *")
        self.native: Any = None  # the C burst's library, once attached
        self.native_scratch: Any = None
        self.capacity = 0
        self.buf: Any = None
        self.view = memoryview(b"")
        self.address = 0
        self.grow(INITIAL_CAPACITY)
        f = libc.ffi
        self._iov = f.new("struct iovec[]", MAX_MESSAGES)
        self.iov_view = memoryview(f.buffer(self._iov))
        self.iov_address = _address(f, self._iov)
        # GSO: one iovec per run of packets and one UDP_SEGMENT message each.
        self._run_iov = f.new("struct iovec[]", MAX_MESSAGES)
        self.run_iov_view = memoryview(f.buffer(self._run_iov))
        self._controls = f.new("char[]", MAX_MESSAGES * burst.GSO_CONTROL.size)
        self.controls_view = memoryview(f.buffer(self._controls))
        for index in range(MAX_MESSAGES):
            burst.pack_gso_control(self.controls_view, 0, index * burst.GSO_CONTROL.size)
        # Per sockaddr length (IPv4, IPv6) and GSO or not: the address area and the
        # mmsghdr array naming it.
        self._names: dict[tuple[int, bool], tuple[Any, memoryview, Any]] = {}

    def attach_native(self, lib: native.Native) -> None:
        """Give the C burst this scratch's memory: the buffer and per-packet iovecs (which
        `FloorPath._to_asyncio` reads), the run iovecs and GSO control messages, and its own
        mmsghdr arrays (it names the viewer's address in each message itself)."""
        f, libc = lib.ffi, self.libc.ffi
        s = f.new("struct sky_scratch *")
        self._native_msgs = f.new("struct mmsghdr[]", MAX_MESSAGES)
        self._native_run_msgs = f.new("struct mmsghdr[]", MAX_MESSAGES)
        s.iov = f.cast("struct iovec *", _address(libc, self._iov))
        s.run_iov = f.cast("struct iovec *", _address(libc, self._run_iov))
        s.controls = f.cast("unsigned char *", _address(libc, self._controls))
        s.msgs, s.run_msgs = self._native_msgs, self._native_run_msgs
        protect = self.srtp_ffi.addressof(self.srtp_lib, "srtp_protect")
        s.protect = f.cast("sky_protect_fn", _address(self.srtp_ffi, protect))
        s.buf = f.cast("unsigned char *", self.address)
        self.native, self.native_scratch = lib, s

    def detach_native(self) -> None:
        self.native = self.native_scratch = None

    def grow(self, capacity: int) -> None:
        """Room for a burst of ``capacity`` bytes (a new buffer: bases are written per burst)."""
        if capacity <= self.capacity:
            return
        capacity = max(capacity, 2 * self.capacity)
        self.buf = self.srtp_ffi.new("unsigned char[]", capacity)
        self.view = memoryview(self.srtp_ffi.buffer(self.buf))
        self.address = _address(self.srtp_ffi, self.buf)
        self.capacity = capacity
        if self.native_scratch is not None:
            self.native_scratch.buf = self.native.ffi.cast("unsigned char *", self.address)

    def messages(self, name: bytes, gso: bool = False) -> Any:
        """The mmsghdr array whose entries all name ``name`` (a sockaddr), written into it:
        one per packet (the iovecs), or with ``gso`` one per run (the run iovecs, each with
        its UDP_SEGMENT message)."""
        entry = self._names.get((len(name), gso))
        if entry is None:
            f = self.libc.ffi
            area = f.new("char[]", 32)
            msgs = f.new("struct mmsghdr[]", MAX_MESSAGES)
            burst.pack_mmsghdrs(
                memoryview(f.buffer(msgs)),
                MAX_MESSAGES,
                _address(f, self._run_iov) if gso else self.iov_address,
                _address(f, area),
                len(name),
                _address(f, self._controls) if gso else 0,
            )
            entry = self._names[(len(name), gso)] = (area, memoryview(f.buffer(area)), msgs)
        area_view = entry[1]
        area_view[: len(name)] = name
        return entry[2]

    def errno(self) -> int:
        value: int = self.libc.ffi.errno
        return value


class Packed:
    """An access unit's payloads as the C burst reads them: back to back in one ``bytes``,
    with their lengths in a C array. Made once per access unit for all its viewers."""

    __slots__ = ("data", "lengths")

    def __init__(self, lib: native.Native, payloads: Sequence[bytes]) -> None:
        self.data = b"".join(payloads)
        self.lengths = lib.ffi.new("int[]", [len(p) for p in payloads])


def packed(payloads: Sequence[bytes]) -> Packed | None:
    """``payloads`` for the C burst, or None when it is not in use."""
    s = _scratch
    if s is None or s.native is None or not STATE.use_native:
        return None
    return Packed(s.native, payloads)


def _srtp_error(status: int) -> str:
    errors: list[str] = pylibsrtp.ERRORS
    return errors[status] if 0 <= status < len(errors) else str(status)


def _address(ffi: Any, cdata: Any) -> int:
    return int(ffi.cast("uintptr_t", cdata))


_scratch: Scratch | None = None
_helper_scratch: Scratch | None = None  # the C burst's helper thread's


def scratch() -> Scratch:
    global _scratch
    if _scratch is None:
        _scratch = Scratch(_Libc())
    return _scratch


def helper_scratch() -> Scratch | None:
    """The helper thread's own buffers (made on first use), or None without the C burst."""
    global _helper_scratch
    main = scratch()
    if main.native is None:
        return None
    if _helper_scratch is None or _helper_scratch.native is not main.native:
        _helper_scratch = Scratch(main.libc)
        _helper_scratch.attach_native(main.native)
    return _helper_scratch


class FloorPath:
    """One viewer's bursts on one socket: the shared UDP socket (or aioice's own), or an
    ICE-TCP connection of the mux (``framed``: it has ``write_framed``)."""

    def __init__(self, session: pylibsrtp.Session, transport: Any, address: tuple[str, int]) -> None:
        self.scratch = scratch()
        self._session = session  # keeps the srtp_t alive
        self._context = aiortc_compat.srtp_context(session)
        self.transport = transport
        self.address = address
        self._write_framed = getattr(transport, "write_framed", None)
        self.fd = -1
        self.name = b""
        if self._write_framed is None:
            sock = transport.get_extra_info("socket")
            if sock is None or sock.type != socket.SOCK_DGRAM:
                raise AttributeError("the viewer's transport has no UDP socket")
            family, self.name = burst.sockaddr(address[0], address[1])
            if family != sock.family:
                raise AttributeError("the viewer's address is not of its socket's family")
            self.fd = sock.fileno()
        self._native_context: Any = None  # the srtp_t as the C burst's ffi sees it
        self._bursts = 0
        self._gso_bursts = 0
        self.handed_to_asyncio = 0  # packets the kernel did not take at once
        # This viewer as the C burst's batch (`send_batch`) sees it: made by `batch_slot`.
        self.slot: Any = None
        self._slot_memory: tuple[Any, ...] = ()  # what the slot points to, kept alive

    @property
    def bursts(self) -> int:
        """Bursts written (alone or in a batch)."""
        slot = self.slot
        return self._bursts + (int(slot.bursts) if slot is not None else 0)

    @property
    def gso_bursts(self) -> int:
        slot = self.slot
        return self._gso_bursts + (int(slot.gso_bursts) if slot is not None else 0)

    def batch_slot(self, header: bytes, payload_type: int, origin: int = 0) -> Any:
        """This viewer's entry for `send_batch` (its RTP header template, payload type and
        timestamp origin fixed; its ``sequence`` set by the caller when it joins a batch, and
        moved on by each unit written), or None where a batch cannot write to it: the C burst
        is not in use, the viewer is on ICE-TCP (framed writes), or the header is longer than
        a burst has room for."""
        s = self.scratch
        if s.native is None or not STATE.use_native or self._write_framed is not None:
            return None
        if len(header) > MAX_HEADER:
            return None
        if self.slot is None:
            f = s.native.ffi
            slot = f.new("struct sky_viewer *")
            header_memory = f.new("unsigned char[]", header)
            name_memory = f.new("char[]", self.name)
            slot.ctx = f.cast("void *", _address(s.srtp_ffi, self._context))
            slot.header, slot.header_length, slot.payload_type = header_memory, len(header), payload_type
            slot.origin = origin & 0xFFFFFFFF
            slot.fd, slot.name, slot.namelen = self.fd, name_memory, len(self.name)
            self.slot, self._slot_memory = slot, (header_memory, name_memory)
        return self.slot

    def send(
        self,
        header: bytes,
        payload_type: int,
        payloads: Sequence[bytes],
        sequence: int,
        timestamp: int,
        size: int,
        packed: Packed | None = None,
        unsent: int | None = None,
    ) -> None:
        """Protect and send one access unit's packets (``size``: their payloads' bytes),
        numbered from ``sequence``, the marker on the last; ``packed``: the same payloads
        for the C burst, if the caller shares them between viewers (`packed`); ``unsent``:
        the transport's write-buffer size, if the caller just read it. Raises OSError when
        the transport is gone, FloorError when libsrtp refuses a packet."""
        transport = self.transport
        if transport.is_closing():
            raise OSError("the viewer's transport is closed")
        count = len(payloads)
        if count == 0:
            return
        framed = self._write_framed is not None
        if count > MAX_MESSAGES and not framed:
            raise FloorError("too many packets for one burst")
        s = self.scratch
        header_length = len(header)
        need = size + count * (header_length + PER_PACKET_GROWTH) + TRAILER
        if need > s.capacity:
            s.grow(need)
        if unsent is None:
            unsent = 0 if framed else transport.get_write_buffer_size()  # a framed write queues
        if STATE.use_native and s.native is not None and count <= MAX_MESSAGES:
            self._send_native(s, header, payload_type, payloads, sequence, timestamp, packed, unsent)
            return
        view, buf, len_p, protect, context = s.view, s.buf, s.len_p, s.protect, self._context
        patch, iov_pack, iov_view, base = (
            burst.RTP_PATCH.pack_into,
            burst.IOVEC.pack_into,
            s.iov_view,
            s.address,
        )
        prefix_pack = burst.TCP_LENGTH.pack_into
        prefix = 2 if framed else 0
        last = count - 1
        offset = 0
        gso = STATE.use_gso and not framed
        lengths: list[int] = []
        for index, payload in enumerate(payloads):
            start = offset + prefix
            body = start + header_length
            view[start:body] = header
            marker = 0x80 if index == last else 0
            patch(view, start + 1, marker | payload_type, (sequence + index) & 0xFFFF, timestamp)
            length = header_length + len(payload)
            view[body : start + length] = payload
            len_p[0] = length
            status = protect(context, buf + start, len_p)
            if status:
                raise FloorError(f"srtp_protect: {_srtp_error(status)}")
            length = len_p[0]
            if framed:
                prefix_pack(view, offset, length)
            else:
                iov_pack(iov_view, index * 16, base + start, length)
                if gso:
                    lengths.append(length)
            offset = start + length
        self._bursts += 1
        if self._write_framed is not None:
            self._write_framed(bytes(view[:offset]))
            return
        if unsent:
            self._to_asyncio(0, count)  # asyncio holds unsent packets: keep the order
            return
        sent = -1
        runs = burst.gso_runs(lengths) if gso else []
        if gso and len(runs) < count:  # fewer messages than packets: GSO
            run_iov, controls, start = s.run_iov_view, s.controls_view, base
            for index, (_, _, segment, length) in enumerate(runs):
                iov_pack(run_iov, index * 16, start, length)
                burst.GSO_SEGMENT.pack_into(controls, index * burst.GSO_CONTROL.size + GSO_AT, segment)
                start += length
            messages = s.libc.sendmmsg(self.fd, s.messages(self.name, gso=True), len(runs), 0)
            if messages == len(runs):
                self._gso_bursts += 1
                return
            if messages >= 0:
                sent = runs[messages][0]  # the kernel's buffer is full from this run on
            elif (code := s.errno()) in (errno.EAGAIN, errno.ENOBUFS):
                sent = 0
            else:
                STATE.use_gso = False
                log_once("fanout_floor_gso_off", f"GSO send failed: {errno.errorcode.get(code, code)}")
        if sent < 0:
            sent = s.libc.sendmmsg(self.fd, s.messages(self.name), count, 0)
        if sent < count:
            self._to_asyncio(max(sent, 0), count)

    def _send_native(
        self,
        s: Scratch,
        header: bytes,
        payload_type: int,
        payloads: Sequence[bytes],
        sequence: int,
        timestamp: int,
        packed: Packed | None,
        unsent: int,
    ) -> None:
        """`send` through the C burst: the same layout, protect and sends in one call."""
        lib, state = s.native, s.native_scratch
        if packed is None:
            packed = Packed(lib, payloads)
        if self._native_context is None:
            self._native_context = lib.ffi.cast("void *", _address(s.srtp_ffi, self._context))
        count = len(payloads)
        write_framed = self._write_framed
        if write_framed is not None:
            mode = native.FRAMED
        elif unsent:
            mode = native.LAY_OUT  # asyncio holds unsent packets: keep the order
        else:
            mode = native.SEND_GSO if STATE.use_gso else native.SEND
        sent = lib.lib.sky_burst(
            state,
            self._native_context,
            header,
            len(header),
            payload_type,
            sequence,
            timestamp,
            packed.data,
            packed.lengths,
            count,
            mode,
            self.fd,
            self.name,
            len(self.name),
        )
        self._after_native(s, sent, count, mode)

    def _after_native(self, s: Scratch, sent: int, count: int, mode: int) -> None:
        """What the C burst left to Python for this viewer's burst, still laid out in the
        scratch: a framed write, packets for asyncio, libsrtp's refusal (FloorError), GSO
        the kernel refused."""
        state = s.native_scratch
        if sent < 0:
            raise FloorError(f"srtp_protect: {_srtp_error(state.status)}")
        self._bursts += 1
        write_framed = self._write_framed
        if write_framed is not None:
            write_framed(bytes(s.view[: state.length]))
        elif mode == native.LAY_OUT:
            self._to_asyncio(0, count, s)
        elif state.gso:
            self._gso_bursts += 1
        else:
            if state.gso_errno:
                STATE.use_gso = False
                code = state.gso_errno
                log_once("fanout_floor_gso_off", f"GSO send failed: {errno.errorcode.get(code, code)}")
            if sent < count:
                self._to_asyncio(sent, count, s)

    def _to_asyncio(self, first: int, count: int, s: Scratch | None = None) -> None:
        """Packets ``first``.. of the burst laid out in ``s`` (the process's scratch unless
        a helper thread's) through the asyncio transport (it queues them when the socket is
        full, and handles errors as for any datagram)."""
        s = s or self.scratch
        view, iov_view, base = s.view, s.iov_view, s.address
        sendto = self.transport.sendto
        for index in range(first, count):
            address, length = burst.IOVEC.unpack_from(iov_view, index * 16)
            start = address - base
            sendto(bytes(view[start : start + length]), self.address)
        self.handed_to_asyncio += count - first


def slot_array(paths: Sequence[FloorPath]) -> Any:
    """The paths' batch slots as the C burst's fan-out takes them, for `send_batch` to
    reuse while the viewers are the same."""
    lib = scratch().native
    return None if lib is None else lib.ffi.new("struct sky_viewer *[]", [path.slot for path in paths])


def send_batch(
    paths: Sequence[FloorPath],
    packed: Packed,
    size: int,
    timestamp: int,
    slots: Any = None,
    split_at: int = SPLIT_AT,
) -> list[tuple[int, Exception]]:
    """Write one access unit to several viewers' sockets (UDP) in as few calls into the C
    burst as the kernel allows: one when every viewer's burst goes whole. Each path has its
    `batch_slot`: the unit starts at the slot's sequence number (which then moves on by the
    unit's packets) with the RTP timestamp origin + ``timestamp`` (the stream's, in the
    codec's clock); ``packed``: the unit's payloads (`packed`), ``size`` their bytes;
    ``slots``: `slot_array` of these paths, if the caller keeps one. With
    ``fanout_threads = 2`` and at least ``split_at`` viewers, the C burst's helper thread
    writes with this one, each taking the next viewer in turn.

    A viewer whose burst did not go whole is finished as `FloorPath.send` would (the rest of
    its packets through asyncio), then the batch goes on with the next. Returns the viewers
    whose burst failed, by index, with the error: FloorError (libsrtp refused a packet) or
    the transport's (it closed)."""
    s = scratch()
    lib = s.native
    n = len(paths)
    if lib is None or n == 0:
        raise FloorError("the C burst is not in use")
    count = len(packed.lengths)
    need = size + count * (MAX_HEADER + PER_PACKET_GROWTH) + TRAILER
    if need > s.capacity:
        s.grow(need)
    if slots is None:
        slots = lib.ffi.new("struct sky_viewer *[]", [path.slot for path in paths])
    fanout, state, data, lengths = lib.lib.sky_fanout, s.native_scratch, packed.data, packed.lengths
    failures: list[tuple[int, Exception]] = []

    def finish(index: int, scratch: Scratch, mode: int) -> None:
        path = paths[index]
        try:
            path._after_native(scratch, path.slot.sent, count, mode)
        except (FloorError, OSError, RuntimeError, AttributeError) as exc:
            failures.append((index, exc))

    helper = helper_scratch() if STATE.threads > 1 and not STATE.helper_failed and n >= split_at else None
    if helper is not None and need > helper.capacity:
        helper.grow(need)
    stops = lib.ffi.new("int[2]")
    start = 0
    while start < n:
        mode = native.SEND_GSO if STATE.use_gso else native.SEND
        if helper is not None and n - start >= split_at:
            # Both threads take the next viewer in turn until none is left or each stops.
            taken = lib.lib.sky_fanout2(
                state,
                helper.native_scratch,
                slots + start,
                n - start,
                data,
                lengths,
                count,
                mode,
                stops,
                timestamp,
            )
            if taken < 0:
                STATE.helper_failed = True  # one thread from now on
                log_once("fanout_threads_unavailable", "the C burst's helper thread could not be started")
                helper = None
                continue
            for stopped, where in ((stops[0], s), (stops[1], helper)):
                if stopped >= 0:
                    finish(start + stopped, where, mode)
            start += taken
            continue
        stopped = start + fanout(state, slots + start, n - start, data, lengths, count, mode, timestamp)
        if stopped >= n:
            break
        finish(stopped, s, mode)
        start = stopped + 1
    return failures


# --- the start check ---------------------------------------------------------------------

_TEST_KEY = bytes(range(1, 31))  # 16-byte key + 14-byte salt (AES-CM)
_TEST_KEY_GCM = bytes(range(1, 45))  # 32-byte key + 12-byte salt (AEAD_AES_256_GCM)


class _TestTransport:
    """The floor's view of a socket for the self-test: a real UDP socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        self.sent.append(data)
        self.sock.sendto(data, address)


def _test_packets(header: bytes, payloads: Sequence[bytes], sequence: int, timestamp: int) -> list[bytes]:
    packets = []
    for index, payload in enumerate(payloads):
        packet = bytearray(header)
        marker = 0x80 if index == len(payloads) - 1 else 0
        # Spelt out, not burst.RTP_PATCH: the check must not share what it checks.
        struct.pack_into("!BHI", packet, 1, marker | 96, (sequence + index) & 0xFFFF, timestamp)
        packets.append(bytes(packet) + payload)
    return packets


def _session(key: bytes, profile: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
    return pylibsrtp.Session(policy)


def self_test() -> str | None:
    """Run the floor once on known packets; None if it works (then it is on), else why not
    (then it is off). Logged by `aiortc_compat.check()`."""
    try:
        problem = _self_test()
    except (AttributeError, OSError, ImportError, FloorError, TypeError, ValueError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        disable(problem)
        return problem
    STATE.checked, STATE.available, STATE.reason = True, True, None
    STATE.use_gso = STATE.want_gso and STATE.gso
    _check_native()
    return None


def _check_native() -> None:
    """Build, open and check the C burst once the Python floor passed: it is used only if
    its bytes are the Python floor's (the same checks) and its sends arrive."""
    s = scratch()
    s.detach_native()
    STATE.native = STATE.use_native = False
    if not STATE.want_native:
        STATE.native_reason = "off (fanout_native = false)"
        return
    try:
        s.attach_native(native.load())
        STATE.use_native = True  # for the checks; settled below
        problem = _self_test(check_native=True) or _self_test_batch(split=False)
        problem = problem or _self_test_batch(split=True)
    except native.NativeUnavailable as exc:
        problem = str(exc)
    except (AttributeError, OSError, FloorError, TypeError, ValueError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        s.detach_native()
        STATE.use_native = False
        STATE.native_reason = problem
        log_once("fanout_native_unavailable", problem)  # the floor runs in Python: slower
        return
    STATE.native, STATE.native_reason = True, None
    STATE.use_native = STATE.want_native


def native_reason() -> str | None:
    """Why the C burst is not in use (None when it is)."""
    return STATE.native_reason


def _self_test(check_native: bool = False) -> str | None:
    # A header as aiortc serialises it (with a one-byte extension), payloads of three GSO
    # runs (a single packet; equal sizes, the last shorter; equal sizes); an FU-A-like
    # wrap of the sequence number.
    header = bytes.fromhex("906000000000000011223344bede000110300000")
    payloads = (
        [b"\x06" * 200]
        + [bytes((i * 7 + j) & 0xFF for j in range(1100)) for i in range(3)]
        + [b"\x05" * 300, b"\x04" * 900, b"\x03" * 900]
    )
    sequence, timestamp = 0xFFFE, 0x01020304
    who = "the C burst" if check_native else "the floor"
    expected_plain = _test_packets(header, payloads, sequence, timestamp)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(1.0)
        sender.bind(("127.0.0.1", 0))
        sender.setblocking(False)
        address = receiver.getsockname()
        for key, profile in (
            (_TEST_KEY, pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80),
            (_TEST_KEY_GCM, pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM),
        ):
            # sendmmsg, then the same packets framed for TCP, then GSO; each on a fresh
            # session pair (a session protects each index once).
            for mode in ("mmsg", "framed", "gso"):
                if check_native and mode == "gso" and not STATE.gso:
                    continue  # the kernel refused the Python floor's GSO burst already
                reference = _session(key, profile)
                expected = [reference.protect(p) for p in expected_plain]
                transport = _TestTransport(sender)
                path = FloorPath(_session(key, profile), transport, address)
                framed: list[bytes] = []
                if mode == "framed":
                    path._write_framed = framed.append
                saved = STATE.use_gso, STATE.use_native
                STATE.use_gso, STATE.use_native = mode == "gso", check_native
                try:
                    path.send(header, 96, payloads, sequence, timestamp, sum(map(len, payloads)))
                finally:
                    STATE.use_gso, STATE.use_native = saved
                if mode == "framed":
                    if burst.split_framed(framed[0]) != expected:
                        return f"{who}'s framed bytes differ from Session.protect's"
                    continue
                got = [receiver.recv(2048) for _ in expected]
                if got != expected:
                    return f"{who}'s bytes ({mode}) differ from Session.protect's"
                if mode == "gso" and check_native:
                    if path.gso_bursts != 1:
                        return "the C burst did not send GSO messages the kernel takes"
                elif mode == "gso":
                    STATE.gso = path.gso_bursts == 1
                elif path.handed_to_asyncio:
                    return "sendmmsg did not take a burst to 127.0.0.1"
    finally:
        receiver.close()
        sender.close()
    return None


def _self_test_batch(split: bool) -> str | None:
    """The C burst's batch (`send_batch`) on two viewers with their own keys (AES-CM, GCM),
    SSRCs, sequence numbers and timestamp origins (both wrapping): each must get its own
    packets, byte for byte what ``Session.protect`` makes of them, and its slot the next
    unit's sequence number. ``split``: shared with the helper thread."""
    payloads = [bytes((i * 5 + j) & 0xFF for j in range(1000)) for i in range(3)] + [b"\x02" * 400]
    viewers = (
        (_TEST_KEY, pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, "11223344", 0xFFFF, 0x01020304),
        (_TEST_KEY_GCM, pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM, "55667788", 7, 0x10),
    )
    unit_timestamp = 0x20  # the stream's: viewer 2's origin + it wraps
    receivers: list[socket.socket] = []
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.bind(("127.0.0.1", 0))
        sender.setblocking(False)
        paths, expected = [], []
        for key, profile, ssrc, sequence, timestamp in viewers:
            receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            receivers.append(receiver)
            receiver.bind(("127.0.0.1", 0))
            receiver.settimeout(1.0)
            header = bytes.fromhex(f"9060000000000000{ssrc}bede000110300000")
            reference = _session(key, profile)
            plain = _test_packets(header, payloads, sequence, timestamp)
            expected.append([reference.protect(p) for p in plain])
            path = FloorPath(_session(key, profile), _TestTransport(sender), receiver.getsockname())
            slot = path.batch_slot(header, 96, timestamp - unit_timestamp)
            if slot is None:
                return "the C burst's batch has no slot for a UDP viewer"
            slot.sequence = sequence
            paths.append(path)
        packed = Packed(scratch().native, payloads)
        saved = STATE.use_gso, STATE.threads
        STATE.use_gso, STATE.threads = STATE.gso, 2 if split else 1
        try:
            # A helper thread that cannot start leaves one thread (logged), not a failure.
            failures = send_batch(paths, packed, sum(map(len, payloads)), unit_timestamp, split_at=2)
        finally:
            STATE.use_gso, STATE.threads = saved
        if failures:
            return f"the C burst's batch failed: {failures[0][1]}"
        for receiver, want, path, viewer in zip(receivers, expected, paths, viewers, strict=True):
            if [receiver.recv(2048) for _ in want] != want:
                return "the C burst's batch bytes differ from Session.protect's"
            if int(path.slot.sequence) != (viewer[3] + len(payloads)) & 0xFFFF:
                return "the C burst's batch did not move a viewer's sequence number on"
            if path.bursts != 1 or path.handed_to_asyncio:
                return "the C burst's batch did not send each viewer's burst whole"
    finally:
        sender.close()
        for receiver in receivers:
            receiver.close()
    return None
