"""Rate figures of a media flow: a meter for bytes and frames, and the one-second report
that publishers' and viewers' owners turn into their protocol's metrics messages."""

from __future__ import annotations

import time
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
    """Counts bytes and frames; `sample()` gives bit/s and frames/s since the last sample."""

    __slots__ = ("_bytes", "_frames", "_since", "total_bytes", "total_frames")

    def __init__(self) -> None:
        self._bytes = 0
        self._frames = 0
        self._since = time.monotonic()
        self.total_bytes = 0
        self.total_frames = 0

    def add(self, size: int) -> None:
        self._bytes += size
        self._frames += 1

    @property
    def pending_frames(self) -> int:
        """Frames counted since the last sample."""
        return self._frames

    def sample(self) -> tuple[int, int]:
        now = time.monotonic()
        elapsed = max(now - self._since, 1e-3)
        bits, frames = self._bytes * 8, self._frames
        self.total_bytes += self._bytes
        self.total_frames += frames
        self._bytes = self._frames = 0
        self._since = now
        return int(bits / elapsed), round(frames / elapsed)
