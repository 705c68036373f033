"""gateway.media.rtp_frames: one frame's payloads numbered as RTP packets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.media.rtp_frames import frame_packets, sequence_after


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
