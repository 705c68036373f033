"""Quality and lens controls of a drone camera, from the HTTP API and from a viewer's
sendStreamEvent, carried to the dock simulator over MQTT (real Mosquitto). A lens change
restarts the dock's push: viewers stay attached with no renegotiation."""

from __future__ import annotations

import asyncio
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp

from gateway.app import Gateway
from tests.conftest import MosquittoProcess
from tests.integration.conftest import capture_rtp
from tests.integration.drone import AIRCRAFT_VIDEO, dock, play


async def post(gateway: Gateway, path: str, body: Any) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{gateway.config.http_port}{path}"
    async with aiohttp.ClientSession() as http:
        data = body if isinstance(body, bytes) else None
        async with http.post(url, json=None if data is not None else body, data=data) as reply:
            return reply.status, await reply.json()


CONTROL = f"/api/streams/{AIRCRAFT_VIDEO}"


async def test_http_quality_and_lens_reach_the_dock_and_viewers_ride_through_the_lens_switch(
    drone_gateway: Gateway, mosquitto: MosquittoProcess, clip: Path
) -> None:
    async with dock(drone_gateway, mosquitto, clip) as sim:
        # Not live yet: the quality is kept for the start, a lens change is refused.
        assert await post(drone_gateway, f"{CONTROL}/quality", {"video_quality": "hd"}) == (
            200,
            {"stream": AIRCRAFT_VIDEO, "video_quality": "hd", "status": "ok"},
        )
        status, body = await post(drone_gateway, f"{CONTROL}/lens", {"video_type": "zoom"})
        assert status == 409 and "not live" in body["error"]
        assert sim.controls == []

        client, frames = await play(drone_gateway)
        await frames.wait_frames(20)
        assert sim.starts[0]["video_quality"] == 3
        status, _ = await post(drone_gateway, f"{CONTROL}/quality", {"video_quality": 1})
        assert status == 200 and sim.controls[-1] == (
            "live_set_quality",
            {"video_id": AIRCRAFT_VIDEO, "video_quality": 1},
        )

        player = next(iter(client.streams.values()))
        packets = capture_rtp(player.pc)
        answers = len(client.received("setRemoteSDP"))
        status, _ = await post(drone_gateway, f"{CONTROL}/lens", {"video_type": "zoom"})
        assert status == 200
        assert sim.controls[-1] == ("live_lens_change", {"video_id": AIRCRAFT_VIDEO, "video_type": "zoom"})
        before = len(frames.pts)
        await frames.wait_frames(before + 60, timeout=20)  # across the dock's 1 s push restart
        assert len(client.received("setRemoteSDP")) == answers and player.status == "PLAYING"
        assert frames.pts == sorted(frames.pts)
        assert len(sim.starts) == 1
        # One SSRC, and sequence numbers and RTP timestamps that go on across the new push
        # (a gap in them is a loss to the viewer's jitter buffer, a jump back a reset).
        media_ssrc = Counter(p.ssrc for p in packets).most_common(1)[0][0]
        media = [p for p in packets if p.ssrc == media_ssrc]
        steps = [(b.sequence_number - a.sequence_number) % 65536 for a, b in pairwise(media)]
        assert steps and all(1 <= step <= 4 for step in steps), sorted(set(steps))
        clock = [(b.timestamp - a.timestamp) % 2**32 for a, b in pairwise(media)]
        assert all(tick < 90000 * 3 for tick in clock), max(clock)  # forward, never back
        await frames.stop()
        await client.close()


async def test_bad_controls_get_clear_http_errors(
    drone_gateway: Gateway, mosquitto: MosquittoProcess, clip: Path
) -> None:
    async with dock(drone_gateway, mosquitto, clip) as sim:
        client, frames = await play(drone_gateway)
        await frames.wait_frames(10)
        cases: list[tuple[str, Any, int, str]] = [
            (f"{CONTROL}/quality", {"video_quality": 9}, 400, "unknown video quality"),
            (f"{CONTROL}/quality", {"video_quality": True}, 400, "unknown video quality"),
            (f"{CONTROL}/quality", {}, 400, "video_quality"),
            (f"{CONTROL}/quality", [3], 400, "video_quality"),
            (f"{CONTROL}/quality", b"not json", 400, "JSON"),
            (f"{CONTROL}/lens", {"video_type": "fisheye"}, 400, "not offered here"),
            (f"{CONTROL}/lens", {"video_type": 7}, 400, "not offered here"),
            ("/api/streams/NOSUCHSN0000001/53-0-0/normal-0/lens", {"video_type": "zoom"}, 404, "No device"),
            ("/api/streams/plain-stream/quality", {"video_quality": 1}, 404, "No device"),
        ]
        for path, body, want_status, words in cases:
            status, reply = await post(drone_gateway, path, body)
            assert (status, words in reply["error"]) == (want_status, True), (path, body, reply)
        assert sim.controls == []
        frames_before = len(frames.pts)
        await frames.wait_frames(frames_before + 10)  # the stream never noticed
        await frames.stop()
        await client.close()


async def test_a_viewer_changes_the_lens_with_a_stream_event_and_every_viewer_hears_of_it(
    drone_gateway: Gateway, mosquitto: MosquittoProcess, clip: Path
) -> None:
    async with dock(drone_gateway, mosquitto, clip) as sim:
        asker, frames = await play(drone_gateway)
        watcher, more_frames = await play(drone_gateway)
        await frames.wait_frames(10)
        player = next(iter(asker.streams.values()))
        await asker.send(
            "sendStreamEvent",
            {
                "mediaSessionId": player.media_session_id,
                "type": "changeLens",
                "payload": {"video_type": "wide"},
            },
        )
        for client in (asker, watcher):
            await client.wait_message(
                "notifyStreamEvent",
                lambda data: (
                    data[0]["type"] == "changeLens"
                    and data[0]["payload"] == {"video_type": "wide", "status": "OK"}
                ),
            )
        assert sim.controls == [("live_lens_change", {"video_id": AIRCRAFT_VIDEO, "video_type": "wide"})]

        await asker.send(
            "sendStreamEvent",
            {
                "mediaSessionId": player.media_session_id,
                "type": "setQuality",
                "payload": {"video_quality": 2},
            },
        )
        for client in (asker, watcher):
            await client.wait_message(
                "notifyStreamEvent",
                lambda data: (
                    data[0]["type"] == "setQuality"
                    and data[0]["payload"] == {"video_quality": 2, "status": "OK"}
                ),
            )
        assert sim.controls[-1] == ("live_set_quality", {"video_id": AIRCRAFT_VIDEO, "video_quality": 2})

        await asker.send(
            "sendStreamEvent",
            {
                "mediaSessionId": player.media_session_id,
                "type": "setQuality",
                "payload": {"video_quality": 7},
            },
        )
        await asker.wait_message(
            "fail",
            lambda data: (
                "unknown video quality" in data[0]["info"] and data[0]["id"] == player.media_session_id
            ),
        )
        for counter in (frames, more_frames):
            await counter.stop()
        for client in (asker, watcher):
            await client.close()


async def test_a_control_in_flight_when_the_broker_goes_fails_at_once(
    drone_gateway: Gateway, mosquitto: MosquittoProcess, clip: Path
) -> None:
    async with dock(drone_gateway, mosquitto, clip) as sim:
        client, frames = await play(drone_gateway)
        await frames.wait_frames(10)
        sim.behaviour.reply_delay = 60  # the dock takes the command, its answer never comes
        asked = asyncio.create_task(post(drone_gateway, f"{CONTROL}/lens", {"video_type": "wide"}))
        async with asyncio.timeout(10):
            while not sim.controls:
                await asyncio.sleep(0.05)
        await asyncio.to_thread(mosquitto.stop)
        status, body = await asked
        # Not the reply timeout's "no reply within 5 s": the lost link is the reason given.
        assert status == 504 and body["error"].startswith("MQTT link lost before the device replied")
        await frames.wait_frames(len(frames.pts) + 10)  # the video does not go through MQTT
        await frames.stop()
        await client.close()
