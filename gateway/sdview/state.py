"""Who is watching which SD live view, and when the next picture is due (sans-I/O).

Per configured ``device_id``: a keep-alive seen at ``t`` keeps the view open until
``t + keepalive_timeout``. While open, a picture is due when the stream's keyframe is one
this view has not been sent yet and the last picture went out at least ``min_interval``
ago. A picture whose message would be larger than ``max_payload_bytes`` is refused (the
protocol has no way to split one) and that keyframe is not tried again.

The I/O layer feeds messages and the time in, asks what is due, renders, and publishes
what `SdViewState.picture` returns. Keyframes are opaque marks compared with ``==``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

from gateway.sdview.protocol import AgentMessage, SdImage, parse_agent_message

KEEPALIVE_TIMEOUT = 3.0
MIN_INTERVAL = 1.0
DEFAULT_MAX_PAYLOAD_BYTES = 128 * 1024  # AWS IoT's limit; Mosquitto/EMQX allow more


@dataclass(frozen=True, slots=True)
class Started:
    device_id: str
    stream: str


@dataclass(frozen=True, slots=True)
class Refreshed:
    device_id: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A well-formed message that is not for us (another device or another action)."""

    device_id: str
    action: str


@dataclass(frozen=True, slots=True)
class Stopped:
    device_id: str
    stream: str


@dataclass(frozen=True, slots=True)
class Due:
    device_id: str
    stream: str


@dataclass(frozen=True, slots=True)
class Publish:
    device_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Refused:
    device_id: str
    size: int
    limit: int


@dataclass(slots=True)
class _View:
    stream: str
    until: float
    last_sent: float = float("-inf")
    last_keyframe: Hashable | None = None


class SdViewState:
    def __init__(
        self,
        devices: Mapping[str, str],
        *,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        min_interval: float = MIN_INTERVAL,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        if keepalive_timeout <= 0 or min_interval < 0 or max_payload_bytes <= 0:
            raise ValueError(
                "keepalive_timeout and max_payload_bytes must be positive, min_interval not negative"
            )
        self.devices = dict(devices)  # device_id -> stream name
        self.keepalive_timeout = keepalive_timeout
        self.min_interval = min_interval
        self.max_payload_bytes = max_payload_bytes
        self._views: dict[str, _View] = {}

    def receive(self, data: bytes, now: float) -> Started | Refreshed | Ignored:
        """A message from the agent topic. Raises SdViewProtocolError if malformed."""
        return self.keep_alive(parse_agent_message(data), now)

    def keep_alive(self, message: AgentMessage, now: float) -> Started | Refreshed | Ignored:
        stream = self.devices.get(message.device_id)
        if stream is None or not message.requests_sd_stream:
            return Ignored(message.device_id, message.action)
        until = now + self.keepalive_timeout
        view = self._views.get(message.device_id)
        if view is not None and now < view.until:
            view.until = max(view.until, until)  # a keep-alive delivered late never shortens
            return Refreshed(message.device_id)
        self._views[message.device_id] = _View(stream, until)
        return Started(message.device_id, stream)

    def expire(self, now: float) -> list[Stopped]:
        """Close the views whose last keep-alive is ``keepalive_timeout`` old."""
        stopped = [
            Stopped(device_id, view.stream) for device_id, view in self._views.items() if now >= view.until
        ]
        for event in stopped:
            del self._views[event.device_id]
        return stopped

    def due(self, now: float, keyframe_of: Callable[[str], Hashable | None]) -> list[Due]:
        """The open views that should get a picture now; ``keyframe_of(stream)`` is the mark
        of that stream's latest keyframe (None: no picture to send)."""
        due = []
        for device_id, view in self._views.items():
            if now >= view.until or now - view.last_sent < self.min_interval:
                continue
            keyframe = keyframe_of(view.stream)
            if keyframe is not None and keyframe != view.last_keyframe:
                due.append(Due(device_id, view.stream))
        return due

    def picture(
        self, device_id: str, keyframe: Hashable, jpeg: bytes, now: float, *, timestamp: int
    ) -> Publish | Refused | None:
        """The message for ``device_id`` with ``jpeg`` of ``keyframe``; None when the view
        closed or already had that keyframe meanwhile (rendering takes time)."""
        view = self._views.get(device_id)
        if view is None or now >= view.until or keyframe == view.last_keyframe:
            return None
        view.last_keyframe = keyframe  # refused or sent: this keyframe is done with
        payload = SdImage(device_id, jpeg, timestamp).encode()
        if len(payload) > self.max_payload_bytes:
            return Refused(device_id, len(payload), self.max_payload_bytes)
        view.last_sent = now
        return Publish(device_id, payload)

    def skip(self, device_id: str, keyframe: Hashable) -> None:
        """No picture could be made of ``keyframe``: wait for the next one."""
        view = self._views.get(device_id)
        if view is not None:
            view.last_keyframe = keyframe

    def watching(self, now: float) -> dict[str, str]:
        """The open views: device_id -> stream."""
        return {device_id: view.stream for device_id, view in self._views.items() if now < view.until}
