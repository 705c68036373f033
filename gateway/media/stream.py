"""A Stream: a named pipe of encoded access units with a cached keyframe, fanned out to
subscribers through bounded queues. Nothing here decodes or encodes.

A source calls `Stream.push` for every access unit; each `Subscription` has one bounded
queue per media kind. A video queue that overflows is emptied and then skips frames up to
the next keyframe, so a slow viewer loses time but never sees a broken GOP. A new
subscriber starts with the cached keyframe, then waits for the next live keyframe (which it
asks the source for, rate-limited), so its picture is immediate and never corrupted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal, Protocol, runtime_checkable

import av

from gateway.media.rates import RateMeter

MediaKind = Literal["audio", "video"]


@dataclass(slots=True)
class MediaFrame:
    """One encoded access unit (H.264 Annex-B, VP8 frame, Opus packet)."""

    kind: MediaKind
    codec: str
    data: bytes
    pts: int
    time_base: Fraction
    keyframe: bool = False
    # A copy of the cached keyframe made for a joining subscriber (not a live frame).
    replay: bool = False
    # Forms of this frame derived by sinks (e.g. RTP payloads), made once, shared by all.
    derived: dict[str, Any] = field(default_factory=dict)
    _packet: av.Packet | None = None

    def packet(self) -> av.Packet:
        """The frame as an av.Packet for aiortc senders, built once and shared by all."""
        if self._packet is None:
            packet = av.Packet(self.data)
            packet.pts = self.pts
            packet.time_base = self.time_base
            self._packet = packet
        return self._packet


@dataclass(frozen=True, slots=True)
class Codec:
    """A negotiated codec, as aiortc names it (``H264``, ``VP8``, ``opus``, ...)."""

    name: str
    clock_rate: int
    parameters: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


class StreamListener(Protocol):
    """What a subscriber's owner hears about the stream besides frames."""

    def on_video_format(self, width: int, height: int) -> None: ...

    def on_stream_event(self, event_type: str, payload: Any) -> None: ...

    def on_stream_end(self, info: str | None) -> None: ...


@dataclass(frozen=True, slots=True)
class SourceFeedback:
    """What a source knows of its video's losses; None: its ingest cannot tell."""

    nack: int | None = None  # NACKs it sent (WebRTC)
    pli: int | None = None  # keyframe requests it sent (WebRTC)
    lost_packets: int | None = None  # RTP packets it saw lost


NO_FEEDBACK = SourceFeedback()


@runtime_checkable
class EventRelay(Protocol):
    """A source that carries its stream's events to where the stream is held: a mirror's
    link to the worker that owns the stream (`gateway.cluster`)."""

    def relay_event(self, event_type: str, payload: Any) -> None: ...


@runtime_checkable
class StoppableSource(Protocol):
    """A source that can be told its stream was ended by someone else while it still fed it
    (the name lost to another worker's claim in the same instant, the device's push given
    up): it stops and tells its publisher why, instead of feeding a stream no one sees."""

    def stream_ended(self, info: str) -> None: ...


class FrameBatch(Protocol):
    """A sink type's writes of one frame to many subscribers in one go: opened before the
    stream hands the frame to each subscriber (it may write to those it knows are in step
    already) and closed after (it writes to those that joined meanwhile); `fanout.ViewerBatch`.
    A frame handed to a subscriber outside `Stream.push` (a queue's backlog, a joining
    viewer's keyframe) is never opened: the subscriber writes it alone."""

    def open(self, frame: MediaFrame) -> None: ...

    def close(self) -> None: ...


class Source(Protocol):
    def request_keyframe(self) -> None: ...

    async def feedback(self) -> SourceFeedback:
        """Loss figures for the REST API (WCS ``VIDEO_NACK``/``VIDEO_PLI``/``VIDEO_LOST``)."""
        ...


# A viewer joining this soon after a keyframe gets the frames since it as well.
JOIN_WITH_GOP_S = 0.5
GOP_CACHE_FRAMES = 60


class FrameQueue:
    """A bounded single-consumer queue of frames for one subscriber and one media kind."""

    def __init__(self, kind: MediaKind, max_frames: int, on_gap: Callable[[], None]) -> None:
        self.kind = kind
        self.max_frames = max_frames
        self.dropped = 0
        self.meter = RateMeter()
        self._frames: deque[MediaFrame] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        # Video waits for a keyframe after a gap (start, overflow) so it never sends a
        # frame whose reference it did not send.
        self._need_keyframe = kind == "video"
        self._on_gap = on_gap
        self._deliver: Callable[[MediaFrame], bool] | None = None
        # Told when `in_step` may have turned false (a batch writing its consumer ahead).
        self.on_out_of_step: Callable[[], None] | None = None

    def put(self, frame: MediaFrame) -> None:
        if self._closed:
            return
        if self._need_keyframe:
            if not frame.keyframe:
                self.dropped += 1
                return
            self._need_keyframe = False
        if self._deliver is not None:
            self._hand(frame)
            return
        if len(self._frames) >= self.max_frames:
            if self.kind == "video":
                self.dropped += len(self._frames)
                self._frames.clear()
                if not frame.keyframe:
                    self.dropped += 1
                    self._need_keyframe = True
                    self._on_gap()
                    return
            else:
                self._frames.popleft()
                self.dropped += 1
        self._frames.append(frame)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def attach(self, deliver: Callable[[MediaFrame], bool]) -> None:
        """From now on hand frames straight to ``deliver`` (those queued first) instead of
        queueing them. ``deliver`` returns False when it could not take a frame (congested
        or gone): the rest is skipped up to the next keyframe, as on overflow."""
        self._deliver = deliver
        pending, self._frames = self._frames, deque()
        for index, frame in enumerate(pending):
            if not self._hand(frame):
                self.dropped += len(pending) - index - 1
                break

    @property
    def in_step(self) -> bool:
        """Whether every frame put from now on goes straight to the attached consumer: open,
        attached, and not waiting for a keyframe."""
        return self._deliver is not None and not self._need_keyframe and not self._closed

    def _hand(self, frame: MediaFrame) -> bool:
        assert self._deliver is not None
        if self._deliver(frame):
            if frame.kind == "video":
                self.meter.add(len(frame.data))
            return True
        self.dropped += 1
        if frame.kind == "video":
            self._need_keyframe = True
            self._left_step()
            self._on_gap()
        return False

    def _left_step(self) -> None:
        if self.on_out_of_step is not None:
            self.on_out_of_step()

    def resync(self) -> None:
        """The source changed: what is queued belongs to the old one; wait for a keyframe."""
        if self.kind == "video":
            self.dropped += len(self._frames)
            self._frames.clear()
            self._need_keyframe = True
            self._left_step()

    def start_with(self, keyframe: MediaFrame) -> None:
        """Queue a cached keyframe, then skip to the next live keyframe: the deltas that
        follow the cached one reference frames this subscriber never received."""
        self.put(keyframe)
        self._need_keyframe = True
        self._left_step()

    async def get(self) -> MediaFrame | None:
        """The next frame, or None once the queue is closed and drained."""
        while not self._frames:
            if self._closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frame = self._frames.popleft()
        if frame.kind == "video":
            self.meter.add(len(frame.data))
        return frame

    def __len__(self) -> int:
        return len(self._frames)

    def close(self) -> None:
        self._closed = True
        self._left_step()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Subscription:
    """One subscriber's view of a stream: its queues and its listener."""

    def __init__(self, stream: Stream, listener: StreamListener, max_frames: int) -> None:
        self.stream = stream
        self.listener = listener
        self.video = FrameQueue("video", max_frames, stream.request_keyframe)
        self.audio = FrameQueue("audio", max(8, max_frames), lambda: None)

    def queue(self, kind: MediaKind) -> FrameQueue:
        return self.video if kind == "video" else self.audio

    def close(self) -> None:
        self.video.close()
        self.audio.close()


VIDEO_CLOCK_RATE = 90_000  # H.264 and VP8 over RTP, and every telemetry stamp
VIDEO_CLOCK = Fraction(1, VIDEO_CLOCK_RATE)


def to_90khz(pts: int, time_base: Fraction) -> int:
    """A timestamp in ``time_base`` on the 90 kHz clock of video over RTP: truncated, as
    aiortc's packetizer converts a frame's pts, so a stamp equals the frame's RTP time."""
    if time_base == VIDEO_CLOCK:
        return pts
    return int(pts * time_base * VIDEO_CLOCK_RATE)


class Stream:
    def __init__(
        self,
        name: str,
        *,
        keyframe_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.id = uuid.uuid4().hex  # names this publication where no media session does (REST)
        self.video_codec: Codec | None = None
        self.audio_codec: Codec | None = None
        self.width = 0
        self.height = 0
        self.source: Source | None = None
        self.ingest = ""  # how the current or last source delivers: webrtc, rtmp, whip, rtsp
        self.ready = False  # codecs negotiated
        self.live = False  # the first keyframe has arrived: viewers may subscribe
        self.on_live: Callable[[Stream], None] | None = None  # the registry's, once
        self.ended = False
        self.end_info: str | None = None  # why it ended, when it failed
        self.inbound = RateMeter()
        self.keyframe: MediaFrame | None = None
        self._gop: list[MediaFrame] = []  # the last keyframe and the video since, while short
        self.last_video_pts = 0
        self._video_time_base: Fraction | None = None  # None: no video yet
        # A source that takes over a live stream (a push that reconnected) continues its
        # timestamps: per kind, the offset from the new source's clock to the stream's.
        self._resuming = False
        self._offsets: dict[str, int] = {}
        self._last_pts: dict[str, int] = {}
        self._last_push = clock()
        self.subscriptions: list[Subscription] = []
        # State shared by all sinks of one type on this stream (e.g. one RTP packetizer).
        self.shared: dict[str, Any] = {}
        self.batches: list[FrameBatch] = []  # opened and closed around every pushed frame
        self.keyframe_requests = 0  # forwarded to the source
        self._keyframe_interval = keyframe_interval
        self._last_keyframe_request = float("-inf")
        self._clock = clock

    # --- source side ---------------------------------------------------------------------

    def set_codecs(self, video: Codec | None, audio: Codec | None) -> None:
        self.video_codec, self.audio_codec = video, audio
        self.ready = True

    def attach_source(self, source: Source, ingest: str) -> None:
        """``source`` feeds this stream from now on (``ingest`` names how, for people).
        Taking over a stream that already had media (a push that came back) keeps its
        viewers: timestamps go on from where they were, and video waits for the new
        source's first keyframe."""
        self.source, self.ingest = source, ingest
        if self.ended:
            # Ended before its source came (its name lost while the publisher negotiated).
            if self.end_info is not None and isinstance(source, StoppableSource):
                source.stream_ended(self.end_info)
            return
        self._gop = []
        if self.live:
            self._resuming, self._offsets = True, {}
            for sub in self.subscriptions:
                sub.video.resync()

    def detach_source(self, source: Source) -> None:
        """``source`` stopped; the stream stays, waiting for another (or for `end`)."""
        if self.source is source:
            self.source = None

    def push(self, frame: MediaFrame) -> None:
        if self.ended:
            return
        now = self._clock()
        if self._resuming:
            offset = self._offsets.get(frame.kind)
            if offset is None:
                # Continue at the stream's last timestamp plus the time the source was away.
                gap = round((now - self._last_push) / frame.time_base)
                offset = self._offsets[frame.kind] = self._last_pts.get(frame.kind, 0) + gap - frame.pts
            frame.pts += offset
        self._last_push = now
        self._last_pts[frame.kind] = frame.pts
        if not self.live and (frame.keyframe or self.video_codec is None):
            # Playable from the first keyframe (audio-only: the first frame): a viewer told
            # PLAYING earlier would only see a frozen black picture until it came.
            self.live = True
            if self.on_live is not None:
                self.on_live(self)
        if frame.kind == "video":
            self.inbound.add(len(frame.data))
            self.last_video_pts = frame.pts
            self._video_time_base = frame.time_base
            if frame.keyframe:
                self.keyframe, self._gop = frame, [frame]
            elif 0 < len(self._gop) < GOP_CACHE_FRAMES:
                self._gop.append(frame)
            else:
                self._gop = []
        batches = self.batches
        for batch in batches:
            batch.open(frame)
        try:
            for sub in self.subscriptions:
                sub.queue(frame.kind).put(frame)
        finally:
            for batch in batches:
                batch.close()

    def figures(self) -> dict[str, Any]:
        """What the stream receives, like WCS's inboundVideoRate (for the HTTP API)."""
        bit_rate, fps = self.inbound.sample()
        return {
            "name": self.name,
            "ingest": self.ingest,
            "source_connected": self.source is not None,
            "live": self.live and not self.ended,
            "video_codec": self.video_codec.name if self.video_codec else None,
            "audio_codec": self.audio_codec.name if self.audio_codec else None,
            "bit_rate": bit_rate,
            "fps": fps,
            "width": self.width,
            "height": self.height,
            "frames": self.inbound.total_frames,
            "keyframe_requests": self.keyframe_requests,
            "viewers": len(self.subscriptions),
        }

    def media_clock(self) -> int | None:
        """The stream's latest video timestamp in 90 kHz units (the clock of H.264 and VP8
        over RTP), or None before any video: what telemetry is stamped with."""
        time_base = self._video_time_base
        return None if time_base is None else to_90khz(self.last_video_pts, time_base)

    def set_dimensions(self, width: int, height: int) -> None:
        if (width, height) == (self.width, self.height):
            return
        self.width, self.height = width, height
        for sub in list(self.subscriptions):
            sub.listener.on_video_format(width, height)

    def broadcast_event(self, event_type: str, payload: Any) -> None:
        """Tell this stream's own subscribers (`send_event` is for every subscriber)."""
        for sub in list(self.subscriptions):
            sub.listener.on_stream_event(event_type, payload)

    def send_event(self, event_type: str, payload: Any) -> None:
        """A stream event for every subscriber of the stream, on whichever worker: a mirror
        hands it to the owner (whose broadcast comes back to the mirror once, over its link),
        any other stream broadcasts it."""
        source = self.source
        if isinstance(source, EventRelay):
            source.relay_event(event_type, payload)
        else:
            self.broadcast_event(event_type, payload)

    def end(self, info: str | None = None) -> None:
        """The stream is over: close every queue and tell every subscriber (``info`` says
        why when it failed; None for a publisher that stopped)."""
        if self.ended:
            return
        self.ended, self.end_info = True, info
        source = self.source
        if info is not None and isinstance(source, StoppableSource):
            source.stream_ended(info)  # a source ending its own stream detached or said None
        subs, self.subscriptions = self.subscriptions, []
        for sub in subs:
            sub.close()
        for sub in subs:
            sub.listener.on_stream_end(info)

    # --- subscriber side -----------------------------------------------------------------

    def subscribe(
        self, listener: StreamListener, max_frames: int = 90, *, first: bool = False
    ) -> Subscription:
        """A new subscriber, served after those before it; ``first``: before every other
        (a link to another worker, so that its viewers are fanned out there while this
        worker's loop still writes to its own)."""
        sub = Subscription(self, listener, max_frames)
        gop = self._gop
        if gop and (self.last_video_pts - gop[0].pts) * gop[0].time_base <= JOIN_WITH_GOP_S:
            # A young GOP (a viewer that waited for the stream to start): the keyframe and
            # every frame since, so the picture moves at once instead of freezing on the
            # keyframe until the next one. At most JOIN_WITH_GOP_S behind live.
            for frame in gop:
                sub.video.put(frame)
        elif self.keyframe is not None:
            # Stamp the cached keyframe with the live time: the viewer's timeline starts now,
            # not at the keyframe's capture time, and never jumps back (A/V sync, jitter buffer).
            replay = dataclasses.replace(
                self.keyframe, pts=self.last_video_pts, replay=True, derived={}, _packet=None
            )
            sub.video.start_with(replay)
        if first:
            self.subscriptions.insert(0, sub)
        else:
            self.subscriptions.append(sub)
        self.request_keyframe()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        if sub in self.subscriptions:
            self.subscriptions.remove(sub)

    def request_keyframe(self) -> None:
        """Ask the source for a keyframe, at most once per interval (viewers' PLI/FIR)."""
        now = self._clock()
        if now - self._last_keyframe_request < self._keyframe_interval:
            return
        self._last_keyframe_request = now
        if self.source is not None and not self.ended:
            self.keyframe_requests += 1
            self.source.request_keyframe()
