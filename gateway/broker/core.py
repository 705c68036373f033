"""The embedded broker's state machine, sans I/O: bytes from a connection and the time in,
bytes to send and connections to close out (`Send`, `Close`). MQTT 5.0 and 3.1.1 clients
share it, each spoken to in its own version.

What it keeps: sessions by client id (subscriptions, QoS 1/2 messages in flight and queued,
QoS 2 packet ids received) for as long as their session expiry says (v5) or until a clean
session (v3.1.1); retained messages; wills, published on an abnormal end or a v5 DISCONNECT
0x04, after the will delay. Between v5 clients, the message properties (user properties,
response topic, correlation data, content type, payload format, message expiry) pass
through; a v3.1.1 subscriber gets the message without them, as it has none.
"""

from __future__ import annotations

import hmac
import itertools
import math
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field

from gateway.broker import codec as c
from gateway.log import get_logger

log = get_logger(__name__)

# What passes from a publisher to subscribers (MQTT 5.0 section 3.3.2.3): the rest (topic
# alias, subscription ids) is per connection.
FORWARDED = {c.PAYLOAD_FORMAT, c.CONTENT_TYPE, c.RESPONSE_TOPIC, c.CORRELATION_DATA, c.USER_PROPERTY}
NEVER = 0xFFFFFFFF  # a session expiry interval that never ends
TOPIC_ALIAS_MAXIMUM = 16
MAX_QUEUED = 1000  # QoS 1/2 messages kept for one session; more are dropped

# Labels of `BrokerCore.rejected` (the /metrics reason label), by reason code.
REASONS = {
    c.MALFORMED: "malformed",
    c.PROTOCOL_ERROR: "protocol_error",
    c.UNSUPPORTED_PROTOCOL: "unsupported_protocol",
    c.CLIENT_ID_NOT_VALID: "client_id_not_valid",
    c.BAD_CREDENTIALS: "bad_credentials",
    c.BAD_AUTH_METHOD: "bad_auth_method",
    c.SESSION_TAKEN_OVER: "session_taken_over",
    c.TOPIC_NAME_INVALID: "topic_name_invalid",
    c.TOPIC_ALIAS_INVALID: "topic_alias_invalid",
    c.PACKET_TOO_LARGE: "packet_too_large",
}


@dataclass(frozen=True, slots=True)
class Send:
    connection: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    connection: int


Action = Send | Close


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str

    def check(self, username: str | None, password: bytes | None) -> bool:
        # Both compared, in constant time, whatever the first gives.
        user_ok = hmac.compare_digest((username or "").encode(), self.username.encode())
        password_ok = hmac.compare_digest(password or b"", self.password.encode())
        return user_ok and password_ok and username is not None and password is not None


@dataclass(frozen=True, slots=True)
class Message:
    """An application message as the broker keeps it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: c.Properties  # FORWARDED only
    expires_at: float | None  # the message expiry interval, on the broker's clock
    sender: str  # the publisher's client id (for No Local)


@dataclass(slots=True)
class _Outgoing:
    """A QoS 1/2 PUBLISH to a client, until acknowledged."""

    publish: c.Publish  # without version-specific encoding: properties are added per send
    message: Message
    released: bool = False  # QoS 2: PUBREC came, PUBREL sent, PUBCOMP awaited


@dataclass(slots=True)
class _Queued:
    message: Message
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...]


@dataclass(slots=True)
class _Subscribed:
    options: c.Subscription
    identifier: int | None


@dataclass
class Session:
    client_id: str
    subscriptions: dict[str, _Subscribed] = field(default_factory=dict)
    inflight: dict[int, _Outgoing] = field(default_factory=dict)
    queue: deque[_Queued] = field(default_factory=deque)
    qos2_received: set[int] = field(default_factory=set)
    connection: Connection | None = None
    expiry: float = 0.0  # seconds it outlives its connection (math.inf: never)
    expires_at: float | None = None
    pending_will: tuple[float, c.Will] | None = None  # (when, will): the will delay runs
    last_id: int = 0
    dropping: bool = False  # the queue is full: logged once until it drains


@dataclass
class Connection:
    id: int
    decoder: c.Decoder
    version: int = c.MQTT311
    session: Session | None = None
    will: c.Will | None = None
    keepalive: int = 0
    connect_expiry: int = 0  # the v5 session expiry interval the CONNECT asked
    max_packet: float = math.inf  # the client's Maximum Packet Size
    receive_maximum: int = 65535
    aliases: dict[int, str] = field(default_factory=dict)
    closed: bool = False

    @property
    def client_id(self) -> str | None:
        return self.session.client_id if self.session else None


class BrokerCore:
    def __init__(
        self,
        *,
        credentials: Credentials | None = None,
        max_packet: int = c.MAX_PACKET,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self.credentials = credentials
        self.max_packet = max_packet
        self.max_queued = max_queued
        self.connections: dict[int, Connection] = {}
        self.sessions: dict[str, Session] = {}
        self.retained: dict[str, Message] = {}
        self.rejected: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._out: list[Action] = []

    # The I/O layer's calls

    def open(self) -> int:
        """A new network connection: its id."""
        conn = Connection(next(self._ids), c.Decoder(self.max_packet))
        self.connections[conn.id] = conn
        return conn.id

    def established(self, connection: int) -> bool:
        conn = self.connections.get(connection)
        return conn is not None and conn.session is not None

    def keepalive(self, connection: int) -> float | None:
        """Seconds of silence after which the connection is dead (1.5 keep alives), or None."""
        conn = self.connections.get(connection)
        return conn.keepalive * 1.5 if conn is not None and conn.keepalive else None

    def receive(self, connection: int, data: bytes, now: float) -> list[Action]:
        conn = self.connections.get(connection)
        if conn is None or conn.closed:
            return []
        try:
            for packet in conn.decoder.feed(data):
                self._handle(conn, packet, now)
                if conn.closed:
                    break
        except c.MqttError as exc:
            self._reject(conn, exc.reason, str(exc), now, connecting_v5=exc.version == c.MQTT5)
        return self._flush()

    def lost(self, connection: int, now: float, reason: str) -> list[Action]:
        """The connection ended without DISCONNECT (closed, timed out, too slow)."""
        conn = self.connections.get(connection)
        if conn is not None and not conn.closed:
            log.info("mqtt_client_dropped", client=conn.client_id, reason=reason[:200])
            self._close(conn, now)
        self.connections.pop(connection, None)
        return self._flush()

    def tick(self, now: float) -> list[Action]:
        """Publish the wills whose delay ran out; end the sessions that expired."""
        for session in list(self.sessions.values()):
            if session.pending_will is not None and session.pending_will[0] <= now:
                will, session.pending_will = session.pending_will[1], None
                self._publish_will(session.client_id, will, now)
            if session.connection is None and session.expires_at is not None and session.expires_at <= now:
                self._end_session(session, now)
        for topic, message in list(self.retained.items()):
            if message.expires_at is not None and message.expires_at <= now:
                del self.retained[topic]
        return self._flush()

    def next_deadline(self) -> float | None:
        times = [
            t
            for s in self.sessions.values()
            for t in (
                s.pending_will[0] if s.pending_will else None,
                s.expires_at if not s.connection else None,
            )
            if t is not None and t != math.inf
        ]
        return min(times, default=None)

    def shutdown(self) -> list[Action]:
        """The broker stops: v5 clients hear why, every connection closes."""
        for conn in list(self.connections.values()):
            if not conn.closed:
                if conn.session is not None and conn.version == c.MQTT5:
                    self._send(conn, c.Disconnect(c.SERVER_SHUTTING_DOWN))
                conn.closed = True
                self._out.append(Close(conn.id))
        self.connections.clear()
        return self._flush()

    # Packets

    def _handle(self, conn: Connection, packet: c.Packet, now: float) -> None:
        if conn.session is None:
            if not isinstance(packet, c.Connect):
                raise c.MqttError("first packet is not CONNECT", c.PROTOCOL_ERROR)
            self._connect(conn, packet, now)
            return
        session = conn.session
        match packet:
            case c.Publish():
                self._receive_publish(conn, packet, now)
            case c.Ack(kind=c.PUBACK | c.PUBCOMP, packet_id=packet_id):
                outgoing = session.inflight.get(packet_id)
                if outgoing is not None and (packet.kind == c.PUBACK) == (outgoing.publish.qos == 1):
                    del session.inflight[packet_id]
                    self._drain(session, now)
            case c.Ack(kind=c.PUBREC, packet_id=packet_id, reason=reason):
                outgoing = session.inflight.get(packet_id)
                if outgoing is None or outgoing.publish.qos != 2:
                    self._send(conn, c.Ack(c.PUBREL, packet_id, c.PACKET_ID_NOT_FOUND))
                elif reason >= 0x80:  # the subscriber refused it: done
                    del session.inflight[packet_id]
                    self._drain(session, now)
                else:
                    outgoing.released = True
                    self._send(conn, c.Ack(c.PUBREL, packet_id))
            case c.Ack(kind=c.PUBREL, packet_id=packet_id):
                known = packet_id in session.qos2_received
                session.qos2_received.discard(packet_id)
                self._send(conn, c.Ack(c.PUBCOMP, packet_id, c.SUCCESS if known else c.PACKET_ID_NOT_FOUND))
            case c.Subscribe():
                self._subscribe(conn, session, packet, now)
            case c.Unsubscribe(packet_id=packet_id, topics=names):
                reasons = tuple(
                    c.SUCCESS if session.subscriptions.pop(name, None) else c.NO_SUBSCRIPTION_EXISTED
                    for name in names
                )
                self._send(conn, c.UnsubAck(packet_id, reasons))
            case c.Simple(kind=c.PINGREQ):
                self._send(conn, c.Simple(c.PINGRESP))
            case c.Disconnect(reason=reason, properties=properties):
                expiry = properties.get(c.SESSION_EXPIRY)
                if isinstance(expiry, int):
                    if conn.connect_expiry == 0 and expiry:
                        raise c.MqttError("session expiry set at DISCONNECT after 0", c.PROTOCOL_ERROR)
                    session.expiry = math.inf if expiry == NEVER else float(expiry)
                if reason != c.DISCONNECT_WITH_WILL:
                    conn.will = None  # a normal disconnect: no will
                log.info("mqtt_client_disconnected", client=session.client_id, reason=reason)
                self._close(conn, now)
            case c.Connect():
                raise c.MqttError("second CONNECT on a connection", c.PROTOCOL_ERROR)
            case c.Auth():
                raise c.MqttError("enhanced authentication is not supported", c.PROTOCOL_ERROR)

    def _connect(self, conn: Connection, packet: c.Connect, now: float) -> None:
        conn.version = packet.protocol_level
        v5 = conn.version == c.MQTT5
        if v5 and packet.properties.get(c.AUTH_METHOD) is not None:
            self._refuse(conn, c.BAD_AUTH_METHOD, c.V3_NOT_AUTHORIZED, "enhanced authentication asked")
            return
        if self.credentials is not None and not self.credentials.check(packet.username, packet.password):
            self._refuse(conn, c.BAD_CREDENTIALS, c.V3_BAD_CREDENTIALS, "bad user name or password")
            return
        client_id, assigned = packet.client_id, None
        if not client_id:
            if not v5 and not packet.clean_start:
                self._refuse(conn, c.CLIENT_ID_NOT_VALID, c.V3_ID_REJECTED, "empty client id, keep session")
                return
            client_id = assigned = f"auto-{uuid.uuid4().hex}"
        if v5:
            asked = packet.properties.get(c.SESSION_EXPIRY)
            conn.connect_expiry = asked if isinstance(asked, int) else 0
            expiry = math.inf if conn.connect_expiry == NEVER else float(conn.connect_expiry)
            size = packet.properties.get(c.MAXIMUM_PACKET_SIZE)
            conn.max_packet = size if isinstance(size, int) else math.inf
            receive = packet.properties.get(c.RECEIVE_MAXIMUM)
            conn.receive_maximum = receive if isinstance(receive, int) else 65535
        else:
            expiry = 0.0 if packet.clean_start else math.inf
            conn.connect_expiry = 0 if packet.clean_start else NEVER
        session = self.sessions.get(client_id)
        if session is not None and session.connection is not None:
            self._take_over(session.connection, packet, now)
            session = self.sessions.get(client_id)  # ended with the old connection if it had no expiry
        if session is not None and packet.clean_start:
            self._end_session(session, now)
            session = None
        present = session is not None
        if session is None:
            session = self.sessions[client_id] = Session(client_id)
        session.pending_will = None  # reconnected within the will delay: no will
        session.expiry, session.expires_at, session.connection = expiry, None, conn
        conn.session, conn.will, conn.keepalive = session, packet.will, packet.keepalive
        properties: list[tuple[int, c.PropertyValue]] = []
        if v5:
            properties = [
                (c.MAXIMUM_PACKET_SIZE, self.max_packet),
                (c.TOPIC_ALIAS_MAXIMUM, TOPIC_ALIAS_MAXIMUM),
                (c.SHARED_SUB_AVAILABLE, 0),
            ]
            if assigned:
                properties.append((c.ASSIGNED_CLIENT_ID, assigned))
        self._send(conn, c.ConnAck(present, c.SUCCESS, c.Properties(tuple(properties))))
        log.info(
            "mqtt_client_connected",
            client=client_id,
            version="5.0" if v5 else "3.1.1",
            session_present=present,
            will=packet.will is not None,
        )
        # A resumed session: what was in flight goes again, with its original ids.
        for packet_id, outgoing in session.inflight.items():
            if outgoing.released:
                self._send(conn, c.Ack(c.PUBREL, packet_id))
            else:
                self._send_publish(conn, outgoing.publish, outgoing.message, now, dup=True)
        self._drain(session, now)

    def _take_over(self, old: Connection, packet: c.Connect, now: float) -> None:
        log.warning("mqtt_session_taken_over", client=old.client_id)
        self.rejected[REASONS[c.SESSION_TAKEN_OVER]] += 1
        if old.version == c.MQTT5:
            self._send(old, c.Disconnect(c.SESSION_TAKEN_OVER))
        # The old connection's will goes out unless the session carries on past its delay.
        if old.will is not None and not packet.clean_start:
            delay = old.will.properties.get(c.WILL_DELAY)
            if isinstance(delay, int) and delay > 0:
                old.will = None
        self._close(old, now)

    def _refuse(self, conn: Connection, reason: int, v3_code: int, why: str) -> None:
        self.rejected[REASONS.get(reason, f"0x{reason:02x}")] += 1
        log.warning("mqtt_client_refused", reason=why, code=reason)
        self._send(conn, c.ConnAck(False, reason if conn.version == c.MQTT5 else v3_code))
        conn.closed = True
        self._out.append(Close(conn.id))

    def _reject(self, conn: Connection, reason: int, why: str, now: float, *, connecting_v5: bool) -> None:
        """A packet broke the protocol: tell a v5 client why, close, and let the will go."""
        self.rejected[REASONS.get(reason, f"0x{reason:02x}")] += 1
        log.warning("mqtt_client_rejected", client=conn.client_id, reason=why[:200], code=reason)
        if conn.session is not None:
            if conn.version == c.MQTT5:
                self._send(conn, c.Disconnect(reason))
            self._close(conn, now)
            return
        if connecting_v5:
            self._send(conn, c.ConnAck(False, reason), version=c.MQTT5)
        elif reason == c.UNSUPPORTED_PROTOCOL:
            self._send(conn, c.ConnAck(False, c.V3_BAD_PROTOCOL), version=c.MQTT311)
        conn.closed = True
        self._out.append(Close(conn.id))

    def _close(self, conn: Connection, now: float) -> None:
        """End a connection; its session lives on for its expiry, its will (if any is left)
        goes out after its delay (at once when the session ends first)."""
        if conn.closed:
            return
        conn.closed = True
        self._out.append(Close(conn.id))
        session = conn.session
        if session is None or session.connection is not conn:
            return
        session.connection = None
        will, conn.will = conn.will, None
        session.expires_at = now + session.expiry
        if will is not None:
            asked = will.properties.get(c.WILL_DELAY)
            delay = float(asked) if isinstance(asked, int) else 0.0
            if min(delay, session.expiry) <= 0:
                self._publish_will(session.client_id, will, now)
            else:
                session.pending_will = (now + min(delay, session.expiry), will)
        if session.expiry <= 0:
            self._end_session(session, now)

    def _end_session(self, session: Session, now: float) -> None:
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        if session.pending_will is not None:  # the session ends before the will delay
            will, session.pending_will = session.pending_will[1], None
            self._publish_will(session.client_id, will, now)

    def _publish_will(self, client_id: str, will: c.Will, now: float) -> None:
        log.info("mqtt_will_published", client=client_id, topic=will.topic[:200])
        self._route(
            self._message(will.topic, will.payload, will.qos, will.retain, will.properties, client_id, now),
            now,
        )

    # Publishing

    def _receive_publish(self, conn: Connection, packet: c.Publish, now: float) -> None:
        session = conn.session
        assert session is not None
        topic = packet.topic
        alias = packet.properties.get(c.TOPIC_ALIAS)
        if isinstance(alias, int):
            if alias > TOPIC_ALIAS_MAXIMUM:
                raise c.MqttError(f"topic alias {alias} over the maximum", c.TOPIC_ALIAS_INVALID)
            if topic:
                conn.aliases[alias] = topic
            elif alias in conn.aliases:
                topic = conn.aliases[alias]
            else:
                raise c.MqttError(f"topic alias {alias} was never set", c.PROTOCOL_ERROR)
        if not c.valid_topic(topic):
            raise c.MqttError(f"PUBLISH to the invalid topic {topic[:100]!r}", c.TOPIC_NAME_INVALID)
        if packet.qos == 1 and packet.packet_id is not None:
            self._send(conn, c.Ack(c.PUBACK, packet.packet_id))
        elif packet.qos == 2 and packet.packet_id is not None:
            self._send(conn, c.Ack(c.PUBREC, packet.packet_id))
            if packet.packet_id in session.qos2_received:
                return  # sent again before PUBREL: delivered already (exactly once)
            session.qos2_received.add(packet.packet_id)
        message = self._message(
            topic, packet.payload, packet.qos, packet.retain, packet.properties, session.client_id, now
        )
        self._route(message, now)

    @staticmethod
    def _message(
        topic: str, payload: bytes, qos: int, retain: bool, properties: c.Properties, sender: str, now: float
    ) -> Message:
        expiry = properties.get(c.MESSAGE_EXPIRY)
        expires_at = now + expiry if isinstance(expiry, int) else None
        return Message(topic, payload, qos, retain, properties.only(FORWARDED), expires_at, sender)

    def _route(self, message: Message, now: float) -> None:
        if message.retain:
            if message.payload:
                self.retained[message.topic] = message
            else:
                self.retained.pop(message.topic, None)
        for session in list(self.sessions.values()):
            matched = [
                sub
                for pattern, sub in session.subscriptions.items()
                if c.topic_matches(pattern, message.topic)
                and not (sub.options.no_local and session.client_id == message.sender)
            ]
            if not matched:
                continue
            # One copy for overlapping subscriptions: the highest QoS, every identifier.
            qos = min(message.qos, max(sub.options.qos for sub in matched))
            retain = message.retain and any(sub.options.retain_as_published for sub in matched)
            ids = tuple(sorted({sub.identifier for sub in matched if sub.identifier is not None}))
            self._deliver(session, _Queued(message, qos, retain, ids), now)

    def _deliver(self, session: Session, item: _Queued, now: float) -> None:
        conn = session.connection
        if item.qos == 0:
            if conn is not None:
                self._send_publish(conn, self._publish(item, None), item.message, now)
            return
        if conn is not None and not session.queue and len(session.inflight) < conn.receive_maximum:
            self._start(session, conn, item, now)
        elif len(session.queue) < self.max_queued:
            session.queue.append(item)
        elif not session.dropping:
            session.dropping = True
            log.warning("mqtt_session_queue_full", client=session.client_id, queued=len(session.queue))

    def _drain(self, session: Session, now: float) -> None:
        """Send queued messages while the client's receive maximum allows."""
        conn = session.connection
        while conn is not None and session.queue and len(session.inflight) < conn.receive_maximum:
            item = session.queue.popleft()
            if item.message.expires_at is not None and item.message.expires_at <= now:
                continue  # expired before delivery started: dropped (MQTT 5.0 3.3.2.3.3)
            self._start(session, conn, item, now)
        if not session.queue:
            session.dropping = False

    def _start(self, session: Session, conn: Connection, item: _Queued, now: float) -> None:
        packet_id = self._packet_id(session)
        publish = self._publish(item, packet_id)
        if self._send_publish(conn, publish, item.message, now):
            session.inflight[packet_id] = _Outgoing(publish, item.message)

    @staticmethod
    def _publish(item: _Queued, packet_id: int | None) -> c.Publish:
        ids = tuple((c.SUBSCRIPTION_ID, i) for i in item.subscription_ids)
        message = item.message
        return c.Publish(
            message.topic, message.payload, item.qos, item.retain, packet_id, False, c.Properties(ids)
        )

    @staticmethod
    def _packet_id(session: Session) -> int:
        for _ in range(65535):
            session.last_id = session.last_id % 65535 + 1
            if session.last_id not in session.inflight:
                return session.last_id
        raise c.MqttError("no free packet identifier", c.QUOTA_EXCEEDED)  # receive maximum bounds it

    def _send_publish(
        self, conn: Connection, publish: c.Publish, message: Message, now: float, *, dup: bool = False
    ) -> bool:
        """PUBLISH with the message's properties (in v5); False when it is larger than the
        client accepts: then it is dropped for that client (MQTT 5.0 3.1.2.11.4)."""
        items = list(message.properties.items)
        if message.expires_at is not None:
            items.append((c.MESSAGE_EXPIRY, max(0, math.ceil(message.expires_at - now))))
        items += publish.properties.items
        packet = c.Publish(
            publish.topic,
            publish.payload,
            publish.qos,
            publish.retain,
            publish.packet_id,
            dup,
            c.Properties(tuple(items)),
        )
        data = c.encode(packet, conn.version)
        if len(data) > conn.max_packet:
            log.warning(
                "mqtt_message_too_large_for_client",
                client=conn.client_id,
                size=len(data),
                limit=conn.max_packet,
            )
            return False
        self._out.append(Send(conn.id, data))
        return True

    def _subscribe(self, conn: Connection, session: Session, packet: c.Subscribe, now: float) -> None:
        v5 = conn.version == c.MQTT5
        identifier = packet.properties.get(c.SUBSCRIPTION_ID)
        identifier = identifier if isinstance(identifier, int) else None
        reasons, retained = [], []
        for sub in packet.topics:
            if sub.filter.startswith("$share/"):
                reasons.append(c.SHARED_SUBS_NOT_SUPPORTED if v5 else 0x80)
                continue
            if not c.valid_filter(sub.filter):
                reasons.append(c.TOPIC_FILTER_INVALID if v5 else 0x80)
                continue
            existed = sub.filter in session.subscriptions
            session.subscriptions[sub.filter] = _Subscribed(sub, identifier)
            reasons.append(sub.qos)
            if sub.retain_handling == 0 or (sub.retain_handling == 1 and not existed):
                retained += [(sub, m) for t, m in self.retained.items() if c.topic_matches(sub.filter, t)]
        self._send(conn, c.SubAck(packet.packet_id, tuple(reasons)))
        for sub, message in retained:
            if message.expires_at is not None and message.expires_at <= now:
                continue
            ids = (identifier,) if identifier is not None else ()
            # Retained messages sent on subscribe keep RETAIN set (MQTT 5.0 3.3.1.3).
            self._deliver(session, _Queued(message, min(sub.qos, message.qos), True, ids), now)

    def _send(self, conn: Connection, packet: c.Packet, version: int | None = None) -> None:
        self._out.append(Send(conn.id, c.encode(packet, version or conn.version)))

    def _flush(self) -> list[Action]:
        out, self._out = self._out, []
        return out
