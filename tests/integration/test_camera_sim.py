"""The simulated drone camera (`RtmpCameraPush`, PyAV muxing FLV over RTMP) pushes into the
gateway's own RTMP ingest; every access unit arrives with the SEI timestamp it was sent with,
and a refused or closed connection ends the push without hanging `stop()`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from gateway.app import Gateway
from gateway.dji.camera_sim import RtmpCameraPush
from gateway.media import h264
from gateway.media.stream import MediaFrame, Stream
from tests.conftest import free_port
from tests.integration.conftest import AccessUnits


class Quiet:
    """A stream listener that only needs the frames."""

    def on_video_format(self, width: int, height: int) -> None:
        pass

    def on_stream_event(self, event_type: str, payload: Any) -> None:
        pass

    def on_stream_end(self, info: str | None) -> None:
        pass


@pytest_asyncio.fixture
async def pushes() -> AsyncIterator[list[RtmpCameraPush]]:
    """Camera pushes started by a test, all stopped after it."""
    started: list[RtmpCameraPush] = []
    yield started
    for push in started:
        push.stop()


def start_push(pushes: list[RtmpCameraPush], url: str, units: AccessUnits) -> RtmpCameraPush:
    push = RtmpCameraPush(url, units, fps=30)
    pushes.append(push)
    push.start()
    return push


async def wait_stream(gateway: Gateway, name: str) -> Stream:
    async with asyncio.timeout(20):  # the first push starts a Python process
        while (stream := gateway.registry.get(name)) is None:
            await asyncio.sleep(0.05)
    return stream


async def read_frames(stream: Stream, count: int) -> list[MediaFrame]:
    sub = stream.subscribe(Quiet())
    frames: list[MediaFrame] = []
    try:
        async with asyncio.timeout(20):
            while len(frames) < count:
                frame = await sub.video.get()
                assert frame is not None, "the stream ended"
                frames.append(frame)
    finally:
        stream.unsubscribe(sub)
    return frames


async def wait_ended(push: RtmpCameraPush) -> None:
    async with asyncio.timeout(20):
        while push.running or push.report.ended is None:
            await asyncio.sleep(0.05)


async def test_frames_reach_the_ingest_with_their_sei_timestamps(
    local_gateway: Gateway, clip_units: AccessUnits, pushes: list[RtmpCameraPush]
) -> None:
    key = local_gateway.ingest_keys.issue("camera")
    gop = clip_units[:30]  # one second, so the push loops within the test
    url = f"rtmp://127.0.0.1:{local_gateway.config.rtmp_port}/live/{key.key}"
    push = start_push(pushes, url, gop)
    stream = await wait_stream(local_gateway, "camera")
    frames = await read_frames(stream, 75)

    assert (stream.width, stream.height) == (320, 240)
    live = [f for f in frames if not f.replay]
    assert live[0].keyframe
    stamps = [h264.read_sei_timestamp(f.data) for f in frames]
    assert None not in stamps
    assert push.report.first_unit_ns is not None and push.report.connected_ns is not None
    assert all(s >= push.report.first_unit_ns for s in stamps)  # type: ignore[operator]
    assert stamps == sorted(stamps)  # type: ignore[type-var]
    # Across the loops of the clip: keyframes every 30 units, timestamps always forward.
    assert sum(f.keyframe for f in live) >= 2
    pts = [f.pts for f in live]
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False))
    # The SEI goes before the first slice, after the parameter sets.
    key_types = h264.nal_types(live[0].data)
    assert key_types.index(h264.NAL_SEI, key_types.index(h264.NAL_PPS)) < key_types.index(h264.NAL_IDR)

    assert push.running
    push.stop()
    push.stop()  # idempotent
    assert not push.running and push.report.ended == "stopped" and push.report.frames >= 75
    async with asyncio.timeout(10):  # a clean unpublish: the gateway releases the stream
        while local_gateway.registry.get("camera") is not None:
            await asyncio.sleep(0.05)


async def test_a_refused_publish_ends_the_push(
    local_gateway: Gateway, clip_units: AccessUnits, pushes: list[RtmpCameraPush]
) -> None:
    revoked = local_gateway.ingest_keys.issue("over").key
    local_gateway.ingest_keys.revoke(revoked)  # the stream ended: its key is refused
    url = f"rtmp://127.0.0.1:{local_gateway.config.rtmp_port}/live/{revoked}"
    push = start_push(pushes, url, clip_units)
    await wait_ended(push)
    assert push.report.ended is not None and push.report.ended != "stopped"
    assert revoked not in push.report.ended  # the key stays out of logs
    assert push.report.connected_ns is None  # publish refused: never connected
    push.stop()
    assert len(local_gateway.registry) == 0


async def test_nobody_listening_or_a_closed_connection_ends_the_push(
    clip_units: AccessUnits, pushes: list[RtmpCameraPush]
) -> None:
    refused = start_push(pushes, f"rtmp://127.0.0.1:{free_port()}/live/key", clip_units)

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        closed = start_push(pushes, f"rtmp://127.0.0.1:{port}/live/key", clip_units)
        for push in (refused, closed):
            await wait_ended(push)
            assert push.report.ended is not None and push.report.ended != "stopped"
            assert push.report.connected_ns is None
            push.stop()
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


async def test_stop_before_the_camera_has_started(clip_units: AccessUnits) -> None:
    push = RtmpCameraPush(f"rtmp://127.0.0.1:{free_port()}/live/key", clip_units)
    push.stop()  # never started: nothing to do
    assert not push.running
    push = RtmpCameraPush(f"rtmp://127.0.0.1:{free_port()}/live/key", clip_units)
    push.start()
    push.stop()  # at once, while the child process may still be starting
    assert not push.running and push.report.ended is not None
