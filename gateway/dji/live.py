"""On-demand live streaming of one DJI video, sans I/O.

A `LiveController` decides when to ask the device to push (``live_start_push``) and when to
stop (``live_stop_push``), from viewers joining and leaving, device replies, media arriving
or dropping, and time. It returns `Output`s for the bridge to carry out; it never touches
MQTT, sockets or asyncio, so it is tested with plain data and an explicit clock.

    IDLE --first viewer--> OPENING (ingest being opened) --ingest ready--> STARTING
    STARTING --reply 0 / 513003--> WAITING (for the push) --media--> LIVE
    STARTING --transient error / no reply--> retry after a backoff, up to max_attempts
    LIVE --push drops--> WAITING (viewers stay attached) --media--> LIVE
    LIVE/WAITING --last viewer leaves--> LINGERING --linger expires--> stop push, IDLE
    LINGERING --a viewer joins--> back where it was
    any error, timeout, device offline --> FAILED to every viewer, stop push, IDLE
    OPENING/STARTING --MQTT link down--> FAILED at once (no reply can come), IDLE

With RTSP (url_type 2) the device serves the video itself: the start reply carries its
RTSP URL and the controller asks the bridge to pull it (`PullFrom`) before WAITING.
Quality and lens changes are commands of their own (`set_quality`, `change_lens`); a
device that restarts its push for them looks like a push that drops and returns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.dji import protocol as p


@dataclass(frozen=True, slots=True)
class LiveSettings:
    url_type: p.UrlType = p.UrlType.RTMP
    quality: p.VideoQuality = p.VideoQuality.ADAPTIVE
    reply_timeout: float = 20.0  # per live_start_push attempt
    max_attempts: int = 4
    retry_backoff: float = 2.0  # seconds before the 2nd attempt, doubling after
    push_timeout: float = 20.0  # for the push to start after the reply, or to resume
    linger: float = 30.0  # after the last viewer leaves


class Phase(enum.Enum):
    IDLE = "idle"
    OPENING = "opening"
    STARTING = "starting"
    WAITING = "waiting"
    LIVE = "live"
    LINGERING = "lingering"


@dataclass(frozen=True, slots=True)
class OpenIngest:
    """Open an ingest for this video and report its URL with `ingest_ready`."""

    video_id: p.VideoId
    url_type: p.UrlType


@dataclass(frozen=True, slots=True)
class PullFrom:
    """The device serves the video at ``url`` (RTSP): pull it into the stream."""

    video_id: p.VideoId
    url: str


@dataclass(frozen=True, slots=True)
class CloseIngest:
    video_id: p.VideoId


@dataclass(frozen=True, slots=True)
class SendCommand:
    gateway_sn: str
    envelope: p.Envelope


@dataclass(frozen=True, slots=True)
class Failed:
    """Every viewer waiting for or watching this video fails with ``info``."""

    video_id: p.VideoId
    info: str


Output = OpenIngest | PullFrom | CloseIngest | SendCommand | Failed


class NotLive(Exception):
    """A command that needs the device to be pushing this video, which it is not."""


STARTED = frozenset({Phase.WAITING, Phase.LIVE, Phase.LINGERING})


class LiveController:
    def __init__(self, gateway_sn: str, video_id: p.VideoId, settings: LiveSettings | None = None) -> None:
        self.gateway_sn = gateway_sn
        self.video_id = video_id
        self.settings = settings or LiveSettings()
        self.phase = Phase.IDLE
        self.viewers = 0
        self.attempts = 0
        self.url: str | None = None
        self.quality = self.settings.quality  # of the next start; changed by set_quality
        self._start_quality = self.quality  # asked for by the start in flight
        self._pending: p.Envelope | None = None  # the live_start_push awaiting its reply
        self._deadline: float | None = None  # of the current phase (reply, push, linger, retry)
        self._lingering_from: Phase | None = None

    # --- viewers --------------------------------------------------------------------------

    def viewer_joined(self, now: float) -> list[Output]:
        self.viewers += 1
        if self.phase is Phase.IDLE:
            self.phase, self.attempts = Phase.OPENING, 0
            return [OpenIngest(self.video_id, self.settings.url_type)]
        if self.phase is Phase.LINGERING:
            self.phase = self._lingering_from or Phase.LIVE
            self._deadline = None if self.phase is Phase.LIVE else now + self.settings.push_timeout
        return []

    def viewer_left(self, now: float) -> list[Output]:
        self.viewers = max(0, self.viewers - 1)
        if self.viewers or self.phase in (Phase.IDLE, Phase.LINGERING):
            return []
        if self.phase in (Phase.OPENING, Phase.STARTING):
            # Nobody waits any more: give up the start (a late success is stopped below).
            return self._stop("")
        self._lingering_from, self.phase = self.phase, Phase.LINGERING
        self._deadline = now + self.settings.linger
        return []

    # --- ingest, device and media ------------------------------------------------------------

    def ingest_ready(self, url: str, now: float) -> list[Output]:
        if self.phase is not Phase.OPENING:
            return []
        self.url = url
        return self._send_start(now)

    def reply(self, reply: p.ServiceReply, now: float) -> list[Output]:
        pending = self._pending
        if pending is None or (reply.tid, reply.bid) != (pending.tid, pending.bid):
            return []  # not ours, or a late answer to an attempt we gave up
        self._pending = None
        if reply.result == 0 or reply.result in p.ALREADY_STREAMING:
            out: list[Output] = []
            if self.settings.url_type is p.UrlType.RTSP:
                url = reply.output
                if not isinstance(url, str) or not url.startswith(("rtsp://", "rtsps://")):
                    return self._stop("DJI device replied to live_start_push without an RTSP URL")
                out.append(PullFrom(self.video_id, url))
            self.phase, self._deadline = Phase.WAITING, now + self.settings.push_timeout
            if self.quality != self._start_quality:  # changed while the start was in flight
                out.append(SendCommand(self.gateway_sn, p.live_set_quality(self.video_id, self.quality)))
            return out
        if reply.result in p.TRANSIENT:
            return self._retry_or_fail(now, p.describe_result(reply.result))
        return self._stop(f"DJI live_start_push failed: {p.describe_result(reply.result)}")

    def media_started(self, now: float) -> list[Output]:
        if self.phase is Phase.WAITING:
            self.phase, self._deadline = Phase.LIVE, None
        elif self.phase is Phase.LINGERING:
            self._lingering_from = Phase.LIVE
        return []

    def media_lost(self, now: float) -> list[Output]:
        """The push dropped: viewers stay attached while it may come back."""
        if self.phase is Phase.LIVE:
            self.phase, self._deadline = Phase.WAITING, now + self.settings.push_timeout
        elif self.phase is Phase.LINGERING:
            self._lingering_from = Phase.WAITING
        return []

    def device_offline(self) -> list[Output]:
        if self.phase is Phase.IDLE:
            return []
        return self._stop("DJI device offline", send_stop=False)

    def link_down(self, why: str, unsent: p.Envelope | None = None) -> list[Output]:
        """The MQTT link to the device is down: a start in progress would only wait for a
        reply that cannot come, so it fails now (no retries: they could not be sent
        either). With ``unsent``, only if that command is the start in flight. A running
        push needs no MQTT and goes on."""
        if self.phase not in (Phase.OPENING, Phase.STARTING):
            return []
        if unsent is not None and unsent is not self._pending:
            return []
        return self._stop(f"MQTT link to the device is down: {why}", send_stop=False)

    # --- commands ----------------------------------------------------------------------------

    def set_quality(self, quality: p.VideoQuality) -> list[Output]:
        """Ask a pushing device for ``quality``; otherwise the next start asks for it."""
        self.quality = quality
        if self.phase not in STARTED:
            return []
        return [SendCommand(self.gateway_sn, p.live_set_quality(self.video_id, quality))]

    def change_lens(self, video_type: str) -> list[Output]:
        """Switch the lens of a pushing device. Raises NotLive when it is not pushing and
        DjiProtocolError for an unknown lens."""
        envelope = p.live_lens_change(self.video_id, video_type)
        if self.phase not in STARTED:
            raise NotLive(f"{self.video_id} is not live: play it first")
        return [SendCommand(self.gateway_sn, envelope)]

    def tick(self, now: float) -> list[Output]:
        if self._deadline is None or now < self._deadline:
            return []
        self._deadline = None
        match self.phase:
            case Phase.STARTING if self._pending is None:
                return self._send_start(now)  # the backoff before a retry is over
            case Phase.STARTING:
                self._pending = None
                timeout = self.settings.reply_timeout
                return self._retry_or_fail(now, f"no reply from the device within {timeout:g} s")
            case Phase.WAITING:
                return self._stop(f"no video from the device within {self.settings.push_timeout:g} s")
            case Phase.LINGERING:
                return self._stop("")
        return []

    @property
    def deadline(self) -> float | None:
        """When `tick` next has something to do (for the I/O layer's timer)."""
        return self._deadline

    # --- internals ---------------------------------------------------------------------------

    def _send_start(self, now: float) -> list[Output]:
        assert self.url is not None
        self.attempts += 1
        self.phase = Phase.STARTING
        self._start_quality = self.quality
        self._pending = p.live_start_push(self.settings.url_type, self.url, self.video_id, self.quality)
        self._deadline = now + self.settings.reply_timeout
        return [SendCommand(self.gateway_sn, self._pending)]

    def _retry_or_fail(self, now: float, why: str) -> list[Output]:
        if self.attempts >= self.settings.max_attempts:
            return self._stop(f"DJI live_start_push failed after {self.attempts} attempts: {why}")
        self.phase = Phase.STARTING
        self._deadline = now + self.settings.retry_backoff * 2 ** (self.attempts - 1)
        return []

    def _stop(self, info: str, send_stop: bool = True) -> list[Output]:
        """Back to IDLE: viewers fail with ``info`` (if any), the push stops, the ingest closes."""
        out: list[Output] = []
        if info and self.viewers:
            out.append(Failed(self.video_id, info))
        started = self.phase in (Phase.STARTING, Phase.WAITING, Phase.LIVE, Phase.LINGERING)
        if send_stop and started:
            out.append(SendCommand(self.gateway_sn, p.live_stop_push(self.video_id)))
        if self.phase is not Phase.IDLE:
            out.append(CloseIngest(self.video_id))
        self.phase, self._pending, self._deadline, self._lingering_from = Phase.IDLE, None, None, None
        if info:
            self.viewers = 0  # they were all failed
        return out
