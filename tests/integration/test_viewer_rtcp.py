"""A fast fan-out viewer's RTCP, in a gateway running in this process: its SRTCP handled in
the datagram's own callback (`aiortc_compat.install_fast_rtcp`) and its sender reports sent
from one timer (`sender_reports.py`). What aiortc did still happens (NACK answered as RTX,
PLI forwarded upstream, receiver reports and round trip in getStats, BYE at close), none
of the SRTCP through the DTLS transport's queue; bad SRTCP is dropped without disturbing
the viewer; and a missing private name leaves aiortc's paths in place."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiortc import RTCRtpReceiver
from aiortc.rtp import RTCP_PSFB_PLI, RtcpByePacket, RtcpPsfbPacket, RtcpSrPacket, is_rtcp

from gateway.app import Gateway
from gateway.media.sinks.webrtc import WebRtcViewer
from gateway.media.synthetic import EncodedVideoTrack
from gateway.media.webrtc import aiortc_compat, sender_reports
from gateway.wcs.client import ClientStream, WcsClient
from tests.integration.conftest import FrameCounter
from tests.integration.rtp_faults import drop_received_video_packets
from tests.integration.test_fanout import viewers, ws_url

TrackFactory = Callable[[], EncodedVideoTrack]
TIMEOUT = 10.0


@dataclass
class Played:
    publisher: ClientStream
    player: ClientStream
    viewer: WebRtcViewer
    counter: FrameCounter
    queued_rtcp: list[bytes]  # SRTCP the gateway put on the viewer's DTLS receive queue
    publisher_plis: list[int]

    @property
    def receiver(self) -> RTCRtpReceiver:
        return next(t.receiver for t in self.player.pc.getTransceivers() if t.kind == "video")

    def player_connection(self) -> Any:
        return aiortc_compat.ice_connection(self.receiver.transport.transport)

    async def frames_go_on(self, more: int = 15) -> None:
        await self.counter.wait_frames(len(self.counter.pts) + more)


@contextlib.asynccontextmanager
async def played(gateway: Gateway, track: EncodedVideoTrack) -> AsyncIterator[Played]:
    clients = [await WcsClient.connect(ws_url(gateway)) for _ in range(2)]
    try:
        publisher = await clients[0].publish("rtcp", [track])
        plis: list[int] = []
        count_publisher_plis(publisher, plis)
        await publisher.wait_status("PUBLISHING")
        player = await clients[1].play("rtcp")
        await player.wait_status("PLAYING")
        counter = FrameCounter(player).start()
        await counter.wait_frames(10)
        (viewer,) = viewers(gateway)
        assert "video" in viewer.writers
        dtls = viewer.writers["video"].sender.transport
        queue = aiortc_compat.ice_connection(dtls.transport)._queue
        queued: list[bytes] = []
        put = queue.put_nowait

        def recorded(item: Any) -> None:
            if item is not None and is_rtcp(item[0]):
                queued.append(item[0])
            put(item)

        queue.put_nowait = recorded  # type: ignore[method-assign]
        yield Played(publisher, player, viewer, counter, queued, plis)
        await counter.stop()
    finally:
        for client in clients:
            await client.close()


def count_publisher_plis(publisher: ClientStream, received: list[int]) -> None:
    sender = next(t.sender for t in publisher.pc.getTransceivers() if t.kind == "video")
    handle = sender._handle_rtcp_packet

    async def counted(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
            received.append(1)
        await handle(packet)

    sender._handle_rtcp_packet = counted  # type: ignore[method-assign]


async def pli_reaches_publisher(got: Played) -> None:
    """The player's PLI, until one is forwarded (the stream forwards at most one a second:
    the one of the viewer's join may still hold the window)."""
    before = len(got.publisher_plis)
    ssrc = aiortc_compat.sender_ssrcs(got.viewer.writers["video"].sender)[0]
    async with asyncio.timeout(TIMEOUT):
        while len(got.publisher_plis) == before:
            await got.receiver._send_rtcp_pli(ssrc)
            await asyncio.sleep(0.2)
    assert got.viewer.pli_received >= 1


async def nack_is_answered_as_rtx(got: Played) -> None:
    writer = got.viewer.writers["video"]
    before, nacks = writer.retransmitted, got.viewer.nack_received
    ssrc = aiortc_compat.sender_ssrcs(writer.sender)[0]
    recent = (writer._sequence - 3) & 0xFFFF
    await got.receiver._send_rtcp_nack(ssrc, [recent])
    async with asyncio.timeout(TIMEOUT):
        while writer.retransmitted == before:
            await asyncio.sleep(0.02)
    assert got.viewer.nack_received == nacks + 1


async def test_viewer_rtcp_is_handled_in_the_datagram_callback(
    local_gateway: Gateway, video_track: TrackFactory
) -> None:
    async with played(local_gateway, video_track()) as got:
        assert got.viewer.fast_rtcp
        dropped = drop_received_video_packets(got.player, count=4, after=10)
        # Loss: the player's NACKs come back as RTX, its receiver reports tell the loss, and
        # their timing (answering our sender reports) the round-trip time.
        writer = got.viewer.writers["video"]
        async with asyncio.timeout(TIMEOUT):
            while True:
                rates = await got.viewer.rates()
                stats = await writer.sender.getStats()
                remote = [s for s in stats.values() if s.type == "remote-inbound-rtp"]
                if (
                    rates.lost_packets >= 4
                    and writer.retransmitted >= 4
                    and remote
                    and remote[0].roundTripTime is not None
                ):
                    break
                await asyncio.sleep(0.05)
        assert len(dropped) == 4 and got.viewer.nack_received >= 1
        assert 0 <= remote[0].roundTripTime < TIMEOUT
        transport = next(s for s in stats.values() if s.type == "transport")
        assert transport.packetsReceived > 0  # counted as aiortc's receive task counts
        await nack_is_answered_as_rtx(got)
        await pli_reaches_publisher(got)
        await got.frames_go_on()
        # All of it without the DTLS transport's receive queue.
        assert got.queued_rtcp == []


async def test_sender_reports_come_from_one_timer_and_the_bye_at_close(
    local_gateway: Gateway, video_track: TrackFactory
) -> None:
    async with played(local_gateway, video_track()) as got:
        writer = got.viewer.writers["video"]
        assert writer._sdes, "the timer sends its reports"
        heard: list[Any] = []
        handle = got.receiver._handle_rtcp_packet

        async def recorded(packet: Any) -> None:
            heard.append(packet)
            await handle(packet)

        got.receiver._handle_rtcp_packet = recorded  # type: ignore[method-assign]
        reports = sender_reports.sender_reports()
        async with asyncio.timeout(TIMEOUT):
            while not any(isinstance(p, RtcpSrPacket) for p in heard):
                await asyncio.sleep(0.02)
        sr = next(p for p in heard if isinstance(p, RtcpSrPacket))
        assert sr.ssrc == aiortc_compat.sender_ssrcs(writer.sender)[0]
        assert 0 < sr.sender_info.packet_count <= writer.packets and reports.sent >= 1
        # The round trip from the player's answer to it (our SR noted as aiortc notes it).
        async with asyncio.timeout(TIMEOUT):
            while True:
                stats = await writer.sender.getStats()
                remote = [s for s in stats.values() if s.type == "remote-inbound-rtp"]
                if remote and remote[0].roundTripTime is not None:
                    break
                await asyncio.sleep(0.05)
        await got.counter.stop()
        await got.viewer.close()  # aiortc's held RTCP loop still says goodbye
        async with asyncio.timeout(TIMEOUT):
            while not any(isinstance(p, RtcpByePacket) for p in heard):
                await asyncio.sleep(0.02)
        assert writer.closed and not writer.send_sender_report()


async def test_bad_srtcp_is_dropped_and_the_viewer_goes_on(
    local_gateway: Gateway, video_track: TrackFactory
) -> None:
    async with played(local_gateway, video_track()) as got:
        connection = got.player_connection()
        dtls = got.receiver.transport
        sent: list[bytes] = []
        send = dtls.transport._send

        async def recording(data: bytes) -> None:
            if is_rtcp(data):
                sent.append(data)
            await send(data)

        dtls.transport._send = recording  # type: ignore[method-assign]
        ssrc = aiortc_compat.sender_ssrcs(got.viewer.writers["video"].sender)[0]
        await got.receiver._send_rtcp_pli(ssrc)
        async with asyncio.timeout(TIMEOUT):
            while not (sent and got.viewer.pli_received):
                await asyncio.sleep(0.02)
        counts = (got.viewer.nack_received, got.viewer.pli_received)
        forged_nack = struct.pack("!BBHII", 0x81, 205, 3, 1, ssrc) + struct.pack("!HH", 1, 0)
        await connection.send(forged_nack + bytes(14))  # the shape of SRTCP, no valid tag
        await connection.send(bytes([0x80, 201, 0, 1]) + bytes(3))  # truncated
        await connection.send(sent[0])  # a replay of a real one (the PLI)
        # Authenticated but malformed: a receiver report whose block is cut off.
        tx = dtls._tx_srtp
        await connection.send(tx.protect_rtcp(struct.pack("!BBHI", 0x81, 201, 1, 7)))
        await got.frames_go_on()
        fast = aiortc_compat._FastPath.of(got.viewer.writers["video"].sender.transport)
        assert fast is not None
        assert fast.rtcp_runner.failures == 0
        assert (got.viewer.nack_received, got.viewer.pli_received) == counts
        await nack_is_answered_as_rtx(got)  # the viewer's RTCP is still heard
        assert got.queued_rtcp == []


async def test_stock_path_when_a_name_is_missing(
    local_gateway: Gateway, video_track: TrackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aiortc_compat, "_RX_COUNTS", (*aiortc_compat._RX_COUNTS, "_RTCDtlsTransport__gone"))
    monkeypatch.setattr(aiortc_compat, "_SENDER_RTCP_LOOP", ("_RTCRtpSender__gone",) * 4)
    async with played(local_gateway, video_track()) as got:
        assert not got.viewer.fast_rtcp
        assert got.viewer.writers["video"]._sdes == b"", "aiortc's RTCP loop sends its reports"
        connection = aiortc_compat.ice_connection(got.viewer.writers["video"].sender.transport.transport)
        assert "data_received" not in vars(connection)  # aioice's own method
        await nack_is_answered_as_rtx(got)
        await pli_reaches_publisher(got)
        assert got.queued_rtcp, "aiortc's receive task took the SRTCP"
        sender = got.viewer.writers["video"].sender
        async with asyncio.timeout(TIMEOUT):
            while True:
                stats = await sender.getStats()
                remote = [s for s in stats.values() if s.type == "remote-inbound-rtp"]
                if remote and remote[0].roundTripTime is not None:
                    break
                await asyncio.sleep(0.05)
