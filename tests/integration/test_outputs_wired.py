"""HLS and DVR as the gateway serves them: a WebSocket publisher with ``record: true``, the
REST recording calls, /api/recordings, and /hls read by ffprobe."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest_asyncio

from gateway.app import Gateway
from gateway.media.synthetic import EncodedVideoTrack
from gateway.wcs.client import WcsClient
from tests.integration.conftest import AccessUnits, local_config, wait_stream


@pytest_asyncio.fixture
async def recording_gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    gateway = Gateway(local_config(recordings_dir=tmp_path / "recordings", record_segment_seconds=1.0))
    await gateway.start()
    yield gateway
    await gateway.stop()


async def http(gateway: Gateway, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{gateway.config.http_port}{path}"
    async with aiohttp.ClientSession() as session, session.request(method, url, json=body) as reply:
        return reply.status, await reply.json()


def ffprobe(target: str) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", target],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


async def test_publish_with_record_and_rest_recording_calls(
    recording_gateway: Gateway, video_track: Callable[[], EncodedVideoTrack]
) -> None:
    gateway = recording_gateway
    client = await WcsClient.connect(f"ws://127.0.0.1:{gateway.config.ws_port}")
    recorded = await client.publish("rec-cam", [video_track()], record=True)
    await recorded.wait_status("PUBLISHING")
    plain = await client.publish("plain-cam", [video_track()])
    await plain.wait_status("PUBLISHING")
    await wait_stream(gateway, "plain-cam")

    assert await http(gateway, "POST", "/rest-api/stream/startRecording", {"name": "plain-cam"}) == (
        200,
        {"name": "plain-cam", "recording": True},
    )
    status, running = await http(gateway, "POST", "/rest-api/recorder/find_all", {})
    assert status == 200 and sorted(r["name"] for r in running) == ["plain-cam", "rec-cam"]
    await asyncio.sleep(3)  # a few one-second files
    status, _ = await http(
        gateway, "POST", "/rest-api/stream/stopRecording", {"mediaSessionId": plain.media_session_id}
    )
    assert status == 200
    status, reply = await http(gateway, "POST", "/rest-api/stream/stopRecording", {"name": "plain-cam"})
    assert status == 404 and "not being recorded" in reply["error"]
    status, reply = await http(gateway, "POST", "/rest-api/stream/startRecording", {"name": "ghost"})
    assert status == 404
    await recorded.stop()  # the stream's end finishes its recording

    status, reply = await http(gateway, "GET", "/api/recordings")
    assert status == 200
    listing = reply["recordings"]
    names = {recording["name"] for recording in listing}
    assert names == {"rec-cam", "plain-cam"}
    first = listing[0]
    url = f"http://127.0.0.1:{gateway.config.http_port}/api/recordings/{first['id']}"
    probe = await asyncio.to_thread(ffprobe, url)
    assert probe["streams"][0]["codec_name"] == "h264" and probe["streams"][0]["width"] == 320
    await client.close()


async def test_hls_of_a_published_stream_reads_in_ffprobe(
    local_gateway: Gateway, video_track: Callable[[], EncodedVideoTrack]
) -> None:
    client = await WcsClient.connect(f"ws://127.0.0.1:{local_gateway.config.ws_port}")
    published = await client.publish("hls-cam", [video_track()])
    await published.wait_status("PUBLISHING")
    playlist = f"http://127.0.0.1:{local_gateway.config.http_port}/hls/hls-cam/index.m3u8"
    probe = await asyncio.to_thread(ffprobe, playlist)
    video = probe["streams"][0]
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 240)
    status, reply = await http(local_gateway, "GET", "/hls/no-such/index.m3u8")
    assert status == 404 and reply["error"]
    await client.close()


async def test_snapshot_and_thumbnail_of_a_published_stream(
    local_gateway: Gateway, video_track: Callable[[], EncodedVideoTrack]
) -> None:
    client = await WcsClient.connect(f"ws://127.0.0.1:{local_gateway.config.ws_port}")
    published = await client.publish("snap-cam", [video_track()])
    await published.wait_status("PUBLISHING")
    await wait_stream(local_gateway, "snap-cam")
    status, reply = await http(local_gateway, "POST", "/rest-api/stream/snapshot", {"streamName": "snap-cam"})
    assert status == 200
    png = av.open(io.BytesIO(base64.b64decode(reply["data"])))
    image = next(png.decode(video=0))
    assert (image.width, image.height) == (320, 240)
    status, reply = await http(local_gateway, "POST", "/rest-api/stream/snapshot", {"streamName": "nope"})
    assert status == 404 and reply["error"]
    url = f"http://127.0.0.1:{local_gateway.config.http_port}/api/streams/snap-cam/thumbnail.jpg?width=160"
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        assert answer.status == 200 and answer.content_type == "image/jpeg"
        jpeg = av.open(io.BytesIO(await answer.read()))
        thumb = next(jpeg.decode(video=0))
    assert (thumb.width, thumb.height) == (160, 120)
    scrape = f"http://127.0.0.1:{local_gateway.config.http_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(scrape) as answer:
        text = await answer.text()
    assert "skyrelay_thumbnail_requests_total 3\n" in text  # snapshot, unknown stream, JPEG
    assert "skyrelay_thumbnail_decodes_total 1\n" in text  # one decode served both images
    assert "skyrelay_hls_streams 0\n" in text and "skyrelay_recordings_active 0\n" in text
    await client.close()


def test_the_sd_view_is_built_from_the_configuration() -> None:
    config = local_config(mqtt="mqtt://127.0.0.1:1", sd_view_hub_key="hub", sd_view_devices=("cam-1=front",))
    gateway = Gateway(config)
    assert gateway.sdview is not None and gateway.sdview.width == 480
    assert Gateway(local_config()).sdview is None


async def test_rtsp_port_serves_streams_and_takes_pushes(
    local_gateway: Gateway, video_track: Callable[[], EncodedVideoTrack], clip: Path
) -> None:
    client = await WcsClient.connect(f"ws://127.0.0.1:{local_gateway.config.ws_port}")
    published = await client.publish("rtsp-cam", [video_track()])
    await published.wait_status("PUBLISHING")
    base = f"rtsp://127.0.0.1:{local_gateway.config.rtsp_port}"
    for transport in ("tcp", "udp"):
        probe = await asyncio.to_thread(
            subprocess.run,
            ["ffprobe", "-v", "error", "-rtsp_transport", transport, "-show_streams", "-of", "json",
             f"{base}/rtsp-cam"],
            capture_output=True, timeout=60, check=True,
        )  # fmt: skip
        video = json.loads(probe.stdout)["streams"][0]
        assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 240), transport

    push = subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip),
         "-c", "copy", "-f", "rtsp", "-rtsp_transport", "tcp", f"{base}/pushed"],
        stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_stream(local_gateway, "pushed")
        player = await client.play("pushed")
        await player.wait_status("PLAYING")
        stream = local_gateway.registry.get("pushed")
        assert stream is not None and stream.ingest == "rtsp-push"
    finally:
        push.terminate()
        push.wait(timeout=10)
    await client.close()


async def test_the_websdk_snapshot_message_gets_a_png_as_a_stream_event(
    local_gateway: Gateway, video_track: Callable[[], EncodedVideoTrack]
) -> None:
    client = await WcsClient.connect(f"ws://127.0.0.1:{local_gateway.config.ws_port}")
    published = await client.publish("shot", [video_track()])
    await published.wait_status("PUBLISHING")
    player = await client.play("shot")
    await player.wait_status("PLAYING")
    await client.send("snapshot", {"mediaSessionId": player.media_session_id, "name": "shot"})
    (event,) = await client.wait_message(
        "notifyStreamEvent", lambda data: data[0]["type"] in ("snapshotCompleted", "snapshotFailed")
    )
    assert event["type"] == "snapshotCompleted" and event["mediaSessionId"] == player.media_session_id
    image = next(av.open(io.BytesIO(base64.b64decode(event["payload"]["snapshot"]))).decode(video=0))
    assert (image.width, image.height) == (320, 240)
    await client.send("snapshot", {"mediaSessionId": "ghost", "name": "shot"})
    await client.wait_message("fail", lambda data: data[0]["id"] == "ghost")
    await client.close()


async def test_publish_with_rtmp_url_republishes_the_stream(
    local_gateway: Gateway, video_track: Callable[[], EncodedVideoTrack]
) -> None:
    """WCS's rtmpUrl: the published stream is pushed to an RTMP server (here the gateway's
    own ingest, under another name) without transcoding."""
    key = local_gateway.ingest_keys.issue("copy").key
    client = await WcsClient.connect(f"ws://127.0.0.1:{local_gateway.config.ws_port}")
    url = f"rtmp://127.0.0.1:{local_gateway.config.rtmp_port}/live/{key}"
    published = await client.publish("original", [video_track()], rtmpUrl=url)
    await published.wait_status("PUBLISHING")
    await wait_stream(local_gateway, "copy")
    copy = local_gateway.registry.get("copy")
    assert copy is not None and copy.ingest == "rtmp"
    status, pushes = await http(local_gateway, "POST", "/rest-api/push/find_all", {})
    assert status == 200 and [p["streamName"] for p in pushes] == ["original"]
    assert key not in pushes[0]["rtmpUrl"]  # the key is not shown
    await published.stop()  # the republish ends with its stream
    async with asyncio.timeout(15):
        while local_gateway.registry.find("copy") is not None:
            await asyncio.sleep(0.05)
    await client.close()


async def test_recordings_survive_a_killed_gateway(
    make_gateway: Callable[[dict[str, str]], Any], tmp_path: Path, clip_units: AccessUnits
) -> None:
    """SIGKILL mid-recording: the next gateway on the same directory lists the files, and
    every one of them (the one being written included) decodes."""
    env = {"SKYRELAY_RECORDINGS_DIR": str(tmp_path / "rec"), "SKYRELAY_RECORD_SEGMENT_SECONDS": "1"}
    first = make_gateway(env)
    client = await WcsClient.connect(first.ws_url)
    published = await client.publish("kept", [EncodedVideoTrack(clip_units, fps=30)], record=True)
    await published.wait_status("PUBLISHING")
    async with asyncio.timeout(30):  # a few one-second files, then one being written
        while len([f for f in (tmp_path / "rec").glob("*/*.mp4") if f.stat().st_size]) < 3:
            await asyncio.sleep(0.1)
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait(timeout=10)
    await client.close()

    second = make_gateway(env)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{second.http_url}/api/recordings?name=kept") as reply:
            listing = (await reply.json())["recordings"]
    assert len(listing) >= 3 and {r["name"] for r in listing} == {"kept"}
    for recording in listing:
        probe = await asyncio.to_thread(ffprobe, f"{second.http_url}/api/recordings/{recording['id']}")
        video = probe["streams"][0]
        assert (video["codec_name"], video["width"]) == ("h264", 320)
        assert float(probe["format"]["duration"]) > 0
