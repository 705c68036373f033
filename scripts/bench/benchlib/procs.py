"""Parent side: child processes, their JSON-line pipes, and /proc accounting."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL if this process dies, whatever the cause."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ChildError(RuntimeError):
    pass


class Process:
    """A child process in its own process group, killed with the group on `stop`."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        log_path: Path,
        *,
        cwd: Path,
        env: dict[str, str],
        pipes: bool = False,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else self._log,
            stderr=self._log,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            self._log.flush()
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
        # anything left in the group (the leader is gone, its children may not be)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self._log.close()


class Child(Process):
    """A benchmark role process speaking JSON lines (see `common.serve_commands`)."""

    def __init__(
        self, name: str, cmd: Sequence[str], log_path: Path, *, cwd: Path, env: dict[str, str]
    ) -> None:
        super().__init__(name, cmd, log_path, cwd=cwd, env=env, pipes=True)
        self._ids = itertools.count(1)
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, name=f"{name}-reader", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                with contextlib.suppress(orjson.JSONDecodeError):
                    self._replies.put(orjson.loads(raw))
        finally:
            self._replies.put(None)

    def send(self, cmd: str, **args: Any) -> int:
        rid = next(self._ids)
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(orjson.dumps({"id": rid, "cmd": cmd, **args}) + b"\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise ChildError(f"{self.name} is gone: {exc}\n{self.log_tail()}") from exc
        return rid

    def wait_reply(self, rid: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildError(f"{self.name}: no reply within {timeout:.0f} s")
            try:
                reply = self._replies.get(timeout=left)
            except queue.Empty:
                continue
            if reply is None:
                self._replies.put(None)
                raise ChildError(f"{self.name} exited:\n{self.log_tail()}")
            if reply.get("id") != rid:
                continue  # a late reply to a request that timed out
            if not reply.get("ok"):
                raise ChildError(f"{self.name}: {reply.get('error')}")
            return reply

    def request(self, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        return self.wait_reply(self.send(cmd, **args), timeout)

    def stop(self, grace: float = 5.0) -> None:
        if self.alive():
            with contextlib.suppress(ChildError):
                self.request("quit", timeout=grace)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        super().stop(grace)


def fan_out(children: Iterable[Child], cmd: str, timeout: float, **args: Any) -> list[dict]:
    """Send one request to several children at once and collect every reply."""
    pending = [(child, child.send(cmd, **args)) for child in children]
    deadline = time.monotonic() + timeout
    return [child.wait_reply(rid, max(0.1, deadline - time.monotonic())) for child, rid in pending]


MOSQUITTO = "/usr/sbin/mosquitto"  # Debian's package


def wait_tcp(port: int, proc: Process, timeout: float = 15.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:`port`; fail if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise ChildError(f"{proc.name} exited:\n{proc.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise ChildError(f"{proc.name} did not listen on {port} in time")


def start_mosquitto(run_dir: Path, env: dict[str, str], port: int) -> Process:
    """A Mosquitto on 127.0.0.1:`port`, anonymous, no persistence; its log in `run_dir`."""
    config = run_dir / "mosquitto.conf"
    # set_tcp_nodelay: Mosquitto leaves Nagle on by default, which delays commands to the dock
    # by ~40 ms (docs/dji.md recommends it for production too).
    settings = ["allow_anonymous true", "persistence false", "set_tcp_nodelay true"]
    config.write_text("\n".join([f"listener {port} 127.0.0.1", *settings]) + "\n")
    cmd = [MOSQUITTO, "-c", str(config)]
    proc = Process("mosquitto", cmd, run_dir / "mosquitto.log", cwd=run_dir, env=env)
    try:
        wait_tcp(port, proc)
    except ChildError:
        proc.stop()
        raise
    return proc


# --- /proc accounting -------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces: split after its ')'
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """Live descendants of `pid` (scanning /proc: no `children` files on this kernel)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass(frozen=True)
class CpuSample:
    at: float  # time.monotonic()
    cpu_s: float  # utime+stime of the process and its live descendants, + cutime/cstime


def cpu_sample(pid: int) -> CpuSample:
    """CPU seconds used so far by `pid` and all its descendants (live or reaped)."""
    total = 0
    fields = _stat_fields(pid)
    if fields is None:
        raise ChildError(f"process {pid} is gone")
    # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17
    total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    for child in descendants(pid):
        child_fields = _stat_fields(child)
        if child_fields is not None:
            total += int(child_fields[11]) + int(child_fields[12])
    return CpuSample(time.monotonic(), total / CLK_TCK)


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` plus its live descendants, in KiB."""
    total = 0
    for p in (pid, *descendants(pid)):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total
