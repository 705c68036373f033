"""A newest-wins rate limit for one receiver, sans I/O.

A receiver gets at most ``rate`` messages per second. A message that comes too soon after
the last one sent waits; a newer one replaces it (telemetry is a state, so only the latest
matters), and the waiting one goes when its time comes. The caller keeps the clock: `offer`
says what to send now, `due` what the waiting time released, `next_due` when to call it.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Throttle(Generic[T]):
    __slots__ = ("interval", "_last_sent", "_held", "replaced")

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate!r}")
        self.interval = 1.0 / rate
        self._last_sent = float("-inf")
        self._held: T | None = None
        self.replaced = 0  # messages a newer one replaced before they went

    @property
    def next_due(self) -> float | None:
        """When the waiting message may go, or None if none waits."""
        return None if self._held is None else self._last_sent + self.interval

    def offer(self, message: T, now: float) -> T | None:
        """``message`` arrived: the message to send now, or None (it waits)."""
        # Compared as `next_due` computes it: `now - last >= interval` can be false at
        # now == last + interval, by rounding.
        if self._held is None and now >= self._last_sent + self.interval:
            self._last_sent = now
            return message
        if self._held is not None:
            self.replaced += 1
        self._held = message
        return None

    def due(self, now: float) -> T | None:
        """The waiting message if its time has come (it is then sent), else None."""
        held = self._held
        if held is None or now < self._last_sent + self.interval:
            return None
        self._held = None
        self._last_sent = now
        return held
