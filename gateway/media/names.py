"""The one rule for stream names, applied by every ingress (WebSocket, REST, WHIP, WHEP,
RTMP, RTSP ANNOUNCE), so a name one of them refuses cannot come in through another.

A name is 1..256 characters without control characters. A name that is a URL (it has
``://``) names an RTSP pull (played on demand, or started by ``rtsp/startup``): it must be
an ``rtsp://`` or ``rtsps://`` URL a URL parser accepts, as it is pulled, and logged and
listed redacted. Any other (``file:///etc/passwd``) would look like a source it is not."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

MAX_STREAM_NAME = 256
URL_SCHEMES = ("rtsp://", "rtsps://")


class BadStreamName(ValueError):
    """A stream name the rule refuses; the message says why."""


def validate_stream_name(name: Any) -> str:
    """``name`` if it follows the rule; raises BadStreamName otherwise."""
    if not isinstance(name, str):
        raise BadStreamName("Stream name must be a string")
    if not name:
        raise BadStreamName("Stream name is empty")
    if len(name) > MAX_STREAM_NAME:
        raise BadStreamName(f"Stream name is longer than {MAX_STREAM_NAME} characters")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise BadStreamName("Stream name contains control characters")
    if "://" in name:
        if not name.startswith(URL_SCHEMES):
            raise BadStreamName("Stream name is a URL but not rtsp:// or rtsps://")
        try:
            urlsplit(name).port  # noqa: B018 - the parse and the port check are what is wanted
        except ValueError as exc:
            raise BadStreamName(f"Stream name is not a valid URL: {exc}") from None
    return name
