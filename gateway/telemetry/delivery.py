"""One receiver's telemetry: its subscription at the hub behind a newest-wins rate limit.

The receiver's ``send`` gets each `TelemetryMessage` that passes, at most ``rate`` per
second; a message that must wait is replaced by a newer one, and goes (or its successor
does) when the interval is up. One timer at most per receiver, none while idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.telemetry.hub import TelemetryHub, TelemetryMessage
from gateway.telemetry.throttle import Throttle


class RateLimitedTelemetry:
    def __init__(
        self, hub: TelemetryHub, stream: str, rate: float, send: Callable[[TelemetryMessage], None]
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._throttle: Throttle[TelemetryMessage] = Throttle(rate)
        self._send = send
        self._timer: asyncio.TimerHandle | None = None
        self.sent = 0
        self._subscription = hub.subscribe(stream, self.offer)

    @property
    def replaced(self) -> int:
        """Messages a newer one replaced while they waited (not sent)."""
        return self._throttle.replaced

    def close(self) -> None:
        self._subscription.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def offer(self, message: TelemetryMessage) -> None:
        """A message for this receiver (from the hub, or the stream's current sample when the
        receiver becomes able to take one)."""
        ready = self._throttle.offer(message, self._loop.time())
        if ready is not None:
            self._deliver(ready)
        elif self._timer is None:
            self._schedule()

    def _schedule(self) -> None:
        due = self._throttle.next_due
        if due is not None:
            self._timer = self._loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        ready = self._throttle.due(self._loop.time())
        if ready is None:
            self._schedule()  # woken a hair early
        else:
            self._deliver(ready)

    def _deliver(self, message: TelemetryMessage) -> None:
        self.sent += 1
        self._send(message)
