"""One frame's RTP payloads as packets, numbered: the loop every RTP sender of the gateway
runs per frame (the RTSP viewers, the WebRTC fan-out), each with its own header; and the
H.264 payloads of an access unit (RFC 6184, packetization mode 1), made once per frame."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

from gateway.media.h264 import iter_nal_units

# One RTP payload at most, as aiortc's packetizer (room for RTP, its extensions and the
# SRTP tag in a 1500-byte MTU).
H264_PAYLOAD_MAX = 1300
NAL_STAP_A = 24
NAL_FU_A = 28
_LENGTH = struct.Struct("!H")


def h264_payloads(access_unit: bytes, payload_max: int = H264_PAYLOAD_MAX) -> list[bytes]:
    """The RTP payloads of an Annex-B access unit: a NAL unit that fits goes as it is, or
    aggregated with the small ones that follow in a STAP-A; a larger one is cut into FU-A
    fragments all of one size but the last, which is shorter, so that a viewer's burst of
    them can go as one UDP GSO send (aiortc's packetizer makes fragments of two sizes)."""
    nals = list(iter_nal_units(access_unit))
    payloads: list[bytes] = []
    index = 0
    while index < len(nals):
        nal = nals[index]
        index += 1
        if len(nal) > payload_max:
            payloads.extend(fu_a(nal, payload_max))
            continue
        group = [nal]
        size = 1 + 2 + len(nal)
        while index < len(nals) and size + 2 + len(nals[index]) <= payload_max:
            size += 2 + len(nals[index])
            group.append(nals[index])
            index += 1
        payloads.append(nal if len(group) == 1 else stap_a(group))
    return payloads


def stap_a(nals: Sequence[bytes]) -> bytes:
    """One STAP-A of these NAL units: its F bit set if any has it, the highest NRI."""
    forbidden = max(n[0] & 0x80 for n in nals)
    nri = max(n[0] & 0x60 for n in nals)
    return bytes((forbidden | nri | NAL_STAP_A,)) + b"".join(_LENGTH.pack(len(n)) + n for n in nals)


def fu_a(nal: bytes, payload_max: int = H264_PAYLOAD_MAX) -> list[bytes]:
    """``nal`` (longer than ``payload_max``) as FU-A fragments of at most ``payload_max``
    bytes: as few as fit, all of one size but a shorter (or equal) last."""
    body = memoryview(nal)[1:]
    room = payload_max - 2
    count = -(-len(body) // room)
    size = -(-len(body) // count)
    if (count - 1) * size >= len(body):  # nothing left for the last: fill all but it
        size = room
    indicator = (nal[0] & 0xE0) | NAL_FU_A
    kind = nal[0] & 0x1F
    fragments = []
    for k in range(count):
        flags = (0x80 if k == 0 else 0) | (0x40 if k == count - 1 else 0)
        fragments.append(bytes((indicator, flags | kind)) + body[k * size : (k + 1) * size])
    return fragments


def frame_packets(payloads: Sequence[bytes], first_sequence: int) -> Iterator[tuple[int, bool, bytes]]:
    """(sequence number, marker, payload) of each packet of one frame: consecutive sequence
    numbers from ``first_sequence``, wrapping at 16 bits, and the marker on the last packet
    (the end of an access unit, RFC 6184 5.1; RFC 7741 for VP8)."""
    last = len(payloads) - 1
    for index, payload in enumerate(payloads):
        yield (first_sequence + index) & 0xFFFF, index == last, payload


def sequence_after(first_sequence: int, packets: int) -> int:
    """The sequence number of the packet after ``packets`` numbered from ``first_sequence``."""
    return (first_sequence + packets) & 0xFFFF
