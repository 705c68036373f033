"""HLS out: every live H.264 Stream as a sliding-window live playlist of fMP4 (CMAF) segments,
remuxed in memory with PyAV, never transcoded.

A stream is packaged only while someone reads it: the first playlist request subscribes an
`HlsPackager` to the Stream; it stops when nobody asked for the stream for ``idle_timeout``
seconds, or when the stream ends. One fragmented-MP4 muxer per packager turns access units
into ``moof``+``mdat`` fragments (one per GOP, `frag_keyframe`); a segment is cut at the first
keyframe at least ``segment_target`` seconds after its start, so every segment starts with an
IDR. The init segment (``ftyp``+``moov``) is what the muxer writes before the first fragment.
Nothing touches the disk: segment names are built here, never taken from a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av

from gateway.log import get_logger
from gateway.media.h264 import NAL_PPS, NAL_SPS, iter_nal_units, sps_dimensions
from gateway.media.registry import StreamRegistry, StreamUnavailable
from gateway.media.stream import MediaFrame, Stream, Subscription

log = get_logger(__name__)

# empty_moov: the init segment comes first and needs no sample table; default_base_moof:
# offsets relative to each moof, as CMAF/hls.js expect; skip_trailer: no mfra index at the
# end (a closed muxer only flushes its last fragment).
FMP4_FLAGS = "frag_keyframe+empty_moov+default_base_moof+skip_trailer"
# Segments kept beyond the playlist window: a player that loaded the previous playlist may
# still ask for them (RFC 8216 6.2.2).
EXTRA_SEGMENTS = 2
SUBSCRIPTION_FRAMES = 300  # about 10 s of 30 fps video: remuxing never falls behind that far


class _ByteSink:
    """The muxer's output file: collects what it writes (a non-seekable stream for PyAV)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


def parameter_sets(access_unit: bytes) -> tuple[bytes | None, bytes | None]:
    """The SPS and PPS NAL units of an access unit (a keyframe carries both on a Stream)."""
    sps = pps = None
    for nal in iter_nal_units(access_unit):
        kind = nal[0] & 0x1F
        if kind == NAL_SPS:
            sps = nal
        elif kind == NAL_PPS:
            pps = nal
    return sps, pps


class Fmp4Muxer:
    """Pre-encoded H.264 Annex-B access units into fragmented MP4, in memory.

    `write` returns the complete fragments the call produced (a fragment is flushed when the
    next keyframe, or ``fragment_seconds`` of video, arrives); `header` holds the ``ftyp`` and
    ``moov`` once the first access unit went in (the avcC comes from its SPS/PPS). Timestamps
    are in ``time_base`` and must increase; the muxer starts its timeline at the first one."""

    def __init__(
        self, width: int, height: int, time_base: Fraction, *, fragment_seconds: float | None = None
    ) -> None:
        self.time_base = time_base
        self.header: bytes | None = None
        self._sink = _ByteSink()
        options = {"movflags": FMP4_FLAGS}
        if fragment_seconds is not None:
            # Bounds a fragment (what a crash can lose) when keyframes are far apart.
            options["frag_duration"] = str(round(fragment_seconds * 1_000_000))
        self._container: Any = av.open(self._sink, "w", format="mp4", options=options)
        self._stream = self._container.add_mux_stream("h264", width=width, height=height)
        self._stream.time_base = time_base
        self._origin: int | None = None

    def write(self, data: bytes, pts: int, duration: int, keyframe: bool) -> bytes:
        if self._origin is None:
            self._origin = pts
        packet = av.Packet(data)
        packet.pts = packet.dts = pts - self._origin
        packet.duration = max(1, duration)
        packet.time_base = self.time_base
        packet.is_keyframe = keyframe
        packet.stream = self._stream
        self._container.mux_one(packet)
        if self.header is None:
            # The first packet only opens the muxer: what it wrote is the header.
            self.header = self._sink.take()
        return self._sink.take()

    def close(self) -> bytes:
        """Flush the last fragment and free the muxer; returns the fragment's bytes."""
        with contextlib.suppress(av.FFmpegError, ValueError):
            self._container.close()
        return self._sink.take() if self.header is not None else b""


@dataclass(frozen=True, slots=True)
class HlsSegment:
    sequence: int
    duration: float  # seconds
    data: bytes
    init: int  # the init segment (version) it is decoded with
    discontinuity: bool  # a new muxer (new parameter sets) starts here


class HlsPackager:
    """One Stream packaged as HLS: its subscription, muxer, init segments and segment window."""

    def __init__(
        self,
        stream: Stream,
        *,
        segment_target: float,
        window: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
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
        self._muxer: Fmp4Muxer | None = None
        self._init_version = -1
        self._params: tuple[bytes, bytes] | None = None
        self._held: MediaFrame | None = None  # muxed when the next frame gives its duration
        self._segment_start: int | None = None  # pts of the open segment's first frame
        self._pending = bytearray()  # fragments of the open segment
        self._pending_discontinuity = False
        self._subscription: Subscription = stream.subscribe(self, SUBSCRIPTION_FRAMES)
        # Audio is not packaged: drop it without queueing.
        self._subscription.audio.attach(lambda frame: True)
        self._task = asyncio.create_task(self._run(), name=f"hls:{stream.name}")

    # --- frames -----------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while (frame := await self._subscription.video.get()) is not None:
                try:
                    self._on_frame(frame)
                except (av.FFmpegError, ValueError) as exc:
                    # A frame the muxer refuses (corrupt parameter sets): start over at the
                    # next keyframe rather than stop serving the stream.
                    log.warning("hls_mux_error", stream=self.stream.name, error=str(exc)[:200])
                    self._restart_muxer()
        finally:
            self._close()

    def _on_frame(self, frame: MediaFrame) -> None:
        if frame.codec != "H264":
            return
        if frame.keyframe:
            sps, pps = parameter_sets(frame.data)
            if sps is None or pps is None:
                return  # not decodable alone; wait for one that is
            if self._muxer is None or self._params != (sps, pps) or frame.time_base != self._muxer.time_base:
                self._new_muxer(frame, sps, pps)
        if self._muxer is None:
            return  # waiting for a keyframe
        held = self._held
        if held is not None:
            if frame.pts <= held.pts:
                return  # a timestamp going back: the MP4 timeline cannot; skip it
            self._mux(held, frame.pts - held.pts)
        self._held = frame

    def _mux(self, frame: MediaFrame, duration: int) -> None:
        assert self._muxer is not None
        start = self._segment_start
        cut = (
            frame.keyframe
            and start is not None
            and (frame.pts - start) * frame.time_base >= self.segment_target
        )
        # The bytes this write produces are the fragments before `frame`: the open segment.
        self._pending += self._muxer.write(frame.data, frame.pts, duration, frame.keyframe)
        if self._init_version not in self.inits and self._muxer.header is not None:
            self.inits[self._init_version] = self._muxer.header
        if cut:
            self._finish_segment(frame.pts, frame.time_base)
        if self._segment_start is None or cut:
            self._segment_start = frame.pts

    def _new_muxer(self, keyframe: MediaFrame, sps: bytes, pps: bytes) -> None:
        """Parameter sets (or the clock) changed, or this is the first keyframe: a new init
        segment, and a discontinuity in the playlist."""
        self._restart_muxer()
        try:
            width, height = sps_dimensions(sps)
        except (ValueError, IndexError):
            width, height = self.stream.width, self.stream.height
        self._muxer = Fmp4Muxer(width, height, keyframe.time_base)
        self._params = (sps, pps)
        self._init_version += 1
        self._pending_discontinuity = self._init_version > 0

    def _restart_muxer(self) -> None:
        """Close the muxer: what it has makes a last (short) segment; the next keyframe
        starts a new muxer."""
        muxer, held = self._muxer, self._held
        self._muxer, self._held, self._params = None, None, None
        if muxer is None:
            return
        if held is not None:
            # Its duration is unknown: as long as the frame before it, about.
            self._pending += muxer.write(held.data, held.pts, self._frame_duration(held), held.keyframe)
            end_pts = held.pts + self._frame_duration(held)
        else:
            end_pts = self._segment_start or 0
        self._pending += muxer.close()
        if self._segment_start is not None and self._pending:
            self._finish_segment(end_pts, muxer.time_base)
        self._pending.clear()
        self._segment_start = None

    def _frame_duration(self, frame: MediaFrame) -> int:
        return max(1, round(Fraction(1, 30) / frame.time_base))

    def _finish_segment(self, end_pts: int, time_base: Fraction) -> None:
        assert self._segment_start is not None
        duration = float((end_pts - self._segment_start) * time_base)
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
        self.stream.unsubscribe(self._subscription)
        muxer, self._muxer = self._muxer, None
        if muxer is not None:
            muxer.close()
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
    def on_video_format(self, width: int, height: int) -> None:
        """A new size comes with new parameter sets, which start a new muxer."""

    def on_stream_event(self, event_type: str, payload: Any) -> None:
        """HLS carries no stream events."""

    def on_stream_end(self, info: str | None) -> None:
        self.end_info = info  # the queue is closed: `_run` ends


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
    ) -> None:
        if segment_target <= 0 or window < 1 or idle_timeout <= 0:
            raise ValueError("segment_target and idle_timeout must be positive, window at least 1")
        self.registry = registry
        self.segment_target = segment_target
        self.window = window
        self.idle_timeout = idle_timeout
        # A first segment needs a keyframe, then segment_target, then the next keyframe.
        self.first_segment_timeout = (
            first_segment_timeout if first_segment_timeout is not None else max(4 * segment_target, 6.0)
        )
        self.packagers: dict[str, HlsPackager] = {}
        # On-demand sources (drone cameras, rtsp:// names) this service counts as a viewer
        # while it packages them; a start in progress is shared by concurrent requests.
        self._wanted: set[str] = set()
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
                stream, segment_target=self.segment_target, window=self.window, clock=self._clock
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
        if resolved in self._wanted or self.registry.on_demand_for(name) is None:
            return
        starting = self._starting.get(resolved)
        if starting is None:
            starting = self._starting[resolved] = asyncio.ensure_future(self.registry.want(name))
            starting.add_done_callback(lambda done: self._started(resolved, done))
        try:
            await asyncio.shield(starting)
        except StreamUnavailable as exc:
            raise HlsNotFound(exc.info) from None

    def _started(self, name: str, done: asyncio.Future[object]) -> None:
        self._starting.pop(name, None)
        if not done.cancelled() and done.exception() is None:
            self._wanted.add(name)

    def _unwant(self, name: str) -> None:
        if name in self._wanted:
            self._wanted.discard(name)
            self.registry.unwant(name)

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
        for name in list(self._wanted):
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
