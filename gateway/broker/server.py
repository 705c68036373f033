"""An embedded MQTT 3.1.1 broker, so docks, the simulator and the bridge can talk with no
other software installed. Clean sessions only, QoS 0 and 1 deliveries (QoS 2 publishes
are accepted with the full PUBREC/PUBREL/PUBCOMP exchange and delivered at most QoS 1),
retained messages; no will messages, no persistence, no authentication. Production points
skyrelay at EMQX or Mosquitto instead (`--mqtt`)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from gateway.broker import codec
from gateway.log import get_logger

log = get_logger(__name__)

CONNECT_TIMEOUT = 10.0
MAX_UNSENT = 4 * 1024 * 1024  # a subscriber this far behind is disconnected


@dataclass
class _Client:
    client_id: str
    writer: asyncio.StreamWriter
    subscriptions: dict[str, int] = field(default_factory=dict)  # filter -> granted QoS
    qos2_received: set[int] = field(default_factory=set)
    packet_ids: itertools.cycle[int] = field(default_factory=lambda: itertools.cycle(range(1, 65536)))

    def send(self, data: bytes) -> bool:
        transport = self.writer.transport
        if transport.is_closing() or transport.get_write_buffer_size() > MAX_UNSENT:
            return False
        self.writer.write(data)
        return True


class Broker:
    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host, self.port = host, port
        self.clients: dict[str, _Client] = {}
        self.retained: dict[str, codec.Publish] = {}
        self._server: asyncio.Server | None = None
        self._anonymous = itertools.count(1)
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        log.info("mqtt_broker_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Closing the sockets ends every handler's read (cancelling them would trip
        # asyncio's stream callback).
        for writer in list(self._handlers.values()):
            writer.close()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = codec.Decoder()
        client: _Client | None = None
        task = asyncio.current_task()
        if task is not None:
            self._handlers[task] = writer
            task.add_done_callback(lambda done: self._handlers.pop(done, None))
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                packets: list[codec.Packet] = []
                while not packets:
                    data = await reader.read(65536)
                    if not data:
                        return
                    packets = decoder.feed(data)
            first = packets.pop(0)
            if not isinstance(first, codec.Connect):
                raise codec.MqttError("first packet is not CONNECT")
            client = self._connect(first, writer)
            idle = first.keepalive * 1.5 if first.keepalive else None
            while True:
                for packet in packets:
                    if not self._handle(client, packet):
                        return
                await writer.drain()
                async with asyncio.timeout(idle):
                    data = await reader.read(65536)
                if not data:
                    return
                packets = decoder.feed(data)
        except (codec.MqttError, TimeoutError, ConnectionError) as exc:
            log.info(
                "mqtt_client_dropped", client=client.client_id if client else None, reason=str(exc)[:200]
            )
        finally:
            if client is not None and self.clients.get(client.client_id) is client:
                del self.clients[client.client_id]
            writer.close()
            # A client that reads nothing would hold the close (and the broker's stop) forever.
            try:
                async with asyncio.timeout(2.0):
                    await writer.wait_closed()
            except (ConnectionError, OSError, TimeoutError):
                writer.transport.abort()

    def _connect(self, connect: codec.Connect, writer: asyncio.StreamWriter) -> _Client:
        client_id = connect.client_id or f"anonymous-{next(self._anonymous)}"
        previous = self.clients.get(client_id)
        if previous is not None:  # the same client id again: the new connection wins
            previous.writer.close()
        client = self.clients[client_id] = _Client(client_id, writer)
        writer.write(codec.connack(0))
        return client

    def _handle(self, client: _Client, packet: codec.Packet) -> bool:
        match packet:
            case codec.Publish():
                return self._publish(client, packet)
            case codec.Subscribe(packet_id=packet_id, topics=topics):
                granted = []
                for pattern, qos in topics:
                    if codec.valid_filter(pattern):
                        client.subscriptions[pattern] = min(qos, 1)
                        granted.append(min(qos, 1))
                    else:
                        granted.append(0x80)
                client.send(codec.suback(packet_id, granted))
                for topic, message in self.retained.items():
                    qos = max(
                        (q for f, q in client.subscriptions.items() if codec.topic_matches(f, topic)),
                        default=-1,
                    )
                    if qos >= 0:
                        self._deliver(client, message, qos)
            case codec.Unsubscribe(packet_id=packet_id, topics=names):
                for pattern in names:
                    client.subscriptions.pop(pattern, None)
                client.send(codec.unsuback(packet_id))
            case codec.Ack(kind=codec.PUBREL, packet_id=packet_id):
                client.qos2_received.discard(packet_id)
                client.send(codec.ack(codec.PUBCOMP, packet_id))
            case codec.Simple(kind=codec.PINGREQ):
                client.send(codec.pingresp())
            case codec.Simple(kind=codec.DISCONNECT):
                return False
            case codec.Connect():
                raise codec.MqttError("second CONNECT")
        return True

    def _publish(self, client: _Client, message: codec.Publish) -> bool:
        if not message.topic or "+" in message.topic or "#" in message.topic:
            raise codec.MqttError("PUBLISH to an invalid topic")
        if message.qos == 1 and message.packet_id is not None:
            client.send(codec.ack(codec.PUBACK, message.packet_id))
        elif message.qos == 2 and message.packet_id is not None:
            client.send(codec.ack(codec.PUBREC, message.packet_id))
            if message.packet_id in client.qos2_received:
                return True  # a resend before PUBREL: delivered already
            client.qos2_received.add(message.packet_id)
        if message.retain:
            if message.payload:
                self.retained[message.topic] = message
            else:
                self.retained.pop(message.topic, None)
        for subscriber in list(self.clients.values()):
            qos = max(
                (q for f, q in subscriber.subscriptions.items() if codec.topic_matches(f, message.topic)),
                default=-1,
            )
            if qos >= 0:
                self._deliver(subscriber, message, min(qos, message.qos), retain=False)
        return True

    def _deliver(self, client: _Client, message: codec.Publish, qos: int, retain: bool = True) -> None:
        packet_id = next(client.packet_ids) if qos else None
        outgoing = codec.Publish(message.topic, message.payload, qos, retain and message.retain, packet_id)
        if not client.send(codec.publish(outgoing)):
            log.warning("mqtt_subscriber_too_slow", client=client.client_id)
            client.writer.close()
