"""Every bad input named in the issue gets a clear answer, and loses nothing else: the
gateway stays up and a witness stream keeps playing throughout."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiortc import RTCConfiguration, RTCPeerConnection
from websockets.exceptions import ConnectionClosed

from gateway.media.synthetic import EncodedVideoTrack
from gateway.wcs.client import WcsClient
from tests.conftest import GatewayProcess
from tests.integration.conftest import FrameCounter
from tests.integration.witness import Witness

pytestmark = pytest.mark.asyncio(loop_scope="module")

TrackFactory = Callable[[], EncodedVideoTrack]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def witness(gateway: GatewayProcess, clip_units: Any) -> AsyncIterator[Witness]:
    started = await Witness.start(gateway.ws_url, EncodedVideoTrack(clip_units, fps=30), gateway)
    yield started
    await started.stop()


async def connected(gateway: GatewayProcess) -> WcsClient:
    return await WcsClient.connect(gateway.ws_url)


async def next_message(client: WcsClient, name: str, start: int, timeout: float = 10.0) -> list[Any]:
    async with asyncio.timeout(timeout):
        while True:
            found = [data for message, data in client.messages[start:] if message == name]
            if found:
                return found[0]
            await asyncio.sleep(0.02)


async def status_of(client: WcsClient, msid: str, start: int = 0, timeout: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            for message, data in client.messages[start:]:
                if message == "notifyStreamStatusEvent" and data[0].get("mediaSessionId") == msid:
                    return data[0]
            await asyncio.sleep(0.02)


async def offer_sdp(kinds: tuple[str, ...] = ("video",), direction: str = "sendonly") -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in kinds:
        pc.addTransceiver(kind, direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def media_request(msid: str, name: str, sdp: Any, **extra: Any) -> dict[str, Any]:
    return {
        "mediaSessionId": msid,
        "name": name,
        "published": True,
        "hasVideo": True,
        "hasAudio": False,
        "status": "PENDING",
        "mediaProvider": "WebRTC",
        "sdp": sdp,
        **extra,
    }


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("this is not json", "not JSON"),
        ("[1, 2, 3]", "JSON object"),
        ('{"data": [{}]}', "no 'message'"),
        ('{"message": "launchMissiles", "data": [{}]}', "Unknown message 'launchMissiles'"),
        ('{"message": "publishStream", "data": {"name": "x"}}', "'data' must be an array"),
        ('{"message": "publishStream", "data": [{"name": "x"}]}', "'mediaSessionId'"),
        ('{"message": "stopStream", "data": [{"mediaSessionId": 7}]}', "'mediaSessionId'"),
        ('{"message": "availableStream", "data": ["x"]}', "data[0] must be an object"),
    ],
)
async def test_malformed_frames_get_fail(
    gateway: GatewayProcess, witness: Witness, frame: str, expected: str
) -> None:
    client = await connected(gateway)
    try:
        start = len(client.messages)
        await client.send_raw(frame)
        fail = await next_message(client, "fail", start)
        assert expected in fail[0]["info"]
        # The connection still works after the error.
        await client.send("availableStream", {"mediaSessionId": "m1", "name": "witness"})
        reply = await next_message(client, "availableStream", start)
        assert reply[0]["status"] == "true"
    finally:
        await client.close()
    await witness.assert_streaming(gateway)


async def test_binary_frame_gets_fail(gateway: GatewayProcess, witness: Witness) -> None:
    client = await connected(gateway)
    try:
        start = len(client.messages)
        await client.send_raw(b"\x00\x01binary")
        fail = await next_message(client, "fail", start)
        assert "Binary frames are not supported" in fail[0]["info"]
    finally:
        await client.close()
    await witness.assert_streaming(gateway)


async def test_publish_before_connection_gets_fail(gateway: GatewayProcess, witness: Witness) -> None:
    from websockets.asyncio.client import connect

    async with connect(gateway.ws_url) as ws:
        await ws.send(
            orjson.dumps({"message": "publishStream", "data": [media_request("a", "b", "v=0")]}).decode()
        )
        async with asyncio.timeout(10):
            reply = orjson.loads(await ws.recv())
        assert reply["message"] == "fail"
        assert "send 'connection' first" in reply["data"][0]["info"]
    await witness.assert_streaming(gateway)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("sdp", 42, "'sdp' must be a non-empty string"),
        ("sdp", "v=0\r\nthis is not an SDP\r\n", "Invalid SDP"),
        ("sdp", "hello", "Invalid SDP"),
        ("hasAudio", "yes", "'hasAudio' must be true or false"),
        ("transport", "SCTP", '\'transport\' must be "UDP" or "TCP"'),
        ("transport", 6, '\'transport\' must be "UDP" or "TCP"'),
        ("name", "x" * 257, "longer than 256"),
        ("name", "cam\n1", "control characters"),
        ("name", "cam\x001", "control characters"),
        ("name", "", "Stream name is empty"),
        ("name", ["a"], "must be a string"),
    ],
)
async def test_bad_publish_fields_get_failed_status(
    gateway: GatewayProcess,
    witness: Witness,
    field: str,
    value: Any,
    expected: str,
) -> None:
    client = await connected(gateway)
    try:
        request = media_request("bad-1", "bad-name-test", await offer_sdp())
        request[field] = value
        await client.send("publishStream", request)
        status = await status_of(client, "bad-1")
        assert status["status"] == "FAILED"
        assert expected in status["info"]
    finally:
        await client.close()
    await witness.assert_streaming(gateway)


def only_codecs(sdp: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        sdp = re.sub(old, new, sdp)
    return sdp


@pytest.mark.parametrize(
    ("replacements", "expected"),
    [
        ({"VP8/90000": "VP9/90000", "H264/90000": "H265/90000"}, "No usable video codec"),
        (
            {"VP8/90000": "VP9/90000", "packetization-mode=1": "packetization-mode=0"},
            "No usable video codec",
        ),
    ],
)
async def test_offer_without_usable_codec_fails(
    gateway: GatewayProcess, witness: Witness, replacements: dict[str, str], expected: str
) -> None:
    client = await connected(gateway)
    try:
        sdp = only_codecs(await offer_sdp(), replacements)
        await client.send("publishStream", media_request("nocodec", "nocodec", sdp))
        status = await status_of(client, "nocodec")
        assert status["status"] == "FAILED"
        assert expected in status["info"] and "H264" in status["info"]
        # The name was not taken by the failed publish.
        await client.send("availableStream", {"mediaSessionId": "q", "name": "nocodec"})
        reply = await next_message(client, "availableStream", 0)
        assert reply[0]["status"] == "false"
    finally:
        await client.close()
    await witness.assert_streaming(gateway)


async def test_offer_with_two_video_tracks_fails(gateway: GatewayProcess, witness: Witness) -> None:
    client = await connected(gateway)
    try:
        sdp = await offer_sdp(kinds=("video", "video"))
        await client.send("publishStream", media_request("twovideo", "twovideo", sdp))
        status = await status_of(client, "twovideo")
        assert status["status"] == "FAILED"
        assert "more than one video track" in status["info"]
    finally:
        await client.close()
    await witness.assert_streaming(gateway)


async def test_player_without_the_stream_codec_fails(gateway: GatewayProcess, witness: Witness) -> None:
    client = await connected(gateway)
    try:
        sdp = only_codecs(await offer_sdp(direction="recvonly"), {"H264/90000": "H265/90000"})
        request = media_request("nocodec-play", "witness", sdp, published=False)
        await client.send("playStream", request)
        status = await status_of(client, "nocodec-play")
        assert status["status"] == "FAILED"
        assert "does not accept H264" in status["info"]
    finally:
        await client.close()
    await witness.assert_streaming(gateway)


async def test_frame_over_size_limit_closes_with_1009(gateway: GatewayProcess, witness: Witness) -> None:
    client = await connected(gateway)
    big = orjson.dumps({"message": "pushLogs", "data": [{"logs": "x" * (1024 * 1024 + 10)}]}).decode()
    await client.send_raw(big)
    async with asyncio.timeout(10):
        await client.ws.wait_closed()
    assert client.ws.close_code == 1009
    with pytest.raises(ConnectionClosed):
        await client.send("ping", None)
    await client.close()
    await witness.assert_streaming(gateway)


async def test_stop_and_unpublish_of_unknown_id_get_failed(gateway: GatewayProcess, witness: Witness) -> None:
    client = await connected(gateway)
    try:
        for message in ("stopStream", "unPublishStream"):
            msid = f"unknown-{message}"
            await client.send(message, {"mediaSessionId": msid, "name": "witness"})
            status = await status_of(client, msid)
            assert status["status"] == "FAILED"
            assert "Unknown mediaSessionId" in status["info"]
    finally:
        await client.close()
    await witness.assert_streaming(gateway)


async def test_publish_flood_is_limited_per_connection(gateway: GatewayProcess, witness: Witness) -> None:
    client = await connected(gateway)
    sdp = await offer_sdp()
    try:
        total = 40
        for i in range(total):
            await client.send("publishStream", media_request(f"flood-{i}", f"flood-{i}", sdp))
        async with asyncio.timeout(30):
            while True:
                answers = client.received("setRemoteSDP")
                failed = [
                    d[0] for d in client.received("notifyStreamStatusEvent") if d[0]["status"] == "FAILED"
                ]
                if len(answers) + len(failed) >= total:
                    break
                await asyncio.sleep(0.05)
        assert len(answers) == 16  # the default per-connection limit
        assert len(failed) == total - 16
        assert all("Too many streams on this connection (limit 16)" == f["info"] for f in failed)
        assert gateway.health()["streams"] >= 16
    finally:
        await client.close()
    # Closing the connection released all of them.
    async with asyncio.timeout(15):
        while gateway.health()["streams"] != 1:  # only the witness
            await asyncio.sleep(0.1)
    await witness.assert_streaming(gateway)


async def test_second_publisher_of_live_name_fails(
    gateway: GatewayProcess, witness: Witness, video_track: TrackFactory
) -> None:
    client = await connected(gateway)
    try:
        with pytest.raises(Exception, match="Stream name is already in use"):
            await client.publish("witness", [video_track()])
    finally:
        await client.close()
    await witness.assert_streaming(gateway)


async def test_play_of_unknown_name_fails_with_stream_not_found(
    gateway: GatewayProcess, witness: Witness
) -> None:
    client = await connected(gateway)
    try:
        with pytest.raises(Exception, match="Stream not found"):
            await client.play("no-such-stream")
        stream = next(iter(client.streams.values()))
        assert stream.status == "FAILED" and stream.info == "Stream not found"
    finally:
        await client.close()
    await witness.assert_streaming(gateway)


async def test_available_stream_and_stream_events(
    gateway: GatewayProcess, witness: Witness, video_track: TrackFactory
) -> None:
    pub_client = await connected(gateway)
    play_client = await connected(gateway)
    try:
        publisher = await pub_client.publish("events", [video_track()])
        await publisher.wait_status("PUBLISHING")
        player = await play_client.play("events")
        await player.wait_status("PLAYING")
        await play_client.send("availableStream", {"mediaSessionId": "av1", "name": "events"})
        await play_client.send("availableStream", {"mediaSessionId": "av2", "name": "nothing"})
        async with asyncio.timeout(10):
            while len(play_client.received("availableStream")) < 2:
                await asyncio.sleep(0.02)
        replies = {d[0]["id"]: d[0] for d in play_client.received("availableStream")}
        assert replies["av1"]["status"] == "true"
        assert replies["av2"] == {"id": "av2", "status": "false", "info": "Stream not found"}

        payload = {"muted": True, "note": "ünïcode"}
        await pub_client.send(
            "sendStreamEvent",
            {"mediaSessionId": publisher.media_session_id, "type": "audioMuted", "payload": payload},
        )
        await player.wait_for(
            lambda: any(
                e[0] == "notifyStreamEvent" and e[1][0]["type"] == "audioMuted" for e in player.events
            )
        )
        event = next(
            e[1][0] for e in player.events if e[0] == "notifyStreamEvent" and e[1][0]["type"] == "audioMuted"
        )
        assert event == {"mediaSessionId": player.media_session_id, "type": "audioMuted", "payload": payload}

        # A player may not send stream events.
        start = len(play_client.messages)
        await play_client.send(
            "sendStreamEvent", {"mediaSessionId": player.media_session_id, "type": "data", "payload": {}}
        )
        fail = await next_message(play_client, "fail", start)
        assert "Only a publisher" in fail[0]["info"]
    finally:
        await play_client.close()
        await pub_client.close()
    await witness.assert_streaming(gateway)


async def test_plays_of_bad_urls_each_get_failed_and_free_their_slot(
    gateway: GatewayProcess, witness: Witness
) -> None:
    """A playStream whose name is a URL the gateway cannot even parse once got no status
    and held one of the connection's 16 slots: now each fails, and the 18th play works."""
    client = await connected(gateway)
    sdp = await offer_sdp(direction="recvonly")
    names = ["rtsp://u:p@:99999/x", "rtsp://[::1"]
    try:
        start = len(client.messages)
        for i in range(17):
            request = media_request(f"bad-url-{i}", names[i % 2], sdp, published=False)
            await client.send("playStream", request)
        for i in range(17):
            status = await status_of(client, f"bad-url-{i}", start, timeout=30)
            assert status["status"] == "FAILED" and status["info"]
        player = await client.play("witness")
        await player.wait_status("PLAYING")
        counter = FrameCounter(player).start()
        try:
            await counter.wait_frames(5, timeout=10)
        finally:
            await counter.stop()
    finally:
        await client.close()
    await witness.assert_streaming(gateway)
