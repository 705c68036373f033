"""The DJI bridge: every video of every online dock or remote controller is an on-demand
stream named by its ``video_id``. The first viewer makes the bridge issue a one-time ingest
key and send ``live_start_push`` with the push URL; the device's RTMP or WHIP push (or the
RTSP stream it serves, which the bridge pulls) becomes the stream; the last viewer leaving
stops the push after a linger. Quality and lens controls are sent as commands and their
replies awaited.

The decisions are `LiveController`'s and `DeviceRegistry`'s (sans I/O); this module only
connects them to MQTT, the ingest keys and the stream registry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from gateway.dji import live
from gateway.dji import protocol as p
from gateway.dji.device_state import DeviceStateFile
from gateway.dji.devices import (
    DeviceRegistry,
    Event,
    GatewayOffline,
    ServiceReplied,
    TelemetryReceived,
    VideosChanged,
)
from gateway.dji.mqtt import DjiMqtt, LinkLost
from gateway.log import get_logger
from gateway.media.ingest_keys import IngestKeys
from gateway.media.registry import ControlRefusal, OnDemandSource, StreamControlError
from gateway.mqtt_link import BrokerAddress
from gateway.tasks import TaskSet
from gateway.telemetry.hub import TelemetrySample

log = get_logger(__name__)

TICK = 0.2


class Telemetry(Protocol):
    def publish(self, sample: TelemetrySample, streams: Iterable[str]) -> None: ...


class Streams(Protocol):
    """What the bridge needs of streams: the `StreamRegistry` of its process, or with
    several workers the machine's streams as the control process sees them."""

    @property
    def telemetry(self) -> Telemetry: ...

    def add_on_demand(self, source: OnDemandSource) -> None: ...

    def fail_waiting(self, name: str, info: str) -> None: ...

    def playing(self, name: str) -> bool: ...

    def end_stream(self, name: str, info: str | None = None) -> None: ...


class Pull(Protocol):
    """An RTSP pull from a device that serves its camera (url_type RTSP)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# (stream name, rtsp:// URL) -> its pull
MakePull = Callable[[str, str], Pull]


class DjiBridge:
    def __init__(
        self,
        registry: Streams,
        ingest_keys: IngestKeys,
        broker: BrokerAddress,
        *,
        make_pull: MakePull,
        push_urls: Mapping[p.UrlType, str],
        settings: live.LiveSettings | None = None,
        url_types: Mapping[str, p.UrlType] | None = None,
        rtsp_port: int = 8554,
        offline_after: float = 60.0,
        max_gateways: int = 1000,
        max_devices_per_gateway: int = 64,
        max_osd_rate: float = 50.0,
        state_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.ingest_keys = ingest_keys
        self.make_pull = make_pull
        # Told when the set of camera stream names changes (workers learn it so).
        self.on_sources_changed: Callable[[], None] | None = None
        # Ingest URL prefixes by url_type (RTMP, WHIP); a key is appended.
        self.push_urls = {kind: url.rstrip("/") for kind, url in push_urls.items()}
        self.settings = settings or live.LiveSettings()
        self.url_types = dict(url_types or {})  # gateway SN -> how it pushes
        self.rtsp_port = rtsp_port
        self.clock = clock
        self.devices = DeviceRegistry(
            offline_after,
            max_gateways=max_gateways,
            max_devices_per_gateway=max_devices_per_gateway,
            max_osd_rate=max_osd_rate,
        )
        self.state = DeviceStateFile(state_file) if state_file is not None else None
        self.mqtt = DjiMqtt(broker, self.devices, self._device_event, clock=clock, state=self.state)
        self.sources: dict[str, tuple[str, p.VideoId]] = {}  # stream name -> gateway, video
        # Device sn -> the stream names of its cameras (an osd sample goes to these), kept
        # with `sources`: looked up for every osd message.
        self._streams_of_device: dict[str, tuple[str, ...]] = {}
        self.controllers: dict[str, live.LiveController] = {}
        self._keys: dict[str, str] = {}  # stream name -> its open ingest key
        self.pulls: dict[str, Pull] = {}  # stream name -> RTSP pull from the device
        self._replies: dict[tuple[str, str], asyncio.Future[p.ServiceReply]] = {}
        self.replies: Counter[tuple[str, int]] = Counter()  # (method, result) for /metrics
        self._tasks = TaskSet("dji_bridge")
        registry.add_on_demand(self)

    async def start(self) -> None:
        if self.state is not None:
            # Offline until they speak, then offered at once. Their cameras are known meanwhile:
            # a play gets "DJI device offline" at once, not "not found".
            for sn in self.state.load(self.devices):
                videos = self.devices.gateways[sn].capacity.videos
                self.sources.update({str(video.video_id): (sn, video.video_id) for video in videos})
            self._index_streams()
        self._tasks.spawn(self.mqtt.run())
        self._tasks.spawn(self._tick())

    async def stop(self) -> None:
        await self._tasks.cancel()
        pulls, self.pulls = list(self.pulls.values()), {}
        for pull in pulls:
            await pull.stop()
        if self.state is not None:
            await self.state.close()  # the last state, which the debounce may still hold

    def describe(self) -> dict[str, object]:
        """Gateways, their aircraft and videos with stream names, online and live state
        (for GET /api/devices)."""
        now = self.clock()
        gateways = []
        for gateway in self.devices.gateways.values():
            videos: list[dict[str, Any]] = []
            for video in gateway.capacity.videos:
                name = str(video.video_id)
                status = gateway.live_status.get(video.video_id)
                controller = self.controllers.get(name)
                videos.append(
                    {
                        "stream": name,
                        "device_sn": video.video_id.sn,
                        "camera_index": video.video_id.camera_index,
                        "video_index": video.video_id.video_index,
                        "video_type": video.video_type,
                        "switchable_video_types": list(video.switchable_types),
                        "device_streaming": bool(status and status.streaming),
                        "device_error": status.error if status else 0,
                        "live": controller.phase.value if controller else live.Phase.IDLE.value,
                        "viewers": controller.viewers if controller else 0,
                        "url_type": self._url_type(gateway.sn).name.lower(),
                        "video_quality": int(controller.quality if controller else self.settings.quality),
                    }
                )
            topology = gateway.topology
            gateways.append(
                {
                    "sn": gateway.sn,
                    "online": gateway.online,
                    "last_seen_s": None if gateway.last_seen is None else round(now - gateway.last_seen, 1),
                    "aircraft": list(topology.sub_devices) if topology else [],
                    "cameras": cameras(videos),
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
        if controller.phase is live.Phase.IDLE and not self.mqtt.connected.is_set():
            # No command can reach the device: fail now, not after the reply timeouts.
            self.registry.fail_waiting(name, "MQTT link to the device is down: not connected to the broker")
            return
        self._apply(controller, controller.viewer_joined(self.clock()))

    def unwanted(self, name: str) -> None:
        controller = self.controllers.get(name)
        if controller is not None and controller.viewers:
            self._apply(controller, controller.viewer_left(self.clock()))

    async def control(self, name: str, action: str, value: object) -> None:
        controller = self._controller(name)
        if controller is None:
            raise StreamControlError(ControlRefusal.UNKNOWN_STREAM, f"Not a DJI camera: {name!r}")
        try:
            if action == "quality":
                outputs = controller.set_quality(p.parse_video_quality(value))
            elif action == "lens":
                self._check_lens(controller, value)
                outputs = controller.change_lens(str(value))
            else:
                raise StreamControlError(ControlRefusal.BAD_VALUE, f"Unknown control {action!r}")
        except p.DjiProtocolError as exc:
            raise StreamControlError(ControlRefusal.BAD_VALUE, str(exc)) from None
        except live.NotLive as exc:
            raise StreamControlError(ControlRefusal.NOT_LIVE, str(exc)) from None
        log.info("dji_control", stream=name, action=action, value=value)
        for output in outputs:
            match output:
                case live.SendCommand(gateway_sn=sn, envelope=envelope):
                    await self._command(name, sn, envelope)
                case _:
                    self._apply(controller, [output])

    def _check_lens(self, controller: live.LiveController, value: object) -> None:
        gateway = self.devices.gateways.get(controller.gateway_sn)
        video = next(
            (v for v in (gateway.capacity.videos if gateway else ()) if v.video_id == controller.video_id),
            None,
        )
        if video is not None and video.switchable_types and value not in video.switchable_types:
            lenses = ", ".join(video.switchable_types)
            raise StreamControlError(ControlRefusal.BAD_VALUE, f"Lens {value!r} not offered here: {lenses}")

    async def _command(self, name: str, gateway_sn: str, envelope: p.Envelope) -> None:
        """Send a command and wait for the device's reply; raise unless it agreed."""
        reply_to = (envelope.tid, envelope.bid)
        waiter = self._replies[reply_to] = asyncio.get_running_loop().create_future()
        try:
            if not await self.mqtt.send_command(gateway_sn, envelope):
                raise StreamControlError(ControlRefusal.NO_REPLY, "MQTT link to the device is down")
            async with asyncio.timeout(self.settings.reply_timeout):
                reply = await waiter
        except TimeoutError:
            timeout = self.settings.reply_timeout
            raise StreamControlError(
                ControlRefusal.NO_REPLY, f"no reply to {envelope.method} within {timeout:g} s"
            ) from None
        finally:
            self._replies.pop(reply_to, None)
        log.info("dji_command_replied", stream=name, method=envelope.method, result=reply.result)
        if reply.result != 0:
            info = f"DJI {envelope.method} failed: {p.describe_result(reply.result)}"
            raise StreamControlError(ControlRefusal.DEVICE_REFUSED, info)

    def _controller(self, name: str) -> live.LiveController | None:
        controller = self.controllers.get(name)
        if controller is None and name in self.sources:
            gateway_sn, video_id = self.sources[name]
            settings = dataclasses.replace(self.settings, url_type=self._url_type(gateway_sn))
            controller = self.controllers[name] = live.LiveController(gateway_sn, video_id, settings)
        return controller

    def _url_type(self, gateway_sn: str) -> p.UrlType:
        return self.url_types.get(gateway_sn, self.settings.url_type)

    # --- device events ----------------------------------------------------------------------

    def _device_event(self, event: Event | LinkLost) -> None:
        match event:
            case LinkLost(error=error):
                # Commands waiting for a reply fail now rather than at their timeout: the
                # reply went with the link. Pushes already running go on without MQTT.
                for waiter in self._replies.values():
                    if not waiter.done():
                        info = f"MQTT link lost before the device replied: {error}"
                        waiter.set_exception(StreamControlError(ControlRefusal.NO_REPLY, info))
                for controller in list(self.controllers.values()):
                    self._apply(controller, controller.link_down(f"link lost ({error})"))
            case VideosChanged(sn=sn, videos=videos):
                gateway = self.devices.gateways.get(sn)
                if gateway is not None and not gateway.online:
                    return  # keep an offline device's videos: a play gets "device offline"
                offered = {str(video.video_id): (sn, video.video_id) for video in videos}
                for name, (owner, _) in list(self.sources.items()):
                    if owner == sn and name not in offered:  # no longer offered
                        del self.sources[name]
                        dropped = self.controllers.get(name)
                        if dropped is not None:
                            self._apply(dropped, dropped.device_offline())
                self.sources.update(offered)
                self._index_streams()
            case TelemetryReceived(sample=sample):
                # The device's flight data travels with the video of each of its cameras.
                streams = self._streams_of_device.get(sample.sn, ())
                self.registry.telemetry.publish(sample, streams)
            case GatewayOffline(sn=sn):
                log.info("dji_gateway_offline", gateway_sn=sn)
                for controller in list(self.controllers.values()):
                    if controller.gateway_sn == sn:
                        self._apply(controller, controller.device_offline())
            case ServiceReplied(reply=reply):
                self.replies[(reply.method, reply.result)] += 1
                pending = self._replies.get((reply.tid, reply.bid))
                if pending is not None and not pending.done():
                    pending.set_result(reply)
                    return
                for controller in list(self.controllers.values()):
                    self._apply(controller, controller.reply(reply, self.clock()))

    def _index_streams(self) -> None:
        by_device: dict[str, list[str]] = {}
        for name, (_, video_id) in self.sources.items():
            by_device.setdefault(video_id.sn, []).append(name)
        self._streams_of_device = {sn: tuple(names) for sn, names in by_device.items()}
        if self.on_sources_changed is not None:
            self.on_sources_changed()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = self.clock()
            for name, controller in list(self.controllers.items()):
                playing = self.registry.playing(name)
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
                case live.OpenIngest(url_type=url_type):
                    key = self.ingest_keys.issue(name, keep_stream=True)
                    self._keys[name] = key.key
                    if url_type is p.UrlType.RTSP:
                        # The device serves RTSP with these credentials; the key is the password.
                        url = f"userName=skyrelay&password={key.key}&port={self.rtsp_port}"
                    else:
                        url = f"{self.push_urls[url_type]}/{key.key}"
                    self._apply(controller, controller.ingest_ready(url, self.clock()))
                case live.PullFrom(url=url):
                    pull = self.pulls.pop(name, None)
                    if pull is not None:
                        self._spawn(pull.stop())
                    pull = self.pulls[name] = self.make_pull(name, url)
                    self._spawn(pull.start())
                case live.SendCommand(gateway_sn=sn, envelope=envelope):
                    self._spawn(self._send(controller, sn, envelope))
                case live.CloseIngest():
                    pull = self.pulls.pop(name, None)
                    if pull is not None:
                        self._spawn(pull.stop())
                    open_key = self._keys.pop(name, None)
                    if open_key is not None:
                        self.ingest_keys.revoke(open_key)
                    self.registry.end_stream(name)
                case live.Failed(info=info):
                    log.info("dji_live_failed", stream=name, info=info)
                    self.registry.fail_waiting(name, info)
                    self.registry.end_stream(name, info)  # its viewers fail with the reason

    async def _send(self, controller: live.LiveController, gateway_sn: str, envelope: p.Envelope) -> None:
        if not await self.mqtt.send_command(gateway_sn, envelope):
            self._apply(controller, controller.link_down("could not publish the command", unsent=envelope))

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        self._tasks.spawn(work)


def cameras(videos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cameras of a gateway's videos, each with the stream names of its videos, in the
    order live_capacity lists them: {device_sn, camera_index, streams}."""
    by_camera: dict[tuple[str, str], list[str]] = {}
    for video in videos:
        by_camera.setdefault((video["device_sn"], video["camera_index"]), []).append(video["stream"])
    return [
        {"device_sn": sn, "camera_index": index, "streams": streams}
        for (sn, index), streams in by_camera.items()
    ]
