"""The fast fan-out path in a gateway running in this process, so its viewers can be looked
at: packets written directly, sender reports kept true, NACKs answered from its history,
and the stock path taken when aiortc lacks a private attribute it relies on (all of them
reached through `aiortc_compat`, whose own test touches every one)."""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
import structlog
from aiortc.rtp import RtpPacket
from hypothesis import given
from hypothesis import strategies as st

from gateway.app import Gateway
from gateway.media.sinks.webrtc import RelayTrack, WebRtcViewer
from gateway.media.synthetic import EncodedVideoTrack
from gateway.media.webrtc import aiortc_compat, burst, fanout, floor, native
from gateway.wcs.client import ClientStream, WcsClient
from tests.integration.conftest import FrameCounter, capture_rtp, local_config
from tests.integration.ice_tcp import IceTcpPath

TrackFactory = Callable[[], EncodedVideoTrack]


def viewers(gateway: Gateway) -> list[WebRtcViewer]:
    return [
        media
        for connection in gateway.wcs.connections
        for media in connection.media.values()
        if isinstance(media, WebRtcViewer)
    ]


def ws_url(gateway: Gateway) -> str:
    return f"ws://127.0.0.1:{gateway.config.ws_port}"


async def publish_and_play(
    gateway: Gateway, track: EncodedVideoTrack, players: int
) -> tuple[list[WcsClient], list[ClientStream]]:
    clients = [await WcsClient.connect(ws_url(gateway)) for _ in range(players + 1)]
    publisher = await clients[0].publish("fast", [track])
    await publisher.wait_status("PUBLISHING")
    streams = []
    for client in clients[1:]:
        player = await client.play("fast")
        await player.wait_status("PLAYING")
        streams.append(player)
    return clients, streams


async def test_viewers_get_directly_written_rtp_and_true_sender_reports(
    local_gateway: Gateway, video_track: TrackFactory
) -> None:
    clients, players = await publish_and_play(local_gateway, video_track(), players=2)
    try:
        counters = [FrameCounter(p).start() for p in players]
        for counter in counters:
            await counter.wait_frames(40)
            assert (counter.frames[-1].width, counter.frames[-1].height) == (320, 240)
        for viewer in viewers(local_gateway):
            writer = viewer.writers["video"]
            assert writer.packets > 40 and not writer.closed
            # Written by the floor: one burst per access unit (sendmmsg on the UDP port).
            assert writer.floor is not None and writer.floor.bursts > 0
            if floor.gso_available():  # fanout_gso is on by default: FU-A runs went as GSO
                assert writer.floor.gso_bursts > 0
            if native.compiler() is not None:  # and by the C burst, which the start built
                assert floor.STATE.use_native, floor.native_reason()
                # in one call per access unit for both viewers (`ViewerBatch`)
                assert writer.floor.slot is not None and writer.floor.slot.bursts > 30
            assert isinstance(viewer._video_sender.track, fanout_idle_track_type())
            # The 1 Hz rates bring getStats() up to what the writer sent (its own sender
            # reports carry it at once), and read the loss without calling getStats().
            rates = await viewer.rates()
            reported = aiortc_compat.sender_counters(viewer._video_sender)
            assert (reported.packets, reported.octets) == (writer.packets, writer.octets)
            assert reported.rtp_timestamp == writer.last_timestamp
            stats = await viewer._video_sender.getStats()
            lost = sum(s.packetsLost for s in stats.values() if s.type == "remote-inbound-rtp")
            assert rates.lost_packets == lost
        if native.compiler() is not None:
            batch = fanout.ViewerBatch.of(viewers(local_gateway)[0].stream, "video")
            batched = [v.writers["video"].floor.slot.bursts for v in viewers(local_gateway)]
            assert sum(batched) > batch.calls > 0, "some calls wrote to both viewers"
            # after its first frame each is a member, written before the subscribers' loop
            assert batch.early > 0 and len(batch.members) == 2
            # without asking each member every unit: only after a join or a member's change
            assert 0 < batch.checks and 4 * batch.checks < batch.early, (batch.checks, batch.early)
            # a viewer whose queue waits for a keyframe (a new source) is not written ahead
            first = viewers(local_gateway)[0]
            assert first.subscription is not None
            first.subscription.video.resync()
            await asyncio.sleep(0.2)  # a few frames
            assert first.writers["video"] not in batch.members or first.subscription.video.in_step
            # ... and joins again at its keyframe, its numbering running on: the slot the C
            # burst numbers units in and the writer's own count agree, and both keep playing
            for counter in counters:
                await counter.wait_frames(len(counter.pts) + 35)
            for viewer in viewers(local_gateway):
                writer = viewer.writers["video"]
                assert writer in batch.members and writer.member_of is batch
                assert int(writer.floor.slot.sequence) == writer._sequence
        # The players' receiver reports reach the gateway: they saw the sender reports.
        for player in players:
            await player.wait_for(lambda p=player: bool(p.rates) and p.rates[-1]["videoRate"] > 0)
        for counter in counters:
            await counter.stop()
    finally:
        for client in clients:
            await client.close()


def fanout_idle_track_type() -> type:
    from gateway.media.sinks.webrtc import IdleTrack

    return IdleTrack


async def test_nack_is_answered_from_the_writers_history(
    local_gateway: Gateway, video_track: TrackFactory
) -> None:
    clients, (player,) = await publish_and_play(local_gateway, video_track(), players=1)
    try:
        packets = capture_rtp(player.pc)
        counter = FrameCounter(player).start()
        await counter.wait_frames(20)
        (viewer,) = viewers(local_gateway)
        writer = viewer.writers["video"]
        assert writer.floor is not None  # the floor's history holds the unprotected packets
        lost = [packets[-5].sequence_number, packets[-3].sequence_number]
        before = len(packets)
        receiver = next(t.receiver for t in player.pc.getTransceivers() if t.kind == "video")
        await receiver._send_rtcp_nack(packets[-1].ssrc, lost)
        async with asyncio.timeout(5):
            while writer.retransmitted < 2:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        # They come back as RTX (RFC 4588): another SSRC, the original sequence number first.
        media_ssrc = packets[-1].ssrc if packets[-1].ssrc == packets[0].ssrc else packets[0].ssrc
        rtx = [p for p in packets[before:] if p.ssrc != media_ssrc]
        again = [struct.unpack("!H", p.payload[:2])[0] for p in rtx]
        assert sorted(again) == sorted(lost), "each lost packet arrives once more"
        originals = {p.sequence_number: p.payload for p in packets[:before]}
        assert all(p.payload[2:] == originals[seq] for p, seq in zip(rtx, again, strict=True))
        assert viewer.nack_received == 1
        await counter.stop()
    finally:
        for client in clients:
            await client.close()


async def test_stock_path_when_a_private_attribute_is_missing(
    local_gateway: Gateway, video_track: TrackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = (*aiortc_compat.SENDER_COUNTERS, "_RTCRtpSender__gone")
    monkeypatch.setattr(aiortc_compat, "SENDER_COUNTERS", gone)
    clients, (player,) = await publish_and_play(local_gateway, video_track(), players=1)
    try:
        counter = FrameCounter(player).start()
        await counter.wait_frames(30)
        (viewer,) = viewers(local_gateway)
        assert viewer.writers == {}
        assert isinstance(viewer._video_sender.track, RelayTrack)
        await counter.stop()
    finally:
        for client in clients:
            await client.close()


def test_written_packets_match_aiortc_serialisation_byte_for_byte() -> None:
    """The header patch gives exactly what aiortc would serialise for the same packet."""
    from aiortc.rtcrtpparameters import (
        RTCRtcpParameters,
        RTCRtpCodecParameters,
        RTCRtpHeaderExtensionParameters,
        RTCRtpSendParameters,
    )
    from aiortc.rtp import HeaderExtensionsMap

    from gateway.media.stream import Stream

    codec = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)
    parameters = RTCRtpSendParameters(
        codecs=[codec],
        headerExtensions=[RTCRtpHeaderExtensionParameters(id=4, uri="urn:ietf:params:rtp-hdrext:sdes:mid")],
        muxId="1",
        rtcp=RTCRtcpParameters(cname="x"),
    )
    extensions = HeaderExtensionsMap()
    extensions.configure(parameters)
    template = RtpPacket(payload_type=102, sequence_number=0, timestamp=0)
    template.ssrc = 0x11223344
    template.extensions.mid = "1"

    sent: list[bytes] = []

    class Socket:
        def sendto(self, data: bytes, address: Any) -> None:
            sent.append(data)

        def get_write_buffer_size(self) -> int:
            return 0

    class Srtp:
        def protect(self, data: bytes) -> bytes:
            return data

    class Sender:
        _RTCRtpSender__ntp_timestamp = 0
        _RTCRtpSender__rtp_timestamp = 0
        _RTCRtpSender__octet_count = 0
        _RTCRtpSender__packet_count = 0

    stream = Stream("s")
    writer = fanout.DirectRtpWriter(
        stream, Sender(), codec, template.serialize(extensions), None, Srtp(), Socket(), ("127.0.0.1", 9)
    )
    from fractions import Fraction

    from gateway.media.stream import MediaFrame

    nal = b"\x00\x00\x00\x01\x65" + bytes(range(256)) * 12  # large: several FU-A packets
    frame = MediaFrame("video", "H264", nal, 9000, Fraction(1, 90000), True)
    assert writer.write(frame)
    payloads, timestamp = fanout.rtp_payloads(stream, frame, codec)
    assert len(sent) == len(payloads) > 1
    for index, (data, payload) in enumerate(zip(sent, payloads, strict=True)):
        expected = RtpPacket(
            payload_type=102,
            sequence_number=(writer._sequence - len(payloads) + index) & 0xFFFF,
            timestamp=(writer.timestamp_origin + timestamp) & 0xFFFFFFFF,
            marker=int(index == len(payloads) - 1),
            ssrc=0x11223344,
            payload=payload,
        )
        expected.extensions.mid = "1"
        assert data == expected.serialize(extensions)

    class Congested(Socket):
        def get_write_buffer_size(self) -> int:
            return fanout.MAX_UNSENT_BYTES + 1

    writer._socket = Congested()
    assert not writer.write(frame), "a congested socket refuses the frame"


async def play_decoded(gateway: Gateway, track: EncodedVideoTrack, **play: Any) -> list[WebRtcViewer]:
    """Publish ``track``, play it once (``play``: WcsClient.play's options) until 30 frames
    decode; the gateway's viewers."""
    clients = [await WcsClient.connect(ws_url(gateway)) for _ in range(2)]
    try:
        publisher = await clients[0].publish("floor", [track])
        await publisher.wait_status("PUBLISHING")
        player = await clients[1].play("floor", kinds=("video",), **play)
        await player.wait_status("PLAYING")
        counter = FrameCounter(player).start()
        await counter.wait_frames(30)
        await counter.stop()
        return viewers(gateway)
    finally:
        for client in clients:
            await client.close()


async def test_viewers_batched_when_the_c_burst_is_turned_off_keep_playing(
    local_gateway: Gateway, video_track: TrackFactory
) -> None:
    """Viewers that joined their stream's batch while the C burst was on: once it is off
    (`floor.want_native(False)`), each unit they added to the batch goes by itself, written
    by the floor in Python, and they keep playing."""
    if native.compiler() is None:
        pytest.skip("no C compiler here: the C burst cannot be built")
    clients, players = await publish_and_play(local_gateway, video_track(), players=2)
    try:
        counters = [FrameCounter(p).start() for p in players]
        for counter in counters:
            await counter.wait_frames(20)
        batch = fanout.ViewerBatch.of(viewers(local_gateway)[0].stream, "video")
        calls = batch.calls
        floor.want_native(False)
        try:
            for counter in counters:
                await counter.wait_frames(len(counter.pts) + 20)
        finally:
            floor.want_native(True)
        assert batch.calls == calls, "no batch call once the C burst is off"
        for viewer in viewers(local_gateway):
            writer = viewer.writers["video"]
            assert writer.floor is not None and writer.floor._bursts >= 20 and not writer.closed
        for counter in counters:
            await counter.stop()
    finally:
        for client in clients:
            await client.close()


async def test_an_ice_tcp_viewer_gets_one_framed_write_per_access_unit(
    local_gateway: Gateway, video_track: TrackFactory
) -> None:
    (viewer,) = await play_decoded(local_gateway, video_track(), transport="TCP", before_answer=IceTcpPath())
    writer = viewer.writers["video"]
    assert writer.floor is not None and writer.floor.fd == -1, "the TCP link's framed writes"
    assert writer.floor.bursts >= 30 and writer.floor.handed_to_asyncio == 0


async def test_floor_off_by_setting_keeps_the_per_packet_path(video_track: TrackFactory) -> None:
    gateway = Gateway(local_config(fanout_floor=False))
    await gateway.start()
    try:
        (viewer,) = await play_decoded(gateway, video_track())
        writer = viewer.writers["video"]
        assert writer.floor is None and writer.packets > 30
    finally:
        await gateway.stop()


async def test_c_burst_off_by_setting_keeps_the_floor_in_python(video_track: TrackFactory) -> None:
    gateway = Gateway(local_config(fanout_native=False))
    await gateway.start()
    try:
        (viewer,) = await play_decoded(gateway, video_track())
        writer = viewer.writers["video"]
        assert writer.floor is not None and writer.floor.bursts > 30
        assert not floor.STATE.use_native
    finally:
        await gateway.stop()
        floor.want_native(True)  # the process's setting, for the tests after this one


async def test_floor_off_when_its_start_check_fails(
    video_track: TrackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A floor whose bytes differ from pylibsrtp's is not used: the start logs why, and
    viewers play through the per-packet path."""
    monkeypatch.setattr(burst, "RTP_PATCH", struct.Struct("<BHI"))  # a broken header patch
    gateway = Gateway(local_config())
    with structlog.testing.capture_logs() as logs:
        await gateway.start()
    try:
        (entry,) = [e for e in logs if e["event"] == "aiortc_internals"]
        assert entry["fanout_floor"] is False
        assert any("differ from Session.protect" in name for name in entry["missing"])
        (viewer,) = await play_decoded(gateway, video_track())
        writer = viewer.writers["video"]
        assert writer.floor is None and writer.packets > 30
    finally:
        await gateway.stop()
        monkeypatch.undo()
        assert floor.self_test() is None  # on again for the tests after this one


async def test_floor_on_aioices_own_sockets(video_track: TrackFactory) -> None:
    """Without the shared port (webrtc_udp_port = 0) each peer connection has its own
    asyncio socket: the floor's bursts go there."""
    gateway = Gateway(local_config(webrtc_udp_port=0, webrtc_tcp_port=0))
    await gateway.start()
    try:
        (viewer,) = await play_decoded(gateway, video_track())
        writer = viewer.writers["video"]
        assert writer.floor is not None and writer.floor.fd >= 0 and writer.floor.bursts >= 30
    finally:
        await gateway.stop()


@given(
    units=st.lists(st.integers(0, 40), min_size=1, max_size=80),
    first=st.integers(0, 0xFFFF),
)
def test_history_keeps_the_last_packets_per_access_unit(units: list[int], first: int) -> None:
    """The NACK history holds whole access units (their shared payload lists): every one
    of the last HISTORY packets is found with its timestamp and marker, and it holds no
    more than HISTORY packets plus one unit."""
    writer = fanout.DirectRtpWriter.__new__(fanout.DirectRtpWriter)
    writer._history, writer._history_packets = deque(), 0
    sent: list[tuple[int, int, bool, bytes]] = []
    sequence = first
    for number, count in enumerate(units):
        payloads = [f"{number}:{i}".encode() for i in range(count)]
        writer._remember(sequence, number, payloads)
        sent += [((sequence + i) & 0xFFFF, number, i == count - 1, p) for i, p in enumerate(payloads)]
        sequence = (sequence + count) & 0xFFFF
    assert writer._history_packets < fanout.HISTORY + max(units) + 1
    for seq, timestamp, marker, payload in sent[-fanout.HISTORY :]:
        assert writer._find(seq) == (timestamp, marker, payload)


def test_a_batch_keeps_no_member_without_its_floor() -> None:
    """A member that lost its floor to a failure in the unit being written is not kept
    when the batch's members are made again (others joining with that unit, or a check):
    without a floor it has no slot for the C call."""

    class Writer:
        def __init__(self) -> None:
            self.floor: Any = None
            self.member_of: Any = None

        def in_step(self) -> bool:
            return True  # as a writer whose queue and transport are still up

    batch = fanout.ViewerBatch("video")
    lost = Writer()
    batch.members = [lost]  # type: ignore[list-item]
    lost.member_of = batch
    batch._set_members([lost])  # type: ignore[list-item]
    assert batch.members == [] and lost.member_of is None and batch._slots is None
    batch.members = [lost]  # type: ignore[list-item]
    batch._check_members()
    assert batch.members == [] and batch.checks == 1
