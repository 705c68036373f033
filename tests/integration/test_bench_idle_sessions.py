"""`scripts/bench/idle_sessions` in a tiny configuration, so that the benchmark cannot rot:
50 then 100 sessions open, the gateway closes none, and every process it started is gone
when it exits. No memory or CPU figure is checked (that is the benchmark's job)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from tests.integration.test_bench_telemetry import ROOT, processes_with

SCRIPT = ROOT / "scripts" / "bench" / "idle_sessions"

pytestmark = pytest.mark.timeout(300)


def test_tiny_run() -> None:
    marker = f"bench-test-{uuid.uuid4().hex}"
    env = {**os.environ, "BENCH_TEST_MARK": marker}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "50,100", "--window", "1", "--client-procs", "1"]
        + ["--ping-interval", "1"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    rows = {
        line.split()[0]: line.split()
        for line in done.stdout.decode().splitlines()
        if line[:8].strip().isdigit()
    }
    assert set(rows) == {"0", "50", "100"}, done.stdout.decode()
    assert rows["100"][-1] == "0", "the gateway closed no idle session"
    assert processes_with(marker) == []
