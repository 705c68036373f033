"""MQTT 5.0 and 3.1.1 packets, sans I/O: a decoder that turns bytes into packets (what a
client sends a server, or with ``side=CLIENT`` what a server sends a client) and one encoder
for every packet, in either protocol version (OASIS MQTT 5.0 and 3.1.1).

A decoder on the server side learns the connection's version from its CONNECT. Properties
are kept in order as (identifier, value) pairs; the decoder checks that each is allowed in its
packet and appears at most once where the spec says so. Every malformed input raises
`MqttError` carrying the MQTT 5 reason code to disconnect with, and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15
WILL = 0x100  # not a packet: where will properties are allowed

MQTT31, MQTT311, MQTT5 = 3, 4, 5
SERVER, CLIENT = "server", "client"  # which side decodes

MAX_PACKET = 1024 * 1024
MAX_REMAINING = 268_435_455  # the largest remaining length four bytes encode
MAX_VARINT = MAX_REMAINING

# Reason codes (MQTT 5.0 section 2.4) the broker uses.
SUCCESS = 0x00
GRANTED_QOS_1, GRANTED_QOS_2 = 0x01, 0x02
DISCONNECT_WITH_WILL = 0x04
NO_MATCHING_SUBSCRIBERS = 0x10
NO_SUBSCRIPTION_EXISTED = 0x11
UNSPECIFIED = 0x80
MALFORMED = 0x81
PROTOCOL_ERROR = 0x82
IMPLEMENTATION_SPECIFIC = 0x83
UNSUPPORTED_PROTOCOL = 0x84
CLIENT_ID_NOT_VALID = 0x85
BAD_CREDENTIALS = 0x86
NOT_AUTHORIZED = 0x87
SERVER_SHUTTING_DOWN = 0x8B
BAD_AUTH_METHOD = 0x8C
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
PACKET_ID_NOT_FOUND = 0x92
RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
QUOTA_EXCEEDED = 0x97
SHARED_SUBS_NOT_SUPPORTED = 0x9E

# MQTT 3.1.1 CONNACK return codes.
V3_ACCEPTED, V3_BAD_PROTOCOL, V3_ID_REJECTED, V3_UNAVAILABLE, V3_BAD_CREDENTIALS, V3_NOT_AUTHORIZED = range(6)

# Property identifiers (MQTT 5.0 section 2.2.2.2).
PAYLOAD_FORMAT = 0x01
MESSAGE_EXPIRY = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_ID = 0x0B
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTH_METHOD = 0x15
AUTH_DATA = 0x16
REQUEST_PROBLEM_INFO = 0x17
WILL_DELAY = 0x18
REQUEST_RESPONSE_INFO = 0x19
RESPONSE_INFO = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_SUB_AVAILABLE = 0x28
SUBSCRIPTION_ID_AVAILABLE = 0x29
SHARED_SUB_AVAILABLE = 0x2A

_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
_ACKS = {PUBACK, PUBREC, PUBREL, PUBCOMP}
_ALL = {CONNECT, CONNACK, PUBLISH, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT, AUTH, WILL} | _ACKS
_MESSAGE = {PUBLISH, WILL}
# identifier: (value type, the packets it may appear in)
_PROPERTIES: dict[int, tuple[int, set[int]]] = {
    PAYLOAD_FORMAT: (_BYTE, _MESSAGE),
    MESSAGE_EXPIRY: (_U32, _MESSAGE),
    CONTENT_TYPE: (_STR, _MESSAGE),
    RESPONSE_TOPIC: (_STR, _MESSAGE),
    CORRELATION_DATA: (_BIN, _MESSAGE),
    SUBSCRIPTION_ID: (_VARINT, {PUBLISH, SUBSCRIBE}),
    SESSION_EXPIRY: (_U32, {CONNECT, CONNACK, DISCONNECT}),
    ASSIGNED_CLIENT_ID: (_STR, {CONNACK}),
    SERVER_KEEP_ALIVE: (_U16, {CONNACK}),
    AUTH_METHOD: (_STR, {CONNECT, CONNACK, AUTH}),
    AUTH_DATA: (_BIN, {CONNECT, CONNACK, AUTH}),
    REQUEST_PROBLEM_INFO: (_BYTE, {CONNECT}),
    WILL_DELAY: (_U32, {WILL}),
    REQUEST_RESPONSE_INFO: (_BYTE, {CONNECT}),
    RESPONSE_INFO: (_STR, {CONNACK}),
    SERVER_REFERENCE: (_STR, {CONNACK, DISCONNECT}),
    REASON_STRING: (_STR, _ALL - {CONNECT, PUBLISH, SUBSCRIBE, UNSUBSCRIBE, WILL}),
    RECEIVE_MAXIMUM: (_U16, {CONNECT, CONNACK}),
    TOPIC_ALIAS_MAXIMUM: (_U16, {CONNECT, CONNACK}),
    TOPIC_ALIAS: (_U16, {PUBLISH}),
    MAXIMUM_QOS: (_BYTE, {CONNACK}),
    RETAIN_AVAILABLE: (_BYTE, {CONNACK}),
    USER_PROPERTY: (_PAIR, _ALL),
    MAXIMUM_PACKET_SIZE: (_U32, {CONNECT, CONNACK}),
    WILDCARD_SUB_AVAILABLE: (_BYTE, {CONNACK}),
    SUBSCRIPTION_ID_AVAILABLE: (_BYTE, {CONNACK}),
    SHARED_SUB_AVAILABLE: (_BYTE, {CONNACK}),
}
_NONZERO = {RECEIVE_MAXIMUM, TOPIC_ALIAS, MAXIMUM_PACKET_SIZE, SUBSCRIPTION_ID}

PropertyValue = int | str | bytes | tuple[str, str]


class MqttError(ValueError):
    """A packet that cannot be accepted: the connection must be closed (a v5 peer first gets
    a DISCONNECT, or a CONNACK, with ``reason``)."""

    def __init__(self, message: str, reason: int = MALFORMED) -> None:
        super().__init__(message)
        self.reason = reason
        self.version: int | None = None  # of the CONNECT that failed, once its level was read


@dataclass(frozen=True, slots=True)
class Properties:
    """MQTT 5 properties in the order they came: (identifier, value) pairs."""

    items: tuple[tuple[int, PropertyValue], ...] = ()

    def get(self, identifier: int) -> PropertyValue | None:
        return next((value for key, value in self.items if key == identifier), None)

    def all(self, identifier: int) -> list[PropertyValue]:
        return [value for key, value in self.items if key == identifier]

    def only(self, identifiers: set[int]) -> Properties:
        return Properties(tuple(item for item in self.items if item[0] in identifiers))

    def __bool__(self) -> bool:
        return bool(self.items)


NO_PROPERTIES = Properties()


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Connect:
    client_id: str
    keepalive: int
    clean_start: bool  # "clean session" in MQTT 3.1.1
    username: str | None = None
    password: bytes | None = None
    protocol_level: int = MQTT311
    will: Will | None = None
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    reason: int  # a v5 reason code, or a v3.1.1 return code
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    packet_id: int | None = None
    dup: bool = False
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Ack:
    """PUBACK, PUBREC, PUBREL or PUBCOMP."""

    kind: int
    packet_id: int
    reason: int = SUCCESS
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Subscription:
    filter: str
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0  # 0: send retained, 1: only if new, 2: never


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    topics: tuple[Subscription, ...]
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_id: int
    reasons: tuple[int, ...]
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    topics: tuple[str, ...]
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class UnsubAck:
    packet_id: int
    reasons: tuple[int, ...] = ()  # none in MQTT 3.1.1
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Simple:
    """PINGREQ or PINGRESP."""

    kind: int


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason: int = SUCCESS
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Auth:
    reason: int = SUCCESS
    properties: Properties = NO_PROPERTIES


Packet = (
    Connect
    | ConnAck
    | Publish
    | Ack
    | Subscribe
    | SubAck
    | Unsubscribe
    | UnsubAck
    | Simple
    | Disconnect
    | Auth
)

_FROM_CLIENT = {CONNECT, PUBLISH, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT, AUTH} | _ACKS
_FROM_SERVER = {CONNACK, PUBLISH, SUBACK, UNSUBACK, PINGRESP, DISCONNECT, AUTH} | _ACKS
_FLAGS_TWO = {PUBREL, SUBSCRIBE, UNSUBSCRIBE}  # fixed header flags must be 0b0010 (others 0)


@dataclass
class Decoder:
    """Bytes in, packets out. ``max_packet`` bounds a whole packet (fixed header included,
    as MQTT 5's Maximum Packet Size): a larger one raises before its body arrives."""

    max_packet: int = MAX_PACKET
    side: str = SERVER
    version: int | None = None  # a server's decoder learns it from CONNECT
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Packet]:
        self._buffer += data
        packets: list[Packet] = []
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
        if pos + length > self.max_packet:
            raise MqttError(f"packet of {pos + length} bytes is over the limit", PACKET_TOO_LARGE)
        if len(buf) < pos + length:
            return None
        header, body = buf[0], bytes(buf[pos : pos + length])
        del buf[: pos + length]
        parser = _Parser(body, self.version or MQTT311, self.side)
        try:
            packet = parser.packet(header >> 4, header & 0x0F)
        except MqttError as exc:
            if header >> 4 == CONNECT:
                exc.version = parser.version
            raise
        if isinstance(packet, Connect) and self.version is None:
            self.version = packet.protocol_level
        return packet


class _Parser:
    """One packet's body: a cursor with the readers of the MQTT data types."""

    def __init__(self, body: bytes, version: int, side: str) -> None:
        self.body, self.pos, self.version, self.side = body, 0, version, side

    def need(self, size: int) -> None:
        if self.pos + size > len(self.body):
            raise MqttError("packet truncated")

    def byte(self) -> int:
        self.need(1)
        self.pos += 1
        return self.body[self.pos - 1]

    def u16(self) -> int:
        self.need(2)
        self.pos += 2
        return int.from_bytes(self.body[self.pos - 2 : self.pos], "big")

    def u32(self) -> int:
        self.need(4)
        self.pos += 4
        return int.from_bytes(self.body[self.pos - 4 : self.pos], "big")

    def varint(self) -> int:
        value = 0
        for shift in (0, 7, 14, 21):
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise MqttError("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        size = self.u16()
        self.need(size)
        self.pos += size
        return self.body[self.pos - size : self.pos]

    def string(self) -> str:
        try:
            text = self.binary().decode("utf-8")
        except UnicodeDecodeError:
            raise MqttError("string is not UTF-8") from None
        if "\x00" in text:
            raise MqttError("string holds U+0000")
        return text

    def rest(self) -> bytes:
        data, self.pos = self.body[self.pos :], len(self.body)
        return data

    def left(self) -> int:
        return len(self.body) - self.pos

    def end(self) -> None:
        if self.pos != len(self.body):
            raise MqttError("bytes after the end of the packet")

    def packet_id(self) -> int:
        packet_id = self.u16()
        if packet_id == 0:
            raise MqttError("packet identifier 0")
        return packet_id

    def properties(self, kind: int) -> Properties:
        if self.version != MQTT5:
            return NO_PROPERTIES
        size = self.varint()
        self.need(size)
        stop, items, seen = self.pos + size, [], set()
        while self.pos < stop:
            identifier = self.varint()
            spec = _PROPERTIES.get(identifier)
            if spec is None:
                raise MqttError(f"unknown property 0x{identifier:02x}")
            kind_of, allowed = spec
            if kind not in allowed:
                raise MqttError(f"property 0x{identifier:02x} not allowed here", PROTOCOL_ERROR)
            repeatable = identifier == USER_PROPERTY or (
                identifier == SUBSCRIPTION_ID and kind == PUBLISH and self.side == CLIENT
            )
            if identifier in seen and not repeatable:
                raise MqttError(f"property 0x{identifier:02x} repeated", PROTOCOL_ERROR)
            seen.add(identifier)
            value = self._value(kind_of)
            if self.pos > stop:
                raise MqttError("property runs past its length")
            if kind_of == _BYTE and isinstance(value, int) and value > 1:
                raise MqttError(f"property 0x{identifier:02x} is {value}, not 0 or 1", PROTOCOL_ERROR)
            if identifier in _NONZERO and value == 0:
                raise MqttError(f"property 0x{identifier:02x} is 0", PROTOCOL_ERROR)
            items.append((identifier, value))
        return Properties(tuple(items))

    def _value(self, kind_of: int) -> PropertyValue:
        if kind_of == _BYTE:
            return self.byte()
        if kind_of == _U16:
            return self.u16()
        if kind_of == _U32:
            return self.u32()
        if kind_of == _VARINT:
            return self.varint()
        if kind_of == _STR:
            return self.string()
        if kind_of == _BIN:
            return self.binary()
        return self.string(), self.string()

    def packet(self, kind: int, flags: int) -> Packet:
        if kind not in (_FROM_CLIENT if self.side == SERVER else _FROM_SERVER):
            raise MqttError(f"unexpected packet type {kind}", PROTOCOL_ERROR)
        if kind == AUTH and self.version != MQTT5:
            raise MqttError("AUTH is MQTT 5 only", PROTOCOL_ERROR)
        if kind != PUBLISH and flags != (2 if kind in _FLAGS_TWO else 0):
            raise MqttError(f"reserved flags 0x{flags:x} in packet type {kind}")
        packet = self._parse(kind, flags)
        self.end()
        return packet

    def _parse(self, kind: int, flags: int) -> Packet:
        if kind == CONNECT:
            return self.connect()
        if kind == PUBLISH:
            return self.publish(flags)
        if kind in _ACKS:
            packet_id = self.packet_id()
            if self.version != MQTT5 or not self.left():
                return Ack(kind, packet_id)
            reason = self.byte()
            return Ack(kind, packet_id, reason, self.properties(kind) if self.left() else NO_PROPERTIES)
        if kind == SUBSCRIBE:
            return self.subscribe()
        if kind == UNSUBSCRIBE:
            packet_id, properties = self.packet_id(), self.properties(UNSUBSCRIBE)
            names = []
            while self.left():
                names.append(self.string())
            if not names:
                raise MqttError("UNSUBSCRIBE without topics", PROTOCOL_ERROR)
            return Unsubscribe(packet_id, tuple(names), properties)
        if kind == CONNACK:
            flags_byte, reason = self.byte(), self.byte()
            if flags_byte & 0xFE:
                raise MqttError("reserved CONNACK flags")
            return ConnAck(bool(flags_byte & 1), reason, self.properties(CONNACK))
        if kind == SUBACK:
            packet_id, properties = self.u16(), self.properties(SUBACK)
            return SubAck(packet_id, tuple(self.rest()), properties)
        if kind == UNSUBACK:
            packet_id, properties = self.u16(), self.properties(UNSUBACK)
            return UnsubAck(packet_id, tuple(self.rest()) if self.version == MQTT5 else (), properties)
        if kind in (DISCONNECT, AUTH):
            if self.version != MQTT5 or not self.left():
                return Disconnect() if kind == DISCONNECT else Auth()
            reason = self.byte()
            properties = self.properties(kind) if self.left() else NO_PROPERTIES
            return Disconnect(reason, properties) if kind == DISCONNECT else Auth(reason, properties)
        return Simple(kind)  # PINGREQ, PINGRESP: no body (end() checks)

    def connect(self) -> Connect:
        name = self.string()
        level = self.byte()
        if (name, level) not in (("MQTT", MQTT311), ("MQTT", MQTT5), ("MQIsdp", MQTT31)):
            if name in ("MQTT", "MQIsdp"):
                raise MqttError(f"protocol level {level} is not supported", UNSUPPORTED_PROTOCOL)
            raise MqttError("not an MQTT CONNECT")
        self.version = level
        flags = self.byte()
        keepalive = self.u16()
        will_qos = (flags >> 3) & 0x03
        if flags & 0x01:
            raise MqttError("reserved CONNECT flag set")
        if will_qos == 3 or (not flags & 0x04 and flags & 0x38):
            raise MqttError("will QoS or retain without a will, or will QoS 3")
        if level != MQTT5 and flags & 0x40 and not flags & 0x80:
            raise MqttError("password without a user name")
        properties = self.properties(CONNECT)
        client_id = self.string()
        will = None
        if flags & 0x04:
            will_properties = self.properties(WILL)
            topic, payload = self.string(), self.binary()
            will = Will(topic, payload, will_qos, bool(flags & 0x20), will_properties)
        username = self.string() if flags & 0x80 else None
        password = self.binary() if flags & 0x40 else None
        return Connect(client_id, keepalive, bool(flags & 0x02), username, password, level, will, properties)

    def publish(self, flags: int) -> Publish:
        qos, dup = (flags >> 1) & 0x03, bool(flags & 0x08)
        if qos == 3:
            raise MqttError("PUBLISH with QoS 3")
        if dup and not qos:
            raise MqttError("DUP set on a QoS 0 PUBLISH")
        topic = self.string()
        packet_id = self.packet_id() if qos else None
        properties = self.properties(PUBLISH)
        if self.side == SERVER and properties.get(SUBSCRIPTION_ID) is not None:
            raise MqttError("a client's PUBLISH holds a subscription identifier", PROTOCOL_ERROR)
        return Publish(topic, self.rest(), qos, bool(flags & 0x01), packet_id, dup, properties)

    def subscribe(self) -> Subscribe:
        packet_id, properties = self.packet_id(), self.properties(SUBSCRIBE)
        topics = []
        while self.left():
            pattern, options = self.string(), self.byte()
            reserved = 0xC0 if self.version == MQTT5 else 0xFC
            if options & reserved or options & 0x03 == 3:
                raise MqttError("reserved subscription options or QoS 3")
            if (options >> 4) & 0x03 == 3:
                raise MqttError("retain handling 3", PROTOCOL_ERROR)
            topics.append(
                Subscription(
                    pattern, options & 0x03, bool(options & 0x04), bool(options & 0x08), options >> 4
                )
            )
        if not topics:
            raise MqttError("SUBSCRIBE without topics", PROTOCOL_ERROR)
        return Subscribe(packet_id, tuple(topics), properties)


# Encoding


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fixed(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + _varint(len(body)) + body


def _bin(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _str(text: str) -> bytes:
    return _bin(text.encode())


def encode_properties(properties: Properties) -> bytes:
    out = bytearray()
    for identifier, value in properties.items:
        kind_of = _PROPERTIES[identifier][0]
        out += _varint(identifier)
        if kind_of == _BYTE:
            out.append(int(value))  # type: ignore[arg-type]
        elif kind_of == _U16:
            out += struct.pack(">H", value)
        elif kind_of == _U32:
            out += struct.pack(">I", value)
        elif kind_of == _VARINT:
            out += _varint(int(value))  # type: ignore[arg-type]
        elif kind_of == _STR:
            out += _str(str(value))
        elif kind_of == _BIN:
            out += _bin(bytes(value))  # type: ignore[arg-type]
        else:
            assert isinstance(value, tuple)
            out += _str(value[0]) + _str(value[1])
    return _varint(len(out)) + bytes(out)


def encode(packet: Packet, version: int = MQTT311) -> bytes:
    """``packet`` as bytes in protocol ``version`` (properties and reason codes are left
    out for MQTT 3.1.1, as it has none)."""
    v5 = version == MQTT5

    def props(properties: Properties) -> bytes:
        return encode_properties(properties) if v5 else b""

    match packet:
        case Publish():
            flags = (0x08 if packet.dup else 0) | packet.qos << 1 | int(packet.retain)
            packet_id = struct.pack(">H", packet.packet_id or 0) if packet.qos else b""
            body = _str(packet.topic) + packet_id + props(packet.properties) + packet.payload
            return _fixed(PUBLISH, flags, body)
        case Ack(kind=kind, packet_id=packet_id, reason=reason, properties=properties):
            body = struct.pack(">H", packet_id)
            if v5 and (reason or properties):
                body += bytes([reason]) + (encode_properties(properties) if properties else b"")
            return _fixed(kind, 0x02 if kind == PUBREL else 0, body)
        case ConnAck(session_present=present, reason=reason, properties=properties):
            return _fixed(CONNACK, 0, bytes([int(present), reason]) + props(properties))
        case SubAck(packet_id=packet_id, reasons=reasons, properties=properties):
            return _fixed(SUBACK, 0, struct.pack(">H", packet_id) + props(properties) + bytes(reasons))
        case UnsubAck(packet_id=packet_id, reasons=reasons, properties=properties):
            body = struct.pack(">H", packet_id) + (props(properties) + bytes(reasons) if v5 else b"")
            return _fixed(UNSUBACK, 0, body)
        case Simple(kind=kind):
            return _fixed(kind, 0, b"")
        case Disconnect(reason=reason, properties=properties) | Auth(reason=reason, properties=properties):
            kind = DISCONNECT if isinstance(packet, Disconnect) else AUTH
            body = b""
            if v5 and (reason or properties):
                body = bytes([reason]) + (encode_properties(properties) if properties else b"")
            return _fixed(kind, 0, body)
        case Subscribe(packet_id=packet_id, topics=topics, properties=properties):
            body = struct.pack(">H", packet_id) + props(properties)
            for sub in topics:
                options = sub.qos
                if v5:
                    options |= sub.no_local << 2 | sub.retain_as_published << 3 | sub.retain_handling << 4
                body += _str(sub.filter) + bytes([options])
            return _fixed(SUBSCRIBE, 2, body)
        case Unsubscribe(packet_id=packet_id, topics=names, properties=properties):
            body = struct.pack(">H", packet_id) + props(properties) + b"".join(_str(n) for n in names)
            return _fixed(UNSUBSCRIBE, 2, body)
        case Connect():
            return _connect(packet)
    raise TypeError(f"not a packet: {packet!r}")


def _connect(packet: Connect) -> bytes:
    v5 = packet.protocol_level == MQTT5
    name = "MQIsdp" if packet.protocol_level == MQTT31 else "MQTT"
    will = packet.will
    flags = (
        (0x02 if packet.clean_start else 0)
        | (0x04 | will.qos << 3 | (0x20 if will.retain else 0) if will else 0)
        | (0x40 if packet.password is not None else 0)
        | (0x80 if packet.username is not None else 0)
    )
    body = _str(name) + bytes([packet.protocol_level, flags]) + struct.pack(">H", packet.keepalive)
    body += encode_properties(packet.properties) if v5 else b""
    body += _str(packet.client_id)
    if will is not None:
        body += (encode_properties(will.properties) if v5 else b"") + _str(will.topic) + _bin(will.payload)
    if packet.username is not None:
        body += _str(packet.username)
    if packet.password is not None:
        body += _bin(packet.password)
    return _fixed(CONNECT, 0, body)


# Topics


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching with ``+`` and ``#`` (MQTT 5.0 section 4.7)."""
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


def valid_topic(topic: str) -> bool:
    """A topic name one may publish to: not empty, no wildcard."""
    return bool(topic) and "+" not in topic and "#" not in topic
