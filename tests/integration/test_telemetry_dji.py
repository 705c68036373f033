"""A drone's flight data end to end: the dock simulator (real Mosquitto) sends osd at 10 Hz,
the bridge turns it into samples on the aircraft camera's stream, and WebRTC players get it
at the configured rate, stamped within a frame of the video they were receiving; a player
that opted out gets none. Every bad osd a device can send is sent here while a player
plays: the video and the good telemetry go on, and each is counted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import orjson

from gateway.app import Gateway
from gateway.dji.dock_sim import DockBehaviour
from gateway.wcs.client import WcsClient
from tests.conftest import MosquittoProcess
from tests.integration.conftest import bridged_gateway
from tests.integration.drone import AIRCRAFT_VIDEO, dock
from tests.integration.test_telemetry_delivery import FRAME_TICKS, Observed, ticks_after

AIRCRAFT = "SIMAIRCRAFT0001"
DOCK = "SIMDOCK0000001"


def record_arrivals(gateway: Gateway) -> dict[int, float]:
    """When each sample reached the gateway's hub (by its receivedAt): 'the same moment' a
    stamp refers to."""
    arrivals: dict[int, float] = {}
    hub = gateway.registry.telemetry
    publish = hub.publish

    def recorded(sample: Any, streams: Any) -> None:
        arrivals[sample.received_at_ms] = time.monotonic()
        publish(sample, streams)

    hub.publish = recorded  # type: ignore[method-assign]
    return arrivals


async def metrics(gateway: Gateway) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{gateway.config.http_port}/metrics") as reply,
    ):
        return await reply.text()


async def test_players_of_a_drone_camera_get_its_flight_data_on_their_video_timeline(
    mosquitto: MosquittoProcess, clip: Path
) -> None:
    async with (
        bridged_gateway(mosquitto, telemetry_rate=5) as gateway,
        dock(gateway, mosquitto, clip, DockBehaviour(osd_rate=10)),
    ):
        arrivals = record_arrivals(gateway)
        url = f"ws://127.0.0.1:{gateway.config.ws_port}"
        clients = [await WcsClient.connect(url) for _ in range(2)]
        try:
            player = await clients[0].play(AIRCRAFT_VIDEO, timeout=30, data_channel=True)
            opted_out = await clients[1].play(AIRCRAFT_VIDEO, timeout=30, custom={"telemetry": False})
            observed, observed_out = Observed.watch(player), Observed.watch(opted_out)
            await player.wait_status("PLAYING", timeout=30)
            await opted_out.wait_status("PLAYING", timeout=30)
            async with asyncio.timeout(20):
                while len(observed.events) < 3:
                    await asyncio.sleep(0.05)
            first, started = len(observed.events), time.monotonic()
            await asyncio.sleep(4.0)
            count, elapsed = len(observed.events) - first, time.monotonic() - started

            # osd at 10 Hz, players at 5 per second: the configured rate, newest wins.
            assert 0.6 * 5 * elapsed <= count <= 5 * elapsed + 2, (count, elapsed)
            samples = [payload["sample"] for payload in observed.events]
            assert all(s["sn"] == AIRCRAFT and s["kind"] == "aircraft" for s in samples)
            assert all(s["gateway"] == DOCK for s in samples)
            aircraft = [s["aircraft"] for s in samples]
            assert all({"latitude", "longitude", "height", "battery"} <= a.keys() for a in aircraft)
            assert len({a["latitude"] for a in aircraft}) > 1, "the aircraft flies"
            assert all(s["cameras"][0]["payloadIndex"] == "53-0-0" for s in samples)

            stamps = [payload["rtpTimestamp"] for payload in observed.events]
            received = {packet.timestamp for _, packet in observed.packets}
            assert all(stamp in received for stamp in stamps), [s for s in stamps if s not in received]
            assert all(ticks_after(b, a) > 0 for a, b in zip(stamps, stamps[1:], strict=False)), stamps
            for i, payload in enumerate(observed.events):
                then = observed.video_at(arrivals[payload["sample"]["receivedAt"]])
                if then is None:  # the latest sample, given at the join: it came before this video
                    assert i == 0
                    continue
                assert abs(ticks_after(payload["rtpTimestamp"], then)) <= FRAME_TICKS, (then, payload)

            on_channel = [orjson.loads(m) for label, m in player.data_messages if label == "telemetry"]
            assert len(on_channel) >= len(observed.events) - 3
            assert observed_out.events == [] and opted_out.data_channels == []
            assert len(observed_out.packets) > 60, "the opted-out player plays on"
        finally:
            for client in clients:
                await client.close()


async def test_bad_osd_is_dropped_counted_and_the_video_and_good_telemetry_go_on(
    mosquitto: MosquittoProcess, clip: Path
) -> None:
    async with (
        bridged_gateway(mosquitto) as gateway,
        dock(gateway, mosquitto, clip, DockBehaviour(osd_rate=10)),
    ):
        assert gateway.dji is not None
        client = await WcsClient.connect(f"ws://127.0.0.1:{gateway.config.ws_port}")
        try:
            player = await client.play(AIRCRAFT_VIDEO, timeout=30)
            observed = Observed.watch(player)
            await player.wait_status("PLAYING", timeout=30)
            async with asyncio.timeout(20):
                while len(observed.events) < 3:
                    await asyncio.sleep(0.05)

            def envelope(data: Any, **fields: Any) -> bytes:
                body = {"tid": "t", "bid": "b", "timestamp": 1, "method": "", "data": data, **fields}
                return orjson.dumps(body)

            deep_json = b'{"tid":"t","bid":"b","data":' + b'{"n":' * 5000 + b"1" + b"}" * 5001
            bad = [
                (f"thing/product/{AIRCRAFT}/osd", b"not json at all {"),
                (f"thing/product/{AIRCRAFT}/osd", envelope([1, 2, 3])),  # data not an object
                (
                    f"thing/product/{AIRCRAFT}/osd",
                    envelope({"height": "high", "latitude": [1], "battery": None}),
                ),
                (f"thing/product/{AIRCRAFT}/osd", envelope({"pad": "x" * 300_000})),  # over the size limit
                (f"thing/product/{AIRCRAFT}/osd", deep_json),
                ("thing/product/UNKNOWNSN000001/osd", envelope({"height": 10.0, "latitude": 1.0})),
            ]
            published: list[Any] = []
            publish = gateway.registry.telemetry.publish

            def recorded(sample: Any, streams: Any) -> None:
                published.append(sample)
                publish(sample, streams)

            gateway.registry.telemetry.publish = recorded  # type: ignore[method-assign]
            rejected_before = gateway.dji.mqtt.dropped_messages
            unknown_before = gateway.dji.devices.osd_unknown
            frames_before = len(observed.packets)
            async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="bad-osd") as mqtt:
                for topic, payload in bad:
                    await mqtt.publish(topic, payload)
                # 1,000 osd in a second from one device (the dock): rate-limited, counted.
                flood = envelope({"mode_code": 4}, gateway=DOCK)
                for _ in range(1000):
                    await mqtt.publish(f"thing/product/{DOCK}/osd", flood)
                    await asyncio.sleep(0.001)
            async with asyncio.timeout(15):
                while gateway.dji.mqtt.limited["osd_rate"] < 800:
                    await asyncio.sleep(0.05)
            async with asyncio.timeout(10):
                while gateway.dji.devices.osd_unknown <= unknown_before:
                    await asyncio.sleep(0.05)
            # non-JSON, data not an object, over the size limit, too deep: malformed.
            assert gateway.dji.mqtt.dropped_messages - rejected_before >= 4
            assert gateway.registry.telemetry.latest("UNKNOWNSN000001") is None

            # Wrong types were dropped field by field; the sample itself went on.
            (typed,) = [s for s in published if s.device_time_ms == 1 and s.sn == AIRCRAFT]
            assert {"height", "latitude"} <= {name.rsplit(".", 1)[-1] for name in typed.dropped}, (
                typed.dropped
            )
            events_after = len(observed.events)
            async with asyncio.timeout(15):
                while len(observed.events) < events_after + 5 or len(observed.packets) < frames_before + 200:
                    await asyncio.sleep(0.05)
            latest = observed.events[-1]["sample"]
            assert latest["sn"] == AIRCRAFT and "height" in latest["aircraft"]

            text = await metrics(gateway)
            assert 'skyrelay_dji_messages_rejected_total{reason="osd_rate"}' in text
            assert 'skyrelay_dji_messages_rejected_total{reason="osd_unknown_device"}' in text
            assert f'skyrelay_device_battery_percent{{sn="{AIRCRAFT}"}}' in text
            assert f'skyrelay_device_height_meters{{sn="{AIRCRAFT}"}}' in text
        finally:
            await client.close()
