"""The other ways a drone delivers video: a WHIP push (url_type 4) and, for remote
controllers that serve RTSP themselves (url_type 2), an RTSP stream that the gateway pulls
from the URL in the device's reply. Also aliases for drone streams."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import aiohttp

from gateway.app import Gateway
from tests.conftest import MosquittoProcess, free_port
from tests.integration.conftest import bridged_gateway
from tests.integration.drone import AIRCRAFT_VIDEO, assert_inbound_figures, dock, play


async def stream_figures(gateway: Gateway, name: str) -> dict[str, object]:
    url = f"http://127.0.0.1:{gateway.config.http_port}/api/streams/{name}"
    async with aiohttp.ClientSession() as http, http.get(url) as reply:
        assert reply.status == 200
        return await reply.json()


async def test_a_dock_pushing_whip_plays_and_an_alias_names_it(
    mosquitto: MosquittoProcess, clip: Path
) -> None:
    async with (
        bridged_gateway(mosquitto, live_url_type="whip", aliases=(f"nose={AIRCRAFT_VIDEO}",)) as gateway,
        dock(gateway, mosquitto, clip) as sim,
    ):
        client, frames = await play(gateway, "nose")
        await frames.wait_frames(20)
        assert (frames.frames[-1].width, frames.frames[-1].height) == (320, 240)
        (start,) = sim.starts
        assert start["url_type"] == 4 and start["video_id"] == AIRCRAFT_VIDEO
        assert str(start["url"]).startswith(f"http://127.0.0.1:{gateway.config.http_port}/whip/")
        figures = await stream_figures(gateway, "nose")
        assert figures["name"] == AIRCRAFT_VIDEO and figures["ingest"] == "whip"
        await assert_inbound_figures(gateway, "nose", "whip")
        await frames.stop()
        await client.close()
        async with asyncio.timeout(15):  # the linger's live_stop_push ends the WHIP session
            while sim.stops == [] or gateway.whip.pushes:
                await asyncio.sleep(0.05)


async def test_a_remote_controller_serving_rtsp_is_pulled_and_its_drops_ridden_through(
    mosquitto: MosquittoProcess, clip: Path
) -> None:
    rtsp_port = free_port()
    settings = {"live_url_types": ("SIMDOCK0000001=rtsp",), "live_rtsp_port": rtsp_port}
    async with bridged_gateway(mosquitto, **settings) as gateway, dock(gateway, mosquitto, clip) as sim:
        assert gateway.dji is not None
        client, frames = await play(gateway)
        await frames.wait_frames(20)
        (start,) = sim.starts
        assert start["url_type"] == 2
        assert str(start["url"]).startswith("userName=skyrelay&password=")
        assert str(start["url"]).endswith(f"&port={rtsp_port}")
        await assert_inbound_figures(gateway, AIRCRAFT_VIDEO, "rtsp")
        pull = gateway.dji.pulls[AIRCRAFT_VIDEO]
        assert pull.url.startswith("rtsp://skyrelay:") and pull.url.endswith(f"@127.0.0.1:{rtsp_port}/live/1")

        # The controller's RTSP server goes away for 2 s: the pull reconnects, the viewer
        # stays on its WebRTC session and the video goes on.
        player = next(iter(client.streams.values()))
        answers = len(client.received("setRemoteSDP"))
        await sim.drop_push(2.0)
        before = len(frames.pts)
        await frames.wait_frames(before + 30, timeout=30)
        assert pull.connections >= 2
        assert len(client.received("setRemoteSDP")) == answers and player.status == "PLAYING"
        assert frames.pts == sorted(frames.pts)

        await frames.stop()
        await client.close()
        async with asyncio.timeout(15):  # the linger's live_stop_push ends the pull
            while sim.stops == [] or gateway.dji.pulls:
                await asyncio.sleep(0.05)


async def test_hls_of_a_drone_camera_starts_it_and_stops_when_nobody_reads(
    mosquitto: MosquittoProcess, clip: Path
) -> None:
    async with bridged_gateway(mosquitto) as gateway, dock(gateway, mosquitto, clip) as sim:
        gateway.hls.idle_timeout = 1.0  # stop packaging soon after the last request
        playlist = f"http://127.0.0.1:{gateway.config.http_port}/hls/{AIRCRAFT_VIDEO}/index.m3u8"
        probe = await asyncio.to_thread(
            subprocess.run,
            ["ffprobe", "-v", "error", "-show_streams", "-of", "json", playlist],
            capture_output=True, timeout=60, check=True,
        )  # fmt: skip
        assert json.loads(probe.stdout)["streams"][0]["codec_name"] == "h264"
        assert len(sim.starts) == 1
        async with asyncio.timeout(20):  # idle packager -> unwanted -> linger -> stop push
            while not sim.stops:
                await asyncio.sleep(0.1)


async def test_rtsp_out_of_a_drone_camera_starts_it_on_demand(
    mosquitto: MosquittoProcess, clip: Path
) -> None:
    async with bridged_gateway(mosquitto) as gateway, dock(gateway, mosquitto, clip) as sim:
        url = f"rtsp://127.0.0.1:{gateway.config.rtsp_port}/{AIRCRAFT_VIDEO}"
        probe = await asyncio.to_thread(
            subprocess.run,
            ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_streams", "-of", "json", url],
            capture_output=True, timeout=60, check=True,
        )  # fmt: skip
        assert json.loads(probe.stdout)["streams"][0]["codec_name"] == "h264"
        assert len(sim.starts) == 1
        async with asyncio.timeout(20):  # the reader left: stop after the linger
            while not sim.stops:
                await asyncio.sleep(0.1)
        missing = f"rtsp://127.0.0.1:{gateway.config.rtsp_port}/SIMAIRCRAFT0001/99-0-0/normal-0"
        refused = await asyncio.to_thread(
            subprocess.run, ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", missing],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode != 0 and b"404" in refused.stderr
