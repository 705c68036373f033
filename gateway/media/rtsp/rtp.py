"""RTP (RFC 3550 5.1) packets, and H.264 depacketizing (RFC 6184) into Annex-B access units.

`parse_header` reads a header where it lies (offsets, no copy) and, when asked, the
abs-send-time header extension (RFC 8285); `parse_rtp` makes a packet of it. Both the RTSP
ingests and a WebRTC publisher's H.264 (`webrtc/rtp_in.py`) read RTP with them.

`H264Depacketizer` reassembles single NAL unit packets, STAP-A aggregates and FU-A
fragments. An access unit ends at the marker bit or when the timestamp changes. A gap in
sequence numbers breaks the unit being built: it is dropped, and so is everything up to the
next IDR, so what comes out always decodes. SPS/PPS (from the SDP or seen in band) are put
before any IDR unit that lacks them.

`RtpReorder`, in front of it, puts packets that overtook others (UDP does that) back in
sequence order: a missing packet is waited for until packets 50 ms later (by their RTP
timestamps) have come, then given up as lost. Over TCP nothing is ever out of order and it
passes every packet straight through.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from gateway.media.h264 import START_CODE, ParameterSetCache

_HEADER = struct.Struct("!BBHII")
_CSRC = [struct.Struct(f"!{count}I") for count in range(16)]
_EXTENSION = struct.Struct("!HH")
_ABS_SEND_TIME = struct.Struct("!I")
ONE_BYTE_PROFILE = 0xBEDE  # RFC 8285 4.2
TWO_BYTE_PROFILE = 0x1000  # RFC 8285 4.3: 0x100 in the top 12 bits, 4 "appbits" below
NAL_STAP_A = 24
NAL_FU_A = 28
# An access unit bigger than this is an attack or a broken stream, not video.
MAX_ACCESS_UNIT_BYTES = 8 * 1024 * 1024


class RtpError(ValueError):
    """A packet that is not valid RTP (dropped; the connection goes on)."""


@dataclass(frozen=True, slots=True)
class RtspRtpPacket:
    """One RTP packet as the RTSP side parses it (`parse_rtp`); not aiortc's ``RtpPacket``."""

    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    csrc: tuple[int, ...] = ()


def parse_rtp(data: bytes) -> RtspRtpPacket:
    header = parse_header(data)
    csrc = _CSRC[data[0] & 0x0F].unpack_from(data, 12)
    return RtspRtpPacket(
        header.payload_type,
        header.marker,
        header.sequence,
        header.timestamp,
        header.ssrc,
        data[header.start : header.end],
        csrc,
    )


class RtpHeader(NamedTuple):
    """The fixed header of an RTP packet (RFC 3550 5.1), where its payload lies in the
    datagram, and the abs-send-time extension's value when asked for and present."""

    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    start: int  # the payload: data[start:end]
    end: int  # before the padding
    abs_send_time: int | None


def parse_header(data: bytes, abs_send_time_id: int = 0) -> RtpHeader:
    """Read ``data``'s RTP header. ``abs_send_time_id``: the negotiated id of the
    abs-send-time extension (0: not read). Raises RtpError for what is not RTP."""
    if len(data) < 12:
        raise RtpError("RTP packet shorter than its header")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise RtpError(f"RTP version {first >> 6}")
    pos = 12 + 4 * (first & 0x0F)
    if len(data) < pos:
        raise RtpError("RTP packet shorter than its CSRC list")
    abs_send_time = None
    if first & 0x10:
        if len(data) < pos + 4:
            raise RtpError("RTP packet shorter than its header extension")
        profile, words = _EXTENSION.unpack_from(data, pos)
        start, pos = pos + 4, pos + 4 + 4 * words
        if len(data) < pos:
            raise RtpError("RTP packet shorter than its header extension")
        if abs_send_time_id:
            abs_send_time = _abs_send_time(data, start, pos, profile, abs_send_time_id)
    end = len(data)
    if first & 0x20:  # padding: the last octet counts the padding octets, itself included
        padding = data[-1]
        if padding == 0 or end - padding < pos:
            raise RtpError("bad RTP padding")
        end -= padding
    return RtpHeader(second & 0x7F, bool(second & 0x80), sequence, timestamp, ssrc, pos, end, abs_send_time)


def _abs_send_time(data: bytes, pos: int, end: int, profile: int, wanted: int) -> int | None:
    """The 24-bit abs-send-time (6.18 fixed-point seconds) among the header extension's
    elements (RFC 8285), or None. A malformed element list ends the search."""
    if profile == ONE_BYTE_PROFILE:
        while pos < end:
            byte = data[pos]
            ident, size = byte >> 4, (byte & 0x0F) + 1
            if ident == 0:  # padding
                pos += 1
                continue
            if ident == 15:  # reserved: stop
                return None
            if ident == wanted and size == 3 and pos + 4 <= end:
                return int(_ABS_SEND_TIME.unpack_from(data, pos)[0] & 0xFFFFFF)
            pos += 1 + size
    elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
        while pos + 1 < end:
            ident, size = data[pos], data[pos + 1]
            if ident == 0:  # padding
                pos += 1
                continue
            if ident == wanted and size == 3 and pos + 5 <= end:
                return int.from_bytes(data[pos + 2 : pos + 5], "big")
            pos += 2 + size
    return None


def rtp_header(*, payload_type: int, marker: bool, sequence: int, timestamp: int, ssrc: int) -> bytes:
    return _HEADER.pack(
        0x80,
        (0x80 if marker else 0) | payload_type,
        sequence & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc,
    )


class RtpReorder:
    """Packets in sequence order. A packet ahead of the next expected one is held until the
    missing ones come, or until a packet ``max_delay`` RTP ticks later than the last one
    released has arrived, or ``max_packets`` are held: then the missing ones are given up
    and the depacketizer sees the gap. Late and duplicate packets are dropped. A jump of
    more than ``max_packets`` either way is the sender starting a new sequence: followed."""

    def __init__(self, *, max_delay: int = 4500, max_packets: int = 128) -> None:
        self.max_delay = max_delay  # 50 ms at H.264's 90 kHz
        self.max_packets = max_packets
        self.reordered = 0  # packets that came early and were put back in order
        self.late = 0  # came after their place was given up, or twice
        self._next: int | None = None
        self._held: dict[int, RtspRtpPacket] = {}
        self._released_timestamp = 0

    def push(self, packet: RtspRtpPacket) -> list[RtspRtpPacket]:
        if self._next is None:
            self._next = packet.sequence
        ahead = (packet.sequence - self._next) & 0xFFFF
        if ahead == 0:
            out = self._release(packet)
            out += self._release_held()
            return out
        if ahead < 0x8000 and ahead <= self.max_packets:  # early: the ones before it may come
            if packet.sequence in self._held:
                self.late += 1
                return []
            self._held[packet.sequence] = packet
            waited = (packet.timestamp - self._released_timestamp) & 0xFFFFFFFF
            if (waited < 0x80000000 and waited > self.max_delay) or len(self._held) >= self.max_packets:
                return self._give_up_gap()
            return []
        behind = 0x10000 - ahead
        if ahead >= 0x8000 and behind <= self.max_packets:
            self.late += 1  # its place has passed: the depacketizer counted it lost
            return []
        # A new sequence: what is held comes out first, then the new one.
        out = self._flush()
        self._next = packet.sequence
        return out + self._release(packet) + self._release_held()

    def _release(self, packet: RtspRtpPacket) -> list[RtspRtpPacket]:
        self._next = (packet.sequence + 1) & 0xFFFF
        self._released_timestamp = packet.timestamp
        return [packet]

    def _release_held(self) -> list[RtspRtpPacket]:
        out: list[RtspRtpPacket] = []
        while self._held:
            assert self._next is not None
            packet = self._held.pop(self._next, None)
            if packet is None:
                break
            self.reordered += 1
            out += self._release(packet)
        return out

    def _give_up_gap(self) -> list[RtspRtpPacket]:
        """Skip to the first packet held, release what follows in order."""
        assert self._next is not None
        start = self._next
        self._next = min(self._held, key=lambda sequence: (sequence - start) & 0xFFFF)
        return self._release_held()

    def _flush(self) -> list[RtspRtpPacket]:
        out: list[RtspRtpPacket] = []
        while self._held:
            out += self._give_up_gap()
        return out


@dataclass(frozen=True, slots=True)
class AccessUnit:
    """One H.264 access unit in Annex-B. ``timestamp`` is the RTP timestamp extended past
    32-bit wrap-around and counted from the first packet (so it starts at 0)."""

    data: bytes
    timestamp: int
    keyframe: bool
    dimensions: tuple[int, int] | None = None  # when the unit carries an SPS


class H264Depacketizer:
    def __init__(
        self, *, sps: bytes | None = None, pps: bytes | None = None, reorder: RtpReorder | None = None
    ) -> None:
        self.parameter_sets = ParameterSetCache()
        # The SDP's parameter sets serve until the stream sends its own.
        self.parameter_sets.sps, self.parameter_sets.pps = sps, pps
        self.packets = 0
        self.reorder = reorder or RtpReorder()
        self.lost_packets = 0
        self.dropped_units = 0  # broken, or waiting for an IDR
        self.bad_packets = 0  # malformed or unsupported payloads
        self._expected_sequence: int | None = None
        self._first_timestamp: int | None = None
        self._last_timestamp = 0
        self._extended = 0
        self._nals: list[bytes] = []
        self._size = 0
        self._unit_timestamp: int | None = None
        self._fragment: bytearray | None = None
        self._broken = False
        self._need_idr = True  # the stream may start mid-GOP

    def figures(self) -> dict[str, int]:
        """What came in, for the logs: packets, lost, put back in order, and so on."""
        return {
            "packets": self.packets,
            "lost_packets": self.lost_packets,
            "reordered_packets": self.reorder.reordered,
            "late_packets": self.reorder.late,
            "dropped_units": self.dropped_units,
            "bad_packets": self.bad_packets,
        }

    @property
    def waiting_for_keyframe(self) -> bool:
        """Whether units are dropped until the next IDR (the start, or after a loss)."""
        return self._need_idr

    def receive(self, packet: RtspRtpPacket) -> list[AccessUnit]:
        self.packets += 1
        units: list[AccessUnit] = []
        for in_order in self.reorder.push(packet):
            units += self._receive_in_order(in_order)
        return units

    def _receive_in_order(self, packet: RtspRtpPacket) -> list[AccessUnit]:
        units: list[AccessUnit] = []
        expected = self._expected_sequence
        gap = False
        if expected is not None and packet.sequence != expected:
            ahead = (packet.sequence - expected) & 0xFFFF
            if ahead <= self.reorder.max_packets:
                self.lost_packets += ahead
                gap = True
            else:  # a new sequence: the sender restarted. A unit it cut short is broken.
                self._broken |= bool(self._nals) or self._fragment is not None
                units += self._finish()
                self._need_idr = True
        self._expected_sequence = (packet.sequence + 1) & 0xFFFF
        if not packet.payload:
            # Padding only (RFC 3550 5.1): a WebRTC sender probing the bandwidth without RTX
            # numbers these with the stream. No NAL unit in it, none broken by it.
            self._broken |= gap
            return units
        timestamp = self._extend(packet.timestamp)
        # Lost packets may be the tail of the unit being built or the head of this one:
        # both are broken.
        self._broken |= gap
        if self._unit_timestamp is not None and timestamp != self._unit_timestamp:
            # A new timestamp starts a new access unit even without a marker on the last.
            units += self._finish()
        self._broken |= gap
        self._unit_timestamp = timestamp
        self._payload(packet.payload)
        if packet.marker:
            units += self._finish()
        return units

    def _extend(self, timestamp: int) -> int:
        if self._first_timestamp is None:
            self._first_timestamp = self._last_timestamp = timestamp
            return 0
        delta = (timestamp - self._last_timestamp) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000
        self._last_timestamp = timestamp
        self._extended += delta
        return self._extended

    def _payload(self, payload: bytes) -> None:
        if not payload:
            self._malformed()
            return
        kind = payload[0] & 0x1F
        if 1 <= kind <= 23:
            self._add(payload)
        elif kind == NAL_STAP_A:
            pos = 1
            while pos + 2 <= len(payload):
                (size,) = struct.unpack_from("!H", payload, pos)
                pos += 2
                if size == 0 or pos + size > len(payload):
                    self._malformed()
                    return
                self._add(payload[pos : pos + size])
                pos += size
            if pos != len(payload):
                self._malformed()
        elif kind == NAL_FU_A:
            self._fragment_unit(payload)
        else:  # STAP-B, MTAP, FU-B: only for interleaved mode (2), which is never negotiated
            self._malformed()

    def _fragment_unit(self, payload: bytes) -> None:
        if len(payload) < 3:
            self._malformed()
            return
        indicator, header = payload[0], payload[1]
        start, end = header & 0x80, header & 0x40
        if start:
            if self._fragment is not None:
                self._broken = True  # the previous fragment lost its end
            self._fragment = bytearray([(indicator & 0xE0) | (header & 0x1F)])
        elif self._fragment is None:
            self._broken = True  # lost its start
            return
        self._fragment += payload[2:]
        if len(self._fragment) + self._size > MAX_ACCESS_UNIT_BYTES:
            self._fragment = None
            self._broken = True
            return
        if end:
            nal, self._fragment = bytes(self._fragment), None
            self._add(nal)

    def _add(self, nal: bytes) -> None:
        if self._size + len(nal) > MAX_ACCESS_UNIT_BYTES:
            self._broken = True
            return
        self._nals.append(nal)
        self._size += len(nal) + 4

    def _malformed(self) -> None:
        self.bad_packets += 1
        self._broken = True

    def _finish(self) -> list[AccessUnit]:
        nals, broken, timestamp = self._nals, self._broken, self._unit_timestamp
        if self._fragment is not None:
            broken = True  # a fragment without its end: the unit is incomplete
        self._nals, self._size, self._fragment, self._broken = [], 0, None, False
        self._unit_timestamp = None
        if not nals and not broken:
            return []
        if broken:
            self.dropped_units += 1
            self._need_idr = True
            return []
        data, keyframe, dimensions = self.parameter_sets.process(b"".join(START_CODE + nal for nal in nals))
        if self._need_idr and not keyframe:
            self.dropped_units += 1
            return []
        self._need_idr = False
        assert timestamp is not None
        return [AccessUnit(data, timestamp, keyframe, dimensions)]
