"""``GET /metrics`` of a gateway bridged to a real Mosquitto, with the SD view on: the MQTT
link gauges of both links (1, then 0 when the broker stops), DJI command and reply
outcomes after a drone play (the dock simulator answering with a transient error once),
and the played stream's bit rate, frame rate, viewers and source state."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.dji.dock_sim import DockBehaviour
from tests.conftest import MosquittoProcess
from tests.integration.conftest import bridged_gateway
from tests.integration.drone import AIRCRAFT_VIDEO, dock, play

pytestmark = pytest.mark.timeout(120)


async def scrape(gateway: Gateway) -> dict[str, float]:
    """The samples of /metrics: ``name{labels}`` -> value."""
    url = f"http://127.0.0.1:{gateway.config.http_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as reply:
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await reply.text()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


async def wait_sample(gateway: Gateway, key: str, value: float, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while (await scrape(gateway)).get(key) != value:
            await asyncio.sleep(0.1)


async def test_mqtt_links_dji_outcomes_and_stream_figures(mosquitto: MosquittoProcess, clip: Path) -> None:
    sd_view = {"sd_view_hub_key": "hub-test", "sd_view_devices": ("cam-1=front",)}
    async with bridged_gateway(mosquitto, **sd_view) as gateway:
        assert gateway.sdview is not None
        async with asyncio.timeout(10):
            await gateway.sdview.connected.wait()
        samples = await scrape(gateway)
        assert samples["skyrelay_mqtt_connected"] == 1
        assert samples["skyrelay_sd_view_mqtt_connected"] == 1
        assert not any(key.startswith("skyrelay_dji_commands_total") for key in samples)

        behaviour = DockBehaviour(fail_first=1, fail_code=613006)  # transient: retried once
        async with dock(gateway, mosquitto, clip, behaviour) as sim:
            client, frames = await play(gateway)
            await frames.wait_frames(30)
            stream = f'stream="{AIRCRAFT_VIDEO}",ingest="rtmp"'
            samples = await scrape(gateway)
            assert samples['skyrelay_dji_gateways{state="online"}'] == 1
            assert samples['skyrelay_dji_commands_total{method="live_start_push",sent="true"}'] == 2
            assert samples['skyrelay_dji_replies_total{method="live_start_push",result="613006"}'] == 1
            assert samples['skyrelay_dji_replies_total{method="live_start_push",result="0"}'] == 1
            assert samples['skyrelay_dji_live_videos{phase="live"}'] == 1
            assert samples[f"skyrelay_stream_source_connected{{{stream}}}"] == 1
            assert samples[f"skyrelay_stream_viewers{{{stream}}}"] == 1
            assert samples[f"skyrelay_stream_video_bitrate_bits{{{stream}}}"] > 0
            assert samples[f"skyrelay_stream_video_fps{{{stream}}}"] > 0
            assert samples[f"skyrelay_stream_video_frames_total{{{stream}}}"] >= 30
            assert samples['skyrelay_media_sessions{kind="play"}'] == 1

            # The last viewer leaves: after the linger, live_stop_push and its reply.
            await frames.stop()
            await client.close()
            async with asyncio.timeout(15):
                while not sim.stops:
                    await asyncio.sleep(0.05)
            stop_reply = 'skyrelay_dji_replies_total{method="live_stop_push",result="0"}'
            await wait_sample(gateway, stop_reply, 1)
            samples = await scrape(gateway)
            assert samples['skyrelay_dji_commands_total{method="live_stop_push",sent="true"}'] == 1
            assert samples['skyrelay_media_sessions{kind="play"}'] == 0

            # The broker stops: both links are down, and say so.
            await asyncio.to_thread(mosquitto.stop)
            await wait_sample(gateway, "skyrelay_mqtt_connected", 0)
            await wait_sample(gateway, "skyrelay_sd_view_mqtt_connected", 0)
            await asyncio.to_thread(mosquitto.start)  # back, for the dock's clean exit
            await wait_sample(gateway, "skyrelay_mqtt_connected", 1, timeout=30)
            await wait_sample(gateway, "skyrelay_sd_view_mqtt_connected", 1, timeout=30)
