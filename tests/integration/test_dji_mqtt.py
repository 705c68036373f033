"""The DJI bridge's MQTT side against a real Mosquitto, with a test client playing the dock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
import pytest_asyncio
import structlog

from gateway.dji import protocol as p
from gateway.dji.devices import DeviceRegistry, Event, ServiceReplied, VideosChanged
from gateway.dji.mqtt import DjiMqtt
from gateway.mqtt_link import BrokerAddress
from gateway.wcs.client import WcsClient
from tests.conftest import MosquittoProcess
from tests.integration.conftest import bridged_gateway
from tests.integration.drone import http_json

DOCK = "7CTDM4100B2A8L"
AIRCRAFT = "1581F5BMD228Q00A82XX"
CAPACITY = {
    "available_video_number": 2,
    "coexist_video_number_max": 1,
    "device_list": [
        {
            "sn": AIRCRAFT,
            "camera_list": [
                {
                    "camera_index": "53-0-0",
                    "video_list": [
                        {"video_index": "normal-0", "video_type": "normal"},
                        {"video_index": "zoom-0", "video_type": "zoom"},
                    ],
                }
            ],
        }
    ],
}


class Bridge:
    def __init__(self, broker: MosquittoProcess) -> None:
        self.registry = DeviceRegistry(offline_after=60)
        self.events: list[Event] = []
        self.mqtt = DjiMqtt(BrokerAddress.parse(broker.url), self.registry, self.events.append)
        self.task: asyncio.Task[None] | None = None

    async def wait(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def bridge(mosquitto: MosquittoProcess) -> AsyncIterator[Bridge]:
    b = Bridge(mosquitto)
    b.task = asyncio.create_task(b.mqtt.run())
    async with asyncio.timeout(10):
        await b.mqtt.connected.wait()
    yield b
    b.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await b.task


@contextlib.asynccontextmanager
async def dock(broker: MosquittoProcess) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"dock-{DOCK}") as client:
        await client.subscribe(f"sys/product/{DOCK}/status_reply", qos=1)
        await client.subscribe(f"thing/product/{DOCK}/+", qos=1)
        yield client


async def next_message(client: aiomqtt.Client, topic: str, timeout: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            if str(message.topic) == topic:
                return orjson.loads(message.payload)
    raise AssertionError("unreachable")


def envelope(method: str, data: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps(
        {"tid": "t-" + method, "bid": "b-" + method, "timestamp": 1, "method": method, "data": data, **extra}
    )


async def come_online(client: aiomqtt.Client) -> None:
    topo = {"domain": "3", "type": 2, "sub_type": 0, "sub_devices": [{"sn": AIRCRAFT, "type": 91}]}
    await client.publish(f"sys/product/{DOCK}/status", envelope("update_topo", topo), qos=1)
    reply = await next_message(client, f"sys/product/{DOCK}/status_reply")
    assert (reply["tid"], reply["bid"], reply["data"]) == ("t-update_topo", "b-update_topo", {"result": 0})
    state = envelope("", {"live_capacity": CAPACITY}, gateway=DOCK, need_reply=1)
    await client.publish(f"thing/product/{DOCK}/state", state, qos=1)
    state_reply = await next_message(client, f"thing/product/{DOCK}/state_reply")
    assert state_reply["data"] == {"result": 0}


async def test_dock_comes_online_and_its_videos_are_listed(
    bridge: Bridge, mosquitto: MosquittoProcess
) -> None:
    async with dock(mosquitto) as client:
        await come_online(client)
        await bridge.wait(lambda: len(bridge.registry.videos()) == 2)
    names = sorted(str(video.video_id) for _, video in bridge.registry.videos())
    assert names == [f"{AIRCRAFT}/53-0-0/normal-0", f"{AIRCRAFT}/53-0-0/zoom-0"]
    assert any(isinstance(e, VideosChanged) and e.sn == DOCK for e in bridge.events)


async def test_command_reaches_the_dock_and_its_reply_comes_back(
    bridge: Bridge, mosquitto: MosquittoProcess
) -> None:
    video = p.VideoId(AIRCRAFT, "53-0-0", "normal-0")
    async with dock(mosquitto) as client:
        await come_online(client)
        request = p.live_start_push(p.UrlType.RTMP, "rtmp://127.0.0.1:1935/live/k", video, p.VideoQuality.HD)
        assert await bridge.mqtt.send_command(DOCK, request)
        command = await next_message(client, f"thing/product/{DOCK}/services")
        assert (command["tid"], command["bid"], command["method"]) == (
            request.tid,
            request.bid,
            "live_start_push",
        )
        assert command["data"]["video_id"] == str(video) and command["data"]["url_type"] == 1
        reply = {
            "tid": command["tid"],
            "bid": command["bid"],
            "timestamp": 2,
            "gateway": DOCK,
            "method": "live_start_push",
            "data": {"result": 613006},
        }
        await client.publish(f"thing/product/{DOCK}/services_reply", orjson.dumps(reply), qos=1)
        await bridge.wait(lambda: any(isinstance(e, ServiceReplied) for e in bridge.events))
    (replied,) = [e for e in bridge.events if isinstance(e, ServiceReplied)]
    assert (replied.gateway_sn, replied.reply.tid, replied.reply.result) == (DOCK, request.tid, 613006)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json at all",
        b'{"bid": "b", "method": "update_topo", "data": {}}',
        b'{"tid": 5, "bid": "b", "data": {}}',
        b'{"tid": "t", "bid": "b", "data": [1, 2]}',
        b'{"tid": "t", "bid": "b", "data": {"x": "' + b"y" * 300_000 + b'"}}',
    ],
    ids=["not-json", "no-tid", "tid-not-string", "data-not-object", "huge"],
)
async def test_malformed_device_messages_are_dropped_and_the_bridge_goes_on(
    bridge: Bridge, mosquitto: MosquittoProcess, payload: bytes
) -> None:
    async with dock(mosquitto) as client:
        await client.publish(f"thing/product/{DOCK}/state", payload, qos=1)
        await bridge.wait(lambda: bridge.mqtt.dropped_messages == 1)
        await come_online(client)  # still answered
        await bridge.wait(lambda: len(bridge.registry.videos()) == 2)


async def test_a_message_whose_handling_raises_is_logged_counted_and_the_bridge_goes_on(
    bridge: Bridge, mosquitto: MosquittoProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    receive = bridge.registry.receive

    def broken_once(topic: str, payload: bytes, now: float) -> list[Event]:
        if topic.endswith("/osd"):
            raise RuntimeError("a bug in the osd handler")
        return receive(topic, payload, now)

    monkeypatch.setattr(bridge.registry, "receive", broken_once)
    with structlog.testing.capture_logs() as logs:
        async with dock(mosquitto) as client:
            osd = {"tid": "t", "bid": "b", "timestamp": 1, "gateway": DOCK, "data": {"mode_code": 0}}
            await client.publish(f"thing/product/{DOCK}/osd", orjson.dumps(osd), qos=1)
            await bridge.wait(lambda: bridge.mqtt.failed_messages == 1)
            await come_online(client)  # the next messages are still handled
            await bridge.wait(lambda: len(bridge.registry.videos()) == 2)
    assert bridge.mqtt.connected.is_set() and bridge.mqtt.dropped_messages == 0
    (failed,) = [entry for entry in logs if entry["event"] == "dji_message_failed"]
    assert failed["topic"] == f"thing/product/{DOCK}/osd" and "a bug in the osd handler" in failed["error"]


async def test_bridge_reconnects_after_the_broker_restarts(
    bridge: Bridge, mosquitto: MosquittoProcess
) -> None:
    mosquitto.stop()
    await bridge.wait(lambda: not bridge.mqtt.connected.is_set())
    assert not await bridge.mqtt.send_command(
        DOCK, p.live_stop_push(p.VideoId(AIRCRAFT, "53-0-0", "normal-0"))
    )
    mosquitto.start()
    async with asyncio.timeout(20):
        await bridge.mqtt.connected.wait()
    async with dock(mosquitto) as client:
        await come_online(client)  # subscribed again: messages flow
        await bridge.wait(lambda: len(bridge.registry.videos()) == 2)


def test_broker_urls() -> None:
    assert BrokerAddress.parse("mqtt://127.0.0.1") == BrokerAddress("127.0.0.1", 1883)
    secure = BrokerAddress.parse("mqtts://user:p%40ss@emqx.example:8884", ca_file="/ca.pem")
    assert secure == BrokerAddress("emqx.example", 8884, "user", "p@ss", True, "/ca.pem")
    assert BrokerAddress.parse("mqtts://h").port == 8883
    for bad in ("http://h:1883", "mqtt://", "mqtt://h:99999", "h:1883"):
        with pytest.raises(ValueError):
            BrokerAddress.parse(bad)


async def test_a_restarted_gateway_offers_the_docks_videos_at_its_first_word(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    """Docks send live_capacity only when it changes. A gateway restarted meanwhile knows the
    videos from its state file: listed offline at once, playable at the dock's next osd."""
    state_file = str(tmp_path / "state" / "devices.json")
    video = f"{AIRCRAFT}/53-0-0/normal-0"
    async with dock(mosquitto) as client:
        async with bridged_gateway(mosquitto, device_state_file=state_file) as first:
            await come_online(client)
            async with asyncio.timeout(10):
                while not (first.dji and first.dji.serves(video)):
                    await asyncio.sleep(0.05)
        async with bridged_gateway(mosquitto, device_state_file=state_file) as second:
            assert second.dji is not None
            (listed,) = (await http_json(second, "/api/devices"))["gateways"]
            assert (listed["sn"], listed["online"], listed["last_seen_s"]) == (DOCK, False, None)
            assert listed["aircraft"] == [AIRCRAFT]
            assert [v["stream"] for v in listed["videos"]] == [video, f"{AIRCRAFT}/53-0-0/zoom-0"]
            # Offline: known, not playable yet (a play fails at once with "DJI device offline").
            assert second.dji.serves(video) and not second.dji.devices.gateways[DOCK].online
            # Only an osd, as a dock sends every second or so: no capacity.
            await client.publish(f"thing/product/{DOCK}/osd", envelope("", {"mode_code": 0}, gateway=DOCK))
            async with asyncio.timeout(10):
                while not second.dji.devices.gateways[DOCK].online:
                    await asyncio.sleep(0.05)
            # A viewer's play reaches the dock as live_start_push.
            viewer = await WcsClient.connect(f"ws://127.0.0.1:{second.config.ws_port}")
            playing = asyncio.create_task(viewer.play(video, timeout=30))  # answered once live
            try:
                command = await next_message(client, f"thing/product/{DOCK}/services")
                assert command["method"] == "live_start_push" and command["data"]["video_id"] == video
            finally:
                playing.cancel()
                await asyncio.gather(playing, return_exceptions=True)
                await viewer.close()
