"""CPU caps for the workers-scaling bench: each gateway worker in a cgroup of its own with a
CPU quota, so that K workers get K equal slices of the machine and the load generator fits
beside them.

On two cores the viewers and the publisher need CPU too, so `--workers 2` cannot have a
core per worker; with each worker capped at, say, half a core, K workers have K half-cores
to themselves and the rest of the machine is the load generator's. What the ratio then
says is how the held viewers grow with the CPU the workers get, which is what "a core per
worker" means, scaled down. The kernel enforces the quota (CFS bandwidth control) per
period, here 20 ms, so a worker over its quota waits at most the rest of a period.

Both cgroup versions: v1's `cpu` controller (`cpu.cfs_quota_us`) and v2's `cpu.max`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

PERIOD_US = 20_000
V1_BASE = Path("/sys/fs/cgroup/cpu")
V2_BASE = Path("/sys/fs/cgroup")


class CapError(RuntimeError):
    """The machine does not let this process make CPU-capped cgroups."""


def _write(path: Path, text: str) -> None:
    path.write_text(text)


@dataclass
class CpuCaps:
    cores: float  # each group's quota, in cores
    base: Path  # the controller's root (v1: the cpu hierarchy; v2: the unified one)
    version: int
    root: Path  # this bench's group, under base
    groups: dict[str, Path] = field(default_factory=dict)  # name -> group
    pids: dict[int, str] = field(default_factory=dict)  # pid -> its group's name

    @classmethod
    def create(cls, cores: float) -> CpuCaps:
        if not 0.0 < cores <= (os.cpu_count() or 1):
            raise CapError(f"a cap of {cores:g} cores is not between 0 and the machine's CPUs")
        if (V1_BASE / "cpu.cfs_quota_us").exists():
            base, version = V1_BASE, 1
        elif "cpu" in _read(V2_BASE / "cgroup.controllers").split():
            base, version = V2_BASE, 2
        else:
            raise CapError("no writable cgroup cpu controller (neither v1 cpu.cfs_quota_us nor v2 cpu.max)")
        root = base / f"skyrelay-bench-{os.getpid()}-{time.monotonic_ns()}"
        try:
            if version == 2:
                _write(base / "cgroup.subtree_control", "+cpu")
            root.mkdir()
            if version == 2:
                _write(root / "cgroup.subtree_control", "+cpu")
        except OSError as exc:
            with contextlib.suppress(OSError):
                root.rmdir()
            raise CapError(f"cannot make a CPU-capped cgroup under {base} (root is needed): {exc}") from exc
        return cls(cores, base, version, root)

    def cap(self, pid: int, name: str) -> None:
        """Move `pid` (every thread of it) into the group `name`, made with the quota."""
        group = self.groups.get(name)
        if group is None:
            group = self.root / name
            group.mkdir()
            quota = max(1000, round(self.cores * PERIOD_US))
            if self.version == 1:
                _write(group / "cpu.cfs_period_us", str(PERIOD_US))
                _write(group / "cpu.cfs_quota_us", str(quota))
            else:
                _write(group / "cpu.max", f"{quota} {PERIOD_US}")
            self.groups[name] = group
        _write(group / "cgroup.procs", str(pid))
        self.pids[pid] = name

    def throttled_s(self) -> dict[str, float]:
        """Seconds each group has been held back by its quota so far."""
        out: dict[str, float] = {}
        for name, group in self.groups.items():
            stat = dict(line.split() for line in _read(group / "cpu.stat").splitlines() if line.strip())
            if self.version == 1:
                out[name] = int(stat.get("throttled_time", 0)) / 1e9
            else:
                out[name] = int(stat.get("throttled_usec", 0)) / 1e6
        return out

    def close(self) -> None:
        """Remove the groups; a process still in one goes back to the controller's root."""
        for group in [*self.groups.values(), self.root]:
            for pid in _read(group / "cgroup.procs").split():
                with contextlib.suppress(OSError):
                    _write(self.base / "cgroup.procs", pid)
            for _ in range(50):  # a process just gone may hold its group a moment longer
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
        self.groups.clear()
        self.pids.clear()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
