"""`scripts/bench/loop_wake` in a tiny configuration, so that it cannot rot: both receivers
report their percentiles and the ratio line is there. No figure's size is checked."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.integration.test_bench_telemetry import ROOT

pytestmark = pytest.mark.timeout(60)


def test_tiny_run() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench" / "loop_wake"), "--count", "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for kind in ("blocking", "asyncio"):
        assert re.search(rf"{kind}\s+p50\s+[\d.]+ / p90\s+[\d.]+ / p99\s+[\d.]+ us", done.stdout), done.stdout
    assert re.search(r"asyncio / blocking, p50: [\d.]+", done.stdout)
