"""Timed metadata for fragmented MP4 (sans-I/O): an ID3v2.4 tag with one ``TXXX`` frame, in
an ``emsg`` box (ISO/IEC 23009-1 5.10.3.3, version 1) of the AOM "ID3 in CMAF" scheme.

This is what hls.js turns into metadata cues (``enableEmsgMetadataCues``, on by default):
its MP4 demuxer looks for top-level ``emsg`` boxes in a media segment whose scheme id URI
matches ``/emsg[-/]ID3/i`` and takes the payload as an ID3 tag. Version 1 only: the cue's
time is then ``presentation_time / timescale`` on the media timeline (the fragments'
``tfdt``); hls.js reads a version 0 box's times at fixed offsets, as if both strings were
empty, so a version 0 box with a scheme id would get garbage times.

The frame is ``TXXX`` (user-defined text: a description, then the value), not ``PRIV``:
hls.js hands a TXXX to the page as ``{key: "TXXX", info: <description>, data: <string>}``,
so the page can ``JSON.parse(cue.value.data)``; a PRIV's data would come as an ArrayBuffer to
decode first. Text encoding 3 (UTF-8), which ID3v2.4 allows; sizes are synchsafe integers
(7 bits a byte) in the tag header and, in v2.4, in every frame header too.
"""

from __future__ import annotations

import struct

SCHEME_ID3 = "https://aomedia.org/emsg/ID3"
TELEMETRY_DESCRIPTION = "skyrelay-telemetry"
ID3_HEADER = b"ID3\x04\x00"  # version 2.4.0
ID3_UTF8 = 3
MAX_SYNCHSAFE = (1 << 28) - 1
EMSG_UNKNOWN_DURATION = 0xFFFFFFFF


def synchsafe(value: int) -> bytes:
    """``value`` (< 2**28) as a 4-byte synchsafe integer: 7 bits in each byte."""
    if not 0 <= value <= MAX_SYNCHSAFE:
        raise ValueError(f"{value} does not fit in a synchsafe integer")
    return bytes(((value >> 21) & 0x7F, (value >> 14) & 0x7F, (value >> 7) & 0x7F, value & 0x7F))


def id3_txxx(description: str, value: str) -> bytes:
    """An ID3v2.4 tag holding one ``TXXX`` frame: ``description`` and ``value``, UTF-8."""
    if "\x00" in description:
        raise ValueError("a TXXX description cannot hold a NUL")
    body = bytes((ID3_UTF8,)) + description.encode() + b"\x00" + value.encode()
    frame = b"TXXX" + synchsafe(len(body)) + b"\x00\x00" + body
    return ID3_HEADER + b"\x00" + synchsafe(len(frame)) + frame


def emsg_v1(
    message: bytes,
    *,
    presentation_time: int,
    timescale: int,
    scheme_id_uri: str = SCHEME_ID3,
    value: str = "",
    event_duration: int = 0,
    event_id: int = 0,
) -> bytes:
    """An ``emsg`` box, version 1: the event at ``presentation_time`` (``timescale`` units on
    the media timeline, as ``tfdt``) carrying ``message``."""
    if not 0 <= presentation_time < 1 << 64 or not 0 < timescale < 1 << 32:
        raise ValueError("presentation_time or timescale out of range")
    for text in (scheme_id_uri, value):
        if "\x00" in text:
            raise ValueError("emsg strings cannot hold a NUL")
    payload = (
        b"\x01\x00\x00\x00"  # version 1, no flags
        + struct.pack(
            ">IQII",
            timescale,
            presentation_time,
            event_duration & 0xFFFFFFFF,
            event_id & 0xFFFFFFFF,
        )
        + scheme_id_uri.encode()
        + b"\x00"
        + value.encode()
        + b"\x00"
        + message
    )
    return struct.pack(">I4s", 8 + len(payload), b"emsg") + payload


def telemetry_emsg(body: str, *, presentation_time: int, timescale: int, event_id: int = 0) -> bytes:
    """A telemetry sample's JSON (``body``) as timed ID3 in an ``emsg`` box."""
    return emsg_v1(
        id3_txxx(TELEMETRY_DESCRIPTION, body),
        presentation_time=presentation_time,
        timescale=timescale,
        event_id=event_id,
    )
