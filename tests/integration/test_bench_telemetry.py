"""`scripts/bench/telemetry` in a tiny configuration, so that the benchmark cannot rot: three
devices, two viewers of one drone camera, one-second windows. What it must show holds at any
size: the generator's osd reach the gateway, viewers that opted out get no telemetry and the
others do, nothing is rate-limited, and every process it started is gone when it exits.
No CPU figure is checked (that is the benchmark's job, not a test's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench" / "telemetry"

pytestmark = pytest.mark.timeout(300)


def processes_with(marker: str) -> list[int]:
    """Processes (of this user) whose environment holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if marker.encode() in environ:
                found.append(int(entry))
    return found


def run_tiny(script: Path, args: list[str], marker: str) -> subprocess.CompletedProcess[str]:
    """Run a benchmark, every process it starts marked with ``marker`` in its environment."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env={**os.environ, "BENCH_TEST_MARK": marker},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )


def assert_none_left(marker: str) -> None:
    left = processes_with(marker)
    deadline = time.monotonic() + 10  # a process killed a moment ago may still be reaped
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = processes_with(marker)
    assert left == [], "the benchmark left processes behind"


def test_tiny_run(tmp_path: Path) -> None:
    marker = f"bench-test-{uuid.uuid4().hex}"
    out = tmp_path / "result.json"
    args = ["--devices", "3", "--viewers", "2", "--cameras", "1", "--rate", "10", "--repeat", "1"]
    args += ["--seconds", "1", "--settle", "0.5", "--viewer-procs", "1", "--json", str(out)]
    done = run_tiny(SCRIPT, args, marker)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "intake:" in done.stdout and "delivery:" in done.stdout, done.stdout
        result = json.loads(out.read_text())
        assert result["error"] is None
        windows = {w["label"]: w for w in result["windows"]}
        assert list(windows) == ["A", "B1", "C1", "A2"]
        assert windows["A"]["aircraft_osd"] == windows["A2"]["aircraft_osd"] == 0
        for label in ("B1", "C1"):
            assert windows[label]["aircraft_osd"] > 0
            assert windows[label]["samples"] > 0
        assert windows["B1"]["telemetry"] == [0, 0]  # opted out
        assert all(n > 0 for n in windows["C1"]["telemetry"])
        assert all(n > 0 for w in windows.values() for n in w["rtp"])  # the video kept flowing
        assert sum(w["rejected"] + w["unknown"] + w["skipped"] for w in windows.values()) == 0
        assert {"us_per_osd", "us_per_delivered", "c_over_a"} <= set(result["results"])
    finally:
        assert_none_left(marker)
