"""gateway.media.webrtc.rtp_in and rtsp.rtp.parse_header: a WebRTC publisher's H.264 RTP as
the gateway's own receive reads it (headers and abs-send-time, RFC 3550 and 8285; NACK;
RTX, RFC 4588; units whole, in order, dropped to the next keyframe after a loss), with
packets built by hand and real x264 streams through the sinks' packetizer."""

from __future__ import annotations

import random
import struct
from fractions import Fraction

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from hypothesis import given
from hypothesis import strategies as st

from gateway.media import h264
from gateway.media.rtsp.rtp import RtpError, RtspRtpPacket, parse_header, parse_rtp
from gateway.media.sinks.rtsp import H264_RTP
from gateway.media.stream import MediaFrame, Stream
from gateway.media.webrtc.rtp_in import KEYFRAME_EVERY_DROPPED, H264Receive, NackList

from .helpers import access_units, annexb

ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
H264_PT, RTX_PT = 102, 103
MEDIA_SSRC, RTX_SSRC = 0x1111, 0x2222


def header_bytes(
    *, first: int = 0x80, pt: int = H264_PT, marker: bool = False, seq: int = 1, ts: int = 0
) -> bytes:
    return struct.pack("!BBHII", first, (0x80 if marker else 0) | pt, seq, ts, MEDIA_SSRC)


# --- headers ---------------------------------------------------------------------------------


def aiortc_packet(abs_send_time: int | None, mid: str | None, *, ids: tuple[int, int]) -> bytes:
    """A packet serialised by aiortc with the extensions it sends (one-byte form)."""
    extensions = HeaderExtensionsMap()
    extensions.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=ids[0], uri=MID_URI),
                RTCRtpHeaderExtensionParameters(id=ids[1], uri=ABS_SEND_TIME_URI),
            ]
        )
    )
    packet = RtpPacket(
        payload_type=H264_PT, sequence_number=7, timestamp=9000, ssrc=MEDIA_SSRC, payload=b"NAL"
    )
    packet.extensions.abs_send_time = abs_send_time
    packet.extensions.mid = mid
    return packet.serialize(extensions)


@pytest.mark.parametrize("mid", [None, "0", "video-track"])
def test_abs_send_time_is_read_from_what_aiortc_sends(mid: str | None) -> None:
    data = aiortc_packet(0xABCDEF, mid, ids=(4, 3))
    header = parse_header(data, abs_send_time_id=3)
    assert header.abs_send_time == 0xABCDEF
    assert data[header.start : header.end] == b"NAL" and (header.sequence, header.timestamp) == (7, 9000)
    assert parse_header(data).abs_send_time is None  # not asked for
    assert parse_header(data, abs_send_time_id=5).abs_send_time is None  # not there


def test_abs_send_time_in_the_two_byte_form_and_after_padding() -> None:
    elements = b"\x00" + bytes([7, 2]) + b"ab" + bytes([3, 3]) + b"\x12\x34\x56" + b"\x00" * 2
    extension = struct.pack("!HH", 0x1000, len(elements) // 4) + elements
    data = header_bytes(first=0x90) + extension + b"NAL"
    header = parse_header(data, abs_send_time_id=3)
    assert header.abs_send_time == 0x123456 and data[header.start :] == b"NAL"


@pytest.mark.parametrize(
    "elements",
    [
        b"\x31\x12\x34\x00",  # id 3 with two bytes: not abs-send-time's three
        b"\xf2\x12\x34\x56",  # id 15 stops the list
        b"\x37\x12\x34\x56",  # longer than the extension
    ],
)
def test_a_malformed_extension_element_is_no_abs_send_time(elements: bytes) -> None:
    data = header_bytes(first=0x90) + struct.pack("!HH", 0xBEDE, 1) + elements + b"NAL"
    header = parse_header(data, abs_send_time_id=3)
    assert header.abs_send_time is None and data[header.start :] == b"NAL"


@given(
    csrc=st.lists(st.integers(0, 2**32 - 1), max_size=15),
    extension_words=st.none() | st.integers(0, 8),
    padding=st.integers(0, 255),
    payload=st.binary(max_size=64),
    pt=st.integers(0, 127),
    marker=st.booleans(),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 2**32 - 1),
)
def test_any_header_is_read_back(
    csrc: list[int],
    extension_words: int | None,
    padding: int,
    payload: bytes,
    pt: int,
    marker: bool,
    seq: int,
    ts: int,
) -> None:
    first = 0x80 | len(csrc) | (0x10 if extension_words is not None else 0) | (0x20 if padding else 0)
    data = header_bytes(first=first, pt=pt, marker=marker, seq=seq, ts=ts)
    data += struct.pack(f"!{len(csrc)}I", *csrc)
    if extension_words is not None:
        data += struct.pack("!HH", 0xBEDE, extension_words) + b"\x00" * (4 * extension_words)
    data += payload + (b"\x00" * (padding - 1) + bytes([padding]) if padding else b"")
    header = parse_header(data, abs_send_time_id=3)
    assert (header.payload_type, header.marker, header.sequence, header.timestamp) == (pt, marker, seq, ts)
    assert data[header.start : header.end] == payload and header.abs_send_time is None
    assert parse_rtp(data) == RtspRtpPacket(pt, marker, seq, ts, MEDIA_SSRC, payload, tuple(csrc))


@given(data=st.binary(max_size=40), asked=st.integers(0, 14))
def test_any_bytes_give_a_header_or_an_rtp_error(data: bytes, asked: int) -> None:
    try:
        header = parse_header(data, asked)
    except RtpError:
        return
    assert 12 <= header.start <= header.end <= len(data)


# --- NACK --------------------------------------------------------------------------------------


def test_a_gap_is_nacked_whole_and_a_retransmission_leaves_the_list() -> None:
    nacks = NackList()
    assert nacks.add(10) == [] and nacks.add(11) == []
    assert nacks.add(14) == [12, 13]
    assert nacks.add(12) == []  # the retransmission
    assert nacks.add(15) == []  # in order: nothing new
    assert nacks.add(17) == [13, 16]  # a new gap: every packet still missing, oldest first
    assert nacks.add(16) == [] and nacks.add(16) == []  # and a duplicate
    assert nacks.missing == {13}


def test_nack_across_the_wrap_and_a_jump_is_a_new_sequence() -> None:
    nacks = NackList(window=128)
    nacks.add(65534)
    assert nacks.add(1) == [65535, 0]
    assert nacks.add(1 + 129) == [] and nacks.missing == set()  # a new sequence, not 128 losses


def test_what_falls_out_of_the_window_is_no_longer_nacked() -> None:
    nacks = NackList(window=16)
    nacks.add(0)
    assert nacks.add(2) == [1]
    assert nacks.add(12) == [1, *range(3, 12)]
    assert nacks.add(19) == [*range(3, 12), *range(13, 19)]  # 1 is older than the last 16
    assert 1 not in nacks.missing


# --- access units ------------------------------------------------------------------------------


def rtp_packets(units: list[bytes], first_sequence: int = 0) -> list[bytes]:
    """The units as aiortc-style RTP datagrams, cut by the sinks' packetizer."""
    from gateway.media.webrtc.fanout import rtp_payloads

    stream, datagrams, sequence = Stream("s"), [], first_sequence
    for index, data in enumerate(units):
        frame = MediaFrame("video", "H264", data, index * 3000, Fraction(1, 90000), h264.is_keyframe(data))
        payloads, timestamp = rtp_payloads(stream, frame, H264_RTP)
        for n, payload in enumerate(payloads):
            marker = n == len(payloads) - 1
            datagrams.append(header_bytes(marker=marker, seq=sequence & 0xFFFF, ts=timestamp) + payload)
            sequence += 1
    return datagrams


def rtx(datagram: bytes, rtx_sequence: int) -> bytes:
    """``datagram`` as its retransmission (RFC 4588): the RTX payload type, SSRC and
    sequence, the original sequence number before the payload."""
    header = parse_header(datagram)
    first, second = datagram[0], (datagram[1] & 0x80) | RTX_PT
    out = struct.pack("!BBHII", first, second, rtx_sequence, header.timestamp, RTX_SSRC)
    return out + struct.pack("!H", header.sequence) + datagram[header.start :]


def run(receive: H264Receive, datagrams: list[bytes]) -> tuple[list[bytes], list[list[int]], int]:
    """(unit data, NACK lists, keyframe requests) of feeding every datagram."""
    units, nacks, wanted = [], [], 0
    for data in datagrams:
        got = receive.packet(parse_header(data), data)
        units += [u.data for u in got.units]
        if got.nack:
            nacks.append(list(got.nack))
        wanted += got.keyframe_wanted
    return units, nacks, wanted


def new_receive() -> H264Receive:
    return H264Receive(frozenset({H264_PT}), frozenset({RTX_PT}))


def test_a_real_stream_comes_out_whole_with_nothing_asked(encoded: dict[str, bytes]) -> None:
    units = [annexb(nals) for nals in access_units(encoded["1920x1080-high"])]
    receive = new_receive()
    out, nacks, wanted = run(receive, rtp_packets(units, first_sequence=65500))
    assert out == units and nacks == [] and wanted == 0


def test_a_lost_packet_is_nacked_and_its_retransmission_completes_the_unit(encoded: dict[str, bytes]) -> None:
    units = [annexb(nals) for nals in access_units(encoded["1920x1080-high"])]
    datagrams = rtp_packets(units)
    lost = datagrams.pop(5)
    # The retransmission comes after three more packets (a round trip), with a padding-only
    # RTX probe before it, which is ignored.
    probe = struct.pack("!BBHII", 0xA0, RTX_PT, 900, 0, RTX_SSRC) + b"\x00" * 7 + b"\x08"
    datagrams[8:8] = [probe, rtx(lost, 901)]
    receive = new_receive()
    out, nacks, wanted = run(receive, datagrams)
    assert out == units and nacks == [[parse_header(lost).sequence]] and wanted == 0
    assert receive.depacketizer.lost_packets == 0


def test_a_packet_lost_for_good_drops_to_the_next_keyframe_and_asks_for_one(
    encoded: dict[str, bytes],
) -> None:
    units = [annexb(nals) for nals in access_units(encoded["gop"])]  # keyint 3: IDR at 0, 3, 6
    datagrams = rtp_packets(units)
    second = next(i for i, d in enumerate(datagrams) if parse_header(d).timestamp == 3000)
    del datagrams[second]  # unit 1's first packet; its NACK goes unanswered
    # Half a second of stream later the gap is given up: pad the stream out past that.
    receive = H264Receive(frozenset({H264_PT}), wait_ticks=5000)
    out, nacks, wanted = run(receive, datagrams)
    assert out == [units[0], *units[3:]] and len(nacks) == 1 and wanted == 1
    assert receive.depacketizer.dropped_units == 2 and receive.keyframe_requests == 1


def test_a_keyframe_is_asked_again_while_none_comes() -> None:
    idr = annexb(
        [bytes.fromhex("6742c00dd90141fb011000000300100000030320f142a480"), bytes.fromhex("68cb83cb20")]
    )
    idr += annexb([bytes([0x65]) + bytes(range(1, 200))])
    slice_ = annexb([bytes([0x41]) + bytes(range(50, 90))])
    datagrams = rtp_packets([idr] + [slice_] * (2 * KEYFRAME_EVERY_DROPPED + 5))
    del datagrams[1]  # the first P-frame, for good
    receive = H264Receive(frozenset({H264_PT}), wait_ticks=1)
    out, _, wanted = run(receive, datagrams)
    assert out == [idr] and wanted == 3  # at the first dropped unit, then every 30


def test_padding_on_the_media_ssrc_breaks_nothing(encoded: dict[str, bytes]) -> None:
    """Without RTX a browser probes the bandwidth with padding-only packets on the media
    SSRC, numbered with the stream (RFC 3550 padding: P bit, the count in the last octet)."""
    units = [annexb(nals) for nals in access_units(encoded["gop"])]
    datagrams = rtp_packets(units)
    padded: list[bytes] = []
    sequence = 0
    for data in datagrams:
        header = parse_header(data)
        padded.append(
            struct.pack("!BBHII", 0x80, data[1], sequence, header.timestamp, MEDIA_SSRC) + data[12:]
        )
        sequence += 1
        if header.marker:  # a probe after each unit: 200 bytes of padding, the unit's timestamp
            probe = struct.pack("!BBHII", 0xA0, H264_PT, sequence, header.timestamp, MEDIA_SSRC)
            padded.append(probe + bytes(199) + bytes([200]))
            sequence += 1
    receive = new_receive()
    out, nacks, wanted = run(receive, padded)
    assert out == units and nacks == [] and wanted == 0
    assert receive.depacketizer.bad_packets == receive.depacketizer.dropped_units == 0


def test_other_payload_types_are_not_taken() -> None:
    receive = new_receive()
    assert receive.takes(H264_PT) and receive.takes(RTX_PT) and not receive.takes(96)
    data = header_bytes(pt=96, marker=True) + b"\x10"
    assert receive.packet(parse_header(data), data).units == []


@pytest.mark.parametrize("seed", range(12))
def test_packets_in_any_order_within_the_window_make_the_same_units(
    encoded: dict[str, bytes], seed: int
) -> None:
    """After the first, each packet moved by up to 2-12 places (what UDP does): the same
    units, nothing lost or asked for again."""
    units = [annexb(nals) for nals in access_units(encoded["gop"])]
    datagrams = rtp_packets(units, first_sequence=65520)
    rng = random.Random(seed)
    spread = rng.randint(2, 12)
    keyed = sorted(range(len(datagrams)), key=lambda i: i + rng.uniform(0, spread) if i else -1.0)
    receive = new_receive()
    out, nacks, wanted = run(receive, [datagrams[i] for i in keyed])
    assert out == units and wanted == 0
    assert receive.nacks.missing == set() and receive.depacketizer.lost_packets == 0
    assert keyed != sorted(keyed) and nacks  # it was shuffled, and the gaps were asked for
