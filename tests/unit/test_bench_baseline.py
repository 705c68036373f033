"""The fan-out benchmark's baseline phase (scripts/bench/benchlib/baseline.py): a checkout of
another commit in a temporary worktree, removed afterwards, and the gateway phase's command
cut down to the flags that commit's gateway knows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))

from benchlib.baseline import Baseline, adapt_command

ROOT = Path(__file__).resolve().parents[2]


def test_unknown_flags_are_left_out_with_their_values() -> None:
    cmd = ["python", "-m", "gateway", "serve", "--host", "127.0.0.1", "--new-flag", "0", "--ws-port", "9"]
    kept, dropped = adapt_command(cmd, {"--host", "--ws-port"})
    assert kept == ["python", "-m", "gateway", "serve", "--host", "127.0.0.1", "--ws-port", "9"]
    assert dropped == ["--new-flag"]


def test_a_checkout_of_a_commit_lives_only_while_used(tmp_path: Path) -> None:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    with Baseline(ROOT, commit, tmp_path) as baseline:
        assert (baseline.path / "gateway" / "__main__.py").exists()
        flags = baseline.serve_flags()
        assert {"--ws-port", "--http-port", "--ice-address"} <= flags
        cmd = baseline.command(["python", "-m", "gateway", "serve", "--ws-port", "1", "--bogus-x", "2"])
        assert cmd == ["python", "-m", "gateway", "serve", "--ws-port", "1"]
        assert baseline.dropped == ["--bogus-x"]
        env = baseline.environment({"PYTHONPATH": "/elsewhere"})
        assert env["PYTHONPATH"] == f"{baseline.path}:/elsewhere"
    assert not baseline.path.exists()
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list"], check=True, capture_output=True, text=True
    ).stdout
    assert str(baseline.path) not in listed
