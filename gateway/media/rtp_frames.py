"""One frame's RTP payloads as packets, numbered: the loop every RTP sender of the gateway
runs per frame (the RTSP viewers, the WebRTC fan-out), each with its own header."""

from __future__ import annotations

from collections.abc import Iterator, Sequence


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
