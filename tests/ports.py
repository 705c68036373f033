"""Ports for the servers tests start. One module (imported as ``tests.ports`` by everyone):
pytest loads tests/conftest.py a second time as ``conftest``, and two copies of this state
would hand the same ports out twice."""

from __future__ import annotations

import os
import socket


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports for test servers come from just below the kernel's ephemeral range, each handed out
# once per run: a port the kernel picked (bind to 0) could be taken by some client socket's
# ephemeral port before the server binds it, and once was (RTMP, "address already in use").
_EPHEMERAL = _ephemeral_start()


def _ports() -> range:
    """This test process's ports: with pytest-xdist, each worker (PYTEST_XDIST_WORKER gwN of
    PYTEST_XDIST_WORKER_COUNT) its own slice, so two never hand out the same port; alone,
    the whole range from a place that depends on the pid (two runs at once rarely meet)."""
    low = max(1024, _EPHEMERAL - 12000)
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 0:
        size = (_EPHEMERAL - low) // int(count)
        start = low + size * int(worker[2:])
        return range(start, start + size)
    return range(low + (os.getpid() * 7919) % 6000, _EPHEMERAL)


_PORTS = iter(_ports())


def free_port() -> int:
    """A loopback port free for both TCP and UDP now (the WebRTC ports share one number),
    outside the ephemeral range, never handed out before in this run."""
    for port in _PORTS:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                tcp.bind(("127.0.0.1", port))
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port left below the ephemeral range")


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive ports, each as `free_port` hands them out (a
    gateway with several workers gives worker i the WebRTC port + i)."""
    if count == 1:
        return free_port()
    for _ in range(1000):
        first = free_port()
        rest = [free_port() for _ in range(count - 1)]
        if rest == list(range(first + 1, first + count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports left below the ephemeral range")
