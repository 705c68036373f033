"""gateway.broker.core, the embedded broker's rules, on plain data: clients are codec
encoders and decoders wired to a BrokerCore, time is a number."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.broker import codec as c
from gateway.broker.core import BrokerCore, Close, Credentials, Send


class Net:
    def __init__(self, **options: Any) -> None:
        self.core = BrokerCore(**options)
        self.peers: dict[int, Peer] = {}
        self.now = 0.0

    def peer(self, version: int = c.MQTT5) -> Peer:
        peer = Peer(self, version)
        self.peers[peer.conn] = peer
        return peer

    def dispatch(self, actions: list[Send | Close]) -> None:
        for action in actions:
            peer = self.peers[action.connection]
            if isinstance(action, Send):
                assert not peer.closed, "sent to a closed connection"
                peer.inbox += peer.decoder.feed(action.data)
            else:
                peer.closed = True

    def tick(self, now: float) -> None:
        self.now = now
        self.dispatch(self.core.tick(now))


class Peer:
    def __init__(self, net: Net, version: int) -> None:
        self.net, self.version = net, version
        self.conn = net.core.open()
        self.decoder = c.Decoder(side=c.CLIENT, version=version)
        self.inbox: list[c.Packet] = []
        self.closed = False

    def send(self, *packets: c.Packet) -> None:
        data = b"".join(c.encode(p, self.version) for p in packets)
        self.net.dispatch(self.net.core.receive(self.conn, data, self.net.now))

    def send_raw(self, data: bytes) -> None:
        self.net.dispatch(self.net.core.receive(self.conn, data, self.net.now))

    def connect(self, client_id: str, clean: bool = True, **kw: Any) -> c.ConnAck:
        self.send(c.Connect(client_id, 60, clean, protocol_level=self.version, **kw))
        connack = self.inbox.pop(0)  # what follows (a resumed session's messages) stays
        assert isinstance(connack, c.ConnAck)
        return connack

    def lose(self) -> None:
        self.net.dispatch(self.net.core.lost(self.conn, self.net.now, "test"))
        self.closed = True

    def take(self) -> list[c.Packet]:
        out, self.inbox = self.inbox, []
        return out

    def publishes(self) -> list[c.Publish]:
        return [p for p in self.take() if isinstance(p, c.Publish)]


def subscribe(
    peer: Peer, *subs: c.Subscription, packet_id: int = 1, props: c.Properties = c.NO_PROPERTIES
) -> None:
    peer.send(c.Subscribe(packet_id, subs, props))
    (suback,) = [p for p in peer.take() if isinstance(p, c.SubAck)]
    assert all(r < 0x80 for r in suback.reasons), suback


def user(*pairs: tuple[str, str]) -> c.Properties:
    return c.Properties(tuple((c.USER_PROPERTY, p) for p in pairs))


REQUEST = c.Properties(
    (
        (c.USER_PROPERTY, ("a", "1")),
        (c.RESPONSE_TOPIC, "reply/here"),
        (c.CORRELATION_DATA, b"\x01\x02"),
        (c.CONTENT_TYPE, "application/json"),
        (c.PAYLOAD_FORMAT, 1),
        (c.USER_PROPERTY, ("a", "2")),
    )
)


def test_v5_connack_announces_the_limits_and_assigns_a_client_id() -> None:
    net = Net(max_packet=5000)
    connack = net.peer().connect("")
    assert (connack.session_present, connack.reason) == (False, c.SUCCESS)
    assert connack.properties.get(c.MAXIMUM_PACKET_SIZE) == 5000
    assert connack.properties.get(c.SHARED_SUB_AVAILABLE) == 0
    assert str(connack.properties.get(c.ASSIGNED_CLIENT_ID)).startswith("auto-")
    assert connack.properties.get(c.SERVER_KEEP_ALIVE) is None  # the client's keep alive stands


def test_properties_pass_between_v5_clients_and_are_dropped_toward_v311_both_ways() -> None:
    net = Net()
    v5_sub, v3_sub, v5_pub, v3_pub = net.peer(), net.peer(c.MQTT311), net.peer(), net.peer(c.MQTT311)
    for name, peer in (("s5", v5_sub), ("s3", v3_sub), ("p5", v5_pub), ("p3", v3_pub)):
        peer.connect(name)
    subscribe(v5_sub, c.Subscription("t/#", 1))
    subscribe(v3_sub, c.Subscription("t/#", 1))
    expiry = c.Properties(((c.MESSAGE_EXPIRY, 60),))
    v5_pub.send(
        c.Publish("t/a", b"from5", 1, False, 1, properties=c.Properties(REQUEST.items + expiry.items))
    )
    net.now = 10.0
    v3_pub.send(c.Publish("t/b", b"from3", 1, False, 1))
    (first, second) = v5_sub.publishes()
    assert first.payload == b"from5" and first.properties.all(c.USER_PROPERTY) == [("a", "1"), ("a", "2")]
    assert first.properties.only(set(c._PROPERTIES) - {c.MESSAGE_EXPIRY}) == REQUEST
    assert first.properties.get(c.MESSAGE_EXPIRY) == 60
    assert (second.payload, second.properties) == (b"from3", c.NO_PROPERTIES)
    assert [(p.topic, p.payload, p.properties) for p in v3_sub.publishes()] == [
        ("t/a", b"from5", c.NO_PROPERTIES),
        ("t/b", b"from3", c.NO_PROPERTIES),
    ]


@pytest.mark.parametrize("version", [c.MQTT5, c.MQTT311])
def test_a_persistent_session_keeps_subscriptions_queues_and_redelivers_with_dup(version: int) -> None:
    net = Net()
    keep = {"properties": c.Properties(((c.SESSION_EXPIRY, 300),))} if version == c.MQTT5 else {}
    sub, pub = net.peer(version), net.peer()
    assert not sub.connect("sub", clean=False, **keep).session_present
    pub.connect("pub")
    subscribe(sub, c.Subscription("q", 2))
    pub.send(c.Publish("q", b"1", 1, False, 1))
    (first,) = sub.publishes()
    sub.lose()  # not acknowledged: in flight
    pub.send(c.Publish("q", b"2", 2, False, 2), c.Publish("q", b"zero", 0, False))  # while away
    sub = net.peer(version)
    assert sub.connect("sub", clean=False, **keep).session_present
    again, queued = sub.publishes()  # QoS 0 is not kept for an absent client
    assert (again.payload, again.packet_id, again.dup, again.qos) == (b"1", first.packet_id, True, 1)
    assert (queued.payload, queued.qos, queued.dup) == (b"2", 2, False)
    # QoS 2 in flight as PUBREL: after a reconnect the PUBREL goes again.
    assert queued.packet_id is not None
    sub.send(c.Ack(c.PUBACK, again.packet_id or 0), c.Ack(c.PUBREC, queued.packet_id))
    assert sub.take() == [c.Ack(c.PUBREL, queued.packet_id)]
    sub.lose()
    sub = net.peer(version)
    sub.connect("sub", clean=False, **keep)
    assert sub.take() == [c.Ack(c.PUBREL, queued.packet_id)]
    sub.send(c.Ack(c.PUBCOMP, queued.packet_id))
    assert net.core.sessions["sub"].inflight == {}
    # A clean start forgets it all.
    sub.lose()
    sub = net.peer(version)
    assert not sub.connect("sub", clean=True).session_present
    pub.send(c.Publish("q", b"3", 1, False, 3))
    assert sub.publishes() == []


def test_a_session_expires_after_its_interval() -> None:
    net = Net()
    sub = net.peer()
    sub.connect("sub", clean=False, properties=c.Properties(((c.SESSION_EXPIRY, 30),)))
    subscribe(sub, c.Subscription("q", 1))
    sub.lose()
    net.tick(29.0)
    assert "sub" in net.core.sessions and net.core.next_deadline() == 30.0
    net.tick(30.0)
    assert "sub" not in net.core.sessions


def test_qos2_is_delivered_exactly_once_both_ways() -> None:
    net = Net()
    sub, pub = net.peer(), net.peer()
    sub.connect("sub")
    pub.connect("pub")
    subscribe(sub, c.Subscription("x", 2))
    message = c.Publish("x", b"once", 2, False, 42)
    pub.send(message)
    pub.send(c.Publish("x", b"once", 2, False, 42, dup=True))  # resent before PUBREL
    assert pub.take() == [c.Ack(c.PUBREC, 42), c.Ack(c.PUBREC, 42)]
    pub.send(c.Ack(c.PUBREL, 42))
    assert pub.take() == [c.Ack(c.PUBCOMP, 42)]
    pub.send(c.Ack(c.PUBREL, 42))  # unknown now
    assert pub.take() == [c.Ack(c.PUBCOMP, 42, c.PACKET_ID_NOT_FOUND)]
    (delivered,) = sub.publishes()
    assert (delivered.qos, delivered.payload) == (2, b"once")
    assert delivered.packet_id is not None
    sub.send(c.Ack(c.PUBREC, delivered.packet_id))
    assert sub.take() == [c.Ack(c.PUBREL, delivered.packet_id)]
    sub.send(c.Ack(c.PUBCOMP, delivered.packet_id))
    assert net.core.sessions["sub"].inflight == {}


def will(delay: int | None = None, topic: str = "dock/gone") -> c.Will:
    props = (
        c.Properties(((c.WILL_DELAY, delay), (c.USER_PROPERTY, ("why", "lost"))))
        if delay
        else user(("why", "lost"))
    )
    return c.Will(topic, b"offline", 1, False, props)


def watcher(net: Net) -> Peer:
    peer = net.peer()
    peer.connect("watcher")
    subscribe(peer, c.Subscription("dock/#", 1))
    return peer


@pytest.mark.parametrize("version", [c.MQTT5, c.MQTT311])
def test_a_will_goes_out_on_an_abnormal_end_not_on_disconnect(version: int) -> None:
    net = Net()
    watch = watcher(net)
    dock = net.peer(version)
    dock.connect("dock", will=will())
    dock.send(c.Disconnect())
    assert watch.publishes() == []
    dock = net.peer(version)
    dock.connect("dock", will=will())
    dock.lose()
    (gone,) = watch.publishes()
    expected = [("why", "lost")] if version == c.MQTT5 else []  # a 3.1.1 will has no properties
    assert (gone.topic, gone.payload, gone.properties.all(c.USER_PROPERTY)) == (
        "dock/gone",
        b"offline",
        expected,
    )


def test_v5_disconnect_with_will_sends_it() -> None:
    net = Net()
    watch = watcher(net)
    dock = net.peer()
    dock.connect("dock", will=will())
    dock.send(c.Disconnect(c.DISCONNECT_WITH_WILL))
    assert [p.topic for p in watch.publishes()] == ["dock/gone"]


def test_the_will_delay_is_honoured_and_a_quick_return_cancels_it() -> None:
    net = Net()
    watch = watcher(net)
    session = c.Properties(((c.SESSION_EXPIRY, 100),))
    dock = net.peer()
    dock.connect("dock", will=will(delay=5), properties=session)
    dock.lose()
    net.tick(4.9)
    assert watch.publishes() == []
    assert net.core.next_deadline() == 5.0
    net.tick(5.0)
    assert [p.topic for p in watch.publishes()] == ["dock/gone"]
    # Back within the delay: no will.
    dock = net.peer()
    dock.connect("dock", clean=False, will=will(delay=5), properties=session)
    dock.lose()
    net.tick(6.0)
    dock = net.peer()
    dock.connect("dock", clean=False, properties=session)
    net.tick(20.0)
    assert watch.publishes() == []
    # A session that ends first (expiry 0) sends it at once.
    dock.send(c.Disconnect())
    dock = net.peer()
    dock.connect("dock", will=will(delay=50))
    dock.lose()
    assert [p.topic for p in watch.publishes()] == ["dock/gone"]


def test_retained_messages_and_the_retain_options() -> None:
    net = Net()
    pub = net.peer()
    pub.connect("pub")
    pub.send(c.Publish("r/1", b"kept", 1, True, 1), c.Publish("r/2", b"gone", 0, True))
    pub.send(c.Publish("r/2", b"", 0, True))  # an empty retained message clears it
    late = net.peer(c.MQTT311)
    late.connect("late")
    late.send(c.Subscribe(1, (c.Subscription("r/#", 1),)))
    (kept,) = late.publishes()
    assert (kept.topic, kept.payload, kept.retain, kept.qos) == ("r/1", b"kept", True, 1)
    v5 = net.peer()
    v5.connect("v5")
    v5.send(c.Subscribe(1, (c.Subscription("r/#", 1, retain_handling=2),)))
    assert v5.publishes() == []
    v5.send(c.Subscribe(2, (c.Subscription("r/#", 1, retain_handling=1),)))  # exists already
    assert v5.publishes() == []
    v5.send(c.Subscribe(3, (c.Subscription("r/+", 0, retain_as_published=True, retain_handling=1),)))
    assert [p.retain for p in v5.publishes()] == [True]
    # Live: RETAIN is cleared unless the subscription asked retain as published.
    pub.send(c.Publish("r/1", b"new", 0, True))
    assert [p.retain for p in v5.publishes()] == [True]
    assert [p.retain for p in late.publishes()] == [False]


def test_no_local_and_subscription_identifiers() -> None:
    net = Net()
    peer = net.peer()
    peer.connect("me")
    subscribe(peer, c.Subscription("a/#", 0, no_local=True), props=c.Properties(((c.SUBSCRIPTION_ID, 7),)))
    subscribe(peer, c.Subscription("a/b", 1), packet_id=2, props=c.Properties(((c.SUBSCRIPTION_ID, 9),)))
    peer.send(c.Publish("a/c", b"mine", 0, False))
    assert peer.publishes() == []
    peer.send(c.Publish("a/b", b"mine too", 0, False))
    (own,) = peer.publishes()
    assert own.properties.all(c.SUBSCRIPTION_ID) == [9]  # the no-local one is skipped
    other = net.peer()
    other.connect("other")
    other.send(c.Publish("a/b", b"theirs", 1, False, 1))
    (theirs,) = peer.publishes()
    assert (theirs.qos, theirs.properties.all(c.SUBSCRIPTION_ID)) == (1, [7, 9])  # one copy, highest QoS


def test_topic_aliases_from_a_client() -> None:
    net = Net()
    sub, pub = net.peer(), net.peer()
    sub.connect("sub")
    pub.connect("pub")
    subscribe(sub, c.Subscription("long/topic/name", 0))
    pub.send(c.Publish("long/topic/name", b"1", 0, False, properties=c.Properties(((c.TOPIC_ALIAS, 3),))))
    pub.send(c.Publish("", b"2", 0, False, properties=c.Properties(((c.TOPIC_ALIAS, 3),))))
    received = sub.publishes()
    assert [(p.topic, p.payload, p.properties.get(c.TOPIC_ALIAS)) for p in received] == [
        ("long/topic/name", b"1", None),
        ("long/topic/name", b"2", None),
    ]
    pub.send(c.Publish("", b"3", 0, False, properties=c.Properties(((c.TOPIC_ALIAS, 4),))))
    assert pub.take() == [c.Disconnect(c.PROTOCOL_ERROR)] and pub.closed
    other = net.peer()
    other.connect("other")
    other.send(c.Publish("t", b"", 0, False, properties=c.Properties(((c.TOPIC_ALIAS, 999),))))
    assert other.take() == [c.Disconnect(c.TOPIC_ALIAS_INVALID)]


def test_maximum_packet_sizes_both_ways() -> None:
    net = Net(max_packet=1000)
    small, big = net.peer(), net.peer(c.MQTT311)
    small.connect("small", properties=c.Properties(((c.MAXIMUM_PACKET_SIZE, 100),)))
    big.connect("big")
    for peer in (small, big):
        subscribe(peer, c.Subscription("t", 1))
    pub = net.peer()
    pub.connect("pub")
    pub.send(c.Publish("t", b"x" * 200, 1, False, 1), c.Publish("t", b"fits", 1, False, 2))
    assert [p.payload for p in big.publishes()] == [b"x" * 200, b"fits"]
    (fits,) = small.publishes()  # the large one is dropped for this client only
    assert fits.payload == b"fits" and len(net.core.sessions["small"].inflight) == 1
    pub.take()
    pub.send(c.Publish("t", b"y" * 2000, 0, False))
    assert pub.take() == [c.Disconnect(c.PACKET_TOO_LARGE)] and pub.closed
    assert net.core.rejected["packet_too_large"] == 1
    assert [p.payload for p in big.publishes()] == []


def test_receive_maximum_holds_back_what_the_client_cannot_take() -> None:
    net = Net()
    sub, pub = net.peer(), net.peer()
    sub.connect("sub", properties=c.Properties(((c.RECEIVE_MAXIMUM, 1),)))
    pub.connect("pub")
    subscribe(sub, c.Subscription("t", 1))
    pub.send(c.Publish("t", b"1", 1, False, 1), c.Publish("t", b"2", 1, False, 2))
    (first,) = sub.publishes()
    sub.send(c.Ack(c.PUBACK, first.packet_id or 0))
    assert [p.payload for p in sub.publishes()] == [b"2"]


@pytest.mark.parametrize(
    ("version", "code"), [(c.MQTT5, c.BAD_CREDENTIALS), (c.MQTT311, c.V3_BAD_CREDENTIALS)]
)
def test_credentials(version: int, code: int) -> None:
    net = Net(credentials=Credentials("dock", "s3cret"))
    for name, password in (("dock", b"wrong"), ("other", b"s3cret"), (None, None)):
        peer = net.peer(version)
        peer.send(c.Connect("x", 10, True, name, password, version))
        assert peer.take() == [c.ConnAck(False, code)] and peer.closed
    assert net.core.rejected["bad_credentials"] == 3
    good = net.peer(version)
    assert good.connect("x", username="dock", password=b"s3cret").reason == 0


def test_the_same_client_id_takes_the_session_over() -> None:
    net = Net()
    old, old3 = net.peer(), net.peer(c.MQTT311)
    old.connect("dock")
    old3.connect("dock3")
    new, new3 = net.peer(), net.peer(c.MQTT311)
    new.connect("dock")
    new3.connect("dock3")
    assert old.take() == [c.Disconnect(c.SESSION_TAKEN_OVER)] and old.closed
    assert old3.take() == [] and old3.closed
    assert net.core.rejected["session_taken_over"] == 2
    assert not new.closed and net.core.sessions["dock"].connection is not None


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (c.Connect("again", 10, True, protocol_level=c.MQTT5), c.PROTOCOL_ERROR),
        (c.Publish("a/+", b"", 0, False), c.TOPIC_NAME_INVALID),
        (c.Publish("a/#", b"", 0, False), c.TOPIC_NAME_INVALID),
        (c.Auth(), c.PROTOCOL_ERROR),
    ],
    ids=["second-connect", "plus", "hash", "auth"],
)
def test_protocol_errors_disconnect_with_a_reason_and_others_go_on(packet: c.Packet, reason: int) -> None:
    net = Net()
    watch = watcher(net)
    bad = net.peer()
    bad.connect("bad", will=will())
    bad.send(packet)
    assert bad.take() == [c.Disconnect(reason)] and bad.closed
    assert [p.topic for p in watch.publishes()] == ["dock/gone"]  # an abnormal end: the will goes
    other = net.peer()
    other.connect("other")
    other.send(c.Publish("dock/x", b"still here", 0, False))
    assert [p.payload for p in watch.publishes()] == [b"still here"]


def test_malformed_input_before_and_after_connect() -> None:
    net = Net()
    first = net.peer(c.MQTT311)
    first.send_raw(c._fixed(c.CONNECT, 0, b"\x00\x04MQTT\x07\x02\x00\x0a\x00\x00"))  # level 7
    assert first.take() == [c.ConnAck(False, c.V3_BAD_PROTOCOL)] and first.closed
    second = net.peer()
    second.connect("x")
    second.send_raw(c._fixed(c.PUBLISH, 0, b"\x00\x01t\x04\x01\x00\x01\x01"))  # payload format twice
    assert second.take() == [c.Disconnect(c.PROTOCOL_ERROR)]
    assert dict(net.core.rejected) == {"unsupported_protocol": 1, "protocol_error": 1}


def test_unsuback_reasons_and_pings() -> None:
    net = Net()
    peer = net.peer()
    peer.connect("p")
    subscribe(peer, c.Subscription("a", 0))
    peer.send(c.Unsubscribe(5, ("a", "b")), c.Simple(c.PINGREQ))
    assert peer.take() == [c.UnsubAck(5, (c.SUCCESS, c.NO_SUBSCRIPTION_EXISTED)), c.Simple(c.PINGRESP)]
    peer.send(c.Subscribe(6, (c.Subscription("$share/g/t", 0), c.Subscription("a/#/b", 0))))
    assert peer.take() == [c.SubAck(6, (c.SHARED_SUBS_NOT_SUPPORTED, c.TOPIC_FILTER_INVALID))]


def test_a_queued_message_that_expires_is_not_delivered() -> None:
    net = Net()
    sub, pub = net.peer(), net.peer()
    sub.connect("sub", clean=False, properties=c.Properties(((c.SESSION_EXPIRY, 100),)))
    subscribe(sub, c.Subscription("t", 1))
    sub.lose()
    pub.connect("pub")
    pub.send(c.Publish("t", b"short", 1, False, 1, properties=c.Properties(((c.MESSAGE_EXPIRY, 5),))))
    pub.send(c.Publish("t", b"long", 1, False, 2, properties=c.Properties(((c.MESSAGE_EXPIRY, 50),))))
    net.now = 10.0
    sub = net.peer()
    sub.connect("sub", clean=False, properties=c.Properties(((c.SESSION_EXPIRY, 100),)))
    (left,) = sub.publishes()
    assert (left.payload, left.properties.get(c.MESSAGE_EXPIRY)) == (b"long", 40)


def test_disconnect_may_change_the_session_expiry_but_not_from_zero() -> None:
    net = Net()
    keeper = net.peer()
    keeper.connect("keeper", properties=c.Properties(((c.SESSION_EXPIRY, 10),)))
    keeper.send(c.Disconnect(properties=c.Properties(((c.SESSION_EXPIRY, 0),))))  # ends it now
    assert "keeper" not in net.core.sessions
    zero = net.peer()
    zero.connect("zero")
    zero.send(c.Disconnect(properties=c.Properties(((c.SESSION_EXPIRY, 60),))))
    assert zero.take() == [c.Disconnect(c.PROTOCOL_ERROR)] and zero.closed


@pytest.mark.parametrize(("clean", "delay", "sent"), [(True, 5, True), (False, 0, True), (False, 5, False)])
def test_a_taken_over_connection_sends_its_will_unless_the_session_carries_on(
    clean: bool, delay: int, sent: bool
) -> None:
    net = Net()
    watch = watcher(net)
    session = c.Properties(((c.SESSION_EXPIRY, 100),))
    old = net.peer()
    old.connect("dock", will=will(delay=delay), properties=session)
    new = net.peer()
    new.connect("dock", clean=clean, properties=session)
    net.tick(10.0)
    assert [p.topic for p in watch.publishes()] == (["dock/gone"] if sent else [])


@given(st.binary(max_size=200), st.sampled_from([c.MQTT5, c.MQTT311]))
@settings(max_examples=300, deadline=None)
def test_random_bytes_after_connect_never_break_the_broker(data: bytes, version: int) -> None:
    net = Net(max_packet=150)
    watch = watcher(net)
    fuzzer = net.peer(version)
    fuzzer.connect("fuzzer")
    fuzzer.send_raw(data)  # refused or accepted, never an exception
    other = net.peer(c.MQTT311)
    other.connect("other")
    other.send(c.Publish("dock/ok", b"still", 0, False))
    assert [p.payload for p in watch.publishes() if p.topic == "dock/ok"] == [b"still"]
