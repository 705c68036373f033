"""A WebRTC viewer as a sink of a Stream.

Each viewer gets aiortc senders fed with the Stream's encoded frames (``encoder.pack``, no
encoding) from its own bounded queues. Its PLI/FIR become (rate-limited) keyframe requests
to the Stream's source; its NACKs are answered from the fast path's writer (else by aiortc
from the sender's history). On the fast path its SRTCP is handled in each datagram's own
callback (`aiortc_compat.install_fast_rtcp`), not by aiortc's receive task.

A player whose offer has an ``m=application`` section also gets a data channel labelled
``telemetry`` (ordered, no retransmissions: a late sample is worth nothing), which carries
the stream's telemetry stamped with the RTP timestamps of this viewer's own video.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import av
from aiortc import MediaStreamTrack, RTCDataChannel, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
)

from gateway.media.rates import VideoRates
from gateway.media.stream import FrameQueue, MediaKind, Stream, StreamListener, Subscription
from gateway.media.webrtc import aiortc_compat
from gateway.media.webrtc.fanout import DirectRtpWriter
from gateway.media.webrtc.peer import Peer, RtcSettings
from gateway.media.webrtc.sdp import capabilities, check_play_offer, data_channel_offered, parse_offer
from gateway.media.webrtc.sender_reports import sender_reports
from gateway.telemetry.delivery import RateLimitedTelemetry
from gateway.telemetry.hub import TelemetryHub, TelemetryMessage

TELEMETRY_LABEL = "telemetry"
# A data channel with this much queued is not keeping up: telemetry for it is skipped.
MAX_DATA_CHANNEL_BUFFERED = 256 * 1024


class ViewerListener(StreamListener, Protocol):
    def on_started(self) -> None: ...

    def on_failed(self, info: str) -> None: ...


class RelayTrack(MediaStreamTrack):
    """A track whose frames are already encoded: it hands the sender av.Packets."""

    def __init__(self, kind: MediaKind, frames: FrameQueue) -> None:
        super().__init__()
        self.kind = kind
        self._frames = frames
        self.last_pts: int | None = None  # of the last frame handed to the sender

    async def recv(self) -> av.Packet:
        frame = await self._frames.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        self.last_pts = frame.pts
        return frame.packet()


class IdleTrack(MediaStreamTrack):
    """The track an aiortc sender holds when the fast path writes its RTP: it never yields,
    so aiortc's own send loop stays idle while its RTCP loop runs."""

    def __init__(self, kind: MediaKind) -> None:
        super().__init__()
        self.kind = kind
        self._never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def recv(self) -> av.Packet:
        await self._never
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        if not self._never.done():
            self._never.set_result(None)


class WebRtcViewer:
    def __init__(self, stream: Stream, settings: RtcSettings, listener: ViewerListener) -> None:
        self.stream = stream
        self.settings = settings
        self.listener = listener
        self.peer = Peer(settings, on_connected=listener.on_started, on_failed=listener.on_failed)
        self.subscription: Subscription | None = None
        self._video_sender: RTCRtpSender | None = None
        self._video_track: RelayTrack | None = None  # the stock path's
        self.writers: dict[MediaKind, DirectRtpWriter] = {}
        self.nack_received = 0
        self.pli_received = 0
        self.fast_rtcp = False  # its SRTCP handled without aiortc's receive task
        self.data_channel: RTCDataChannel | None = None
        self.telemetry: RateLimitedTelemetry | None = None
        self._telemetry_hub: TelemetryHub | None = None
        self._join_when_writing = False
        self._send_telemetry_text: Callable[[str], None] | None = None
        self.telemetry_skipped = 0  # not sent: the data channel was not open or was backed up

    async def accept(self, offer_sdp: str, tcp_only: bool = False, data_channel: bool = True) -> str:
        """Answer the player's offer. Raises OfferError if it cannot receive the stream.
        ``data_channel``: open the telemetry channel if the offer can carry one."""
        stream = self.stream
        offered = parse_offer(offer_sdp)
        check_play_offer(offered, stream.video_codec, stream.audio_codec)
        sub = stream.subscribe(self.listener, self.settings.viewer_queue_frames)
        self.subscription = sub
        pc = self.peer.pc
        for kind in dict.fromkeys(m.kind for m in offered if m.direction in ("recvonly", "sendrecv")):
            codec = stream.video_codec if kind == "video" else stream.audio_codec
            if codec is None:
                continue
            track = IdleTrack(kind) if self.settings.fast_fanout else RelayTrack(kind, sub.queue(kind))
            if kind == "video" and isinstance(track, RelayTrack):
                self._video_track = track
            transceiver = pc.addTransceiver(track, direction="sendonly")
            transceiver.setCodecPreferences(capabilities((f"{kind}/{codec.name}",), kind))
            if self.settings.fast_fanout:
                self._write_directly_once_started(kind, transceiver.sender, sub.queue(kind))
            if kind == "video":
                self._video_sender = transceiver.sender
                self._hook_feedback(transceiver.sender)
        opens_channel = data_channel and data_channel_offered(offer_sdp)
        return await self.peer.answer(
            offer_sdp, tcp_only=tcp_only, before_answer=self._open_data_channel if opens_channel else None
        )

    def _open_data_channel(self) -> None:
        channel = self.peer.pc.createDataChannel(TELEMETRY_LABEL, ordered=True, maxRetransmits=0)
        channel.on("open", self.telemetry_joined)
        self.data_channel = channel

    # --- telemetry -------------------------------------------------------------------------

    def start_telemetry(
        self, hub: TelemetryHub, rate: float, send_text: Callable[[str], None] | None = None
    ) -> None:
        """Deliver the stream's telemetry to this viewer, at most ``rate`` messages per second
        (newest wins): on its data channel if it has one, and to ``send_text`` (a WCS player's
        WebSocket). Call after `accept`."""
        if self.telemetry is None:
            self._send_telemetry_text = send_text
            self._telemetry_hub = hub
            self.telemetry = RateLimitedTelemetry(hub, self.stream.name, rate, self._deliver_telemetry)

    def telemetry_joined(self) -> None:
        """The player can take telemetry now (it is PLAYING, or its data channel opened): it
        gets the stream's latest sample at once, not at the next one (a dock on the ground
        sends one every two seconds). It may come twice, once per way."""
        hub = self._telemetry_hub
        if self.telemetry is None or hub is None:
            return
        if (
            self.stream.video_codec is not None
            and self.writers.get("video") is None
            and self.settings.fast_fanout
        ):
            self._join_when_writing = True  # stamped once its video is written, not null
            return
        current = hub.current(self.stream.name)
        if current is not None:
            self.telemetry.offer(current)

    def _deliver_telemetry(self, message: TelemetryMessage) -> None:
        pts = message.stream_pts
        payload = message.payload(None if pts is None else self.rtp_timestamp(pts))
        if self._send_telemetry_text is not None:
            self._send_telemetry_text(payload)
        channel = self.data_channel
        if channel is None:
            return
        if channel.readyState != "open" or channel.bufferedAmount > MAX_DATA_CHANNEL_BUFFERED:
            self.telemetry_skipped += 1
            return
        channel.send(payload)

    def rtp_timestamp(self, stream_pts: int) -> int | None:
        """The RTP timestamp this viewer's video carries for the stream's timestamp
        ``stream_pts`` (90 kHz), or None before its video is sent. Each viewer's RTP timeline
        starts at a random origin, so a stamp means something only to its own viewer."""
        writer = self.writers.get("video")
        if writer is not None:
            return writer.rtp_timestamp(stream_pts)
        track, sender = self._video_track, self._video_sender
        if track is None or track.last_pts is None or sender is None:
            return None
        try:
            last_rtp = aiortc_compat.sender_counters(sender).rtp_timestamp
        except AttributeError:
            return None
        # The stock sender's origin is not exposed: infer it from the last frame it sent.
        return (last_rtp - track.last_pts + stream_pts) & 0xFFFFFFFF

    def _write_directly_once_started(self, kind: MediaKind, sender: RTCRtpSender, queue: FrameQueue) -> None:
        """When aiortc starts the sender (DTLS up, parameters known), switch its queue to a
        DirectRtpWriter; if the fast path is unavailable, give the sender the stock track."""
        start = sender.send

        async def send(parameters: RTCRtpSendParameters) -> None:
            # aiortc's RTCP loop for this sender waits to hear who sends its reports.
            decide = aiortc_compat.hold_sender_reports(sender)
            reports_here = False
            try:
                await start(parameters)
                writer = DirectRtpWriter.attach(self.stream, sender, parameters, self.settings.fanout_floor)
                if writer is None:
                    sender.replaceTrack(RelayTrack(kind, queue))
                    return
                self.writers[kind] = writer
                if decide is not None:
                    # Sent with every other viewer's from one timer, not a task each.
                    writer.start_sender_reports(parameters.rtcp.cname or "")
                    sender_reports().add(writer)
                    reports_here = True
            finally:
                if decide is not None:
                    decide(not reports_here)
            # Its RTCP handled in each datagram's callback too (once per transport).
            self.fast_rtcp = aiortc_compat.install_fast_rtcp(sender.transport)
            queue.attach(writer.write)
            writer.follow(queue)  # in step with it, its batch may write it ahead of the queue
            if kind == "video" and self._join_when_writing:
                self._join_when_writing = False
                self.telemetry_joined()

        sender.send = send  # type: ignore[method-assign]

    def _hook_feedback(self, sender: RTCRtpSender) -> None:
        """Count the viewer's NACK and PLI/FIR, and forward keyframe requests upstream:
        aiortc's sender ignores them when it is not encoding. Without the hook (another
        aiortc, see aiortc_compat) the viewer still plays, uncounted."""
        try:
            handle = aiortc_compat.sender_rtcp_handler(sender)
        except AttributeError:
            return

        async def counted(packet: Any) -> None:
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                self.nack_received += 1
                writer = self.writers.get("video")
                if writer is not None:
                    writer.retransmit(packet.lost)
                    return  # aiortc's sender has no history of packets it did not send
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                self.pli_received += 1
                self.stream.request_keyframe()
            await handle(packet)

        aiortc_compat.set_sender_rtcp_handler(sender, counted)

    async def rates(self) -> VideoRates:
        bits = fps = lost = 0
        if self.subscription is not None:
            bits, fps = self.subscription.video.meter.sample()
        sender = self._video_sender
        if sender is not None:
            writer = self.writers.get("video")
            if writer is not None:
                writer.sync_sender_counters()  # getStats() tells the true counts, to the second
            try:
                lost = aiortc_compat.remote_packets_lost(sender)
            except AttributeError:
                report = await sender.getStats()
                lost = sum(s.packetsLost for s in report.values() if s.type == "remote-inbound-rtp")
        stream = self.stream
        return VideoRates(bits, fps, self.nack_received, self.pli_received, lost, stream.width, stream.height)

    def summary(self) -> dict[str, int]:
        """Counts for the log line that ends this viewer."""
        sub = self.subscription
        if sub is None:
            return {}
        video = sub.video
        return {
            "video_frames": video.meter.total_frames,
            "video_dropped": video.dropped,
            "audio_dropped": sub.audio.dropped,
            "nack": self.nack_received,
            "pli": self.pli_received,
        }

    async def close(self) -> None:
        if self.telemetry is not None:
            self.telemetry.close()
        for writer in self.writers.values():
            writer.close()
        if self.subscription is not None:
            self.stream.unsubscribe(self.subscription)
        await self.peer.close()
