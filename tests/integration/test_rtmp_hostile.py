"""Hostile RTMP peers against a running `skyrelay serve` (issue 11, probe findings 6 and 7):
metadata with NaN or infinite numbers leaves the push going, and connections that never
publish (idle, half-open after C0+C1, `connect` without `publish`) are closed after the
handshake and publish deadlines (shortened here), giving back every file descriptor. A
witness stream keeps playing throughout."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from gateway.media.rtmp.client import Refused, RtmpClientConnection
from gateway.media.rtmp.flv import AvcTagWriter
from gateway.media.rtmp.protocol import HANDSHAKE_SIZE
from gateway.media.synthetic import EncodedVideoTrack
from gateway.wcs.client import WcsClient
from tests.conftest import GatewayProcess
from tests.integration.conftest import AccessUnits, FrameCounter
from tests.integration.witness import Witness

pytestmark = pytest.mark.asyncio(loop_scope="module")

HANDSHAKE_TIMEOUT, PUBLISH_TIMEOUT = 2.0, 4.0
CONNECTIONS = 300


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(
        extra_env={
            "SKYRELAY_RTMP_HANDSHAKE_TIMEOUT": str(HANDSHAKE_TIMEOUT),
            "SKYRELAY_RTMP_PUBLISH_TIMEOUT": str(PUBLISH_TIMEOUT),
            # 300 connections from one address are what this module sends on purpose.
            "SKYRELAY_MAX_CONNECTIONS_PER_IP": "2000",
        }
    )
    gw.start(tmp_path_factory.mktemp("gateway"))
    try:
        yield gw
    finally:
        gw.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def witness(gateway: GatewayProcess, clip_units: AccessUnits) -> AsyncIterator[Witness]:
    started = await Witness.start(gateway.ws_url, EncodedVideoTrack(clip_units, fps=30), gateway)
    yield started
    await started.stop()


class CraftedPush:
    """An RTMP publisher built from the sans-I/O client: metadata of our choosing, then the
    clip as FLV video tags in real time."""

    def __init__(self, port: int, name: str, units: AccessUnits) -> None:
        self.port, self.name, self.units = port, name, units
        self.rtmp = RtmpClientConnection("live", f"rtmp://127.0.0.1:{port}/live", name)
        self.closed_by_server = asyncio.Event()
        self.sent = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._flush()
        async with asyncio.timeout(10):
            while not self.rtmp.publishing:
                data = await self.reader.read(65536)
                assert data, "the gateway closed the connection before the publish started"
                refused = [e for e in self.rtmp.receive_data(data) if isinstance(e, Refused)]
                assert not refused, f"the gateway refused the push: {refused[0]}"
                self._flush()
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._video())]

    def metadata(self, values: dict[str, Any]) -> None:
        self.rtmp.send_metadata(values)
        self._flush()

    def _flush(self) -> None:
        out = self.rtmp.data_to_send()
        if out:
            self.writer.write(out)

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await self.reader.read(65536):
                self.rtmp.receive_data(data)  # acknowledgements, pings
                self._flush()
        self.closed_by_server.set()

    async def _video(self) -> None:
        tags = AvcTagWriter()
        for index, (unit, _) in enumerate(itertools.cycle(self.units)):
            for tag in tags.write(unit):
                self.rtmp.send_video(index * 1000 // 30, tag)
            self._flush()
            self.sent += 1
            await self.writer.drain()
            await asyncio.sleep(1 / 30)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def play_frames(gateway: GatewayProcess, name: str, frames: int) -> None:
    client = await WcsClient.connect(gateway.ws_url)
    try:
        player = await client.play(name)
        await player.wait_status("PLAYING")
        counter = FrameCounter(player).start()
        await counter.wait_frames(frames)
        await counter.stop()
    finally:
        await client.close()


async def test_metadata_with_nan_or_infinite_numbers_is_ignored_and_the_push_plays(
    gateway: GatewayProcess, witness: Witness, clip_units: AccessUnits
) -> None:
    push = CraftedPush(gateway.rtmp_port, "meta-nan", clip_units)
    await push.start()
    try:
        # Before the first frame, as encoders send it, then again mid-stream with the others.
        push.metadata({"audiocodecid": math.nan, "videocodecid": 7, "width": math.nan})
        await play_frames(gateway, "meta-nan", 30)
        for value in (math.inf, -math.inf, 7.5, "mp4a?", True):
            push.metadata({"audiocodecid": value, "height": -math.inf})
        await play_frames(gateway, "meta-nan", 30)
        assert not push.closed_by_server.is_set()
    finally:
        await push.close()
    text = gateway.log_text()
    assert "Traceback" not in text and not gateway.log_events("rtmp_connection_failed")
    await witness.assert_streaming(gateway)


async def c0c1_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"\x03" + bytes(HANDSHAKE_SIZE))
    await reader.readexactly(1 + 2 * HANDSHAKE_SIZE)  # S0 S1 S2; C2 never comes


async def connect_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    rtmp = RtmpClientConnection("live", "rtmp://127.0.0.1/live", "never")
    writer.write(rtmp.data_to_send())
    rtmp.receive_data(await reader.readexactly(1 + 2 * HANDSHAKE_SIZE))
    writer.write(rtmp.data_to_send())  # C2, Set Chunk Size, connect; then nothing


async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    pass


@pytest.mark.parametrize("behaviour", [idle, c0c1_only, connect_only], ids=lambda f: f.__name__)
async def test_connections_that_never_publish_are_closed_and_give_back_their_fds(
    gateway: GatewayProcess, witness: Witness, behaviour: Any
) -> None:
    baseline = gateway.health()["fds"]
    timed_out = len(gateway.log_events("rtmp_connection_timed_out"))
    closed = 0

    async def one() -> None:
        nonlocal closed
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.rtmp_port)
        try:
            await behaviour(reader, writer)
            with contextlib.suppress(ConnectionError):
                while await reader.read(65536):  # the connect replies, then the end
                    pass
            closed += 1
        finally:
            writer.close()

    async with asyncio.timeout(120):  # far beyond the deadlines: a hang is a failure
        await asyncio.gather(*(one() for _ in range(CONNECTIONS)))
    assert closed == CONNECTIONS  # every one closed by the gateway, none by us
    async with asyncio.timeout(30):  # the gateway's side of each socket is gone too
        while gateway.health()["fds"] > baseline + 5:
            await asyncio.sleep(0.2)
    reasons = {e["reason"] for e in gateway.log_events("rtmp_connection_timed_out")[timed_out:]}
    expected = {
        "idle": {"no RTMP handshake in time"},
        "c0c1_only": {"no RTMP handshake in time"},
        "connect_only": {"no publish in time"},
    }[behaviour.__name__]
    assert reasons == expected
    assert len(gateway.log_events("rtmp_connection_timed_out")) - timed_out == CONNECTIONS
    await witness.assert_streaming(gateway)


async def test_a_push_still_publishes_after_the_floods(
    gateway: GatewayProcess, witness: Witness, clip_units: AccessUnits
) -> None:
    """The deadlines do not touch a real push, however long it lasts: it sends all along."""
    push = CraftedPush(gateway.rtmp_port, "after-floods", clip_units)
    await push.start()
    try:
        await play_frames(gateway, "after-floods", 30)
        sent = push.sent
        async with asyncio.timeout(30):  # longer than the publish deadline
            while push.sent < sent + 30 * PUBLISH_TIMEOUT * 1.5:
                await asyncio.sleep(0.1)
        assert not push.closed_by_server.is_set()
        await play_frames(gateway, "after-floods", 10)
    finally:
        await push.close()
    await witness.assert_streaming(gateway)
