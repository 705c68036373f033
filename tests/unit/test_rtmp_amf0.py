"""gateway.media.rtmp.amf0: round trips, the markers only decoded (ECMA/strict arrays, date,
undefined), a real connect command body, and the limits that keep hostile input cheap."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from gateway.media.rtmp import amf0
from gateway.media.rtmp.amf0 import Amf0Error, decode_all, encode


def key(name: str) -> bytes:
    raw = name.encode()
    return struct.pack(">H", len(raw)) + raw


def properties(values: dict[str, Any]) -> bytes:
    """Key/value pairs and the object end marker, as objects and ECMA arrays carry them."""
    return b"".join(key(k) + encode(v) for k, v in values.items()) + b"\x00\x00\x09"


def ecma_array(values: dict[str, Any], count: int | None = None) -> bytes:
    count = len(values) if count is None else count
    return bytes([amf0.ECMA_ARRAY]) + struct.pack(">I", count) + properties(values)


def strict_array(items: list[bytes], count: int | None = None) -> bytes:
    count = len(items) if count is None else count
    return bytes([amf0.STRICT_ARRAY]) + struct.pack(">I", count) + b"".join(items)


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        1.0,
        -2.5,
        1e300,
        float(2**53),
        True,
        False,
        "",
        "live",
        "héllo ✓",
        "x" * 0xFFFF,
        None,
        {},
        {"app": "live", "n": 3.0, "ok": True, "none": None},
        {"outer": {"inner": {"deepest": "yes", "list": {"a": 1.0}}}, "ünï": "côdé"},
    ],
)
def test_round_trip(value: Any) -> None:
    assert decode_all(encode(value)) == [value]


def test_integers_become_numbers() -> None:
    data = encode(5)
    assert data == bytes([amf0.NUMBER]) + struct.pack(">d", 5.0)
    assert decode_all(data) == [5.0]


def test_booleans_are_not_numbers() -> None:
    assert encode(True) == bytes([amf0.BOOLEAN, 1])
    assert encode(False) == bytes([amf0.BOOLEAN, 0])
    assert decode_all(bytes([amf0.BOOLEAN, 7])) == [True]


def test_string_markers_and_lengths() -> None:
    assert encode("ab") == b"\x02\x00\x02ab"
    assert encode("é") == b"\x02\x00\x02\xc3\xa9"  # length in bytes, not characters
    assert encode("x" * 0xFFFF)[:3] == b"\x02\xff\xff"


def test_long_string_round_trip() -> None:
    text = "y" * 0x10000 + "é"
    data = encode(text)
    assert data[0] == amf0.LONG_STRING
    assert struct.unpack_from(">I", data, 1)[0] == len(text.encode())
    assert decode_all(data) == [text]


def test_null_and_object_layout() -> None:
    assert encode(None) == b"\x05"
    assert encode({"a": None}) == b"\x03\x00\x01a\x05\x00\x00\x09"


def test_several_values_in_one_body() -> None:
    values = ["_result", 1.0, None, {"code": "NetConnection.Connect.Success"}, "tail", False]
    assert decode_all(encode(*values)) == values


def test_empty_body() -> None:
    assert decode_all(b"") == []
    assert encode() == b""


def test_unencodable_values() -> None:
    for value in (object(), [1, 2], b"bytes", {1, 2}):
        with pytest.raises(Amf0Error):
            encode(value)


# --- markers only decoded ---------------------------------------------------------------------


def test_ecma_array() -> None:
    data = ecma_array({"duration": 0.0, "width": 1280.0, "encoder": "Lavf61.1.100"})
    assert decode_all(data) == [{"duration": 0.0, "width": 1280.0, "encoder": "Lavf61.1.100"}]


def test_ecma_array_count_is_only_a_hint() -> None:
    # Some encoders write 0 (or a wrong count): the object end marker rules.
    assert decode_all(ecma_array({"a": 1.0, "b": 2.0}, count=0)) == [{"a": 1.0, "b": 2.0}]
    assert decode_all(ecma_array({}, count=5) + encode("next")) == [{}, "next"]


def test_strict_array() -> None:
    data = strict_array([encode(1), encode("two"), encode(None), encode({"k": True})])
    assert decode_all(data) == [[1.0, "two", None, {"k": True}]]
    assert decode_all(strict_array([]) + encode(7)) == [[], 7.0]


def test_nested_strict_and_ecma_arrays() -> None:
    inner = strict_array([encode(1), strict_array([encode(2)])])
    data = ecma_array({"keyframes": 0.0}) + bytes([amf0.OBJECT]) + key("times") + inner + b"\x00\x00\x09"
    assert decode_all(data) == [{"keyframes": 0.0}, {"times": [1.0, [2.0]]}]


def test_date() -> None:
    millis = 1_700_000_000_123.0
    data = bytes([amf0.DATE]) + struct.pack(">d", millis) + struct.pack(">h", -60)
    assert decode_all(data + encode("after")) == [millis, "after"]


def test_undefined() -> None:
    assert decode_all(bytes([amf0.UNDEFINED]) + encode(1)) == [None, 1.0]
    assert decode_all(b"\x03" + key("u") + b"\x06\x00\x00\x09") == [{"u": None}]


def test_empty_key_that_is_not_the_end_marker() -> None:
    data = b"\x03" + key("") + encode("v") + key("b") + encode(1) + b"\x00\x00\x09"
    assert decode_all(data) == [{"": "v", "b": 1.0}]


def test_ffmpeg_connect_command() -> None:
    """The connect command body ffmpeg (libavformat/rtmpproto.c gen_connect) sends to publish,
    and the richer one of librtmp/OBS, as they are laid out on the wire."""
    ffmpeg = encode(
        "connect",
        1,
        {
            "app": "live",
            "type": "nonprivate",
            "flashVer": "FMLE/3.0 (compatible; Lavf61.1.100)",
            "tcUrl": "rtmp://127.0.0.1:1935/live",
        },
    )
    assert ffmpeg.startswith(b"\x02\x00\x07connect\x00\x3f\xf0\x00\x00\x00\x00\x00\x00\x03\x00\x03app")
    name, txid, command = decode_all(ffmpeg)
    assert (name, txid) == ("connect", 1.0)
    assert command["app"] == "live"
    assert command["tcUrl"] == "rtmp://127.0.0.1:1935/live"

    librtmp = encode(
        "connect",
        1,
        {
            "app": "live/",
            "flashVer": "FMLE/3.0 (compatible; FMSc/1.0)",
            "swfUrl": "rtmp://example.com/live/",
            "tcUrl": "rtmp://example.com/live/",
            "fpad": False,
            "capabilities": 15,
            "audioCodecs": 4071,
            "videoCodecs": 252,
            "videoFunction": 1,
            "objectEncoding": 0,
        },
        {"extra": "arg"},
    )
    values = decode_all(librtmp)
    assert values[0] == "connect"
    assert values[2]["fpad"] is False
    assert values[2]["audioCodecs"] == 4071.0
    assert values[3] == {"extra": "arg"}


# --- malformed and hostile input --------------------------------------------------------------

SAMPLE = encode(
    {
        "s": "string",
        "n": 1.5,
        "b": True,
        "nil": None,
        "o": {"deep": "x"},
        "long": "z" * 0x10000,
    }
)


@pytest.mark.parametrize(
    "data",
    [
        SAMPLE,
        encode(1.0),
        encode("abc"),
        encode(True),
        ecma_array({"a": 1.0}),
        strict_array([encode("a"), encode(2)]),
        bytes([amf0.DATE]) + bytes(10),
        bytes([amf0.LONG_STRING]) + struct.pack(">I", 3) + b"abc",
    ],
)
def test_every_truncation_is_an_error(data: bytes) -> None:
    decode_all(data)  # the whole value is fine
    for cut in sorted({1, 2, 3, len(data) // 2, len(data) - 3, len(data) - 2, len(data) - 1}):
        if 0 < cut < len(data):
            with pytest.raises(Amf0Error):
                decode_all(data[:cut])


def test_all_truncations_of_a_small_object() -> None:
    data = encode({"a": "bc", "d": {"e": 1}})
    for cut in range(1, len(data)):
        with pytest.raises(Amf0Error):
            decode_all(data[:cut])


def test_string_length_beyond_the_data() -> None:
    with pytest.raises(Amf0Error):
        decode_all(b"\x02\xff\xff" + b"short")
    with pytest.raises(Amf0Error):
        decode_all(bytes([amf0.LONG_STRING]) + b"\xff\xff\xff\xff" + b"short")


@pytest.mark.parametrize(
    "marker",
    [0x04, 0x07, 0x0D, 0x0E, 0x0F, 0x10, 0x11, 0x12, 0x7F, 0xFF],  # movieclip, reference, ..., AMF3
)
def test_unknown_marker(marker: int) -> None:
    with pytest.raises(Amf0Error):
        decode_all(bytes([marker]) + bytes(16))


def test_unknown_marker_inside_an_object() -> None:
    with pytest.raises(Amf0Error):
        decode_all(b"\x03" + key("x") + b"\x11\x00\x00\x09")


def test_an_object_end_marker_on_its_own_is_an_error() -> None:
    with pytest.raises(Amf0Error):
        decode_all(b"\x09")


def nested_objects(levels: int) -> bytes:
    return b"".join(b"\x03" + key("x") for _ in range(levels)) + encode(1) + b"\x00\x00\x09" * levels


def nested_arrays(levels: int) -> bytes:
    return (bytes([amf0.STRICT_ARRAY]) + struct.pack(">I", 1)) * levels + encode(1)


def test_nesting_within_the_limit() -> None:
    value: Any = 1.0
    for _ in range(amf0.MAX_DEPTH):
        value = [value]
    assert decode_all(nested_arrays(amf0.MAX_DEPTH)) == [value]
    assert decode_all(nested_objects(amf0.MAX_DEPTH // 2))


@pytest.mark.parametrize("levels", [amf0.MAX_DEPTH + 1, amf0.MAX_DEPTH + 5, 100_000])
def test_nesting_over_the_limit(levels: int) -> None:
    # Deep enough to overflow Python's stack if unchecked: must be an Amf0Error, not RecursionError.
    with pytest.raises(Amf0Error):
        decode_all(nested_objects(levels))
    with pytest.raises(Amf0Error):
        decode_all(nested_arrays(levels))
    ecma = (bytes([amf0.ECMA_ARRAY]) + b"\x00\x00\x00\x01" + key("k")) * levels + encode(1)
    with pytest.raises(Amf0Error):
        decode_all(ecma)


def test_strict_array_at_the_item_limit() -> None:
    data = strict_array([encode(None)] * amf0.MAX_ITEMS)
    assert decode_all(data) == [[None] * amf0.MAX_ITEMS]


@pytest.mark.parametrize("count", [amf0.MAX_ITEMS + 1, 0xFFFFFFFF])
def test_strict_array_over_the_item_limit(count: int) -> None:
    # The count alone is refused: no attempt to read (or allocate for) billions of items.
    with pytest.raises(Amf0Error):
        decode_all(strict_array([encode(None)] * 4, count=count))


def test_object_and_ecma_array_over_the_item_limit() -> None:
    many = {f"k{i}": None for i in range(amf0.MAX_ITEMS + 1)}
    with pytest.raises(Amf0Error):
        decode_all(encode(many))
    with pytest.raises(Amf0Error):
        decode_all(ecma_array(many))
    at_limit = {f"k{i}": None for i in range(amf0.MAX_ITEMS)}
    assert decode_all(encode(at_limit)) == [at_limit]
