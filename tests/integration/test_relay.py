"""Publish and play through a real gateway with aiortc peers speaking the raw WCS protocol."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import av
import numpy
from aiortc import AudioStreamTrack, VideoStreamTrack
from aiortc.codecs import depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket

from gateway.media import h264
from gateway.media.synthetic import EncodedVideoTrack
from gateway.wcs.client import ClientStream, WcsClient
from tests.conftest import GatewayProcess
from tests.integration.conftest import AccessUnits, FrameCounter, capture_rtp
from tests.integration.rtp_faults import drop_received_video_packets, drop_sent_video_packets

TrackFactory = Callable[[], EncodedVideoTrack]
Connect = Callable[[], Awaitable[WcsClient]]
H264_CODEC = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)


def count_plis(stream_pc: Any) -> list[int]:
    """Count the PLIs a publisher's sender receives from the gateway."""
    received: list[int] = []
    sender = next(t.sender for t in stream_pc.getTransceivers() if t.kind == "video")
    handle = sender._handle_rtcp_packet

    async def counted(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
            received.append(1)
        await handle(packet)

    sender._handle_rtcp_packet = counted
    return received


async def test_publish_then_three_players_decode(
    gateway: GatewayProcess, connect: Connect, video_track: TrackFactory
) -> None:
    threads = gateway.health()["threads"]
    pub_client = await connect()
    publisher = await pub_client.publish("relay-three", [video_track()])
    published = await publisher.wait_status("PUBLISHING")
    assert published["videoCodec"] == "H264"
    assert gateway.health()["threads"] == threads, "no decoder thread for a relayed publisher"

    clients, counters = [], []
    for _ in range(3):
        client = await connect()
        player = await client.play("relay-three")
        playing = await player.wait_status("PLAYING")
        assert playing["name"] == "relay-three"
        # What the WebSDK needs of the answer: send-only, a=msid for ontrack's streams[0],
        # and the server's candidates (it sends none and takes no trickle).
        answer = player.answer.result()
        assert "a=sendonly" in answer and "a=msid:" in answer
        assert "a=candidate:" in answer and "a=end-of-candidates" in answer
        clients.append(client)
        counters.append(FrameCounter(player).start())
    for counter in counters:
        await counter.wait_frames(30)
        frame = counter.frames[-1]
        assert (frame.width, frame.height) == (320, 240)
    # Each player was told the real picture size.
    for client in clients:
        formats = client.received("notifyVideoFormat")
        assert formats and formats[-1][0]["streamerVideoWidth"] == 320
        assert formats[-1][0]["streamerVideoHeight"] == 240
    for counter in counters:
        await counter.stop()


async def test_rate_metrics_once_a_second(connect: Connect, video_track: TrackFactory) -> None:
    pub_client = await connect()
    play_client = await connect()
    publisher = await pub_client.publish("relay-rates", [video_track()])
    await publisher.wait_status("PUBLISHING")
    player = await play_client.play("relay-rates")
    await player.wait_status("PLAYING")
    counter = FrameCounter(player).start()
    await counter.wait_frames(10)
    # Let a few seconds of metrics arrive; count them against the clock of messages.
    start_in, start_out = len(publisher.rates), len(player.rates)
    await asyncio.sleep(4.2)
    inbound, outbound = publisher.rates[start_in:], player.rates[start_out:]
    await counter.stop()
    # ~1 Hz: four seconds give about four messages each.
    assert 3 <= len(inbound) <= 6, inbound
    assert 3 <= len(outbound) <= 6, outbound
    for rate in inbound + outbound:
        assert set(rate) == {
            "mediaSessionId",
            "videoRate",
            "fps",
            "nack",
            "pli",
            "lostPackets",
            "width",
            "height",
        }
        assert (rate["width"], rate["height"]) == (320, 240)
        assert rate["lostPackets"] == 0  # loopback
    # The clip is ~300 kbit/s at 30 fps; allow for pacing and a noisy machine.
    in_last, out_last = inbound[-1], outbound[-1]
    assert 100_000 < in_last["videoRate"] < 1_500_000, in_last
    assert 100_000 < out_last["videoRate"] < 1_500_000, out_last
    assert 15 <= in_last["fps"] <= 45 and 15 <= out_last["fps"] <= 45
    assert in_last["mediaSessionId"] == publisher.media_session_id
    assert out_last["mediaSessionId"] == player.media_session_id


async def test_player_pli_reaches_publisher_at_most_once_a_second(
    connect: Connect, video_track: TrackFactory
) -> None:
    pub_client = await connect()
    play_client = await connect()
    publisher = await pub_client.publish("relay-pli", [video_track()])
    plis = count_plis(publisher.pc)
    await publisher.wait_status("PUBLISHING")
    player = await play_client.play("relay-pli")
    await player.wait_status("PLAYING")
    counter = FrameCounter(player).start()
    await counter.wait_frames(5)
    await asyncio.sleep(1.5)  # past the rate-limit window of the join-time request
    before = len(plis)
    receiver = next(t.receiver for t in player.pc.getTransceivers() if t.kind == "video")
    ssrc = receiver.getSynchronizationSources()[0].source
    for _ in range(5):
        await receiver._send_rtcp_pli(ssrc)
    await asyncio.sleep(0.6)
    assert len(plis) - before == 1, "five PLIs within 0.6 s must be forwarded once"
    # The counts show up in the metrics: the player's PLIs, and the one sent upstream.
    await player.wait_for(lambda: player.rates and player.rates[-1]["pli"] >= 5, timeout=5)
    await publisher.wait_for(lambda: publisher.rates and publisher.rates[-1]["pli"] >= 1, timeout=5)
    await counter.stop()


def decode_h264_rtp(payloads: list[bytes]) -> list[av.VideoFrame]:
    data = b"".join(depayload(H264_CODEC, payload) for payload in payloads)
    context = av.CodecContext.create("h264", "r")
    frames = list(context.decode(av.Packet(data)))
    return frames + list(context.decode(None))


async def test_late_player_starts_with_cached_keyframe_and_skips_to_next(
    connect: Connect, long_gop_units: AccessUnits
) -> None:
    # The clip has one IDR every 10 s and the synthetic source ignores PLI, like an RTMP
    # camera: a player joining mid-GOP can only start from the cached keyframe.
    pub_client = await connect()
    play_client = await connect()
    track = EncodedVideoTrack(long_gop_units, fps=30)
    publisher = await pub_client.publish("relay-gop", [track])
    await publisher.wait_status("PUBLISHING")
    await asyncio.sleep(1.5)
    player = await play_client.play("relay-gop")
    packets = capture_rtp(player.pc)
    await player.wait_status("PLAYING")
    await player.wait_for(lambda: any(p.marker for p in packets), timeout=6)
    await asyncio.sleep(1.0)
    # Still inside the first GOP of the clip: the next live IDR is frame 300.
    assert 45 < track.frames_sent < 300
    # The player got exactly one picture, complete, and it decodes on its own ...
    timestamps = {p.timestamp for p in packets}
    assert len(timestamps) == 1, f"frames after the cached keyframe: {len(timestamps)}"
    frames = decode_h264_rtp([p.payload for p in packets])
    assert [(f.width, f.height) for f in frames] == [(320, 240)]
    # ... then, at the next live IDR (10 s into the clip), the live picture follows.


async def test_viewers_joining_leaving_and_dying_do_not_disturb_others(
    connect: Connect, video_track: TrackFactory
) -> None:
    pub_client = await connect()
    steady_client = await connect()
    publisher = await pub_client.publish("relay-churn", [video_track()])
    await publisher.wait_status("PUBLISHING")
    steady = await steady_client.play("relay-churn")
    await steady.wait_status("PLAYING")
    counter = FrameCounter(steady).start()
    await counter.wait_frames(10)
    first = len(counter.pts)

    for round_ in range(4):
        churn = await connect()
        player = await churn.play("relay-churn")
        await player.wait_status("PLAYING")
        if round_ % 2:
            await player.stop()
            await churn.close()
        else:
            # Vanish without a word: the socket drops, the peer stops answering.
            await player.pc.close()
            churn.ws.transport.abort()
        await asyncio.sleep(0.3)

    await counter.wait_frames(first + 30)
    # No frame the steady viewer got was skipped: consecutive 90 kHz stamps, 1/30 s apart.
    gaps = [b - a for a, b in zip(counter.pts[first:], counter.pts[first + 1 :], strict=False)]
    assert gaps and all(gap == 3000 for gap in gaps), sorted(set(gaps))
    # The publisher was not disturbed either.
    assert publisher.status == "PUBLISHING"
    await counter.stop()


def test_keyframes_carry_parameter_sets(clip_units: AccessUnits) -> None:
    """Sanity of the test source itself: SPS and PPS precede every IDR."""
    for data, key in clip_units:
        if key:
            types = h264.nal_types(data)
            assert types.index(h264.NAL_SPS) < types.index(h264.NAL_IDR)
            assert types.index(h264.NAL_PPS) < types.index(h264.NAL_IDR)


class MovingPicture(VideoStreamTrack):
    """Raw frames for publishers that encode (VP8): a bar moving across a grey picture."""

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        picture = numpy.full((240, 320, 3), 90, dtype=numpy.uint8)
        x = (pts // 3000) % 300
        picture[:, x : x + 20] = 230
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


async def test_vp8_video_and_opus_audio_are_relayed(connect: Connect) -> None:
    pub_client = await connect()
    play_client = await connect()
    publisher = await pub_client.publish(
        "relay-vp8", [MovingPicture(), AudioStreamTrack()], video_codec="VP8"
    )
    published = await publisher.wait_status("PUBLISHING")
    assert (published["videoCodec"], published["audioCodec"]) == ("VP8", "opus")
    player = await play_client.play("relay-vp8")
    playing = await player.wait_status("PLAYING")
    assert (playing["videoCodec"], playing["audioCodec"]) == ("VP8", "opus")
    # The player was told the audio codec before it got the answer, as WCS does.
    names = [name for name, _ in play_client.messages]
    assert names.index("notifyAudioCodec") < names.index("setRemoteSDP")
    assert play_client.received("notifyAudioCodec")[0] == [player.media_session_id, {"name": "opus"}]

    counter = FrameCounter(player).start()
    await counter.wait_frames(20)
    assert (counter.frames[-1].width, counter.frames[-1].height) == (320, 240)
    audio = next(t for t in player.tracks if t.kind == "audio")
    samples = [await asyncio.wait_for(audio.recv(), 10) for _ in range(25)]
    assert all(s.sample_rate == 48000 for s in samples)
    await player.wait_for(lambda: bool(player.rates) and player.rates[-1]["width"] == 320, timeout=5)
    await counter.stop()


async def test_g711_audio_is_relayed(connect: Connect, video_track: TrackFactory) -> None:
    pub_client = await connect()
    play_client = await connect()
    publisher = await pub_client.publish(
        "relay-pcma", [video_track(), AudioStreamTrack()], audio_codec="PCMA"
    )
    published = await publisher.wait_status("PUBLISHING")
    assert (published["videoCodec"], published["audioCodec"]) == ("H264", "PCMA")
    player = await play_client.play("relay-pcma")
    await player.wait_status("PLAYING")
    assert play_client.received("notifyAudioCodec")[0] == [player.media_session_id, {"name": "PCMA"}]
    await player.wait_for(lambda: any(t.kind == "audio" for t in player.tracks))
    audio = next(t for t in player.tracks if t.kind == "audio")
    samples = [await asyncio.wait_for(audio.recv(), 10) for _ in range(25)]
    assert all(s.sample_rate == 8000 for s in samples)


async def test_nack_and_lost_packets_come_from_rtcp(connect: Connect, video_track: TrackFactory) -> None:
    """Lose packets on both legs: the gateway's NACKs and loss toward the publisher, the
    player's NACKs and reported loss, all show in the 1 Hz metrics."""
    pub_client = await connect()
    play_client = await connect()
    publisher = await pub_client.publish("relay-loss", [video_track()])
    lost_upstream = drop_sent_video_packets(publisher, count=3, after=60)
    await publisher.wait_status("PUBLISHING")
    player = await play_client.play("relay-loss")
    lost_downstream = drop_received_video_packets(player, count=4, after=60)
    await player.wait_status("PLAYING")
    counter = FrameCounter(player).start()
    await counter.wait_frames(90)
    assert len(lost_upstream) == 3 and len(lost_downstream) == 4

    def latest(stream: ClientStream) -> dict[str, Any]:
        return stream.rates[-1] if stream.rates else {}

    await publisher.wait_for(lambda: latest(publisher).get("lostPackets", 0) >= 3, timeout=10)
    await publisher.wait_for(lambda: latest(publisher).get("nack", 0) >= 1, timeout=10)
    await player.wait_for(lambda: latest(player).get("lostPackets", 0) >= 4, timeout=10)
    await player.wait_for(lambda: latest(player).get("nack", 0) >= 1, timeout=10)
    # Losses were repaired: the gateway's NACK brought RTX from the publisher, the player's
    # NACK brought RTX from the gateway, and video kept decoding.
    await counter.wait_frames(len(counter.pts) + 30)
    await counter.stop()
