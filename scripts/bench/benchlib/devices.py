"""Device load generator role: DJI docks with one flying aircraft each, over raw MQTT 3.1.1.

One TCP connection per dock (as real docks have), packets encoded with the gateway's own
MQTT codec (`gateway.broker.codec`) and written straight to the socket, QoS 0: no client
library, no acknowledgements, so that one process holds thousands of osd messages a
second on a small share of a core (its CPU is not the gateway's, and the orchestrator
reports it). The messages are the dock simulator's (`gateway.dji.dock_sim`): its
announcement, its dock osd and its flying aircraft's osd (`flight_state`), each aircraft
at its own point of the loop.

Commands (see `common.serve_commands`):
  connect {host, port, devices, announce_from} -> {connected}
          docks 0 .. devices-1 connect; those from ``announce_from`` on announce
          themselves (update_topo, live_capacity) and send their dock osd every 2 s, as a
          dock does (it also keeps them online); the others are dock simulators with a
          camera (the cameras role), which do that themselves
  osd     {rate} -> {}   each aircraft's osd at ``rate`` messages a second (0: none)
  stats   {} -> {aircraft, docks, skipped, late_ms_max, closed}  (counts since connect;
          closed: connections the broker closed)
  close   {} -> {}
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from pathlib import Path
from typing import Any

from gateway.broker import codec
from gateway.dji.dock_sim import LOOP_SECONDS, DockSimulator, dock_state, flight_state
from gateway.mqtt_link import BrokerAddress

from .common import run_role

TICK = 0.005  # s between send rounds: 1000 msg/s go out in batches of ~5
MAX_BEHIND = 0.5  # s: a generator further behind skips (and counts) rather than bursts
DOCK_OSD_RATE = 0.5  # a dock on the ground sends its osd about every 2 s
HIGH_WATER = 256 * 1024  # bytes buffered on one connection before the generator waits


def dock_sn(index: int) -> str:
    return f"BENCHDOCK{index:05d}"


def aircraft_sn(index: int) -> str:
    return f"BENCHUAV{index:05d}"


def camera_stream(index: int) -> str:
    """The stream of aircraft ``index``'s camera (its DJI video id)."""
    return f"{aircraft_sn(index)}/53-0-0/normal-0"


class Schedule:
    """``count`` senders at ``rate`` messages a second each, evenly interleaved: at any
    moment, which of them are due. Sender ``k`` sends every ``1/rate`` seconds, offset by
    ``k / (count * rate)``, so the load is flat rather than in bursts of ``count``."""

    def __init__(self, count: int, rate: float, start: float) -> None:
        self.count, self.total_rate, self.start = count, count * rate, start
        self.position = 0  # slots handed out or skipped
        self.skipped = 0

    def due(self, now: float) -> list[int]:
        target = int((now - self.start) * self.total_rate)
        # Slot k falls due at (k + 1) / total_rate; those due more than MAX_BEHIND ago are
        # skipped (and counted), not sent in a burst.
        oldest = math.ceil((now - self.start - MAX_BEHIND) * self.total_rate) - 1
        if self.position < oldest:
            self.skipped += oldest - self.position
            self.position = oldest
        indices = [slot % self.count for slot in range(self.position, target)]
        self.position = max(self.position, target)
        return indices


class _Collect:
    """Stands in for the dock simulator's MQTT client: keeps what it would publish."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes, **_: Any) -> None:
        self.messages.append((topic, payload))


class Dock:
    def __init__(self, index: int, broker: BrokerAddress, writer: asyncio.StreamWriter) -> None:
        self.sim = DockSimulator(broker, Path(), dock_sn(index), aircraft_sn(index))
        self.writer = writer
        self.aircraft_topic = f"thing/product/{self.sim.aircraft_sn}/osd"
        self.dock_topic = f"thing/product/{self.sim.gateway_sn}/osd"

    def publish(self, topic: str, payload: bytes) -> None:
        self.writer.write(codec.encode(codec.Publish(topic, payload, qos=0, retain=False)))


class Devices:
    def __init__(self) -> None:
        self.docks: list[Dock] = []
        self.heartbeat: Schedule | None = None
        self.announce_from = 0
        self.osd: Schedule | None = None
        self.flight_start = time.monotonic()
        self.aircraft = self.dock_osd = 0
        self.late_ms_max = 0.0
        self.skipped_before = 0  # by osd schedules replaced
        self._runner: asyncio.Task[None] | None = None

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "connect":
            await self.connect(str(request["host"]), int(request["port"]), int(request["devices"]))
            self.announce_from = int(request.get("announce_from", 0))
            await self.announce()
            announced = len(self.docks) - self.announce_from
            if announced > 0:
                self.heartbeat = Schedule(announced, DOCK_OSD_RATE, time.monotonic())
            self._runner = asyncio.create_task(self.run())
            return {"connected": len(self.docks)}
        if cmd == "osd":
            rate = float(request["rate"])
            if self.osd is not None:
                self.skipped_before += self.osd.skipped
            self.osd = Schedule(len(self.docks), rate, time.monotonic()) if rate > 0 else None
            return {}
        if cmd == "stats":
            skipped = (self.osd.skipped if self.osd else 0) + (
                self.heartbeat.skipped if self.heartbeat else 0
            )
            return {
                "aircraft": self.aircraft,
                "docks": self.dock_osd,
                "skipped": skipped,
                "late_ms_max": round(self.late_ms_max, 1),
                "closed": sum(dock.writer.is_closing() for dock in self.docks),
            }
        if cmd == "close":
            await self.close()
            return {}
        raise ValueError(f"unknown command {cmd!r}")

    async def connect(self, host: str, port: int, count: int) -> None:
        broker = BrokerAddress(host, port)
        for index in range(count):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10.0)
            self.docks.append(Dock(index, broker, writer))
            connect = codec.Connect(client_id=f"bench-{dock_sn(index)}", keepalive=0, clean_start=True)
            writer.write(codec.encode(connect))
            connack = await asyncio.wait_for(reader.readexactly(4), 10.0)
            if connack[0] != 0x20 or connack[3] != 0:
                raise RuntimeError(f"broker refused {dock_sn(index)}: CONNACK {connack.hex()}")

    async def announce(self) -> None:
        for dock in self.docks[self.announce_from :]:
            collect = _Collect()
            await dock.sim._announce(collect)  # type: ignore[arg-type]  # update_topo, live_capacity
            for topic, payload in collect.messages:
                dock.publish(topic, payload)
            await dock.writer.drain()

    async def run(self) -> None:
        """Send whatever is due every `TICK` until closed."""
        loop = asyncio.get_running_loop()
        wake = loop.time()
        while True:
            self.late_ms_max = max(self.late_ms_max, 1000 * (loop.time() - wake))
            now = time.monotonic()
            if self.heartbeat is not None:
                for k in self.heartbeat.due(now):
                    dock = self.docks[self.announce_from + k]
                    dock.publish(dock.dock_topic, dock.sim._message("", dock_state()))
                    self.dock_osd += 1
            if self.osd is not None:
                spread = LOOP_SECONDS / len(self.docks)  # each aircraft elsewhere on its loop
                for k in self.osd.due(now):
                    dock = self.docks[k]
                    data = flight_state(now - self.flight_start + k * spread)
                    dock.publish(dock.aircraft_topic, dock.sim._message("", data))
                    self.aircraft += 1
            for dock in self.docks:
                if (
                    not dock.writer.is_closing()
                    and dock.writer.transport.get_write_buffer_size() > HIGH_WATER
                ):
                    await dock.writer.drain()
            wake = loop.time() + TICK
            await asyncio.sleep(TICK)

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
            self._runner = None
        docks, self.docks = self.docks, []
        for dock in docks:
            with contextlib.suppress(Exception):
                dock.writer.write(codec.encode(codec.Disconnect()))
                dock.writer.close()
        for dock in docks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(dock.writer.wait_closed(), 2.0)


def run() -> None:
    run_role("devices", Devices)
