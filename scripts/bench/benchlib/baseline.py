"""The ``baseline`` phase's gateway: skyrelay at another commit, in the same run.

Absolute CPU times drift 1.5x between days on these machines, so "today's gateway" is
measured next to the one under test: a temporary detached git worktree of the commit
(removed on exit), started like the ``gateway`` phase. Flags its command line does not
know (an older gateway has fewer) are left out and named in the report.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

_FLAG = re.compile(r"(--[a-z][a-z0-9-]*)")


class Baseline:
    """A checkout of ``commit`` of the repository at ``repo`` under ``parent``."""

    def __init__(self, repo: Path, commit: str, parent: Path) -> None:
        self.repo = repo
        self.commit = commit
        self.path = parent / f"baseline-{commit}"
        self.dropped: list[str] = []
        self._added = False

    def __enter__(self) -> Baseline:
        subprocess.run(
            ["git", "-C", str(self.repo), "worktree", "add", "--detach", str(self.path), self.commit],
            check=True,
            capture_output=True,
        )
        self._added = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._added:
            return
        self._added = False
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            subprocess.run(
                ["git", "-C", str(self.repo), "worktree", "remove", "--force", str(self.path)],
                check=True,
                capture_output=True,
            )

    def describe(self) -> str:
        """The commit's short hash and subject (cut)."""
        out = subprocess.run(
            ["git", "-C", str(self.repo), "log", "--format=%h %<(60,trunc)%s", "-1", self.commit],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def serve_flags(self) -> set[str]:
        """The flags ``gateway serve`` of this checkout accepts."""
        out = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--help"],
            cwd=self.path,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return set(_FLAG.findall(out.stdout))

    def command(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` (``python -m gateway serve --flag value ...``) without the flags this
        checkout does not know (each with its value); what was left out goes to `dropped`."""
        known = self.serve_flags()
        kept, self.dropped = adapt_command(cmd, known)
        return kept

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        """The gateway phase's environment for this checkout: its own code first on the path."""
        paths = [str(self.path)] + [p for p in env.get("PYTHONPATH", "").split(":") if p]
        return {**env, "PYTHONPATH": ":".join(paths)}


def adapt_command(cmd: Sequence[str], known: set[str]) -> tuple[list[str], list[str]]:
    """(``cmd`` without the ``--flag value`` pairs whose flag is not in ``known``, the
    dropped flags). Every flag of the bench's gateway command takes one value."""
    kept: list[str] = []
    dropped: list[str] = []
    items = list(cmd)
    index = 0
    while index < len(items):
        item = items[index]
        if item.startswith("--") and item not in known:
            dropped.append(item)
            index += 2
            continue
        kept.append(item)
        index += 1
    return kept, dropped
