"""The SD live view over MQTT: a thin I/O layer around `SdViewState`.

It stays connected to the broker (capped exponential backoff, like the DJI link),
subscribes to ``kerberos/agent/{hubKey}``, feeds keep-alives to the state machine, and a
few times a second asks it which views are due a picture. Pictures are rendered through
`Thumbnails` (so one decode serves the SD view and the HTTP thumbnails alike) and
published on ``kerberos/hub/{hubKey}``. Bad messages are logged and dropped; they never
stop the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Hashable, Mapping

import aiomqtt

from gateway.log import get_logger
from gateway.media.registry import StreamRegistry
from gateway.media.thumbnails import Thumbnails, ThumbnailUnavailable, check_width
from gateway.mqtt_link import BrokerAddress
from gateway.sdview import state as s
from gateway.sdview.protocol import SdViewProtocolError, agent_topic, hub_topic

log = get_logger(__name__)

DEFAULT_WIDTH = 480
# How often due pictures are looked for: keyframes are at most this late to go out.
TICK_INTERVAL = 0.1
# Malformed messages are logged at most this often (a flood must not flood the log).
DROP_LOG_INTERVAL = 1.0


class SdViewService:
    def __init__(
        self,
        registry: StreamRegistry,
        thumbnails: Thumbnails,
        broker: BrokerAddress,
        *,
        hub_key: str,
        devices: Mapping[str, str],
        width: int = DEFAULT_WIDTH,
        max_payload_bytes: int = s.DEFAULT_MAX_PAYLOAD_BYTES,
        keepalive_timeout: float = s.KEEPALIVE_TIMEOUT,
        min_interval: float = s.MIN_INTERVAL,
        tick_interval: float = TICK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        check_width(width)
        for device_id, stream in devices.items():
            if not device_id or not stream:
                raise ValueError(f"SD view device {device_id!r} -> stream {stream!r}: both must be non-empty")
        self.registry = registry
        self.thumbnails = thumbnails
        self.broker = broker
        self.agent_topic = agent_topic(hub_key)
        self.hub_topic = hub_topic(hub_key)
        self.width = width
        self.state = s.SdViewState(
            devices,
            keepalive_timeout=keepalive_timeout,
            min_interval=min_interval,
            max_payload_bytes=max_payload_bytes,
        )
        self.tick_interval = tick_interval
        self.clock = clock
        self.wall_clock = wall_clock
        self.connected = asyncio.Event()
        # Counters for tests and /metrics.
        self.published = 0
        self.refused = 0
        self.dropped_messages = 0
        self._wake = asyncio.Event()
        self._identifier = f"skyrelay-sd-{uuid.uuid4().hex[:8]}"
        self._runner: asyncio.Task[None] | None = None
        self._loop: asyncio.Future[None] | None = None
        self._stopping = False
        self._last_drop_log = float("-inf")
        self._drops_unlogged = 0

    # --- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Run in the background until `stop`."""
        self._runner = asyncio.create_task(self.run())

    async def stop(self) -> None:
        """End `run` (which then returns) and wait for it."""
        self._stopping = True
        loop = self._loop
        if loop is not None:
            loop.cancel()
        for task in (self._runner, loop):
            if task is not None and task is not asyncio.current_task():
                await asyncio.gather(task, return_exceptions=True)

    async def run(self) -> None:
        """Stay connected until `stop` (then return) or until cancelled."""
        self._loop = loop = asyncio.ensure_future(
            self.broker.stay_connected(self._session, self.connected, event="sd_view_mqtt_disconnected")
        )
        try:
            await loop
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not self._stopping or (current is not None and current.cancelling()):
                raise  # we were cancelled, not stopped
        finally:
            loop.cancel()

    async def _session(self) -> None:
        async with self.broker.client(self._identifier) as client:
            # QoS 0 both ways: a keep-alive comes every second and a picture is stale in one.
            await client.subscribe(self.agent_topic, qos=0)
            self.connected.set()
            log.info(
                "sd_view_connected", broker=self.broker.host, port=self.broker.port, topic=self.agent_topic
            )
            pump = asyncio.create_task(self._pump(client))
            try:
                async for message in client.messages:
                    if message.retain:
                        continue  # an old keep-alive kept by the broker: nobody asked just now
                    payload = message.payload
                    if isinstance(payload, str):
                        payload = payload.encode()
                    if isinstance(payload, bytes | bytearray):
                        self._receive(bytes(payload))
            finally:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)

    # --- keep-alives ----------------------------------------------------------------------

    def _receive(self, payload: bytes) -> None:
        try:
            event = self.state.receive(payload, self.clock())
        except SdViewProtocolError as exc:
            self._dropped(str(exc))
            return
        if isinstance(event, s.Started):
            log.info("sd_view_started", device_id=event.device_id, stream=event.stream)
            self._wake.set()  # the first picture goes out now, not at the next tick

    def _dropped(self, reason: str) -> None:
        self.dropped_messages += 1
        self._drops_unlogged += 1
        now = self.clock()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL:
            log.warning("sd_view_message_dropped", reason=reason[:200], dropped=self._drops_unlogged)
            self._last_drop_log, self._drops_unlogged = now, 0

    # --- pictures -------------------------------------------------------------------------

    async def _pump(self, client: aiomqtt.Client) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._publish_due(client)
            except aiomqtt.MqttError as exc:
                # The session notices a lost link and reconnects; pictures resume after.
                log.warning("sd_view_publish_failed", error=str(exc))
            except Exception:  # a bug must not end the SD view for every device
                log.exception("sd_view_pump_failed")

    async def _publish_due(self, client: aiomqtt.Client) -> None:
        now = self.clock()
        for stopped in self.state.expire(now):
            log.info("sd_view_stopped", device_id=stopped.device_id, stream=stopped.stream)
        for due in self.state.due(now, self._keyframe_mark):
            await self._publish_picture(client, due)

    def _keyframe_mark(self, name: str) -> Hashable | None:
        stream = self.registry.get(name)
        # A mirror's pictures are sent by the worker holding its stream (each keyframe once
        # on the machine, whichever workers have viewers of it).
        if stream is None or stream.keyframe is None or self.registry.is_mirror(stream):
            return None
        # Keyframe timestamps rise within a stream; the id tells a new stream of that name.
        return (stream.id, stream.keyframe.pts)

    async def _publish_picture(self, client: aiomqtt.Client, due: s.Due) -> None:
        try:
            image = await self.thumbnails.render(due.stream, "jpeg", self.width, fresh=True)
        except ThumbnailUnavailable as exc:
            mark = self._keyframe_mark(due.stream)
            if mark is not None:
                self.state.skip(due.device_id, mark)  # not again for this keyframe
            log.warning("sd_view_no_picture", device_id=due.device_id, stream=due.stream, reason=exc.reason)
            return
        outcome = self.state.picture(
            due.device_id,
            (image.stream_id, image.keyframe_pts),
            image.data,
            self.clock(),
            timestamp=int(self.wall_clock()),
        )
        if isinstance(outcome, s.Refused):
            self.refused += 1
            log.warning(
                "sd_view_picture_refused",
                device_id=due.device_id,
                stream=due.stream,
                size=outcome.size,
                max_payload_bytes=outcome.limit,
                info="the message would exceed max_payload_bytes: lower the SD view width",
            )
        elif isinstance(outcome, s.Publish):
            await client.publish(self.hub_topic, outcome.payload, qos=0)
            self.published += 1
