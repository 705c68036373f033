"""Camera role: dock simulators (`gateway.dji.dock_sim`) for the docks whose aircraft camera
is watched. Each announces itself, sends its dock osd, answers ``live_start_push`` and
pushes the test clip over RTMP (a PyAV child process per push, not the gateway's CPU). Its
aircraft sends no osd of its own (``osd_rate`` 0): the devices role sends every aircraft's,
so that all of them follow one schedule.

Commands (see `common.serve_commands`):
  start {host, port, clip, docks: [int]} -> {}
  stats {} -> {starts, pushing}
  close {} -> {}
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from gateway.dji.dock_sim import DockBehaviour, DockSimulator, run_forever
from gateway.mqtt_link import BrokerAddress

from .common import run_role
from .devices import aircraft_sn, dock_sn


class Cameras:
    def __init__(self) -> None:
        self.docks: list[DockSimulator] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "start":
            broker = BrokerAddress(str(request["host"]), int(request["port"]))
            for index in request["docks"]:
                behaviour = DockBehaviour(osd_rate=0.0)
                dock = DockSimulator(
                    broker, Path(request["clip"]), dock_sn(index), aircraft_sn(index), behaviour
                )
                self.docks.append(dock)
                self.tasks.append(asyncio.create_task(run_forever(dock)))
            return {}
        if cmd == "stats":
            return {
                "starts": sum(len(dock.starts) for dock in self.docks),
                "pushing": sum(dock._pushing is not None for dock in self.docks),
            }
        if cmd == "close":
            await self.close()
            return {}
        raise ValueError(f"unknown command {cmd!r}")

    async def close(self) -> None:
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15.0)
        self.docks.clear()


def run() -> None:
    run_role("cameras", Cameras)
