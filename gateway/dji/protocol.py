"""DJI Cloud API over MQTT: topics, message envelopes and the live-streaming methods.
Pure functions over bytes and dicts; no MQTT client, no asyncio.

Every message is a JSON envelope ``{tid, bid, timestamp, method, data}`` (uplink messages
add ``gateway`` and sometimes ``need_reply``). The cloud sends commands on
``thing/product/{gateway_sn}/services`` and the device answers on ``services_reply`` with
the same ``tid`` and ``bid``; see shared/reference/dji-cloud-api-live.md.
"""

from __future__ import annotations

import contextlib
import enum
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.jsonobj import loads_object

# A device message larger than this is not a live-streaming message: refuse it unparsed.
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_SN = 64


class DjiProtocolError(ValueError):
    """A message that cannot be used; the text says why (for the log)."""


# --- topics -----------------------------------------------------------------------------------


class TopicKind(enum.Enum):
    STATUS = "status"  # sys/product/{gw}/status: update_topo
    STATE = "state"  # thing/product/{sn}/state: live_capacity, live_status
    OSD = "osd"  # thing/product/{sn}/osd: telemetry, liveness
    SERVICES_REPLY = "services_reply"  # thing/product/{gw}/services_reply
    EVENTS = "events"  # thing/product/{gw}/events
    REQUESTS = "requests"  # thing/product/{gw}/requests


@dataclass(frozen=True, slots=True)
class Topic:
    kind: TopicKind
    sn: str


# What the bridge subscribes to (the MQTT wildcards of the topics above).
SUBSCRIPTIONS = (
    "sys/product/+/status",
    "thing/product/+/state",
    "thing/product/+/osd",
    "thing/product/+/services_reply",
    "thing/product/+/events",
    "thing/product/+/requests",
)


def parse_topic(topic: str) -> Topic | None:
    """The kind and serial number of a device topic, or None for any other topic."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[1] != "product" or not valid_sn(parts[2]):
        return None
    if parts[0] == "sys" and parts[3] == "status":
        return Topic(TopicKind.STATUS, parts[2])
    if parts[0] == "thing":
        try:
            kind = TopicKind(parts[3])
        except ValueError:
            return None
        if kind is not TopicKind.STATUS:
            return Topic(kind, parts[2])
    return None


def services_topic(gateway_sn: str) -> str:
    return f"thing/product/{gateway_sn}/services"


def reply_topic(topic: Topic) -> str:
    """Where the cloud answers a device message (status_reply, state_reply, events_reply...)."""
    prefix = "sys" if topic.kind is TopicKind.STATUS else "thing"
    return f"{prefix}/product/{topic.sn}/{topic.kind.value}_reply"


_SN = re.compile(r"[A-Za-z0-9_-]+")


def valid_sn(sn: str) -> bool:
    """ASCII letters, digits, '-' and '_' (checked on every device message: a regex, not a
    loop over the characters)."""
    return len(sn) <= MAX_SN and _SN.fullmatch(sn) is not None


# --- envelopes --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    tid: str
    bid: str
    method: str
    data: dict[str, Any]
    timestamp: int = 0
    gateway: str | None = None
    need_reply: bool = False


def parse_envelope(payload: bytes | str) -> Envelope:
    """Parse and check one device message. Raises DjiProtocolError."""
    size = len(payload.encode("utf-8", "surrogatepass")) if isinstance(payload, str) else len(payload)
    if size > MAX_PAYLOAD_BYTES:
        raise DjiProtocolError(f"message of {size} bytes is over {MAX_PAYLOAD_BYTES}")
    message = loads_object(payload, DjiProtocolError, "message is not JSON", "message is not a JSON object")
    tid, bid = message.get("tid"), message.get("bid")
    if not isinstance(tid, str) or not tid:
        raise DjiProtocolError("message has no 'tid' string")
    if not isinstance(bid, str) or not bid:
        raise DjiProtocolError("message has no 'bid' string")
    method = message.get("method", "")
    if not isinstance(method, str):
        raise DjiProtocolError("'method' is not a string")
    data = message.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DjiProtocolError("'data' is not an object")
    timestamp = message.get("timestamp", 0)
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise DjiProtocolError("'timestamp' is not an integer")
    gateway = message.get("gateway")
    if gateway is not None and not (isinstance(gateway, str) and valid_sn(gateway)):
        raise DjiProtocolError("'gateway' is not a serial number")
    need_reply = message.get("need_reply", 0)
    if type(need_reply) not in (int, bool) or need_reply not in (0, 1):
        raise DjiProtocolError("'need_reply' is not 0 or 1")
    return Envelope(tid, bid, method, data, timestamp, gateway, bool(need_reply))


def encode(envelope: Envelope) -> bytes:
    message: dict[str, Any] = {
        "tid": envelope.tid,
        "bid": envelope.bid,
        "timestamp": envelope.timestamp or int(time.time() * 1000),
        "method": envelope.method,
        "data": envelope.data,
    }
    if envelope.gateway is not None:
        message["gateway"] = envelope.gateway
    return orjson.dumps(message)


def reply_to(request: Envelope, result: int = 0) -> Envelope:
    """The cloud's answer to a device message that wants one: same tid and bid."""
    return Envelope(request.tid, request.bid, request.method, {"result": result})


def new_request(method: str, data: dict[str, Any], bid: str | None = None) -> Envelope:
    """A cloud-to-device command with a fresh tid (and bid unless one is given)."""
    return Envelope(str(uuid.uuid4()), bid or str(uuid.uuid4()), method, data)


# --- live streaming ---------------------------------------------------------------------------


class UrlType(enum.IntEnum):
    AGORA = 0
    RTMP = 1
    RTSP = 2
    GB28181 = 3
    WHIP = 4


class VideoQuality(enum.IntEnum):
    ADAPTIVE = 0
    SMOOTH = 1  # 960x540, 512 kbit/s
    SD = 2  # 720p, 1 Mbit/s
    HD = 3  # 720p, 1.5 Mbit/s
    UHD = 4  # 1080p, 3 Mbit/s


def parse_video_quality(value: object) -> VideoQuality:
    """A quality given as its number (0-4) or its name ("hd"), as users write it."""
    if isinstance(value, str) and not value.isdigit():
        try:
            return VideoQuality[value.strip().upper()]
        except KeyError:
            pass
    elif isinstance(value, int | str) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            return VideoQuality(int(value))
    names = ", ".join(f"{q.value} {q.name.lower()}" for q in VideoQuality)
    raise DjiProtocolError(f"unknown video quality {value!r}: one of {names}")


@dataclass(frozen=True, slots=True)
class VideoId:
    """``{sn}/{camera_index}/{video_index}``: which video of which device (aircraft or dock)."""

    sn: str
    camera_index: str
    video_index: str

    @classmethod
    def parse(cls, text: str) -> VideoId:
        parts = text.split("/")
        if len(parts) != 3 or not valid_sn(parts[0]) or not all(_valid_index(p) for p in parts[1:]):
            raise DjiProtocolError(f"not a DJI video_id ({{sn}}/{{camera_index}}/{{video_index}}): {text!r}")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.sn}/{self.camera_index}/{self.video_index}"


def _valid_index(text: str) -> bool:
    return 0 < len(text) <= 32 and all(c.isascii() and (c.isalnum() or c in "-_") for c in text)


def live_start_push(url_type: UrlType, url: str, video_id: VideoId, quality: VideoQuality) -> Envelope:
    return new_request(
        "live_start_push",
        {"url_type": int(url_type), "url": url, "video_id": str(video_id), "video_quality": int(quality)},
    )


def live_stop_push(video_id: VideoId) -> Envelope:
    return new_request("live_stop_push", {"video_id": str(video_id)})


def live_set_quality(video_id: VideoId, quality: VideoQuality) -> Envelope:
    return new_request("live_set_quality", {"video_id": str(video_id), "video_quality": int(quality)})


LENS_TYPES = frozenset({"normal", "wide", "zoom", "ir", "thermal"})


def live_lens_change(video_id: VideoId, video_type: str) -> Envelope:
    if video_type not in LENS_TYPES:
        raise DjiProtocolError(f"unknown lens {video_type!r}: one of {', '.join(sorted(LENS_TYPES))}")
    return new_request("live_lens_change", {"video_id": str(video_id), "video_type": video_type})


@dataclass(frozen=True, slots=True)
class ServiceReply:
    tid: str
    bid: str
    method: str
    result: int
    output: Any = None  # e.g. the RTSP URL an RC serves (old replies put it in `info`)


def parse_service_reply(envelope: Envelope) -> ServiceReply:
    result = envelope.data.get("result")
    if isinstance(result, bool) or not isinstance(result, int):
        raise DjiProtocolError("services_reply without an integer 'result'")
    output = envelope.data.get("output", envelope.data.get("info"))
    return ServiceReply(envelope.tid, envelope.bid, envelope.method, result, output)


# Live-module error codes (source digit, then 13 = live, then nnn): shared reference §6.
_LIVE_ERRORS = {
    1: "no aircraft",
    2: "camera missing or of the wrong type",
    3: "a live stream is already in progress",
    4: "function not supported",
    5: "quality setting error",
    6: "start failed: the app is not on the camera view; refresh and retry",
    7: "the remote controller has no flight control",
    8: "no stream data: image transmission abnormal",
    9: "requests too frequent",
    10: "the device has no network for live streaming",
    11: "live streaming not enabled",
    12: "another camera is live: lens switch not supported",
    13: "protocol (url_type) not supported",
    14: "bad or incomplete parameters",
    15: "network congestion",
    16: "decoding failed",
    17: "paused while the aircraft downloads files",
    99: "unknown error; retry later",
}
_SOURCES = {3: "device", 4: "pilot app", 5: "device", 6: "pilot app"}

ALREADY_STREAMING = frozenset({513003})
# Worth another try after a pause (DJI's own advice for 613006; congestion; rate limit).
TRANSIENT = frozenset({613006, 513006, 513009, 513015, 513099})


def describe_result(code: int) -> str:
    """A readable meaning for a DJI result code, e.g. "513013: protocol (url_type) not
    supported (device)"."""
    if code == 0:
        return "0: success"
    source, module, number = code // 100000, (code // 1000) % 100, code % 1000
    if module == 13 and number in _LIVE_ERRORS:
        return f"{code}: {_LIVE_ERRORS[number]} ({_SOURCES.get(source, 'unknown source')})"
    return f"{code}: DJI error (no description known)"


# --- device state -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Video:
    video_id: VideoId
    video_type: str
    switchable_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LiveCapacity:
    videos: tuple[Video, ...] = ()
    coexist_max: int = 0


def parse_live_capacity(value: Any) -> LiveCapacity:
    """The videos a gateway offers, from its ``live_capacity`` state. Malformed entries are
    skipped rather than failing the whole list."""
    if not isinstance(value, dict):
        raise DjiProtocolError("'live_capacity' is not an object")
    videos: list[Video] = []
    for device in _dicts(value.get("device_list")):
        sn = device.get("sn")
        if not isinstance(sn, str) or not valid_sn(sn):
            continue
        for camera in _dicts(device.get("camera_list")):
            camera_index = camera.get("camera_index")
            if not isinstance(camera_index, str) or not _valid_index(camera_index):
                continue
            for video in _dicts(camera.get("video_list")):
                index, kind = video.get("video_index"), video.get("video_type", "")
                if not isinstance(index, str) or not _valid_index(index) or not isinstance(kind, str):
                    continue
                raw = video.get("switchable_video_types")
                switchable = tuple(t for t in raw if isinstance(t, str)) if isinstance(raw, list) else ()
                videos.append(Video(VideoId(sn, camera_index, index), kind, switchable))
    coexist = value.get("coexist_video_number_max", 0)
    usable = isinstance(coexist, int) and not isinstance(coexist, bool) and coexist >= 0
    return LiveCapacity(tuple(videos), coexist if usable else 0)


def live_capacity_data(capacity: LiveCapacity) -> dict[str, Any]:
    """``live_capacity`` as a device reports it: the inverse of `parse_live_capacity`."""
    devices: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for video in capacity.videos:
        cameras = devices.setdefault(video.video_id.sn, {})
        cameras.setdefault(video.video_id.camera_index, []).append(
            {
                "video_index": video.video_id.video_index,
                "video_type": video.video_type,
                "switchable_video_types": list(video.switchable_types),
            }
        )
    return {
        "available_video_number": len(capacity.videos),
        "coexist_video_number_max": capacity.coexist_max,
        "device_list": [
            {
                "sn": sn,
                "available_video_number": sum(len(v) for v in cameras.values()),
                "coexist_video_number_max": capacity.coexist_max,
                "camera_list": [
                    {
                        "camera_index": index,
                        "available_video_number": len(videos),
                        "coexist_video_number_max": capacity.coexist_max,
                        "video_list": videos,
                    }
                    for index, videos in cameras.items()
                ],
            }
            for sn, cameras in devices.items()
        ],
    }


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


@dataclass(frozen=True, slots=True)
class LiveStatus:
    video_id: VideoId
    streaming: bool
    video_type: str = ""
    quality: int = 0
    error: int = 0


def parse_live_status(value: Any) -> list[LiveStatus]:
    if not isinstance(value, list):
        raise DjiProtocolError("'live_status' is not an array")
    found = []
    for item in _dicts(value):
        try:
            video_id = VideoId.parse(str(item.get("video_id", "")))
        except DjiProtocolError:
            continue
        quality, error = item.get("video_quality", 0), item.get("error_status", 0)
        found.append(
            LiveStatus(
                video_id,
                item.get("status") in (1, True),
                str(item.get("video_type", "")),
                quality if isinstance(quality, int) and not isinstance(quality, bool) else 0,
                error if isinstance(error, int) and not isinstance(error, bool) else 0,
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class Topology:
    """``update_topo``: a gateway and the devices behind it (empty: aircraft offline)."""

    gateway_sn: str
    domain: str = ""
    type: int = 0
    sub_devices: tuple[str, ...] = field(default_factory=tuple)


def update_topo_data(topology: Topology) -> dict[str, Any]:
    """``update_topo``'s data: the inverse of `parse_update_topo`."""
    return {
        "domain": topology.domain,
        "type": topology.type,
        "sub_devices": [{"sn": sn} for sn in topology.sub_devices],
    }


def parse_update_topo(gateway_sn: str, envelope: Envelope) -> Topology:
    data = envelope.data
    subs = tuple(
        d["sn"] for d in _dicts(data.get("sub_devices")) if isinstance(d.get("sn"), str) and valid_sn(d["sn"])
    )
    kind = data.get("type", 0)
    return Topology(
        gateway_sn,
        str(data.get("domain", "")),
        kind if isinstance(kind, int) and not isinstance(kind, bool) else 0,
        subs,
    )
