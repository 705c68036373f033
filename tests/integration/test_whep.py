"""WHEP egress with a real aiortc player: a published stream and an on-demand drone
camera are played over plain HTTP signalling, and every bad request gets a clear error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest_asyncio
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from gateway.app import Gateway
from gateway.media.synthetic import EncodedVideoTrack
from gateway.wcs.client import WcsClient
from tests.conftest import MosquittoProcess
from tests.integration.conftest import bridged_gateway, wait_stream
from tests.integration.drone import AIRCRAFT_VIDEO, dock


class WhepPlayer:
    """An aiortc player speaking WHEP: offer recvonly video, POST it, apply the answer."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.tracks: list[MediaStreamTrack] = []
        self.pc.on("track", self.tracks.append)
        self.resource: str | None = None
        self.sizes: list[tuple[int, int]] = []

    async def play(self, name: str) -> int:
        self.pc.addTransceiver("video", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Content-Type": "application/sdp"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{self.base}/whep/{name}", data=self.pc.localDescription.sdp, headers=headers
            ) as reply,
        ):
            if reply.status != 201:
                return reply.status
            self.resource = reply.headers["Location"]
            await self.pc.setRemoteDescription(RTCSessionDescription(await reply.text(), "answer"))
            return reply.status

    async def frames(self, count: int) -> None:
        async with asyncio.timeout(30):
            while not self.tracks:
                await asyncio.sleep(0.05)
            while len(self.sizes) < count:
                frame = await self.tracks[0].recv()
                self.sizes.append((frame.width, frame.height))

    async def stop(self) -> int:
        status = 0
        if self.resource is not None:
            async with aiohttp.ClientSession() as http, http.delete(self.base + self.resource) as reply:
                status = reply.status
        await self.pc.close()
        return status


@pytest_asyncio.fixture
async def players() -> AsyncIterator[Callable[[Gateway], WhepPlayer]]:
    made: list[WhepPlayer] = []

    def make(gateway: Gateway) -> WhepPlayer:
        made.append(WhepPlayer(f"http://127.0.0.1:{gateway.config.http_port}"))
        return made[-1]

    yield make
    for player in made:
        await player.pc.close()


async def test_whep_plays_a_published_stream_and_delete_ends_it(
    local_gateway: Gateway,
    video_track: Callable[[], EncodedVideoTrack],
    players: Callable[[Gateway], WhepPlayer],
) -> None:
    client = await WcsClient.connect(f"ws://127.0.0.1:{local_gateway.config.ws_port}")
    publisher = await client.publish("cam", [video_track()])
    await publisher.wait_status("PUBLISHING")
    await wait_stream(local_gateway, "cam")
    player = players(local_gateway)
    assert await player.play("cam") == 201
    assert player.resource is not None and player.resource.startswith("/whep/sessions/")
    await player.frames(20)
    assert player.sizes[-1] == (320, 240)
    stream = local_gateway.registry.get("cam")
    assert stream is not None and len(stream.subscriptions) == 1
    assert await player.stop() == 200
    assert not local_gateway.whep.sessions and not stream.subscriptions
    await client.close()


async def test_bad_whep_requests_get_clear_errors(
    local_gateway: Gateway, players: Callable[[Gateway], WhepPlayer]
) -> None:
    assert await players(local_gateway).play("no-such-stream") == 404
    base = f"http://127.0.0.1:{local_gateway.config.http_port}"
    sdp = {"Content-Type": "application/sdp"}
    async with aiohttp.ClientSession() as http:
        for method, path, headers, body, want in [
            ("POST", "/whep/x", {"Content-Type": "text/plain"}, b"v=0", 415),
            ("POST", "/whep/x", sdp, b"\xff\xfe", 400),
            ("DELETE", "/whep/sessions/nope", {}, b"", 404),
            ("PATCH", "/whep/sessions/nope", sdp, b"", 405),
        ]:
            async with http.request(method, base + path, headers=headers, data=body) as reply:
                assert reply.status == want and (await reply.json())["error"], (method, path)


async def test_whep_starts_a_drone_camera_on_demand(
    mosquitto: MosquittoProcess, clip: Path, players: Callable[[Gateway], WhepPlayer]
) -> None:
    async with bridged_gateway(mosquitto) as gateway, dock(gateway, mosquitto, clip) as sim:
        player = players(gateway)
        assert await player.play(AIRCRAFT_VIDEO) == 201
        await player.frames(20)
        assert len(sim.starts) == 1
        await player.stop()
        async with asyncio.timeout(15):  # the last viewer left: stop after the linger
            while not sim.stops:
                await asyncio.sleep(0.05)


async def test_whep_session_ends_with_its_stream(
    local_gateway: Gateway,
    video_track: Callable[[], EncodedVideoTrack],
    players: Callable[[Gateway], WhepPlayer],
) -> None:
    client = await WcsClient.connect(f"ws://127.0.0.1:{local_gateway.config.ws_port}")
    publisher = await client.publish("short", [video_track()])
    await publisher.wait_status("PUBLISHING")
    player = players(local_gateway)
    assert await player.play("short") == 201
    await player.frames(5)
    await publisher.stop()
    async with asyncio.timeout(10):  # the stream's end closes the session
        while local_gateway.whep.sessions:
            await asyncio.sleep(0.05)
    await client.close()
