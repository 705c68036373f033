"""HLS out: every live H.264 Stream as a sliding-window live playlist of fMP4 (CMAF) segments,
remuxed in memory with PyAV, never transcoded.

A stream is packaged only while someone reads it: the first playlist request subscribes an
`HlsPackager` to the Stream; it stops when nobody asked for the stream for ``idle_timeout``
seconds, or when the stream ends. Its fragmented-MP4 muxer (`Remuxer`, shared with the
DVR) turns access units into ``moof``+``mdat`` fragments (one per GOP, `frag_keyframe`); a
segment is cut at the first keyframe at least ``segment_target`` seconds after its start, so
every segment starts with an IDR. The init segment (``ftyp``+``moov``) is what the muxer
writes before the first fragment. A stream with Opus audio has it in the same segments, on
the video's timeline (see `gateway.media.sinks.fmp4`); G.711 audio cannot go in MP4 and is
left out (logged once). Nothing touches the disk: segment names are built here, never taken
from a request.

A stream with telemetry has each sample in its segments as timed ID3 in an ``emsg`` box
(`gateway.media.emsg`), which hls.js turns into a metadata cue: the box goes before the
``moof`` of the fragment that holds the frame the sample was stamped with
(`TelemetryTrack`), its presentation time on the segments' media timeline (the fragments'
``tfdt``: 0 is the muxer's first frame), at 90 kHz.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from gateway.log import get_logger
from gateway.media.emsg import telemetry_emsg
from gateway.media.registry import StreamRegistry, StreamUnavailable, Viewing
from gateway.media.sinks.fmp4 import Fmp4Muxer, Fragment
from gateway.media.sinks.remux import Remuxer
from gateway.media.sinks.telemetry import TelemetryTrack
from gateway.media.stream import VIDEO_CLOCK_RATE, MediaFrame, Stream, to_90khz
from gateway.telemetry.hub import TelemetryHub

log = get_logger(__name__)

# Segments kept beyond the playlist window: a player that loaded the previous playlist may
# still ask for them (RFC 8216 6.2.2).
EXTRA_SEGMENTS = 2
# About 10 s of 30 fps video: remuxing never falls behind that far (setting remux_queue_frames).
SUBSCRIPTION_FRAMES = 300

__all__ = ["Fmp4Muxer", "HlsPackager", "HlsService"]


@dataclass(frozen=True, slots=True)
class HlsSegment:
    sequence: int
    duration: float  # seconds
    data: bytes
    init: int  # the init segment (version) it is decoded with
    discontinuity: bool  # a new muxer (new parameter sets) starts here


class HlsPackager(Remuxer):
    """One Stream packaged as HLS: its remuxer (subscription, muxer), init segments and
    segment window."""

    audio_left_out_event = "hls_audio_left_out"
    audio_left_out_reason = "MP4 carries no such audio: the segments are video only"

    def __init__(
        self,
        stream: Stream,
        *,
        segment_target: float,
        window: int,
        clock: Callable[[], float] = time.monotonic,
        queue_frames: int = SUBSCRIPTION_FRAMES,
        telemetry: TelemetryHub | None = None,
    ) -> None:
        super().__init__(stream)
        self.segment_target = segment_target
        self.window = window
        self.segments: deque[HlsSegment] = deque(maxlen=window + EXTRA_SEGMENTS)
        self.inits: dict[int, bytes] = {}
        self.first_segment = asyncio.Event()
        self.closed = False
        self.end_info: str | None = None
        self._clock = clock
        self.last_request = clock()
        self._sequence = 0
        self._discontinuities = 0  # segments ever made that start with a discontinuity
        self._target_duration = max(1, math.ceil(segment_target))
        self._init_version = -1
        self._segment_start: Fraction | None = None  # seconds on it where the open segment starts
        self._pending = bytearray()  # fragments of the open segment
        self._pending_discontinuity = False
        # Telemetry: samples (pts on the muxer's timeline, 90 kHz; JSON) waiting for their fragment.
        self.telemetry = TelemetryTrack(telemetry, stream.name) if telemetry is not None else None
        self._events: list[tuple[int, str]] = []
        self._event_id = 0
        self.emsg_boxes = 0
        self.telemetry_dropped = 0  # samples with no muxer to time them by
        self._subscribe(self, queue_frames)
        self._task = asyncio.create_task(self._run(), name=f"hls:{stream.name}")

    # --- frames -----------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._remux()
        finally:
            self._close()

    def _failed(self, exc: Exception) -> None:
        # A frame the muxer refuses (corrupt parameter sets): start over at the next
        # keyframe rather than stop serving the stream.
        log.warning("hls_mux_error", stream=self.stream.name, error=str(exc)[:200])

    def _check(self, frame: MediaFrame) -> None:
        """Telemetry that came before this video frame waits for its fragment."""
        if self.telemetry is None or frame.kind != "video":
            return
        due = self.telemetry.due(to_90khz(frame.pts, frame.time_base))
        if not due:
            return
        muxer = self.muxer
        if muxer is None or muxer.origin is None:
            self.telemetry_dropped += len(due)
            return
        origin = to_90khz(muxer.origin, muxer.time_base)
        self._events += [(max(0, pts - origin), body) for pts, body in due]

    def _emsgs(self, end: Fraction | None) -> bytes:
        """``emsg`` boxes of the samples before ``end`` (seconds; None: all that wait)."""
        events = self._events
        count = len(events) if end is None else 0
        if end is not None:
            limit = end * VIDEO_CLOCK_RATE
            while count < len(events) and events[count][0] < limit:
                count += 1
        if not count:
            return b""
        boxes = []
        for pts, body in events[:count]:
            boxes.append(
                telemetry_emsg(
                    body, presentation_time=pts, timescale=VIDEO_CLOCK_RATE, event_id=self._event_id
                )
            )
            self._event_id = (self._event_id + 1) & 0xFFFFFFFF
        del events[:count]
        self.emsg_boxes += count
        return b"".join(boxes)

    def _take(self, muxer: Fmp4Muxer, fragments: list[Fragment]) -> None:
        """Fragments (one a GOP) into segments: one is cut after the fragment that ends
        ``segment_target`` or more after the open segment's start. Telemetry of a fragment
        goes before its ``moof``."""
        if self._init_version not in self.inits and muxer.header is not None:
            self.inits[self._init_version] = muxer.header
        for fragment in fragments:
            if self._segment_start is None:
                self._segment_start = fragment.start
            if self._events and (fragment.start is not None or fragment.end is not None):
                self._pending += self._emsgs(fragment.end)
            self._pending += fragment.data
            end = fragment.end
            if (
                end is not None
                and self._segment_start is not None
                and end - self._segment_start >= self.segment_target
            ):
                self._finish_segment(end)

    def _opened(self, keyframe: MediaFrame) -> None:
        """Parameter sets (or the clock) changed, or this is the first keyframe: a new init
        segment, and a discontinuity in the playlist."""
        self._init_version += 1
        self._pending_discontinuity = self._init_version > 0

    def _closed(self) -> None:
        """What the closed muxer had makes a last (short) segment."""
        if self._segment_start is not None and self._pending:
            self._finish_segment(self.video_end)
        self._pending.clear()
        self._segment_start = None
        self.telemetry_dropped += len(self._events)  # the muxer closed before their fragment
        self._events.clear()

    def _finish_segment(self, end: Fraction) -> None:
        """The open segment ends at ``end`` (seconds on the muxer's timeline)."""
        assert self._segment_start is not None
        duration = float(end - self._segment_start)
        segment = HlsSegment(
            sequence=self._sequence,
            duration=duration,
            data=bytes(self._pending),
            init=self._init_version,
            discontinuity=self._pending_discontinuity,
        )
        self._pending.clear()
        self._pending_discontinuity = False
        self._sequence += 1
        self._discontinuities += segment.discontinuity
        self._segment_start = None
        # The target duration may grow (a source with long GOPs), never shrink.
        self._target_duration = max(self._target_duration, round(duration))
        self.segments.append(segment)
        # Init segments no kept segment uses any more.
        oldest = self.segments[0].init
        for version in [v for v in self.inits if v < oldest]:
            del self.inits[version]
        self.first_segment.set()

    # --- what the HTTP side reads -----------------------------------------------------------

    @property
    def next_sequence(self) -> int:
        return self._sequence

    def touch(self) -> None:
        self.last_request = self._clock()

    def idle_for(self) -> float:
        return self._clock() - self.last_request

    def playlist(self) -> str:
        listed = list(self.segments)[-self.window :]
        discontinuity_sequence = self._discontinuities - sum(s.discontinuity for s in listed)
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:7",
            f"#EXT-X-TARGETDURATION:{self._target_duration}",
            f"#EXT-X-MEDIA-SEQUENCE:{listed[0].sequence if listed else self._sequence}",
            f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity_sequence}",
            "#EXT-X-INDEPENDENT-SEGMENTS",
        ]
        init: int | None = None
        for segment in listed:
            if segment.discontinuity:
                lines.append("#EXT-X-DISCONTINUITY")
            if segment.init != init:
                init = segment.init
                lines.append(f'#EXT-X-MAP:URI="init-{init}.mp4"')
            lines.append(f"#EXTINF:{segment.duration:.3f},")
            lines.append(f"seg-{segment.sequence}.m4s")
        return "\n".join(lines) + "\n"

    def segment(self, sequence: int) -> bytes | None:
        for segment in self.segments:
            if segment.sequence == sequence:
                return segment.data
        return None

    # --- lifecycle --------------------------------------------------------------------------

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.telemetry is not None:
            self.telemetry.close()
        self._unsubscribe()
        self._drop_muxer()
        self.first_segment.set()  # wake waiting requests: they see `closed`

    def close(self) -> None:
        """Stop at once (the task ends at its next step)."""
        self._task.cancel()
        self._close()

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._close()

    # StreamListener
    def on_stream_end(self, info: str | None) -> None:
        self.end_info = info
        super().on_stream_end(info)  # `_run` takes what is queued, then ends


class HlsNotFound(Exception):
    """No live H.264 stream of that name, or no such segment: HTTP 404."""


class HlsNotReady(Exception):
    """The stream is live but its first segment did not come in time: HTTP 503."""


class HlsService:
    """HLS packaging on demand for the streams of a registry."""

    def __init__(
        self,
        registry: StreamRegistry,
        *,
        segment_target: float = 1.0,
        window: int = 6,
        idle_timeout: float = 30.0,
        first_segment_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        queue_frames: int = SUBSCRIPTION_FRAMES,
    ) -> None:
        if segment_target <= 0 or window < 1 or idle_timeout <= 0:
            raise ValueError("segment_target and idle_timeout must be positive, window at least 1")
        self.registry = registry
        self.segment_target = segment_target
        self.window = window
        self.idle_timeout = idle_timeout
        self.queue_frames = queue_frames
        # A first segment needs a keyframe, then segment_target, then the next keyframe.
        self.first_segment_timeout = (
            first_segment_timeout if first_segment_timeout is not None else max(4 * segment_target, 6.0)
        )
        self.packagers: dict[str, HlsPackager] = {}
        # On-demand sources (drone cameras, rtsp:// names) this service counts as a viewer
        # while it packages them; a start in progress is shared by concurrent requests.
        self._viewings: dict[str, Viewing] = {}
        self._starting: dict[str, asyncio.Future[object]] = {}
        self._clock = clock
        self._reaper: asyncio.Task[None] | None = None

    def _live_stream(self, name: str) -> Stream:
        stream = self.registry.get(name)
        if stream is None:
            raise HlsNotFound(f"no live stream {name!r}")
        if stream.video_codec is None or stream.video_codec.name != "H264":
            raise HlsNotFound(f"stream {name!r} has no H.264 video")
        return stream

    def _packager(self, name: str, *, start: bool) -> HlsPackager:
        stream = self._live_stream(name)
        packager = self.packagers.get(stream.name)
        if packager is not None and (packager.closed or packager.stream is not stream):
            # The stream ended or was replaced by another of the same name.
            del self.packagers[stream.name]
            packager.close()
            packager = None
        if packager is None:
            if not start:
                raise HlsNotFound(f"stream {name!r} is not being packaged: load its playlist first")
            packager = HlsPackager(
                stream,
                segment_target=self.segment_target,
                window=self.window,
                clock=self._clock,
                queue_frames=self.queue_frames,
                telemetry=self.registry.telemetry,
            )
            self.packagers[stream.name] = packager
            log.info("hls_started", stream=stream.name)
            if self._reaper is None or self._reaper.done():
                self._reaper = asyncio.create_task(self._reap(), name="hls-reaper")
        packager.touch()
        return packager

    async def playlist(self, name: str) -> str:
        await self._start_on_demand(name)
        packager = self._packager(name, start=True)
        if not packager.segments:
            try:
                async with asyncio.timeout(self.first_segment_timeout):
                    await packager.first_segment.wait()
            except TimeoutError:
                raise HlsNotReady(f"stream {name!r} has no segment yet") from None
            if not packager.segments:
                raise HlsNotFound(f"stream {name!r} ended")
        return packager.playlist()

    def init_segment(self, name: str, version: int) -> bytes:
        init = self._packager(name, start=False).inits.get(version)
        if init is None:
            raise HlsNotFound(f"no init segment {version} for {name!r}")
        return init

    def media_segment(self, name: str, sequence: int) -> bytes:
        data = self._packager(name, start=False).segment(sequence)
        if data is None:
            raise HlsNotFound(f"no segment {sequence} for {name!r} (out of the window)")
        return data

    async def _start_on_demand(self, name: str) -> None:
        """A drone camera (or an rtsp:// name) nobody watches yet: start it, as a player
        would, and wait for it to play."""
        resolved = self.registry.resolve(name)
        if resolved in self._viewings or self.registry.on_demand_for(name) is None:
            return
        starting = self._starting.get(resolved)
        if starting is None:
            viewing = self.registry.viewing(name)
            starting = self._starting[resolved] = asyncio.ensure_future(viewing.open())
            starting.add_done_callback(lambda done: self._started(resolved, viewing, done))
        try:
            await asyncio.shield(starting)
        except StreamUnavailable as exc:
            raise HlsNotFound(exc.info) from None

    def _started(self, name: str, viewing: Viewing, done: asyncio.Future[object]) -> None:
        self._starting.pop(name, None)
        if not done.cancelled() and done.exception() is None:
            self._viewings[name] = viewing

    def _unwant(self, name: str) -> None:
        viewing = self._viewings.pop(name, None)
        if viewing is not None:
            viewing.close()

    async def _reap(self) -> None:
        """Stop packaging streams nobody reads and streams that ended."""
        period = min(1.0, self.idle_timeout / 4)
        while self.packagers:
            await asyncio.sleep(period)
            for name, packager in list(self.packagers.items()):
                idle = packager.idle_for() > self.idle_timeout
                if packager.closed or idle:
                    del self.packagers[name]
                    await packager.stop()
                    self._unwant(name)
                    log.info("hls_stopped", stream=name, reason="idle" if idle else "stream ended")

    async def stop(self) -> None:
        for name in list(self._viewings):
            self._unwant(name)
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        packagers, self.packagers = list(self.packagers.values()), {}
        for packager in packagers:
            await packager.stop()

    def figures(self) -> dict[str, Any]:
        return {
            "streams": sorted(self.packagers),
            "segments": {
                name: p.segments[-1].sequence + 1 if p.segments else 0 for name, p in self.packagers.items()
            },
        }
