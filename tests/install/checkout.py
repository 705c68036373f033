"""Helpers of the install tests: copies of the checkout, a new user's environment, and
commands run in a process group of their own, so every process they start can be stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import ROOT

# What a new user's login shell has on a Debian machine (no pyenv, no ~/.local/bin).
NEW_USER_PATH = "/usr/local/bin:/usr/bin:/bin"
DEBIAN_PYTHON = Path("/usr/bin/python3")
# Kept between runs, so making a venv does not download every wheel again. It is only pip's
# cache; a new user without it gets the same packages, more slowly.
PIP_CACHE = Path.home() / ".cache" / "skyrelay-tests" / "pip"


def copy_tracked(dst: Path) -> Path:
    """The files git tracks, as they are in the working tree (with their modes), in ``dst``."""
    names = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


def new_user_env(home: Path, **extra: str) -> dict[str, str]:
    """`env -i HOME=<home> PATH=/usr/local/bin:/usr/bin:/bin`, plus pip's cache and ``extra``."""
    home.mkdir(parents=True, exist_ok=True)
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    return {"HOME": str(home), "PATH": NEW_USER_PATH, "PIP_CACHE_DIR": str(PIP_CACHE), **extra}


def debian_python_ok() -> bool:
    """Debian's own python3 is there and is 3.11 or newer."""
    if not DEBIAN_PYTHON.exists():
        return False
    check = [str(DEBIAN_PYTHON), "-c", "import sys; sys.exit(sys.version_info < (3, 11))"]
    return subprocess.run(check, capture_output=True).returncode == 0


@contextmanager
def process_group(cmd: list[str], **popen: object) -> Iterator[subprocess.Popen[str]]:
    """``cmd`` as the leader of a new session; at exit the whole group gets SIGTERM, then
    SIGKILL if it is still there (a script's children: venv, pip, the gateway)."""
    proc = subprocess.Popen(cmd, start_new_session=True, text=True, **popen)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; what it started may not be.
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
