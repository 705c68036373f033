"""A simulated DJI dock (`skyrelay dock-sim`, a child process) for the browser tests of drone
cameras, and waiting for the gateway to know it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

from tests.conftest import ROOT, GatewayProcess

AIRCRAFT = "SIMAIRCRAFT0001"
DRONE_VIDEO = f"{AIRCRAFT}/53-0-0/normal-0"


@contextlib.contextmanager
def dock_sim(mqtt_url: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`skyrelay dock-sim` on the broker at ``mqtt_url`` (with ``args``), stopped after."""
    dock = subprocess.Popen(
        [sys.executable, "-m", "gateway", "dock-sim", "--mqtt", mqtt_url, *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield dock
    finally:
        dock.terminate()
        try:
            dock.wait(timeout=10)
        except subprocess.TimeoutExpired:
            dock.kill()
            dock.wait(timeout=5)


async def devices(gateway: GatewayProcess) -> dict[str, Any]:
    def get() -> dict[str, Any]:
        with urllib.request.urlopen(gateway.http_url + "/api/devices", timeout=5) as reply:
            return json.loads(reply.read())

    return await asyncio.to_thread(get)


async def wait_dock_online(gateway: GatewayProcess, timeout: float = 30) -> None:
    """The dock announces itself every few seconds; a play before that is "Stream not found"."""
    async with asyncio.timeout(timeout):
        while not any(g["online"] for g in (await devices(gateway))["gateways"]):
            await asyncio.sleep(0.2)
