"""A remuxing sink's telemetry (the DVR's sidecar, HLS's ``emsg``), in the order of its video.

The hub delivers a sample the moment it arrives, stamped with the stream's latest video
timestamp (`TelemetryMessage.stream_pts`); the sink's remuxer takes frames later, from its
queue. So that a sample goes into the file (or fragment) that holds the frame it was stamped
with, samples wait here until the remuxer reaches a video frame after that stamp
(`due`): the frame the sample came after is then in the muxer, and a file cut at the next
keyframe has not happened yet.
"""

from __future__ import annotations

from collections import deque

from gateway.telemetry.hub import TelemetryHub, TelemetryMessage

# Samples waiting for their frame: about as long as the remuxer's frame queue at 30 Hz.
MAX_WAITING = 1024


class TelemetryTrack:
    """The samples of one stream for one sink, held until the sink's video reaches them."""

    def __init__(self, hub: TelemetryHub, stream: str, *, max_waiting: int = MAX_WAITING) -> None:
        self.max_waiting = max_waiting
        self.received = 0
        self.dropped = 0  # no video to place it on yet, or too many waiting
        self._waiting: deque[tuple[int, str]] = deque()  # (stream pts, 90 kHz; the sample's JSON)
        self._last: int | None = None  # the last video frame's pts seen by `due`, 90 kHz
        self._subscription = hub.subscribe(stream, self._deliver)

    def _deliver(self, message: TelemetryMessage) -> None:
        self.received += 1
        if message.stream_pts is None:
            self.dropped += 1  # before any video: nothing to time it by
            return
        if len(self._waiting) >= self.max_waiting:
            self._waiting.popleft()
            self.dropped += 1
        self._waiting.append((message.stream_pts, message.body))

    def due(self, pts: int) -> list[tuple[int, str]]:
        """The samples that came before the video frame at ``pts`` (90 kHz), oldest first.
        Where the video's timeline went back (a new source), all that wait: the frames they
        were stamped with were before this one."""
        waiting = self._waiting
        back = self._last is not None and pts < self._last
        self._last = pts
        out: list[tuple[int, str]] = []
        while waiting and (back or waiting[0][0] < pts):
            out.append(waiting.popleft())
        return out

    def up_to(self, pts: int) -> list[tuple[int, str]]:
        """The samples stamped at or before ``pts`` (the last frame, when the sink closes)."""
        waiting = self._waiting
        out: list[tuple[int, str]] = []
        while waiting and waiting[0][0] <= pts:
            out.append(waiting.popleft())
        return out

    @property
    def last_pts(self) -> int | None:
        return self._last

    def close(self) -> None:
        self._subscription.close()
        self._waiting.clear()
