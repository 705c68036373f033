"""The MQTT side of the DJI bridge: a thin I/O layer around `DeviceRegistry`.

It connects to the broker with MQTT 5.0, as the DJI Cloud API specifies (3.1.1 when
`mqtt_protocol` says so), reconnecting with capped exponential backoff and subscribing
again; it feeds every device message to the registry, publishes the replies the protocol
requires, hands the other registry events to the bridge, and publishes commands. Bad
device messages are logged and dropped; they never stop the loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import aiomqtt

from gateway.dji import protocol as p
from gateway.dji.device_state import DeviceStateFile
from gateway.dji.devices import (
    TOO_MANY_GATEWAYS,
    DeviceLimitExceeded,
    DeviceRegistry,
    Event,
    OsdRateLimited,
    Publish,
)
from gateway.log import get_logger
from gateway.mqtt_link import BrokerAddress

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class LinkLost:
    """The broker connection dropped: replies to commands sent before will not come."""

    error: str


class DjiMqtt:
    def __init__(
        self,
        broker: BrokerAddress,
        registry: DeviceRegistry,
        on_event: Callable[[Event | LinkLost], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        tick_interval: float = 1.0,
        state: DeviceStateFile | None = None,
    ) -> None:
        self.broker = broker
        self.registry = registry
        self.state = state
        self.on_event = on_event
        self.clock = clock
        self.tick_interval = tick_interval
        self.connected = asyncio.Event()
        self.dropped_messages = 0  # malformed: not the DJI protocol
        self.failed_messages = 0  # well formed, but handling them raised (a bug)
        self.limited: Counter[str] = Counter()  # refused past a registry bound, by reason
        # Refusals are logged once per gateway (a set bounded by the gateway limit itself), and
        # "too many gateways" once (gateways are never forgotten, so the registry stays full):
        # a flood of new serial numbers must not become a flood of log lines.
        self._limit_logged: set[str] = set()
        self._gateway_limit_logged = False
        self.commands: Counter[tuple[str, bool]] = Counter()  # (method, sent) for /metrics
        self._client: aiomqtt.Client | None = None
        self._identifier = f"skyrelay-{uuid.uuid4().hex[:8]}"

    async def run(self) -> None:
        """Stay connected until cancelled."""
        ticker = asyncio.create_task(self._tick())
        try:
            await self.broker.stay_connected(
                self._session,
                self.connected,
                event="mqtt_disconnected",
                on_lost=lambda error: self.on_event(LinkLost(error)),
            )
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)

    async def _session(self) -> None:
        async with self.broker.client(self._identifier) as client:
            for topic in p.SUBSCRIPTIONS:
                await client.subscribe(topic, qos=1)
            self._client = client
            self.connected.set()
            log.info("mqtt_connected", broker=self.broker.host, port=self.broker.port)
            try:
                async for message in client.messages:
                    payload = message.payload
                    if isinstance(payload, str):
                        payload = payload.encode()
                    if not isinstance(payload, bytes | bytearray):
                        continue
                    await self._receive(str(message.topic), bytes(payload))
            finally:
                self._client = None

    async def _receive(self, topic: str, payload: bytes) -> None:
        try:
            events = self.registry.receive(topic, payload, self.clock())
            if self.state is not None:
                self.state.changed(self.registry)  # saved soon, if devices or videos changed
            await self._handle(events)
        except DeviceLimitExceeded as exc:
            self._limit_reached(exc)
        except p.DjiProtocolError as exc:
            self.dropped_messages += 1
            log.warning("dji_message_dropped", topic=topic[:200], reason=str(exc)[:200])
        except aiomqtt.MqttError:
            raise  # the link itself: stay_connected reconnects
        except Exception as exc:
            # A bug in handling one message must not end the link for every device.
            self.failed_messages += 1
            log.exception("dji_message_failed", topic=topic[:200], error=repr(exc)[:200])

    def _limit_reached(self, exc: DeviceLimitExceeded) -> None:
        self.limited[exc.reason] += 1
        if isinstance(exc, OsdRateLimited):
            # A flood is logged once per burst of refusals per device, not per message.
            if exc.first_of_burst:
                log.warning("dji_osd_rate_limited", sn=exc.sn, max_rate=self.registry.max_osd_rate)
            return
        if exc.reason == TOO_MANY_GATEWAYS:
            if self._gateway_limit_logged:
                return
            self._gateway_limit_logged = True
        elif exc.gateway_sn in self._limit_logged or len(self._limit_logged) >= self.registry.max_gateways:
            return
        else:
            self._limit_logged.add(exc.gateway_sn)
        log.warning("dji_device_limit", reason=exc.reason, gateway_sn=exc.gateway_sn, detail=str(exc)[:200])

    async def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Publish):
                await self.publish(event.topic, event.envelope, qos=2)
            else:
                self.on_event(event)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            await self._handle(self.registry.tick(self.clock()))

    async def publish(self, topic: str, envelope: p.Envelope, qos: int = 0) -> bool:
        """Publish now; False if the broker link is down (the caller's timeouts decide)."""
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(topic, p.encode(envelope), qos=qos)
        except aiomqtt.MqttError as exc:
            log.warning("mqtt_publish_failed", topic=topic, error=str(exc))
            return False
        return True

    async def send_command(self, gateway_sn: str, envelope: p.Envelope) -> bool:
        sent = await self.publish(p.services_topic(gateway_sn), envelope)
        self.commands[(envelope.method, sent)] += 1
        log.info("dji_command", gateway_sn=gateway_sn, method=envelope.method, tid=envelope.tid, sent=sent)
        return sent
