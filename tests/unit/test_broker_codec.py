"""gateway.broker.codec: MQTT 3.1.1 packets and topic filters, with plain bytes."""

from __future__ import annotations

import pytest

from gateway.broker import codec


def connect_packet(client_id: str = "dock", keepalive: int = 10, user: str | None = None) -> bytes:
    flags = 0x02 | (0xC0 if user else 0)
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + keepalive.to_bytes(2, "big")
    body += len(client_id).to_bytes(2, "big") + client_id.encode()
    if user:
        body += len(user).to_bytes(2, "big") + user.encode() + b"\x00\x02pw"
    return codec._fixed(codec.CONNECT, 0, body)


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
    assert codec.topic_matches(pattern, topic) is matches


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
    assert codec.valid_filter(pattern) is valid


def test_connect_and_publish_arrive_in_pieces() -> None:
    data = connect_packet(user="u") + codec.publish(codec.Publish("t/1", b"x" * 300, 1, False, 7))
    decoder = codec.Decoder()
    packets = [p for byte in data for p in decoder.feed(bytes([byte]))]
    connect, publish = packets
    assert isinstance(connect, codec.Connect)
    assert (connect.client_id, connect.keepalive, connect.username, connect.password) == (
        "dock",
        10,
        "u",
        b"pw",
    )
    assert publish == codec.Publish("t/1", b"x" * 300, 1, False, 7)


def test_subscribe_unsubscribe_acks_and_pings() -> None:
    subscribe = codec._fixed(
        codec.SUBSCRIBE, 2, b"\x00\x05" + b"\x00\x03a/+" + b"\x01" + b"\x00\x01#" + b"\x02"
    )
    unsubscribe = codec._fixed(codec.UNSUBSCRIBE, 2, b"\x00\x06\x00\x03a/+")
    packets = codec.Decoder().feed(
        subscribe + unsubscribe + codec.ack(codec.PUBREL, 9) + bytes([0xC0, 0]) + bytes([0xE0, 0])
    )
    assert packets == [
        codec.Subscribe(5, (("a/+", 1), ("#", 2))),
        codec.Unsubscribe(6, ("a/+",)),
        codec.Ack(codec.PUBREL, 9),
        codec.Simple(codec.PINGREQ),
        codec.Simple(codec.DISCONNECT),
    ]


def test_encoders() -> None:
    assert codec.connack(0) == b"\x20\x02\x00\x00"
    assert codec.suback(5, [1, 0x80]) == b"\x90\x04\x00\x05\x01\x80"
    assert codec.pingresp() == b"\xd0\x00"
    assert codec.ack(codec.PUBREL, 1) == b"\x62\x02\x00\x01"
    big = codec.publish(codec.Publish("t", b"y" * 200_000, 0, True))
    assert codec.Decoder().feed(big) == [codec.Publish("t", b"y" * 200_000, 0, True)]


@pytest.mark.parametrize(
    "data",
    [
        bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),  # remaining length over 4 bytes
        codec._fixed(codec.PUBLISH, 0x06, b"\x00\x01t"),  # QoS 3
        codec._fixed(codec.CONNECT, 0, b"\x00\x04HTTP\x04\x02\x00\x0a\x00\x00"),  # not MQTT
        codec._fixed(codec.SUBSCRIBE, 2, b"\x00\x01"),  # no topics
        codec._fixed(codec.PUBLISH, 0, b"\x00\x09t"),  # topic longer than the packet
        codec._fixed(codec.PUBLISH, 0, b"\x00\x02\xff\xfe"),  # topic not UTF-8
        codec._fixed(15, 0, b""),  # AUTH is MQTT 5
    ],
    ids=["length", "qos3", "not-mqtt", "no-topics", "truncated", "utf8", "mqtt5-auth"],
)
def test_malformed_packets_are_refused(data: bytes) -> None:
    with pytest.raises(codec.MqttError):
        codec.Decoder().feed(data)


def test_packet_over_the_limit_is_refused_before_it_arrives() -> None:
    decoder = codec.Decoder(max_packet=1000)
    header = codec.publish(codec.Publish("t", b"z" * 5000, 0, False))[:4]
    with pytest.raises(codec.MqttError, match="over the limit"):
        decoder.feed(header)
