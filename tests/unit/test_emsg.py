"""The timed-ID3 ``emsg`` encoder (`gateway.media.emsg`) against readers written from the
specs (tests/telemetry_boxes.py): known bytes, bad input refused, Hypothesis round trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.media.emsg import (
    SCHEME_ID3,
    TELEMETRY_DESCRIPTION,
    emsg_v1,
    id3_txxx,
    synchsafe,
    telemetry_emsg,
)
from tests.telemetry_boxes import parse_emsg, parse_id3, parse_txxx, unsynchsafe


def test_synchsafe_known_values() -> None:
    assert synchsafe(0) == b"\x00\x00\x00\x00"
    assert synchsafe(127) == b"\x00\x00\x00\x7f"
    assert synchsafe(128) == b"\x00\x00\x01\x00"
    assert synchsafe(0x0FFFFFFF) == b"\x7f\x7f\x7f\x7f"
    for bad in (-1, 1 << 28):
        with pytest.raises(ValueError):
            synchsafe(bad)


def test_id3_txxx_bytes() -> None:
    tag = id3_txxx("d", "v")
    # header: ID3 2.4.0, no flags, size 13 = frame header 10 + body 3 (encoding, "d", NUL, "v")
    body = b"\x03d\x00v"
    frame = b"TXXX" + synchsafe(len(body)) + b"\x00\x00" + body
    assert tag == b"ID3\x04\x00\x00" + synchsafe(len(frame)) + frame


def test_emsg_v1_layout_as_hls_js_reads_it() -> None:
    """hls.js's parseEmsg, version 1: timescale at 4, presentation_time (64 bits) at 8,
    event_duration at 16, id at 20, then the two NUL-ended strings, then the payload."""
    box = emsg_v1(b"PAYLOAD", presentation_time=(1 << 33) + 5, timescale=90_000, event_id=7)
    assert box[4:8] == b"emsg" and box[8] == 1
    payload = box[8:]
    assert int.from_bytes(payload[4:8], "big") == 90_000
    assert int.from_bytes(payload[8:16], "big") == (1 << 33) + 5
    assert int.from_bytes(payload[16:20], "big") == 0
    assert int.from_bytes(payload[20:24], "big") == 7
    assert payload[24:].startswith(SCHEME_ID3.encode() + b"\x00\x00")
    assert payload.endswith(b"PAYLOAD")


def test_telemetry_emsg_carries_the_json() -> None:
    body = json.dumps({"sn": "X", "aircraft": {"height": 120.5}, "note": "Zoom ×2"}, ensure_ascii=False)
    box = telemetry_emsg(body, presentation_time=45_000, timescale=90_000, event_id=3)
    emsg = parse_emsg(box)
    assert (emsg.version, emsg.scheme_id_uri, emsg.value) == (1, SCHEME_ID3, "")
    assert (emsg.timescale, emsg.presentation_time, emsg.id) == (90_000, 45_000, 3)
    [(frame, data)] = parse_id3(emsg.message)
    assert frame == "TXXX"
    assert parse_txxx(data) == (TELEMETRY_DESCRIPTION, body)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        id3_txxx("a\x00b", "v")
    with pytest.raises(ValueError):
        emsg_v1(b"", presentation_time=-1, timescale=90_000)
    with pytest.raises(ValueError):
        emsg_v1(b"", presentation_time=1 << 64, timescale=90_000)
    with pytest.raises(ValueError):
        emsg_v1(b"", presentation_time=0, timescale=0)
    with pytest.raises(ValueError):
        emsg_v1(b"", presentation_time=0, timescale=90_000, scheme_id_uri="a\x00")


@given(st.integers(min_value=0, max_value=(1 << 28) - 1))
def test_synchsafe_round_trip(value: int) -> None:
    assert unsynchsafe(synchsafe(value)) == value


text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=200)


@given(
    description=text,
    value=st.text(st.characters(blacklist_categories=("Cs",)), max_size=2000),
    time=st.integers(min_value=0, max_value=(1 << 64) - 1),
    timescale=st.integers(min_value=1, max_value=(1 << 32) - 1),
    event_id=st.integers(min_value=0, max_value=(1 << 32) - 1),
    duration=st.integers(min_value=0, max_value=(1 << 32) - 1),
    scheme=text,
    emsg_value=text,
)
def test_round_trip(
    description: str,
    value: str,
    time: int,
    timescale: int,
    event_id: int,
    duration: int,
    scheme: str,
    emsg_value: str,
) -> None:
    tag = id3_txxx(description, value)
    box = emsg_v1(
        tag,
        presentation_time=time,
        timescale=timescale,
        scheme_id_uri=scheme,
        value=emsg_value,
        event_duration=duration,
        event_id=event_id,
    )
    emsg = parse_emsg(box)
    assert (emsg.version, emsg.scheme_id_uri, emsg.value) == (1, scheme, emsg_value)
    assert (emsg.timescale, emsg.presentation_time, emsg.event_duration, emsg.id) == (
        timescale,
        time,
        duration,
        event_id,
    )
    [(frame, data)] = parse_id3(emsg.message)
    assert frame == "TXXX" and parse_txxx(data) == (description, value)
