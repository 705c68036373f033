"""Connections that end badly release everything: peer connections, tasks, threads, file
descriptors and stream names. Clients that stop answering pings are dropped."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import pytest
from aiortc import MediaStreamTrack

from gateway.app import Gateway, StartError
from gateway.media.synthetic import EncodedVideoTrack
from gateway.wcs.client import ClientStream, WcsClient, WcsError
from tests.conftest import GatewayProcess, free_port
from tests.integration.conftest import local_config

TrackFactory = Callable[[], EncodedVideoTrack]
GatewayFactory = Callable[[dict[str, str]], GatewayProcess]
CYCLES = 200


async def settle(gateway: GatewayProcess, baseline: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Wait until the gateway's resource counts are back to ``baseline``."""
    keys = ("streams", "sessions", "peer_connections", "tasks", "threads", "fds")
    health: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout):
            while True:
                health = gateway.health()
                if all(health[k] == baseline[k] for k in keys):
                    return health
                await asyncio.sleep(0.2)
    except TimeoutError:
        diff = {k: (baseline[k], health.get(k)) for k in keys if health.get(k) != baseline[k]}
        before, after = baseline["task_kinds"], health.get("task_kinds", {})
        kinds = {k: (before.get(k, 0), n) for k, n in after.items() if n != before.get(k, 0)}
        raise AssertionError(
            f"resources left behind (baseline, now): {diff}; tasks by kind: {kinds}"
        ) from None


async def test_200_publish_play_close_cycles_leave_nothing_behind(
    gateway: GatewayProcess, video_track: TrackFactory
) -> None:
    # The gateway at rest: its MQTT link up too (a link's message reader is a task).
    async with asyncio.timeout(30):
        while not all(gateway.health()["mqtt_links"].values()):
            await asyncio.sleep(0.1)
    baseline = await settle(gateway, gateway.health())
    assert baseline["mqtt_links"] == {"dji": True}
    assert baseline["peer_connections"] == 0 and baseline["streams"] == 0
    with_frames = 0
    for cycle in range(CYCLES):
        name = f"cycle-{cycle}"
        pub_client = await WcsClient.connect(gateway.ws_url)
        play_client = await WcsClient.connect(gateway.ws_url)
        publisher = await pub_client.publish(name, [video_track()])
        await publisher.wait_status("PUBLISHING")  # a stream is playable once media arrives
        player = await play_client.play(name)
        # Most cycles end with media reaching the player; one in ten right after the play
        # was answered (ICE and DTLS still under way), one in ten at PLAYING.
        if cycle % 10 != 0:
            await player.wait_status("PLAYING")
        if cycle % 10 > 1:
            await first_frame(player)
            with_frames += 1
        # End abruptly, in turns: socket reset, plain close, or orderly stop then close.
        match cycle % 3:
            case 0:
                pub_client.ws.transport.abort()
                play_client.ws.transport.abort()
            case 1:
                await play_client.ws.close()
                await pub_client.ws.close()
            case 2:
                await player.stop(wait=False)
                await publisher.stop(wait=False)
        await pub_client.close()
        await play_client.close()
    assert with_frames == CYCLES * 8 // 10
    await settle(gateway, baseline)


async def first_frame(player: ClientStream) -> None:
    """Until the player has decoded a video frame."""
    await player.wait_for(lambda: any(t.kind == "video" for t in player.tracks))
    track = next(t for t in player.tracks if t.kind == "video")
    async with asyncio.timeout(10):
        await track.recv()


async def test_client_missing_pings_is_dropped_and_its_streams_released(
    make_gateway: GatewayFactory, video_track: TrackFactory
) -> None:
    # Pings every 0.2 s; a client is dropped after 3 unanswered ones.
    gateway = make_gateway({"SKYRELAY_PING_INTERVAL": "0.2", "SKYRELAY_PING_PROBES": "3"})
    polite = await WcsClient.connect(gateway.ws_url)
    silent = await WcsClient.connect(gateway.ws_url)
    silent.answer_pings = False
    try:
        publisher = await silent.publish("silent-cam", [video_track()])
        await publisher.wait_status("PUBLISHING")
        player = await polite.play("silent-cam")
        await player.wait_status("PLAYING")
        async with asyncio.timeout(10):
            await silent.ws.wait_closed()
        assert silent.ws.close_code == 1001
        assert silent.pings >= 3
        # Its stream went with it, and its player was told why.
        status = await player.wait_status("STOPPED")
        assert status["info"] == "Stopped by publisher stop"
        async with asyncio.timeout(10):
            while gateway.health()["streams"] != 0:
                await asyncio.sleep(0.1)
        # The client that answers pings is still connected and can still be served.
        with pytest.raises(WcsError, match="Stream not found"):
            await polite.play("silent-cam")
        assert polite.pings >= silent.pings and polite.ws.close_code is None
    finally:
        await silent.close()
        await polite.close()


class SilentTrack(MediaStreamTrack):
    """A video track that never yields a frame: connected, but no media."""

    kind = "video"

    async def recv(self) -> av.Packet:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_publisher_that_sends_no_media_fails_and_frees_its_name(
    make_gateway: GatewayFactory, video_track: TrackFactory
) -> None:
    gateway = make_gateway({"SKYRELAY_ICE_TIMEOUT": "1.5"})
    client = await WcsClient.connect(gateway.ws_url)
    try:
        silent = await client.publish("mute-cam", [SilentTrack()])
        async with asyncio.timeout(10):
            while silent.pc.connectionState != "connected":
                await asyncio.sleep(0.05)
        # Not playable while nothing arrives.
        with pytest.raises(WcsError, match="Stream not found"):
            await client.play("mute-cam")
        with pytest.raises(WcsError, match="No media received from the publisher"):
            await silent.wait_status("PUBLISHING", timeout=10)
        # The name is free again for a publisher that does send.
        publisher = await client.publish("mute-cam", [video_track()])
        await publisher.wait_status("PUBLISHING")
    finally:
        await client.close()


def listening(port: int) -> bool:
    """Something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def busy_port() -> socket.socket:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


async def test_a_part_that_cannot_start_stops_those_started_before_it() -> None:
    """The RTSP port taken: start fails naming it, and the WebSocket and HTTP servers that
    started before it listen no more."""
    with busy_port() as taken:
        config = dataclasses.replace(local_config(), rtsp_port=taken.getsockname()[1])
        gateway = Gateway(config)
        with pytest.raises(StartError, match="RTSP server could not start"):
            await gateway.start()
        assert not listening(config.ws_port) and not listening(config.http_port)
        await gateway.stop()  # nothing left to stop; harmless
    # The same ports start once the RTSP one is free again (the WebRTC ports are new: a UDP
    # socket closes at the loop's next turn).
    webrtc_port = free_port()
    gateway = Gateway(dataclasses.replace(config, webrtc_udp_port=webrtc_port, webrtc_tcp_port=webrtc_port))
    await gateway.start()
    try:
        assert listening(config.ws_port) and listening(config.rtsp_port)
    finally:
        await gateway.stop()
    assert not listening(config.ws_port) and not listening(config.rtsp_port)


def test_skyrelay_serve_with_a_busy_port_exits_with_a_clear_error(tmp_path: Path) -> None:
    with busy_port() as taken:
        process = GatewayProcess(rtsp_port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="gateway exited early"):
            process.start(tmp_path, timeout=60)
        assert process.proc is not None and process.proc.returncode == 1
        assert "skyrelay: RTSP server could not start" in process.log_text()
        assert not listening(process.ws_port) and not listening(process.http_port)
