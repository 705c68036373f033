"""Access control with real clients: HMAC tokens on connect, publish, play and WHEP; WCS
REST hooks against a small backend that allows one name and denies another; the bearer
token of the REST API and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import websockets
from aiohttp import web

from gateway.access import Action, mint_token
from gateway.app import Gateway
from gateway.media.synthetic import EncodedVideoTrack
from gateway.media.whip_client import WhipClient, WhipError
from gateway.wcs.client import WcsClient, WcsError
from tests.conftest import free_port
from tests.integration.conftest import FrameCounter, local_config, wait_stream

SECRET = "test-secret"


@pytest_asyncio.fixture
async def token_gateway() -> AsyncIterator[Gateway]:
    gateway = Gateway(local_config(auth_secret=SECRET, api_token="api-token"))
    await gateway.start()
    yield gateway
    await gateway.stop()


def token(name: str, action: Action, ttl: float = 60) -> str:
    return mint_token(SECRET, name, action, ttl)


async def test_tokens_decide_who_connects_publishes_and_plays(
    token_gateway: Gateway, video_track: Callable[[], EncodedVideoTrack]
) -> None:
    ws = f"ws://127.0.0.1:{token_gateway.config.ws_port}"
    with pytest.raises(WcsError, match="connection failed"):
        await WcsClient.connect(ws)  # no token
    with pytest.raises(WcsError, match="connection failed"):
        await WcsClient.connect(ws, authToken="forged.token")
    client = await WcsClient.connect(ws, authToken=token("*", Action.CONNECT))

    published = await client.publish("cam", [video_track()], custom={"token": token("cam", Action.PUBLISH)})
    await published.wait_status("PUBLISHING")
    refusals = [
        ("publish", "other", token("cam", Action.PUBLISH), "token is not for stream 'other'"),
        ("play", "cam", token("cam", Action.PLAY, ttl=-1), "token expired"),
        ("play", "cam", token("cam", Action.PUBLISH), "token does not allow play"),
        ("play", "cam", mint_token("wrong", "cam", Action.PLAY, 60), "invalid token"),
    ]
    for what, name, given, reason in refusals:
        with pytest.raises(WcsError, match=reason):
            if what == "publish":
                await client.publish(name, [video_track()], custom={"token": given})
            else:
                await client.play(name, custom={"token": given})
    player = await client.play("cam", custom={"token": token("cam", Action.PLAY)})
    await player.wait_status("PLAYING")
    assert published.status == "PUBLISHING"  # the refusals disturbed nothing

    whep = f"http://127.0.0.1:{token_gateway.config.http_port}/whep/cam"
    sdp = {"Content-Type": "application/sdp"}
    async with aiohttp.ClientSession() as http:
        async with http.post(whep, data="v=0\r\n", headers=sdp) as reply:
            assert reply.status == 403 and "token is required" in (await reply.json())["error"]
        async with http.post(
            f"{whep}?token={token('cam', Action.PLAY)}", data="v=0\r\n", headers=sdp
        ) as reply:
            assert reply.status == 400  # past the token: the (bad) offer is what is refused now
    await client.close()


async def test_the_rest_api_and_metrics_need_the_bearer_token(token_gateway: Gateway) -> None:
    base = f"http://127.0.0.1:{token_gateway.config.http_port}"
    async with aiohttp.ClientSession() as http:
        for path in ("/rest-api/stream/find_all", "/metrics", "/api/streams"):
            async with http.get(base + path) as reply:
                assert reply.status == 401, path
            async with http.get(base + path, headers={"Authorization": "Bearer wrong"}) as reply:
                assert reply.status == 401, path
            async with http.get(base + path, headers={"Authorization": "Bearer api-token"}) as reply:
                assert reply.status == 200, path
        async with http.get(base + "/healthz") as reply:
            assert reply.status == 200


@pytest_asyncio.fixture
async def backend() -> AsyncIterator[tuple[str, list[tuple[str, dict[str, object]]]]]:
    """A WCS REST hooks backend: everyone but login "mallory" connects; only "allowed" and
    "secret" may be published; "secret" may not be played."""
    calls: list[tuple[str, dict[str, object]]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        hook = request.match_info["hook"]
        calls.append((hook, body))
        if hook == "connect" and body.get("login") == "mallory":
            return web.json_response({"info": "mallory is banned by the backend"}, status=403)
        if hook == "publishStream" and body.get("name") not in ("allowed", "secret"):
            return web.json_response({"info": "name not allowed by the backend"}, status=403)
        if hook == "playStream" and body.get("name") == "secret":
            return web.json_response({"info": "secret is not for you"}, status=401)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hooks/{hook}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/hooks", calls
    await runner.cleanup()


async def test_rest_hooks_allow_one_name_and_deny_another(
    backend: tuple[str, list[tuple[str, dict[str, object]]]], video_track: Callable[[], EncodedVideoTrack]
) -> None:
    url, calls = backend
    gateway = Gateway(local_config(auth_hook_url=url))
    await gateway.start()
    try:
        client = await WcsClient.connect(f"ws://127.0.0.1:{gateway.config.ws_port}")
        allowed = await client.publish("allowed", [video_track()])
        await allowed.wait_status("PUBLISHING")
        with pytest.raises(WcsError, match="name not allowed by the backend"):
            await client.publish("denied", [video_track()])
        player = await client.play("allowed")
        await player.wait_status("PLAYING")
        counter = FrameCounter(player).start()
        await counter.wait_frames(10)  # the allowed play works
        await counter.stop()
        hooks = [hook for hook, _ in calls]
        assert hooks == ["connect", "publishStream", "publishStream", "playStream"]
        assert calls[1][1]["name"] == "allowed" and calls[1][1]["sessionId"]
        assert calls[3][1]["name"] == "allowed"

        # A play the backend refuses (of a live stream) fails with its info; the allowed play
        # goes on.
        secret = await client.publish("secret", [video_track()])
        await secret.wait_status("PUBLISHING")
        with pytest.raises(WcsError, match="secret is not for you"):
            await client.play("secret")
        (refused,) = [s for s in client.streams.values() if s.name == "secret" and not s.published]
        assert refused.status == "FAILED" and refused.info == "secret is not for you"
        assert [hook for hook, body in calls[4:]] == ["publishStream", "playStream"]
        assert calls[5][1]["name"] == "secret"
        assert player.status == "PLAYING"
        await client.close()

        # A connect the backend refuses by a field of the connection: a fail with its info,
        # and the socket closed (1008).
        async with websockets.connect(f"ws://127.0.0.1:{gateway.config.ws_port}") as ws:
            fields = {"appKey": "defaultApp", "mediaProviders": ["WebRTC"], "login": "mallory"}
            await ws.send(json.dumps({"message": "connection", "data": [fields]}))
            received = []
            async with asyncio.timeout(10):
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for frame in ws:
                        received.append(json.loads(frame))
            assert ws.close_code == 1008 and ws.close_reason == "mallory is banned by the backend"
        (fail,) = [msg["data"][0] for msg in received if msg["message"] == "fail"]
        assert (fail["apiMethod"], fail["info"]) == ("connection", "mallory is banned by the backend")
        assert not any(msg["message"] == "getUserData" for msg in received)
        assert calls[-1][0] == "connect" and calls[-1][1]["login"] == "mallory"
        with pytest.raises(WcsError, match="connection failed"):  # and so for the client
            await WcsClient.connect(f"ws://127.0.0.1:{gateway.config.ws_port}", login="mallory")
    finally:
        await gateway.stop()


async def test_an_unreachable_backend_refuses(video_track: Callable[[], EncodedVideoTrack]) -> None:
    gateway = Gateway(local_config(auth_hook_url=f"http://127.0.0.1:{free_port()}/hooks"))
    await gateway.start()
    try:
        with pytest.raises(WcsError, match="connection failed"):
            await WcsClient.connect(f"ws://127.0.0.1:{gateway.config.ws_port}")
    finally:
        await gateway.stop()


async def test_rtmp_publish_by_name_needs_a_publish_token(token_gateway: Gateway, clip: Path) -> None:
    base = f"rtmp://127.0.0.1:{token_gateway.config.rtmp_port}/live"
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip)]
    cmd += ["-c", "copy", "-f", "flv"]
    refused = subprocess.Popen([*cmd, f"{base}/studio"], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wrong = f"{base}/studio?token={token('other', Action.PUBLISH)}"
    refused_too = subprocess.Popen([*cmd, wrong], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    allowed = f"{base}/studio?token={token('studio', Action.PUBLISH)}"
    push = subprocess.Popen([*cmd, allowed], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for proc in (refused, refused_too):
            async with asyncio.timeout(15):
                assert await asyncio.to_thread(proc.wait) != 0
        await wait_stream(token_gateway, "studio")
        assert push.poll() is None
    finally:
        for proc in (refused, refused_too, push):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)


async def test_rtsp_publish_needs_a_publish_token(token_gateway: Gateway, clip: Path) -> None:
    base = f"rtsp://127.0.0.1:{token_gateway.config.rtsp_port}"
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip)]
    cmd += ["-c", "copy", "-f", "rtsp", "-rtsp_transport", "tcp"]
    refused = subprocess.Popen([*cmd, f"{base}/lobby"], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    allowed = f"{base}/lobby?token={token('lobby', Action.PUBLISH)}"
    push = subprocess.Popen([*cmd, allowed], stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with asyncio.timeout(15):
            assert await asyncio.to_thread(refused.wait) != 0
        await wait_stream(token_gateway, "lobby")
        assert push.poll() is None
    finally:
        for proc in (refused, push):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)


async def test_whip_publish_by_name_needs_a_publish_token(
    token_gateway: Gateway, video_track: Callable[[], EncodedVideoTrack]
) -> None:
    base = f"http://127.0.0.1:{token_gateway.config.http_port}/whip/booth"
    refused = WhipClient(base, video_track())
    with pytest.raises(WhipError) as error:
        await refused.start()
    assert error.value.status == 403 and "token is required" in str(error.value)
    await refused.stop()
    allowed = WhipClient(f"{base}?token={token('booth', Action.PUBLISH)}", video_track())
    await allowed.start()
    await wait_stream(token_gateway, "booth")
    await allowed.stop()


async def test_hls_needs_a_play_token_and_passes_it_to_the_segments(
    token_gateway: Gateway, video_track: Callable[[], EncodedVideoTrack]
) -> None:
    ws = f"ws://127.0.0.1:{token_gateway.config.ws_port}"
    client = await WcsClient.connect(ws, authToken=token("*", Action.CONNECT))
    published = await client.publish(
        "hls-cam", [video_track()], custom={"token": token("hls-cam", Action.PUBLISH)}
    )
    await published.wait_status("PUBLISHING")
    base = f"http://127.0.0.1:{token_gateway.config.http_port}/hls/hls-cam"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/index.m3u8") as reply:
            assert reply.status == 403
        async with http.get(f"{base}/seg-0.m4s") as reply:
            assert reply.status == 403
    playlist = f"{base}/index.m3u8?token={token('hls-cam', Action.PLAY)}"
    probe = await asyncio.to_thread(
        subprocess.run,
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", playlist],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    assert b'"codec_name": "h264"' in probe.stdout
    await client.close()


async def test_rtsp_play_needs_a_play_token(
    token_gateway: Gateway, video_track: Callable[[], EncodedVideoTrack]
) -> None:
    ws = f"ws://127.0.0.1:{token_gateway.config.ws_port}"
    client = await WcsClient.connect(ws, authToken=token("*", Action.CONNECT))
    published = await client.publish("yard", [video_track()], custom={"token": token("yard", Action.PUBLISH)})
    await published.wait_status("PUBLISHING")
    base = f"rtsp://127.0.0.1:{token_gateway.config.rtsp_port}/yard"

    def probe(url: str) -> subprocess.CompletedProcess[bytes]:
        cmd = ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_streams", "-of", "json", url]
        return subprocess.run(cmd, capture_output=True, timeout=60)

    refused = await asyncio.to_thread(probe, base)
    assert refused.returncode != 0 and b"403" in refused.stderr
    wrong = await asyncio.to_thread(probe, f"{base}?token={token('other', Action.PLAY)}")
    assert wrong.returncode != 0
    allowed = await asyncio.to_thread(probe, f"{base}?token={token('yard', Action.PLAY)}")
    assert allowed.returncode == 0 and b'"codec_name": "h264"' in allowed.stdout
    await client.close()
