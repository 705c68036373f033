"""Drone cameras with `skyrelay serve --workers 2`: one DJI MQTT client for the machine (in
the control process), a real Mosquitto, the dock simulator pushing RTMP to whichever worker
its connection lands on, and players pinned to each worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from gateway.dji.dock_sim import DockBehaviour, DockSimulator, run_forever
from gateway.mqtt_link import BrokerAddress
from gateway.wcs.client import ClientStream, WcsClient, WcsError
from tests.conftest import GatewayProcess, MosquittoProcess
from tests.integration.conftest import FrameCounter
from tests.integration.drone import AIRCRAFT_VIDEO
from tests.integration.test_workers import Connect, play_on, worker_of, worker_pids


@pytest_asyncio.fixture
async def machine(
    mosquitto: MosquittoProcess, clip: Path, tmp_path: Path
) -> AsyncIterator[tuple[GatewayProcess, DockSimulator]]:
    gw = GatewayProcess(
        workers=2,
        extra_args=["--mqtt", mosquitto.url, "--live-linger", "1"],
        # Longer than the tests wait: only the linger (not a lost push) may stop a push here.
        extra_env={"SKYRELAY_LIVE_PUSH_TIMEOUT": "120"},
    )
    gw.start(tmp_path)
    sim = DockSimulator(BrokerAddress.parse(mosquitto.url), clip, behaviour=DockBehaviour(osd_rate=10))
    task = asyncio.create_task(run_forever(sim, retry=0.5))
    try:
        yield gw, sim
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gw.stop()


@pytest.fixture
def gateway(machine: tuple[GatewayProcess, DockSimulator]) -> GatewayProcess:
    """The module's gateway (the `connect` fixture opens clients to it)."""
    return machine[0]


async def publish_probe(connect: Connect, track: Any) -> ClientStream:
    """A published stream whose players' answers say which worker each connection landed on."""
    client = await connect()
    probe = await client.publish("w-probe", [track])
    await probe.wait_status("PUBLISHING")
    return probe


async def play_camera(client: WcsClient) -> ClientStream:
    """Play the aircraft's camera once the dock has announced it."""
    async with asyncio.timeout(30):
        while True:
            try:
                return await client.play(AIRCRAFT_VIDEO, timeout=30)
            except WcsError as exc:
                assert "Stream not found" in str(exc), exc
                await asyncio.sleep(0.3)


async def test_a_drone_camera_played_in_both_workers_at_once_starts_one_push(
    machine: tuple[GatewayProcess, DockSimulator], connect: Connect, video_track: Callable[[], Any]
) -> None:
    gw, sim = machine
    await publish_probe(connect, video_track())  # to find out where each connection landed
    pinned = [(await play_on(connect, gw, "w-probe", worker))[0] for worker in (0, 1)]

    players = await asyncio.gather(*(play_camera(client) for client in pinned))
    counters = []
    for player in players:
        await player.wait_status("PLAYING", timeout=30)
        counters.append(FrameCounter(player).start())
    for counter in counters:
        await counter.wait_frames(30)
    assert len(sim.starts) == 1, sim.starts  # one live_start_push for the machine
    # The push landed on one worker; the other one's player watches a mirror of it.
    assert len(gw.log_events("media_link_opened", stream=AIRCRAFT_VIDEO)) == 1

    # The devices and the camera's controls answer from whichever worker takes the request.
    async with aiohttp.ClientSession() as http:
        for _ in range(4):
            async with http.get(f"{gw.http_url}/api/devices") as reply:
                described = await reply.json()
            assert [g["sn"] for g in described["gateways"]] == [sim.gateway_sn]
            url = f"{gw.http_url}/api/streams/{AIRCRAFT_VIDEO}/quality"
            async with http.post(url, json={"video_quality": 1}) as reply:
                assert reply.status == 200, await reply.text()
        async with http.get(f"{gw.http_url}/api/streams") as reply:
            listed = (await reply.json())["streams"]
    assert [c for c, _ in sim.controls] == ["live_set_quality"] * 4

    # A player's control is announced to the players of both workers, once each, whichever
    # worker carried it out: the mirror's worker first (its announcement goes to the owner
    # and back), then the owner's, whose announcement follows the first on the link.
    owner = next(s["worker"] for s in listed if s["name"] == AIRCRAFT_VIDEO)
    for asker, quality in ((pinned[1 - owner], 2), (pinned[owner], 0)):
        player = next(s for s in asker.streams.values() if s.name == AIRCRAFT_VIDEO)
        event = {"mediaSessionId": player.media_session_id, "type": "setQuality"}
        await asker.send("sendStreamEvent", {**event, "payload": {"video_quality": quality}})
        for client in pinned:
            await client.wait_message(
                "notifyStreamEvent",
                lambda data, q=quality: data[0].get("payload") == {"video_quality": q, "status": "OK"},
            )
    for client in pinned:
        events = [data[0] for data in client.received("notifyStreamEvent")]
        announced = [e["payload"]["video_quality"] for e in events if e["type"] == "setQuality"]
        assert announced == [2, 0], events

    # The flight data reaches the players of both workers.
    for client in pinned:
        await client.wait_message(
            "notifyStreamEvent", lambda data: data[0].get("type") == "telemetry", timeout=10
        )

    # The last viewer leaving (in either worker) stops the push after the linger.
    for counter in counters:
        await counter.stop()
    for player in players:
        await player.stop()
    async with asyncio.timeout(15):
        while not sim.stops:
            await asyncio.sleep(0.1)
    assert len(sim.starts) == 1


async def test_a_killed_workers_camera_viewers_let_the_push_stop(
    machine: tuple[GatewayProcess, DockSimulator], connect: Connect, video_track: Callable[[], Any]
) -> None:
    """The viewers of a worker that dies are no longer counted: the push lingers, then stops."""
    gw, sim = machine
    probe = await publish_probe(connect, video_track())
    doomed = 1 - worker_of(probe, gw)  # not the probe's worker: its publisher stays
    client, _ = await play_on(connect, gw, "w-probe", doomed)
    player = await play_camera(client)
    await player.wait_status("PLAYING", timeout=30)
    assert len(sim.starts) == 1 and not sim.stops

    os.kill(worker_pids(gw)[doomed], signal.SIGKILL)
    async with asyncio.timeout(20):  # the linger is 1 s
        while not sim.stops:
            await asyncio.sleep(0.1)
