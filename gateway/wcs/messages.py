"""WCS raw WebSocket API messages: parsing and validation of client frames, builders of
server frames. Pure functions over text and dicts; no I/O.

Every frame is ``{"message": NAME, "data": [...]}``. The WebSDK reads ``data[0]`` of every
server message, so every frame built here carries a ``data`` array.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.jsonobj import loads_object

# The name rule is shared by every ingress; re-exported (``as``) for this module's users.
from gateway.media.names import MAX_STREAM_NAME as MAX_STREAM_NAME
from gateway.media.names import validate_stream_name as validate_stream_name
from gateway.media.rates import VideoRates

MAX_ID = 128

# Client messages that carry nothing the gateway acts on (debug, metrics, SIP): accepted
# and ignored so an unmodified SDK never sees an error for them.
IGNORED_MESSAGES = frozenset(
    {
        "pushLogs",
        "submitBugReport",
        "sessionDebug",
        "webRTCMetricsClientDescription",
        "webRTCMetricsBatch",
        "call",
        "answer",
        "hangup",
        "hold",
        "unhold",
        "sendDtmf",
        "transfer",
        "sendData",
        "changeAudioCodec",
        "updateStream",
    }
)


class ProtocolError(Exception):
    """A client frame that cannot be acted on. ``media_session_id`` is set when the frame
    named a media session, so the error can be reported as that stream's FAILED status."""

    def __init__(self, info: str, *, api_method: str = "", media_session_id: str | None = None):
        super().__init__(info)
        self.info = info
        self.api_method = api_method
        self.media_session_id = media_session_id


# --- client -> server -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class PublishStream:
    media_session_id: str
    name: str
    sdp: str
    has_audio: bool = True
    has_video: bool = True
    record: bool = False
    fields: dict[str, Any] = field(default_factory=dict)
    transport: str = "UDP"  # "TCP": WebRTC over ICE-TCP only (a client that cannot use UDP)


@dataclass(frozen=True, slots=True)
class PlayStream:
    media_session_id: str
    name: str
    sdp: str
    has_audio: bool = True
    has_video: bool = True
    fields: dict[str, Any] = field(default_factory=dict)
    transport: str = "UDP"
    # custom.telemetry: false opts out of the stream's telemetry; custom.telemetryRate asks
    # for fewer messages per second than the server's rate (never more).
    telemetry: bool = True
    telemetry_rate: float | None = None


@dataclass(frozen=True, slots=True)
class UnpublishStream:
    media_session_id: str
    name: str


@dataclass(frozen=True, slots=True)
class StopStream:
    media_session_id: str
    name: str


@dataclass(frozen=True, slots=True)
class AvailableStream:
    media_session_id: str
    name: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The WebSDK's ``stream.snapshot()``: a PNG of the stream, as a stream event."""

    media_session_id: str
    name: str


@dataclass(frozen=True, slots=True)
class SendStreamEvent:
    media_session_id: str
    type: str
    payload: Any


@dataclass(frozen=True, slots=True)
class Ignored:
    name: str


ClientMessage = (
    Connect
    | Pong
    | Ping
    | PublishStream
    | PlayStream
    | UnpublishStream
    | StopStream
    | AvailableStream
    | SendStreamEvent
    | Snapshot
    | Ignored
)


_API_NAMES: dict[type, str] = {
    PublishStream: "publishStream",
    PlayStream: "playStream",
    UnpublishStream: "unPublishStream",
    StopStream: "stopStream",
    AvailableStream: "availableStream",
    SendStreamEvent: "sendStreamEvent",
    Snapshot: "snapshot",
}


def api_name(msg: ClientMessage) -> str:
    """The wire name of a parsed client message (for `fail` replies)."""
    return _API_NAMES.get(type(msg), type(msg).__name__)


def parse_frame(text: str | bytes) -> ClientMessage:
    """Parse one client text frame. Raises ProtocolError with a readable ``info``."""
    frame = loads_object(
        text, ProtocolError, "Frame is not JSON", "Frame must be a JSON object with 'message' and 'data'"
    )
    name = frame.get("message")
    if not isinstance(name, str) or not name:
        raise ProtocolError("Frame has no 'message' name")
    data = frame.get("data", [])
    if data is None:
        data = []
    if not isinstance(data, list):
        raise ProtocolError(f"'{name}': 'data' must be an array", api_method=name)
    first = data[0] if data else None
    parser = _PARSERS.get(name)
    if parser is not None:
        return parser(name, first)
    if name in IGNORED_MESSAGES:
        return Ignored(name)
    raise ProtocolError(f"Unknown message '{name[:64]}'", api_method=name[:64])


def _object(name: str, first: Any) -> dict[str, Any]:
    if not isinstance(first, dict):
        raise ProtocolError(f"'{name}': data[0] must be an object", api_method=name)
    return first


def _media_session_id(name: str, obj: dict[str, Any]) -> str:
    value = obj.get("mediaSessionId")
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"'{name}': 'mediaSessionId' must be a non-empty string", api_method=name)
    if len(value) > MAX_ID or not value.isprintable():
        raise ProtocolError(f"'{name}': 'mediaSessionId' is malformed", api_method=name)
    return value


def _stream_name(api: str, obj: dict[str, Any], media_session_id: str) -> str:
    try:
        return validate_stream_name(obj.get("name"))
    except ValueError as exc:
        raise ProtocolError(str(exc), api_method=api, media_session_id=media_session_id) from None


def _flag(api: str, obj: dict[str, Any], key: str, default: bool, msid: str) -> bool:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ProtocolError(f"'{api}': '{key}' must be true or false", api_method=api, media_session_id=msid)
    return value


def _sdp(api: str, obj: dict[str, Any], msid: str) -> str:
    sdp = obj.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise ProtocolError(
            f"'{api}': 'sdp' must be a non-empty string", api_method=api, media_session_id=msid
        )
    return sdp


TRANSPORTS = ("UDP", "TCP")


def _transport(api: str, obj: dict[str, Any], msid: str) -> str:
    """The WebSDK's ``transport`` option: "UDP" (the default: UDP and TCP candidates, UDP
    preferred) or "TCP" (ICE-TCP candidates only). Case is not significant."""
    value = obj.get("transport")
    if value is None:
        return "UDP"
    if not isinstance(value, str) or value.upper() not in TRANSPORTS:
        raise ProtocolError(
            f"'{api}': 'transport' must be \"UDP\" or \"TCP\"", api_method=api, media_session_id=msid
        )
    return value.upper()


def _parse_connect(name: str, first: Any) -> Connect:
    obj = _object(name, first)
    for key in ("appKey", "clientVersion", "authToken"):
        if key in obj and obj[key] is not None and not isinstance(obj[key], str):
            raise ProtocolError(f"'connection': '{key}' must be a string", api_method=name)
    return Connect(dict(obj))


def _parse_media(name: str, first: Any) -> PublishStream | PlayStream:
    obj = _object(name, first)
    msid = _media_session_id(name, obj)
    stream_name = _stream_name(name, obj, msid)
    sdp = _sdp(name, obj, msid)
    has_audio = _flag(name, obj, "hasAudio", True, msid)
    has_video = _flag(name, obj, "hasVideo", True, msid)
    transport = _transport(name, obj, msid)
    if name == "publishStream":
        record = _flag(name, obj, "record", False, msid)
        return PublishStream(msid, stream_name, sdp, has_audio, has_video, record, dict(obj), transport)
    telemetry, telemetry_rate = _telemetry_options(name, obj, msid)
    return PlayStream(
        msid, stream_name, sdp, has_audio, has_video, dict(obj), transport, telemetry, telemetry_rate
    )


MAX_TELEMETRY_RATE = 1000.0


def _telemetry_options(api: str, obj: dict[str, Any], msid: str) -> tuple[bool, float | None]:
    """A player's telemetry options, in its ``custom`` object (the WebSDK's
    ``createStream({custom})``): ``telemetry`` (true/false) and ``telemetryRate`` (messages per
    second, a positive number)."""
    custom = obj.get("custom")
    if not isinstance(custom, dict):
        return True, None  # absent, or a WebSDK custom value of another shape: defaults
    enabled = custom.get("telemetry", True)
    if enabled is None:
        enabled = True
    if not isinstance(enabled, bool):
        raise ProtocolError(
            f"'{api}': 'custom.telemetry' must be true or false", api_method=api, media_session_id=msid
        )
    rate = custom.get("telemetryRate")
    if rate is not None and (
        isinstance(rate, bool)
        or not isinstance(rate, int | float)
        or not 0 < rate <= MAX_TELEMETRY_RATE  # NaN fails this too
    ):
        raise ProtocolError(
            f"'{api}': 'custom.telemetryRate' must be a number of messages per second above 0",
            api_method=api,
            media_session_id=msid,
        )
    return enabled, None if rate is None else float(rate)


def _parse_stop(name: str, first: Any) -> UnpublishStream | StopStream:
    obj = _object(name, first)
    msid = _media_session_id(name, obj)
    stream_name = obj.get("name")
    stream_name = stream_name if isinstance(stream_name, str) else ""
    if name == "unPublishStream":
        return UnpublishStream(msid, stream_name[:MAX_STREAM_NAME])
    return StopStream(msid, stream_name[:MAX_STREAM_NAME])


def _parse_available(name: str, first: Any) -> AvailableStream:
    obj = _object(name, first)
    msid = _media_session_id(name, obj)
    return AvailableStream(msid, _stream_name(name, obj, msid))


def _parse_snapshot(name: str, first: Any) -> Snapshot:
    obj = _object(name, first)
    msid = _media_session_id(name, obj)
    return Snapshot(msid, _stream_name(name, obj, msid))


def _parse_stream_event(name: str, first: Any) -> SendStreamEvent:
    obj = _object(name, first)
    msid = _media_session_id(name, obj)
    event_type = obj.get("type")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 64:
        raise ProtocolError(
            f"'{name}': 'type' must be a short string", api_method=name, media_session_id=msid
        )
    return SendStreamEvent(msid, event_type, obj.get("payload"))


_PARSERS: dict[str, Callable[[str, Any], ClientMessage]] = {
    "connection": _parse_connect,
    "pong": lambda name, first: Pong(),
    "ping": lambda name, first: Ping(),
    "publishStream": _parse_media,
    "playStream": _parse_media,
    "unPublishStream": _parse_stop,
    "stopStream": _parse_stop,
    "availableStream": _parse_available,
    "sendStreamEvent": _parse_stream_event,
    "snapshot": _parse_snapshot,
}

# --- server -> client -------------------------------------------------------------------


def encode(message: str, *data: Any) -> str:
    """Build a server frame. ``data`` always becomes a JSON array (possibly ``[null]``)."""
    return orjson.dumps({"message": message, "data": list(data) if data else [None]}).decode()


def get_user_data(echo: dict[str, Any], auth_token: str) -> str:
    body = {
        **{k: v for k, v in echo.items() if k not in ("authToken", "status")},
        "useWsTunnel": False,
        "useWsTunnelPacketization2": False,
        "useBase64BinaryEncoding": False,
        "authToken": auth_token,
        "status": "ESTABLISHED",
    }
    # A metrics description would start the WebSDK's metrics collector: never echo it.
    body.pop("webRTCMetricsServerDescription", None)
    return encode("getUserData", body)


def get_version(version: str) -> str:
    return encode("getVersion", version)


def ping() -> str:
    return encode("ping", None)


def pong() -> str:
    return encode("pong", None)


def set_remote_sdp(media_session_id: str, sdp: str) -> str:
    return encode("setRemoteSDP", media_session_id, sdp, True)


@dataclass(slots=True)
class StreamDescription:
    """What a notifyStreamStatusEvent tells about one media session."""

    media_session_id: str
    name: str
    published: bool
    status: str
    info: str | None = None
    has_audio: bool = True
    has_video: bool = True
    audio_codec: str | None = None
    video_codec: str | None = None
    width: int = 0
    height: int = 0
    record: bool = False
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "mediaSessionId": self.media_session_id,
            "name": self.name,
            "published": self.published,
            "hasVideo": self.has_video,
            "hasAudio": self.has_audio,
            "status": self.status,
            "audioCodec": self.audio_codec,
            "videoCodec": self.video_codec,
            "record": self.record,
            "width": self.width,
            "height": self.height,
            "bitrate": 0,
            "minBitrate": 0,
            "maxBitrate": 0,
            "quality": 0,
            "createDate": self.created_ms,
            "mediaProvider": "WebRTC",
            "streamInfo": {
                "nodeId": None,
                "appKey": None,
                "sessionId": None,
                "mediaSessionId": self.media_session_id,
                "name": self.name,
                "samplingTime": None,
                "recordTimestamp": None,
                "recordStarted": False,
            },
        }
        if self.info is not None:
            body["info"] = self.info
        return body


def stream_status(stream: StreamDescription) -> str:
    return encode("notifyStreamStatusEvent", stream.as_dict())


def fail(api_method: str, info: str, media_session_id: str | None = None, status: str = "FAILED") -> str:
    return encode(
        "fail",
        {
            "apiMethod": api_method or "StreamStatusEvent",
            "id": media_session_id,
            "status": status,
            "info": info,
        },
    )


def available_stream(media_session_id: str, available: bool, info: str) -> str:
    # The WebSDK compares the status with the *strings* "true"/"false".
    return encode(
        "availableStream",
        {"id": media_session_id, "status": "true" if available else "false", "info": info},
    )


def stream_event(media_session_id: str, event_type: str, payload: Any) -> str:
    return encode(
        "notifyStreamEvent", {"mediaSessionId": media_session_id, "type": event_type, "payload": payload}
    )


def stream_event_frame(media_session_id: str, event_type: str) -> tuple[str, str]:
    """The text before and after the payload of a `stream_event` frame, for a payload
    already encoded (telemetry: the JSON is made once per sample, and only the receiver's
    stamp differs): ``head + payload_json + tail`` is the frame."""
    head = orjson.dumps({"mediaSessionId": media_session_id, "type": event_type}).decode()
    return '{"message":"notifyStreamEvent","data":[' + head[:-1] + ',"payload":', "}]}"


def audio_codec(media_session_id: str, codec: str) -> str:
    return encode("notifyAudioCodec", media_session_id, {"name": codec})


def video_format(media_session_id: str, width: int, height: int) -> str:
    return encode(
        "notifyVideoFormat",
        {
            "mediaSessionId": media_session_id,
            "status": "RESIZE",
            "streamerVideoWidth": width,
            "streamerVideoHeight": height,
        },
    )


def video_rate(inbound: bool, media_session_id: str, rate: VideoRates) -> str:
    return encode(
        "inboundVideoRate" if inbound else "outboundVideoRate",
        {
            "mediaSessionId": media_session_id,
            "videoRate": rate.bit_rate,
            "fps": rate.fps,
            "nack": rate.nack,
            "pli": rate.pli,
            "lostPackets": rate.lost_packets,
            "width": rate.width,
            "height": rate.height,
        },
    )
