"""A WebRTC publisher's H.264 video as it arrives, sans-I/O: decrypted RTP packets in,
access units, the sequence numbers to NACK and keyframe requests out.

aiortc's receiver does this per packet with objects of its own: ``RtpPacket.parse`` (every
header extension decoded into a dataclass), a ``JitterFrame`` per depayloaded packet, a
coroutine for every NACK and PLI. Here a packet is one ``struct`` read of its header and
the one extension the bitrate estimate needs (abs-send-time, `rtsp.rtp.parse_header`), then
the RTSP ingests' own depacketizer (`H264Depacketizer`), with a reorder window that waits
for retransmissions. Measured, that saved about 5 % of a published stream's CPU: most of a
packet's cost is the event loop's, not this (docs/performance.md).

What aiortc's receiver did and this keeps (the I/O adapter in `aiortc_compat` wires it):
NACK for every packet found missing (aiortc's ``NackGenerator``: the whole missing list
each time a gap appears, the last 128 packets), RTX unwrapped (RFC 4588; padding-only
probes ignored), frames handed out at their marker once every packet before it is in.
What is better for a relay: a unit that lost a packet for good is dropped, and so is
everything up to the next keyframe, which is asked for (`Received.keyframe_wanted`);
aiortc's would hand the decoder a broken frame and everything after it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from gateway.media.rtsp.rtp import (
    AccessUnit,
    H264Depacketizer,
    RtpError,
    RtpHeader,
    RtpReorder,
    RtspRtpPacket,
    parse_header,
)

__all__ = ["AccessUnit", "H264Receive", "NackList", "Received", "RtpError", "RtpHeader", "parse_header"]

_SEQUENCE = struct.Struct("!H")
# How long a gap is waited for (a NACK's retransmission): as aiortc's jitter buffer, at most
# 128 packets (about half a second of 2 Mbit/s video), and here half a second of RTP time.
WAIT_PACKETS = 128
WAIT_TICKS = 45_000  # 0.5 s at H.264's 90 kHz
# While units are dropped waiting for a keyframe, one is asked for again every this many.
KEYFRAME_EVERY_DROPPED = 30


class NackList:
    """The sequence numbers missing among the last ``window`` packets (aiortc's
    ``NackGenerator``): `add` gives the whole list to NACK when a packet reveals a new gap,
    and a late one (a retransmission) leaves it. A jump of more than ``window`` is a new
    sequence, not a loss."""

    def __init__(self, window: int = WAIT_PACKETS) -> None:
        self.window = window
        self.highest: int | None = None
        self.missing: set[int] = set()

    def add(self, sequence: int) -> list[int]:
        highest = self.highest
        if highest is None:
            self.highest = sequence
            return []
        ahead = (sequence - highest) & 0xFFFF
        if ahead == 0 or ahead >= 0x8000:  # a duplicate, or late: a retransmission
            self.missing.discard(sequence)
            return []
        self.highest = sequence
        if ahead > self.window:
            self.missing.clear()
            return []
        oldest = (sequence - self.window) & 0xFFFF
        if self.missing:
            self.missing = {s for s in self.missing if (s - oldest) & 0xFFFF < self.window}
        if ahead == 1:
            return []
        self.missing.update((highest + k) & 0xFFFF for k in range(1, ahead))
        return sorted(self.missing, key=lambda s: (s - oldest) & 0xFFFF)


class Received(NamedTuple):
    """What one packet gave: access units now whole, sequence numbers to NACK (empty: none
    now), and whether to ask the publisher for a keyframe. Read only (one is shared)."""

    units: list[AccessUnit]
    nack: list[int]
    keyframe_wanted: bool


NOTHING = Received([], [], False)


class H264Receive:
    """One publisher's H.264 video RTP: the media packets (``payload_types``) and their
    retransmissions (``rtx_payload_types``, RFC 4588), in whatever order they come."""

    def __init__(
        self,
        payload_types: frozenset[int],
        rtx_payload_types: frozenset[int] = frozenset(),
        *,
        wait_packets: int = WAIT_PACKETS,
        wait_ticks: int = WAIT_TICKS,
    ) -> None:
        self.payload_types = payload_types
        self.rtx_payload_types = rtx_payload_types
        self.depacketizer = H264Depacketizer(
            reorder=RtpReorder(max_delay=wait_ticks, max_packets=wait_packets)
        )
        self.nacks = NackList(wait_packets)
        self.keyframe_requests = 0
        self._dropped_at_request: int | None = None  # dropped units when a keyframe was last asked

    def takes(self, payload_type: int) -> bool:
        """Whether a packet of this payload type is this video's (media or RTX)."""
        return payload_type in self.payload_types or payload_type in self.rtx_payload_types

    def packet(self, header: RtpHeader, data: bytes) -> Received:
        """One decrypted packet (``header`` is `parse_header` of ``data``). A payload type
        not `takes` and an RTX packet without the original's number (padding) give nothing."""
        payload_type, sequence, start = header.payload_type, header.sequence, header.start
        if payload_type in self.rtx_payload_types:
            if header.end - start < 2:
                return NOTHING
            (sequence,) = _SEQUENCE.unpack_from(data, start)
            start += 2
        elif payload_type not in self.payload_types:
            return NOTHING
        nack = self.nacks.add(sequence)
        packet = RtspRtpPacket(
            payload_type, header.marker, sequence, header.timestamp, header.ssrc, data[start : header.end]
        )
        units = self.depacketizer.receive(packet)
        wanted = self._keyframe_wanted()
        return Received(units, nack, wanted) if units or nack or wanted else NOTHING

    def _keyframe_wanted(self) -> bool:
        """Ask when units start being dropped for want of a keyframe, and again every
        `KEYFRAME_EVERY_DROPPED` dropped units while none comes."""
        depacketizer = self.depacketizer
        if not depacketizer.waiting_for_keyframe:
            self._dropped_at_request = None
            return False
        dropped, asked = depacketizer.dropped_units, self._dropped_at_request
        if dropped == 0 or (asked is not None and dropped - asked < KEYFRAME_EVERY_DROPPED):
            return False  # nothing dropped yet (the stream's start), or asked lately
        self._dropped_at_request = dropped
        self.keyframe_requests += 1
        return True
