"""`skyrelay serve --workers 2`: a control process and two media workers, with real aiortc
peers over the WCS WebSocket API.

Which worker a connection lands on is the kernel's choice (both accept on one socket), so
the tests find out: each worker has its own WebRTC port (the configured one, then +1), and
the gateway's answer names it in its candidates.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import websockets

from gateway.dji.camera_sim import RtmpCameraPush
from gateway.wcs.client import ClientStream, WcsClient, WcsError
from gateway.wcs.session import INFO_NAME_IN_USE
from tests.conftest import GatewayProcess
from tests.integration.conftest import FrameCounter
from tests.integration.test_relay import count_plis
from tests.integration.test_rtsp import ffprobe

Connect = Callable[[], Awaitable[WcsClient]]
# Connections are spread by the kernel; this many tries land on both workers in practice
# (each try is a coin toss: 2^-30 to miss one).
TRIES = 30


@pytest.fixture(scope="module")
def gateway(workers: GatewayProcess) -> GatewayProcess:
    """The module's gateway is the two-worker one (the `connect` fixture opens clients to it)."""
    return workers


def worker_of(stream: ClientStream, gateway: GatewayProcess) -> int:
    """Which worker answered: its WebRTC port in the answer's candidates."""
    answer = stream.pc.remoteDescription
    assert answer is not None
    ports = {int(port) for port in re.findall(r"a=candidate:\S+ \d+ udp \d+ \S+ (\d+)", answer.sdp, re.I)}
    assert len(ports) == 1, ports
    return ports.pop() - gateway.webrtc_port


OpenStream = Callable[[WcsClient, int], Awaitable[ClientStream]]


async def landed_on(
    connect: Connect, gateway: GatewayProcess, worker: int, start: OpenStream
) -> tuple[WcsClient, ClientStream]:
    """A client whose connection landed on ``worker``, with the stream ``start`` opened on it
    (told the attempt's number)."""
    for attempt in range(TRIES):
        client = await connect()
        stream = await start(client, attempt)
        if worker_of(stream, gateway) == worker:
            return client, stream
        await client.close()
    raise AssertionError(f"no connection landed on worker {worker} in {TRIES} tries")


async def play_on(
    connect: Connect, gateway: GatewayProcess, name: str, worker: int
) -> tuple[WcsClient, ClientStream]:
    """A player of ``name`` whose connection landed on ``worker``."""
    return await landed_on(connect, gateway, worker, lambda client, _: client.play(name))


async def publish_on(
    connect: Connect, gateway: GatewayProcess, name: str, worker: int, track: object
) -> tuple[WcsClient, ClientStream]:
    """A publisher of ``name`` whose connection landed on ``worker`` (found with a throwaway
    publish first: a name published on the wrong worker would be busy for a moment)."""

    async def probe(client: WcsClient, attempt: int) -> ClientStream:
        return await client.publish(f"{name}-probe-{attempt}", [track])

    client, found = await landed_on(connect, gateway, worker, probe)
    await found.stop()
    return client, await client.publish(name, [track])


def worker_pids(gateway: GatewayProcess) -> dict[int, int]:
    """Each worker's process id, the latest start of each."""
    return {event["worker"]: event["pid"] for event in gateway.log_events("worker_started")}


async def test_publish_on_one_worker_play_on_both(
    workers: GatewayProcess, connect: Connect, video_track: Callable[[], object]
) -> None:
    pub_client = await connect()
    publisher = await pub_client.publish("w-cross", [video_track()])
    await publisher.wait_status("PUBLISHING")
    owner = worker_of(publisher, workers)
    other = 1 - owner

    counters = []
    for worker in (other, owner):
        _, player = await play_on(connect, workers, "w-cross", worker)
        await player.wait_status("PLAYING")
        counters.append(FrameCounter(player).start())
    for counter in counters:
        await counter.wait_frames(30)  # decoded: the mirror starts at a keyframe
    assert len(workers.log_events("media_link_opened", stream="w-cross")) == 1

    # A second player on the other worker shares the one link.
    _, second = await play_on(connect, workers, "w-cross", other)
    await second.wait_status("PLAYING")
    extra = FrameCounter(second).start()
    await extra.wait_frames(10)
    assert len(workers.log_events("media_link_opened", stream="w-cross")) == 1

    await publisher.stop()
    stopped = await second.wait_status("STOPPED", "FAILED")
    assert stopped["status"] == "STOPPED", stopped  # the publisher stopped: not a failure
    for counter in [*counters, extra]:
        await counter.stop()


async def test_a_name_is_unique_across_workers(
    workers: GatewayProcess, connect: Connect, video_track: Callable[[], object]
) -> None:
    pub_client = await connect()
    publisher = await pub_client.publish("w-unique", [video_track()])
    await publisher.wait_status("PUBLISHING")
    owner = worker_of(publisher, workers)
    for worker in (1 - owner, owner):
        # A connection on that worker (its play says where it is) publishing the same name.
        client, player = await play_on(connect, workers, "w-unique", worker)
        with pytest.raises(WcsError, match=INFO_NAME_IN_USE):
            await client.publish("w-unique", [video_track()])
    # The first one is untouched, and after it the name is free on either worker.
    await player.wait_status("PLAYING")
    await publisher.stop()
    await player.wait_status("STOPPED")
    # The release reaches the other worker a moment after the player heard STOPPED.
    async with asyncio.timeout(10):
        while True:
            try:
                _, anew = await publish_on(connect, workers, "w-unique", 1 - owner, video_track())
                break
            except WcsError as exc:
                assert INFO_NAME_IN_USE in str(exc)
                await asyncio.sleep(0.05)
    await anew.wait_status("PUBLISHING")


async def test_a_killed_worker_is_restarted_and_the_other_keeps_streaming(
    workers: GatewayProcess, connect: Connect, video_track: Callable[[], object]
) -> None:
    pids = worker_pids(workers)
    _, doomed_pub = await publish_on(connect, workers, "w-doomed", 0, video_track())
    await doomed_pub.wait_status("PUBLISHING")
    _, survivor_pub = await publish_on(connect, workers, "w-survivor", 1, video_track())
    await survivor_pub.wait_status("PUBLISHING")
    # On worker 1: a viewer of worker 0's stream (a mirror) and one of its own.
    _, mirror_player = await play_on(connect, workers, "w-doomed", 1)
    await mirror_player.wait_status("PLAYING")
    _, survivor_player = await play_on(connect, workers, "w-survivor", 1)
    await survivor_player.wait_status("PLAYING")
    survivor = FrameCounter(survivor_player).start()
    await survivor.wait_frames(10)

    os.kill(pids[0], signal.SIGKILL)

    failed = await mirror_player.wait_status("FAILED", "STOPPED")
    assert failed["status"] == "FAILED" and "worker" in failed["info"], failed
    before = len(survivor.pts)
    await survivor.wait_frames(before + 30)  # undisturbed
    assert survivor_player.status == "PLAYING"

    async with asyncio.timeout(30):  # restarted, with its name freed
        while (
            worker_pids(workers).get(0) in (None, pids[0])
            or not workers.log_events("worker_linked", worker=0)[1:]
        ):
            await asyncio.sleep(0.1)
    assert workers.log_events("worker_died", worker=0)
    _, again = await publish_on(connect, workers, "w-doomed", 1, video_track())
    await again.wait_status("PUBLISHING")
    assert workers.health()["status"] == "ok"
    await survivor.stop()


def test_a_busy_port_fails_the_start_naming_it(tmp_path: Path) -> None:
    gw = GatewayProcess(workers=2, extra_args=["--mqtt-broker", "off"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", gw.rtsp_port))
        busy.listen()
        with pytest.raises(RuntimeError, match="RTSP server could not start"):
            gw.start(tmp_path, timeout=20)


async def test_an_rtmp_push_plays_over_webrtc_in_both_workers_and_over_rtsp(
    workers: GatewayProcess, connect: Connect, clip_units: Any
) -> None:
    push = RtmpCameraPush(f"rtmp://127.0.0.1:{workers.rtmp_port}/live/w-rtmp", clip_units, fps=30)
    push.start()
    try:
        async with asyncio.timeout(20):  # claimed at the RTMP publish, playable from its first keyframe
            while True:
                try:
                    probe_client = await connect()
                    await probe_client.play("w-rtmp")
                    break
                except WcsError as exc:
                    assert "Stream not found" in str(exc)
                    await asyncio.sleep(0.2)
        counters = []
        for worker in (0, 1):
            _, player = await play_on(connect, workers, "w-rtmp", worker)
            await player.wait_status("PLAYING")
            counters.append(FrameCounter(player).start())
        for counter in counters:
            await counter.wait_frames(30)
            await counter.stop()
        # RTSP readers, on whichever worker they land: the stream as the push sends it.
        for _ in range(2):
            code, probe, err = await ffprobe(f"rtsp://127.0.0.1:{workers.rtsp_port}/w-rtmp")
            assert code == 0, err
            assert probe["streams"][0]["codec_name"] == "h264"
    finally:
        push.stop()


async def test_keyframe_requests_events_and_availability_cross_workers(
    workers: GatewayProcess, connect: Connect, video_track: Callable[[], object]
) -> None:
    pub_client = await connect()
    publisher = await pub_client.publish("w-events", [video_track()])
    plis = count_plis(publisher.pc)
    await publisher.wait_status("PUBLISHING")
    owner = worker_of(publisher, workers)
    play_client, player = await play_on(connect, workers, "w-events", 1 - owner)
    await player.wait_status("PLAYING")
    counter = FrameCounter(player).start()
    await counter.wait_frames(5)

    # availableStream from the other worker: the stream is there.
    await play_client.send("availableStream", {"mediaSessionId": "av1", "name": "w-events"})
    reply = await play_client.wait_message("availableStream", lambda d: d[0]["id"] == "av1")
    assert reply[0]["status"] == "true"

    # The player's PLI crosses the link to the publisher (rate-limited there and here).
    await asyncio.sleep(1.5)  # past the rate-limit window of the join-time requests
    before = len(plis)
    receiver = next(t.receiver for t in player.pc.getTransceivers() if t.kind == "video")
    ssrc = receiver.getSynchronizationSources()[0].source
    await receiver._send_rtcp_pli(ssrc)
    async with asyncio.timeout(5):
        while len(plis) == before:
            await asyncio.sleep(0.05)

    # The publisher's stream event reaches the player on the other worker.
    event = {"mediaSessionId": publisher.media_session_id, "type": "audioMuted", "payload": {"muted": True}}
    await pub_client.send("sendStreamEvent", event)
    await player.wait_for(
        lambda: any(e[0] == "notifyStreamEvent" and e[1][0]["type"] == "audioMuted" for e in player.events)
    )
    await counter.stop()


async def test_the_per_address_limit_counts_the_connections_of_every_worker(tmp_path: Path) -> None:
    """Ten WebSocket connections from one address against a limit of four: four are taken
    whichever workers they land on (each worker counting only its own would take up to eight)."""
    gw = GatewayProcess(workers=2, extra_args=["--mqtt-broker", "off", "--max-connections-per-ip", "4"])
    gw.start(tmp_path)
    opened: list[Any] = []
    try:
        refused = 0
        for _ in range(10):
            try:
                opened.append(await websockets.connect(gw.ws_url, local_addr=("127.0.0.2", 0)))
            except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed):
                refused += 1
        assert (len(opened), refused) == (4, 6)
        for ws in opened[:2]:  # closing some frees their share, whichever worker held them
            await ws.close()
        async with asyncio.timeout(10):
            while len(opened) < 6:
                try:
                    opened.append(await websockets.connect(gw.ws_url, local_addr=("127.0.0.2", 0)))
                except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed):
                    await asyncio.sleep(0.05)  # the close is still on its way to the worker
        assert len(opened) == 6
        with pytest.raises((OSError, websockets.InvalidHandshake, websockets.ConnectionClosed)):
            await websockets.connect(gw.ws_url, local_addr=("127.0.0.2", 0))
    finally:
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
        gw.stop()
