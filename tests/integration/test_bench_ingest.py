"""`scripts/bench/ingest` in a tiny configuration, so that the benchmark cannot rot: one
stream of every ingest kind, against a baseline of HEAD run from a temporary worktree. The
report has a row per kind with the clip's frame rate delivered to both gateways, every
process it started is gone, and so is the worktree. No CPU figure is checked (that is the
benchmark's job)."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.integration.test_bench_telemetry import ROOT, processes_with, run_tiny

SCRIPT = ROOT / "scripts" / "bench" / "ingest"
KINDS = ("webrtc", "whip", "rtmp", "rtsp-push", "rtsp-pull")

pytestmark = pytest.mark.timeout(300)


def worktrees() -> set[str]:
    """The paths of the repository's worktrees (others' HEADs may move meanwhile)."""
    listing = subprocess.run(
        ["git", "worktree", "list", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return {line.split(" ", 1)[1] for line in listing.splitlines() if line.startswith("worktree ")}


TINY_KINDS = ("webrtc", "rtmp")


def test_tiny_run() -> None:
    marker = f"bench-test-{uuid.uuid4().hex}"
    before = worktrees()
    # Two kinds keep the suite short: a WebRTC publish (the fast receive path) and RTMP (ffmpeg).
    args = ["--baseline", "HEAD", "--streams", "1", "--kinds", ",".join(TINY_KINDS)]
    done = run_tiny(SCRIPT, [*args, "--window", "1", "--settle", "0.5", "--rounds", "1"], marker)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    rows = {
        line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in ([k] for k in KINDS)
    }
    for kind in TINY_KINDS:
        row = rows.get(kind)
        assert row is not None, out
        # kind K | baseline-ms fps | new-ms fps | ratio
        assert row[1] == "1", row
        baseline_fps, new_fps = float(row[4]), float(row[7])
        assert 20 < baseline_fps < 40 and 20 < new_fps < 40, row  # the 30 fps clip got through
    assert "new/baseline per ingest kind (K=1): webrtc" in out
    assert processes_with(marker) == []
    assert not {path for path in worktrees() - before if "skyrelay-baseline-" in path}
