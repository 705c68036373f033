"""The remuxing both fMP4 sinks share (HLS packaging, the DVR): a Stream's H.264 video and
Opus audio into fragmented MP4, one `Fmp4Muxer` at a time, never transcoded.

A `Remuxer` subscribes to the Stream and takes its frames in the order they came
(`ArrivalQueue`). Each video frame is held until the next one gives its duration. A new
muxer starts at a keyframe that carries parameter sets when there is none yet, when the
parameter sets or the clock changed, or when the sink wants a cut (`_cut_due`, the DVR's
file length); the old one is closed first, ending with the frame before that keyframe.
Opus goes on the video's timeline (`Fmp4Muxer.write_arrival`); G.711 cannot go in MP4 and
is left out, logged once. A frame the muxer refuses, or an error the sink raises in
`_check`, closes the muxer: a new one starts at the next keyframe. The sink does what it
does with the fragments in `_take`.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import av

from gateway.log import get_logger
from gateway.media.h264 import parameter_sets, sps_dimensions
from gateway.media.sinks.fmp4 import Arrival, ArrivalQueue, Fmp4Muxer, Fragment, muxable_audio
from gateway.media.stream import MediaFrame, Stream, Subscription

log = get_logger(__name__)

# Errors that cost the current muxer (or file), not the sink: a frame the muxer refuses
# (corrupt parameter sets), a disk that is full or falls behind.
REMUX_ERRORS = (av.FFmpegError, ValueError, OSError)


class Remuxer:
    """One Stream remuxed into fragmented MP4 for a sink; see the module's docstring."""

    # The sink's "audio left out" event and what it says (its files, its segments).
    audio_left_out_event = "remux_audio_left_out"
    audio_left_out_reason = "MP4 carries no such audio: the output is video only"
    # Whether the cached keyframe replayed to a joining subscriber is left out (it shows
    # an earlier moment: a recording starts at the live one).
    skip_replay = False

    def __init__(self, stream: Stream, *, fragment_seconds: float | None = None) -> None:
        self.stream = stream
        self.fragment_seconds = fragment_seconds
        self.muxer: Fmp4Muxer | None = None
        self.video_end = Fraction(0)  # seconds on the muxer's timeline where its video ends
        self.subscription: Subscription | None = None
        self.arrivals: ArrivalQueue | None = None
        self._params: tuple[bytes, bytes] | None = None
        self._held: MediaFrame | None = None  # muxed when the next frame gives its duration
        self._audio_left_out = False  # said once

    # --- what the sink implements -----------------------------------------------------------

    def _take(self, muxer: Fmp4Muxer, fragments: list[Fragment]) -> None:
        """Complete fragments of ``muxer`` (its `header` is set once there are any)."""
        raise NotImplementedError

    def _cut_due(self, keyframe: MediaFrame) -> bool:
        """Whether this keyframe starts a new muxer although nothing changed."""
        return False

    def _opened(self, keyframe: MediaFrame) -> None:
        """A new muxer (`muxer`) starts with ``keyframe``."""

    def _closed(self) -> None:
        """The muxer was closed (its last fragments taken), or there was none."""

    def _check(self, frame: MediaFrame) -> None:
        """Before each frame: raise one of `REMUX_ERRORS` to close the muxer."""

    def _failed(self, exc: Exception) -> None:
        """One of `REMUX_ERRORS` closed the muxer (say so)."""

    # --- frames -----------------------------------------------------------------------------

    def _subscribe(self, listener: Any, queue_frames: int) -> None:
        """Subscribe ``listener`` (the sink) with ``queue_frames`` of video; the arrival queue
        holds twice that (video and audio)."""
        self.subscription = self.stream.subscribe(listener, queue_frames)
        self.arrivals = ArrivalQueue(self.subscription, 2 * queue_frames)

    def _unsubscribe(self) -> None:
        if self.subscription is not None:
            self.stream.unsubscribe(self.subscription)
        if self.arrivals is not None:
            self.arrivals.close()

    async def _remux(self) -> None:
        """Take the frames until the stream ends (or the arrival queue is closed)."""
        assert self.arrivals is not None
        while (arrival := await self.arrivals.get()) is not None:
            try:
                self._check(arrival.frame)
                if arrival.frame.kind == "video":
                    self._on_video(arrival.frame)
                else:
                    self._on_audio(arrival)
            except REMUX_ERRORS as exc:
                self._failed(exc)
                self._close_muxer()

    def _on_video(self, frame: MediaFrame) -> None:
        if frame.codec != "H264" or (self.skip_replay and frame.replay):
            return
        if frame.keyframe:
            sps, pps = parameter_sets(frame.data)
            if (
                self.muxer is None
                or self._params != (sps, pps)
                or frame.time_base != self.muxer.time_base
                or self._cut_due(frame)
            ):
                # The old muxer ends with the frame before this one (given its duration).
                self._close_muxer(flush_held=True, next_pts=frame.pts)
                if sps is None or pps is None:
                    return  # not decodable alone: wait for a keyframe that is
                self._open(frame, sps, pps)
        muxer, held = self.muxer, self._held
        if muxer is None:
            return  # waiting for a keyframe
        if held is not None:
            if frame.pts <= held.pts:
                return  # a timestamp going back: the MP4 timeline cannot; skip it
            self._mux(muxer, held, frame.pts - held.pts)
        self._held = frame

    def _on_audio(self, arrival: Arrival) -> None:
        """An Opus packet, on the video's timeline; none before the first keyframe."""
        if self.muxer is not None:
            self._take(self.muxer, self.muxer.write_arrival(arrival))

    def _mux(self, muxer: Fmp4Muxer, frame: MediaFrame, duration: int) -> None:
        self._take(muxer, muxer.write(frame.data, frame.pts, duration, frame.keyframe))
        assert muxer.origin is not None
        self.video_end = (frame.pts + duration - muxer.origin) * frame.time_base

    def _open(self, keyframe: MediaFrame, sps: bytes, pps: bytes) -> None:
        try:
            width, height = sps_dimensions(sps)
        except (ValueError, IndexError):
            width, height = self.stream.width, self.stream.height
        self.muxer = Fmp4Muxer(
            width,
            height,
            keyframe.time_base,
            audio=self._with_audio(),
            origin=keyframe.pts,
            fragment_seconds=self.fragment_seconds,
        )
        self._params = (sps, pps)
        self.video_end = Fraction(0)
        self._opened(keyframe)

    def _with_audio(self) -> bool:
        """Whether the next muxer has the stream's audio (Opus: yes)."""
        codec = self.stream.audio_codec
        if codec is not None and not muxable_audio(self.stream) and not self._audio_left_out:
            self._audio_left_out = True
            log.info(
                self.audio_left_out_event,
                stream=self.stream.name,
                codec=codec.name,
                reason=self.audio_left_out_reason,
            )
        return muxable_audio(self.stream)

    def _close_muxer(self, *, flush_held: bool = False, next_pts: int | None = None) -> None:
        """Close the muxer, its last fragments to `_take`; with ``flush_held`` the held
        frame goes in first, lasting until ``next_pts`` (None, or not after it: no next
        frame gives its duration). The next keyframe starts a new muxer."""
        muxer, held = self.muxer, self._held
        self.muxer, self._params, self._held = None, None, None
        try:
            if muxer is not None:
                try:
                    if flush_held and held is not None:
                        if next_pts is not None and next_pts > held.pts:
                            duration = next_pts - held.pts
                        else:  # unknown: as long as a frame at 30 fps, about
                            duration = max(1, round(Fraction(1, 30) / held.time_base))
                        self._mux(muxer, held, duration)
                finally:
                    self._take(muxer, muxer.close())
        finally:
            self._closed()

    def _drop_muxer(self) -> None:
        """Close the muxer and leave what it still had (nobody will read it)."""
        muxer, self.muxer, self._params, self._held = self.muxer, None, None, None
        if muxer is not None:
            muxer.close()

    # --- StreamListener ---------------------------------------------------------------------

    def on_video_format(self, width: int, height: int) -> None:
        """A new size comes with new parameter sets, which start a new muxer."""

    def on_stream_event(self, event_type: str, payload: Any) -> None:
        """MP4 carries no stream events."""

    def on_stream_end(self, info: str | None) -> None:
        """`_remux` takes what is queued, then ends."""
        if self.arrivals is not None:
            self.arrivals.close()
