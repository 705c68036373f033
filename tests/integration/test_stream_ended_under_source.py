"""A stream ended under a source that still feeds it (its name lost to another worker's claim
in the same instant, the device's push given up): the source stops and its publisher hears
why, instead of publishing to a stream no one sees. Real peers: an aiortc WCS publisher and
an ffmpeg RTMP push against an in-process gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from gateway.app import Gateway
from gateway.media.synthetic import EncodedVideoTrack
from gateway.wcs.client import WcsClient
from tests.integration.conftest import wait_stream

INFO = "Stream name already in use (claimed by another worker at the same time)"


async def test_a_wcs_publisher_whose_stream_is_ended_fails_with_the_reason(
    local_gateway: Gateway, video_track: Callable[[], EncodedVideoTrack]
) -> None:
    url = f"ws://127.0.0.1:{local_gateway.config.ws_port}"
    client = await WcsClient.connect(url)
    try:
        publisher = await client.publish("ended-under", [video_track()])
        await publisher.wait_status("PUBLISHING")
        stream = local_gateway.registry.find("ended-under")
        assert stream is not None
        local_gateway.registry.release(stream, INFO)
        await publisher.wait_status("FAILED")
        assert publisher.info == INFO
        # The name is free, and the same connection publishes it again.
        again = await client.publish("ended-under", [video_track()])
        await again.wait_status("PUBLISHING")
    finally:
        await client.close()


async def test_an_rtmp_push_whose_stream_is_ended_is_closed(local_gateway: Gateway, clip: Path) -> None:
    url = f"rtmp://127.0.0.1:{local_gateway.config.rtmp_port}/live/rtmp-under"
    push = await asyncio.create_subprocess_exec(
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip),
        "-c", "copy", "-f", "flv", url,
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_stream(local_gateway, "rtmp-under")
        stream = local_gateway.registry.find("rtmp-under")
        assert stream is not None
        local_gateway.registry.release(stream, INFO)
        async with asyncio.timeout(15):  # the gateway closed the connection: ffmpeg gives up
            await push.wait()
        assert local_gateway.registry.find("rtmp-under") is None
    finally:
        if push.returncode is None:
            push.kill()
            await push.wait()
