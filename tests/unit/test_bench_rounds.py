"""The fan-out benchmark's rounds (scripts/bench/benchlib/orchestrate.py, --rounds K): the
phases measured K times, every other round in the reverse order, and per compared pair and
viewer count the ratio of each round and their median."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))

from benchlib.orchestrate import Phase, Step, parse_args, report_rounds


def phase(label: str, number: int, ms_per_viewer_s: dict[int, float]) -> Phase:
    steps = [
        Step(viewers=n, window_s=10, cpu_ms=ms * 10 * n, rss_kib=0, viewer_cpu_pct=0, received=[1], lost=[0])
        for n, ms in ms_per_viewer_s.items()
    ]
    return Phase(label, round=number, steps=steps)


def test_the_median_of_each_rounds_ratio_per_pair_and_count() -> None:
    args = parse_args(["--only", "gateway,baseline", "--baseline", "abc", "--rounds", "3"])
    phases = [
        phase("gateway", 1, {40: 2.0, 100: 1.0}),
        phase("baseline", 1, {40: 4.0, 100: 4.0}),
        phase("baseline", 2, {40: 5.0, 100: 2.0}),
        phase("gateway", 2, {40: 3.0, 100: 1.0}),
        phase("gateway", 3, {40: 2.0, 100: 1.5}),
        phase("baseline", 3, {40: 5.0, 100: 3.0}),
    ]
    text = report_rounds(phases, args, packets_per_s=1.0)
    assert text.count("######## round") == 3
    assert "  N=40   0.50 0.60 0.40   median 0.50" in text
    assert "  N=100  0.25 0.50 0.50   median 0.50" in text


def test_rounds_must_be_positive() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--rounds", "0"])
