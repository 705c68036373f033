"""The telemetry hub: where samples of a device meet the subscribers of its streams.

Sources (the DJI bridge) `publish` a sample with the names of the streams it belongs to;
sinks (WebRTC viewers, SSE, the recorder, HLS) `subscribe` to a stream name. Like the
stream registry for media, this is the one meeting point: neither side knows the other.

Each sample is encoded to JSON once, and stamped once per stream with the stream's media
clock at arrival (its latest video timestamp, 90 kHz); every subscriber of the stream gets
the same `TelemetryMessage`. A receiver that needs its own RTP timeline (a WebRTC viewer)
makes one string from it with `payload`: nothing else is allocated per receiver.

The hub keeps each device's latest sample, for ``GET /api/devices/{sn}/telemetry`` and the
gauges in /metrics.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from gateway.log import get_logger
from gateway.media.stream import Stream

log = get_logger(__name__)


class TelemetrySample(Protocol):
    """What the hub needs of a sample (the DJI one is `gateway.dji.osd.OsdSample`)."""

    @property
    def sn(self) -> str: ...

    def to_json(self) -> dict[str, Any]: ...

    def gauges(self) -> dict[str, float]: ...


@dataclass(frozen=True, slots=True)
class TelemetryMessage:
    """One sample for one stream, made once and shared by every subscriber of the stream."""

    stream: str
    sample: TelemetrySample
    body: str  # the sample's JSON
    stream_pts: int | None  # the stream's latest video timestamp at arrival, 90 kHz; None: no video
    arrival: float  # time.monotonic() at arrival
    _tail: str = field(default="", repr=False)

    @classmethod
    def make(
        cls, stream: str, sample: TelemetrySample, body: str, stream_pts: int | None, arrival: float
    ) -> TelemetryMessage:
        tail = f',"stream":{orjson.dumps(stream).decode()},"sample":{body}}}'
        return cls(stream, sample, body, stream_pts, arrival, tail)

    def payload(self, rtp_timestamp: int | None) -> str:
        """The JSON every receiver gets: ``{"rtpTimestamp", "stream", "sample"}``, stamped
        with the receiver's own RTP timestamp (None: it has received no video yet)."""
        stamp = "null" if rtp_timestamp is None else str(rtp_timestamp & 0xFFFFFFFF)
        return '{"rtpTimestamp":' + stamp + self._tail

    def media_payload(self) -> str:
        """The payload stamped with the stream's own media clock (receivers without an RTP
        timeline of their own: SSE)."""
        return self.payload(self.stream_pts)


Deliver = Callable[[TelemetryMessage], None]


class TelemetrySubscription:
    __slots__ = ("_hub", "stream", "deliver", "closed")

    def __init__(self, hub: TelemetryHub, stream: str, deliver: Deliver) -> None:
        self._hub, self.stream, self.deliver, self.closed = hub, stream, deliver, False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._hub._unsubscribe(self)


class TelemetryHub:
    def __init__(
        self, find_stream: Callable[[str], Stream | None], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._find_stream = find_stream
        self._clock = clock
        self._subscribers: dict[str, dict[TelemetrySubscription, None]] = {}
        self._latest: dict[str, TelemetrySample] = {}  # by device
        self._latest_by_stream: dict[str, TelemetrySample] = {}
        self.samples = 0  # published
        self.messages = 0  # stream messages made (a sample times the streams with subscribers)
        self.delivered = 0  # handed to subscribers
        self.failed: Counter[str] = Counter()  # subscriber errors, by the subscriber's stream
        self._failure_logged: set[str] = set()

    # --- sources ---------------------------------------------------------------------------

    def publish(self, sample: TelemetrySample, streams: Iterable[str]) -> None:
        """``sample`` arrived; hand it to the subscribers of each of ``streams``."""
        self.samples += 1
        self._latest[sample.sn] = sample
        body: str | None = None
        now = self._clock()
        for name in streams:
            self._latest_by_stream[name] = sample
            subscribers = self._subscribers.get(name)
            if not subscribers:
                continue
            if body is None:
                body = orjson.dumps(sample.to_json()).decode()
            stream = self._find_stream(name)
            pts = stream.media_clock() if stream is not None else None
            message = TelemetryMessage.make(name, sample, body, pts, now)
            self.messages += 1
            for subscription in list(subscribers):
                self.delivered += 1
                try:
                    subscription.deliver(message)
                except Exception as exc:
                    # One broken receiver must not keep the sample from the others.
                    self.failed[name] += 1
                    if name not in self._failure_logged:
                        self._failure_logged.add(name)
                        log.exception("telemetry_delivery_failed", stream=name, error=repr(exc)[:200])

    def forget(self, sn: str, streams: Iterable[str] = ()) -> None:
        """The device is gone: drop its latest sample (and its gauges), also as the latest
        of its ``streams``."""
        self._latest.pop(sn, None)
        for name in streams:
            self._latest_by_stream.pop(name, None)

    # --- sinks -----------------------------------------------------------------------------

    def subscribe(self, stream: str, deliver: Deliver) -> TelemetrySubscription:
        subscription = TelemetrySubscription(self, stream, deliver)
        self._subscribers.setdefault(stream, {})[subscription] = None
        return subscription

    def latest(self, sn: str) -> TelemetrySample | None:
        """The latest sample of device ``sn``."""
        return self._latest.get(sn)

    def current(self, stream: str) -> TelemetryMessage | None:
        """The latest sample of ``stream`` as a message stamped now, for a receiver that
        joins (a page reloaded wants the gimbal and zoom state at once, not at the next
        sample, which a dock on the ground sends every two seconds)."""
        sample = self._latest_by_stream.get(stream)
        if sample is None:
            return None
        found = self._find_stream(stream)
        pts = found.media_clock() if found is not None else None
        body = orjson.dumps(sample.to_json()).decode()
        return TelemetryMessage.make(stream, sample, body, pts, self._clock())

    def devices(self) -> dict[str, TelemetrySample]:
        return dict(self._latest)

    def subscribers(self, stream: str | None = None) -> int:
        if stream is not None:
            return len(self._subscribers.get(stream, ()))
        return sum(len(s) for s in self._subscribers.values())

    def _unsubscribe(self, subscription: TelemetrySubscription) -> None:
        subscribers = self._subscribers.get(subscription.stream)
        if subscribers is None:
            return
        subscribers.pop(subscription, None)
        if not subscribers:
            del self._subscribers[subscription.stream]
            self._failure_logged.discard(subscription.stream)
