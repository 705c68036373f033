"""Plain-data layout of one viewer's burst of packets (one access unit), as the floor path
(`floor.py`) hands it to the kernel: the C structures of ``sendmmsg``/``sendmsg`` packed
with `struct` into reused buffers, socket addresses as bytes, RFC 4571 length prefixes
for ICE-TCP, and when UDP GSO can carry a burst in one send.

No sockets and no cffi here: `floor.py` owns the memory and the calls; tests check these
layouts against cffi's own view of the C structures (tests/unit/test_burst.py).

Linux, LP64 (x86-64, arm64): the layouts are those of glibc's ``<sys/socket.h>``.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Sequence

# The same structures for cffi (`floor.py` declares sendmmsg with them, `native.py` the C burst).
CDEF_STRUCTS = """
struct iovec { void *iov_base; size_t iov_len; };
struct msghdr {
    void *msg_name; unsigned int msg_namelen; struct iovec *msg_iov; size_t msg_iovlen;
    void *msg_control; size_t msg_controllen; int msg_flags;
};
struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
"""

# struct iovec { void *iov_base; size_t iov_len; }
IOVEC = struct.Struct("@PN")
# struct msghdr { void *msg_name; socklen_t msg_namelen; struct iovec *msg_iov; size_t msg_iovlen;
#                 void *msg_control; size_t msg_controllen; int msg_flags; } (padded to 8)
MSGHDR = struct.Struct("@PIPNPNi4x")
# struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; } (padded to 8)
MMSGHDR = struct.Struct("@PIPNPNi4xI4x")
# struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; } then the data, aligned to 8
CMSGHDR = struct.Struct("@Nii")
SOL_UDP = 17
UDP_SEGMENT = 103  # <linux/udp.h>: the GSO segment size, a u16 control message
GSO_CONTROL = struct.Struct("@Nii H6x")  # one UDP_SEGMENT message: CMSG_SPACE(2) = 24 bytes
GSO_CONTROL_LEN = CMSGHDR.size + 2  # CMSG_LEN(2)
GSO_SEGMENT = struct.Struct("@H")  # the segment size, at CMSGHDR.size in a GSO_CONTROL
# The kernel's limits for one GSO send: UDP_MAX_SEGMENTS (64 before Linux 6.x raised it) and
# one IP datagram's worth of payload.
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
# RFC 4571: a 16-bit length before each packet on the ICE-TCP stream.
TCP_LENGTH = struct.Struct("!H")
# RTP header bytes 1-7 as the floor patches them: marker and payload type, sequence number,
# timestamp (RFC 3550 section 5.1); the template carries version, X bit, SSRC and extensions.
RTP_PATCH = struct.Struct("!BHI")


def pack_mmsghdrs(
    view: memoryview, count: int, iov_address: int, name_address: int, namelen: int, control_address: int = 0
) -> None:
    """Fill ``count`` mmsghdr entries of ``view``: entry i sends iovec i (of the array at
    ``iov_address``) to the socket address at ``name_address``, with UDP_SEGMENT message i
    of the array at ``control_address`` if given (GSO). Written once per buffer: a burst
    only changes the iovecs' lengths and bases and the segment sizes."""
    control_length = GSO_CONTROL.size if control_address else 0
    for index in range(count):
        MMSGHDR.pack_into(
            view,
            index * MMSGHDR.size,
            name_address,
            namelen,
            iov_address + index * IOVEC.size,
            1,
            control_address + index * control_length,
            control_length,
            0,
            0,
        )


def pack_gso_control(view: memoryview, segment: int, offset: int = 0) -> None:
    """The UDP_SEGMENT control message naming the segment size."""
    GSO_CONTROL.pack_into(view, offset, GSO_CONTROL_LEN, SOL_UDP, UDP_SEGMENT, segment)


def gso_runs(lengths: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Packets of these lengths, in order, cut into the fewest runs that one UDP GSO send
    each can carry (every packet of a run of one size but a shorter last, within the
    kernel's limits): (first packet, packets, segment size, bytes) per run. A run of one
    packet is a plain datagram (its segment size is its length)."""
    runs: list[tuple[int, int, int, int]] = []
    first = count = segment = size = 0
    closed = True
    for index, length in enumerate(lengths):
        if closed or length > segment or count == GSO_MAX_SEGMENTS or size + length > GSO_MAX_BYTES:
            if count:
                runs.append((first, count, segment, size))
            first, count, segment, size = index, 0, length, 0
        count += 1
        size += length
        closed = length < segment
    if count:
        runs.append((first, count, segment, size))
    return runs


def gso_segment(lengths: Sequence[int]) -> int | None:
    """The segment size if one UDP GSO send can carry packets of these lengths, in order,
    as separate datagrams: all of the same size but the last, which may be shorter, within
    the kernel's limits. None otherwise (and for a single packet: nothing to gain)."""
    if len(lengths) < 2 or len(lengths) > GSO_MAX_SEGMENTS or sum(lengths) > GSO_MAX_BYTES:
        return None
    segment = lengths[0]
    if any(n != segment for n in lengths[1:-1]) or lengths[-1] > segment:
        return None
    return segment


def sockaddr(host: str, port: int) -> tuple[int, bytes]:
    """The address family and ``struct sockaddr_in``/``sockaddr_in6`` bytes of (host, port).
    An IPv6 host may carry a ``%scope`` (an interface name or index)."""
    address, _, scope = host.partition("%")
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return socket.AF_INET, struct.pack("=H", socket.AF_INET) + struct.pack(
            "!H", port
        ) + ip.packed + bytes(8)
    scope_id = 0
    if scope:
        scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
    return socket.AF_INET6, (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!HI", port, 0)
        + ip.packed
        + struct.pack("=I", scope_id)
    )


def parse_sockaddr(data: bytes) -> tuple[int, str, int]:
    """(family, host, port) of sockaddr bytes (for tests and the start check)."""
    (family,) = struct.unpack_from("=H", data)
    (port,) = struct.unpack_from("!H", data, 2)
    if family == socket.AF_INET:
        return family, str(ipaddress.IPv4Address(data[4:8])), port
    return family, str(ipaddress.IPv6Address(data[8:24])), port


def split_framed(data: bytes) -> list[bytes]:
    """The packets of an RFC 4571 framed burst (raises ValueError on a cut frame)."""
    packets = []
    offset = 0
    while offset < len(data):
        if offset + 2 > len(data):
            raise ValueError("cut length prefix")
        (length,) = TCP_LENGTH.unpack_from(data, offset)
        end = offset + 2 + length
        if end > len(data):
            raise ValueError("cut packet")
        packets.append(data[offset + 2 : end])
        offset = end
    return packets
