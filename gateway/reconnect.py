"""How long to wait before connecting again: capped exponential backoff, the same for every
link skyrelay keeps up (the MQTT broker, RTSP pulls, RTMP republishes). Sans-I/O: the caller
sleeps."""

from __future__ import annotations


class ReconnectDelay:
    """``first``, twice that, and so on up to ``longest``; back to ``first`` after a
    connection that worked (`reset`)."""

    def __init__(self, first: float = 1.0, longest: float = 30.0) -> None:
        if not 0 < first <= longest:
            raise ValueError("reconnect delays must be (first, longest) with 0 < first <= longest")
        self.first, self.longest = first, longest
        self._next = first

    def next(self) -> float:
        """The delay before the next attempt; the one after it doubles, up to ``longest``."""
        delay = self._next
        self._next = min(delay * 2, self.longest)
        return delay

    def reset(self) -> None:
        self._next = self.first
