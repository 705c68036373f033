"""Telemetry delivered to real aiortc players of an in-process gateway: over the WebSocket
(notifyStreamEvent "telemetry") and the "telemetry" data channel, rate-limited per player,
stamped with each player's own video RTP timestamps, off for a player that opts out; to
WHEP players with a data channel; over SSE; and a device's latest sample over REST.

Samples are published into the gateway's telemetry hub here, as the DJI bridge does (the
DJI path end to end is in test_telemetry_dji.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RtpPacket

from gateway.app import Gateway
from gateway.media.synthetic import EncodedVideoTrack
from gateway.wcs.client import ClientStream, WcsClient
from tests.integration.conftest import capture_rtp, local_config

FRAME_TICKS = 3000  # one frame interval at 30 fps, in 90 kHz ticks
TrackFactory = Callable[[], EncodedVideoTrack]


@dataclass(frozen=True)
class Sample:
    sn: str
    seq: int
    values: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"sn": self.sn, "seq": self.seq, **self.values}

    def gauges(self) -> dict[str, float]:
        return {"battery_percent": 80.0, "height_m": 12.5}


def ticks_after(a: int, b: int) -> int:
    """a - b on the 32-bit RTP clock, wrap-aware."""
    return ((a - b + 2**31) % 2**32) - 2**31


@dataclass
class Observed:
    """What a player received: its video RTP packets with their arrival times, and its
    telemetry events."""

    packets: list[tuple[float, RtpPacket]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def watch(cls, player: ClientStream) -> Observed:
        observed = cls()
        receiver = next(t.receiver for t in player.pc.getTransceivers() if t.kind == "video")
        handle = receiver._handle_rtp_packet

        async def recorded(packet: RtpPacket, arrival_time_ms: int) -> None:
            observed.packets.append((time.monotonic(), packet))
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = recorded  # type: ignore[method-assign]
        receive = player._receive

        def event(message: str, data: list[Any]) -> None:
            if message == "notifyStreamEvent" and data[0].get("type") == "telemetry":
                observed.events.append(data[0]["payload"])
            receive(message, data)

        player._receive = event  # type: ignore[method-assign]
        return observed

    def video_at(self, moment: float) -> int | None:
        """The RTP timestamp of the last video packet received by ``moment``."""
        last = None
        for at, packet in self.packets:
            if at > moment:
                break
            last = packet.timestamp
        return last


@contextlib.asynccontextmanager
async def feeding(
    gateway: Gateway, name: str, rate: float, sn: str = "AIRCRAFT1"
) -> AsyncIterator[list[float]]:
    """Publish a sample for ``name`` ``rate`` times a second, as the DJI bridge would; the
    list holds the moment each was published (by its ``seq``)."""
    published: list[float] = []

    async def feed() -> None:
        seq = 0
        while True:
            published.append(time.monotonic())
            gateway.registry.telemetry.publish(Sample(sn, seq, {"battery": 80}), [name])
            seq += 1
            await asyncio.sleep(1 / rate)

    task = asyncio.create_task(feed())
    try:
        yield published
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def ws_url(gateway: Gateway) -> str:
    return f"ws://127.0.0.1:{gateway.config.ws_port}"


async def publish(gateway: Gateway, track: EncodedVideoTrack, name: str = "cam") -> WcsClient:
    client = await WcsClient.connect(ws_url(gateway))
    publisher = await client.publish(name, [track])
    await publisher.wait_status("PUBLISHING")
    return client


async def play(gateway: Gateway, name: str = "cam", **options: Any) -> tuple[WcsClient, ClientStream]:
    client = await WcsClient.connect(ws_url(gateway))
    player = await client.play(name, **options)
    await player.wait_status("PLAYING")
    return client, player


def assert_stamped_on_its_own_video(observed: Observed, published: list[float]) -> None:
    """Every stamp is the RTP timestamp of a video frame this player received, the stamps
    increase, and each lies within one frame interval of the video the player had received
    when the sample arrived at the gateway (a sample that waited for the rate limit keeps
    its arrival's stamp)."""
    received = {packet.timestamp for _, packet in observed.packets}
    stamps = [payload["rtpTimestamp"] for payload in observed.events]
    assert stamps and all(isinstance(s, int) for s in stamps), stamps
    assert all(s in received for s in stamps), "a stamp is one of this player's frames"
    assert all(ticks_after(b, a) > 0 for a, b in zip(stamps, stamps[1:], strict=False)), stamps
    for payload in observed.events:
        then = observed.video_at(published[payload["sample"]["seq"]])
        assert then is not None
        assert abs(ticks_after(payload["rtpTimestamp"], then)) <= FRAME_TICKS, (then, payload)


async def test_players_get_telemetry_at_their_rate_on_their_own_timeline_unless_they_opt_out(
    video_track: TrackFactory,
) -> None:
    gateway = Gateway(local_config(telemetry_rate=5))
    await gateway.start()
    clients: list[WcsClient] = []
    try:
        clients.append(await publish(gateway, video_track()))
        client, player = await play(gateway, data_channel=True)
        clients.append(client)
        client, slow = await play(gateway, custom={"telemetryRate": 2})
        clients.append(client)
        client, opted_out = await play(gateway, data_channel=True, custom={"telemetry": False})
        clients.append(client)
        observed = Observed.watch(player)
        observed_slow = Observed.watch(slow)
        observed_out = Observed.watch(opted_out)
        async with asyncio.timeout(10):
            while len(observed.packets) < 30:
                await asyncio.sleep(0.05)
        started = time.monotonic()
        async with feeding(gateway, "cam", rate=20) as published:
            await asyncio.sleep(3.0)
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.5)  # the last waiting sample goes

        # At most the rate (5 and 2 per second), newest wins: far fewer than the 60 published.
        count, slow_count = len(observed.events), len(observed_slow.events)
        assert len(published) >= 40
        assert 0.5 * 5 * elapsed <= count <= 5 * (elapsed + 0.5) + 1, (count, elapsed)
        assert 0.5 * 2 * elapsed <= slow_count <= 2 * (elapsed + 0.5) + 1, (slow_count, elapsed)
        seqs = [payload["sample"]["seq"] for payload in observed.events]
        assert seqs == sorted(seqs) and seqs[-1] == len(published) - 1, "the newest sample always goes"
        assert all(payload["stream"] == "cam" for payload in observed.events)
        assert_stamped_on_its_own_video(observed, published)
        assert_stamped_on_its_own_video(observed_slow, published)
        # Each player's RTP timeline has its own origin: the same sample, another stamp.
        assert {p["rtpTimestamp"] for p in observed.events}.isdisjoint(
            {p["rtpTimestamp"] for p in observed_slow.events}
        )

        # The data channel carries the same messages, opened by the gateway.
        (channel,) = player.data_channels
        assert (channel.label, channel.ordered, channel.maxRetransmits) == ("telemetry", True, 0)
        on_channel = [orjson.loads(m) for label, m in player.data_messages if label == "telemetry"]
        assert len(on_channel) >= count - 2
        assert {p["sample"]["seq"] for p in on_channel} <= set(seqs) | {seqs[0] - 1}
        by_seq = {p["sample"]["seq"]: p for p in observed.events}
        assert all(by_seq[p["sample"]["seq"]] == p for p in on_channel if p["sample"]["seq"] in by_seq)

        # Opted out: no event, no channel, and its video plays on.
        assert observed_out.events == [] and opted_out.data_channels == []
        assert len(observed_out.packets) > 50
    finally:
        for client in clients:
            await client.close()
        await gateway.stop()


async def test_stock_path_players_are_stamped_on_their_own_video_too(video_track: TrackFactory) -> None:
    """Without the fast path (aiortc's own sender per viewer) the stamp is inferred from the
    sender's last RTP timestamp: still a frame the player received, within a frame."""
    gateway = Gateway(local_config(fast_fanout=False))
    await gateway.start()
    clients = [await publish(gateway, video_track())]
    try:
        client, player = await play(gateway)
        clients.append(client)
        observed = Observed.watch(player)
        async with asyncio.timeout(10):
            while len(observed.packets) < 30:
                await asyncio.sleep(0.05)
        async with feeding(gateway, "cam", rate=8) as published:
            async with asyncio.timeout(10):
                while len(observed.events) < 10:
                    await asyncio.sleep(0.05)
        assert_stamped_on_its_own_video(observed, published)
    finally:
        for client in clients:
            await client.close()
        await gateway.stop()


async def test_whep_player_with_a_data_channel_gets_telemetry(
    local_gateway: Gateway, video_track: TrackFactory
) -> None:
    clients = [await publish(local_gateway, video_track())]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channels: list[RTCDataChannel] = []
    messages: list[dict[str, Any]] = []

    @pc.on("datachannel")
    def opened(channel: RTCDataChannel) -> None:
        channels.append(channel)
        channel.on("message", lambda data: messages.append(orjson.loads(data)))

    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.createDataChannel("whep-client")
        await pc.setLocalDescription(await pc.createOffer())
        base = f"http://127.0.0.1:{local_gateway.config.http_port}"
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{base}/whep/cam", data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
            ) as reply:
                assert reply.status == 201
                answer = await reply.text()
        assert "m=application" in answer
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        packets = capture_rtp(pc)
        async with feeding(local_gateway, "cam", rate=10):
            async with asyncio.timeout(15):
                while len(messages) < 5:
                    await asyncio.sleep(0.05)
        assert [c.label for c in channels] == ["telemetry"]
        received = {p.timestamp for p in packets}
        assert all(m["rtpTimestamp"] in received for m in messages[1:])
        assert all(m["stream"] == "cam" and m["sample"]["sn"] == "AIRCRAFT1" for m in messages)
    finally:
        await pc.close()
        for client in clients:
            await client.close()


async def test_sse_and_latest_sample_over_http(local_gateway: Gateway, video_track: TrackFactory) -> None:
    clients = [await publish(local_gateway, video_track())]
    base = f"http://127.0.0.1:{local_gateway.config.http_port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/api/devices/AIRCRAFT1/telemetry") as reply:
                assert reply.status == 404
            async with http.get(f"{base}/api/streams/nothing-here/telemetry") as reply:
                assert reply.status == 404 and "nothing-here" in (await reply.json())["error"]
            async with feeding(local_gateway, "cam", rate=20) as published:
                events: list[dict[str, Any]] = []
                async with http.get(f"{base}/api/streams/cam/telemetry") as reply:
                    assert reply.status == 200
                    assert reply.headers["Content-Type"].startswith("text/event-stream")
                    assert local_gateway.telemetry_http.clients == 1
                    async with asyncio.timeout(10):
                        async for line in reply.content:
                            if line.startswith(b"data: "):
                                events.append(orjson.loads(line[6:]))
                            if len(events) >= 12:
                                break
            seqs = [e["sample"]["seq"] for e in events]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            assert len(published) > len(events) + 5, "rate-limited to telemetry_rate (10), newest wins"
            stream = local_gateway.registry.find("cam")
            assert stream is not None
            stamps = [e["rtpTimestamp"] for e in events]
            assert all(isinstance(s, int) for s in stamps) and stamps == sorted(stamps)
            async with asyncio.timeout(5):  # the handler ends when the client has gone
                while local_gateway.telemetry_http.clients:
                    await asyncio.sleep(0.05)
            async with http.get(f"{base}/api/devices/AIRCRAFT1/telemetry") as reply:
                latest = await reply.json()
            assert latest["sn"] == "AIRCRAFT1" and latest["seq"] == len(published) - 1
            async with http.get(f"{base}/metrics") as reply:
                text = await reply.text()
            assert 'skyrelay_device_battery_percent{sn="AIRCRAFT1"} 80' in text
            assert 'skyrelay_device_height_meters{sn="AIRCRAFT1"} 12.5' in text
            assert local_gateway.registry.telemetry.subscribers() == 0
    finally:
        for client in clients:
            await client.close()


async def test_a_joining_player_gets_the_latest_sample_at_once(
    local_gateway: Gateway, video_track: TrackFactory
) -> None:
    """A dock on the ground sends osd every two seconds: a player (a page reloaded) gets the
    stream's latest sample when it starts playing and when its data channel opens, not at
    the next sample."""
    clients = [await publish(local_gateway, video_track())]
    try:
        local_gateway.registry.telemetry.publish(Sample("DOCK1", 7, {"dock": {"modeCode": 4}}), ["cam"])
        client = await WcsClient.connect(ws_url(local_gateway))
        clients.append(client)
        player = await client.play("cam", data_channel=True)
        events: list[dict[str, Any]] = []

        def taken() -> bool:
            events[:] = [
                data[0]
                for message, data in player.events
                if message == "notifyStreamEvent" and data[0]["type"] == "telemetry"
            ]
            return bool(events) and bool(player.data_messages)

        await player.wait_for(taken, timeout=15)
        assert events[0]["payload"]["sample"]["seq"] == 7
        assert orjson.loads(player.data_messages[0][1])["sample"]["seq"] == 7
    finally:
        for client in clients:
            await client.close()
