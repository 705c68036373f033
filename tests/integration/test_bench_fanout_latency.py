"""`scripts/bench/fanout --only gateway` in a tiny configuration, for its latency figures: two
viewer processes, 2 then 6 viewers, two-second windows. Each step must report the relay-added
latency (p50 <= p95 <= p99 <= max, from access units matched between the publisher and
viewers sampled in both processes) and the first keyframe after PLAYING for every viewer that
joined in that step; the bench's other numbers stay there. No figure's size is checked (that
is the benchmark's job, not a test's)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.integration.test_bench_telemetry import ROOT, assert_none_left, run_tiny

SCRIPT = ROOT / "scripts" / "bench" / "fanout"

pytestmark = pytest.mark.timeout(300)


def ordered(figures: dict[str, float], names: tuple[str, ...]) -> bool:
    return list(figures) == list(names) and [figures[n] for n in names] == sorted(figures.values())


@pytest.mark.parametrize("lean", [False, True], ids=["counting", "lean"])
def test_tiny_run_reports_latency(tmp_path: Path, lean: bool) -> None:
    """With ``--lean-viewers`` the viewers the latency samples stay counting ones, the others
    count headers off the socket: the same figures come out, every viewer counted."""
    marker = f"bench-test-{uuid.uuid4().hex}"
    out = tmp_path / "result.json"
    args = ["--only", "gateway", "--viewers", "2,6", "--seconds", "2", "--settle", "0.5"]
    args += ["--viewer-procs", "2", "--json", str(out), *(["--lean-viewers"] if lean else [])]
    done = run_tiny(SCRIPT, args, marker)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert ("lean (latency-sampled ones counting) viewer processes" in done.stdout) is lean
        assert "relay-added latency" in done.stdout and "first keyframe after PLAYING" in done.stdout
        (phase,) = json.loads(out.read_text())["phases"]
        assert phase["label"] == "gateway" and phase["error"] is None
        assert [s["viewers"] for s in phase["steps"]] == [2, 6]
        for step, joined in zip(phase["steps"], (2, 4), strict=True):
            assert step["cpu_ms"] > 0 and len(step["received"]) == step["viewers"]  # still there
            assert min(step["received"]) > 0
            latency = step["latency"]
            assert latency["error"] is None
            assert latency["units"] > 0
            assert all(n > 0 for n in latency["sampled_by_worker"])  # spread over both processes
            assert ordered(latency["relay_ms"], ("p50", "p95", "p99", "max"))
            assert ordered(latency["released_ms"], ("p50", "p95", "p99", "max"))
            assert latency["loopback_us"]["p50"] > 0
            assert latency["joins"] == joined and latency["joins_missing"] == 0
            assert ordered(latency["join_first_ms"], ("p50", "p95", "max"))
            assert ordered(latency["join_complete_ms"], ("p50", "p95", "max"))
            assert ordered(latency["join_read_ms"], ("p50", "p95", "max"))
        assert phase["steps"][1]["latency"]["last_sampled"] > 0  # the viewers attached last
    finally:
        assert_none_left(marker)
