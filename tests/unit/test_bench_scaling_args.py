"""`scripts/bench/fanout --scaling`'s arguments: a CPU cap it cannot give is refused at once,
with a clear message, before any process starts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))

from benchlib.scaling import parse_args


@pytest.mark.parametrize("cap", ["0", "-0.5", str((os.cpu_count() or 1) + 1)])
def test_a_cap_outside_the_machine_is_refused(cap: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--scaling", "1,2", "--cores-per-worker", cap])
    assert exit_.value.code == 2
    assert "--cores-per-worker must be above 0" in capsys.readouterr().err


def test_a_cap_within_the_machine_is_taken() -> None:
    assert parse_args(["--scaling", "1,2", "--cores-per-worker", "0.4"]).cores_per_worker == 0.4
    assert parse_args(["--scaling", "1,2"]).cores_per_worker is None
