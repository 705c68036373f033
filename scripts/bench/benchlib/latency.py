"""The orchestrator's side of the fan-out benchmark's latency figures, per gateway phase and
viewer count (the stamping is in `latency_probe.py`; the method in docs/performance.md).

Relay-added latency, per access unit and sampled viewer: the kernel's receive stamp of the
viewer's packet that ends the unit, minus the publisher's stamp before ``sendto`` of its
packet that ends it (the one that lets the gateway complete the unit), minus loopback's own
cost on the ingest side (the median of the publisher's loopback probe in the same window).

Matching: the gateway keeps the publisher's RTP timestamps as the frames' pts and adds one
random origin per viewer (``DirectRtpWriter.timestamp_origin``), so for one viewer
``viewer timestamp - publisher timestamp`` is a constant. It is found as the offset under
which most of the viewer's units have a publisher unit with the same number of packets
(both sides packetize the same access unit with aiortc's H.264 packetizer) that was sent
before it arrived; between offsets that match as many, the one with the smallest latencies
(an offset one GOP off matches as well, a second later).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .procs import Child, fan_out

CANDIDATE_WINDOW_NS = 2_000_000_000  # publisher units sent up to 2 s before a viewer's unit
CANDIDATE_UNITS = 8  # of each viewer's first units, to draw offsets from
MASK = 0xFFFFFFFF


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1] of unsorted ``values``."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def summary(values: Sequence[float], qs: Iterable[tuple[str, float]]) -> dict[str, float]:
    if not values:
        return {}
    return {name: percentile(values, q) for name, q in qs}


RELAY_QS = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
# Units of more packets than this are reported apart (the clip's keyframes: 30-50 packets,
# one unit in 30; its other units: 3-12).
LARGE_UNIT_PACKETS = 20
JOIN_QS = (("p50", 0.50), ("p95", 0.95), ("max", 1.0))


Unit = Sequence[int]  # [rtp timestamp, first stamp, last stamp, packets]
Pair = tuple[Unit, Unit]  # (sent, received)


def match_units(sent: dict[int, Unit], received: Sequence[Unit]) -> tuple[int | None, list[Pair]]:
    """(offset, [(sent unit, received unit)]) of one viewer's ``received`` units against the
    publisher's ``sent`` units (keyed by timestamp). (None, []) when no offset matches any."""
    if not received or not sent:
        return None, []
    by_time = sorted(sent.values(), key=lambda u: u[2])
    candidates: set[int] = set()
    for unit in received[:CANDIDATE_UNITS]:
        for s in by_time:
            if unit[2] - CANDIDATE_WINDOW_NS <= s[2] <= unit[2]:
                candidates.add((unit[0] - s[0]) & MASK)
    best: tuple[int, float, int] | None = None  # (-matches, median latency, offset)
    best_pairs: list[Pair] = []
    for offset in candidates:
        pairs = []
        for unit in received:
            s = sent.get((unit[0] - offset) & MASK)
            if s is not None and s[3] == unit[3] and unit[2] >= s[2]:
                pairs.append((s, unit))
        if not pairs:
            continue
        key = (-len(pairs), statistics.median(r[2] - s[2] for s, r in pairs), offset)
        if best is None or key < best:
            best, best_pairs = key, pairs
    if best is None:
        return None, []
    return best[2], best_pairs


def next_first_stamps(sent: dict[int, Unit]) -> dict[int, int]:
    """Per publisher unit (timestamp), the first stamp of the unit sent after it: when a
    jitter buffer that completes a frame only on the next frame's first packet (aiortc's
    own) lets the gateway have it."""
    order = sorted(sent.values(), key=lambda u: u[1])
    return {a[0]: b[1] for a, b in zip(order, order[1:], strict=False)}


@dataclass
class LatencyStep:
    """What one window measured (times in ms, loopback in µs)."""

    sampled: int = 0  # sampled viewers
    sampled_by_worker: list[int] = field(default_factory=list)  # per viewer process
    units: int = 0  # (viewer, access unit) pairs matched
    unmatched: int = 0  # units a sampled viewer got that matched none the publisher sent
    loopback_us: dict[str, float] = field(default_factory=dict)  # p50, p95, max
    relay_ms: dict[str, float] = field(default_factory=dict)  # p50, p95, p99, max
    # the same for the units of at most / more than LARGE_UNIT_PACKETS packets
    small_units_ms: dict[str, float] = field(default_factory=dict)
    large_units_ms: dict[str, float] = field(default_factory=dict)
    large_units: int = 0
    large_sent_ms: dict[str, float] = field(default_factory=dict)  # publisher's 1st -> last packet
    # the same from the next unit's first packet (once aiortc's jitter buffer gives the unit up)
    released_ms: dict[str, float] = field(default_factory=dict)
    hold_ms: dict[str, float] = field(default_factory=dict)  # that wait: next first - last sent
    before_next: int = 0  # units a viewer had before the next one was sent (0 if aiortc holds)
    last_ms: dict[str, float] = field(default_factory=dict)  # the sampled viewers of this step
    last_sampled: int = 0
    by_join_order_p50_ms: list[float] = field(default_factory=list)  # per sampled viewer
    user_stamps: int = 0  # packets stamped at the read, for want of a kernel stamp
    joins: int = 0  # viewers that joined in this step
    joins_missing: int = 0  # of them, no keyframe (or no PLAYING) seen
    join_first_ms: dict[str, float] = field(default_factory=dict)  # PLAYING -> keyframe's 1st packet
    join_complete_ms: dict[str, float] = field(default_factory=dict)  # -> its last packet
    # PLAYING -> the keyframe's first packet, both as the viewer's event loop read them
    join_read_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None


class LatencyMeter:
    """Drives the stamping in the publisher and the viewer workers for one gateway phase."""

    def __init__(self, publisher: Child, workers: Sequence[Child]) -> None:
        self.publisher = publisher
        self.workers = list(workers)
        self._seen: set[tuple[int, int]] = set()  # (worker, viewer) sampled in earlier steps

    def start(self) -> None:
        # The publisher records first and stops last, so that every unit a viewer recorded
        # was recorded when sent (only units the viewers' own start or stop cut can fail to match).
        self.publisher.request("latency_start", timeout=30.0)
        fan_out(self.workers, "latency_start", timeout=30.0)

    def stop(self) -> LatencyStep:
        replies = fan_out(self.workers, "latency_stop", timeout=60.0)
        return self.compute(self.publisher.request("latency_stop", timeout=60.0), replies)

    def compute(self, published: dict[str, Any], workers: Sequence[dict[str, Any]]) -> LatencyStep:
        step = LatencyStep()
        loopback = published.get("loopback_ns") or [0]
        step.loopback_us = {k: v / 1000 for k, v in summary(loopback, JOIN_QS).items()}
        base = statistics.median(loopback)
        sent = {int(u[0]): u for u in published.get("units", [])}
        released_at = next_first_stamps(sent)
        relay: list[float] = []
        small: list[float] = []
        large: list[float] = []
        released: list[float] = []
        hold: list[float] = []
        last: list[float] = []
        per_viewer: list[tuple[int, float]] = []
        for w, reply in enumerate(workers):
            step.sampled_by_worker.append(len(reply.get("viewers", [])))
            for viewer in reply.get("viewers", []):
                step.sampled += 1
                step.user_stamps += int(viewer.get("fallbacks", 0))
                units = viewer.get("units", [])
                _, pairs = match_units(sent, units)
                step.units += len(pairs)
                step.unmatched += len(units) - len(pairs)
                ms = [(r[2] - s[2] - base) / 1e6 for s, r in pairs]
                relay.extend(ms)
                for (s, _), value in zip(pairs, ms, strict=True):
                    (large if s[3] > LARGE_UNIT_PACKETS else small).append(value)
                for s, r in pairs:
                    at = released_at.get(s[0])
                    if at is None:
                        continue
                    if at > r[2]:
                        step.before_next += 1
                    released.append((r[2] - at - base) / 1e6)
                    hold.append((at - s[2]) / 1e6)
                key = (w, int(viewer["id"]))
                if key not in self._seen:
                    self._seen.add(key)
                    step.last_sampled += 1
                    last.extend(ms)
                if ms:
                    per_viewer.append((int(viewer.get("playing") or 0), statistics.median(ms)))
        step.relay_ms = summary(relay, RELAY_QS)
        step.small_units_ms = summary(small, RELAY_QS)
        step.large_units_ms = summary(large, RELAY_QS)
        step.large_units = len(large)
        spans = [(u[2] - u[1]) / 1e6 for u in sent.values() if u[3] > LARGE_UNIT_PACKETS]
        step.large_sent_ms = summary(spans, JOIN_QS)
        step.released_ms = summary(released, RELAY_QS)
        step.hold_ms = summary(hold, JOIN_QS)
        step.last_ms = summary(last, RELAY_QS)
        step.by_join_order_p50_ms = [round(p50, 2) for _, p50 in sorted(per_viewer)]
        first: list[float] = []
        complete: list[float] = []
        read: list[float] = []
        for reply in workers:
            for join in reply.get("joins", []):
                step.joins += 1
                playing, key_first, key_last = (join.get(k) for k in ("playing", "key_first", "key_last"))
                if playing is None or key_first is None or key_last is None:
                    step.joins_missing += 1
                    continue
                first.append((key_first - playing) / 1e6)
                complete.append((key_last - playing) / 1e6)
                if join.get("key_read") is not None:
                    read.append((join["key_read"] - playing) / 1e6)
        step.join_first_ms = summary(first, JOIN_QS)
        step.join_complete_ms = summary(complete, JOIN_QS)
        step.join_read_ms = summary(read, JOIN_QS)
        if not step.units:
            step.error = "no access unit matched"
        return step


def _fmt(values: dict[str, float], digits: int = 2) -> str:
    return " / ".join(f"{k} {v:.{digits}f}" for k, v in values.items()) if values else "-"


def report_lines(step: LatencyStep | None) -> list[str]:
    """A step's latency lines for the report (none when it was not measured)."""
    if step is None:
        return []
    lines = [
        f"       relay-added latency, ms (ingest packet -> viewer's packet on the wire, per access "
        f"unit; {step.sampled} sampled viewers, {step.units} units, loopback "
        f"{step.loopback_us.get('p50', 0):.0f} us subtracted): {_fmt(step.relay_ms)}",
        f"         the {step.last_sampled} sampled viewers attached last: {_fmt(step.last_ms)}",
        f"         units of <= {LARGE_UNIT_PACKETS} packets: {_fmt(step.small_units_ms)}; larger "
        f"({step.large_units}, the keyframes): {_fmt(step.large_units_ms)} (the publisher sent "
        f"their packets over {_fmt(step.large_sent_ms)})",
        *(
            # A gateway whose jitter buffer completes a frame only on the next frame's first
            # packet (aiortc's own, before early_frames): the delay apart from that wait.
            [
                f"         from the next unit's first packet (the gateway held frames until then: "
                f"{_fmt(step.hold_ms)}): {_fmt(step.released_ms)}"
            ]
            if step.before_next * 2 < step.units
            else []
        ),
        "         median per sampled viewer, in join order: "
        + " ".join(f"{v:.1f}" for v in step.by_join_order_p50_ms),
        f"       first keyframe after PLAYING, ms ({step.joins} viewers joining the live stream): "
        f"first packet {_fmt(step.join_first_ms, 1)}; complete {_fmt(step.join_complete_ms, 1)}",
        f"         (negative: before PLAYING) first packet as the viewer's loop read it, after it read "
        f"PLAYING: {_fmt(step.join_read_ms, 1)}",
    ]
    notes = []
    if step.unmatched:
        notes.append(f"{step.unmatched} units unmatched (cut by the window's edges, or a packet lost)")
    if step.before_next:
        notes.append(f"{step.before_next} units reached a viewer before the next unit was sent")
    if step.user_stamps:
        notes.append(f"{step.user_stamps} packets without a kernel stamp")
    if step.joins_missing:
        notes.append(f"{step.joins_missing} joining viewers without a keyframe seen")
    if step.error:
        notes.append(step.error)
    if notes:
        lines.append("         note: " + "; ".join(notes))
    return lines
