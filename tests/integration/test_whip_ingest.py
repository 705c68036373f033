"""WHIP ingest (url_type 4) with a real aiortc WHIP client: one-time keys, the answer per
RFC 9725, relayed to WebRTC players without transcoding, and every bad request answered
with a clear error while another push keeps streaming."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import pytest_asyncio

from gateway.app import Gateway
from gateway.media.synthetic import EncodedVideoTrack
from gateway.media.whip_client import WhipClient, WhipError
from gateway.wcs.client import WcsClient
from tests.integration.conftest import FrameCounter, play_and_decode, wait_stream

Track = Callable[[], EncodedVideoTrack]


def whip_url(gateway: Gateway, key: str) -> str:
    return f"http://127.0.0.1:{gateway.config.http_port}/whip/{key}"


@pytest_asyncio.fixture
async def clients() -> AsyncIterator[list[WhipClient]]:
    started: list[WhipClient] = []
    yield started
    for client in started:
        await client.stop()


async def push(gateway: Gateway, key: str, track: EncodedVideoTrack, clients: list[WhipClient]) -> WhipClient:
    client = WhipClient(whip_url(gateway, key), track)
    clients.append(client)
    await client.start()
    return client


async def test_whip_push_plays_and_its_figures_are_on_the_http_api(
    local_gateway: Gateway, video_track: Track, clients: list[WhipClient]
) -> None:
    key = local_gateway.ingest_keys.issue("whip-cam")
    client = await push(local_gateway, key.key, video_track(), clients)
    assert client.resource is not None and client.resource.startswith(whip_url(local_gateway, key.key) + "/")
    await wait_stream(local_gateway, "whip-cam")
    counter = await play_and_decode(local_gateway, "whip-cam")
    assert (counter.frames[-1].width, counter.frames[-1].height) == (320, 240)

    api = f"http://127.0.0.1:{local_gateway.config.http_port}/api/streams"
    async with aiohttp.ClientSession() as http:
        async with http.get(api) as reply:
            listed = (await reply.json())["streams"]
        async with http.get(f"{api}/whip-cam") as reply:
            figures = await reply.json()
    assert [s["name"] for s in listed] == ["whip-cam"]
    assert figures["ingest"] == "whip" and figures["video_codec"] == "H264"
    assert (figures["width"], figures["height"]) == (320, 240)
    assert figures["fps"] > 0 and figures["bit_rate"] > 0

    # DELETE ends the session; a stream not kept for its issuer ends with it.
    await client.stop()
    async with asyncio.timeout(10):
        while len(local_gateway.registry):
            await asyncio.sleep(0.05)
    assert not local_gateway.whip.pushes


async def test_a_kept_stream_resumes_for_its_viewer_when_the_push_returns(
    local_gateway: Gateway, video_track: Track, clients: list[WhipClient]
) -> None:
    key = local_gateway.ingest_keys.issue("drone", keep_stream=True)
    first = await push(local_gateway, key.key, video_track(), clients)
    await wait_stream(local_gateway, "drone")
    viewer = await WcsClient.connect(f"ws://127.0.0.1:{local_gateway.config.ws_port}")
    player = await viewer.play("drone")
    await player.wait_status("PLAYING")
    counter = FrameCounter(player).start()
    await counter.wait_frames(20)
    await first.stop()
    stream = local_gateway.registry.find("drone")
    assert stream is not None and not stream.ended
    seen = len(counter.pts)
    await push(local_gateway, key.key, video_track(), clients)  # the same key pushes again
    await counter.wait_frames(seen + 30)
    assert player.status == "PLAYING"
    assert counter.pts == sorted(counter.pts)  # timestamps go on, no renegotiation
    await counter.stop()
    await viewer.close()


async def test_keys_are_one_push_at_a_time_and_refused_once_revoked(
    local_gateway: Gateway, video_track: Track, clients: list[WhipClient]
) -> None:
    key = local_gateway.ingest_keys.issue("once")
    await push(local_gateway, key.key, video_track(), clients)
    await wait_stream(local_gateway, "once")
    with pytest.raises(WhipError) as concurrent:
        await push(local_gateway, key.key, video_track(), clients)
    assert concurrent.value.status == 403
    local_gateway.ingest_keys.revoke(key.key)
    with pytest.raises(WhipError) as revoked:
        await push(local_gateway, key.key, video_track(), clients)
    assert revoked.value.status == 403
    # The first push was not disturbed.
    counter = await play_and_decode(local_gateway, "once")
    assert counter.pts


async def test_a_stream_name_publishes_when_access_is_open(
    local_gateway: Gateway, video_track: Track, clients: list[WhipClient]
) -> None:
    """Not a key: an encoder publishing /whip/{name}; the demo's open access allows it (see
    test_access.py for tokens)."""
    await push(local_gateway, "studio", video_track(), clients)
    await wait_stream(local_gateway, "studio")
    assert local_gateway.registry.get("studio") is not None


async def test_bad_whip_requests_get_clear_errors_and_the_witness_keeps_streaming(
    local_gateway: Gateway, video_track: Track, clients: list[WhipClient]
) -> None:
    witness_key = local_gateway.ingest_keys.issue("witness")
    await push(local_gateway, witness_key.key, video_track(), clients)
    await wait_stream(local_gateway, "witness")
    key = local_gateway.ingest_keys.issue("target").key
    base = f"http://127.0.0.1:{local_gateway.config.http_port}/whip"
    sdp = {"Content-Type": "application/sdp"}
    requests: list[tuple[str, str, dict[str, str], bytes, int]] = [
        ("POST", f"{base}/{key}", {"Content-Type": "application/json"}, b"{}", 415),
        ("POST", f"{base}/{key}", {}, b"v=0", 415),
        ("POST", f"{base}/{key}", sdp, b"", 400),
        ("POST", f"{base}/{key}", sdp, b"garbage\r\nnot sdp", 400),
        ("POST", f"{base}/{key}", sdp, b"v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", 400),
        ("POST", f"{base}/{key}", sdp, b"\xff\xfe\x00bad", 400),
        ("POST", f"{base}/{key}", sdp, b"v=0\r\n" + b"a=x\r\n" * 20000, 413),
        ("PATCH", f"{base}/{key}/whatever", {"Content-Type": "application/trickle-ice-sdpfrag"}, b"", 405),
        ("DELETE", f"{base}/{key}/no-such-session", {}, b"", 404),
        ("DELETE", f"{base}/other-key/no-such-session", {}, b"", 404),
        ("OPTIONS", f"{base}/{key}", {}, b"", 204),
    ]
    async with aiohttp.ClientSession() as http:
        for method, url, headers, body, status in requests:
            async with http.request(method, url, headers=headers, data=body) as reply:
                assert reply.status == status, (method, headers, body[:40], await reply.text())
                if status >= 400:
                    assert (await reply.json())["error"]
    # A failed offer does not use up the key: a good one still works.
    await push(local_gateway, key, video_track(), clients)
    await wait_stream(local_gateway, "target")
    counter = await play_and_decode(local_gateway, "witness")
    assert counter.pts
