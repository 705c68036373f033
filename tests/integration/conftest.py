"""Fixtures for integration tests: aiortc peers speaking the raw WCS protocol to a real
gateway process, publishing a pre-encoded H.264 clip (no encoder in the loop)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import av
import pytest
import pytest_asyncio
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

from gateway.app import Gateway
from gateway.config import Config
from gateway.media.registry import StreamRegistry
from gateway.media.servers.rtsp import RtspServer
from gateway.media.synthetic import ClipFeed, EncodedVideoTrack, make_h264_clip, read_access_units
from gateway.wcs.client import ClientStream, WcsClient
from tests.conftest import GatewayProcess, MosquittoProcess, free_port

CACHE = Path(os.environ.get("SKYRELAY_TEST_CACHE", Path.home() / ".cache" / "skyrelay-tests"))

AccessUnits = list[tuple[bytes, bool]]


@pytest.fixture(scope="session")
def clip_units() -> AccessUnits:
    """320x240, 30 fps, a keyframe every second."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = make_h264_clip(CACHE, width=320, height=240, fps=30, seconds=4, bitrate=300_000, gop=30)
    return read_access_units(path)


@pytest.fixture(scope="session")
def long_gop_units() -> AccessUnits:
    """320x240, 30 fps, one keyframe every 10 s: shows what a late viewer gets mid-GOP."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = make_h264_clip(CACHE, width=320, height=240, fps=30, seconds=10, bitrate=300_000, gop=300)
    return read_access_units(path)


@pytest.fixture(scope="session")
def clip() -> Path:
    """The clip pushes are made of: 320x240, 30 fps, a keyframe every second."""
    CACHE.mkdir(parents=True, exist_ok=True)
    return make_h264_clip(CACHE, width=320, height=240, fps=30, seconds=4, bitrate=300_000, gop=30)


@contextlib.asynccontextmanager
async def bridged_gateway(mosquitto: MosquittoProcess, **settings: Any) -> AsyncIterator[Gateway]:
    """An in-process gateway whose DJI bridge is connected to ``mosquitto``; short live_*
    timings unless ``settings`` say otherwise."""
    defaults = {"live_linger": 1.0, "live_reply_timeout": 5.0, "live_push_timeout": 4.0}
    gateway = Gateway(local_config(**{"mqtt": mosquitto.url, **defaults, **settings}))
    await gateway.start()
    try:
        assert gateway.dji is not None
        async with asyncio.timeout(10):  # subscribed before the dock announces itself
            await gateway.dji.mqtt.connected.wait()
        yield gateway
    finally:
        await gateway.stop()


@pytest_asyncio.fixture
async def drone_gateway(mosquitto: MosquittoProcess) -> AsyncIterator[Gateway]:
    async with bridged_gateway(mosquitto) as gateway:
        yield gateway


@pytest_asyncio.fixture
async def connect(gateway: GatewayProcess) -> AsyncIterator[Callable[[], Awaitable[WcsClient]]]:
    """Opens WCS clients to the module's gateway; closes them all after the test."""
    opened: list[WcsClient] = []

    async def open_client() -> WcsClient:
        client = await WcsClient.connect(gateway.ws_url)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.close()


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """`skyrelay serve --workers 2` (no MQTT broker), one per test module."""
    gw = GatewayProcess(workers=2, extra_args=["--mqtt-broker", "off"])
    gw.start(tmp_path_factory.mktemp("workers"))
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def video_track(clip_units: AccessUnits) -> Callable[[], EncodedVideoTrack]:
    return lambda: EncodedVideoTrack(clip_units, fps=30)


class FrameCounter:
    """Reads and decodes a played video track in the background, keeping what it saw."""

    def __init__(self, stream: ClientStream) -> None:
        self.stream = stream
        self.frames: list[av.VideoFrame] = []
        self.pts: list[int] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> FrameCounter:
        self.task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> None:
        await self.stream.wait_for(lambda: any(t.kind == "video" for t in self.stream.tracks))
        track = next(t for t in self.stream.tracks if t.kind == "video")
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return  # the track ended: the player stopped
            self.pts.append(frame.pts)
            self.frames.append(frame)
            del self.frames[:-5]  # keep memory flat

    async def wait_frames(self, count: int, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.pts) < count:
                if self.task is not None and self.task.done():
                    self.task.result()
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


def local_config(**settings: Any) -> Config:
    """A configuration for a gateway in this process: loopback only, free ports."""
    webrtc_port = free_port()
    return Config(
        ws_port=free_port(),
        http_port=free_port(),
        rtmp_port=free_port(),
        rtsp_port=free_port(),
        **{
            "host": "127.0.0.1",
            "ice_addresses": ("127.0.0.1",),
            "mqtt_broker": "off",
            "device_state_file": "off",
            "webrtc_udp_port": webrtc_port,
            "webrtc_tcp_port": webrtc_port,
            **settings,
        },
    )


@pytest_asyncio.fixture
async def local_gateway() -> AsyncIterator[Gateway]:
    gateway = Gateway(local_config())
    await gateway.start()
    yield gateway
    await gateway.stop()


async def wait_stream(gateway: Gateway, name: str, timeout: float = 15.0) -> None:
    """Until ``name`` is playable on the in-process gateway."""
    async with asyncio.timeout(timeout):
        while gateway.registry.get(name) is None:
            await asyncio.sleep(0.05)


async def play_and_decode(gateway: Gateway, name: str, frames: int = 30) -> FrameCounter:
    """Play ``name`` from a new WCS client until ``frames`` frames were decoded."""
    client = await WcsClient.connect(f"ws://127.0.0.1:{gateway.config.ws_port}")
    player = await client.play(name)
    await player.wait_status("PLAYING")
    counter = FrameCounter(player).start()
    await counter.wait_frames(frames)
    await counter.stop()
    await client.close()
    return counter


class ClipCamera(ClipFeed):
    """The clip replayed in real time into stream ``name`` of ``registry`` (RTSP, HLS tests)."""

    def __init__(self, registry: StreamRegistry, name: str, units: AccessUnits) -> None:
        self.registry = registry
        super().__init__(registry.claim(name), units, ingest="test")


# The stream the RTSP tests' camera feeds (a name with slashes, like a drone camera's).
RTSP_TEST_STREAM = "SN/165-0-7/normal-0"


@pytest_asyncio.fixture
async def camera(clip_units: AccessUnits) -> AsyncIterator[ClipCamera]:
    source = ClipCamera(StreamRegistry(), RTSP_TEST_STREAM, clip_units)
    async with asyncio.timeout(30):
        while source.stream.keyframe is None:
            await asyncio.sleep(0.05)
    yield source
    await source.stop()


@pytest_asyncio.fixture
async def servers(camera: ClipCamera) -> AsyncIterator[Callable[..., Any]]:
    """Starts RtspServers on the camera's registry; stops them all after the test."""
    started: list[RtspServer] = []

    async def start(port: int = 0, **options: Any) -> RtspServer:
        server = RtspServer(camera.registry, "127.0.0.1", port, **options)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


def capture_rtp(pc: RTCPeerConnection) -> list[RtpPacket]:
    """Every video RTP packet (media and RTX) a player's peer connection receives, from now."""
    packets: list[RtpPacket] = []
    receiver = next(t.receiver for t in pc.getTransceivers() if t.kind == "video")
    handle = receiver._handle_rtp_packet

    async def recorded(packet: RtpPacket, arrival_time_ms: int) -> None:
        packets.append(packet)
        await handle(packet, arrival_time_ms)

    receiver._handle_rtp_packet = recorded  # type: ignore[method-assign]
    return packets
