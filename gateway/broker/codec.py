"""MQTT 3.1.1 packets, sans I/O: a decoder that turns bytes into packets and encoders for
what a broker sends. Only what a small broker for docks needs (OASIS MQTT 3.1.1)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

MAX_PACKET = 1024 * 1024


class MqttError(ValueError):
    """A malformed packet: the connection must be closed."""


@dataclass(frozen=True, slots=True)
class Connect:
    client_id: str
    keepalive: int
    clean_session: bool
    username: str | None
    password: bytes | None
    protocol_level: int


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    packet_id: int | None = None
    dup: bool = False


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    topics: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    """PUBACK, PUBREC, PUBREL or PUBCOMP."""

    kind: int
    packet_id: int


@dataclass(frozen=True, slots=True)
class Simple:
    """PINGREQ or DISCONNECT."""

    kind: int


Packet = Connect | Publish | Subscribe | Unsubscribe | Ack | Simple


class Decoder:
    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self._buffer = bytearray()
        self._max = max_packet

    def feed(self, data: bytes) -> list[Packet]:
        self._buffer += data
        packets = []
        while True:
            packet = self._next()
            if packet is None:
                return packets
            packets.append(packet)

    def _next(self) -> Packet | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        length, shift, pos = 0, 0, 1
        while True:
            if pos >= len(buf):
                return None
            byte = buf[pos]
            length |= (byte & 0x7F) << shift
            pos += 1
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MqttError("remaining length longer than 4 bytes")
        if length > self._max:
            raise MqttError(f"packet of {length} bytes is over the limit")
        if len(buf) < pos + length:
            return None
        header, body = buf[0], bytes(buf[pos : pos + length])
        del buf[: pos + length]
        return _parse(header >> 4, header & 0x0F, body)


def _string(body: bytes, pos: int) -> tuple[str, int]:
    if pos + 2 > len(body):
        raise MqttError("string truncated")
    size = int.from_bytes(body[pos : pos + 2], "big")
    if pos + 2 + size > len(body):
        raise MqttError("string truncated")
    try:
        return body[pos + 2 : pos + 2 + size].decode("utf-8"), pos + 2 + size
    except UnicodeDecodeError:
        raise MqttError("string is not UTF-8") from None


def _packet_id(body: bytes, pos: int = 0) -> int:
    if pos + 2 > len(body):
        raise MqttError("packet identifier missing")
    return int.from_bytes(body[pos : pos + 2], "big")


def _parse(kind: int, flags: int, body: bytes) -> Packet:
    if kind == CONNECT:
        name, pos = _string(body, 0)
        if name not in ("MQTT", "MQIsdp") or pos + 4 > len(body):
            raise MqttError("not an MQTT CONNECT")
        level, connect_flags = body[pos], body[pos + 1]
        keepalive = int.from_bytes(body[pos + 2 : pos + 4], "big")
        client_id, pos = _string(body, pos + 4)
        if connect_flags & 0x04:  # will topic and message: read past them (not supported)
            _, pos = _string(body, pos)
            _, pos = _string(body, pos)
        username = password = None
        if connect_flags & 0x80:
            username, pos = _string(body, pos)
        if connect_flags & 0x40:
            raw, pos = _string(body, pos)
            password = raw.encode()
        return Connect(client_id, keepalive, bool(connect_flags & 0x02), username, password, level)
    if kind == PUBLISH:
        qos = (flags >> 1) & 0x03
        if qos == 3:
            raise MqttError("PUBLISH with QoS 3")
        topic, pos = _string(body, 0)
        packet_id = None
        if qos:
            packet_id, pos = _packet_id(body, pos), pos + 2
        return Publish(topic, body[pos:], qos, bool(flags & 0x01), packet_id, bool(flags & 0x08))
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        return Ack(kind, _packet_id(body))
    if kind == SUBSCRIBE:
        packet_id, pos, topics = _packet_id(body), 2, []
        while pos < len(body):
            topic, pos = _string(body, pos)
            if pos >= len(body):
                raise MqttError("SUBSCRIBE without a QoS")
            topics.append((topic, body[pos] & 0x03))
            pos += 1
        if not topics:
            raise MqttError("SUBSCRIBE without topics")
        return Subscribe(packet_id, tuple(topics))
    if kind == UNSUBSCRIBE:
        packet_id, pos, names = _packet_id(body), 2, []
        while pos < len(body):
            topic, pos = _string(body, pos)
            names.append(topic)
        return Unsubscribe(packet_id, tuple(names))
    if kind in (PINGREQ, DISCONNECT):
        return Simple(kind)
    raise MqttError(f"unexpected packet type {kind}")


def _fixed(kind: int, flags: int, body: bytes) -> bytes:
    length, out = len(body), bytearray([kind << 4 | flags])
    while True:
        byte = length & 0x7F
        length >>= 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out) + body


def _str(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def connack(return_code: int = 0, session_present: bool = False) -> bytes:
    return _fixed(CONNACK, 0, bytes([int(session_present), return_code]))


def publish(message: Publish) -> bytes:
    flags = (0x08 if message.dup else 0) | message.qos << 1 | int(message.retain)
    packet_id = struct.pack(">H", message.packet_id) if message.qos else b""
    return _fixed(PUBLISH, flags, _str(message.topic) + packet_id + message.payload)


def ack(kind: int, packet_id: int) -> bytes:
    return _fixed(kind, 0x02 if kind == PUBREL else 0, struct.pack(">H", packet_id))


def suback(packet_id: int, granted: list[int]) -> bytes:
    return _fixed(SUBACK, 0, struct.pack(">H", packet_id) + bytes(granted))


def unsuback(packet_id: int) -> bytes:
    return _fixed(UNSUBACK, 0, struct.pack(">H", packet_id))


def pingresp() -> bytes:
    return _fixed(PINGRESP, 0, b"")


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching with ``+`` and ``#`` (MQTT 3.1.1 section 4.7)."""
    if topic.startswith("$") and not pattern.startswith("$"):
        return False
    filters, levels = pattern.split("/"), topic.split("/")
    for index, part in enumerate(filters):
        if part == "#":
            return True
        if index >= len(levels) or (part != "+" and part != levels[index]):
            return False
    return len(filters) == len(levels)


def valid_filter(pattern: str) -> bool:
    parts = pattern.split("/")
    return bool(pattern) and all(
        ("#" not in p or (p == "#" and i == len(parts) - 1)) and ("+" not in p or p == "+")
        for i, p in enumerate(parts)
    )
