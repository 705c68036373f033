"""The DJI bridge: every video of every online dock or remote controller is an on-demand
stream named by its ``video_id``. The first viewer makes the bridge issue a one-time ingest
key and send ``live_start_push`` with the push URL; the device's RTMP push becomes the
stream; the last viewer leaving stops the push after a linger.

The decisions are `LiveController`'s and `DeviceRegistry`'s (sans I/O); this module only
connects them to MQTT, the ingest keys and the stream registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from gateway.dji import live
from gateway.dji import protocol as p
from gateway.dji.devices import DeviceRegistry, Event, GatewayOffline, ServiceReplied, VideosChanged
from gateway.dji.mqtt import BrokerAddress, DjiMqtt
from gateway.log import get_logger
from gateway.media.ingest_keys import IngestKeys
from gateway.media.registry import StreamRegistry

log = get_logger(__name__)

TICK = 0.2


class DjiBridge:
    def __init__(
        self,
        registry: StreamRegistry,
        ingest_keys: IngestKeys,
        broker: BrokerAddress,
        *,
        rtmp_base_url: str,
        settings: live.LiveSettings | None = None,
        offline_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.ingest_keys = ingest_keys
        self.rtmp_base_url = rtmp_base_url.rstrip("/")
        self.settings = settings or live.LiveSettings()
        self.clock = clock
        self.devices = DeviceRegistry(offline_after)
        self.mqtt = DjiMqtt(broker, self.devices, self._device_event, clock=clock)
        self.sources: dict[str, tuple[str, p.VideoId]] = {}  # stream name -> gateway, video
        self.controllers: dict[str, live.LiveController] = {}
        self._keys: dict[str, str] = {}  # stream name -> its open ingest key
        self._tasks: set[asyncio.Future[None]] = set()
        registry.add_on_demand(self)

    async def start(self) -> None:
        self._tasks.add(asyncio.ensure_future(self.mqtt.run()))
        self._tasks.add(asyncio.ensure_future(self._tick()))

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def describe(self) -> dict[str, object]:
        """Gateways, their aircraft and videos with stream names, online and live state
        (for GET /api/devices)."""
        now = self.clock()
        gateways = []
        for gateway in self.devices.gateways.values():
            videos = []
            for video in gateway.capacity.videos:
                name = str(video.video_id)
                status = gateway.live_status.get(video.video_id)
                controller = self.controllers.get(name)
                videos.append(
                    {
                        "stream": name,
                        "video_type": video.video_type,
                        "switchable_video_types": list(video.switchable_types),
                        "device_streaming": bool(status and status.streaming),
                        "device_error": status.error if status else 0,
                        "live": controller.phase.value if controller else live.Phase.IDLE.value,
                        "viewers": controller.viewers if controller else 0,
                    }
                )
            topology = gateway.topology
            gateways.append(
                {
                    "sn": gateway.sn,
                    "online": gateway.online,
                    "last_seen_s": round(now - gateway.last_seen, 1),
                    "aircraft": list(topology.sub_devices) if topology else [],
                    "videos": videos,
                }
            )
        return {"mqtt_connected": self.mqtt.connected.is_set(), "gateways": gateways}

    # --- OnDemandSource ---------------------------------------------------------------------

    def serves(self, name: str) -> bool:
        return name in self.sources

    def wanted(self, name: str) -> None:
        controller = self._controller(name)
        if controller is None:
            return
        gateway = self.devices.gateways.get(controller.gateway_sn)
        if gateway is None or not gateway.online:
            # Known camera, silent device: say so now rather than after a start timeout.
            self.registry.fail_waiting(name, f"DJI device offline: {controller.gateway_sn}")
            return
        self._apply(controller, controller.viewer_joined(self.clock()))

    def unwanted(self, name: str) -> None:
        controller = self.controllers.get(name)
        if controller is not None and controller.viewers:
            self._apply(controller, controller.viewer_left(self.clock()))

    def _controller(self, name: str) -> live.LiveController | None:
        controller = self.controllers.get(name)
        if controller is None and name in self.sources:
            gateway_sn, video_id = self.sources[name]
            controller = self.controllers[name] = live.LiveController(gateway_sn, video_id, self.settings)
        return controller

    # --- device events ----------------------------------------------------------------------

    def _device_event(self, event: Event) -> None:
        match event:
            case VideosChanged(sn=sn, videos=videos):
                gateway = self.devices.gateways.get(sn)
                if gateway is not None and not gateway.online:
                    return  # keep an offline device's videos: a play gets "device offline"
                offered = {str(video.video_id): (sn, video.video_id) for video in videos}
                for name, (owner, _) in list(self.sources.items()):
                    if owner == sn and name not in offered:  # no longer offered
                        del self.sources[name]
                        controller = self.controllers.get(name)
                        if controller is not None:
                            self._apply(controller, controller.device_offline())
                self.sources.update(offered)
            case GatewayOffline(sn=sn):
                log.info("dji_gateway_offline", gateway_sn=sn)
                for controller in list(self.controllers.values()):
                    if controller.gateway_sn == sn:
                        self._apply(controller, controller.device_offline())
            case ServiceReplied(reply=reply):
                for controller in list(self.controllers.values()):
                    self._apply(controller, controller.reply(reply, self.clock()))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = self.clock()
            for name, controller in list(self.controllers.items()):
                stream = self.registry.find(name)
                playing = stream is not None and stream.live and stream.source is not None
                if playing and controller.phase in (live.Phase.WAITING, live.Phase.LINGERING):
                    self._apply(controller, controller.media_started(now))
                elif not playing and controller.phase is live.Phase.LIVE:
                    self._apply(controller, controller.media_lost(now))
                self._apply(controller, controller.tick(now))

    # --- outputs ----------------------------------------------------------------------------

    def _apply(self, controller: live.LiveController, outputs: list[live.Output]) -> None:
        name = str(controller.video_id)
        for output in outputs:
            match output:
                case live.OpenIngest():
                    key = self.ingest_keys.issue(name, keep_stream=True)
                    self._keys[name] = key.key
                    url = f"{self.rtmp_base_url}/{key.key}"
                    self._apply(controller, controller.ingest_ready(url, self.clock()))
                case live.SendCommand(gateway_sn=sn, envelope=envelope):
                    self._send(sn, envelope)
                case live.CloseIngest():
                    key = self._keys.pop(name, None)
                    if key is not None:
                        self.ingest_keys.revoke(key)
                    stream = self.registry.find(name)
                    if stream is not None:
                        self.registry.release(stream)
                case live.Failed(info=info):
                    log.info("dji_live_failed", stream=name, info=info)
                    self.registry.fail_waiting(name, info)
                    stream = self.registry.find(name)
                    if stream is not None:
                        self.registry.release(stream, info)  # its viewers fail with the reason

    def _send(self, gateway_sn: str, envelope: p.Envelope) -> None:
        task = asyncio.ensure_future(self.mqtt.send_command(gateway_sn, envelope))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
