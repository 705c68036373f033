"""The RTCP sender reports of every fast fan-out viewer of this process, from one timer.

aiortc runs one task per sender that wakes every 0.5 to 1.5 s (RFC 3550's randomised
interval), builds a sender report and an SDES packet and sends them through a chain of
coroutines; for a process with hundreds of viewers that is hundreds of task wake-ups a
second. Here one `SenderReports` per event loop keeps when each viewer's next report is
due (the same interval, drawn the same way) and sends every due one from one timer
callback, synchronously: the writer packs the report (`DirectRtpWriter.send_sender_report`,
the same bytes aiortc's loop sends), protects it and writes it to the viewer's socket. The
aiortc sender's own loop then only sends the BYE at stop (`aiortc_compat.hold_sender_reports`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import weakref
from typing import Protocol

# aiortc's interval: uniform in [0.5, 1.5] s. A timer callback also sends the reports due
# within SLACK after it (one wake-up for several viewers): intervals of [0.5 - SLACK, 1.5] s.
MIN_INTERVAL = 0.5
SLACK = 0.05


class ReportSource(Protocol):
    def send_sender_report(self) -> bool:
        """Send one report now; False when the viewer is gone (it is then forgotten)."""
        ...


def next_interval() -> float:
    return MIN_INTERVAL + random.random()


class SenderReports:
    """When each viewer's next report is due, and the one timer that sends them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: list[tuple[float, int, ReportSource]] = []  # a heap
        self._order = itertools.count()  # ties by arrival, never by comparing sources
        self._timer: asyncio.TimerHandle | None = None
        self.sent = 0

    def __len__(self) -> int:
        return len(self._due)

    def add(self, source: ReportSource) -> None:
        """Send ``source``'s reports from now on, the first one interval from now."""
        self._push(self._loop.time(), source)
        self._arm()

    def _push(self, now: float, source: ReportSource) -> None:
        heapq.heappush(self._due, (now + next_interval(), next(self._order), source))

    def _arm(self) -> None:
        if not self._due:
            return
        when = self._due[0][0]
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._send_due)

    def _send_due(self) -> None:
        self._timer = None
        now = self._loop.time()
        due = self._due
        while due and due[0][0] <= now + SLACK:
            source = heapq.heappop(due)[2]
            if source.send_sender_report():
                self.sent += 1
                self._push(now, source)
        self._arm()


_PER_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SenderReports] = weakref.WeakKeyDictionary()


def sender_reports() -> SenderReports:
    """The running event loop's `SenderReports` (each worker has one loop)."""
    loop = asyncio.get_running_loop()
    reports = _PER_LOOP.get(loop)
    if reports is None:
        reports = _PER_LOOP[loop] = SenderReports(loop)
    return reports
