"""The embedded broker of a real `skyrelay serve` with real MQTT peers: mosquitto_pub and
mosquitto_sub speaking MQTT 5.0 and 3.1.1 side by side (properties, retained messages, QoS 2,
wills, persistent sessions, log-in), and bad input sent over raw sockets (each refused with
its reason code, logged once and counted, while the other clients keep getting messages)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.broker import codec as c
from tests.conftest import ROOT, GatewayProcess, MosquittoProcess, free_port

V5, V311 = "mqttv5", "mqttv311"
FORMAT = "MSG|%t|%p|%q|%r|%P|%C|%D|%R|%S"


def fields(line: str) -> dict[str, str]:
    names = ["topic", "payload", "qos", "retain", "user", "content_type", "correlation", "response", "sub_id"]
    return dict(zip(names, line.split("|")[1:], strict=True))


class Sub:
    """mosquitto_sub in debug mode: it says when it is subscribed, prints each message as
    FORMAT and the packets it exchanged."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def messages(self) -> list[dict[str, str]]:
        return [fields(line) for line in self.lines if line.startswith("MSG|")]

    async def wait(self, predicate: Callable[[Sub], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                if self.reader.done() and not predicate(self):
                    raise AssertionError(f"mosquitto_sub ended: {self.lines[-10:]}")
                await asyncio.sleep(0.02)

    async def subscribed(self) -> Sub:
        await self.wait(lambda s: any("received SUBACK" in line for line in s.lines))
        return self

    async def count(self, number: int) -> list[dict[str, str]]:
        await self.wait(lambda s: len(s.messages) >= number)
        return self.messages

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(10):
            await self.proc.wait()
        await asyncio.gather(self.reader, return_exceptions=True)


@contextlib.asynccontextmanager
async def subscriber(broker: GatewayProcess, version: str, *args: str) -> AsyncIterator[Sub]:
    # stdbuf: piped, mosquitto_sub's stdout would hold its lines in a block buffer.
    proc = await asyncio.create_subprocess_exec(
        "stdbuf", "-oL", "mosquitto_sub", "-d", "-V", version, "-p", str(broker.mqtt_broker_port),
        "-F", FORMAT, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    sub = Sub(proc)
    try:
        yield await sub.subscribed()
    finally:
        await sub.stop(signal.SIGKILL)


async def pub(broker: GatewayProcess, version: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-d", "-V", version, "-p", str(broker.mqtt_broker_port), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(10):
        out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


async def test_v5_and_v311_side_by_side_with_properties_passed_between_v5_clients(
    gateway: GatewayProcess,
) -> None:
    """The failure this fixes: `mosquitto_pub -V mqttv5` was disconnected ("string truncated")."""
    async with (
        subscriber(
            gateway, V5, "-t", "cross/#", "-q", "1", "-D", "subscribe", "subscription-identifier", "7"
        ) as s5,
        subscriber(gateway, V311, "-t", "cross/#", "-q", "1") as s3,
    ):
        rc, out = await pub(
            gateway, V5, "-t", "cross/v5", "-m", "from v5", "-q", "1",
            "-D", "publish", "user-property", "trace", "abc",
            "-D", "publish", "user-property", "trace", "def",
            "-D", "publish", "response-topic", "cross/replies",
            "-D", "publish", "correlation-data", "req-42",
            "-D", "publish", "content-type", "application/json",
            "-D", "publish", "topic-alias", "1",
        )  # fmt: skip
        assert rc == 0, out
        rc, out = await pub(gateway, V311, "-t", "cross/v311", "-m", "from 3.1.1", "-q", "1")
        assert rc == 0, out
        from5, from3 = await s5.count(2)
        assert (from5["topic"], from5["payload"], from5["qos"]) == ("cross/v5", "from v5", "1")
        assert from5["user"] == "trace:abc trace:def"
        assert (from5["response"], from5["correlation"], from5["content_type"]) == (
            "cross/replies",
            "req-42",
            "application/json",
        )
        assert from5["sub_id"] == "7"
        assert (from3["payload"], from3["user"], from3["response"]) == ("from 3.1.1", "", "")
        got3 = await s3.count(2)
        assert [(m["topic"], m["payload"]) for m in got3] == [
            ("cross/v5", "from v5"),
            ("cross/v311", "from 3.1.1"),
        ]
        # A 3.1.1 subscriber gets no properties (the spec: it has none).
        assert all(m["user"] == m["response"] == m["correlation"] == "" for m in got3)


@pytest.mark.parametrize(("publisher", "reader"), [(V311, V5), (V5, V311)])
async def test_retained_messages_across_versions(
    gateway: GatewayProcess, publisher: str, reader: str
) -> None:
    topic = f"retained/{publisher}"
    rc, out = await pub(gateway, publisher, "-t", topic, "-m", "last known", "-r", "-q", "1")
    assert rc == 0, out
    async with subscriber(gateway, reader, "-t", topic) as sub:
        (kept,) = await sub.count(1)
        assert (kept["payload"], kept["retain"]) == ("last known", "1")
    await pub(gateway, publisher, "-t", topic, "-r", "-n")  # empty: clears it
    async with subscriber(gateway, reader, "-t", topic, "-W", "1") as sub:
        await sub.wait(lambda s: s.reader.done())
        assert sub.messages == []


@pytest.mark.parametrize(("publisher", "reader"), [(V5, V311), (V311, V5)])
async def test_qos2_flows_are_exchanged_both_ways_exactly_once(
    gateway: GatewayProcess, publisher: str, reader: str
) -> None:
    topic = f"qos2/{publisher}"
    async with subscriber(gateway, reader, "-t", topic, "-q", "2") as sub:
        rc, out = await pub(gateway, publisher, "-t", topic, "-m", "exactly once", "-q", "2")
        assert rc == 0, out
        for step in ("received PUBREC", "sending PUBREL", "received PUBCOMP"):  # publisher -> broker
            assert step in out, out
        (message,) = await sub.count(1)
        assert (message["payload"], message["qos"]) == ("exactly once", "2")
        await sub.wait(lambda s: any("sending PUBCOMP" in line for line in s.lines))  # broker -> subscriber
        text = "\n".join(sub.lines)
        assert text.index("received PUBLISH (d0, q2") < text.index("sending PUBREC")
        assert text.index("sending PUBREC") < text.index("received PUBREL") < text.index("sending PUBCOMP")
        await asyncio.sleep(0.5)  # nothing more comes
        assert len(sub.messages) == 1


@pytest.mark.parametrize("version", [V5, V311])
async def test_a_will_is_delivered_on_an_abnormal_end_only(gateway: GatewayProcess, version: str) -> None:
    topic = f"wills/{version}"
    will = ["--will-topic", topic, "--will-payload", "dock lost", "--will-qos", "1"]
    async with subscriber(gateway, V5, "-t", "wills/#", "-q", "1") as watcher:
        # A normal end (DISCONNECT after one message): no will.
        async with subscriber(gateway, version, "-t", "wills/ping", "-C", "1", *will) as polite:
            await pub(gateway, V5, "-t", "wills/ping", "-m", "bye")
            await polite.wait(lambda s: s.reader.done())
        await watcher.count(1)  # the ping itself
        # Killed: the connection just ends, and the will goes out.
        async with subscriber(gateway, version, "-t", "other", *will) as doomed:
            await doomed.stop(signal.SIGKILL)
        got = await watcher.count(2)
        assert [(m["topic"], m["payload"]) for m in got] == [("wills/ping", "bye"), (topic, "dock lost")]


async def test_v5_will_delay_and_disconnect_with_will(gateway: GatewayProcess) -> None:
    async with subscriber(gateway, V5, "-t", "delayed/#") as watcher:
        args = [
            "--will-topic",
            "delayed/will",
            "--will-payload",
            "after the delay",
            "-c",
            "-i",
            "delayed",
            "-x",
            "60",
        ]
        async with subscriber(
            gateway, V5, "-t", "x", *args, "-D", "will", "will-delay-interval", "1"
        ) as doomed:
            await doomed.stop(signal.SIGKILL)
        (late,) = await watcher.count(1)
        assert late["payload"] == "after the delay"
    # DISCONNECT reason 0x04 "disconnect with will message", from a raw v5 client.
    async with subscriber(gateway, V5, "-t", "withwill/#") as watcher:
        client = await RawClient.connect(gateway, "leaver", will=c.Will("withwill/t", b"sent anyway"))
        await client.send(c.Disconnect(c.DISCONNECT_WITH_WILL))
        (sent,) = await watcher.count(1)
        assert sent["payload"] == "sent anyway"
        await client.close()


@pytest.mark.parametrize("version", [V5, V311])
async def test_a_persistent_session_gets_what_was_published_while_away(
    gateway: GatewayProcess, version: str
) -> None:
    client_id = f"persistent-{version}"
    keep = ["-c", "-i", client_id, "-q", "2", "-t", f"away/{version}"] + (
        ["-x", "300"] if version == V5 else []
    )
    async with subscriber(gateway, version, *keep) as first:
        await first.stop(signal.SIGKILL)
    for n, qos in ((1, "1"), (2, "2"), (3, "0")):
        await pub(gateway, V5, "-t", f"away/{version}", "-m", f"while away {n}", "-q", qos)
    async with subscriber(gateway, version, *keep) as back:
        await back.count(2)
        assert any("received CONNACK (0)" in line or "received CONNACK" in line for line in back.lines)
        await asyncio.sleep(0.3)
        assert [m["payload"] for m in back.messages] == ["while away 1", "while away 2"]  # QoS 0 is not kept


async def test_an_unacknowledged_message_is_redelivered_with_dup_after_a_reconnect(
    gateway: GatewayProcess,
) -> None:
    session = c.Properties(((c.SESSION_EXPIRY, 300),))
    client = await RawClient.connect(gateway, "no-ack", clean=False, properties=session)
    await client.send(c.Subscribe(1, (c.Subscription("inflight", 1),)))
    await client.expect(c.SubAck)
    await pub(gateway, V5, "-t", "inflight", "-m", "ack me", "-q", "1")
    first = await client.expect(c.Publish)
    await client.close()  # gone without PUBACK
    client = await RawClient.connect(gateway, "no-ack", clean=False, properties=session)
    assert client.connack.session_present
    again = await client.expect(c.Publish)
    assert (again.payload, again.packet_id, again.dup) == (b"ack me", first.packet_id, True)
    await client.send(c.Ack(c.PUBACK, again.packet_id or 0), c.Disconnect())
    await client.close()


async def test_log_in_is_required_when_set(make_gateway: Callable[[dict[str, str]], GatewayProcess]) -> None:
    gateway = make_gateway({"SKYRELAY_MQTT_BROKER_USER": "dock", "SKYRELAY_MQTT_BROKER_PASSWORD": "s3cret"})
    for version in (V5, V311):
        rc, out = await pub(gateway, version, "-t", "t", "-m", "x", "-u", "dock", "-P", "wrong")
        assert rc != 0 and "CONNACK" in out, out
        code = "134" if version == V5 else "4"  # 0x86 bad user name or password / return code 4
        assert f"received CONNACK ({code})" in out, out
        rc, out = await pub(gateway, version, "-t", "t", "-m", "x")
        assert rc != 0, out
        rc, out = await pub(gateway, version, "-t", "t", "-m", "x", "-u", "dock", "-P", "s3cret")
        assert rc == 0, out
    assert gateway.metric("skyrelay_mqtt_broker_rejected_total", reason="bad_credentials") == 4


# Bad input over raw sockets


class RawClient:
    """A hand-driven MQTT client on the codec: sends what no library would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: int) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = c.Decoder(side=c.CLIENT, version=version, max_packet=c.MAX_REMAINING)
        self.inbox: list[c.Packet] = []
        self.version = version
        self.connack = c.ConnAck(False, 0)

    @classmethod
    async def connect(
        cls, gateway: GatewayProcess, client_id: str, *, version: int = c.MQTT5, **options: Any
    ) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.mqtt_broker_port)
        client = cls(reader, writer, version)
        options.setdefault("clean", True)
        clean = options.pop("clean")
        await client.send(c.Connect(client_id, 30, clean, protocol_level=version, **options))
        client.connack = await client.expect(c.ConnAck)
        assert client.connack.reason == 0
        return client

    async def send(self, *packets: c.Packet) -> None:
        await self.send_raw(b"".join(c.encode(p, self.version) for p in packets))

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def next(self, timeout: float = 10.0) -> c.Packet | None:
        """The next packet, or None when the broker closed the connection."""
        async with asyncio.timeout(timeout):
            while not self.inbox:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.inbox += self.decoder.feed(data)
        return self.inbox.pop(0)

    async def expect(self, kind: type[Any]) -> Any:
        packet = await self.next()
        assert isinstance(packet, kind), packet
        return packet

    async def closed(self) -> None:
        assert await self.next() is None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def _publish_body(properties: bytes) -> bytes:
    return c._fixed(c.PUBLISH, 0, b"\x00\x03bad" + properties + b"payload")


BAD_INPUT = {
    # A property length past the packet's end, then an unknown property identifier.
    "malformed-properties": (_publish_body(b"\x09\x01\x01"), c.MALFORMED, "malformed"),
    "unknown-property": (_publish_body(b"\x02\x7f\x00"), c.MALFORMED, "malformed"),
    # The payload format indicator twice: the spec allows it once (protocol error 0x82).
    "repeated-property": (_publish_body(b"\x04\x01\x00\x01\x01"), c.PROTOCOL_ERROR, "protocol_error"),
    # A remaining length of five bytes, and one larger than the broker's maximum packet size.
    "remaining-length-5-bytes": (b"\x30\xff\xff\xff\xff\x01", c.MALFORMED, "malformed"),
    "over-maximum-packet-size": (b"\x30\xff\xff\xff\x7f", c.PACKET_TOO_LARGE, "packet_too_large"),
    "plus-in-topic": (
        c.encode(c.Publish("a/+/c", b"x", 0, False), c.MQTT5),
        c.TOPIC_NAME_INVALID,
        "topic_name_invalid",
    ),
    "hash-in-topic": (
        c.encode(c.Publish("a/#", b"x", 1, False, 1), c.MQTT5),
        c.TOPIC_NAME_INVALID,
        "topic_name_invalid",
    ),
    "second-connect": (
        c.encode(c.Connect("again", 30, True, protocol_level=c.MQTT5), c.MQTT5),
        c.PROTOCOL_ERROR,
        "protocol_error",
    ),
}


@pytest.mark.parametrize(("data", "reason", "label"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
async def test_bad_input_is_refused_with_its_reason_logged_once_and_counted_and_others_go_on(
    gateway: GatewayProcess, request: pytest.FixtureRequest, data: bytes, reason: int, label: str
) -> None:
    client_id = f"bad-{request.node.callspec.id}"
    before = gateway.metric("skyrelay_mqtt_broker_rejected_total", reason=label)
    async with subscriber(gateway, V311, "-t", "still/#") as bystander:
        bad = await RawClient.connect(gateway, client_id)
        await bad.send_raw(data)
        assert await bad.next() == c.Disconnect(reason)
        await bad.closed()
        await bad.close()
        # The broker is up and the others keep getting messages.
        rc, out = await pub(gateway, V5, "-t", "still/here", "-m", client_id)
        assert rc == 0, out
        (message,) = await bystander.count(1)
        assert message["payload"] == client_id
    assert len(gateway.log_events("mqtt_client_rejected", client=client_id)) == 1
    assert gateway.metric("skyrelay_mqtt_broker_rejected_total", reason=label) == before + 1


@pytest.mark.parametrize("version", [c.MQTT5, c.MQTT311])
async def test_the_same_client_id_twice_the_older_is_taken_over(
    gateway: GatewayProcess, version: int
) -> None:
    client_id = f"twice-{version}"
    before = gateway.metric("skyrelay_mqtt_broker_rejected_total", reason="session_taken_over")
    older = await RawClient.connect(gateway, client_id, version=version)
    newer = await RawClient.connect(gateway, client_id, version=version)
    if version == c.MQTT5:
        assert await older.next() == c.Disconnect(c.SESSION_TAKEN_OVER)
    await older.closed()
    await newer.send(c.Subscribe(1, (c.Subscription("twice", 0),)))
    await newer.expect(c.SubAck)
    await pub(gateway, V5, "-t", "twice", "-m", "to the newer")
    assert (await newer.expect(c.Publish)).payload == b"to the newer"
    await newer.send(c.Disconnect())
    await newer.close()
    await older.close()
    assert len(gateway.log_events("mqtt_session_taken_over", client=client_id)) == 1
    assert gateway.metric("skyrelay_mqtt_broker_rejected_total", reason="session_taken_over") == before + 1


def test_the_demo_dock_logs_in_to_the_embedded_broker(tmp_path: Path) -> None:
    """`skyrelay demo` with a broker log-in: its simulated dock uses it, so the gateway lists it."""
    http_port, broker_port, webrtc_port = free_port(), free_port(), free_port()
    cmd = [
        sys.executable, "-m", "gateway", "demo", "--host", "127.0.0.1",
        "--ws-port", str(free_port()), "--http-port", str(http_port),
        "--rtmp-port", str(free_port()), "--rtsp-port", str(free_port()),
        "--mqtt-broker", f"127.0.0.1:{broker_port}", "--ice-address", "127.0.0.1",
        "--mqtt-broker-user", "demo", "--mqtt-broker-password", "d3mo",
        # Not the default 8189: a gateway running on this machine must not fail the test.
        "--webrtc-udp-port", str(webrtc_port), "--webrtc-tcp-port", str(webrtc_port),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, gateways = time.monotonic() + 90, list[dict[str, Any]]()
        while time.monotonic() < deadline and not gateways:
            time.sleep(0.3)
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/devices", timeout=2) as reply:
                    gateways = json.loads(reply.read())["gateways"]
        assert [g["sn"] for g in gateways] == ["SIMDOCK0000001"]
        # A client without the log-in is refused.
        refused = subprocess.run(
            ["mosquitto_pub", "-V", V5, "-p", str(broker_port), "-t", "t", "-m", "x"],
            capture_output=True,
            timeout=10,
        )
        assert refused.returncode != 0
    finally:
        proc.terminate()
        proc.wait(timeout=15)


# Probed bad input (issue 11, item 10): an unknown protocol level and U+0000 in a topic.

LEVEL_99 = c._fixed(c.CONNECT, 0, b"\x00\x04MQTT" + bytes([99, 0x02]) + b"\x00\x1e" + b"\x00\x08level-99")


async def _answer_to_raw_connect(port: int, data: bytes) -> tuple[bytes, bool]:
    """What a server sends back to ``data`` before it closes, and whether it did close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        received = b""
        async with asyncio.timeout(10):
            while chunk := await reader.read(65536):
                received += chunk
        return received, True
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_connect_with_protocol_level_99_is_refused_then_closed_as_mosquitto_does(
    gateway: GatewayProcess, mosquitto: MosquittoProcess
) -> None:
    """A level the broker does not know says nothing of the client's version: the 3.1.1 CONNACK
    with return code 1 (unacceptable protocol version; 0x84 in MQTT 5 terms), then close.
    Mosquitto answers the same bytes with the same bytes."""
    before = gateway.metric("skyrelay_mqtt_broker_rejected_total", reason="unsupported_protocol")
    async with subscriber(gateway, V311, "-t", "still/#") as bystander:
        answer, closed = await _answer_to_raw_connect(gateway.mqtt_broker_port, LEVEL_99)
        assert (answer, closed) == (c.encode(c.ConnAck(False, c.V3_BAD_PROTOCOL), c.MQTT311), True)
        assert answer == b"\x20\x02\x00\x01"
        assert await _answer_to_raw_connect(mosquitto.port, LEVEL_99) == (answer, True)
        rc, out = await pub(gateway, V5, "-t", "still/here", "-m", "after level 99")
        assert rc == 0, out
        (message,) = await bystander.count(1)
        assert message["payload"] == "after level 99"
    assert gateway.metric("skyrelay_mqtt_broker_rejected_total", reason="unsupported_protocol") == before + 1


@pytest.mark.parametrize("version", [c.MQTT5, c.MQTT311])
async def test_a_publish_topic_with_u0000_is_malformed_and_the_client_is_closed(
    gateway: GatewayProcess, version: int
) -> None:
    """MQTT 5.0 §1.5.4 [MQTT-1.5.4-2]: U+0000 in a UTF-8 string makes a Malformed Packet, so a
    v5 client gets DISCONNECT 0x81 (not 0x90, which is for a well-formed name the server does
    not accept); 3.1.1 [MQTT-1.5.3-2]: the connection is closed."""
    client_id = f"nul-topic-{version}"
    before = gateway.metric("skyrelay_mqtt_broker_rejected_total", reason="malformed")
    properties = b"\x00" if version == c.MQTT5 else b""
    publish = c._fixed(c.PUBLISH, 0, b"\x00\x03a\x00b" + properties + b"payload")
    async with subscriber(gateway, V311, "-t", "#") as bystander:
        bad = await RawClient.connect(gateway, client_id, version=version)
        await bad.send_raw(publish)
        if version == c.MQTT5:
            assert await bad.next() == c.Disconnect(c.MALFORMED)
        await bad.closed()
        await bad.close()
        rc, out = await pub(gateway, V5, "-t", "still/here", "-m", client_id)
        assert rc == 0, out
        (message,) = await bystander.count(1)  # the bad PUBLISH went nowhere
        assert (message["topic"], message["payload"]) == ("still/here", client_id)
    assert len(gateway.log_events("mqtt_client_rejected", client=client_id)) == 1
    assert gateway.metric("skyrelay_mqtt_broker_rejected_total", reason="malformed") == before + 1
