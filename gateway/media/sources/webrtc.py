"""A WebRTC publisher (browser, mobile SDK) as the source of a Stream.

Its receivers yield encoded frames through the passthrough tap; nothing is decoded. The
Stream's keyframe requests become RTCP PLI toward the publisher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from fractions import Fraction

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from gateway.log import get_logger
from gateway.media import h264, vp8
from gateway.media.rates import VideoRates
from gateway.media.rtsp.rtp import AccessUnit
from gateway.media.stream import Codec, MediaFrame, SourceFeedback, Stream
from gateway.media.webrtc import aiortc_compat, passthrough
from gateway.media.webrtc.peer import Peer, RtcSettings
from gateway.media.webrtc.sdp import (
    PUBLISH_AUDIO,
    PUBLISH_VIDEO,
    capabilities,
    check_publish_offer,
    negotiated_codecs,
    parse_offer,
)
from gateway.tasks import TaskSet

log = get_logger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)  # H.264 and VP8 over RTP (RFC 6184, 7741)


class WebRtcPublisher:
    def __init__(
        self,
        stream: Stream,
        settings: RtcSettings,
        *,
        on_started: Callable[[], None],
        on_failed: Callable[[str], None],
        ingest: str = "webrtc",
    ) -> None:
        self.stream = stream
        self.ingest = ingest
        self.peer = Peer(settings, on_connected=self._connected, on_failed=on_failed)
        self._on_started = on_started
        self._on_failed = on_failed
        self._media_deadline: asyncio.TimerHandle | None = None
        self._started = False
        self._video_receiver: RTCRtpReceiver | None = None
        self._parameter_sets = h264.ParameterSetCache()
        self._pli_tasks = TaskSet("webrtc_publisher")
        self.nack_sent = 0
        self.pli_sent = 0

    async def accept(self, offer_sdp: str, tcp_only: bool = False) -> str:
        """Answer the publisher's offer. Raises OfferError for an offer we cannot relay.
        The stream is this publisher's from the first line on, before any wait: while it
        negotiates, a push returning with the same key on another worker finds the stream
        not `resumable` there and is refused, as if this one already streamed."""
        self.stream.attach_source(self, self.ingest)  # a stream taken over keeps its viewers
        offered = parse_offer(offer_sdp)
        check_publish_offer(offered)
        pc = self.peer.pc
        for kind in dict.fromkeys(m.kind for m in offered if m.direction in ("sendonly", "sendrecv")):
            transceiver = pc.addTransceiver(kind, direction="recvonly")
            wanted = PUBLISH_VIDEO if kind == "video" else PUBLISH_AUDIO
            transceiver.setCodecPreferences(capabilities(wanted, kind))
            self._tap(transceiver.receiver, kind)
        answer = await self.peer.answer(offer_sdp, tcp_only=tcp_only)
        video = audio = None
        # What the answer names, first choice first: the codecs the publisher will send.
        negotiated = negotiated_codecs(pc.localDescription.sdp)
        for transceiver in pc.getTransceivers():
            found = negotiated.get(transceiver.mid or "", [])
            codecs = [c for c in found if not c.mimeType.lower().endswith("/rtx")]
            if not codecs or transceiver.receiver is None:
                continue
            chosen = codecs[0]
            codec = Codec(chosen.mimeType.split("/", 1)[1], chosen.clockRate, dict(chosen.parameters))
            if transceiver.kind == "video":
                video = codec
            else:
                audio = codec
        self.stream.set_codecs(video, audio)
        return answer

    def _tap(self, receiver: RTCRtpReceiver, kind: str) -> None:
        if kind == "video":
            self._video_receiver = receiver
            self._count_feedback(receiver)
        deliver = self._on_video_frame if kind == "video" else self._on_audio_frame
        on_unit = self._on_video_unit if kind == "video" else None
        passthrough.install(receiver, deliver, fast=self.peer.settings.fast_receive, on_unit=on_unit)

    def _count_feedback(self, receiver: RTCRtpReceiver) -> None:
        feedback = aiortc_compat.receiver_feedback(receiver)
        if feedback is None:
            return  # another aiortc (see aiortc_compat): the publish works, uncounted
        send_nack, send_pli = feedback

        async def counted_nack(media_ssrc: int, lost: list[int]) -> None:
            self.nack_sent += 1
            await send_nack(media_ssrc, lost)

        async def counted_pli(media_ssrc: int) -> None:
            self.pli_sent += 1
            await send_pli(media_ssrc)

        aiortc_compat.set_receiver_feedback(receiver, counted_nack, counted_pli)

    def _on_video_frame(self, codec: RTCRtpCodecParameters, data: bytes, timestamp: int) -> None:
        name = codec.mimeType.split("/", 1)[1]
        dims: tuple[int, int] | None
        if name == "H264":
            data, keyframe, dims = self._parameter_sets.process(data)
        else:
            keyframe = vp8.is_keyframe(data)
            dims = vp8.keyframe_dimensions(data) if keyframe else None
        self._push_video(name, data, timestamp, keyframe, dims)

    def _on_video_unit(self, codec: RTCRtpCodecParameters, unit: AccessUnit) -> None:
        """An H.264 access unit from the gateway's own receive (`rtp_in`): its parameter sets
        already put before a keyframe that lacked them."""
        self._push_video("H264", unit.data, unit.timestamp, unit.keyframe, unit.dimensions)

    def _push_video(
        self, name: str, data: bytes, timestamp: int, keyframe: bool, dims: tuple[int, int] | None
    ) -> None:
        if dims is not None:
            self.stream.set_dimensions(*dims)
        self.stream.push(MediaFrame("video", name, data, timestamp, VIDEO_TIME_BASE, keyframe))
        self._mark_started()

    def _on_audio_frame(self, codec: RTCRtpCodecParameters, data: bytes, timestamp: int) -> None:
        name = codec.mimeType.split("/", 1)[1]
        self.stream.push(MediaFrame("audio", name, data, timestamp, Fraction(1, codec.clockRate), True))
        self._mark_started()

    def _connected(self) -> None:
        # Connected but silent would hold the name and show players a black picture.
        loop = asyncio.get_running_loop()
        self._media_deadline = loop.call_later(self.peer.settings.ice_timeout, self._no_media)

    def _no_media(self) -> None:
        self._media_deadline = None
        if not self._started and self.peer.state == "connected":
            self._on_failed("No media received from the publisher")

    def _mark_started(self) -> None:
        if not self._started:
            self._started = True
            if self._media_deadline is not None:
                self._media_deadline.cancel()
                self._media_deadline = None
            self._on_started()

    def stream_ended(self, info: str) -> None:
        """The stream was ended under this publisher (`StoppableSource`): it fails with
        ``info`` (told from the loop, not from inside the ending)."""
        asyncio.get_running_loop().call_soon(self._on_failed, info)

    def request_keyframe(self) -> None:
        receiver = self._video_receiver
        ssrc = passthrough.media_ssrc(receiver) if receiver is not None else None
        if receiver is None or ssrc is None:
            return
        try:
            pli = aiortc_compat.send_pli(receiver, ssrc)
        except AttributeError:
            return  # another aiortc (see aiortc_compat): viewers wait for the next keyframe
        self._pli_tasks.spawn(pli)

    async def feedback(self) -> SourceFeedback:
        rates = await self.rates()
        return SourceFeedback(rates.nack, rates.pli, rates.lost_packets)

    async def rates(self) -> VideoRates:
        bits, fps = self.stream.inbound.sample()
        lost = passthrough.packets_lost(self._video_receiver) if self._video_receiver else 0
        stream = self.stream
        return VideoRates(bits, fps, self.nack_sent, self.pli_sent, lost, stream.width, stream.height)

    def summary(self) -> dict[str, int]:
        """Counts for the log line that ends this publisher."""
        inbound = self.stream.inbound
        return {
            "video_frames": inbound.total_frames,
            "keyframe_requests": self.stream.keyframe_requests,
            "nack": self.nack_sent,
            "pli": self.pli_sent,
        }

    async def close(self) -> None:
        if self._media_deadline is not None:
            self._media_deadline.cancel()
        for task in list(self._pli_tasks):
            task.cancel()
        await self.peer.close()
