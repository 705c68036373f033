"""The Kerberos Hub SD live view messages (sans-I/O): topics, parsing and building.

A client (Kerberos Hub, or an app) asks for a low resolution live view by publishing a
``request-sd-stream`` keep-alive, about once a second, on ``kerberos/agent/{hubKey}``::

    {"mid": "...", "timestamp": "...", "device_id": "<device>", "hidden": false,
     "payload": {"action": "request-sd-stream", "device_id": "<device>",
                 "value": {"timestamp": 1700000000}}}

The agent (us) answers with ``receive-sd-stream`` messages on ``kerberos/hub/{hubKey}``
that carry a base64 JPEG of a keyframe in ``payload.value.image``. Every agent of a hub
account shares the agent topic, so messages for other devices and other actions are
normal traffic, not errors.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

REQUEST_SD_STREAM = "request-sd-stream"
RECEIVE_SD_STREAM = "receive-sd-stream"
# A keep-alive is a few hundred bytes; anything much larger is not one (and parsing it
# would only cost CPU).
MAX_AGENT_MESSAGE_BYTES = 64 * 1024
MAX_ID_LENGTH = 256


class SdViewProtocolError(ValueError):
    """A message on the agent topic that is not a well-formed Kerberos message."""


def check_hub_key(hub_key: str) -> str:
    """``hub_key`` if it can be one level of an MQTT topic, else ValueError."""
    if not hub_key or any(char in hub_key for char in "/+#\x00"):
        raise ValueError(f"the hub key must be non-empty without '/', '+', '#' or NUL, got {hub_key!r}")
    return hub_key


def agent_topic(hub_key: str) -> str:
    """Where clients ask agents for things (we subscribe)."""
    return f"kerberos/agent/{check_hub_key(hub_key)}"


def hub_topic(hub_key: str) -> str:
    """Where agents answer (we publish)."""
    return f"kerberos/hub/{check_hub_key(hub_key)}"


@dataclass(frozen=True, slots=True)
class AgentMessage:
    """A message to an agent. ``timestamp`` is kept as sent: the protocol description
    shows a string, Kerberos agents send Unix seconds as a number."""

    mid: str
    timestamp: str | int
    device_id: str
    action: str
    value: dict[str, Any] = field(default_factory=dict)
    hidden: bool = False

    @property
    def requests_sd_stream(self) -> bool:
        return self.action == REQUEST_SD_STREAM


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise SdViewProtocolError(f"{where}{key} must be a non-empty string, got {_kind(value)}")
    if len(value) > MAX_ID_LENGTH:
        raise SdViewProtocolError(f"{where}{key} is longer than {MAX_ID_LENGTH} characters")
    return value


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def parse_agent_message(data: bytes) -> AgentMessage:
    """Parse and validate a message published on ``kerberos/agent/{hubKey}``.
    Raises SdViewProtocolError, with what is wrong, for anything malformed."""
    if len(data) > MAX_AGENT_MESSAGE_BYTES:
        raise SdViewProtocolError(f"message of {len(data)} bytes, more than {MAX_AGENT_MESSAGE_BYTES}")
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SdViewProtocolError(f"not JSON: {str(exc)[:100]}") from None
    if not isinstance(message, dict):
        raise SdViewProtocolError(f"not a JSON object but {_kind(message)}")
    if message.get("encrypted") is True:
        # Kerberos can encrypt payloads with a per-account key; we hold none.
        raise SdViewProtocolError("encrypted messages are not supported")
    mid = _text(message, "mid", "")
    timestamp = message.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, str | int) or timestamp == "":
        raise SdViewProtocolError(f"timestamp must be a string or an integer, got {_kind(timestamp)}")
    device_id = _text(message, "device_id", "")
    hidden = message.get("hidden", False)
    if not isinstance(hidden, bool):
        raise SdViewProtocolError(f"hidden must be true or false, got {_kind(hidden)}")
    payload = message.get("payload")
    if not isinstance(payload, dict):
        raise SdViewProtocolError(f"payload must be an object, got {_kind(payload)}")
    action = _text(payload, "action", "payload.")
    if _text(payload, "device_id", "payload.") != device_id:
        # Agents check the receiver twice; two different devices is not a message to trust.
        raise SdViewProtocolError("payload.device_id differs from device_id")
    value = payload.get("value", {})
    if not isinstance(value, dict):
        raise SdViewProtocolError(f"payload.value must be an object, got {_kind(value)}")
    if action == REQUEST_SD_STREAM and "timestamp" in value:
        seconds = value["timestamp"]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise SdViewProtocolError(f"payload.value.timestamp must be a number, got {_kind(seconds)}")
    return AgentMessage(mid, timestamp, device_id, action, value, hidden)


def request_sd_stream(device_id: str, *, timestamp: int, mid: str | None = None) -> bytes:
    """A client's keep-alive (for tests and tools)."""
    return orjson.dumps(
        {
            "mid": mid or uuid.uuid4().hex,
            "timestamp": str(timestamp),
            "device_id": device_id,
            "hidden": False,
            "payload": {
                "action": REQUEST_SD_STREAM,
                "device_id": device_id,
                "value": {"timestamp": timestamp},
            },
        }
    )


@dataclass(frozen=True, slots=True)
class SdImage:
    """A ``receive-sd-stream`` message: one JPEG for ``device_id``."""

    device_id: str
    jpeg: bytes
    timestamp: int  # Unix seconds, as Kerberos agents send it
    mid: str = field(default_factory=lambda: uuid.uuid4().hex)
    hidden: bool = False

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "mid": self.mid,
                "timestamp": self.timestamp,
                "device_id": self.device_id,
                "hidden": self.hidden,
                "payload": {
                    "action": RECEIVE_SD_STREAM,
                    "device_id": self.device_id,
                    "value": {"image": base64.b64encode(self.jpeg).decode("ascii")},
                },
            }
        )


def parse_sd_image(data: bytes) -> SdImage:
    """Parse a ``receive-sd-stream`` message (what a hub or viewer does; for tests, tools)."""
    try:
        message = orjson.loads(data)
        payload = message["payload"]
        if payload["action"] != RECEIVE_SD_STREAM:
            raise SdViewProtocolError(f"action is {payload['action']!r}, not {RECEIVE_SD_STREAM!r}")
        jpeg = base64.b64decode(payload["value"]["image"], validate=True)
        return SdImage(message["device_id"], jpeg, message["timestamp"], message["mid"], message["hidden"])
    except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error) as exc:
        raise SdViewProtocolError(f"not a receive-sd-stream message: {exc!r}"[:200]) from None
