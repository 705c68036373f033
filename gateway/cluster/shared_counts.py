"""The connections each address holds, counted over every worker, for the per-address
limit (`gateway.net_limits.ConnectionLimits`) with ``--workers N``.

A file in the cluster's private directory, mapped by every worker: one 32-bit counter per
(port kind, address slot, worker). Each worker writes only its own counters and reads the
others' (no lock: a counter has one writer; a read a moment stale lets at most one
connection per other worker past the limit). Addresses share a slot when their CRC-32
collides, which can only make the limit stricter for them. The control process zeroes a
dead worker's counters (its connections died with it).
"""

from __future__ import annotations

import mmap
import zlib
from pathlib import Path

# The port kinds the listeners register (`ConnectionLimits.register`).
KINDS = ("websocket", "http", "rtmp", "rtsp", "mqtt", "webrtc_tcp")
SLOTS = 1 << 13
COUNTS_FILE = "connections"  # in the cluster's private directory
_COUNTER = 4


class SharedCounts:
    def __init__(self, path: Path, workers: int, worker: int, *, create: bool = False) -> None:
        self.workers = workers
        self.worker = worker
        size = len(KINDS) * SLOTS * workers * _COUNTER
        if create:
            with path.open("wb") as fh:
                fh.truncate(size)
        with path.open("r+b") as fh:
            self._map = mmap.mmap(fh.fileno(), size)
        self._counts = memoryview(self._map).cast("I")

    def _base(self, kind: str, ip: str) -> int | None:
        if kind not in KINDS:
            return None
        slot = zlib.crc32(ip.encode()) % SLOTS
        return (KINDS.index(kind) * SLOTS + slot) * self.workers

    def elsewhere(self, kind: str, ip: str) -> int:
        """Connections ``ip`` holds on ``kind`` in the other workers."""
        base = self._base(kind, ip)
        if base is None:
            return 0
        counts = self._counts
        return sum(counts[base + w] for w in range(self.workers) if w != self.worker)

    def add_own(self, kind: str, ip: str, delta: int) -> None:
        """This worker opened (+1) or closed (-1) a connection of ``ip`` on ``kind``
        (addresses that share a slot add up there)."""
        base = self._base(kind, ip)
        if base is not None:
            cell = base + self.worker
            self._counts[cell] = max(0, self._counts[cell] + delta)

    def clear_worker(self, worker: int) -> None:
        """Zero every counter of ``worker`` (it died; its connections with it)."""
        counts = self._counts
        for start in range(worker, len(counts), self.workers):
            counts[start] = 0

    def close(self) -> None:
        self._counts.release()
        self._map.close()
