"""An inactivity deadline for a connection read through an asyncio StreamReader, with one
timer per connection rather than one per read.

A timeout around every ``reader.read()`` (``asyncio.timeout``) creates and cancels a timer
for each chunk a publisher sends: hundreds per second per stream. `ReadWatchdog` instead
keeps one timer armed at ``deadline()``; when it fires and the deadline has moved on (the
owner recorded activity since), it re-arms for the new one. When the deadline has passed,
it stops the reader: reading is paused and the reader sees end of file, so the pending
``read()`` returns ``b""`` and `expired` tells the owner why. The connection then closes as
it would for a peer that hung up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class ReadWatchdog:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        transport: asyncio.BaseTransport,
        deadline: Callable[[], float],
    ) -> None:
        """``deadline()`` gives the loop time (``loop.time()``) by which something must
        happen; it is asked again each time the timer fires."""
        self._reader = reader
        self._transport = transport
        self._deadline = deadline
        self._loop = asyncio.get_running_loop()
        self.expired = False
        self._timer: asyncio.TimerHandle | None = self._loop.call_at(deadline(), self._check)

    def _check(self) -> None:
        self._timer = None
        due = self._deadline()
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check)
            return
        self.expired = True
        if isinstance(self._transport, asyncio.ReadTransport):
            self._transport.pause_reading()  # no data after the end of file
        self._reader.feed_eof()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
