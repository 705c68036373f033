"""Bad input found by probing a running gateway (issue 11, items 1, 2, 3, 5, 11, 12): each
is sent to an in-process gateway and gets a clear JSON answer (or its protocol's refusal),
never a 500, while a witness stream keeps playing throughout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from yarl import URL

from gateway.app import Gateway
from gateway.media.rtmp.client import PublishStarted, Refused, RtmpClientConnection
from gateway.media.synthetic import EncodedVideoTrack
from tests.integration.conftest import AccessUnits, local_config
from tests.integration.test_bad_input import offer_sdp
from tests.integration.witness import Witness

pytestmark = pytest.mark.asyncio(loop_scope="module")

# The names every ingress must refuse, as the WebSocket API always did.
BAD_NAMES = ["\u0000", "cam\x01era", "x" * 300, "file:///etc/passwd", "rtsp://u:p@:99999/x", "rtmp://[::1"]
DEEP = b"[" * 5000 + b"]" * 5000
DEEP_OBJECT = b'{"a":' * 5000 + b"1" + b"}" * 5000
REST_CALLS = [
    "stream/find_all",
    "stream/find",
    "stream/terminate",
    "stream/snapshot",
    "stream/startRecording",
    "stream/stopRecording",
    "recorder/find_all",
    "connection/find_all",
    "rtsp/startup",
    "rtsp/find_all",
    "rtsp/terminate",
    "push/startup",
    "push/find_all",
    "push/find",
    "push/terminate",
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway() -> AsyncIterator[Gateway]:
    started = Gateway(local_config())
    await started.start()
    yield started
    await started.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def witness(gateway: Gateway, clip_units: AccessUnits) -> AsyncIterator[Witness]:
    ws = f"ws://127.0.0.1:{gateway.config.ws_port}"
    started = await Witness.start(ws, EncodedVideoTrack(clip_units, fps=30), gateway)
    yield started
    await started.stop()


async def call(
    gateway: Gateway,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    connector: aiohttp.BaseConnector | None = None,
) -> tuple[int, Any]:
    """One HTTP request with ``path`` sent as written (no normalising of ``%00`` or ``//``);
    the answer must be JSON."""
    url = URL(f"http://127.0.0.1:{gateway.config.http_port}{path}", encoded=True)
    sent = {"Content-Type": content_type, **(headers or {})} if body is not None else headers
    async with (
        aiohttp.ClientSession(connector=connector, connector_owner=connector is None) as http,
        http.request(method, url, data=body, headers=sent) as reply,
    ):
        assert reply.content_type == "application/json", (path, reply.status, await reply.text())
        return reply.status, await reply.json()


def rest_body(**fields: Any) -> bytes:
    return orjson.dumps(fields)


# --- 1. a NUL in a static path ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/%00", "/index.html%00.js", "/%00/../index.html", "/a%00b/c"])
async def test_nul_in_a_static_path_is_a_json_404(gateway: Gateway, witness: Witness, path: str) -> None:
    status, answer = await call(gateway, "GET", path)
    assert status == 404 and answer["error"].startswith("not found")
    status, _ = await call(gateway, "GET", "/healthz")  # the server is still up
    assert status == 200
    await witness.assert_streaming()


# --- 2. JSON nested 5,000 deep ---------------------------------------------------------------


async def test_a_deep_json_body_is_400_on_every_rest_call(gateway: Gateway, witness: Witness) -> None:
    for path in REST_CALLS:
        for body in (DEEP, DEEP_OBJECT):
            status, answer = await call(gateway, "POST", f"/rest-api/{path}", body)
            assert status == 400, (path, answer)
            assert "depth limit exceeded" in answer["error"], (path, answer)
    status, answer = await call(gateway, "POST", "/api/streams/witness/quality", DEEP)
    assert status == 400 and "depth limit exceeded" in answer["error"]
    # A body that is JSON but not an object is still told so.
    status, answer = await call(gateway, "POST", "/rest-api/rtsp/startup", b"[1]")
    assert status == 400 and "JSON object" in answer["error"]
    await witness.assert_streaming()


# --- 3, 11, 12. rtsp/startup and push/startup ------------------------------------------------


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"uri": "rtsp://u:p@:99999/x"}, "not a valid URI"),  # item 3: was a 500 from redaction
        ({"uri": "rtsp://u:p@:99999/x", "name": "fine"}, "not a valid URI"),
        ({"uri": "rtsp://127.0.0.1:1/x", "name": "rtmp://[::1"}, "URL but not rtsp://"),
        ({"uri": "rtsp://[::1/x"}, "not a valid URI"),
        ({"uri": "rtsp:///x", "name": "nohost"}, "no host"),
        ({"uri": "file:///etc/passwd"}, "not an rtsp:// or rtsps:// URI"),  # item 12
        ({"uri": "http://127.0.0.1/x", "name": "web"}, "not an rtsp:// or rtsps:// URI"),
        ({"uri": "rtsp://127.0.0.1:1/x", "name": "file:///etc/passwd"}, "URL but not rtsp://"),
        ({"uri": "rtsp://127.0.0.1:1/x", "name": "\u0000"}, "control characters"),  # item 11
        ({"uri": "rtsp://127.0.0.1:1/x", "name": "cam\nera"}, "control characters"),
        ({"uri": "rtsp://127.0.0.1:1/x", "name": "x" * 300}, "longer than 256"),
        ({"uri": "rtsp://127.0.0.1:1/" + "x" * 300}, "longer than 256"),  # the URI is the name
        ({"uri": "rtsp://127.0.0.1:1/x", "name": 7}, "must be a string"),
    ],
)
async def test_rtsp_startup_refuses_bad_uris_and_names(
    gateway: Gateway, witness: Witness, body: dict[str, Any], why: str
) -> None:
    status, answer = await call(gateway, "POST", "/rest-api/rtsp/startup", rest_body(**body))
    assert status == 400 and why in answer["error"], answer
    assert "p@" not in answer["error"]  # no password shown
    status, pulls = await call(gateway, "POST", "/rest-api/rtsp/find_all")
    assert status == 200 and pulls == []  # nothing was started
    await witness.assert_streaming()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"streamName": "witness", "rtmpUrl": "file:///etc/passwd"}, "not an rtmp:// or rtmps:// URL"),
        ({"streamName": "witness", "rtmpUrl": "http://127.0.0.1/live/x"}, "not an rtmp:// or rtmps://"),
        ({"streamName": "witness", "rtmpUrl": "rtmp://[::1/live/x"}, "not a valid URL"),
        ({"streamName": "\u0000", "rtmpUrl": "rtmp://127.0.0.1:1/live/x"}, "control characters"),
        ({"streamName": "x" * 300, "rtmpUrl": "rtmp://127.0.0.1:1/live/x"}, "longer than 256"),
        ({"streamName": "file:///etc/passwd", "rtmpUrl": "rtmp://127.0.0.1:1/live/x"}, "not rtsp://"),
    ],
)
async def test_push_startup_refuses_bad_urls_and_names(
    gateway: Gateway, witness: Witness, body: dict[str, Any], why: str
) -> None:
    status, answer = await call(gateway, "POST", "/rest-api/push/startup", rest_body(**body))
    assert status == 400 and why in answer["error"], answer
    status, pushes = await call(gateway, "POST", "/rest-api/push/find_all")
    assert status == 200 and pushes == []
    await witness.assert_streaming()


# --- 5, 11. WHEP and WHIP --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["rtsp://u:p@:99999/x", "rtmp://[::1", "%00", "cam%01", "x" * 300, "file:///etc/passwd"]
)
async def test_whep_and_whip_refuse_bad_names_with_400(gateway: Gateway, witness: Witness, name: str) -> None:
    # A WHIP path is one segment (/whip/{key}): a name with a slash cannot reach it (404).
    kinds = [("whep", "recvonly")] + ([("whip", "sendonly")] if "/" not in name else [])
    for kind, direction in kinds:
        offer = (await offer_sdp(direction=direction)).encode()
        status, answer = await call(gateway, "POST", f"/{kind}/{name}", offer, content_type="application/sdp")
        assert status == 400 and "Stream name" in answer["error"], (kind, name, answer)
    assert gateway.registry.get(name) is None and len(gateway.whep.sessions) == 0
    await witness.assert_streaming()


# --- 11. RTMP publish and RTSP ANNOUNCE --------------------------------------------------------


async def rtmp_publish(gateway: Gateway, name: str) -> PublishStarted | Refused | None:
    """Handshake, connect and publish ``name`` on the RTMP port: what the server said."""
    port = gateway.config.rtmp_port
    client = RtmpClientConnection("live", f"rtmp://127.0.0.1:{port}/live", name)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(10):
            while True:
                writer.write(client.data_to_send())
                data = await reader.read(65536)
                if not data:
                    return None  # closed without a word
                for event in client.receive_data(data):
                    if isinstance(event, PublishStarted | Refused):
                        return event
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def test_rtmp_publish_refuses_bad_names(gateway: Gateway, witness: Witness) -> None:
    for name in BAD_NAMES:
        answer = await rtmp_publish(gateway, name)
        assert isinstance(answer, Refused) and answer.command == "publish", (name, answer)
        assert "Stream name" in answer.description, answer
        assert gateway.registry.find(name) is None
    # The same client with a good name publishes: the refusals were for the names.
    assert isinstance(await rtmp_publish(gateway, "rtmp-good-name"), PublishStarted)
    await witness.assert_streaming()


async def rtsp_announce(gateway: Gateway, path: str) -> str:
    """An ANNOUNCE of ``path`` (sent as written) on the RTSP port: the status line."""
    sdp = (
        b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:trackID=0\r\n"
    )
    port = gateway.config.rtsp_port
    request = (
        f"ANNOUNCE rtsp://127.0.0.1:{port}/{path} RTSP/1.0\r\nCSeq: 1\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n"
    ).encode() + sdp
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(10):
            return (await reader.readline()).decode().strip()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


@pytest.mark.parametrize("path", ["%00", "cam%01era", "x" * 300, "a/" + "b" * 299])
async def test_rtsp_announce_refuses_bad_names(gateway: Gateway, witness: Witness, path: str) -> None:
    status_line = await rtsp_announce(gateway, path)
    assert status_line.startswith("RTSP/1.0 400"), status_line
    assert await rtsp_announce(gateway, "announce-good-name") == "RTSP/1.0 200 OK"
    await witness.assert_streaming()


# --- 12. control endpoints answer loopback only without an api_token --------------------------


@contextlib.asynccontextmanager
async def unix_socket(gateway: Gateway, path: Path) -> AsyncIterator[aiohttp.UnixConnector]:
    """The gateway's HTTP app served on a Unix socket too: a real client whose address is
    not loopback (aiohttp gives its peer as ""), without leaving 127.0.0.1."""
    runner = gateway.http._runner
    assert runner is not None
    site = web.UnixSite(runner, str(path))
    await site.start()
    connector = aiohttp.UnixConnector(path=str(path))
    try:
        yield connector
    finally:
        await connector.close()
        await site.stop()


CONTROLS = [
    ("POST", "/rest-api/rtsp/startup", {"uri": "rtsp://127.0.0.1:1/x", "name": "from-afar"}),
    ("POST", "/rest-api/rtsp/terminate", {"name": "from-afar"}),
    ("POST", "/rest-api/push/startup", {"streamName": "witness", "rtmpUrl": "rtmp://127.0.0.1:1/live/x"}),
    ("POST", "/rest-api/push/terminate", {"mediaSessionId": "x"}),
    ("POST", "/rest-api/stream/terminate", {"mediaSessionId": "x"}),
    ("POST", "/rest-api/stream/startRecording", {"name": "witness"}),
    ("POST", "/rest-api/stream/stopRecording", {"name": "witness"}),
    ("POST", "/api/streams/witness/quality", {"quality": 1}),
]


async def test_control_endpoints_answer_only_loopback_without_a_token(
    gateway: Gateway, witness: Witness, tmp_path: Path
) -> None:
    async with unix_socket(gateway, tmp_path / "http.sock") as far:
        for method, path, body in CONTROLS:
            status, answer = await call(gateway, method, path, orjson.dumps(body), connector=far)
            assert status == 403 and "loopback" in answer["error"] and "api_token" in answer["error"], path
        # Reads stay open to every client.
        for path in ("/rest-api/stream/find_all", "/rest-api/rtsp/find_all", "/api/streams", "/healthz"):
            status, _ = await call(gateway, "GET", path, connector=far)
            assert status == 200, path
    assert gateway.rtsp_pulls.sources == {}
    # From loopback, the same gateway takes them (a missing session is a 404, not a 403).
    status, answer = await call(gateway, "POST", "/rest-api/stream/terminate", rest_body(mediaSessionId="x"))
    assert status == 404
    await witness.assert_streaming()


async def test_with_an_api_token_control_endpoints_answer_any_client_with_it(tmp_path: Path) -> None:
    gateway = Gateway(local_config(api_token="t0ken"))
    await gateway.start()
    try:
        async with unix_socket(gateway, tmp_path / "http.sock") as far:
            body = rest_body(mediaSessionId="x")
            status, answer = await call(gateway, "POST", "/rest-api/stream/terminate", body, connector=far)
            assert status == 401  # the token is what is asked for now
            bearer = {"Authorization": "Bearer t0ken"}
            status, answer = await call(
                gateway, "POST", "/rest-api/stream/terminate", body, headers=bearer, connector=far
            )
            assert status == 404 and "no media session" in answer["error"]
    finally:
        await gateway.stop()
