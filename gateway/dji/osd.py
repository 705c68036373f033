"""DJI ``osd`` telemetry as typed samples, sans I/O: `parse_osd` turns one
``thing/product/{sn}/osd`` message (an `Envelope` already parsed and size-checked by
`protocol.parse_envelope`) into an `OsdSample`.

The field names are DJI's documented osd properties (Cloud API "Device Properties" of the
aircraft M30/M3D/M3TD/M300/M350, Dock 1/2/3 and the remote controller), as the official
demo reads them (dji-sdk/DJI-Cloud-API-Demo: OsdDockDrone, OsdRcDrone, OsdDock,
OsdRemoteControl, OsdCamera, DockDronePayload, DroneBattery, NetworkState, WirelessLink);
docs/dji.md has the mapping table.

Devices are not trusted: a known field with a malformed value (wrong type, NaN or
infinity, out of range, a bool where a number goes) is dropped alone and named in
`OsdSample.dropped`; the rest of the message is kept. Fields this module does not know are
passed through in `OsdSample.extra` as they came, bounded (`MAX_EXTRA_KEYS` keys, each
value at most `MAX_EXTRA_VALUE_BYTES` serialised and `MAX_EXTRA_DEPTH` deep), so a huge
or deeply nested payload cannot become a huge sample; what was cut is counted in
`OsdSample.cut`.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.dji import protocol as p

MAX_EXTRA_KEYS = 64
MAX_EXTRA_KEY_LENGTH = 64
MAX_EXTRA_VALUE_BYTES = 4096  # one value, as JSON
MAX_EXTRA_BYTES = 32 * 1024  # all of them together
MAX_EXTRA_DEPTH = 8
MAX_CAMERAS = 16  # an aircraft carries at most a few payloads; docks one camera
MAX_DROPPED = 64
# Link qualities are 0-5; DJI sends 65535 for "no value" (a link that is down).
_NO_VALUE = 65535
# Timestamps past this are not milliseconds of this era (and not exact in JavaScript).
_MAX_TIMESTAMP_MS = 2**53 - 1
_PAYLOAD_INDEX = re.compile(r"[0-9]{1,6}-[0-9]{1,6}-[0-9]{1,6}")


class OsdError(p.DjiProtocolError):
    """An osd message that gives no sample at all (the reason is in the text)."""


class DeviceKind(enum.Enum):
    AIRCRAFT = "aircraft"
    DOCK = "dock"
    RC = "rc"


@dataclass(frozen=True, slots=True)
class Attitude:
    pitch: float | None = None
    roll: float | None = None
    head: float | None = None

    def to_json(self) -> dict[str, Any]:
        return _present({"pitch": self.pitch, "roll": self.roll, "head": self.head})


@dataclass(frozen=True, slots=True)
class Aircraft:
    latitude: float | None = None
    longitude: float | None = None
    height: float | None = None  # m, absolute (ellipsoid) height
    elevation: float | None = None  # m, above the take-off point
    attitude: Attitude | None = None
    horizontal_speed: float | None = None  # m/s
    vertical_speed: float | None = None  # m/s
    battery: int | None = None  # percent
    mode_code: int | None = None
    link_quality: int | None = None  # 0-5, of the aircraft's or its gateway's wireless link

    def to_json(self) -> dict[str, Any]:
        return _present(
            {
                "latitude": self.latitude,
                "longitude": self.longitude,
                "height": self.height,
                "elevation": self.elevation,
                "attitude": self.attitude.to_json() if self.attitude else None,
                "horizontalSpeed": self.horizontal_speed,
                "verticalSpeed": self.vertical_speed,
                "battery": self.battery,
                "modeCode": self.mode_code,
                "linkQuality": self.link_quality,
            }
        )


@dataclass(frozen=True, slots=True)
class Gimbal:
    pitch: float | None = None
    roll: float | None = None
    yaw: float | None = None

    def to_json(self) -> dict[str, Any]:
        return _present({"pitch": self.pitch, "roll": self.roll, "yaw": self.yaw})


@dataclass(frozen=True, slots=True)
class Region:
    """``liveview_world_region``: the zoom lens's field of view within the live view, 0-1
    from the top left corner."""

    left: float | None = None
    top: float | None = None
    right: float | None = None
    bottom: float | None = None

    def to_json(self) -> dict[str, Any]:
        return _present({"left": self.left, "top": self.top, "right": self.right, "bottom": self.bottom})


@dataclass(frozen=True, slots=True)
class Camera:
    payload_index: str  # "{type}-{sub_type}-{position}", the camera_index of its video ids
    gimbal: Gimbal | None = None
    zoom_factor: float | None = None
    camera_mode: int | None = None  # 0 photo, 1 video, 2 low-light, 3 panorama, -1 unsupported
    lens: str | None = None  # the lens of its live video (from live_status), when live
    liveview_world_region: Region | None = None

    def to_json(self) -> dict[str, Any]:
        return _present(
            {
                "payloadIndex": self.payload_index,
                "gimbal": self.gimbal.to_json() if self.gimbal else None,
                "zoomFactor": self.zoom_factor,
                "cameraMode": self.camera_mode,
                "lens": self.lens,
                "liveviewWorldRegion": self.liveview_world_region.to_json()
                if self.liveview_world_region
                else None,
            }
        )


@dataclass(frozen=True, slots=True)
class NetworkState:
    type: int | None = None  # 1 4G, 2 Ethernet
    quality: int | None = None  # 0 no signal ... 5 excellent
    rate: float | None = None  # KB/s

    def to_json(self) -> dict[str, Any]:
        return _present({"type": self.type, "quality": self.quality, "rate": self.rate})


@dataclass(frozen=True, slots=True)
class Dock:
    mode_code: int | None = None  # 0 idle, 1 on-site debugging, 2 remote debugging, 3 upgrading, 4 working
    network: NetworkState | None = None
    link_quality: int | None = None  # 0-5, the dock's wireless link to its aircraft

    def to_json(self) -> dict[str, Any]:
        return _present(
            {
                "modeCode": self.mode_code,
                "network": self.network.to_json() if self.network else None,
                "linkQuality": self.link_quality,
            }
        )


@dataclass(frozen=True, slots=True)
class Rc:
    latitude: float | None = None
    longitude: float | None = None
    height: float | None = None
    battery: int | None = None  # percent
    link_quality: int | None = None

    def to_json(self) -> dict[str, Any]:
        return _present(
            {
                "latitude": self.latitude,
                "longitude": self.longitude,
                "height": self.height,
                "battery": self.battery,
                "linkQuality": self.link_quality,
            }
        )


@dataclass(frozen=True, slots=True)
class OsdSample:
    sn: str  # the device the osd is about (the topic's sn)
    gateway_sn: str  # the dock or RC it came through
    kind: DeviceKind
    device_time_ms: int | None  # the envelope's timestamp; None if 0 or absent
    received_at_ms: int  # the gateway's wall clock at arrival
    aircraft: Aircraft | None = None
    cameras: tuple[Camera, ...] = ()
    dock: Dock | None = None
    rc: Rc | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # unknown fields, as they came (bounded)
    dropped: tuple[str, ...] = ()  # known fields dropped as malformed
    cut: int = 0  # unknown fields (or cameras) left out to keep the sample bounded

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"sn": self.sn, "gateway": self.gateway_sn, "kind": self.kind.value}
        if self.device_time_ms is not None:
            body["deviceTime"] = self.device_time_ms
        body["receivedAt"] = self.received_at_ms
        if self.aircraft is not None:
            body["aircraft"] = self.aircraft.to_json()
        if self.cameras:
            body["cameras"] = [camera.to_json() for camera in self.cameras]
        if self.dock is not None:
            body["dock"] = self.dock.to_json()
        if self.rc is not None:
            body["rc"] = self.rc.to_json()
        if self.extra:
            body["extra"] = dict(self.extra)
        return body

    def gauges(self) -> dict[str, float]:
        """For Prometheus: what of battery percent, height (m) and link quality (0-5) the
        sample carries. A dock's link quality is that of its own network."""
        found: dict[str, float | None] = {}
        if self.aircraft is not None:
            found = {
                "battery_percent": self.aircraft.battery,
                "height_m": self.aircraft.height,
                "link_quality": self.aircraft.link_quality,
            }
        elif self.rc is not None:
            found = {
                "battery_percent": self.rc.battery,
                "height_m": self.rc.height,
                "link_quality": self.rc.link_quality,
            }
        elif self.dock is not None and self.dock.network is not None:
            found = {"link_quality": self.dock.network.quality}
        return {name: float(value) for name, value in found.items() if value is not None}

    @property
    def link_quality(self) -> int | None:
        """The quality of the wireless link this message reported, whatever the device."""
        for part in (self.aircraft, self.dock, self.rc):
            if part is not None and part.link_quality is not None:
                return part.link_quality
        return None


# --- which device -------------------------------------------------------------------------

# Properties only a dock reports (OsdDock), and only a remote controller (OsdRemoteControl).
_DOCK_KEYS = frozenset(
    {
        "network_state",
        "drone_in_dock",
        "drone_charge_state",
        "cover_state",
        "putter_state",
        "rainfall",
        "environment_temperature",
        "alternate_land_point",
        "air_conditioner",
        "sub_device",
        "job_number",
        "flighttask_step_code",
        "media_file_detail",
        "drc_state",
        "emergency_stop_state",
        "backup_battery",
    }
)
_AIRCRAFT_KEYS = frozenset(
    {"attitude_head", "attitude_pitch", "attitude_roll", "horizontal_speed", "vertical_speed", "battery"}
)
# update_topo: domain "3" dock, "2" remote controller; device types of docks (1, 2, 3) and of
# remote controllers (56 RC, 119 RC Plus, 144 RC Pro, ...) for firmware that sends no domain.
_DOCK_TYPES = frozenset({1, 2, 3})
_RC_TYPES = frozenset({56, 119, 144, 174})


def device_kind(sn: str, gateway_sn: str, data: Mapping[str, Any], topology: p.Topology | None) -> DeviceKind:
    """Which device an osd is about.

    - Its topic sn differs from the gateway it came through: a sub-device, the aircraft (as
      the official demo routes it: OsdDockDrone / OsdRcDrone).
    - Otherwise it is the gateway's own osd, and the gateway's ``update_topo`` decides when
      the registry has one: domain "3" (or device type 1-3) is a dock, domain "2" (or an
      RC type) a remote controller.
    - Without one, the data does: dock properties (``network_state``, ``drone_in_dock`` ...)
      make a dock, aircraft properties (attitude, speeds, battery) an aircraft, and a
      top-level ``capacity_percent`` or ``wireless_link`` alone a remote controller; a
      message with none of them is taken for a dock (the gateway skyrelay mostly serves).
    """
    if sn != gateway_sn:
        return DeviceKind.AIRCRAFT
    if topology is not None and topology.gateway_sn == sn:
        if topology.domain == "3" or (not topology.domain and topology.type in _DOCK_TYPES):
            return DeviceKind.DOCK
        if topology.domain == "2" or (not topology.domain and topology.type in _RC_TYPES):
            return DeviceKind.RC
    keys = data.keys()
    if not _DOCK_KEYS.isdisjoint(keys):
        return DeviceKind.DOCK
    if not _AIRCRAFT_KEYS.isdisjoint(keys):
        return DeviceKind.AIRCRAFT
    if "capacity_percent" in data or "wireless_link" in data:
        return DeviceKind.RC
    return DeviceKind.DOCK


# --- parsing ------------------------------------------------------------------------------


def parse_osd(
    sn: str,
    envelope: p.Envelope,
    *,
    received_at_ms: int,
    gateway_sn: str | None = None,
    topology: p.Topology | None = None,
    lenses: Mapping[str, str] | None = None,
    gateway_link_quality: int | None = None,
) -> OsdSample:
    """The sample of one osd message about device ``sn`` (the topic's sn).

    ``gateway_sn``: the gateway it came through (default: the envelope's ``gateway``, else
    ``sn``); ``topology``: that gateway's ``update_topo``, if known (see `device_kind`);
    ``lenses``: payload index -> lens of its live video, for `Camera.lens`;
    ``gateway_link_quality``: the gateway's latest wireless link quality, for an aircraft
    whose own osd carries none. Raises OsdError only for a serial number that is not one."""
    if not p.valid_sn(sn):
        raise OsdError(f"not a serial number: {sn[:80]!r}")
    gateway = gateway_sn or envelope.gateway or sn
    if not p.valid_sn(gateway):
        raise OsdError(f"gateway is not a serial number: {gateway[:80]!r}")
    data = envelope.data
    kind = device_kind(sn, gateway, data, topology)
    reader = _Reader(data)
    timestamp: int | None = envelope.timestamp
    if timestamp is not None and not 0 < timestamp <= _MAX_TIMESTAMP_MS:
        if timestamp != 0:
            reader.drop("timestamp")
        timestamp = None
    aircraft = dock = rc = None
    cameras: tuple[Camera, ...] = ()
    if kind is DeviceKind.AIRCRAFT:
        aircraft = reader.aircraft(gateway_link_quality)
        cameras = reader.cameras(lenses or {})
    elif kind is DeviceKind.DOCK:
        dock = reader.dock()
        cameras = reader.cameras(lenses or {})
    else:
        rc = reader.rc()
    extra = reader.extra()
    return OsdSample(
        sn,
        gateway,
        kind,
        timestamp,
        received_at_ms,
        aircraft=aircraft,
        cameras=cameras,
        dock=dock,
        rc=rc,
        extra=extra,
        dropped=tuple(reader.dropped[:MAX_DROPPED]),
        cut=reader.cut,
    )


class _Reader:
    """Reads known fields from one osd's data, remembering which keys it used, which it
    dropped and how much it cut."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.used: set[str] = set()
        self.dropped: list[str] = []
        self.cut = 0

    def drop(self, name: str) -> None:
        if len(self.dropped) < MAX_DROPPED:
            self.dropped.append(name[:100])
        else:
            self.cut += 1

    # --- values, each checked on its own

    # ``within`` names the object holding ``key`` ("battery" for battery.capacity_percent):
    # the dropped field's name is only spelled out when a value is dropped, not per message.

    def number(
        self, source: Mapping[str, Any], key: str, low: float, high: float, within: str = ""
    ) -> float | None:
        value = source.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.drop(f"{within}.{key}" if within else key)
            return None
        number = float(value)
        if not math.isfinite(number) or not low <= number <= high:
            self.drop(f"{within}.{key}" if within else key)
            return None
        return number

    def integer(
        self,
        source: Mapping[str, Any],
        key: str,
        low: int,
        high: int,
        within: str = "",
        *,
        no_value: int | None = None,
    ) -> int | None:
        value = source.get(key)
        if value is None or (no_value is not None and value == no_value and not isinstance(value, bool)):
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.drop(f"{within}.{key}" if within else key)
            return None
        return value

    def object(self, key: str) -> Mapping[str, Any] | None:
        self.used.add(key)
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.drop(key)
            return None
        return value

    def top(self, key: str, low: float, high: float) -> float | None:
        self.used.add(key)
        return self.number(self.data, key, low, high)

    def top_int(self, key: str, low: int, high: int) -> int | None:
        self.used.add(key)
        return self.integer(self.data, key, low, high)

    # --- parts

    def link_quality(self, key: str = "wireless_link") -> int | None:
        """The best of a ``wireless_link``'s SDR and 4G qualities (0-5; 65535: no value)."""
        link = self.object(key)
        if link is None:
            return None
        qualities = [
            self.integer(link, name, 0, 5, key, no_value=_NO_VALUE) for name in ("sdr_quality", "4g_quality")
        ]
        found = [q for q in qualities if q is not None]
        return max(found) if found else None

    def aircraft(self, gateway_link_quality: int | None) -> Aircraft | None:
        pitch = self.top("attitude_pitch", -180, 180)
        roll = self.top("attitude_roll", -180, 180)
        head = self.top("attitude_head", -360, 360)
        battery_object = self.object("battery")
        battery = None
        if battery_object is not None:
            battery = self.integer(battery_object, "capacity_percent", 0, 100, "battery")
        link = self.link_quality()
        aircraft = Aircraft(
            latitude=self.top("latitude", -90, 90),
            longitude=self.top("longitude", -180, 180),
            height=self.top("height", -2000, 20000),
            elevation=self.top("elevation", -2000, 20000),
            attitude=Attitude(pitch, roll, head) if (pitch, roll, head) != (None, None, None) else None,
            horizontal_speed=self.top("horizontal_speed", 0, 500),
            vertical_speed=self.top("vertical_speed", -500, 500),
            battery=battery,
            mode_code=self.top_int("mode_code", 0, 1000),
            link_quality=link if link is not None else gateway_link_quality,
        )
        return aircraft if aircraft != Aircraft() else None

    def dock(self) -> Dock | None:
        mode_code = self.top_int("mode_code", 0, 1000)
        network = None
        state = self.object("network_state")
        if state is not None:
            network = NetworkState(
                self.integer(state, "type", 0, 255, "network_state"),
                self.integer(state, "quality", 0, 5, "network_state", no_value=_NO_VALUE),
                self.number(state, "rate", 0, 1e9, "network_state"),
            )
            if network == NetworkState():
                network = None
        dock = Dock(mode_code, network, self.link_quality())
        return dock if dock != Dock() else None

    def rc(self) -> Rc | None:
        rc = Rc(
            latitude=self.top("latitude", -90, 90),
            longitude=self.top("longitude", -180, 180),
            height=self.top("height", -2000, 20000),
            battery=self.top_int("capacity_percent", 0, 100),
            link_quality=self.link_quality(),
        )
        return rc if rc != Rc() else None

    def cameras(self, lenses: Mapping[str, str]) -> tuple[Camera, ...]:
        """Per payload index: the gimbal (and Dock 2's zoom) from the object keyed by the
        index, and mode, zoom and live view region from the ``cameras`` list."""
        found: dict[str, dict[str, Any]] = {}
        for key, value in self.data.items():
            # Most keys are property names: the digit test spares them the regex.
            if not (isinstance(key, str) and key[:1].isdigit() and _PAYLOAD_INDEX.fullmatch(key)):
                continue
            self.used.add(key)
            if not isinstance(value, dict):
                self.drop(key)
                continue
            if key not in found and len(found) >= MAX_CAMERAS:
                self.cut += 1
                continue
            camera = found.setdefault(key, {})
            pitch = self.number(value, "gimbal_pitch", -360, 360, key)
            roll = self.number(value, "gimbal_roll", -360, 360, key)
            yaw = self.number(value, "gimbal_yaw", -360, 360, key)
            if (pitch, roll, yaw) != (None, None, None):
                camera["gimbal"] = Gimbal(pitch, roll, yaw)
            zoom = self.number(value, "zoom_factor", 0, 1000, key)
            if zoom is not None:
                camera["zoom_factor"] = zoom
        listed = self.data.get("cameras")
        self.used.add("cameras")
        if listed is not None and not isinstance(listed, list):
            self.drop("cameras")
        elif isinstance(listed, list):
            for i, item in enumerate(listed):
                index = item.get("payload_index") if isinstance(item, dict) else None
                if not isinstance(index, str) or not _PAYLOAD_INDEX.fullmatch(index):
                    self.drop(f"cameras[{i}]")
                    continue
                if index not in found and len(found) >= MAX_CAMERAS:
                    self.cut += 1
                    continue
                camera = found.setdefault(index, {})
                name = f"cameras[{i}]"
                zoom = self.number(item, "zoom_factor", 0, 1000, name)
                if zoom is not None:  # the camera's own zoom wins over the gimbal object's
                    camera["zoom_factor"] = zoom
                mode = self.integer(item, "camera_mode", -1, 255, name)
                if mode is not None:
                    camera["camera_mode"] = mode
                region = item.get("liveview_world_region")
                if region is not None and not isinstance(region, dict):
                    self.drop(f"{name}.liveview_world_region")
                elif isinstance(region, dict):
                    where = f"{name}.liveview_world_region"
                    parsed = Region(*(self.number(region, side, 0, 1, where) for side in _SIDES))
                    if parsed != Region():
                        camera["liveview_world_region"] = parsed
        return tuple(Camera(index, lens=lenses.get(index), **fields) for index, fields in found.items())

    def extra(self) -> dict[str, Any]:
        """The fields not used, as they came, within the bounds."""
        extra: dict[str, Any] = {}
        total = 0
        for key, value in self.data.items():
            if key in self.used:
                continue
            if len(extra) >= MAX_EXTRA_KEYS or len(key) > MAX_EXTRA_KEY_LENGTH:
                self.cut += 1
                continue
            size = _bounded_size(value, MAX_EXTRA_VALUE_BYTES, MAX_EXTRA_DEPTH)
            if size is None or total + size > MAX_EXTRA_BYTES:
                self.cut += 1
                continue
            total += size
            extra[key] = value
        return extra


_SIDES = ("left", "top", "right", "bottom")


def _bounded_size(value: Any, limit: int, max_depth: int) -> int | None:
    """About the size of ``value`` as JSON (a string counted at most 4 bytes a character),
    or None if it is over ``limit`` bytes or nested deeper than ``max_depth``. Iterative,
    and stops as soon as it knows: a value of any size or depth costs at most about
    ``limit`` steps."""
    size = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            size += 2 + len(item)
            if depth >= max_depth or size > limit:
                return None
            if isinstance(item, dict):
                for key, inner in item.items():
                    size += _text_size(key) + 1
                    stack.append((inner, depth + 1))
            else:
                stack.extend((inner, depth + 1) for inner in item)
        elif isinstance(item, str):
            size += _text_size(item)
        else:
            size += 24  # numbers, booleans, null: at most this long as JSON
        if size > limit:
            return None
    return size


def _text_size(text: str) -> int:
    return 2 + (len(text) if text.isascii() else 4 * len(text))


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}
