"""`scripts/bench/fanout --scaling 1,2` in a tiny configuration, so that the workers-scaling
measurement cannot rot: both worker counts measured with lean viewers, a count held for
each and their ratio in the report, and every process it started (the gateway's workers
too) gone when it exits. No delivery share or CPU figure is checked (that is the
benchmark's job)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.test_bench_telemetry import ROOT, processes_with

SCRIPT = ROOT / "scripts" / "bench" / "fanout"

pytestmark = pytest.mark.timeout(300)


def test_tiny_run(tmp_path: Path) -> None:
    marker = f"bench-test-{uuid.uuid4().hex}"
    env = {**os.environ, "BENCH_TEST_MARK": marker}
    out = tmp_path / "result.json"
    args = ["--scaling", "1,2", "--start", "2", "--step", "2", "--max-viewers", "4"]
    args += ["--seconds", "2", "--settle", "1", "--viewer-procs", "1", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=240,
    )
    report = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-3000:]

    held = {int(k): int(n) for k, n in re.findall(r"^  --workers (\d+): (\d+) viewers", report, re.M)}
    assert set(held) == {1, 2}, report
    ratio = re.search(r"^ratio --workers 2 / --workers 1: (\S+) \((\d+) / (\d+)\)$", report, re.M)
    assert ratio is not None, report
    assert (int(ratio[2]), int(ratio[3])) == (held[2], held[1])
    if held[1]:
        assert math.isclose(float(ratio[1]), held[2] / held[1], abs_tol=0.005)

    phases = json.loads(out.read_text())["phases"]
    assert [p["workers"] for p in phases] == [1, 2]
    for phase in phases:
        assert phase["error"] is None
        first = phase["steps"][0]
        assert first["error"] is None, first
        assert len(first["received"]) == 2 and min(first["received"]) > 0, "lean viewers count packets"
        # one process with one worker; else the control process and each worker
        assert len(first["process_cores"]) == (1 if phase["workers"] == 1 else 1 + phase["workers"])

    for _ in range(50):  # the gateway's workers leave once the control process is gone
        if not processes_with(marker):
            break
        time.sleep(0.2)
    assert processes_with(marker) == []
