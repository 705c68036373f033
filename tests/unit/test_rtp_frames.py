"""gateway.media.rtp_frames: one frame's payloads numbered as RTP packets; H.264 payloads."""

from __future__ import annotations

from aiortc.codecs.h264 import H264PayloadDescriptor
from hypothesis import given
from hypothesis import strategies as st

from gateway.media.h264 import iter_nal_units
from gateway.media.rtp_frames import NAL_FU_A, frame_packets, h264_payloads, sequence_after
from gateway.media.webrtc import burst


def test_consecutive_numbers_wrap_and_the_marker_ends_the_frame() -> None:
    packets = list(frame_packets([b"a", b"b", b"c"], 0xFFFE))
    assert packets == [(0xFFFE, False, b"a"), (0xFFFF, False, b"b"), (0, True, b"c")]
    assert sequence_after(0xFFFE, 3) == 1


def test_a_frame_of_one_packet_is_marked() -> None:
    assert list(frame_packets([b"x"], 7)) == [(7, True, b"x")]
    assert list(frame_packets([], 7)) == []
    assert sequence_after(7, 0) == 7


@given(st.lists(st.binary(max_size=4), max_size=40), st.integers(0, 0xFFFF))
def test_numbers_follow_on_from_frame_to_frame(payloads: list[bytes], first: int) -> None:
    packets = list(frame_packets(payloads, first))
    assert [payload for _, _, payload in packets] == payloads
    assert [marker for _, marker, _ in packets] == [i == len(payloads) - 1 for i in range(len(payloads))]
    following = [(first + i) & 0xFFFF for i in range(len(payloads) + 1)]
    assert [sequence for sequence, _, _ in packets] + [sequence_after(first, len(payloads))] == following


# --- H.264 payloads (RFC 6184, packetization mode 1) ---------------------------------------

nal_units = st.lists(
    st.tuples(st.integers(0, 3), st.integers(1, 23), st.binary(min_size=1, max_size=5000)).map(
        # No zero bytes in the body: no start code can appear inside a unit. At least 2
        # bytes: aiortc's depacketizer refuses shorter units.
        lambda t: bytes(((t[0] << 5) | t[1],)) + t[2].replace(b"\x00", b"\x01")
    ),
    min_size=1,
    max_size=6,
)


def annex_b(nals: list[bytes]) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + nal for nal in nals)


@given(nal_units, st.integers(64, 1400))
def test_h264_payloads_carry_the_units_as_aiortc_depayloads_them(nals: list[bytes], payload_max: int) -> None:
    payloads = h264_payloads(annex_b(nals), payload_max)
    assert all(len(p) <= payload_max for p in payloads)
    # aiortc's own depacketizer (an independent reading of RFC 6184) gives the units back.
    stream = b"".join(H264PayloadDescriptor.parse(p)[1] for p in payloads)
    assert list(iter_nal_units(stream)) == nals


@given(nal_units, st.integers(64, 1400))
def test_fragments_of_a_unit_are_of_one_size_but_a_shorter_last(nals: list[bytes], payload_max: int) -> None:
    payloads = h264_payloads(annex_b(nals), payload_max)
    runs: list[list[bytes]] = []
    for p in payloads:
        if p[0] & 0x1F == NAL_FU_A:
            if p[1] & 0x80:
                runs.append([])
            runs[-1].append(p)
    assert len(runs) == sum(len(n) > payload_max for n in nals)
    for run, nal in zip(runs, [n for n in nals if len(n) > payload_max], strict=True):
        sizes = [len(p) for p in run]
        assert len(run) == -(-(len(nal) - 1) // (payload_max - 2))  # as few as fit
        assert len(set(sizes[:-1])) <= 1 and sizes[-1] <= sizes[0]
        assert burst.gso_segment(sizes) == (sizes[0] if 1 < len(sizes) <= burst.GSO_MAX_SEGMENTS else None)


def test_small_units_are_aggregated_and_one_large_slice_is_gso_sized() -> None:
    sps, pps = b"\x67" + b"\x42" * 20, b"\x68" + b"\xce" * 4
    idr = b"\x65" + b"\x88" * 3000
    payloads = h264_payloads(annex_b([sps, pps, idr]))
    assert payloads[0] == b"\x78" + b"\x00\x15" + sps + b"\x00\x05" + pps  # STAP-A, NRI 3
    assert [len(p) for p in payloads[1:]] == [1002, 1002, 1002]
    assert [p[:2] for p in payloads[1:]] == [b"\x7c\x85", b"\x7c\x05", b"\x7c\x45"]  # start, -, end
    assert h264_payloads(annex_b([b"\x41" + b"\x01" * 10])) == [b"\x41" + b"\x01" * 10]
