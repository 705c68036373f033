"""gateway.broker.codec: MQTT 5.0 and 3.1.1 packets and topic filters, with plain bytes, and
property tests: every packet survives encode/decode, and random bytes only ever raise MqttError."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.broker import codec as c


def connect_packet(client_id: str = "dock", keepalive: int = 10, user: str | None = None) -> bytes:
    flags = 0x02 | (0xC0 if user else 0)
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + keepalive.to_bytes(2, "big")
    body += len(client_id).to_bytes(2, "big") + client_id.encode()
    if user:
        body += len(user).to_bytes(2, "big") + user.encode() + b"\x00\x02pw"
    return c._fixed(c.CONNECT, 0, body)


def v5_decoder() -> c.Decoder:
    return c.Decoder(version=c.MQTT5)


@pytest.mark.parametrize(
    ("pattern", "topic", "matches"),
    [
        ("thing/product/+/state", "thing/product/SN1/state", True),
        ("thing/product/+/state", "thing/product/SN1/osd", False),
        ("thing/product/+/state", "thing/product/SN1/state/x", False),
        ("thing/#", "thing/product/SN1/osd", True),
        ("thing/#", "thing", True),
        ("#", "sys/product/SN/status", True),
        ("#", "$SYS/broker", False),
        ("+/+", "a/b", True),
        ("+", "a/b", False),
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
    ],
)
def test_topic_filters(pattern: str, topic: str, matches: bool) -> None:
    assert c.topic_matches(pattern, topic) is matches


@pytest.mark.parametrize(
    ("pattern", "valid"),
    [
        ("a/+/c", True),
        ("a/#", True),
        ("#", True),
        ("a/#/c", False),
        ("a+/b", False),
        ("a/b#", False),
        ("", False),
    ],
)
def test_filter_validity(pattern: str, valid: bool) -> None:
    assert c.valid_filter(pattern) is valid


def test_v311_connect_and_publish_arrive_in_pieces() -> None:
    data = connect_packet(user="u") + c.encode(c.Publish("t/1", b"x" * 300, 1, False, 7))
    decoder = c.Decoder()
    packets = [p for byte in data for p in decoder.feed(bytes([byte]))]
    assert packets == [
        c.Connect("dock", 10, True, "u", b"pw", c.MQTT311),
        c.Publish("t/1", b"x" * 300, 1, False, 7),
    ]
    assert decoder.version == c.MQTT311


def test_v5_connect_sets_the_version_and_properties_come_through() -> None:
    """A CONNECT as mosquitto_pub -V mqttv5 sends it (session expiry, will with properties),
    then a PUBLISH with user properties, correlation data and a topic alias."""
    will = c.Will("w/t", b"gone", 1, True, c.Properties(((c.WILL_DELAY, 5), (c.CONTENT_TYPE, "text/plain"))))
    connect = c.Connect(
        "dock", 30, False, None, b"secret", c.MQTT5, will, c.Properties(((c.SESSION_EXPIRY, 3600),))
    )
    publish = c.Publish(
        "t",
        b"{}",
        2,
        False,
        9,
        properties=c.Properties(
            (
                (c.USER_PROPERTY, ("k", "v")),
                (c.USER_PROPERTY, ("k", "w")),
                (c.CORRELATION_DATA, b"\x00\x01"),
                (c.TOPIC_ALIAS, 3),
            )
        ),
    )
    decoder = c.Decoder()
    assert decoder.feed(c.encode(connect, c.MQTT5) + c.encode(publish, c.MQTT5)) == [connect, publish]
    assert decoder.version == c.MQTT5


def test_subscribe_options_unsubscribe_acks_pings_and_disconnect() -> None:
    subscribe = c._fixed(c.SUBSCRIBE, 2, b"\x00\x05" + b"\x00\x03a/+" + b"\x01" + b"\x00\x01#" + b"\x02")
    unsubscribe = c._fixed(c.UNSUBSCRIBE, 2, b"\x00\x06\x00\x03a/+")
    packets = c.Decoder().feed(
        subscribe + unsubscribe + c.encode(c.Ack(c.PUBREL, 9)) + bytes([0xC0, 0]) + bytes([0xE0, 0])
    )
    assert packets == [
        c.Subscribe(5, (c.Subscription("a/+", 1), c.Subscription("#", 2))),
        c.Unsubscribe(6, ("a/+",)),
        c.Ack(c.PUBREL, 9),
        c.Simple(c.PINGREQ),
        c.Disconnect(),
    ]
    # v5: options no local, retain as published, retain handling 2; a subscription identifier.
    v5 = c._fixed(c.SUBSCRIBE, 2, b"\x00\x07" + b"\x02\x0b\x2a" + b"\x00\x01t" + bytes([0x2E]))
    assert v5_decoder().feed(v5) == [
        c.Subscribe(7, (c.Subscription("t", 2, True, True, 2),), c.Properties(((c.SUBSCRIPTION_ID, 42),)))
    ]
    assert v5_decoder().feed(b"\xe0\x01\x04") == [c.Disconnect(c.DISCONNECT_WITH_WILL)]


def test_encoders() -> None:
    assert c.encode(c.ConnAck(False, 0)) == b"\x20\x02\x00\x00"
    assert c.encode(c.ConnAck(True, 0), c.MQTT5) == b"\x20\x03\x01\x00\x00"
    assert c.encode(c.SubAck(5, (1, 0x80))) == b"\x90\x04\x00\x05\x01\x80"
    assert c.encode(c.SubAck(5, (1, 0x8F)), c.MQTT5) == b"\x90\x05\x00\x05\x00\x01\x8f"
    assert c.encode(c.UnsubAck(6, (0x11,))) == b"\xb0\x02\x00\x06"  # 3.1.1: no reason codes
    assert c.encode(c.UnsubAck(6, (0x11,)), c.MQTT5) == b"\xb0\x04\x00\x06\x00\x11"
    assert c.encode(c.Simple(c.PINGRESP)) == b"\xd0\x00"
    assert c.encode(c.Ack(c.PUBREL, 1)) == b"\x62\x02\x00\x01"
    assert c.encode(c.Ack(c.PUBCOMP, 1, c.PACKET_ID_NOT_FOUND)) == b"\x70\x02\x00\x01"
    assert c.encode(c.Ack(c.PUBCOMP, 1, c.PACKET_ID_NOT_FOUND), c.MQTT5) == b"\x70\x03\x00\x01\x92"
    assert c.encode(c.Disconnect(c.SESSION_TAKEN_OVER), c.MQTT5) == b"\xe0\x01\x8e"
    # Properties are left out for a 3.1.1 client.
    props = c.Properties(((c.USER_PROPERTY, ("a", "b")),))
    assert c.encode(c.Publish("t", b"p", 0, False, properties=props)) == b"\x30\x04\x00\x01tp"
    big = c.encode(c.Publish("t", b"y" * 200_000, 0, True))
    assert c.Decoder().feed(big) == [c.Publish("t", b"y" * 200_000, 0, True)]


def _v5(body: bytes, kind: int = c.PUBLISH, flags: int = 0) -> bytes:
    return c._fixed(kind, flags, body)


BAD = {
    "length-over-4-bytes": (c.Decoder, bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), c.MALFORMED),
    "qos3": (c.Decoder, c._fixed(c.PUBLISH, 0x06, b"\x00\x01t"), c.MALFORMED),
    "not-mqtt": (c.Decoder, c._fixed(c.CONNECT, 0, b"\x00\x04HTTP\x04\x02\x00\x0a\x00\x00"), c.MALFORMED),
    "level-6": (
        c.Decoder,
        c._fixed(c.CONNECT, 0, b"\x00\x04MQTT\x06\x02\x00\x0a\x00\x00"),
        c.UNSUPPORTED_PROTOCOL,
    ),
    "no-topics": (c.Decoder, c._fixed(c.SUBSCRIBE, 2, b"\x00\x01"), c.PROTOCOL_ERROR),
    "truncated": (c.Decoder, c._fixed(c.PUBLISH, 0, b"\x00\x09t"), c.MALFORMED),
    "utf8": (c.Decoder, c._fixed(c.PUBLISH, 0, b"\x00\x02\xff\xfe"), c.MALFORMED),
    "v311-auth": (c.Decoder, c._fixed(c.AUTH, 0, b""), c.PROTOCOL_ERROR),
    "connack-from-client": (c.Decoder, c._fixed(c.CONNACK, 0, b"\x00\x00"), c.PROTOCOL_ERROR),
    "reserved-flags": (c.Decoder, c._fixed(c.SUBSCRIBE, 0, b"\x00\x01\x00\x01t\x00"), c.MALFORMED),
    "v311-sub-options": (c.Decoder, c._fixed(c.SUBSCRIBE, 2, b"\x00\x01\x00\x01t\x04"), c.MALFORMED),
    "dup-on-qos0": (c.Decoder, c._fixed(c.PUBLISH, 0x08, b"\x00\x01t"), c.MALFORMED),
    # v5 properties: a length past the packet, an unknown identifier, a value cut short,
    # one repeated that must appear once, one in the wrong packet, a 0 where none is allowed.
    "props-past-end": (v5_decoder, _v5(b"\x00\x01t\x09\x01\x01"), c.MALFORMED),
    "props-unknown": (v5_decoder, _v5(b"\x00\x01t\x02\x7f\x00"), c.MALFORMED),
    "props-cut": (v5_decoder, _v5(b"\x00\x01t\x02\x02\x00"), c.MALFORMED),
    "props-repeated": (v5_decoder, _v5(b"\x00\x01t\x04\x01\x00\x01\x01"), c.PROTOCOL_ERROR),
    "props-wrong-packet": (v5_decoder, _v5(b"\x00\x01t\x05\x11\x00\x00\x00\x01"), c.PROTOCOL_ERROR),
    "props-alias-0": (v5_decoder, _v5(b"\x00\x01t\x03\x23\x00\x00"), c.PROTOCOL_ERROR),
    "props-subscription-id-from-client": (v5_decoder, _v5(b"\x00\x01t\x02\x0b\x01"), c.PROTOCOL_ERROR),
    "props-format-2": (v5_decoder, _v5(b"\x00\x01t\x02\x01\x02"), c.PROTOCOL_ERROR),
    "retain-handling-3": (
        v5_decoder,
        c._fixed(c.SUBSCRIBE, 2, b"\x00\x01\x00\x00\x01t\x30"),
        c.PROTOCOL_ERROR,
    ),
}


@pytest.mark.parametrize(("make", "data", "reason"), BAD.values(), ids=BAD.keys())
def test_malformed_packets_are_refused_with_their_reason(
    make: type[c.Decoder], data: bytes, reason: int
) -> None:
    with pytest.raises(c.MqttError) as refused:
        make().feed(data)
    assert refused.value.reason == reason


def test_a_bad_v5_connect_says_it_was_v5() -> None:
    repeated = b"\x00\x04MQTT\x05\x02\x00\x0a" + b"\x0a\x11\x00\x00\x00\x01\x11\x00\x00\x00\x01" + b"\x00\x00"
    with pytest.raises(c.MqttError) as refused:
        c.Decoder().feed(c._fixed(c.CONNECT, 0, repeated))
    assert (refused.value.reason, refused.value.version) == (c.PROTOCOL_ERROR, c.MQTT5)


def test_packet_over_the_limit_is_refused_before_it_arrives() -> None:
    decoder = c.Decoder(max_packet=1000)
    header = c.encode(c.Publish("t", b"z" * 5000, 0, False))[:4]
    with pytest.raises(c.MqttError, match="over the limit") as refused:
        decoder.feed(header)
    assert refused.value.reason == c.PACKET_TOO_LARGE


# Property tests

texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)
topics = texts.filter(lambda t: t != "")
small = st.binary(max_size=40)
packet_ids = st.integers(1, 65535)
message_props = st.lists(
    st.one_of(
        st.tuples(st.just(c.USER_PROPERTY), st.tuples(texts, texts)),
        st.tuples(st.just(c.CORRELATION_DATA), small),
        st.tuples(st.just(c.RESPONSE_TOPIC), topics),
        st.tuples(st.just(c.CONTENT_TYPE), texts),
        st.tuples(st.just(c.PAYLOAD_FORMAT), st.integers(0, 1)),
        st.tuples(st.just(c.MESSAGE_EXPIRY), st.integers(0, 2**32 - 1)),
        st.tuples(st.just(c.TOPIC_ALIAS), st.integers(1, 65535)),
    ),
    max_size=6,
).map(
    lambda items: c.Properties(
        tuple({k: (k, v) for k, v in items if k != c.USER_PROPERTY}.values())
        + tuple((k, v) for k, v in items if k == c.USER_PROPERTY)
    )
)
WILL_PROPS = {
    c.USER_PROPERTY,
    c.CORRELATION_DATA,
    c.RESPONSE_TOPIC,
    c.CONTENT_TYPE,
    c.PAYLOAD_FORMAT,
    c.MESSAGE_EXPIRY,
}
user_only = st.lists(st.tuples(st.just(c.USER_PROPERTY), st.tuples(texts, texts)), max_size=3).map(
    lambda items: c.Properties(tuple(items))
)


@st.composite
def publishes(draw: st.DrawFn, v5: bool) -> c.Publish:
    qos = draw(st.integers(0, 2))
    return c.Publish(
        draw(topics),
        draw(small),
        qos,
        draw(st.booleans()),
        draw(packet_ids) if qos else None,
        draw(st.booleans()) if qos else False,
        draw(message_props) if v5 else c.NO_PROPERTIES,
    )


@st.composite
def connects(draw: st.DrawFn, v5: bool) -> c.Connect:
    will = None
    if draw(st.booleans()):
        will_props = draw(message_props).only(WILL_PROPS) if v5 else c.NO_PROPERTIES
        will = c.Will(draw(topics), draw(small), draw(st.integers(0, 2)), draw(st.booleans()), will_props)
    username = draw(st.none() | texts)
    password = draw(st.none() | small) if (v5 or username is not None) else None
    props = c.NO_PROPERTIES
    if v5:
        props = c.Properties(
            tuple(
                (k, v)
                for k, v in (
                    (c.SESSION_EXPIRY, draw(st.integers(0, 2**32 - 1))),
                    (c.RECEIVE_MAXIMUM, draw(st.integers(1, 65535))),
                    (c.MAXIMUM_PACKET_SIZE, draw(st.integers(1, 2**32 - 1))),
                )
                if draw(st.booleans())
            )
        )
    return c.Connect(
        draw(texts),
        draw(st.integers(0, 65535)),
        draw(st.booleans()),
        username,
        password,
        c.MQTT5 if v5 else c.MQTT311,
        will,
        props,
    )


@st.composite
def client_packets(draw: st.DrawFn, v5: bool) -> c.Packet:
    props = draw(user_only) if v5 else c.NO_PROPERTIES
    reason = draw(st.sampled_from([0, 0x10, 0x80, 0x92])) if v5 else 0
    kind = draw(st.sampled_from(["publish", "ack", "subscribe", "unsubscribe", "ping", "disconnect"]))
    if kind == "publish":
        return draw(publishes(v5))
    if kind == "ack":
        return c.Ack(
            draw(st.sampled_from(sorted(c._ACKS))),
            draw(packet_ids),
            reason,
            props if reason else c.NO_PROPERTIES,
        )
    if kind == "subscribe":
        subs = st.builds(
            c.Subscription,
            topics,
            st.integers(0, 2),
            st.booleans() if v5 else st.just(False),
            st.booleans() if v5 else st.just(False),
            st.integers(0, 2) if v5 else st.just(0),
        )
        sub_props = props
        if v5 and draw(st.booleans()):
            sub_props = c.Properties(((c.SUBSCRIPTION_ID, draw(st.integers(1, c.MAX_VARINT))), *props.items))
        return c.Subscribe(draw(packet_ids), tuple(draw(st.lists(subs, min_size=1, max_size=3))), sub_props)
    if kind == "unsubscribe":
        return c.Unsubscribe(draw(packet_ids), tuple(draw(st.lists(topics, min_size=1, max_size=3))), props)
    if kind == "ping":
        return c.Simple(c.PINGREQ)
    return c.Disconnect(reason, props if reason else c.NO_PROPERTIES) if v5 else c.Disconnect()


@given(st.booleans(), st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_client_packets_round_trip(v5: bool, data: st.DataObject) -> None:
    version = c.MQTT5 if v5 else c.MQTT311
    connect = data.draw(connects(v5))
    packets = [connect, *data.draw(st.lists(client_packets(v5), max_size=5))]
    wire = b"".join(c.encode(p, version) for p in packets)
    decoder = c.Decoder(max_packet=c.MAX_REMAINING)
    cut = data.draw(st.integers(0, len(wire)))
    assert decoder.feed(wire[:cut]) + decoder.feed(wire[cut:]) == packets


@given(st.booleans(), st.data())
@settings(max_examples=200)
def test_server_packets_round_trip(v5: bool, data: st.DataObject) -> None:
    version = c.MQTT5 if v5 else c.MQTT311
    props = data.draw(user_only) if v5 else c.NO_PROPERTIES
    reasons = st.lists(st.sampled_from([0, 1, 2, 0x11, 0x80, 0x8F]), min_size=1, max_size=4).map(tuple)
    publish = data.draw(publishes(v5))
    if v5:  # a server's PUBLISH may carry several subscription identifiers
        ids = data.draw(st.lists(st.integers(1, c.MAX_VARINT), max_size=3))
        publish = c.Publish(
            publish.topic,
            publish.payload,
            publish.qos,
            publish.retain,
            publish.packet_id,
            publish.dup,
            c.Properties(publish.properties.items + tuple((c.SUBSCRIPTION_ID, i) for i in ids)),
        )
    packets: list[c.Packet] = [
        c.ConnAck(data.draw(st.booleans()), data.draw(st.sampled_from([0, 0x86, 0x87])) if v5 else 0, props),
        publish,
        c.SubAck(data.draw(packet_ids), data.draw(reasons), props),
        c.UnsubAck(data.draw(packet_ids), data.draw(reasons) if v5 else (), props),
        c.Simple(c.PINGRESP),
    ]
    if v5:
        packets.append(c.Disconnect(data.draw(st.sampled_from([0x8E, 0x95, 0x8B])), props))
    decoder = c.Decoder(side=c.CLIENT, version=version)
    assert decoder.feed(b"".join(c.encode(p, version) for p in packets)) == packets


@given(
    st.binary(max_size=300),
    st.sampled_from([None, c.MQTT311, c.MQTT5]),
    st.sampled_from([c.SERVER, c.CLIENT]),
)
@settings(max_examples=1500)
def test_random_bytes_raise_nothing_but_mqtt_error(data: bytes, version: int | None, side: str) -> None:
    decoder = c.Decoder(max_packet=200, side=side, version=version)
    try:
        decoder.feed(data)
    except c.MqttError:
        pass


@given(st.booleans(), st.data())
@settings(max_examples=300)
def test_corrupted_packets_raise_nothing_but_mqtt_error(v5: bool, data: st.DataObject) -> None:
    version = c.MQTT5 if v5 else c.MQTT311
    wire = bytearray(c.encode(data.draw(client_packets(v5)), version))
    for _ in range(data.draw(st.integers(1, 4))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    try:
        c.Decoder(version=version).feed(bytes(wire))
    except c.MqttError:
        pass
