"""The telemetry benchmark's send schedule (scripts/bench/benchlib/devices.py): every sender
at its rate, interleaved, and a generator that fell behind skips (and counts) rather than
bursting."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))

from benchlib.devices import MAX_BEHIND, Schedule


@given(
    count=st.integers(1, 200),
    rate=st.sampled_from([0.5, 1.0, 10.0, 30.0]),
    tick=st.sampled_from([0.001, 0.005, 0.02]),
)
def test_each_sender_at_its_rate_when_on_time(count: int, rate: float, tick: float) -> None:
    schedule = Schedule(count, rate, start=100.0)
    seconds = 4
    sent: Counter[int] = Counter()
    steps = round(seconds / tick)
    for step in range(1, steps + 1):
        sent.update(schedule.due(100.0 + step * tick))
    assert schedule.skipped == 0
    total = int(count * rate * seconds + 1e-6)
    assert sum(sent.values()) == total
    # interleaved: no sender is more than one message ahead of another
    per_sender = [sent[k] for k in range(count)]
    assert max(per_sender) - min(per_sender) <= 1


def test_behind_schedule_skips_instead_of_bursting() -> None:
    schedule = Schedule(100, 10.0, start=0.0)
    assert len(schedule.due(0.1)) == 100
    late = schedule.due(2.1)  # 2 s without a tick
    assert len(late) == int(1000 * MAX_BEHIND) + 1  # only what fell due in the last MAX_BEHIND
    assert schedule.skipped + len(late) == 2000
