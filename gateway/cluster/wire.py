"""Sans-I/O framing of the local links between the control process and the workers, and
between workers: length-prefixed frames, each a type byte and a payload.

Control messages are JSON objects; media links carry encoded access units in a small binary
header followed by the frame's bytes as they are (nothing is re-encoded).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import orjson

from gateway.jsonobj import loads_object
from gateway.media.stream import MediaFrame

_LENGTH = struct.Struct("!I")
# kind (0 video, 1 audio), flags (1 keyframe, 2 replay), pts, time base numerator, denominator
_FRAME = struct.Struct("!BBqII")
_KINDS = ("video", "audio")
KEYFRAME, REPLAY = 1, 2

CONTROL_MAX_BYTES = 1 << 20
# A 4K keyframe is a few MiB; anything near this is not a frame from a camera.
MEDIA_MAX_BYTES = 32 << 20


class WireError(Exception):
    """A frame on a local link that cannot be what the other side sends."""


class Kind(enum.IntEnum):
    CONTROL = 1  # a JSON object, control process <-> worker
    SUBSCRIBE = 0x10  # viewer worker -> owner: {"name"}
    INFO = 0x11  # owner -> viewer worker: the stream's codecs and format
    FRAME = 0x12  # owner -> viewer worker: one access unit
    FORMAT = 0x13  # {"width", "height"}
    # {"type", "payload"}: a stream event (WCS notifyStreamEvent); owner -> viewer worker to
    # broadcast, and viewer worker -> owner for an event sent on a mirror (a stream control's news)
    EVENT = 0x14
    END = 0x15  # {"info"}: the stream ended (info None: its publisher stopped)
    KEYFRAME_REQUEST = 0x16  # viewer worker -> owner


def frame(kind: Kind, payload: bytes = b"") -> bytes:
    return _LENGTH.pack(len(payload) + 1) + bytes((kind,)) + payload


def json_frame(kind: Kind, message: dict[str, Any]) -> bytes:
    return frame(kind, orjson.dumps(message))


def json_payload(payload: bytes) -> dict[str, Any]:
    return loads_object(payload, WireError, "not JSON", "not a JSON object")


def event_frame(event_type: str, payload: Any) -> bytes:
    return json_frame(Kind.EVENT, {"type": event_type, "payload": payload})


def parse_event(payload: bytes) -> tuple[str, Any]:
    """An EVENT's type and payload; WireError if it is not a JSON object with a type."""
    message = json_payload(payload)
    event_type = message.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise WireError("an EVENT needs a type")
    return event_type, message.get("payload")


class FrameReader:
    """Cuts a byte stream into (kind, payload) frames; at most ``max_bytes`` per frame."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Kind, bytes]]:
        self._buffer += data
        frames: list[tuple[Kind, bytes]] = []
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            if not 1 <= length <= self.max_bytes:
                raise WireError(f"frame of {length} bytes (at most {self.max_bytes})")
            end = offset + _LENGTH.size + length
            if len(buffer) < end:
                break
            try:
                kind = Kind(buffer[offset + _LENGTH.size])
            except ValueError:
                raise WireError(f"unknown frame type {buffer[offset + _LENGTH.size]}") from None
            frames.append((kind, bytes(buffer[offset + _LENGTH.size + 1 : end])))
            offset = end
        del buffer[:offset]
        return frames


# --- media ---------------------------------------------------------------------------------


def media_frame(frame_: MediaFrame) -> bytes:
    """One access unit as a FRAME: header, codec name, the bytes as they are."""
    codec = frame_.codec.encode()
    flags = (KEYFRAME if frame_.keyframe else 0) | (REPLAY if frame_.replay else 0)
    tb = frame_.time_base
    header = _FRAME.pack(_KINDS.index(frame_.kind), flags, frame_.pts, tb.numerator, tb.denominator)
    body_length = _FRAME.size + 1 + len(codec) + len(frame_.data)
    return b"".join(
        (
            _LENGTH.pack(body_length + 1),
            bytes((Kind.FRAME,)),
            header,
            bytes((len(codec),)),
            codec,
            frame_.data,
        )
    )


def parse_media_frame(payload: bytes) -> MediaFrame:
    if len(payload) < _FRAME.size + 1:
        raise WireError("short media frame")
    kind, flags, pts, num, den = _FRAME.unpack_from(payload)
    if kind >= len(_KINDS) or num == 0 or den == 0:
        raise WireError("bad media frame header")
    codec_end = _FRAME.size + 1 + payload[_FRAME.size]
    if codec_end > len(payload):
        raise WireError("short media frame")
    try:
        codec = payload[_FRAME.size + 1 : codec_end].decode()
    except UnicodeDecodeError:
        raise WireError("bad codec name") from None
    return MediaFrame(
        _KINDS[kind],  # type: ignore[arg-type]
        codec,
        payload[codec_end:],
        pts,
        Fraction(num, den),
        keyframe=bool(flags & KEYFRAME),
        replay=bool(flags & REPLAY),
    )


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a worker's media link listens."""

    worker: int
    path: str
