"""What the DJI integration tests share: a gateway bridged to a real Mosquitto, the dock
simulator as a context, and viewers that play a drone camera."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.app import Gateway
from gateway.dji.dock_sim import DockBehaviour, DockSimulator, run_forever
from gateway.mqtt_link import BrokerAddress
from gateway.wcs.client import WcsClient
from tests.conftest import MosquittoProcess
from tests.integration.conftest import FrameCounter

AIRCRAFT_VIDEO = "SIMAIRCRAFT0001/53-0-0/normal-0"


@contextlib.asynccontextmanager
async def dock(
    gateway: Gateway,
    broker: MosquittoProcess | str,
    clip: Path,
    behaviour: DockBehaviour | None = None,
    ca_file: str | None = None,
    protocol: str = "5",
) -> AsyncIterator[DockSimulator]:
    """A simulated dock on ``broker`` (a Mosquitto or a URL), announced to ``gateway``; it
    speaks MQTT ``protocol``."""
    url = broker if isinstance(broker, str) else broker.url
    address = BrokerAddress.parse(url, ca_file, protocol)
    sim = DockSimulator(address, clip, behaviour=behaviour or DockBehaviour())
    task = asyncio.create_task(run_forever(sim, retry=0.5))
    try:
        assert gateway.dji is not None
        async with asyncio.timeout(10):
            while not gateway.dji.serves(AIRCRAFT_VIDEO):
                await asyncio.sleep(0.05)
        yield sim
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def http_json(gateway: Gateway, path: str) -> Any:
    """GET from the gateway's HTTP port (in a thread: the gateway runs on this loop)."""
    url = f"http://127.0.0.1:{gateway.config.http_port}{path}"

    def get() -> Any:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.loads(reply.read())

    return await asyncio.to_thread(get)


async def assert_inbound_figures(gateway: Gateway, name: str, ingest: str) -> None:
    """What the ingest receives, like WCS's inboundVideoRate, on GET /api/streams/{name}: the
    test clip is 320x240, 30 fps, about 300 kbit/s (wide bounds: a shared machine paces
    unevenly)."""
    figures = await http_json(gateway, f"/api/streams/{name}")
    assert figures["ingest"] == ingest and figures["video_codec"] == "H264"
    assert (figures["width"], figures["height"]) == (320, 240)
    assert 10 <= figures["fps"] <= 60, figures
    assert 50_000 <= figures["bit_rate"] <= 2_000_000, figures


async def play(gateway: Gateway, name: str = AIRCRAFT_VIDEO) -> tuple[WcsClient, FrameCounter]:
    client = await WcsClient.connect(f"ws://127.0.0.1:{gateway.config.ws_port}")
    player = await client.play(name, timeout=30)
    await player.wait_status("PLAYING", timeout=30)
    return client, FrameCounter(player).start()
