"""The WCS-compatible REST API (/rest-api) and /metrics against a gateway with real aiortc
publishers and players, and RTSP pulls from a real RTSP server (the simulated camera's)."""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
import pytest_asyncio

from gateway.app import Gateway
from gateway.dji.camera_sim import RtspCameraServer
from gateway.media.sources import rtsp as rtsp_source
from gateway.media.synthetic import EncodedVideoTrack
from gateway.media.whip_client import WhipClient
from gateway.wcs.client import ClientStream, WcsClient, WcsError
from tests.conftest import free_port
from tests.integration.conftest import AccessUnits, FrameCounter, wait_stream
from tests.integration.rtp_faults import drop_received_video_packets, drop_sent_video_packets


async def rest(gateway: Gateway, path: str, body: Any = None, *, method: str = "POST") -> tuple[int, Any]:
    url = f"http://127.0.0.1:{gateway.config.http_port}/rest-api/{path}"
    async with aiohttp.ClientSession() as http:
        kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
        async with http.request(method, url, **kwargs) as reply:
            return reply.status, await reply.json()


@pytest_asyncio.fixture
async def camera(clip_units: AccessUnits) -> AsyncIterator[RtspCameraServer]:
    """An RTSP camera with a password, serving the test clip at /live/1."""
    server = RtspCameraServer("127.0.0.1", free_port(), ("cam", "s3cret"), clip_units)
    await server.start()
    yield server
    server.stop()
    await server.closed()


async def test_streams_are_found_with_metrics_and_terminated(
    local_gateway: Gateway, video_track: Callable[[], EncodedVideoTrack]
) -> None:
    ws = f"ws://127.0.0.1:{local_gateway.config.ws_port}"
    publisher_client, player_client = await WcsClient.connect(ws), await WcsClient.connect(ws)
    published = await publisher_client.publish("cam", [video_track()])
    await published.wait_status("PUBLISHING")
    player = await player_client.play("cam")
    await player.wait_status("PLAYING")
    counter = FrameCounter(player).start()
    await counter.wait_frames(30)

    status, streams = await rest(local_gateway, "stream/find_all", method="GET")
    assert status == 200
    by_id = {s["mediaSessionId"]: s for s in streams}
    assert by_id[published.media_session_id]["published"] is True
    assert by_id[published.media_session_id]["status"] == "PUBLISHING"
    assert by_id[player.media_session_id]["published"] is False
    assert by_id[player.media_session_id]["status"] == "PLAYING"

    status, found = await rest(
        local_gateway, "stream/find", {"name": "cam", "published": True, "display": ["metrics"]}
    )
    assert status == 200 and [s["mediaSessionId"] for s in found] == [published.media_session_id]
    metrics = found[0]["metrics"]
    assert (metrics["VIDEO_WIDTH"], metrics["VIDEO_HEIGHT"], metrics["VIDEO_CODEC"]) == (320, 240, "H264")
    assert metrics["VIDEO_RATE"] > 0 and metrics["VIDEO_FPS"] > 0 and metrics["VIEWERS"] == 1

    status, connections = await rest(local_gateway, "connection/find_all", method="GET")
    assert status == 200 and len(connections) == 2

    scrape = f"http://127.0.0.1:{local_gateway.config.http_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(scrape) as reply:
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await reply.text()
    assert "skyrelay_streams 1\n" in text
    assert 'skyrelay_stream_viewers{stream="cam",ingest="webrtc"} 1\n' in text
    assert 'skyrelay_media_sessions{kind="play"} 1\n' in text

    # Bad requests, each with a clear error; nothing else is disturbed.
    bad: list[tuple[str, Any, int, str]] = [
        ("stream/find", {"name": "nope"}, 404, "not found"),
        ("stream/find", {"display": "metrics"}, 400, "display"),
        ("stream/find", b"not json", 400, "JSON"),
        ("stream/find", [1, 2], 400, "JSON object"),
        ("stream/terminate", {}, 400, "mediaSessionId"),
        ("stream/terminate", {"mediaSessionId": "ghost"}, 404, "ghost"),
    ]
    for path, body, want, words in bad:
        status, reply = await rest(local_gateway, path, body)
        assert status == want and words in reply["error"], (path, body, reply)

    status, _ = await rest(local_gateway, "stream/terminate", {"mediaSessionId": published.media_session_id})
    assert status == 200
    ended = await published.wait_status("UNPUBLISHED")
    assert ended["info"] == "Terminated by the REST API"
    assert (await player.wait_status("STOPPED"))["info"] == "Stopped by publisher stop"
    await counter.stop()
    for client in (publisher_client, player_client):
        await client.close()


async def found_metrics(gateway: Gateway, **wanted: Any) -> dict[str, Any]:
    """The metrics of the one stream/find entry matching ``wanted``."""
    status, found = await rest(gateway, "stream/find", {**wanted, "display": ["metrics"]})
    assert status == 200 and len(found) == 1, found
    metrics: dict[str, Any] = found[0]["metrics"]
    return metrics


async def wait_metrics(
    gateway: Gateway, check: Callable[[dict[str, Any]], bool], timeout: float = 15.0, **wanted: Any
) -> dict[str, Any]:
    """Polls stream/find until the entry's metrics pass ``check``."""
    async with asyncio.timeout(timeout):
        while not check(metrics := await found_metrics(gateway, **wanted)):
            await asyncio.sleep(0.2)
    return metrics


async def ask_keyframes(player: ClientStream) -> None:
    """The player sends a PLI, which the gateway forwards to the publisher."""
    receiver = next(t.receiver for t in player.pc.getTransceivers() if t.kind == "video")
    await receiver._send_rtcp_pli(receiver.getSynchronizationSources()[0].source)


def has_feedback(metrics: dict[str, Any], lost: int) -> bool:
    return bool(metrics["VIDEO_NACK"] >= 1 and metrics["VIDEO_PLI"] >= 1 and metrics["VIDEO_LOST"] >= lost)


async def test_stream_find_shows_nack_pli_and_loss_of_webrtc_and_whip_publishers(
    local_gateway: Gateway, video_track: Callable[[], EncodedVideoTrack]
) -> None:
    """Packets lost on the way in: the gateway NACKs them and counts them lost, and a
    player's PLI goes upstream; stream/find shows it for a WebSocket and a WHIP publisher
    (and a player's own NACKs and loss on its entry)."""
    client = await WcsClient.connect(f"ws://127.0.0.1:{local_gateway.config.ws_port}")
    published = await client.publish("lossy", [video_track()])
    lost_upstream = drop_sent_video_packets(published, count=3, after=60)
    await published.wait_status("PUBLISHING")
    whip = WhipClient(f"http://127.0.0.1:{local_gateway.config.http_port}/whip/lossy-whip", video_track())
    await whip.start()
    whip_lost = drop_sent_video_packets(whip, count=3, after=60)
    await wait_stream(local_gateway, "lossy-whip")

    players = []
    for name in ("lossy", "lossy-whip"):
        player = await client.play(name)
        await player.wait_status("PLAYING")
        counter = FrameCounter(player).start()
        await counter.wait_frames(5)
        players.append((player, counter))
    lost_downstream = drop_received_video_packets(players[0][0], count=4, after=30)
    await asyncio.sleep(1.1)  # past the once-a-second limit of keyframe requests
    for player, counter in players:
        await ask_keyframes(player)
        await counter.wait_frames(len(counter.pts) + 90)  # the losses happen on the way
    assert len(lost_upstream) == 3 and len(whip_lost) == 3 and len(lost_downstream) == 4

    webrtc = await wait_metrics(
        local_gateway, lambda m: has_feedback(m, 3), mediaSessionId=published.media_session_id
    )
    assert webrtc["VIDEO_RATE"] > 0 and webrtc["VIDEO_FPS"] > 0
    assert (webrtc["VIDEO_WIDTH"], webrtc["VIDEO_HEIGHT"]) == (320, 240)
    whip_metrics = await wait_metrics(
        local_gateway, lambda m: has_feedback(m, 3), name="lossy-whip", published=True
    )
    assert whip_metrics["VIDEO_RATE"] > 0 and whip_metrics["VIDEO_FPS"] > 0
    assert (whip_metrics["VIDEO_WIDTH"], whip_metrics["VIDEO_HEIGHT"]) == (320, 240)
    # The player's entry: its own NACKs and the loss its receiver reports.
    await wait_metrics(
        local_gateway,
        lambda m: m["VIDEO_NACK"] >= 1 and m["VIDEO_LOST"] >= 4,
        mediaSessionId=players[0][0].media_session_id,
    )

    for _, counter in players:
        await counter.stop()
    await whip.stop()
    await client.close()


async def test_stream_find_shows_the_figures_of_an_rtmp_ingest(local_gateway: Gateway, clip: Path) -> None:
    url = f"rtmp://127.0.0.1:{local_gateway.config.rtmp_port}/live/encoder"
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip)]
    push = subprocess.Popen(
        [*cmd, "-c", "copy", "-f", "flv", url], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await wait_stream(local_gateway, "encoder")
        metrics = await wait_metrics(
            local_gateway, lambda m: m["VIDEO_RATE"] > 0 and m["VIDEO_FPS"] > 0, name="encoder"
        )
        assert (metrics["VIDEO_WIDTH"], metrics["VIDEO_HEIGHT"], metrics["VIDEO_CODEC"]) == (320, 240, "H264")
        status, (entry,) = await rest(local_gateway, "stream/find", {"name": "encoder"})
        assert status == 200 and (entry["mediaProvider"], entry["status"]) == ("Flash", "PUBLISHING")
        assert push.poll() is None
    finally:
        push.terminate()
        push.wait(timeout=10)


async def test_every_http_error_is_json_with_its_status(
    local_gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = f"http://127.0.0.1:{local_gateway.config.http_port}"
    async with aiohttp.ClientSession() as http:
        for path in ("/no/such/page", "/rest-api/stream/nope", "/api/nothing-here"):
            async with http.get(base + path) as reply:
                assert reply.status == 404 and reply.content_type == "application/json", path
                assert (await reply.json())["error"] == f"not found: GET {path}"
        async with http.get(base + "/rest-api/stream/find") as reply:  # POST only
            assert reply.status == 405 and reply.content_type == "application/json"
            assert "POST" in reply.headers["Allow"]
            assert "GET is not allowed on /rest-api/stream/find" in (await reply.json())["error"]
        async with http.delete(base + "/rest-api/stream/find_all") as reply:
            assert reply.status == 405 and "DELETE" in (await reply.json())["error"]
        oversize = b"{" + b" " * (1024 * 1024 + 1) + b"}"
        headers = {"Content-Type": "application/json"}
        async with http.post(base + "/rest-api/stream/find", data=oversize, headers=headers) as reply:
            assert reply.status == 413 and reply.content_type == "application/json"
            assert "body size" in (await reply.json())["error"]

        def broken() -> list[Any]:
            raise RuntimeError("a bug")

        monkeypatch.setattr(local_gateway.registry, "streams", broken)
        async with http.get(base + "/api/streams") as reply:  # a handler's crash
            assert reply.status == 500 and "internal error" in (await reply.json())["error"]
        monkeypatch.undo()
        async with http.get(base + "/healthz") as reply:  # successful answers untouched
            assert reply.status == 200 and (await reply.json())["status"] == "ok"
        async with http.get(base + "/", allow_redirects=False) as reply:
            assert reply.status == 200
        async with http.get(base + "/skyrelay-client.js") as reply:  # the demo page's files
            assert reply.status == 200 and len(await reply.read()) > 0
        async with http.get(base + "/%2e%2e/pyproject.toml") as reply:  # not outside them
            assert reply.status == 404 and "not found" in (await reply.json())["error"]


async def test_snapshot_and_recording_calls_refuse_bad_bodies_and_unknown_names(
    local_gateway: Gateway, video_track: Callable[[], EncodedVideoTrack]
) -> None:
    client = await WcsClient.connect(f"ws://127.0.0.1:{local_gateway.config.ws_port}")
    published = await client.publish("snap", [video_track()])
    await published.wait_status("PUBLISHING")
    async with asyncio.timeout(15):  # a keyframe to take the snapshot of
        while (stream := local_gateway.registry.get("snap")) is None or stream.keyframe is None:
            await asyncio.sleep(0.05)

    status, reply = await rest(local_gateway, "stream/snapshot", {"name": "snap"})
    assert status == 200 and reply["streamName"] == "snap"
    picture = next(av.open(io.BytesIO(base64.b64decode(reply["data"]))).decode(video=0))
    assert (picture.width, picture.height) == (320, 240)

    for path in ("stream/snapshot", "stream/startRecording", "stream/stopRecording"):
        bad: list[tuple[Any, int, str]] = [
            (b"not json", 400, "JSON"),
            (b"{", 400, "JSON"),
            ([1, 2], 400, "JSON object"),
            ("snap", 400, "JSON object"),
            ({}, 400, "name"),
            ({"name": 5}, 400, "name"),
            ({"name": ""}, 400, "name"),
            ({"name": ["snap"]}, 400, "name"),
            ({"name": "ghost"}, 404, "ghost" if path == "stream/snapshot" else "no such"),
        ]
        if path != "stream/snapshot":
            bad += [
                ({"mediaSessionId": 7}, 400, "mediaSessionId"),
                ({"mediaSessionId": "ghost"}, 404, "no such"),
            ]
        else:
            bad += [({"streamName": None, "name": None}, 400, "streamName")]
        for body, want, words in bad:
            status, reply = await rest(local_gateway, path, body)
            assert status == want and words in reply["error"], (path, body, reply)
    assert published.status == "PUBLISHING"  # the refusals disturbed nothing
    await client.close()


async def test_rtsp_pulls_over_rest_and_on_demand(local_gateway: Gateway, camera: RtspCameraServer) -> None:
    uri = camera.url
    status, source = await rest(local_gateway, "rtsp/startup", {"uri": uri, "name": "yard"})
    assert status == 200 and source["name"] == "yard" and "s3cret" not in source["uri"]
    await wait_stream(local_gateway, "yard")
    status, pulls = await rest(local_gateway, "rtsp/find_all", method="GET")
    assert status == 200 and [(p["name"], p["status"]) for p in pulls] == [("yard", "PLAYING")]

    client = await WcsClient.connect(f"ws://127.0.0.1:{local_gateway.config.ws_port}")
    player = await client.play("yard")
    await player.wait_status("PLAYING")
    counter = FrameCounter(player).start()
    await counter.wait_frames(20)

    # A play of the rtsp:// URL itself starts a pull for as long as someone watches.
    direct = await client.play(uri)
    await direct.wait_status("PLAYING", timeout=30)
    direct_frames = FrameCounter(direct).start()
    await direct_frames.wait_frames(20)
    assert (direct_frames.frames[-1].width, direct_frames.frames[-1].height) == (320, 240)
    await direct_frames.stop()

    status, source = await rest(
        local_gateway, "rtsp/startup", {"uri": uri, "name": "yard-udp", "transport": "udp"}
    )
    assert status == 200 and source["transport"] == "udp"
    await wait_stream(local_gateway, "yard-udp")
    for path, body, want in [
        ("rtsp/startup", {"uri": uri, "name": "x", "transport": "sctp"}, 400),
        ("rtsp/startup", {"uri": "http://example/x"}, 400),
        ("rtsp/startup", {}, 400),
        ("rtsp/startup", {"uri": uri, "name": ""}, 400),
        ("rtsp/terminate", {"name": "nope"}, 404),
        ("rtsp/terminate", {}, 400),
    ]:
        status, reply = await rest(local_gateway, path, body)
        assert status == want and reply["error"], (path, body, reply)

    status, _ = await rest(local_gateway, "rtsp/terminate", {"name": "yard"})
    assert status == 200
    assert (await player.wait_status("FAILED"))["info"] == "Stopped by the REST API"
    await counter.stop()
    await client.close()


async def test_an_rtsp_url_that_does_not_play_fails_the_viewer(local_gateway: Gateway) -> None:
    local_gateway.rtsp_pulls.start_timeout = 2.0
    client = await WcsClient.connect(f"ws://127.0.0.1:{local_gateway.config.ws_port}")
    try:
        await client.play(f"rtsp://127.0.0.1:{free_port()}/nothing-here", timeout=20)
        raise AssertionError("the play should fail")
    except WcsError as exc:
        assert "RTSP source rtsp://127.0.0.1:" in str(exc) and "failed" in str(exc)
    async with asyncio.timeout(20):  # the failed pull is stopped after its linger
        local_gateway.rtsp_pulls.linger = 0.1
        while local_gateway.rtsp_pulls.sources:
            await asyncio.sleep(0.1)
    await client.close()


async def test_an_rtsp_pull_over_udp_reports_the_packets_it_lost(
    local_gateway: Gateway, camera: RtspCameraServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every 25th datagram the pull receives is lost on the way: stream/find counts them."""
    open_pair = rtsp_source.open_udp_pair
    dropped: list[int] = []

    async def lossy_pair(host: str, port: int, on_rtp: Any, on_rtcp: Any, **kw: Any) -> Any:
        def lose_some(data: bytes, addr: tuple[str, int]) -> None:
            dropped.append(len(dropped))
            if len(dropped) % 25:
                on_rtp(data, addr)

        return await open_pair(host, port, lose_some, on_rtcp, **kw)

    monkeypatch.setattr(rtsp_source, "open_udp_pair", lossy_pair)
    body = {"uri": camera.url, "name": "lossy", "transport": "udp"}
    assert (await rest(local_gateway, "rtsp/startup", body))[0] == 200
    await wait_stream(local_gateway, "lossy")
    async with asyncio.timeout(20):
        while len(dropped) < 200:
            await asyncio.sleep(0.05)
    status, (found,) = await rest(local_gateway, "stream/find", {"name": "lossy", "display": ["metrics"]})
    assert status == 200 and found["mediaProvider"] == "RTSP"
    assert found["metrics"]["VIDEO_LOST"] >= len(dropped) // 25 - 2 > 0, found["metrics"]
