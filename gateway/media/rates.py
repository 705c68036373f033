"""Rate figures of a media flow: a meter for bytes and frames, and the one-second report
that publishers' and viewers' owners turn into their protocol's metrics messages."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VideoRates:
    bit_rate: int  # bit/s over the last interval
    fps: int
    nack: int  # NACK feedback packets, since the flow started
    pli: int  # PLI/FIR keyframe requests, since the flow started
    lost_packets: int  # RTP packets lost, from receiver reports, since the flow started
    width: int
    height: int


class RateMeter:
    """Counts bytes and frames; `sample()` gives bit/s and frames/s over the last second.

    Reading does not reset anything, so the 1 Hz metrics of a WebSocket publisher and an
    HTTP API poll can look at the same meter."""

    __slots__ = ("_clock", "_recent", "_window_bytes", "total_bytes", "total_frames")

    WINDOW = 1.0  # seconds
    TRIM_AT = 256  # entries kept before `add` trims (more than a second of any frame rate)

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._recent: deque[tuple[float, int]] = deque()  # (when, bytes) inside the window
        self._window_bytes = 0
        self.total_bytes = 0
        self.total_frames = 0

    def add(self, size: int) -> None:
        now = self._clock()
        self._recent.append((now, size))
        self._window_bytes += size
        self.total_bytes += size
        self.total_frames += 1
        if len(self._recent) > self.TRIM_AT:  # else `sample` trims: one call less per frame
            self._trim(now)

    def sample(self) -> tuple[int, int]:
        self._trim(self._clock())
        return int(self._window_bytes * 8 / self.WINDOW), round(len(self._recent) / self.WINDOW)

    def _trim(self, now: float) -> None:
        recent, oldest = self._recent, now - self.WINDOW
        while recent and recent[0][0] <= oldest:
            self._window_bytes -= recent.popleft()[1]
