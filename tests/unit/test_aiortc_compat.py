"""gateway.media.webrtc.aiortc_compat against the installed aiortc/aioice: every private
attribute the gateway relies on is listed in `INTERNALS`, touched here on the real objects
of two in-process peers that negotiated and connected over 127.0.0.1, and used through its
accessor the way the gateway uses it. An aiortc/aioice upgrade that renames or retypes one
fails in this file first; `check()` names what is missing and fails the start only for the
port mux."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioice.ice
import pytest
import structlog
from aioice.candidate import Candidate
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpTransceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket, RtpPacket

from gateway.media import h264
from gateway.media.synthetic import EncodedVideoTrack, make_h264_clip, read_access_units
from gateway.media.webrtc import aiortc_compat, passthrough
from gateway.media.webrtc.aiortc_compat import Internal, InternalsMissing
from gateway.media.webrtc.icemux import IceMux, IceMuxError, _MuxProtocol
from gateway.media.webrtc.sdp import PUBLISH_AUDIO, PUBLISH_VIDEO, capabilities, negotiated_codecs

TIMEOUT = 20.0
CLIP_CACHE = Path(os.environ.get("SKYRELAY_TEST_CACHE", Path.home() / ".cache" / "skyrelay-tests"))


@dataclass
class Pair:
    """A sender (offerer) and a receiver (answerer), both with video and audio."""

    offerer: RTCPeerConnection
    answerer: RTCPeerConnection
    taps: list[passthrough.EncodedFrameTap]

    def transceiver(self, pc: RTCPeerConnection, kind: str) -> RTCRtpTransceiver:
        return next(t for t in pc.getTransceivers() if t.kind == kind)


@pytest.fixture
async def pair(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Pair]:
    # Only loopback: aioice would otherwise gather on every interface.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for kind in ("video", "audio"):
            offerer.addTransceiver(kind, direction="sendrecv")
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        taps = []
        for transceiver in answerer.getTransceivers():
            wanted = PUBLISH_VIDEO if transceiver.kind == "video" else PUBLISH_AUDIO
            transceiver.setCodecPreferences(capabilities(wanted, transceiver.kind))
            # Before the receiver starts, as the gateway's WebRTC publisher does.
            passthrough.install(transceiver.receiver, lambda codec, data, timestamp: None)
            taps.append(transceiver.receiver._RTCRtpReceiver__decoder_queue)
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        async with asyncio.timeout(TIMEOUT):
            while not (offerer.connectionState == answerer.connectionState == "connected"):
                await asyncio.sleep(0.02)
        yield Pair(offerer, answerer, taps)
    finally:
        await offerer.close()
        await answerer.close()


async def test_every_internal_is_present_and_of_its_kind_on_a_connected_peer(pair: Pair) -> None:
    for pc in (pair.offerer, pair.answerer):
        assert aiortc_compat.probe(pc).missing == {}
        owners = aiortc_compat.probed_objects(pc)
        assert owners["connection"] is aiortc_compat.ice_connection(owners["ice"])
        for internal in aiortc_compat.INTERNALS:
            value = getattr(owners[internal.owner], internal.attribute)
            if internal.kind is not None:
                assert isinstance(value, internal.kind), internal.name


def test_the_list_names_each_internal_once_per_feature() -> None:
    keys = [(i.feature, i.owner, i.attribute) for i in aiortc_compat.INTERNALS]
    assert len(keys) == len(set(keys))
    assert {i.feature for i in aiortc_compat.INTERNALS} == set(aiortc_compat.FEATURES)
    assert "aiortc RTCRtpSender.__packet_count" in aiortc_compat.names("fast_fanout")
    assert "aiortc RTCPeerConnection.__iceTransports" in aiortc_compat.names("port_mux")


async def test_fast_fanout_accessors(pair: Pair) -> None:
    sender = pair.transceiver(pair.offerer, "video").sender
    ssrc, rtx_ssrc = aiortc_compat.sender_ssrcs(sender)
    assert ssrc != rtx_ssrc
    dtls = sender.transport
    srtp = aiortc_compat.tx_srtp(dtls)
    assert callable(srtp.protect)
    chosen = aiortc_compat.nominated_pair(dtls)
    assert chosen is not None
    assert chosen.remote_addr[0] == "127.0.0.1"
    socket = chosen.protocol.transport
    assert callable(socket.sendto) and socket.get_write_buffer_size() >= 0
    # What is written is what aiortc reports (its RTCP sender reports use the same fields).
    aiortc_compat.set_sender_counters(sender, ntp_timestamp=7, rtp_timestamp=9000, octets=1234, packets=56)
    assert aiortc_compat.sender_counters(sender) == (7, 9000, 1234, 56)
    stats = await sender.getStats()
    outbound = next(s for s in stats.values() if s.type == "outbound-rtp")
    assert (outbound.packetsSent, outbound.bytesSent, outbound.ssrc) == (56, 1234, ssrc)
    # The answerer learnt the same SSRCs from the offer.
    receiver = pair.transceiver(pair.answerer, "video").receiver
    assert aiortc_compat.receiver_rtx_ssrcs(receiver) == {rtx_ssrc: ssrc}
    assert aiortc_compat.receiver_stream_statistics(receiver) == {}  # no RTP yet


async def test_fanout_floor_accessors_protect_in_place_as_session_protect_does(pair: Pair) -> None:
    """The negotiated session's srtp_t through pylibsrtp's cffi binding: srtp_protect in a
    buffer of our own gives what the receiving peer's SRTP session accepts."""
    sender = pair.transceiver(pair.offerer, "video").sender
    srtp = aiortc_compat.tx_srtp(sender.transport)
    ffi, lib = aiortc_compat.srtp_binding()
    context = aiortc_compat.srtp_context(srtp)
    ssrc, _ = aiortc_compat.sender_ssrcs(sender)
    packet = bytes([0x80, 0x60, 0, 1, 0, 0, 0, 9]) + ssrc.to_bytes(4, "big") + b"payload" * 20
    buf = ffi.new("unsigned char[]", len(packet) + 144)
    buf[0 : len(packet)] = packet
    length = ffi.new("int *", len(packet))
    assert lib.srtp_protect(context, buf, length) == 0
    protected = bytes(ffi.buffer(buf, length[0]))
    assert length[0] > len(packet) and protected[:12] == packet[:12] and protected[12:] != packet[12:]
    # The answerer's inbound session (a test-side private: the gateway never decrypts this way).
    rx = pair.transceiver(pair.answerer, "video").receiver.transport._rx_srtp
    assert rx.unprotect(protected) == packet


def heard_by(sender: Any) -> list[Any]:
    """The RTCP packets aiortc hands ``sender`` from now on (through the gateway's hook)."""
    seen: list[Any] = []
    handle = aiortc_compat.sender_rtcp_handler(sender)

    async def counted(packet: Any) -> None:
        seen.append(packet)
        await handle(packet)

    aiortc_compat.set_sender_rtcp_handler(sender, counted)
    return seen


async def test_rtcp_feedback_hooks_see_a_pli_both_ways(pair: Pair) -> None:
    sender = pair.transceiver(pair.offerer, "video").sender
    receiver = pair.transceiver(pair.answerer, "video").receiver
    seen = heard_by(sender)
    feedback = aiortc_compat.receiver_feedback(receiver)
    assert feedback is not None
    send_nack, send_pli = feedback
    sent: list[int] = []

    async def counted_pli(media_ssrc: int) -> None:
        sent.append(media_ssrc)
        await send_pli(media_ssrc)

    aiortc_compat.set_receiver_feedback(receiver, send_nack, counted_pli)
    ssrc, _ = aiortc_compat.sender_ssrcs(sender)
    await aiortc_compat.send_pli(receiver, ssrc)
    assert sent == [ssrc]
    async with asyncio.timeout(TIMEOUT):
        while not any(isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_PLI for p in seen):
            await asyncio.sleep(0.02)


async def test_decoder_queue_is_the_tap_and_its_thread_was_let_go(pair: Pair) -> None:
    for transceiver, tap in zip(pair.answerer.getTransceivers(), pair.taps, strict=True):
        assert isinstance(tap, passthrough.EncodedFrameTap)
        assert transceiver.receiver._RTCRtpReceiver__decoder_queue is tap
    # The receiver started and the tap told its decoder thread to end.
    async with asyncio.timeout(TIMEOUT):
        while not all(tap._stop.empty() for tap in pair.taps):
            await asyncio.sleep(0.02)


async def test_ice_workaround_accessors(pair: Pair) -> None:
    (transport,) = aiortc_compat.ice_transports(pair.offerer)  # bundled: one
    connection = aiortc_compat.ice_connection(transport)
    assert not aiortc_compat.connection_closing(connection)
    assert connection._query_consent_task is not None
    aiortc_compat.cancel_consent_task(connection)
    assert connection._query_consent_task is None
    await pair.offerer.close()
    assert aiortc_compat.connection_closing(connection)


async def test_port_mux_accessors_on_an_aioice_connection() -> None:
    connection = aioice.ice.Connection(ice_controlling=False)

    class Transport:  # no socket: nothing is sent before connect()
        def close(self) -> None:
            pass

    local = Candidate("2", 1, "udp", 200, "127.0.0.1", 7, "host")
    protocol = _MuxProtocol(connection, Transport(), local)  # the mux's StunProtocol subclass
    aiortc_compat.add_ice_protocol(connection, protocol)
    assert protocol in connection._protocols
    await connection.add_remote_candidate(None)  # end-of-candidates
    aiortc_compat.forget_remote_candidates_end(connection)
    candidate = Candidate("1", 1, "udp", 100, "127.0.0.1", 9, "host")
    await connection.add_remote_candidate(candidate)  # refused after end-of-candidates
    assert [c.to_sdp() for c in connection.remote_candidates] == [candidate.to_sdp()]
    # The added protocol is paired with it as one aioice gathered would be.
    assert [pair.protocol for pair in connection._check_list] == [protocol]
    await connection.close()


async def test_the_mux_protocol_hands_media_to_the_connection_without_a_stun_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DTLS and SRTP (first byte above 3, RFC 7983) go straight to the protocol's ``receiver``,
    as aioice hands what does not parse as STUN; STUN still goes through aioice's parse."""
    connection = aioice.ice.Connection(ice_controlling=False)
    local = Candidate("2", 1, "udp", 200, "127.0.0.1", 7, "host")
    protocol = _MuxProtocol(connection, object(), local)
    assert protocol.receiver is connection
    got: list[tuple[bytes, int]] = []
    monkeypatch.setattr(connection, "data_received", lambda data, component: got.append((data, component)))
    parsed: list[bytes] = []
    parse = aioice.stun.parse_message

    def counted_parse(data: bytes, *args: Any, **kwargs: Any) -> Any:
        parsed.append(data)
        return parse(data, *args, **kwargs)

    monkeypatch.setattr(aioice.stun, "parse_message", counted_parse)
    for data in (b"\x80\x60" + bytes(30), b"\x16\xfe\xfd" + bytes(20), b"\x04" + bytes(25)):
        protocol.datagram_received(data, ("127.0.0.1", 9))
    assert got == [(b"\x80\x60" + bytes(30), 1), (b"\x16\xfe\xfd" + bytes(20), 1), (b"\x04" + bytes(25), 1)]
    assert parsed == []
    protocol.datagram_received(b"\x00\x01" + bytes(30), ("127.0.0.1", 9))  # not valid STUN
    assert len(parsed) == 1 and got[-1] == (b"\x00\x01" + bytes(30), 1)  # aioice's hand-on
    await connection.close()


async def test_negotiated_codecs_from_the_local_description_are_aiortcs_choice(pair: Pair) -> None:
    """What replaced reading ``transceiver._codecs`` gives the same codecs, in order."""
    for pc in (pair.offerer, pair.answerer):
        negotiated = negotiated_codecs(pc.localDescription.sdp)
        for transceiver in pc.getTransceivers():
            assert transceiver.mid is not None
            found = [
                (c.mimeType, c.clockRate, c.payloadType, c.parameters) for c in negotiated[transceiver.mid]
            ]
            chosen = [(c.mimeType, c.clockRate, c.payloadType, c.parameters) for c in transceiver._codecs]
            assert found == chosen
            assert found, "each media section names its codecs"


def codec_key(codec: RTCRtpCodecParameters) -> tuple[Any, ...]:
    return (codec.mimeType, codec.clockRate, codec.payloadType, codec.parameters, codec.rtcpFeedback)


async def test_check_logs_once_and_finds_nothing_missing_here() -> None:
    with structlog.testing.capture_logs() as logs:
        report = await aiortc_compat.check(port_mux=True)
    assert report.missing == {}
    (entry,) = [e for e in logs if e["event"] == "aiortc_internals"]
    assert entry["log_level"] == "info"
    assert entry["fast_fanout"] is entry["decoder_tap"] is entry["port_mux"] is True
    assert entry["missing"] is None


async def test_missing_fast_path_internals_are_logged_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = (
        Internal("fast_fanout", "sender", "_RTCRtpSender__gone"),
        Internal("decoder_tap", "receiver", "_gone"),
        Internal("port_mux", "connection", "_gone"),
    )
    monkeypatch.setattr(aiortc_compat, "INTERNALS", (*aiortc_compat.INTERNALS, *gone))
    with structlog.testing.capture_logs() as logs:
        report = await aiortc_compat.check(port_mux=False)
    assert not report.available("fast_fanout") and not report.available("decoder_tap")
    assert report.available("rtcp_feedback")
    (entry,) = [e for e in logs if e["event"] == "aiortc_internals"]
    assert entry["log_level"] == "warning"
    assert (entry["fast_fanout"], entry["decoder_tap"], entry["port_mux"]) == (False, False, "off")
    assert entry["missing"] == [
        "aioice Connection._gone",
        "aiortc RTCRtpReceiver._gone",
        "aiortc RTCRtpSender.__gone",
    ]


async def test_a_missing_port_mux_internal_fails_the_mux_start_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gone = Internal("port_mux", "connection", "_protocols", tuple)  # say it became a tuple
    kept = [i for i in aiortc_compat.INTERNALS if i.attribute != "_protocols"]
    monkeypatch.setattr(aiortc_compat, "INTERNALS", (*kept, gone))
    with pytest.raises(InternalsMissing, match=r"port mux needs: aioice Connection\._protocols$"):
        await aiortc_compat.check(port_mux=True)
    # The gateway's start goes through the mux: no port is opened.
    mux = IceMux("127.0.0.1", udp_port=1, tcp_port=0, ice_timeout=5.0)
    with pytest.raises(IceMuxError, match="_protocols"):
        await mux.start()
    assert mux.udp_ports == {} and mux.tcp_servers == []
    # With the ports off, the start goes on, saying what it lacks.
    with structlog.testing.capture_logs() as logs:
        await IceMux("127.0.0.1", udp_port=0, tcp_port=0, ice_timeout=5.0).start()
    (entry,) = [e for e in logs if e["event"] == "aiortc_internals"]
    assert entry["port_mux"] == "off" and entry["missing"] == ["aioice Connection._protocols"]


async def test_missing_decoder_queue_refuses_the_tap_by_name() -> None:
    class Receiver:
        pass

    with pytest.raises(InternalsMissing, match="no decoder queue"):
        aiortc_compat.replace_decoder_queue(Receiver(), object())  # type: ignore[arg-type]
    assert isinstance(InternalsMissing("x"), RuntimeError)  # what callers caught before


# --- the fast receive path ----------------------------------------------------------------------

PUBLISH_CLIP: dict[str, Any] = {
    "width": 320,
    "height": 240,
    "fps": 30,
    "seconds": 4,
    "bitrate": 300_000,
    "gop": 30,
}


@dataclass
class Publish:
    """An aiortc publisher (the offerer, sending the clip) and a relaying answerer."""

    offerer: RTCPeerConnection
    answerer: RTCPeerConnection
    frames: list[bytes]
    nacks: list[list[int]]
    plis: list[tuple[int, int]] = field(default_factory=list)  # (media SSRC, frames by then)

    @property
    def receiver(self) -> Any:
        return self.answerer.getTransceivers()[0].receiver


@contextlib.asynccontextmanager
async def publish(fast: bool, drop: int | None = None, drop_rtx: bool = False) -> AsyncIterator[Publish]:
    """The clip from an aiortc sender to a receiver tapped as the gateway's publisher is
    (``fast``: with the fast receive path); ``drop``: the index of one SRTP RTP datagram
    the answerer never sees (after the fast path took over); ``drop_rtx``: nor any
    retransmission of it (RTX, or the packet resent on the media SSRC)."""
    clip = make_h264_clip(CLIP_CACHE, **PUBLISH_CLIP)
    track = EncodedVideoTrack(read_access_units(clip))
    offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    got = Publish(offerer, answerer, [], [])
    try:
        # H.264 only, as a browser publishing H.264 offers it (else aiortc sends VP8).
        offerer.addTransceiver(track, direction="sendonly").setCodecPreferences(
            capabilities(("video/H264",), "video")
        )
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        (transceiver,) = answerer.getTransceivers()
        transceiver.setCodecPreferences(capabilities(PUBLISH_VIDEO, "video"))
        receiver = transceiver.receiver
        passthrough.install(receiver, lambda codec, data, ts: got.frames.append(data), fast=fast)
        feedback = aiortc_compat.receiver_feedback(receiver)
        assert feedback is not None
        send_nack, send_pli = feedback

        async def counted_nack(ssrc: int, lost: list[int]) -> None:
            got.nacks.append(lost)
            await send_nack(ssrc, lost)

        async def counted_pli(ssrc: int) -> None:
            got.plis.append((ssrc, len(got.frames)))
            await send_pli(ssrc)

        aiortc_compat.set_receiver_feedback(receiver, counted_nack, counted_pli)
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        async with asyncio.timeout(TIMEOUT):
            while not got.frames:
                await asyncio.sleep(0.01)
        if drop is not None:
            connection = aiortc_compat.ice_connection(receiver.transport.transport)
            hooked, count = connection.data_received, [0]
            media, lost = passthrough.media_ssrc(receiver), set()

            def dropping(data: bytes, component: int) -> None:
                if 127 < data[0] < 192 and not 192 <= data[1] <= 208:
                    count[0] += 1
                    sequence, ssrc = int.from_bytes(data[2:4], "big"), int.from_bytes(data[8:12], "big")
                    if count[0] == drop:
                        lost.add(sequence)
                        return
                    # Never again: neither as RTX nor resent as it was (without RTX).
                    if drop_rtx and (ssrc != media or sequence in lost):
                        return
                hooked(data, component)

            connection.data_received = dropping  # type: ignore[method-assign]
        yield got
    finally:
        track.stop()
        await offerer.close()
        await answerer.close()


async def test_fast_receive_delivers_the_frames_the_stock_path_does() -> None:
    """Both paths hand on the publisher's access units, their NAL units byte for byte and in
    order (a run of the looping clip from a keyframe; start codes may be longer): H.264 by
    the gateway's own receive on one, aiortc's stock path on the other."""

    def nal_units(unit: bytes) -> list[bytes]:
        return list(h264.iter_nal_units(unit))

    clip = [nal_units(data) for data, _ in read_access_units(make_h264_clip(CLIP_CACHE, **PUBLISH_CLIP))]
    looped = clip + clip
    for fast in (True, False):
        async with publish(fast) as got:
            connection = aiortc_compat.ice_connection(got.receiver.transport.transport)
            # Hooked on the instance (fast) or left as aioice's method (stock).
            assert ("data_received" in vars(connection)) is fast
            async with asyncio.timeout(TIMEOUT):
                while len(got.frames) < 60:
                    await asyncio.sleep(0.02)
            # The first frame may have begun before the receiver started (its head dropped,
            # or the units before a keyframe): compare from the first keyframe.
            first = next(i for i, frame in enumerate(got.frames) if h264.is_keyframe(frame))
            run = [nal_units(frame) for frame in got.frames[first : first + 45]]
            assert len(run) == 45
            assert any(looped[k : k + 45] == run for k in range(len(clip)))
            stats = aiortc_compat.receiver_stream_statistics(got.receiver)
            assert sum(s.packets_received for s in stats.values()) > 45  # receiver reports' figures
            assert passthrough.media_ssrc(got.receiver) is not None  # active SSRCs are stamped
            # H.264 by the gateway's own receive (`rtp_in`), its SSRC routed once by aiortc.
            own = aiortc_compat.own_receive_ssrcs(got.receiver)
            assert (own == [passthrough.media_ssrc(got.receiver)]) is fast


async def test_fast_receive_nacks_a_lost_packet_and_counts_it() -> None:
    async with publish(fast=True, drop=20) as got:
        async with asyncio.timeout(TIMEOUT):
            while not got.nacks or passthrough.packets_lost(got.receiver) < 1:
                await asyncio.sleep(0.02)
            before = len(got.frames)
            while len(got.frames) < before + 30:  # frames still come after the loss
                await asyncio.sleep(0.02)
        assert len(got.nacks[0]) == 1


async def test_own_receive_asks_for_a_keyframe_after_a_loss_for_good_and_goes_on() -> None:
    """H.264 by the gateway's own receive: a packet whose retransmission never comes is
    given up (half a second of stream later), the units up to the next keyframe dropped, a
    keyframe asked for (PLI to the media SSRC), and whole frames come again from the next
    keyframe. The loss is early in the clip's second-long GOP, so no keyframe comes first."""
    async with publish(fast=True, drop=5, drop_rtx=True) as got:
        media = passthrough.media_ssrc(got.receiver)
        assert aiortc_compat.own_receive_ssrcs(got.receiver) == [media]
        async with asyncio.timeout(TIMEOUT):
            while not got.nacks:  # the loss (a PLI before it: the stream began mid-GOP)
                await asyncio.sleep(0.01)
            asked = len(got.plis)
            while len(got.plis) == asked or len(got.frames) < got.plis[asked][1] + 10:
                await asyncio.sleep(0.02)
        ssrc, before = got.plis[asked]
        assert ssrc == media and len(got.nacks[0]) == 1
        assert h264.is_keyframe(got.frames[before])  # resumed at a keyframe


def rtp(seq: int, timestamp: int, marker: bool = False, data: bytes = b"") -> RtpPacket:
    packet = RtpPacket(sequence_number=seq, timestamp=timestamp, marker=int(marker))
    packet._data = data or bytes([seq & 0xFF])  # type: ignore[attr-defined]  # where aiortc's receiver depayloads to
    return packet


def test_a_video_frame_is_out_at_its_marker_once_every_packet_is_in() -> None:
    jitter = aiortc_compat.PassthroughJitterBuffer(64, is_video=True)
    assert jitter.add(rtp(10, 3000))[1] is None
    assert jitter.add(rtp(12, 3000, marker=True))[1] is None  # 11 is missing
    frame = jitter.add(rtp(11, 3000))[1]  # late (a retransmission): the frame is whole
    assert frame is not None and (frame.data, frame.timestamp) == (bytes([10, 11, 12]), 3000)
    frame = jitter.add(rtp(13, 6000, marker=True))[1]  # a one-packet frame: out at once
    assert frame is not None and frame.data == bytes([13])
    # A sender that sets no marker: the frame is out when the next one begins, as in aiortc.
    assert jitter.add(rtp(14, 9000))[1] is None
    frame = jitter.add(rtp(15, 12000))[1]
    assert frame is not None and (frame.data, frame.timestamp) == (bytes([14]), 9000)


def test_an_audio_packet_is_out_at_once_and_a_late_one_dropped() -> None:
    jitter = aiortc_compat.PassthroughJitterBuffer(16)
    for seq in (1, 2, 4):  # 3 lost: 4 is not held back for it
        frame = jitter.add(rtp(seq, seq * 960))[1]
        assert frame is not None and frame.timestamp == seq * 960
    assert jitter.add(rtp(3, 3 * 960))[1] is None  # too late: the stream went on


async def test_a_tapped_receiver_completes_frames_early(pair: Pair) -> None:
    for transceiver in pair.answerer.getTransceivers():
        jitter = transceiver.receiver._RTCRtpReceiver__jitter_buffer
        assert isinstance(jitter, aiortc_compat.PassthroughJitterBuffer)
        assert jitter._is_video == (transceiver.kind == "video")


# --- the fast RTCP path -------------------------------------------------------------------------


async def test_fast_rtcp_hands_a_pli_to_the_sender_in_the_datagram_callback(pair: Pair) -> None:
    sender = pair.transceiver(pair.offerer, "video").sender
    receiver = pair.transceiver(pair.answerer, "video").receiver
    dtls = sender.transport
    connection = aiortc_compat.ice_connection(dtls.transport)
    seen = heard_by(sender)
    assert aiortc_compat.install_fast_rtcp(dtls) and aiortc_compat.install_fast_rtcp(dtls)  # once
    hooked = connection.data_received
    assert "data_received" in vars(connection)
    calls: list[int] = []

    def watched(data: bytes, component: int) -> None:
        before = len(seen)
        hooked(data, component)
        if len(seen) > before:
            calls.append(len(seen) - before)  # handled before the callback returned

    connection.data_received = watched  # type: ignore[method-assign]
    stats = await sender.getStats()
    received = next(s for s in stats.values() if s.type == "transport").packetsReceived
    await aiortc_compat.send_pli(receiver, aiortc_compat.sender_ssrcs(sender)[0])
    async with asyncio.timeout(TIMEOUT):
        while not any(isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_PLI for p in seen):
            await asyncio.sleep(0.02)
    assert calls and connection._queue.qsize() == 0
    stats = await sender.getStats()
    assert next(s for s in stats.values() if s.type == "transport").packetsReceived > received


async def test_fast_rtcp_is_not_installed_when_a_name_is_missing(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aiortc_compat, "_RX_COUNTS", ("_RTCDtlsTransport__gone",))
    dtls = pair.transceiver(pair.offerer, "video").sender.transport
    assert not aiortc_compat.install_fast_rtcp(dtls)
    assert "data_received" not in vars(aiortc_compat.ice_connection(dtls.transport))


async def test_in_order_runs_at_once_and_keeps_order_behind_a_handler_that_waits() -> None:
    runner = aiortc_compat._InOrder()
    done: list[str] = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def at_once(name: str) -> None:
        done.append(name)

    async def waiting(name: str) -> str:
        await gate
        done.append(name)
        return name

    runner.run(at_once("a"))
    assert done == ["a"] and not runner.pending  # no task: it ran in this call
    runner.run(waiting("b"))
    runner.run(at_once("c"))  # after b, though it would not wait
    assert done == ["a"] and runner.pending
    gate.set_result(None)
    async with asyncio.timeout(TIMEOUT):
        while runner.pending:
            await asyncio.sleep(0)
    assert done == ["a", "b", "c"]
    runner.run(at_once("d"))
    assert done[-1] == "d"


async def test_in_order_logs_a_failing_handler_once_and_goes_on() -> None:
    runner = aiortc_compat._InOrder()
    done: list[int] = []

    async def failing(number: int) -> None:
        raise ValueError(number)

    async def fine(number: int) -> None:
        done.append(number)

    with structlog.testing.capture_logs() as logs:
        for number in range(3):
            runner.run(failing(number))
            runner.run(fine(number))
    assert done == [0, 1, 2] and runner.failures == 3
    assert [e["event"] for e in logs] == ["rtcp_handler_failed"]


def test_fast_rtcp_routes_each_packet_as_aiortc_does() -> None:
    """`_route_rtcp` against aiortc's own ``RtpRouter.route_rtcp``, on one router with two
    senders and two receivers, for every kind of RTCP packet a peer sends."""
    from aiortc.rtcdtlstransport import RtpRouter
    from aiortc.rtp import (
        RTCP_PSFB_APP,
        RTCP_RTPFB_NACK,
        RtcpByePacket,
        RtcpReceiverInfo,
        RtcpRrPacket,
        RtcpRtpfbPacket,
        RtcpSenderInfo,
        RtcpSrPacket,
        pack_remb_fci,
    )

    router = RtpRouter()
    senders, receivers = [object(), object()], [object(), object()]
    router.register_sender(senders[0], 1)
    router.register_sender(senders[1], 2)
    router.ssrc_table[10] = receivers[0]
    router.ssrc_table[20] = receivers[1]

    def report(ssrc: int) -> RtcpReceiverInfo:
        return RtcpReceiverInfo(
            ssrc=ssrc, fraction_lost=0, packets_lost=0, highest_sequence=0, jitter=0, lsr=0, dlsr=0
        )

    info = RtcpSenderInfo(ntp_timestamp=0, rtp_timestamp=0, packet_count=0, octet_count=0)
    packets = [
        RtcpRrPacket(ssrc=10, reports=[report(1), report(2), report(1), report(99)]),
        RtcpRrPacket(ssrc=10, reports=[]),
        RtcpSrPacket(ssrc=20, sender_info=info, reports=[report(2)]),
        RtcpSrPacket(ssrc=77, sender_info=info),
        RtcpByePacket(sources=[10, 20, 99]),
        RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=10, media_ssrc=1, lost=[5]),
        RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=10, media_ssrc=2),
        RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=10, media_ssrc=99),
        RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=10, media_ssrc=0, fci=pack_remb_fci(100000, [1, 2, 1])),
        RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=10, media_ssrc=0, fci=b"not remb"),
    ]
    for packet in packets:
        routed = aiortc_compat._route_rtcp(router, packet)
        assert len(routed) == len(set(map(id, routed)))
        assert set(map(id, routed)) == set(map(id, router.route_rtcp(packet))), packet
