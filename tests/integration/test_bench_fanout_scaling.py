"""`scripts/bench/fanout --scaling 1,2` in a tiny configuration, so that the workers-scaling
measurement cannot rot: both worker counts measured with lean viewers, a count held for
each and their ratio in the report, and every process it started (the gateway's workers
too) gone when it exits; with ``--cores-per-worker`` (where this machine lets root make
CPU-capped cgroups) each worker in a group of its own, and the groups gone after. No
delivery share or CPU figure is checked (that is the benchmark's job)."""

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
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from benchlib.cpucap import CapError, CpuCaps  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def caps_or_skip(cores: float) -> CpuCaps:
    try:
        return CpuCaps.create(cores)
    except CapError as exc:
        pytest.skip(f"no CPU-capped cgroups here: {exc}")


def bench_groups() -> set[str]:
    caps = caps_or_skip(1.0)
    caps.close()
    return {p.name for p in caps.base.iterdir() if p.name.startswith("skyrelay-bench-")}


def test_a_capped_process_is_held_to_its_quota_and_the_groups_go() -> None:
    """A process that spins, capped at a tenth of a core, is throttled by the kernel, and
    `close` removes the groups (and puts a process still in one back)."""
    caps = caps_or_skip(0.1)
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        caps.cap(spin.pid, "w0")
        group = caps.groups["w0"]
        assert str(spin.pid) in (group / "cgroup.procs").read_text().split()
        quota = (group / ("cpu.cfs_quota_us" if caps.version == 1 else "cpu.max")).read_text().split()[0]
        assert int(quota) == 2000  # a tenth of the 20 ms period
        deadline = time.monotonic() + 30.0
        while caps.throttled_s()["w0"] == 0.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert caps.throttled_s()["w0"] > 0.0
        caps.close()  # with the process still in its group
        assert not group.exists() and not caps.root.exists()
        assert spin.poll() is None
    finally:
        spin.kill()
        spin.wait()
        caps.close()


@pytest.mark.parametrize("capped", [False, True], ids=["uncapped", "capped"])
def test_tiny_run(tmp_path: Path, capped: bool) -> None:
    groups_before = bench_groups() if capped else set()
    marker = f"bench-test-{uuid.uuid4().hex}"
    env = {**os.environ, "BENCH_TEST_MARK": marker}
    out = tmp_path / "result.json"
    args = ["--scaling", "1,2", "--start", "2", "--step", "2", "--max-viewers", "4"]
    args += ["--seconds", "2", "--settle", "1", "--viewer-procs", "1", "--json", str(out)]
    if capped:
        args += ["--cores-per-worker", "0.5"]
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
        # capped: each worker (the one process with one) in a group of its own
        assert len(first["throttled"]) == (phase["workers"] if capped else 0), first
    assert ("capped at 0.5 core" in report) == capped, report

    for _ in range(50):  # the gateway's workers leave once the control process is gone
        if not processes_with(marker):
            break
        time.sleep(0.2)
    assert processes_with(marker) == []
    if capped:
        assert bench_groups() == groups_before, "the bench removed its cgroups"
