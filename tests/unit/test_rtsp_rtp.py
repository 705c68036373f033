"""gateway.media.rtsp.rtp: RTP headers (RFC 3550 5.1) and H.264 depacketizing (RFC 6184),
with packets built here by hand and with the packetizer the RTSP and WebRTC sinks share
(`rtp_payloads`), fed real x264 streams."""

from __future__ import annotations

import struct
from fractions import Fraction

import pytest

from gateway.media import h264
from gateway.media.rtsp.rtp import (
    NAL_FU_A,
    NAL_STAP_A,
    AccessUnit,
    H264Depacketizer,
    RtpError,
    RtpReorder,
    RtspRtpPacket,
    parse_rtp,
    rtp_header,
)
from gateway.media.sinks.rtsp import H264_RTP
from gateway.media.stream import MediaFrame, Stream

from .helpers import access_units, annexb, nal_type

SPS = bytes.fromhex("6742c00dd90141fb011000000300100000030320f142a480")  # 320x240 baseline, x264
PPS = bytes.fromhex("68cb83cb20")
IDR = bytes([0x65]) + bytes(range(1, 200))
SLICE = bytes([0x41]) + bytes(range(50, 90))


def packet(payload: bytes, sequence: int, timestamp: int, marker: bool = True) -> RtspRtpPacket:
    return RtspRtpPacket(96, marker, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, 0x1234, payload)


def stap_a(*nals: bytes) -> bytes:
    nri = max(n[0] & 0x60 for n in nals)
    return bytes([nri | NAL_STAP_A]) + b"".join(struct.pack("!H", len(n)) + n for n in nals)


def fu_a(nal: bytes, size: int) -> list[bytes]:
    """RFC 6184 5.8, written out: FU indicator (F, NRI, 28), FU header (S, E, type)."""
    body = nal[1:]
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    out = []
    for index, chunk in enumerate(chunks):
        start = 0x80 if index == 0 else 0
        end = 0x40 if index == len(chunks) - 1 else 0
        out.append(bytes([(nal[0] & 0xE0) | NAL_FU_A, start | end | (nal[0] & 0x1F)]) + chunk)
    return out


def feed(depacketizer: H264Depacketizer, packets: list[RtspRtpPacket]) -> list[AccessUnit]:
    return [unit for p in packets for unit in depacketizer.receive(p)]


# --- RTP headers ---------------------------------------------------------------------------------


def test_header_round_trip() -> None:
    data = rtp_header(payload_type=96, marker=True, sequence=65535, timestamp=2**32 - 1, ssrc=0xDEADBEEF)
    parsed = parse_rtp(data + b"payload")
    assert parsed == RtspRtpPacket(96, True, 65535, 2**32 - 1, 0xDEADBEEF, b"payload")


def test_csrc_extension_and_padding_are_skipped() -> None:
    first = 0x80 | 0x20 | 0x10 | 2  # V=2, P, X, CC=2
    header = struct.pack("!BBHII", first, 96, 7, 9000, 1) + struct.pack("!II", 11, 22)
    extension = struct.pack("!HH", 0xBEDE, 2) + b"\x10\xaa\x00\x00" + b"\x00" * 4
    data = header + extension + b"NAL!" + b"\x00\x00\x03"
    parsed = parse_rtp(data)
    assert (parsed.payload, parsed.csrc, parsed.marker, parsed.sequence) == (b"NAL!", (11, 22), False, 7)


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x60\x00",  # shorter than the header
        struct.pack("!BBHII", 0x40, 96, 1, 1, 1),  # version 1
        struct.pack("!BBHII", 0x83, 96, 1, 1, 1) + b"\x00" * 8,  # CSRC list cut short
        struct.pack("!BBHII", 0x90, 96, 1, 1, 1) + struct.pack("!HH", 0, 4),  # extension cut short
        struct.pack("!BBHII", 0xA0, 96, 1, 1, 1) + b"ab\x05",  # more padding than payload
        struct.pack("!BBHII", 0xA0, 96, 1, 1, 1) + b"ab\x00",  # padding count 0
    ],
)
def test_bad_packets(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtp(data)


# --- depacketizing by hand -------------------------------------------------------------------


def test_single_nal_stap_a_and_fu_a_make_annexb_units() -> None:
    depacketizer = H264Depacketizer()
    big_idr = bytes([0x65]) + bytes(i & 0xFF for i in range(3000))
    packets = [packet(stap_a(SPS, PPS), 1, 1000, marker=False)]
    packets += [packet(p, 2 + i, 1000, marker=False) for i, p in enumerate(fu_a(big_idr, 1000))]
    packets[-1] = packet(packets[-1].payload, packets[-1].sequence, 1000, marker=True)
    packets.append(packet(SLICE, 5, 4000))
    units = feed(depacketizer, packets)
    assert units == [
        AccessUnit(annexb([SPS, PPS, big_idr]), 0, True, h264.sps_dimensions(SPS)),
        AccessUnit(annexb([SLICE]), 3000, False, None),
    ]
    assert (depacketizer.lost_packets, depacketizer.dropped_units) == (0, 0)


def test_timestamp_change_ends_a_unit_without_marker() -> None:
    depacketizer = H264Depacketizer()
    units = feed(
        depacketizer,
        [
            packet(stap_a(SPS, PPS, IDR), 10, 0, marker=False),
            packet(SLICE, 11, 3000, marker=False),
            packet(SLICE, 12, 6000, marker=False),
        ],
    )
    assert [(u.timestamp, u.keyframe) for u in units] == [(0, True), (3000, False)]


def test_parameter_sets_from_the_sdp_go_before_a_bare_idr() -> None:
    depacketizer = H264Depacketizer(sps=SPS, pps=PPS)
    (unit,) = feed(depacketizer, [packet(IDR, 1, 0)])
    assert unit.data == annexb([SPS, PPS, IDR]) and unit.keyframe
    without = H264Depacketizer()
    (bare,) = feed(without, [packet(IDR, 1, 0)])
    assert bare.data == annexb([IDR])


def test_starts_at_the_first_idr() -> None:
    depacketizer = H264Depacketizer()
    units = feed(
        depacketizer, [packet(SLICE, 1, 0), packet(SLICE, 2, 3000), packet(stap_a(SPS, PPS, IDR), 3, 6000)]
    )
    assert [u.timestamp for u in units] == [6000]
    assert depacketizer.dropped_units == 2


def test_loss_drops_the_broken_unit_and_waits_for_the_next_idr() -> None:
    depacketizer = H264Depacketizer()
    fragments = fu_a(bytes([0x41]) + bytes(2000), 700)
    assert len(fragments) == 3
    packets = [
        packet(stap_a(SPS, PPS, IDR), 1, 0),
        packet(fragments[0], 2, 3000, marker=False),
        # sequence 3 (the middle fragment) is lost
        packet(fragments[2], 4, 3000),
        packet(SLICE, 5, 6000),  # complete, but it refers to the broken picture
        packet(stap_a(SPS, PPS, IDR), 6, 9000),
        packet(SLICE, 7, 12000),
    ]
    units = feed(depacketizer, packets)
    assert [(u.timestamp, u.keyframe) for u in units] == [(0, True), (9000, True), (12000, False)]
    assert depacketizer.lost_packets == 1
    assert depacketizer.dropped_units == 2


def test_loss_of_a_marker_packet_breaks_both_units() -> None:
    depacketizer = H264Depacketizer()
    packets = [
        packet(stap_a(SPS, PPS, IDR), 1, 0),
        packet(SLICE, 2, 3000, marker=False),
        # sequence 3: the end of the picture at 3000, or the start of the one at 6000
        packet(SLICE, 4, 6000),
        packet(stap_a(SPS, PPS, IDR), 5, 9000),
    ]
    assert [u.timestamp for u in feed(depacketizer, packets)] == [0, 9000]


def test_fragment_without_start_or_end_is_broken() -> None:
    depacketizer = H264Depacketizer()
    head, middle, tail = fu_a(bytes([0x65]) + bytes(1500), 600)
    packets = [
        packet(middle, 1, 0, marker=False),  # its start never came (first packet seen)
        packet(tail, 2, 0),
        packet(head, 3, 3000, marker=False),
        packet(head, 4, 3000, marker=True),  # a second start: the first lost its end
        packet(stap_a(SPS, PPS, IDR), 5, 6000),
    ]
    assert [u.timestamp for u in feed(depacketizer, packets)] == [6000]


def test_late_and_duplicate_packets_are_ignored() -> None:
    depacketizer = H264Depacketizer()
    first = packet(stap_a(SPS, PPS, IDR), 100, 0)
    units = feed(depacketizer, [first, first, packet(SLICE, 101, 3000), packet(SLICE, 99, 0)])
    assert [u.timestamp for u in units] == [0, 3000]
    assert depacketizer.lost_packets == 0


def test_sequence_and_timestamp_wrap_around() -> None:
    depacketizer = H264Depacketizer()
    start = 2**32 - 3000
    packets = [packet(stap_a(SPS, PPS, IDR), 65535, start), packet(SLICE, 0, start + 3000)]
    packets.append(packet(SLICE, 1, start + 6000))
    units = feed(depacketizer, packets)
    assert [u.timestamp for u in units] == [0, 3000, 6000]
    assert depacketizer.lost_packets == 0


@pytest.mark.parametrize(
    "payload",
    [
        bytes([NAL_STAP_A]) + b"\x00\x10abc",  # length past the end
        bytes([NAL_STAP_A]) + b"\x00\x00",  # zero length
        bytes([NAL_FU_A]),  # no FU header
        bytes([25]) + b"stap-b",  # interleaved-mode types are not served
    ],
)
def test_malformed_payloads_break_the_unit(payload: bytes) -> None:
    depacketizer = H264Depacketizer()
    units = feed(depacketizer, [packet(stap_a(SPS, PPS, IDR), 1, 0), packet(payload, 2, 3000)])
    units += feed(depacketizer, [packet(SLICE, 3, 6000), packet(stap_a(SPS, PPS, IDR), 4, 9000)])
    assert [u.timestamp for u in units] == [0, 9000]
    assert depacketizer.bad_packets == 1


def test_padding_only_packets_break_nothing() -> None:
    """A sender probing the bandwidth without RTX sends packets of padding alone, numbered
    with the stream: between units and after a unit's marker, with its timestamp."""
    depacketizer = H264Depacketizer()
    packets = [
        packet(stap_a(SPS, PPS, IDR), 1, 0),
        packet(b"", 2, 0, marker=False),
        packet(b"", 3, 0, marker=False),
        packet(SLICE, 4, 3000, marker=False),
        packet(SLICE, 5, 3000),
        packet(b"", 6, 3000, marker=False),
        packet(SLICE, 7, 6000),
    ]
    units = feed(depacketizer, packets)
    assert [u.timestamp for u in units] == [0, 3000, 6000]
    assert depacketizer.bad_packets == depacketizer.lost_packets == depacketizer.dropped_units == 0


# --- round trip through the sinks' packetizer -----------------------------------------------------


def packetize(stream: Stream, units: list[bytes], first_sequence: int = 0) -> list[RtspRtpPacket]:
    from gateway.media.webrtc.fanout import rtp_payloads

    packets = []
    sequence = first_sequence
    for index, data in enumerate(units):
        frame = MediaFrame("video", "H264", data, index * 3600, Fraction(1, 90000), h264.is_keyframe(data))
        payloads, timestamp = rtp_payloads(stream, frame, H264_RTP)
        for n, payload in enumerate(payloads):
            packets.append(packet(payload, sequence, timestamp, marker=n == len(payloads) - 1))
            sequence += 1
    return packets


@pytest.mark.parametrize("name", ["gop", "1920x1080-high", "gop-aud"])
def test_round_trip_of_real_streams(encoded: dict[str, bytes], name: str) -> None:
    units = [annexb(nals) for nals in access_units(encoded[name])]
    packets = packetize(Stream("s"), units, first_sequence=65530)
    kinds = {p.payload[0] & 0x1F for p in packets}
    assert NAL_STAP_A in kinds  # SPS+PPS+... aggregated
    if name == "1920x1080-high":
        assert NAL_FU_A in kinds  # the 1080p IDR is fragmented
    out = feed(H264Depacketizer(), packets)
    assert [u.data for u in out] == units
    assert [u.keyframe for u in out] == [h264.is_keyframe(u) for u in units]
    assert [u.timestamp for u in out] == [i * 3600 for i in range(len(units))]


def test_round_trip_with_a_lost_packet_resumes_at_the_next_idr(encoded: dict[str, bytes]) -> None:
    units = [annexb(nals) for nals in access_units(encoded["gop"])]  # keyint 3: IDR at 0, 3, 6
    assert [h264.is_keyframe(u) for u in units][:4] == [True, False, False, True]
    packets = packetize(Stream("s"), units)
    second = next(i for i, p in enumerate(packets) if p.timestamp == 3600)
    del packets[second]  # the first packet of unit 1
    depacketizer = H264Depacketizer()
    out = feed(depacketizer, packets)
    assert [u.data for u in out] == [units[0], *units[3:]]
    assert out[1].keyframe and nal_type(next(h264.iter_nal_units(out[1].data))) == h264.NAL_SPS
    assert depacketizer.lost_packets == 1 and depacketizer.dropped_units == 2


# --- reordering (UDP) -------------------------------------------------------------------------------


def test_packets_that_overtook_others_are_put_back_in_order(encoded: dict[str, bytes]) -> None:
    """After the first packet, a keyframe's fragments in reverse, then every pair swapped:
    the same units come out."""
    units = [annexb(nals) for nals in access_units(encoded["1920x1080-high"])]
    packets = packetize(Stream("s"), units, first_sequence=65500)  # and across the wrap
    first_unit = [p for p in packets if p.timestamp == packets[0].timestamp]
    assert len(first_unit) > 4  # fragmented
    rest = packets[len(first_unit) :]
    for i in range(0, len(rest) - 1, 2):
        rest[i], rest[i + 1] = rest[i + 1], rest[i]
    shuffled = [first_unit[0], *reversed(first_unit[1:]), *rest]
    depacketizer = H264Depacketizer()
    out = feed(depacketizer, shuffled)
    assert [u.data for u in out] == units
    assert depacketizer.lost_packets == 0 and depacketizer.dropped_units == 0
    assert depacketizer.reorder.reordered > len(packets) // 3


def test_a_missing_packet_is_given_up_50_ms_of_stream_later() -> None:
    reorder = RtpReorder()
    released = reorder.push(packet(SLICE, 1, 0))
    # sequence 2 never comes
    assert reorder.push(packet(SLICE, 3, 3000)) == [] and reorder.push(packet(SLICE, 4, 3000)) == []
    assert reorder.push(packet(SLICE, 5, 4500)) == []  # 50 ms: still waiting
    released += reorder.push(packet(SLICE, 6, 4501))  # past it: given up
    assert [p.sequence for p in released] == [1, 3, 4, 5, 6]
    assert reorder.push(packet(SLICE, 2, 1500)) == [] and reorder.late == 1  # too late now


def test_reorder_drops_duplicates_and_caps_what_it_holds() -> None:
    reorder = RtpReorder(max_delay=10**9, max_packets=8)
    assert [p.sequence for p in reorder.push(packet(SLICE, 10, 0))] == [10]
    held = [reorder.push(packet(SLICE, 12 + i, 0)) for i in range(7)]
    assert held == [[]] * 7
    assert reorder.push(packet(SLICE, 12, 0)) == [] and reorder.late == 1  # a duplicate
    assert [p.sequence for p in reorder.push(packet(SLICE, 19, 0))] == list(range(12, 20))  # cap reached
    assert reorder.push(packet(SLICE, 12, 0)) == [] and reorder.push(packet(SLICE, 15, 0)) == []
    assert reorder.late == 3


@pytest.mark.parametrize("jump", [10_000, -10_000, 30_000])
def test_a_sender_starting_a_new_sequence_is_followed_at_once(jump: int) -> None:
    depacketizer = H264Depacketizer()
    before = feed(depacketizer, [packet(stap_a(SPS, PPS, IDR), 1000, 0), packet(SLICE, 1001, 3000)])
    restart = (1002 + jump) & 0xFFFF
    after = feed(
        depacketizer,
        [packet(stap_a(SPS, PPS, IDR), restart, 6000), packet(SLICE, (restart + 1) & 0xFFFF, 9000)],
    )
    assert [u.timestamp for u in before + after] == [0, 3000, 6000, 9000]
