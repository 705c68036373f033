"""The per-connection WCS session state machine, sans I/O.

Feed it client frames and media events; it returns `Output`s: frames to send and media
actions for the I/O layer to carry out. It never touches sockets, asyncio or aiortc, so it
is tested with plain data.

Invariant the WebSDK depends on: every publish/play request gets a status back (its
``stop()`` retries forever otherwise), and a terminal status (FAILED, STOPPED, UNPUBLISHED)
is sent at most once per media session.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gateway.media.rates import VideoRates
from gateway.wcs import messages as m

TERMINAL = frozenset({"FAILED", "STOPPED", "UNPUBLISHED"})

INFO_NOT_FOUND = "Stream not found"
INFO_NAME_IN_USE = "Stream name is already in use"
INFO_PUBLISHER_STOPPED = "Stopped by publisher stop"
INFO_STOPPED_BY_USER = "Stopped by user"
INFO_ICE_TIMEOUT = "Failed by ICE timeout"
INFO_TERMINATED = "Terminated by the REST API"


class State(enum.Enum):
    CONNECTED = "CONNECTED"  # socket open, no `connection` message yet
    AUTHORIZING = "AUTHORIZING"  # `connection` received, the access policy is asked
    ESTABLISHED = "ESTABLISHED"
    CLOSED = "CLOSED"


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_media_sessions: int = 16
    ping_probes: int = 10
    # Ask the access policy before answering `connection` (`AuthorizeConnection`).
    authorize_connections: bool = False


# --- outputs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    text: str


@dataclass(frozen=True, slots=True)
class StartPublish:
    request: m.PublishStream


@dataclass(frozen=True, slots=True)
class StartPlay:
    request: m.PlayStream


@dataclass(frozen=True, slots=True)
class StopMedia:
    """Release the media behind a media session (peer connection, stream slot)."""

    media_session_id: str


@dataclass(frozen=True, slots=True)
class RelayStreamEvent:
    """Deliver a publisher's stream event to every player of ``stream_name``."""

    stream_name: str
    type: str
    payload: Any


@dataclass(frozen=True, slots=True)
class ControlStream:
    """A player asks the device behind ``stream_name`` to change ``action`` (quality,
    lens) to ``value``; the answer goes back as `control_done` or `control_failed`."""

    media_session_id: str
    stream_name: str
    event_type: str
    action: str
    value: Any


@dataclass(frozen=True, slots=True)
class TakeSnapshot:
    """Answer with `snapshot_taken` (a PNG) or `snapshot_failed`."""

    media_session_id: str
    stream_name: str


@dataclass(frozen=True, slots=True)
class AuthorizeConnection:
    """Ask the access policy about this `connection`; answer with `connection_allowed` or
    `connection_refused`."""

    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class QueryAvailable:
    media_session_id: str
    name: str


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


Output = (
    Send
    | StartPublish
    | StartPlay
    | StopMedia
    | RelayStreamEvent
    | ControlStream
    | AuthorizeConnection
    | TakeSnapshot
    | QueryAvailable
    | Close
)

# Stream events a player may send: controls of the camera behind the stream (a drone's), by
# event type, with the payload fields that carry the value.
CONTROL_EVENTS = {
    "setQuality": ("quality", ("video_quality", "quality")),
    "changeLens": ("lens", ("video_type", "lens")),
}


@dataclass(slots=True)
class MediaSession:
    description: m.StreamDescription
    started: bool = False  # PUBLISHING/PLAYING sent
    # The frame around this player's telemetry payloads, made on the first one.
    telemetry_frame: tuple[str, str] | None = None

    @property
    def published(self) -> bool:
        return self.description.published


@dataclass
class Session:
    session_id: str
    auth_token: str
    version: str = "skyrelay"
    limits: SessionLimits = field(default_factory=SessionLimits)
    state: State = State.CONNECTED
    missed_pings: int = 0
    media: dict[str, MediaSession] = field(default_factory=dict)
    # Ids that got their terminal status, so a late stop for one gets a `fail`, not a second
    # terminal status (bounded: only the most recent ones matter).
    ended: deque[str] = field(default_factory=lambda: deque(maxlen=256))
    client: dict[str, Any] = field(default_factory=dict)

    # --- client input ---------------------------------------------------------------------

    def receive_text(self, text: str | bytes) -> list[Output]:
        if self.state is State.CLOSED:
            return []
        try:
            msg = m.parse_frame(text)
        except m.ProtocolError as exc:
            return self._protocol_error(exc)
        # Any well-formed frame proves the client is alive.
        self.missed_pings = 0
        return self._dispatch(msg)

    def receive_binary(self) -> list[Output]:
        if self.state is State.CLOSED:
            return []
        return [Send(m.fail("", "Binary frames are not supported; send JSON text frames"))]

    def _protocol_error(self, exc: m.ProtocolError) -> list[Output]:
        msid = exc.media_session_id
        if (
            msid is not None
            and msid not in self.media
            and exc.api_method
            in (
                "publishStream",
                "playStream",
            )
        ):
            # Answer with the stream's own FAILED status so the SDK's stream settles.
            published = exc.api_method == "publishStream"
            return self._refuse(m.StreamDescription(msid, "", published, "FAILED", info=exc.info))
        return [Send(m.fail(exc.api_method, exc.info, msid))]

    def _dispatch(self, msg: m.ClientMessage) -> list[Output]:
        match msg:
            case m.Connect():
                return self._connect(msg)
            case m.Pong() | m.Ignored():
                return []
            case m.Ping():
                return [Send(m.pong())]
        if self.state is not State.ESTABLISHED:
            info = "Session is not established: send 'connection' first"
            return [Send(m.fail(m.api_name(msg), info, getattr(msg, "media_session_id", None)))]
        match msg:
            case m.PublishStream() | m.PlayStream():
                return self._start(msg)
            case m.UnpublishStream() | m.StopStream():
                return self._stop_request(msg)
            case m.AvailableStream():
                return [QueryAvailable(msg.media_session_id, msg.name)]
            case m.SendStreamEvent():
                return self._stream_event(msg)
            case m.Snapshot():
                media = self.media.get(msg.media_session_id)
                if media is None:
                    return [Send(m.fail("snapshot", "Unknown mediaSessionId", msg.media_session_id))]
                return [TakeSnapshot(msg.media_session_id, media.description.name)]
        return []

    def _connect(self, msg: m.Connect) -> list[Output]:
        if self.state is State.ESTABLISHED:
            return [Send(m.fail("connection", "Session is already established"))]
        if self.state is State.AUTHORIZING:
            return [Send(m.fail("connection", "Session is being authorized"))]
        self.client = msg.fields
        if self.limits.authorize_connections:
            self.state = State.AUTHORIZING
            return [AuthorizeConnection(msg.fields)]
        return self.connection_allowed()

    def connection_allowed(self) -> list[Output]:
        if self.state is State.CLOSED:
            return []
        self.state = State.ESTABLISHED
        return [Send(m.get_user_data(self.client, self.auth_token)), Send(m.get_version(self.version))]

    def connection_refused(self, reason: str) -> list[Output]:
        if self.state is State.CLOSED:
            return []
        self.state = State.CLOSED
        return [Send(m.fail("connection", reason)), Close(1008, reason[:120])]

    def _start(self, msg: m.PublishStream | m.PlayStream) -> list[Output]:
        published = isinstance(msg, m.PublishStream)
        msid = msg.media_session_id
        desc = m.StreamDescription(
            msid,
            msg.name,
            published,
            "PENDING",
            has_audio=msg.has_audio,
            has_video=msg.has_video,
            record=getattr(msg, "record", False),
        )
        if msid in self.media:
            # The client will take this FAILED as final for the id: end ours too.
            return self._finish(msid, "FAILED", "mediaSessionId is already in use on this connection")
        if len(self.media) >= self.limits.max_media_sessions:
            desc.status = "FAILED"
            desc.info = f"Too many streams on this connection (limit {self.limits.max_media_sessions})"
            return self._refuse(desc)
        self.media[msid] = MediaSession(desc)
        return [StartPublish(msg) if isinstance(msg, m.PublishStream) else StartPlay(msg)]

    def _stop_request(self, msg: m.UnpublishStream | m.StopStream) -> list[Output]:
        published = isinstance(msg, m.UnpublishStream)
        media = self.media.get(msg.media_session_id)
        if media is not None and media.published != published:
            # The client will take this FAILED as final for the id: end the stream too.
            wrong = (
                "unPublishStream for a playing stream" if published else "stopStream for a publishing stream"
            )
            return self._finish(msg.media_session_id, "FAILED", f"{wrong}: stream ended")
        if media is None and msg.media_session_id in self.ended:
            return [Send(m.fail(m.api_name(msg), "Stream already ended", msg.media_session_id))]
        if media is None:
            # A terminal status for the id settles a WebSDK stream that keeps retrying stop().
            what = "publishing" if published else "playing"
            desc = m.StreamDescription(
                msg.media_session_id,
                msg.name,
                published,
                "FAILED",
                info=f"Unknown mediaSessionId: no {what} stream with this id on this connection",
            )
            return [Send(m.stream_status(desc))]
        if published:
            return self._finish(msg.media_session_id, "UNPUBLISHED", INFO_PUBLISHER_STOPPED)
        return self._finish(msg.media_session_id, "STOPPED", INFO_STOPPED_BY_USER)

    def _stream_event(self, msg: m.SendStreamEvent) -> list[Output]:
        media = self.media.get(msg.media_session_id)
        if media is None:
            return [Send(m.fail("sendStreamEvent", "Unknown mediaSessionId", msg.media_session_id))]
        if not media.published and msg.type in CONTROL_EVENTS:
            action, fields = CONTROL_EVENTS[msg.type]
            payload = msg.payload
            value = payload
            if isinstance(payload, dict):
                value = next((payload[f] for f in fields if f in payload), None)
            if value is None:
                info = f"{msg.type} needs a payload with {fields[0]!r}"
                return [Send(m.fail("sendStreamEvent", info, msg.media_session_id))]
            return [ControlStream(msg.media_session_id, media.description.name, msg.type, action, value)]
        if not media.published:
            info = "Only a publisher can send stream events (players: " + ", ".join(CONTROL_EVENTS) + ")"
            return [Send(m.fail("sendStreamEvent", info, msg.media_session_id))]
        return [RelayStreamEvent(media.description.name, msg.type, msg.payload)]

    # --- media events (from the I/O layer) --------------------------------------------------

    def media_answer(self, media_session_id: str, sdp: str, audio_codec: str | None = None) -> list[Output]:
        media = self.media.get(media_session_id)
        if media is None:
            return []
        out: list[Output] = []
        if not media.published and audio_codec:
            out.append(Send(m.audio_codec(media_session_id, audio_codec)))
        out.append(Send(m.set_remote_sdp(media_session_id, sdp)))
        return out

    def media_started(
        self,
        media_session_id: str,
        *,
        audio_codec: str | None = None,
        video_codec: str | None = None,
        width: int = 0,
        height: int = 0,
    ) -> list[Output]:
        media = self.media.get(media_session_id)
        if media is None or media.started:
            return []
        media.started = True
        desc = media.description
        desc.status = "PUBLISHING" if media.published else "PLAYING"
        desc.audio_codec, desc.video_codec = audio_codec, video_codec
        desc.width, desc.height = width, height
        return [Send(m.stream_status(desc))]

    def media_failed(self, media_session_id: str, info: str) -> list[Output]:
        return self._finish(media_session_id, "FAILED", info)

    def terminate(self, media_session_id: str) -> list[Output]:
        """The operator ended this media session (REST ``stream/terminate``)."""
        media = self.media.get(media_session_id)
        if media is None:
            return []
        status = "UNPUBLISHED" if media.published else "STOPPED"
        return self._finish(media_session_id, status, INFO_TERMINATED)

    def publisher_stopped(self, media_session_id: str) -> list[Output]:
        """The stream this player plays has lost its publisher."""
        return self._finish(media_session_id, "STOPPED", INFO_PUBLISHER_STOPPED)

    def video_format(self, media_session_id: str, width: int, height: int) -> list[Output]:
        media = self.media.get(media_session_id)
        if media is None:
            return []
        media.description.width, media.description.height = width, height
        if media.published or not media.started:
            return []  # a player not yet PLAYING learns the size with its PLAYING status
        payload = {"streamerVideoWidth": width, "streamerVideoHeight": height}
        return [
            Send(m.video_format(media_session_id, width, height)),
            Send(m.stream_event(media_session_id, "resize", payload)),
        ]

    def stream_event(self, media_session_id: str, event_type: str, payload: Any) -> list[Output]:
        if media_session_id not in self.media:
            return []
        return [Send(m.stream_event(media_session_id, event_type, payload))]

    def telemetry(self, media_session_id: str, payload_json: str) -> list[Output]:
        """A telemetry sample for a player, as ``notifyStreamEvent`` type ``telemetry``: only
        once it is PLAYING (before, its video has no timeline the stamp could refer to)."""
        media = self.media.get(media_session_id)
        if media is None or media.published or not media.started:
            return []
        if media.telemetry_frame is None:
            media.telemetry_frame = m.stream_event_frame(media_session_id, "telemetry")
        head, tail = media.telemetry_frame
        return [Send(head + payload_json + tail)]

    def snapshot_taken(self, media_session_id: str, png_base64: str) -> list[Output]:
        return self.stream_event(media_session_id, "snapshotCompleted", {"snapshot": png_base64})

    def snapshot_failed(self, media_session_id: str, info: str) -> list[Output]:
        return self.stream_event(media_session_id, "snapshotFailed", {"info": info})

    def available(self, media_session_id: str, available: bool, info: str) -> list[Output]:
        return [Send(m.available_stream(media_session_id, available, info))]

    def video_rate(self, media_session_id: str, rate: VideoRates) -> list[Output]:
        media = self.media.get(media_session_id)
        if media is None or not media.started:
            return []
        return [Send(m.video_rate(media.published, media_session_id, rate))]

    # --- time and teardown ----------------------------------------------------------------

    def ping_due(self) -> list[Output]:
        """Called every ping interval."""
        if self.state is State.CLOSED:
            return []
        if self.missed_pings >= self.limits.ping_probes:
            return [*self.close(), Close(1001, f"no answer to {self.missed_pings} pings")]
        self.missed_pings += 1
        return [Send(m.ping())]

    def close(self) -> list[Output]:
        """The socket is gone (or about to be): release every media session, send nothing."""
        if self.state is State.CLOSED:
            return []
        self.state = State.CLOSED
        out: list[Output] = [StopMedia(msid) for msid in self.media]
        self.media.clear()
        return out

    def _refuse(self, desc: m.StreamDescription) -> list[Output]:
        """The terminal status of a request that never became a media session."""
        self.ended.append(desc.media_session_id)
        return [Send(m.stream_status(desc))]

    def _finish(self, media_session_id: str, status: str, info: str | None) -> list[Output]:
        media = self.media.pop(media_session_id, None)
        if media is None:
            return []
        self.ended.append(media_session_id)
        desc = media.description
        desc.status, desc.info = status, info
        return [StopMedia(media_session_id), Send(m.stream_status(desc))]

    def is_publisher(self, media_session_id: str) -> bool:
        media = self.media.get(media_session_id)
        return media is not None and media.published
