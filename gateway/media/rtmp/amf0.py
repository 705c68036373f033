"""AMF0, the value encoding of RTMP commands (Adobe AMF0 specification). Pure functions."""

from __future__ import annotations

import struct
from typing import Any

NUMBER, BOOLEAN, STRING, OBJECT, NULL, UNDEFINED = 0x00, 0x01, 0x02, 0x03, 0x05, 0x06
ECMA_ARRAY, OBJECT_END, STRICT_ARRAY, DATE, LONG_STRING = 0x08, 0x09, 0x0A, 0x0B, 0x0C

MAX_DEPTH = 16
MAX_ITEMS = 4096


class Amf0Error(ValueError):
    pass


class EcmaArray(dict[str, Any]):
    """A dict encoded as an ECMA array (``onMetaData`` is one, as FLV files and encoders
    write it); a plain dict is encoded as an anonymous object."""


def decode_all(data: bytes) -> list[Any]:
    """Every value in ``data`` (a command message body)."""
    values, pos = [], 0
    while pos < len(data):
        value, pos = _decode(data, pos, 0)
        values.append(value)
    return values


def _need(data: bytes, pos: int, count: int) -> None:
    if pos + count > len(data):
        raise Amf0Error("AMF0 value truncated")


def _decode(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise Amf0Error("AMF0 nesting too deep")
    _need(data, pos, 1)
    marker, pos = data[pos], pos + 1
    if marker == NUMBER:
        _need(data, pos, 8)
        return struct.unpack_from(">d", data, pos)[0], pos + 8
    if marker == BOOLEAN:
        _need(data, pos, 1)
        return data[pos] != 0, pos + 1
    if marker == STRING:
        return _string(data, pos, 2)
    if marker == LONG_STRING:
        return _string(data, pos, 4)
    if marker in (NULL, UNDEFINED):
        return None, pos
    if marker == OBJECT:
        return _properties(data, pos, depth)
    if marker == ECMA_ARRAY:
        _need(data, pos, 4)
        return _properties(data, pos + 4, depth)  # the count is a hint; the end marker rules
    if marker == STRICT_ARRAY:
        _need(data, pos, 4)
        (count,) = struct.unpack_from(">I", data, pos)
        if count > MAX_ITEMS:
            raise Amf0Error("AMF0 array too long")
        pos += 4
        items = []
        for _ in range(count):
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if marker == DATE:
        _need(data, pos, 10)
        return struct.unpack_from(">d", data, pos)[0], pos + 10
    raise Amf0Error(f"unsupported AMF0 marker 0x{marker:02x}")


def _string(data: bytes, pos: int, size: int) -> tuple[str, int]:
    _need(data, pos, size)
    length = int.from_bytes(data[pos : pos + size], "big")
    pos += size
    _need(data, pos, length)
    return data[pos : pos + length].decode("utf-8", "replace"), pos + length


def _properties(data: bytes, pos: int, depth: int) -> tuple[dict[str, Any], int]:
    result: dict[str, Any] = {}
    while True:
        key, pos = _string(data, pos, 2)
        if not key:
            _need(data, pos, 1)
            if data[pos] == OBJECT_END:
                return result, pos + 1
        if len(result) >= MAX_ITEMS:
            raise Amf0Error("AMF0 object too large")
        result[key], pos = _decode(data, pos, depth + 1)


def encode(*values: Any) -> bytes:
    return b"".join(_encode(v) for v in values)


def _encode(value: Any) -> bytes:
    if value is None:
        return bytes([NULL])
    if isinstance(value, bool):
        return bytes([BOOLEAN, int(value)])
    if isinstance(value, int | float):
        return bytes([NUMBER]) + struct.pack(">d", float(value))
    if isinstance(value, str):
        raw = value.encode()
        if len(raw) > 0xFFFF:
            return bytes([LONG_STRING]) + struct.pack(">I", len(raw)) + raw
        return bytes([STRING]) + struct.pack(">H", len(raw)) + raw
    if isinstance(value, dict):
        body = b"".join(
            struct.pack(">H", len(k.encode())) + k.encode() + _encode(v) for k, v in value.items()
        )
        end = b"\x00\x00" + bytes([OBJECT_END])
        if isinstance(value, EcmaArray):
            return bytes([ECMA_ARRAY]) + struct.pack(">I", len(value)) + body + end
        return bytes([OBJECT]) + body + end
    raise Amf0Error(f"cannot encode {type(value).__name__} as AMF0")
