"""Waiting for, and reading from, a gateway started by an install test."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_healthy(http_url: str, proc: subprocess.Popen[str], timeout: float, log: Path) -> None:
    """Until ``/healthz`` answers; fails (showing the end of ``log``) if ``proc`` ends first
    or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before serving:\n{log.read_text()[-4000:]}")
        try:
            if get(f"{http_url}/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"no /healthz within {timeout} s:\n{log.read_text()[-4000:]}")
