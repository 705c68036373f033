"""The fan-out benchmark's latency matching (scripts/bench/benchlib/latency.py): a viewer's
access units are paired with the publisher's under the one timestamp offset the gateway
applies, even when every latency is longer than a frame interval (where an offset one frame
off would also give positive latencies), across a 32-bit timestamp wrap, and with units cut
by the window's edges left out. The stamping helpers read RTP headers and H.264 payloads."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))

from benchlib.latency import LatencyMeter, match_units, next_first_stamps, percentile
from benchlib.latency_probe import is_video_rtp, starts_keyframe, video_payload_type

FRAME_NS = 33_333_333
TICKS = 3000
GOP = 30


@given(
    p_counts=st.lists(st.integers(5, 9), min_size=2 * GOP, max_size=3 * GOP),
    latencies=st.lists(st.integers(200_000, 90_000_000), min_size=3 * GOP, max_size=3 * GOP),
    origin=st.integers(0, 0xFFFFFFFF),
    offset=st.integers(0, 0xFFFFFFFF),
    cut=st.integers(0, 3),
)
def test_the_gateways_offset_is_found(
    p_counts: list[int], latencies: list[int], origin: int, offset: int, cut: int
) -> None:
    counts = [22 if k % GOP == 0 else n for k, n in enumerate(p_counts)]
    sent = {}
    received = []
    for k, n in enumerate(counts):
        ts = (origin + k * TICKS) & 0xFFFFFFFF
        first = 10**12 + k * FRAME_NS
        last = first + n * 20_000
        sent[ts] = [ts, first, last, n]
        arrived = last + latencies[k]
        received.append([(ts + offset) & 0xFFFFFFFF, arrived - n * 10_000, arrived, n])
    # the window's edges: the viewer's first units cut short, or sent before the publisher recorded
    for unit in received[:cut]:
        unit[3] -= 1
    found, pairs = match_units(sent, received)
    assert found == offset
    assert len(pairs) == len(counts) - cut
    assert [r[2] - s[2] for s, r in pairs] == latencies[cut : len(counts)]


def test_nothing_to_match() -> None:
    assert match_units({}, [[1, 2, 3, 4]]) == (None, [])
    assert match_units({1: [1, 2, 3, 4]}, []) == (None, [])
    # sent after it arrived: not a match
    assert match_units({1: [1, 10, 20, 4]}, [[1, 2, 3, 4]]) == (None, [])


def test_release_is_the_next_units_first_packet() -> None:
    sent = {3000: [3000, 100, 150, 7], 6000: [6000, 200, 260, 8], 9000: [9000, 300, 330, 6]}
    assert next_first_stamps(sent) == {3000: 200, 6000: 300}


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=300))
def test_percentiles_are_ordered(values: list[float]) -> None:
    qs = [percentile(values, q) for q in (0.5, 0.95, 0.99, 1.0)]
    assert qs == sorted(qs)
    assert qs[-1] == max(values)
    assert min(values) <= qs[0]


def test_compute_reports_latency_and_joins() -> None:
    meter = LatencyMeter.__new__(LatencyMeter)
    meter._seen = set()
    sent = [[3000 * k, 1000 + k * FRAME_NS, 2000 + k * FRAME_NS, 7 + k % 2] for k in range(40)]
    viewer = [[u[0] + 5, u[2] + 500_000, u[2] + 1_000_000, u[3]] for u in sent]
    published = {"units": sent, "loopback_ns": [4000, 5000, 6000]}
    workers = [
        {
            "viewers": [{"id": 0, "playing": 1, "units": viewer, "fallbacks": 0}],
            "joins": [
                {
                    "id": 0,
                    "playing": 10_000_000,
                    "key_first": 8_000_000,
                    "key_read": 11_000_000,
                    "key_last": 12_000_000,
                },
                {"id": 1, "playing": 10_000_000, "key_first": None, "key_last": None},
            ],
        }
    ]
    step = meter.compute(published, workers)
    assert step.units == 40 and step.unmatched == 0 and step.sampled == 1 and step.last_sampled == 1
    assert step.relay_ms["p50"] == step.relay_ms["max"] == (1_000_000 - 5000) / 1e6
    assert step.loopback_us["p50"] == 5.0
    assert step.joins == 2 and step.joins_missing == 1
    assert step.join_first_ms["p50"] == -2.0 and step.join_complete_ms["p50"] == 2.0
    assert step.join_read_ms["p50"] == 1.0
    # each unit arrived 1 ms after its last packet was sent, before the next unit was
    assert step.before_next == 39 and step.hold_ms["p50"] == (FRAME_NS - 1000) / 1e6
    assert step.released_ms["p50"] == (1_000_000 - FRAME_NS + 1000 - 5000) / 1e6
    assert meter.compute(published, workers).last_sampled == 0  # seen in an earlier step
    assert step.large_units == 0 and step.small_units_ms == step.relay_ms


def test_large_units_are_reported_apart() -> None:
    """Units of more than LARGE_UNIT_PACKETS packets (keyframes) have their own figures,
    and the publisher's span over their packets."""
    meter = LatencyMeter.__new__(LatencyMeter)
    meter._seen = set()
    sent = [[3000 * k, 1000 + k * FRAME_NS, 2000 + k * FRAME_NS, 40 if k % 10 == 0 else 6] for k in range(40)]
    late = {u[0] for u in sent if u[3] == 40}
    viewer = [[u[0], u[2], u[2] + (4_000_000 if u[0] in late else 1_000_000), u[3]] for u in sent]
    workers = [{"viewers": [{"id": 0, "playing": 1, "units": viewer, "fallbacks": 0}], "joins": []}]
    step = meter.compute({"units": sent, "loopback_ns": [0]}, workers)
    assert step.large_units == 4
    assert step.large_units_ms["p50"] == step.large_units_ms["max"] == 4.0
    assert step.small_units_ms["max"] == 1.0 and step.relay_ms["max"] == 4.0
    assert step.large_sent_ms["p50"] == 1000 / 1e6


def test_rtp_and_h264_helpers() -> None:
    answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102 103\r\n"
    assert video_payload_type(answer) == 102
    rtp = bytes([0x80, 0x80 | 102]) + bytes(20)
    assert is_video_rtp(rtp, 102)
    assert not is_video_rtp(bytes([0x80, 200]) + bytes(20), 102)  # RTCP sender report
    assert not is_video_rtp(bytes([0x16, 102]) + bytes(20), 102)  # DTLS
    assert starts_keyframe(bytes([0x78, 0, 10, 0x67]))  # STAP-A opening with an SPS
    assert starts_keyframe(bytes([0x7C, 0x85]))  # FU-A start of an IDR slice
    assert not starts_keyframe(bytes([0x7C, 0x05]))  # FU-A continuation
    assert not starts_keyframe(bytes([0x41]))  # non-IDR slice
    assert not starts_keyframe(b"")
