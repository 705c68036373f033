"""Test-side readers of what `gateway.media.emsg` writes, written from the specs (ISO/IEC
23009-1 5.10.3.3 for ``emsg``, ID3v2.4 for the tag), not from the writer; and a plain
telemetry sample for the hub."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Emsg:
    version: int
    scheme_id_uri: str
    value: str
    timescale: int
    presentation_time: int  # version 1; version 0: the delta
    event_duration: int
    id: int
    message: bytes


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end].decode(), end + 1


def parse_emsg(box: bytes) -> Emsg:
    """One whole ``emsg`` box (header included)."""
    size, kind = struct.unpack_from(">I4s", box)
    assert kind == b"emsg" and size == len(box), (kind, size, len(box))
    version = box[8]
    assert box[9:12] == b"\x00\x00\x00"
    pos = 12
    if version == 1:
        timescale, time, duration, event_id = struct.unpack_from(">IQII", box, pos)
        pos += 20
        scheme, pos = _cstring(box, pos)
        value, pos = _cstring(box, pos)
    else:
        assert version == 0
        scheme, pos = _cstring(box, pos)
        value, pos = _cstring(box, pos)
        timescale, time, duration, event_id = struct.unpack_from(">IIII", box, pos)
        pos += 16
    return Emsg(version, scheme, value, timescale, time, duration, event_id, box[pos:])


def unsynchsafe(data: bytes) -> int:
    assert all(b < 0x80 for b in data), data
    return (data[0] << 21) | (data[1] << 14) | (data[2] << 7) | data[3]


def parse_id3(tag: bytes) -> list[tuple[str, bytes]]:
    """The frames (id, body) of an ID3v2.4 tag that is exactly ``tag``."""
    assert tag[:3] == b"ID3" and tag[3] == 4, tag[:4]
    assert tag[5] == 0  # no unsynchronisation, extended header or footer
    size = unsynchsafe(tag[6:10])
    assert 10 + size == len(tag)
    frames, pos = [], 10
    while pos < len(tag):
        frame_id = tag[pos : pos + 4].decode("ascii")
        frame_size = unsynchsafe(tag[pos + 4 : pos + 8])
        frames.append((frame_id, tag[pos + 10 : pos + 10 + frame_size]))
        pos += 10 + frame_size
    assert pos == len(tag)
    return frames


def parse_txxx(body: bytes) -> tuple[str, str]:
    """(description, value) of a UTF-8 ``TXXX`` frame's body."""
    assert body[0] == 3
    description, _, value = body[1:].partition(b"\x00")
    return description.decode(), value.decode()


def top_boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, whole box) of the top-level boxes of ``data``, which must be whole boxes."""
    out, pos = [], 0
    while pos < len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        assert size >= 8 and pos + size <= len(data)
        out.append((kind, data[pos : pos + size]))
        pos += size
    return out


@dataclass(frozen=True)
class Sample:
    """What the hub needs of a sample (`TelemetrySample`)."""

    sn: str
    n: int
    height: float = 100.0

    def to_json(self) -> dict[str, Any]:
        return {"sn": self.sn, "kind": "aircraft", "n": self.n, "aircraft": {"height": self.height}}

    def gauges(self) -> dict[str, float]:
        return {"height_m": self.height}
