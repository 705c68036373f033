"""Encoded frames out of an aiortc receiver, without decoding.

aiortc's RTCRtpReceiver hands every complete frame from its jitter buffer to a decoder
thread through a queue, and offers no public way to get encoded frames. `EncodedFrameTap`
stands in for that queue: frames go straight to a callback on the event loop, and the
decoder thread is let go as soon as the receiver has started it. With fast receive, H.264
video skips aiortc's receive logic for the gateway's own (`rtp_in`: NACK, RTX, reordering,
depacketizing, PLI after a loss for good); VP8 and audio keep aiortc's NACK, PLI and jitter
buffer. The receiver's private state is reached through `aiortc_compat`.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters

from gateway.log import get_logger
from gateway.media.rtsp.rtp import AccessUnit
from gateway.media.webrtc import aiortc_compat

log = get_logger(__name__)

FrameCallback = Callable[[RTCRtpCodecParameters, bytes, int], None]
UnitCallback = Callable[[RTCRtpCodecParameters, AccessUnit], None]


class EncodedFrameTap:
    def __init__(self, deliver: FrameCallback, on_unit: UnitCallback | None = None) -> None:
        self._deliver = deliver
        self._on_unit = on_unit
        self._stop: queue.SimpleQueue[None] = queue.SimpleQueue()

    # Called by the receiver on the event loop, with (codec, JitterFrame) or None at stop.
    def put(self, item: tuple[RTCRtpCodecParameters, Any] | None) -> None:
        if item is None:
            self._stop.put(None)
            return
        codec, frame = item
        try:
            self._deliver(codec, frame.data, frame.timestamp)
        except Exception:
            log.exception("passthrough_frame_error", codec=codec.name)

    # Called by the gateway's own H.264 receive (`rtp_in`), on the event loop.
    def put_unit(self, codec: RTCRtpCodecParameters, unit: AccessUnit) -> None:
        try:
            if self._on_unit is not None:
                self._on_unit(codec, unit)
            else:
                self._deliver(codec, unit.data, unit.timestamp)
        except Exception:
            log.exception("passthrough_frame_error", codec=codec.name)

    # Called by aiortc's decoder thread, which ends when this returns None.
    def get(self) -> None:
        return self._stop.get()


def install(
    receiver: RTCRtpReceiver,
    deliver: FrameCallback,
    *,
    fast: bool = True,
    on_unit: UnitCallback | None = None,
) -> None:
    """Make ``receiver`` hand encoded frames to ``deliver``. Call before it starts. Raises
    `aiortc_compat.InternalsMissing` (a RuntimeError) if this aiortc has no decoder queue.
    With ``fast``, once started its RTP is handled synchronously as each datagram arrives
    (`aiortc_compat.install_fast_receive`), where this aiortc allows it; and H.264 video by
    the gateway's own RTP receive (`rtp_in`), whose access units go to ``on_unit`` (their
    parameter sets checked, keyframes known) or, without it, to ``deliver``."""
    tap = EncodedFrameTap(deliver, on_unit)
    aiortc_compat.replace_decoder_queue(receiver, tap)
    # Frames out at their last packet, not one frame later (where this aiortc allows it).
    aiortc_compat.complete_frames_early(receiver)
    start = receiver.receive

    async def receive(parameters: RTCRtpReceiveParameters) -> None:
        await start(parameters)
        # aiortc has just started its decoder thread; with nothing to decode, let it end
        # now rather than idle for the life of the stream (frames keep coming to the tap).
        tap.put(None)
        if fast:
            _fast_receive(receiver, tap, parameters)

    receiver.receive = receive  # type: ignore[method-assign]


def _fast_receive(
    receiver: RTCRtpReceiver, tap: EncodedFrameTap, parameters: RTCRtpReceiveParameters
) -> None:
    """Per packet, aiortc's path costs a queue hand-over to the DTLS transport's receive task
    and a chain of coroutines; the synchronous one does the same work in the datagram's own
    callback. Without it (another aiortc), the stock path stays, logged once."""
    global _fast_receive_missing_logged
    try:
        handler = aiortc_compat.fast_rtp_handler(receiver, tap.put)
        installed = aiortc_compat.install_fast_receive(receiver, handler)
    except AttributeError:
        installed = False
    if not installed and not _fast_receive_missing_logged:
        _fast_receive_missing_logged = True
        log.warning("fast_receive_unavailable", reason="this aiortc lacks what it needs")
    if installed:
        own = aiortc_compat.OwnH264Receive.of(receiver, parameters, tap.put_unit)
        if own is not None:
            aiortc_compat.install_own_receive(receiver, own)


_fast_receive_missing_logged = False


def packets_lost(receiver: RTCRtpReceiver) -> int:
    """RTP packets lost on the receiver's media SSRCs (not RTX), from its RTCP statistics.
    aiortc's getStats() files every SSRC under one key, so an RTX stream can hide the media
    stream's figure; this reads the per-SSRC statistics instead."""
    streams = aiortc_compat.receiver_stream_statistics(receiver)
    rtx = aiortc_compat.receiver_rtx_ssrcs(receiver)
    return sum(stats.packets_lost for ssrc, stats in streams.items() if ssrc not in rtx)


def media_ssrc(receiver: RTCRtpReceiver) -> int | None:
    """The SSRC the publisher sends media on, for keyframe requests. Browsers also send RTX
    (retransmissions and bandwidth-probing padding) on a second SSRC; a PLI naming that one
    is ignored."""
    rtx = aiortc_compat.receiver_rtx_ssrcs(receiver)
    for source in receiver.getSynchronizationSources():
        if source.source not in rtx:
            return source.source
    return next(iter(rtx.values()), None)
