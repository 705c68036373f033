"""Drone cameras with `skyrelay serve --workers 2`: one DJI MQTT client for the machine (in
the control process), a real Mosquitto, the dock simulator pushing RTMP to whichever worker
its connection lands on, and players pinned to each worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiortc import RTCConfiguration, RTCPeerConnection

from gateway.cluster.forward import FORWARDED_HEADER, WORKER_HEADER
from gateway.dji.dock_sim import DockBehaviour, DockSimulator, run_forever
from gateway.media.webrtc.sdp import capabilities
from gateway.mqtt_link import BrokerAddress
from gateway.wcs.client import ClientStream, WcsClient, WcsError
from tests.conftest import GatewayProcess, MosquittoProcess
from tests.integration.conftest import FrameCounter
from tests.integration.drone import AIRCRAFT_VIDEO
from tests.integration.test_workers import TRIES, Connect, play_on, worker_of, worker_pids


@pytest_asyncio.fixture
async def machine(
    mosquitto: MosquittoProcess, clip: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[GatewayProcess, DockSimulator]]:
    # ``param``: the number of workers, how the dock pushes, and whether the gateway's
    # STUN server never answers (each WebRTC answer then waits out aioice's 5 s gathering).
    workers, push, silent_stun = getattr(request, "param", (2, "rtmp", False))
    extra_args = ["--mqtt", mosquitto.url, "--live-linger", "1", "--live-url-type", push]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound (no ICMP refusal) and never read
        if silent_stun:
            extra_args += ["--stun-server", f"127.0.0.1:{silent.getsockname()[1]}"]
        gw = GatewayProcess(
            workers=workers,
            extra_args=extra_args,
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


async def camera_on_each_worker(
    connect: Connect, gw: GatewayProcess, workers: int, frames: int
) -> tuple[list[WcsClient], list[ClientStream], list[FrameCounter]]:
    """A player of the aircraft's camera on each worker (all at once), each past ``frames``
    frames (a probe publisher says where each connection lands)."""
    pinned = [(await play_on(connect, gw, "w-probe", worker))[0] for worker in range(workers)]
    players = await asyncio.gather(*(play_camera(client) for client in pinned))
    counters = []
    for player in players:
        await player.wait_status("PLAYING", timeout=30)
        counters.append(FrameCounter(player).start())
    for counter in counters:
        await counter.wait_frames(frames)
    return pinned, list(players), counters


async def test_a_drone_camera_played_in_both_workers_at_once_starts_one_push(
    machine: tuple[GatewayProcess, DockSimulator], connect: Connect, video_track: Callable[[], Any]
) -> None:
    gw, sim = machine
    await publish_probe(connect, video_track())  # to find out where each connection landed
    pinned, players, counters = await camera_on_each_worker(connect, gw, 2, frames=30)
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


def pushes_of(gw: GatewayProcess, push: str) -> list[dict[str, Any]]:
    """The camera's pushes so far (``push``: "rtmp" or "whip"), each with its worker."""
    return gw.log_events(f"{push}_publishing", stream=AIRCRAFT_VIDEO)


@pytest.mark.parametrize(
    "machine",
    [(2, "rtmp", False), (3, "rtmp", False), (2, "whip", False)],
    indirect=True,
    ids=["2-workers", "3-workers", "whip"],
)
async def test_a_push_that_comes_back_on_another_worker_takes_its_stream_over(
    machine: tuple[GatewayProcess, DockSimulator], connect: Connect, video_track: Callable[[], Any]
) -> None:
    """The dock's push drops and returns until it lands on another worker: that worker
    takes the name over; the viewers of every worker go on without playing again (with
    three, the third worker's mirror follows the name to the new worker). Over WHIP the
    drop DELETEs the session (passed to the worker holding it: a key keeping its stream
    leaves it without a source) and each return is a new offer."""
    gw, sim = machine
    workers = len(worker_pids(gw))
    await publish_probe(connect, video_track())
    pinned, players, counters = await camera_on_each_worker(connect, gw, workers, frames=20)
    push = "whip" if str(sim.starts[0]["url"]).startswith("http") else "rtmp"
    answers = [len(client.received("setRemoteSDP")) for client in pinned]
    first = int(pushes_of(gw, push)[-1]["worker"])

    # Each return is a new connection, on the worker the kernel picks (a coin toss each).
    for _ in range(TRIES):
        pushes = len(pushes_of(gw, push))
        await sim.drop_push(0.1)
        try:
            async with asyncio.timeout(10):
                while len(pushes_of(gw, push)) == pushes:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError("the returning push was not accepted (refused?)") from None
        if int(pushes_of(gw, push)[-1]["worker"]) != first:
            break
    else:
        raise AssertionError(f"the push came back on worker {first} {TRIES} times in a row")
    taker = int(pushes_of(gw, push)[-1]["worker"])
    assert gw.log_events("stream_handed_over", stream=AIRCRAFT_VIDEO, worker=first, to=taker)
    assert gw.log_events("stream_taken_over", stream=AIRCRAFT_VIDEO, worker=taker, owner=first)
    assert not gw.log_events("stream_takeover_refused")

    # Every viewer goes on: the taker's directly, the others through a link to the taker.
    for counter in counters:
        before = len(counter.pts)
        await counter.wait_frames(before + 30)
        resumed = counter.pts[before - 1 :]
        assert all(b > a for a, b in zip(resumed, resumed[1:], strict=False))
    assert [len(client.received("setRemoteSDP")) for client in pinned] == answers
    assert [player.status for player in players] == ["PLAYING"] * workers
    assert len(sim.starts) == 1 and not sim.stops
    # One link from each other worker to the taker: the old holder's, and (three workers)
    # the third's, re-pointed there from the old holder.
    opened = gw.log_events("media_link_opened", stream=AIRCRAFT_VIDEO, worker=taker)
    assert len(opened) == workers - 1
    for counter in counters:
        await counter.stop()


async def h264_offer() -> str:
    """A WHIP client's offer (H.264, sendonly), for a push by hand."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver("video", direction="sendonly")
    transceiver.setCodecPreferences(capabilities(("video/H264",), "video"))
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


@pytest.mark.parametrize("machine", [(2, "whip", True)], indirect=True, ids=["whip-slow-answers"])
async def test_a_second_whip_push_cannot_take_the_stream_from_one_still_negotiating(
    machine: tuple[GatewayProcess, DockSimulator], connect: Connect
) -> None:
    """The dock's WHIP push lands on one worker, whose answer takes 5 s (its STUN server
    never answers); a push with the same key meanwhile on the other worker is refused (409),
    not handed the stream, and the dock's push then streams where it landed."""
    gw, sim = machine
    client = await connect()
    playing = asyncio.ensure_future(play_camera(client))  # wanting the camera starts its push
    try:
        async with asyncio.timeout(15):
            while not (claims := gw.log_events("stream_claimed", stream=AIRCRAFT_VIDEO, mirror=False)):
                await asyncio.sleep(0.05)
        first = int(claims[0]["worker"])
        url = str(sim.starts[0]["url"])
        offer = await h264_offer()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            # The other worker knows who holds the name once a request there is passed on.
            for _ in range(TRIES):
                async with http.get(f"{gw.http_url}/api/streams/{AIRCRAFT_VIDEO}") as reply:
                    if reply.headers.get(FORWARDED_HEADER) == str(first):
                        break
            else:
                raise AssertionError(f"no request reached the other worker in {TRIES} tries")
            # The same key again until it lands on the other worker (its own keys: free there).
            for _ in range(TRIES):
                async with http.post(url, data=offer, headers={"Content-Type": "application/sdp"}) as reply:
                    landed, status, text = int(reply.headers[WORKER_HEADER]), reply.status, await reply.text()
                if landed != first:
                    break
                assert status == 403, text  # the key is in use on the first worker
            else:
                raise AssertionError(f"no offer reached the other worker in {TRIES} tries")
        assert status == 409, text
        assert not gw.log_events("whip_offer_accepted"), "the other push was answered first"
        async with asyncio.timeout(30):
            while not (pushes := pushes_of(gw, "whip")):
                await asyncio.sleep(0.05)
        assert [int(p["worker"]) for p in pushes] == [first]
        assert gw.log_events("stream_takeover_refused", stream=AIRCRAFT_VIDEO, worker=landed)
        assert not gw.log_events("stream_handed_over")
    finally:
        playing.cancel()
        with contextlib.suppress(asyncio.CancelledError, WcsError):
            await playing
