"""A DJI dock simulator for development and tests (`skyrelay dock-sim`).

It speaks the DJI Cloud API over MQTT 5.0 (3.1.1 with `--mqtt-protocol 3.1.1`) like a dock
with one aircraft: ``update_topo`` on start, ``live_capacity`` and ``live_status`` state,
periodic ``osd``, and answers the live commands on ``services_reply`` with the same tid and
bid. Its aircraft flies a loop around the dock (`flight_state`) and reports it in its own
``osd`` at `DockBehaviour.osd_rate`, with DJI's field names. On a successful
``live_start_push`` it pushes an H.264 test pattern (1 s GOP, no B-frames) over RTMP from
PyAV or over WHIP, or serves it over RTSP like a remote controller (`camera_sim`). It can
fail the first N starts with a given code, delay its replies, hang, drop its push, and go
offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import orjson

from gateway.dji import protocol as p
from gateway.dji.camera_sim import (
    BackgroundCamera,
    RtmpCameraPush,
    RtspCameraServer,
    WhipCameraPush,
    clip_access_units,
)
from gateway.log import get_logger
from gateway.mqtt_link import BrokerAddress
from gateway.tasks import TaskSet

log = get_logger(__name__)

LENSES = ("normal", "wide", "zoom", "ir")  # what the simulated camera can switch to
AIRCRAFT_CAMERA = "53-0-0"  # the payload index of the aircraft's camera (its video ids' camera_index)

# --- the flight -------------------------------------------------------------------------------

HOME = (22.5790, 113.9370, 36.6)  # the dock: latitude, longitude, height (m)
LOOP_SECONDS = 120.0  # one loop around the dock
LOOP_RADIUS = 150.0  # m
TAKEOFF_SECONDS = 10.0
_METRES_PER_DEGREE = 111_320.0


def _position(t: float) -> tuple[float, float, float]:
    """East and north of the dock (m) and elevation above it (m), ``t`` s into the flight.
    The aircraft takes off from the dock, climbing and moving out to the loop in the first
    10 s; then the angle advances unevenly (faster and slower through the loop), the radius
    breathes, and the aircraft rises and sinks around 60 m."""
    phase = 2 * math.pi * t / LOOP_SECONDS
    angle = phase + 0.3 * math.sin(phase)
    ramp = min(1.0, max(0.0, t) / TAKEOFF_SECONDS)
    out = ramp * ramp * (3 - 2 * ramp)  # eased in and out: no jerk at the end of take-off
    radius = out * (LOOP_RADIUS + 30 * math.sin(2 * math.pi * t / 50))
    elevation = out * (60 + 20 * math.sin(2 * math.pi * t / 45))
    return radius * math.cos(angle), radius * math.sin(angle), elevation


def flight_state(t: float, home: tuple[float, float, float] = HOME) -> dict[str, Any]:
    """The aircraft's osd ``data`` ``t`` seconds into its flight: a loop around the dock
    at ``home``, as DJI's aircraft properties name it (see docs/dji.md), with the gimbal of
    camera "53-0-0" in its payload-index object and the camera in ``cameras``. Pure, so
    tests can follow the path."""
    dt = 0.05
    (x0, y0, z0), (x, y, z), (x1, y1, z1) = _position(t - dt), _position(t), _position(t + dt)
    east, north, up = (x1 - x0) / (2 * dt), (y1 - y0) / (2 * dt), (z1 - z0) / (2 * dt)  # m/s
    speed = math.hypot(east, north)
    heading = math.degrees(math.atan2(east, north))  # from north, clockwise, -180..180
    latitude, longitude, height = home
    battery = max(20, 100 - int(t / 18))  # about 1 % every 18 s, landing reserve kept
    gimbal_pitch = -40 + 15 * math.sin(2 * math.pi * t / 30)
    zoom = round(1 + 3 * (0.5 + 0.5 * math.sin(2 * math.pi * t / 60)), 1)
    half = 0.5 / zoom  # the zoom lens's view within the wide one, centred
    return {
        "latitude": latitude + y / _METRES_PER_DEGREE,
        "longitude": longitude + x / (_METRES_PER_DEGREE * math.cos(math.radians(latitude))),
        "height": round(height + z, 2),
        "elevation": round(z, 2),
        "attitude_pitch": round(-0.8 * speed, 1),  # nose down to fly forward
        "attitude_roll": round(8 * math.sin(2 * math.pi * t / LOOP_SECONDS), 1),
        "attitude_head": round(heading, 1),
        "horizontal_speed": round(speed, 2),
        "vertical_speed": round(up, 2),
        "battery": {
            "capacity_percent": battery,
            "remain_flight_time": battery * 18,
            "return_home_power": 25,
            "landing_power": 10,
        },
        "mode_code": 4 if t < TAKEOFF_SECONDS else 5,  # auto take-off, then wayline
        "gear": 1,
        "home_distance": round(math.hypot(x, y), 1),
        "wind_speed": 3.2,
        AIRCRAFT_CAMERA: {
            "payload_index": AIRCRAFT_CAMERA,
            "gimbal_pitch": round(gimbal_pitch, 1),
            "gimbal_roll": 0.0,
            "gimbal_yaw": round(heading, 1),
            "zoom_factor": zoom,
        },
        "cameras": [
            {
                "payload_index": AIRCRAFT_CAMERA,
                "camera_mode": 1,
                "photo_state": 0,
                "recording_state": 0,
                "zoom_factor": zoom,
                "liveview_world_region": {
                    "left": round(0.5 - half, 4),
                    "top": round(0.5 - half, 4),
                    "right": round(0.5 + half, 4),
                    "bottom": round(0.5 + half, 4),
                },
            }
        ],
    }


def dock_state(home: tuple[float, float, float] = HOME) -> dict[str, Any]:
    """The dock's own osd ``data``: working, its aircraft out, a good network."""
    latitude, longitude, height = home
    return {
        "mode_code": 4,  # working: its aircraft is flying
        "network_state": {"type": 2, "quality": 5, "rate": 1250.0},
        "drone_in_dock": 0,
        "cover_state": 1,
        "latitude": latitude,
        "longitude": longitude,
        "height": height,
        "wireless_link": {"sdr_quality": 5, "4g_quality": 4, "sdr_link_state": 1, "4g_link_state": 1},
    }


@dataclass
class DockBehaviour:
    fail_first: int = 0  # answer this many live_start_push with `fail_code`
    fail_code: int = 613006
    reply_delay: float = 0.0
    osd_interval: float = 2.0
    # Docks send live_capacity only when it changes; a bridge that (re)connected later
    # would never hear it. The simulator repeats its announcement now and then.
    announce_interval: float = 10.0
    drop_after: float = 0.0  # seconds into each push, drop it (like a network glitch) ...
    drop_for: float = 0.0  # ... for this long, then push again to the same URL
    lens_switch_gap: float = 1.0  # seconds without video while the lens changes
    unresponsive: bool = False  # take commands but neither act nor answer (a hung dock)
    offline_after: float = 0.0  # seconds after starting, lose the network (MQTT and push) ...
    offline_for: float = 0.0  # ... for this long (0: for good)
    osd_rate: float = 5.0  # aircraft osd messages a second (0: none)


@dataclass
class DockSimulator:
    broker: BrokerAddress
    clip: Path  # an H.264 clip ffmpeg can stream-copy into FLV
    gateway_sn: str = "SIMDOCK0000001"
    aircraft_sn: str = "SIMAIRCRAFT0001"
    behaviour: DockBehaviour = field(default_factory=DockBehaviour)
    starts: list[dict[str, object]] = field(default_factory=list)
    stops: list[dict[str, object]] = field(default_factory=list)
    controls: list[tuple[str, dict[str, object]]] = field(default_factory=list)  # quality, lens
    _lens_switch: asyncio.Task[None] | None = None
    host: str = "127.0.0.1"  # where it serves RTSP (url_type 2), like a remote controller
    _push: RtmpCameraPush | WhipCameraPush | RtspCameraServer | None = None
    _pushing: dict[str, object] | None = None  # the live_start_push being served
    _closing: TaskSet = field(default_factory=lambda: TaskSet("dock_sim"))
    _glitch: asyncio.Task[None] | None = None
    _offline_timer: asyncio.Task[None] | None = None
    _offline: asyncio.Event = field(default_factory=asyncio.Event)
    _flight_start: float | None = None  # time.monotonic() at take-off: the flight outlives reconnects

    @property
    def videos(self) -> list[p.VideoId]:
        return [
            p.VideoId(self.aircraft_sn, "53-0-0", "normal-0"),
            p.VideoId(self.gateway_sn, "165-0-7", "normal-0"),
        ]

    async def run(self) -> None:
        """One MQTT session: announce the dock and answer commands until cancelled or the
        broker is lost (aiomqtt.MqttError). A push outlives a lost broker, as a real dock's
        does; `close` ends it. While the dock is offline (`go_offline`), it waits."""
        if self.behaviour.offline_after > 0 and self._offline_timer is None:
            self._offline_timer = asyncio.ensure_future(self._go_offline_later())
        while self._offline.is_set():
            await asyncio.sleep(0.1)
        async with self.broker.client(f"dock-sim-{self.gateway_sn}") as client:
            await client.subscribe(f"thing/product/{self.gateway_sn}/services", qos=1)
            await self._announce(client)
            osd = asyncio.create_task(self._osd(client))
            flight = asyncio.create_task(self._aircraft_osd(client))
            commands = asyncio.create_task(self._commands(client))
            offline: asyncio.Task[object] = asyncio.create_task(self._offline.wait())
            try:
                # A command may be held (reply_delay) when the broker goes: the next osd
                # publish notices the lost link too, and the held reply is dropped with it.
                await asyncio.wait((commands, osd, flight, offline), return_when=asyncio.FIRST_COMPLETED)
                for task in (commands, osd, flight):
                    if task.done():
                        task.result()  # the broker was lost: aiomqtt.MqttError
            finally:
                for pending in (osd, flight, commands, offline):
                    pending.cancel()

    async def _commands(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self._command(client, bytes(message.payload))

    async def go_offline(self, seconds: float = 0.0) -> None:
        """Lose the network: MQTT and the push stop, for ``seconds`` (0: for good)."""
        log.info("dock_sim_offline", gateway_sn=self.gateway_sn, seconds=seconds)
        self._offline.set()
        self._stop_push()
        if seconds > 0:
            await asyncio.sleep(seconds)
            self._offline.clear()

    async def _go_offline_later(self) -> None:
        await asyncio.sleep(self.behaviour.offline_after)
        await self.go_offline(self.behaviour.offline_for)

    async def close(self) -> None:
        """Stop pushing and every timer: the dock is switched off."""
        for task in (self._glitch, self._lens_switch, self._offline_timer):
            if task is not None:
                task.cancel()
        self._stop_push()
        await self._closing.wait()

    async def _announce(self, client: aiomqtt.Client) -> None:
        topo = {
            "domain": "3",
            "type": 2,
            "sub_type": 0,
            "sub_devices": [{"sn": self.aircraft_sn, "domain": "0", "type": 91, "sub_type": 0, "index": "A"}],
        }
        await client.publish(
            f"sys/product/{self.gateway_sn}/status", self._message("update_topo", topo), qos=1
        )
        capacity = p.live_capacity_data(
            p.LiveCapacity(tuple(p.Video(video, "normal", LENSES) for video in self.videos), coexist_max=1)
        )
        state = self._message("", {"live_capacity": capacity})
        await client.publish(f"thing/product/{self.gateway_sn}/state", state, qos=1)

    async def _report_live_status(self, client: aiomqtt.Client) -> None:
        """``live_status`` in the state topic, as a dock reports it after each change."""
        pushing = self._pushing or {}
        latest = {method: data for method, data in self.controls}  # the last of each command
        lens = latest.get("live_lens_change", {}).get("video_type", "normal")
        quality = latest.get("live_set_quality", pushing).get("video_quality", 0)
        statuses = [
            {
                "video_id": str(video),
                "video_type": lens if pushing.get("video_id") == str(video) else "normal",
                "video_quality": quality if pushing.get("video_id") == str(video) else 0,
                "status": 1 if pushing.get("video_id") == str(video) else 0,
                "error_status": 0,
            }
            for video in self.videos
        ]
        state = self._message("", {"live_status": statuses})
        await client.publish(f"thing/product/{self.gateway_sn}/state", state, qos=1)

    async def _osd(self, client: aiomqtt.Client) -> None:
        last_announce = time.monotonic()
        while True:
            await client.publish(f"thing/product/{self.gateway_sn}/osd", self._message("", dock_state()))
            await asyncio.sleep(self.behaviour.osd_interval)
            if time.monotonic() - last_announce >= self.behaviour.announce_interval:
                last_announce = time.monotonic()
                await self._announce(client)

    async def _aircraft_osd(self, client: aiomqtt.Client) -> None:
        """The aircraft's osd at ``osd_rate``, on a steady schedule (no drift)."""
        rate = self.behaviour.osd_rate
        if rate <= 0:
            await asyncio.Event().wait()  # none: wait to be cancelled with the session
        if self._flight_start is None:
            self._flight_start = time.monotonic()
        topic = f"thing/product/{self.aircraft_sn}/osd"
        due = time.monotonic()
        while True:
            data = flight_state(time.monotonic() - self._flight_start)
            await client.publish(topic, self._message("", data))
            due = max(due + 1 / rate, time.monotonic() - 1 / rate)  # after a stall, no catch-up burst
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def _command(self, client: aiomqtt.Client, payload: bytes) -> None:
        try:
            request = p.parse_envelope(payload)
        except p.DjiProtocolError as exc:
            log.warning("dock_sim_bad_command", reason=str(exc))
            return
        result, output = 0, None
        if request.method == "live_start_push":
            self.starts.append(request.data)
            if self.behaviour.unresponsive:
                return
            if len(self.starts) <= self.behaviour.fail_first:
                result = self.behaviour.fail_code
            if result == 0 or result in p.ALREADY_STREAMING:
                # 513003: a device already streaming answers so, and its push goes on.
                try:
                    output = await self._start_push(request.data)
                except (ValueError, OSError) as exc:
                    log.warning("dock_sim_push_refused", reason=str(exc))
                    result = 513014  # bad or incomplete parameters
        elif request.method == "live_stop_push":
            self.stops.append(request.data)
            self._stop_push()
        elif request.method in ("live_set_quality", "live_lens_change"):
            self.controls.append((request.method, request.data))
        if self.behaviour.reply_delay:
            await asyncio.sleep(self.behaviour.reply_delay)
        data: dict[str, object] = {"result": result}
        if output is not None:
            data["output"] = output  # the RTSP URL the remote controller serves
        reply = p.Envelope(request.tid, request.bid, request.method, data, gateway=self.gateway_sn)
        await client.publish(f"thing/product/{self.gateway_sn}/services_reply", p.encode(reply), qos=1)
        if request.method in ("live_start_push", "live_stop_push", "live_set_quality", "live_lens_change"):
            await self._report_live_status(client)
        if request.method == "live_lens_change" and self._pushing is not None:
            # A dock restarts its push with the new lens: a short gap, then the same URL.
            self._lens_switch = asyncio.ensure_future(self.drop_push(self.behaviour.lens_switch_gap))

    async def drop_push(self, seconds: float) -> None:
        """Stop pushing for ``seconds``, then push again to the same URL."""
        pushing, push = self._pushing, self._push
        self._stop_push()
        if isinstance(push, WhipCameraPush):
            await push.closed()  # its DELETE answered: the key is free again where it pushed
        await asyncio.sleep(seconds)
        if pushing is not None and self._pushing is None:
            await self._start_push(pushing)

    async def _start_push(self, request: dict[str, object]) -> str | None:
        """Push (or serve) as ``live_start_push`` asks; the RTSP URL when serving it."""
        self._stop_push()
        units = clip_access_units(self.clip)
        url, url_type = str(request.get("url", "")), request.get("url_type")
        served = None
        if url_type == p.UrlType.RTSP:
            settings = urllib.parse.parse_qs(url)
            try:
                user, password = settings["userName"][0], settings["password"][0]
                port = int(settings["port"][0])
            except (KeyError, ValueError):
                raise ValueError(f"RTSP parameters unusable: {url[:100]!r}") from None
            server = RtspCameraServer(self.host, port, (user, password), units)
            await server.start()
            self._push, served = server, server.url
        elif url_type == p.UrlType.WHIP:
            self._push = WhipCameraPush(url, units)
            self._push.start()
        else:
            self._push = RtmpCameraPush(url, units)
            self._push.start()
        self._pushing = request
        if self.behaviour.drop_for > 0 and self._glitch is None:
            self._glitch = asyncio.ensure_future(self._drop_later())
        log.info("dock_sim_pushing", url_type=url_type, url=served or url)
        return served

    async def _drop_later(self) -> None:
        await asyncio.sleep(self.behaviour.drop_after)
        await self.drop_push(self.behaviour.drop_for)

    def _stop_push(self) -> None:
        self._pushing = None
        push, self._push = self._push, None
        if push is not None:
            push.stop()
            if isinstance(push, BackgroundCamera):  # its connections close in the background
                self._closing.spawn(push.closed())

    def _message(self, method: str, data: dict[str, Any]) -> bytes:
        envelope = p.new_request(method, data)
        return orjson.dumps(
            {
                "tid": envelope.tid,
                "bid": envelope.bid,
                "timestamp": int(time.time() * 1000),
                "gateway": self.gateway_sn,
                "method": method,
                "data": data,
            }
        )


async def run_forever(simulator: DockSimulator, retry: float = 2.0) -> None:
    """Run the simulator until cancelled, reconnecting after broker errors; then close it."""
    try:
        while True:
            with contextlib.suppress(aiomqtt.MqttError):
                await simulator.run()
            await asyncio.sleep(retry)
    finally:
        await simulator.close()
