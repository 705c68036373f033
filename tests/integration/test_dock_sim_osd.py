"""The dock simulator's flight telemetry against a real Mosquitto: aircraft osd at the
configured rate, each read back with the osd model, and the registry's intake of it (samples
for known devices, a flood refused and counted)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import orjson
import pytest

from gateway.dji import protocol as p
from gateway.dji.devices import OSD_RATE, DeviceRegistry, Event, TelemetryReceived
from gateway.dji.dock_sim import AIRCRAFT_CAMERA, DockBehaviour, DockSimulator, run_forever
from gateway.dji.mqtt import DjiMqtt
from gateway.dji.osd import DeviceKind, OsdSample, parse_osd
from gateway.mqtt_link import BrokerAddress
from tests.conftest import MosquittoProcess

DOCK, AIRCRAFT = "SIMDOCK0000001", "SIMAIRCRAFT0001"
AIRCRAFT_OSD = f"thing/product/{AIRCRAFT}/osd"


@contextlib.asynccontextmanager
async def simulator(broker: MosquittoProcess, osd_rate: float) -> AsyncIterator[DockSimulator]:
    # The clip is only read for a push, which no test here asks for.
    sim = DockSimulator(BrokerAddress.parse(broker.url), Path("/nonexistent.h264"))
    sim.behaviour = DockBehaviour(osd_rate=osd_rate, osd_interval=0.5)
    task = asyncio.create_task(run_forever(sim, retry=0.5))
    try:
        yield sim
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def read(payload: bytes, sn: str = AIRCRAFT) -> tuple[p.Envelope, OsdSample]:
    envelope = p.parse_envelope(payload)
    return envelope, parse_osd(sn, envelope, received_at_ms=0)


def check_rate(stamps: list[int], rate: float) -> None:
    """The device's own timestamps (ms) are 1/rate apart (as it sent them, whatever the
    broker's delivery jitter)."""
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert all(gap >= 0 for gap in gaps)
    assert statistics.median(gaps) == pytest.approx(1000 / rate, rel=0.25), gaps
    assert (stamps[-1] - stamps[0]) / len(gaps) == pytest.approx(1000 / rate, rel=0.25), gaps


async def test_the_simulator_flies_and_reports_aircraft_osd_at_its_rate(mosquitto: MosquittoProcess) -> None:
    samples: list[OsdSample] = []
    stamps: list[int] = []
    dock_seen = False
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="osd-listener") as client:
        await client.subscribe("thing/product/+/osd")
        async with simulator(mosquitto, osd_rate=10), asyncio.timeout(30):
            async for message in client.messages:
                envelope, sample = read(bytes(message.payload), str(message.topic).split("/")[2])
                if sample.sn == DOCK:
                    assert sample.kind is DeviceKind.DOCK and sample.dock is not None
                    dock_seen = sample.dock.network is not None
                    continue
                assert str(message.topic) == AIRCRAFT_OSD and envelope.gateway == DOCK
                assert sample.kind is DeviceKind.AIRCRAFT and sample.dropped == () and sample.cut == 0
                samples.append(sample)
                stamps.append(envelope.timestamp)
                if len(samples) >= 40 and dock_seen:
                    break
    check_rate(stamps, 10)
    # It flies: position, height and heading change from message to message.
    aircraft = [s.aircraft for s in samples if s.aircraft is not None]
    assert len(aircraft) == len(samples)
    assert len({(a.latitude, a.longitude) for a in aircraft}) > 30
    assert len({a.elevation for a in aircraft}) > 10
    assert len({a.attitude.head for a in aircraft if a.attitude is not None}) > 10
    assert all(s.cameras and s.cameras[0].payload_index == AIRCRAFT_CAMERA for s in samples)


def test_the_cli_flag_sets_the_rate(mosquitto: MosquittoProcess, tmp_path: Path) -> None:
    """`skyrelay dock-sim --osd-rate 20`, read with mosquitto_sub."""
    env = {**os.environ, "HOME": os.environ.get("HOME", str(tmp_path))}
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "dock-sim", "--mqtt", mosquitto.url, "--osd-rate", "20"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        sub = subprocess.run(
            [
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                str(mosquitto.port),
                "-t",
                AIRCRAFT_OSD,
                "-C",
                "41",
                "-W",
                "60",
            ],
            capture_output=True,
            timeout=90,
            check=True,
        )
    finally:
        sim.terminate()
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait(timeout=5)
    lines = sub.stdout.splitlines()
    assert len(lines) == 41
    stamps = []
    for line in lines:
        envelope, sample = read(line)
        assert sample.kind is DeviceKind.AIRCRAFT and sample.aircraft is not None and sample.dropped == ()
        stamps.append(envelope.timestamp)
    check_rate(stamps[1:], 20)  # the first may be the catch-up of a slow start


async def test_the_registry_takes_the_flight_in_and_refuses_a_flood(mosquitto: MosquittoProcess) -> None:
    events: list[Event] = []
    registry = DeviceRegistry(max_osd_rate=20)
    mqtt = DjiMqtt(BrokerAddress.parse(mosquitto.url), registry, events.append)
    bridge = asyncio.create_task(mqtt.run())

    def telemetry(kind: DeviceKind) -> list[OsdSample]:
        return [e.sample for e in events if isinstance(e, TelemetryReceived) and e.sample.kind is kind]

    async def until(predicate: object) -> None:
        async with asyncio.timeout(20):
            while not predicate():  # type: ignore[operator]
                await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(mqtt.connected.wait(), 10)
        async with simulator(mosquitto, osd_rate=10):
            await until(lambda: len(telemetry(DeviceKind.AIRCRAFT)) >= 5 and telemetry(DeviceKind.DOCK))
            flying = telemetry(DeviceKind.AIRCRAFT)[-1]
            assert flying.gateway_sn == DOCK and flying.aircraft is not None
            assert flying.aircraft.link_quality == 5  # from the dock's wireless link
            # An unknown device's osd gives no sample.
            async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="intruder") as client:
                stranger = orjson.dumps({"tid": "t", "bid": "b", "gateway": DOCK, "data": {"height": 1}})
                await client.publish("thing/product/STRANGER0001/osd", stranger, qos=1)
                await until(lambda: registry.osd_unknown >= 1)
                # 1,000 osd as fast as they go, as the aircraft: most are refused unparsed.
                flood = orjson.dumps({"tid": "t", "bid": "b", "gateway": DOCK, "data": {"height": 1}})
                for _ in range(1000):
                    await client.publish(AIRCRAFT_OSD, flood)
                await client.publish(AIRCRAFT_OSD, b"marker: not JSON", qos=1)
                await until(lambda: mqtt.limited[OSD_RATE] + mqtt.dropped_messages >= 500)
            assert mqtt.limited[OSD_RATE] == registry.osd_limited >= 500
            assert mqtt.failed_messages == 0
            assert all(s.sn != "STRANGER0001" for s in telemetry(DeviceKind.AIRCRAFT))
            # The flight goes on being taken in, and the dock stays online.
            before = len(telemetry(DeviceKind.AIRCRAFT))
            await until(lambda: len(telemetry(DeviceKind.AIRCRAFT)) >= before + 10)
            assert registry.gateways[DOCK].online
    finally:
        bridge.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bridge
