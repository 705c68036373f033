"""The SD live view over MQTT against a real Mosquitto on loopback: a Stream fed with a real
H.264 clip (320x240, a keyframe a second), `SdViewService` as the agent, and an aiomqtt
client as the Kerberos hub, sending keep-alives and decoding the JPEGs it gets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from fractions import Fraction
from pathlib import Path

import aiomqtt
import av
import orjson
import pytest
import structlog

from gateway.media.registry import StreamRegistry
from gateway.media.stream import Codec, MediaFrame, Stream
from gateway.media.thumbnails import Thumbnails
from gateway.mqtt_link import BrokerAddress
from gateway.sdview.protocol import SdImage, parse_sd_image, request_sd_stream
from gateway.sdview.service import SdViewService
from tests.conftest import GatewayProcess, MosquittoProcess
from tests.integration.conftest import AccessUnits
from tests.integration.test_workers import Connect, play_on, worker_of

pytestmark = pytest.mark.timeout(90)

VIDEO_TB = Fraction(1, 90000)
HUB_KEY = "hub-test"
WIDTH = 160


async def feed(stream: Stream, units: AccessUnits, fps: int = 30) -> None:
    count = 0
    while True:
        for data, keyframe in units:
            stream.push(MediaFrame("video", "H264", data, count * 90000 // fps, VIDEO_TB, keyframe))
            count += 1
            await asyncio.sleep(1 / fps)


@contextlib.asynccontextmanager
async def agent(
    mosquitto: MosquittoProcess, units: AccessUnits, **settings: object
) -> AsyncIterator[SdViewService]:
    """A fed stream ``front`` and an SD view service for device ``cam-1`` -> ``front``."""
    registry = StreamRegistry()
    stream = registry.claim("front")
    stream.set_codecs(Codec("H264", 90000), None)
    feeder = asyncio.ensure_future(feed(stream, units))
    service = SdViewService(
        registry,
        Thumbnails(registry),
        BrokerAddress("127.0.0.1", mosquitto.port),
        hub_key=HUB_KEY,
        devices={"cam-1": "front"},
        width=WIDTH,
        **settings,  # type: ignore[arg-type]
    )
    await service.start()
    try:
        async with asyncio.timeout(10):
            await service.connected.wait()
        yield service
    finally:
        await service.stop()
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)


class Hub:
    """The viewer side: keep-alives on the agent topic, pictures from the hub topic."""

    def __init__(self, client: aiomqtt.Client, device_id: str = "cam-1") -> None:
        self.client = client
        self.device_id = device_id
        self.images: list[SdImage] = []
        self.tasks: list[asyncio.Task[None]] = []
        self._arrived = asyncio.Event()

    async def start(self) -> Hub:
        await self.client.subscribe(f"kerberos/hub/{HUB_KEY}")
        self.tasks.append(asyncio.create_task(self._listen()))
        return self

    def ask(self) -> None:
        """Send a keep-alive every second until `quiet`."""
        self.tasks.append(asyncio.create_task(self._keep_alive()))

    def quiet(self) -> None:
        for task in self.tasks[1:]:
            task.cancel()
        del self.tasks[1:]

    async def _keep_alive(self) -> None:
        while True:
            payload = request_sd_stream(self.device_id, timestamp=1700000000)
            await self.client.publish(f"kerberos/agent/{HUB_KEY}", payload)
            await asyncio.sleep(1.0)

    async def _listen(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            self.images.append(parse_sd_image(message.payload))
            self._arrived.set()

    async def wait_images(self, count: int, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.images) < count:
                self._arrived.clear()
                await self._arrived.wait()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def hub(mosquitto: MosquittoProcess) -> AsyncIterator[Hub]:
    async with hub_at(mosquitto.port) as viewer:
        yield viewer


@contextlib.asynccontextmanager
async def hub_at(port: int, **login: str) -> AsyncIterator[Hub]:
    async with aiomqtt.Client("127.0.0.1", port, **login) as client:  # type: ignore[arg-type]
        viewer = await Hub(client).start()
        try:
            yield viewer
        finally:
            await viewer.close()


def decoded_size(jpeg: bytes) -> tuple[int, int]:
    context = av.CodecContext.create("mjpeg", "r")
    frames = context.decode(av.Packet(jpeg)) + context.decode(None)
    assert frames
    return frames[0].width, frames[0].height


async def wait_until(predicate: object, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def test_keep_alives_bring_pictures_and_silence_ends_them(
    mosquitto: MosquittoProcess, clip_units: AccessUnits
) -> None:
    async with agent(mosquitto, clip_units) as service, hub(mosquitto) as viewer:
        viewer.ask()
        await viewer.wait_images(3)
        for image in viewer.images:
            assert image.device_id == "cam-1"
            assert decoded_size(image.jpeg) == (WIDTH, WIDTH * 240 // 320)
        # One picture per keyframe: never the same keyframe twice in a row.
        assert len({image.jpeg for image in viewer.images[:3]}) >= 2
        viewer.quiet()
        await wait_until(lambda: not service.state.watching(service.clock()))
        await wait_until(lambda: len(viewer.images) == service.published)
        sent = service.published
        await asyncio.sleep(2.5)  # a generous window: more than two keyframes go by
        assert service.published == sent and len(viewer.images) == sent
        # Asking again opens the view again.
        viewer.ask()
        await viewer.wait_images(sent + 1)


async def test_malformed_keep_alives_do_not_stop_the_view(
    mosquitto: MosquittoProcess, clip_units: AccessUnits
) -> None:
    bad_messages = [
        b"",
        b"not json",
        b"[1, 2, 3]",
        orjson.dumps({"mid": "x", "timestamp": "x", "device_id": "cam-1"}),  # no payload
        orjson.dumps(
            {
                "mid": 5,
                "timestamp": True,
                "device_id": ["cam-1"],
                "payload": {"action": "request-sd-stream", "device_id": "cam-1"},
            }
        ),
        orjson.dumps(
            {
                "mid": "x",
                "timestamp": "x",
                "device_id": "cam-1",
                "payload": {"action": "request-sd-stream", "device_id": "cam-2"},
            }
        ),
        b"{" + b" " * 200_000 + b"}",  # huge
        bytes(range(256)) * 10,
    ]
    async with agent(mosquitto, clip_units) as service, hub(mosquitto) as viewer:
        viewer.ask()
        await viewer.wait_images(1)
        for payload in bad_messages:
            await viewer.client.publish(f"kerberos/agent/{HUB_KEY}", payload)
        # Another device's keep-alive is for another agent: no pictures for it.
        await viewer.client.publish(f"kerberos/agent/{HUB_KEY}", request_sd_stream("cam-9", timestamp=1))
        await wait_until(lambda: service.dropped_messages == len(bad_messages))
        before = len(viewer.images)
        await viewer.wait_images(before + 2)
        assert {image.device_id for image in viewer.images} == {"cam-1"}
        assert service.connected.is_set()


async def test_oversize_pictures_are_refused(mosquitto: MosquittoProcess, clip_units: AccessUnits) -> None:
    with structlog.testing.capture_logs() as logs:
        async with agent(mosquitto, clip_units, max_payload_bytes=500) as service, hub(mosquitto) as viewer:
            viewer.ask()
            await wait_until(lambda: service.refused >= 2)
            assert service.published == 0 and viewer.images == []
    refusals = [entry for entry in logs if entry["event"] == "sd_view_picture_refused"]
    assert len(refusals) >= 2 and refusals[0]["device_id"] == "cam-1"
    assert refusals[0]["max_payload_bytes"] == 500 and refusals[0]["size"] > 500
    assert "lower the SD view width" in refusals[0]["info"]


async def test_the_view_comes_back_after_the_broker_restarts(
    mosquitto: MosquittoProcess, clip_units: AccessUnits
) -> None:
    async with agent(mosquitto, clip_units) as service:
        mosquitto.stop()
        await wait_until(lambda: not service.connected.is_set())
        mosquitto.start()
        await asyncio.wait_for(service.connected.wait(), 20)
        async with hub(mosquitto) as viewer:
            viewer.ask()
            await viewer.wait_images(2)


async def test_through_a_running_skyrelay_serve(
    mosquitto: MosquittoProcess, clip: Path, make_gateway: Callable[[dict[str, str]], GatewayProcess]
) -> None:
    """The whole path in a real gateway process: its settings turn the SD view on, an RTMP push
    (real ffmpeg) is the stream, and a hub on Mosquitto gets decodable JPEGs of it."""
    gateway = await asyncio.to_thread(
        make_gateway,
        {
            "SKYRELAY_MQTT": mosquitto.url,
            "SKYRELAY_SD_VIEW_HUB_KEY": HUB_KEY,
            "SKYRELAY_SD_VIEW_DEVICES": "cam-1=front",
            "SKYRELAY_SD_VIEW_WIDTH": str(WIDTH),
        },
    )
    await wait_until(lambda: gateway.health()["mqtt_links"].get("sd_view") is True)
    push = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip),
        "-c", "copy", "-f", "flv", f"rtmp://127.0.0.1:{gateway.rtmp_port}/live/front",
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with hub(mosquitto) as viewer:
            viewer.ask()
            await viewer.wait_images(3)
            for image in viewer.images:
                assert image.device_id == "cam-1"
                assert decoded_size(image.jpeg) == (WIDTH, WIDTH * 240 // 320)
        assert await asyncio.to_thread(gateway.metric, "skyrelay_sd_view_images_total") >= 3
        assert push.returncode is None, "the push kept going"
    finally:
        if push.returncode is None:
            push.kill()
        await push.wait()
    assert gateway.health()["status"] == "ok"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """`skyrelay serve --workers 2` with the SD view on, on its embedded broker (with a log-in)."""
    gw = GatewayProcess(
        extra_args=["--workers", "2"],
        extra_env={
            "SKYRELAY_MQTT_BROKER_USER": "relay",
            "SKYRELAY_MQTT_BROKER_PASSWORD": "secret",
            "SKYRELAY_SD_VIEW_HUB_KEY": HUB_KEY,
            "SKYRELAY_SD_VIEW_DEVICES": "cam-1=front",
            "SKYRELAY_SD_VIEW_WIDTH": str(WIDTH),
        },
    )
    gw.start(tmp_path)
    try:
        yield gw
    finally:
        gw.stop()


async def test_with_two_workers_the_worker_holding_the_stream_sends_its_pictures(
    gateway: GatewayProcess, connect: Connect, video_track: Callable[[], object]
) -> None:
    """Each worker runs an SD view on the machine's broker; only the one holding the stream
    publishes, though the other has a mirror of it (a player there): each keyframe once."""
    await wait_until(lambda: len(gateway.log_events("sd_view_connected")) == 2)
    assert gateway.health()["mqtt_links"] == {"dji": True, "sd_view": True}
    publisher = await (await connect()).publish("front", [video_track()])
    await publisher.wait_status("PUBLISHING")
    owner = worker_of(publisher, gateway)
    _, player = await play_on(connect, gateway, "front", 1 - owner)
    await player.wait_status("PLAYING")

    async with hub_at(gateway.mqtt_broker_port, username="relay", password="secret") as viewer:
        viewer.ask()
        await viewer.wait_images(3)
        viewer.quiet()
        for image in viewer.images:
            assert decoded_size(image.jpeg) == (WIDTH, WIDTH * 240 // 320)

        def published() -> list[float]:
            metric = "skyrelay_sd_view_images_total"
            return [gateway.metric(metric, worker=str(worker)) for worker in (owner, 1 - owner)]

        # Every picture sent has arrived (the view closes without keep-alives): all the owner's.
        async with asyncio.timeout(15):
            while sum(sent := await asyncio.to_thread(published)) != (arrived := len(viewer.images)):
                await asyncio.sleep(0.2)
    assert sent == [arrived, 0]
    # The machine has one DJI MQTT client (the control process's), and one broker.
    assert len(gateway.log_events("mqtt_connected")) == 1
    assert not gateway.log_events("mqtt_broker_not_started")
