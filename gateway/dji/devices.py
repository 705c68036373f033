"""The DJI device registry, sans I/O: feed it MQTT messages (topic, payload, time) and it
keeps which gateways are online, which videos they offer and which are live, and returns
the replies the protocol requires and the events the bridge acts on.

What it learned of each gateway (its devices and the videos they offer) survives a restart
through `snapshot` and `restore`: docks send ``live_capacity`` only when it changes, so a
bridge started later would otherwise know no camera until then.

Anyone who can publish on the broker can announce gateways and aircraft, so both are
bounded: a message that would add a gateway past ``max_gateways``, or give one more than
``max_devices_per_gateway`` aircraft or video devices, raises `DeviceLimitExceeded` and
changes nothing.

Telemetry: an ``osd`` message of a known device (a gateway that announced itself with
``update_topo``, a device listed in a topology, or one owning videos in its gateway's
``live_capacity``) yields `TelemetryReceived` with its `osd.OsdSample`; an osd of an unknown
serial number yields none (counted in ``osd_unknown``). Each device may send osd at most
``max_osd_rate`` times a second (with a small burst): past it, a message is refused by its
topic alone, before its JSON is parsed, with `OsdRateLimited` (counted in ``osd_limited``),
so a flood costs little and changes nothing else."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.dji import protocol as p
from gateway.dji.osd import OsdSample, parse_osd
from gateway.dji.protocol import DjiProtocolError


@dataclass(frozen=True, slots=True)
class Publish:
    """A message to send: a reply the device waits for."""

    topic: str
    envelope: p.Envelope


@dataclass(frozen=True, slots=True)
class GatewayOnline:
    sn: str


@dataclass(frozen=True, slots=True)
class GatewayOffline:
    sn: str
    reason: str


@dataclass(frozen=True, slots=True)
class VideosChanged:
    """The videos a gateway offers changed (new ``live_capacity``, or it went offline)."""

    sn: str
    videos: tuple[p.Video, ...]


@dataclass(frozen=True, slots=True)
class LiveStatusChanged:
    sn: str
    statuses: tuple[p.LiveStatus, ...]


@dataclass(frozen=True, slots=True)
class ServiceReplied:
    gateway_sn: str
    reply: p.ServiceReply


@dataclass(frozen=True, slots=True)
class TelemetryReceived:
    """An osd message of a known device, as a typed sample."""

    sample: OsdSample


Event = (
    Publish
    | GatewayOnline
    | GatewayOffline
    | VideosChanged
    | LiveStatusChanged
    | ServiceReplied
    | TelemetryReceived
)


class DeviceLimitExceeded(DjiProtocolError):
    """A message refused because it would grow the registry past a bound."""

    def __init__(self, reason: str, gateway_sn: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # TOO_MANY_GATEWAYS or TOO_MANY_DEVICES (a /metrics label)
        self.gateway_sn = gateway_sn


class OsdRateLimited(DeviceLimitExceeded):
    """An osd message refused unparsed: its device sends faster than ``max_osd_rate``.
    ``first_of_burst`` is set on the first refusal after a quiet spell (`OSD_QUIET`), so the
    bridge logs a flood once, not once per message."""

    def __init__(self, sn: str, rate: float, first_of_burst: bool) -> None:
        super().__init__(OSD_RATE, sn, f"osd faster than {rate:g} Hz")
        self.sn = sn
        self.first_of_burst = first_of_burst


TOO_MANY_GATEWAYS = "too_many_gateways"
TOO_MANY_DEVICES = "too_many_devices"
OSD_RATE = "osd_rate"
# Seconds without a refused osd after which the next refusal starts a new burst (logged).
OSD_QUIET = 10.0
# A camera offers a handful of videos (normal, wide, zoom, ir); more per device is not a camera.
MAX_VIDEOS_PER_DEVICE = 16


# The `snapshot` format: bumped when it changes incompatibly (older files are ignored).
SNAPSHOT_VERSION = 1


@dataclass
class Gateway:
    sn: str
    last_seen: float | None  # None: restored, not heard from since this process started
    online: bool = True
    topology: p.Topology | None = None
    capacity: p.LiveCapacity = field(default_factory=p.LiveCapacity)
    live_status: dict[p.VideoId, p.LiveStatus] = field(default_factory=dict)
    link_quality: int | None = None  # of its wireless link, from its latest osd that had one


@dataclass(slots=True)
class _OsdBucket:
    """A token bucket: one token per accepted osd, refilled at ``max_osd_rate``."""

    tokens: float
    last: float
    last_refused: float = -math.inf


class DeviceRegistry:
    def __init__(
        self,
        offline_after: float = 60.0,
        *,
        max_gateways: int = 1000,
        max_devices_per_gateway: int = 64,
        max_osd_rate: float = 50.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.offline_after = offline_after
        self.max_gateways = max_gateways
        self.max_devices_per_gateway = max_devices_per_gateway
        self.max_osd_rate = max_osd_rate  # per device, Hz; 0: no limit
        # A short burst over the rate passes (a device catching up after a hiccup).
        self.osd_burst = max(2.0, max_osd_rate / 10)
        self.wall_clock = wall_clock  # for OsdSample.received_at_ms
        self.osd_limited = 0  # osd refused past max_osd_rate
        self.osd_unknown = 0  # osd of a device no topology or capacity names
        # One bucket per device that sent osd, least recently used first; at most as many
        # as the registry can hold devices (gateways and their devices), the oldest dropped.
        self._osd_buckets: OrderedDict[str, _OsdBucket] = OrderedDict()
        self.max_osd_buckets = max_gateways * (max_devices_per_gateway + 1)
        self.gateways: dict[str, Gateway] = {}
        self._gateway_of_device: dict[str, str] = {}  # aircraft sn -> gateway sn
        # Counts the changes a `snapshot` holds (topology, capacity): save when it moves.
        self.revision = 0

    def receive(self, topic: str, payload: bytes, now: float) -> list[Event]:
        """One MQTT message. Raises DjiProtocolError for a malformed payload on a device
        topic, and then changes nothing; other topics are ignored."""
        where = p.parse_topic(topic)
        if where is None:
            return []
        if where.kind is p.TopicKind.OSD and self.max_osd_rate > 0:
            self._admit_osd(where.sn, now)  # by the topic alone: a flood is not parsed
        envelope = p.parse_envelope(payload)
        # Parse everything first: a bad message must not leave half its effects behind.
        content = _Content.parse(where, envelope)
        gateway_sn = where.sn if where.kind is p.TopicKind.STATUS else self._gateway_sn(where.sn, envelope)
        self._check_bounds(gateway_sn, content)
        sample = self._telemetry(where.sn, gateway_sn, envelope) if where.kind is p.TopicKind.OSD else None
        events: list[Event] = self._seen(gateway_sn, now)
        gateway = self.gateways[gateway_sn]
        if content.topology is not None:
            if content.topology != gateway.topology:
                self.revision += 1
            self._set_topology(gateway, content.topology)
            events.append(Publish(p.reply_topic(where), p.reply_to(envelope)))
        if content.capacity is not None and content.capacity != gateway.capacity:
            gateway.capacity = content.capacity
            self.revision += 1
            events.append(VideosChanged(gateway.sn, content.capacity.videos))
        if content.statuses is not None:
            gateway.live_status = {s.video_id: s for s in content.statuses}
            events.append(LiveStatusChanged(gateway.sn, content.statuses))
        if content.reply is not None:
            events.append(ServiceReplied(gateway_sn, content.reply))
        if envelope.need_reply and where.kind in (p.TopicKind.STATE, p.TopicKind.EVENTS):
            events.append(Publish(p.reply_topic(where), p.reply_to(envelope)))
        if sample is not None:
            if sample.sn == gateway_sn and sample.link_quality is not None:
                gateway.link_quality = sample.link_quality  # for its aircraft's samples
            events.append(TelemetryReceived(sample))
        return events

    def tick(self, now: float) -> list[Event]:
        """Gateways silent for longer than ``offline_after`` go offline."""
        events: list[Event] = []
        for gateway in self.gateways.values():
            if (
                gateway.online
                and gateway.last_seen is not None
                and now - gateway.last_seen > self.offline_after
            ):
                gateway.online = False
                events.append(GatewayOffline(gateway.sn, f"no message for {self.offline_after:g} s"))
                if gateway.capacity.videos:
                    events.append(VideosChanged(gateway.sn, ()))
        return events

    def videos(self) -> list[tuple[str, p.Video]]:
        """(gateway sn, video) of every video of every online gateway."""
        return [(g.sn, video) for g in self.gateways.values() if g.online for video in g.capacity.videos]

    def gateway_of(self, video_id: p.VideoId) -> Gateway | None:
        for sn, video in self.videos():
            if video.video_id == video_id:
                return self.gateways[sn]
        return None

    # --- across restarts ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Each gateway's devices and videos, as JSON-able data in the devices' own wire
        format (``update_topo`` data, ``live_capacity``)."""
        return {
            "version": SNAPSHOT_VERSION,
            "gateways": {
                gateway.sn: {
                    "update_topo": p.update_topo_data(gateway.topology) if gateway.topology else None,
                    "live_capacity": p.live_capacity_data(gateway.capacity),
                }
                for gateway in self.gateways.values()
            },
        }

    def restore(self, snapshot: Any) -> list[str]:
        """The gateways of a `snapshot`, offline until they next speak (then their videos
        are offered at once). Gateways already known are left alone; malformed entries are
        skipped. Raises DjiProtocolError if ``snapshot`` is not one at all. Returns the
        serial numbers restored."""
        if not isinstance(snapshot, dict) or not isinstance(snapshot.get("gateways"), dict):
            raise DjiProtocolError("not a device registry snapshot")
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise DjiProtocolError(f"snapshot version {snapshot.get('version')!r}, not {SNAPSHOT_VERSION}")
        restored: list[str] = []
        for sn, entry in snapshot["gateways"].items():
            if (
                not isinstance(sn, str)
                or not p.valid_sn(sn)
                or sn in self.gateways
                or not isinstance(entry, dict)
                or len(self.gateways) >= self.max_gateways
            ):
                continue
            try:
                capacity = p.parse_live_capacity(entry.get("live_capacity"))
                topo = entry.get("update_topo")
                topology = (
                    p.parse_update_topo(sn, p.Envelope("", "", "update_topo", topo))
                    if isinstance(topo, dict)
                    else None
                )
                self._check_bounds(sn, _Content(topology=topology, capacity=capacity))
            except DjiProtocolError:
                continue
            gateway = self.gateways[sn] = Gateway(sn, None, online=False, capacity=capacity)
            if topology is not None:
                self._set_topology(gateway, topology)
            restored.append(sn)
        return restored

    # --- telemetry ------------------------------------------------------------------------

    def _admit_osd(self, sn: str, now: float) -> None:
        """Take a token from ``sn``'s bucket, or raise OsdRateLimited."""
        bucket = self._osd_buckets.get(sn)
        if bucket is None:
            if len(self._osd_buckets) >= self.max_osd_buckets:
                self._osd_buckets.popitem(last=False)
            bucket = self._osd_buckets[sn] = _OsdBucket(self.osd_burst, now)
        else:
            self._osd_buckets.move_to_end(sn)
            bucket.tokens = min(self.osd_burst, bucket.tokens + (now - bucket.last) * self.max_osd_rate)
            bucket.last = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return
        self.osd_limited += 1
        first = now - bucket.last_refused > OSD_QUIET
        bucket.last_refused = now
        raise OsdRateLimited(sn, self.max_osd_rate, first)

    def is_known_device(self, sn: str, gateway_sn: str) -> bool:
        """A gateway that announced itself, a device in a topology, or one owning videos
        in the capacity of the gateway it speaks through."""
        if sn in self._gateway_of_device:
            return True
        own = self.gateways.get(sn)
        if own is not None and own.topology is not None:
            return True
        gateway = self.gateways.get(gateway_sn)
        return gateway is not None and any(video.video_id.sn == sn for video in gateway.capacity.videos)

    def _telemetry(self, sn: str, gateway_sn: str, envelope: p.Envelope) -> OsdSample | None:
        if not self.is_known_device(sn, gateway_sn):
            self.osd_unknown += 1
            return None
        gateway = self.gateways.get(gateway_sn)
        topology = lenses = link_quality = None
        if gateway is not None:
            topology = gateway.topology
            link_quality = gateway.link_quality
            lenses = {
                status.video_id.camera_index: status.video_type
                for status in gateway.live_status.values()
                if status.streaming and status.video_id.sn == sn and status.video_type
            }
        return parse_osd(
            sn,
            envelope,
            received_at_ms=int(self.wall_clock() * 1000),
            gateway_sn=gateway_sn,
            topology=topology,
            lenses=lenses,
            gateway_link_quality=link_quality,
        )

    # --- message kinds --------------------------------------------------------------------

    def _gateway_sn(self, sn: str, envelope: p.Envelope) -> str:
        # An aircraft's osd/state names its gateway, or we know it from update_topo.
        return envelope.gateway or self._gateway_of_device.get(sn, sn)

    def _check_bounds(self, gateway_sn: str, content: _Content) -> None:
        if gateway_sn not in self.gateways and len(self.gateways) >= self.max_gateways:
            raise DeviceLimitExceeded(
                TOO_MANY_GATEWAYS, gateway_sn, f"already {len(self.gateways)} gateways, the maximum"
            )
        limit = self.max_devices_per_gateway
        if content.topology is not None and len(set(content.topology.sub_devices)) > limit:
            devices = len(set(content.topology.sub_devices))
            raise DeviceLimitExceeded(TOO_MANY_DEVICES, gateway_sn, f"{devices} devices, over {limit}")
        if content.capacity is not None:
            devices = len({video.video_id.sn for video in content.capacity.videos} - {gateway_sn})
            videos = len(content.capacity.videos)
            if devices > limit or videos > MAX_VIDEOS_PER_DEVICE * (limit + 1):
                detail = f"{videos} videos of {devices} devices, over {limit} devices"
                raise DeviceLimitExceeded(TOO_MANY_DEVICES, gateway_sn, detail)

    def _seen(self, gateway_sn: str, now: float) -> list[Event]:
        gateway = self.gateways.get(gateway_sn)
        if gateway is None:
            self.gateways[gateway_sn] = Gateway(gateway_sn, now)
            return [GatewayOnline(gateway_sn)]
        gateway.last_seen = now
        if gateway.online:
            return []
        gateway.online = True
        events: list[Event] = [GatewayOnline(gateway_sn)]
        if gateway.capacity.videos:
            events.append(VideosChanged(gateway_sn, gateway.capacity.videos))
        return events

    def _set_topology(self, gateway: Gateway, topology: p.Topology) -> None:
        if gateway.topology is not None:
            for sn in gateway.topology.sub_devices:
                if self._gateway_of_device.get(sn) == gateway.sn:  # not if it moved since
                    del self._gateway_of_device[sn]
        gateway.topology = topology
        for sn in topology.sub_devices:
            self._gateway_of_device[sn] = gateway.sn


@dataclass(frozen=True, slots=True)
class _Content:
    """What one device message says, parsed before anything is changed."""

    topology: p.Topology | None = None
    capacity: p.LiveCapacity | None = None
    statuses: tuple[p.LiveStatus, ...] | None = None
    reply: p.ServiceReply | None = None

    @classmethod
    def parse(cls, where: p.Topic, envelope: p.Envelope) -> _Content:
        data = envelope.data
        match where.kind:
            case p.TopicKind.STATUS if envelope.method == "update_topo":
                return cls(topology=p.parse_update_topo(where.sn, envelope))
            case p.TopicKind.STATE | p.TopicKind.OSD:
                capacity = p.parse_live_capacity(data["live_capacity"]) if "live_capacity" in data else None
                statuses = tuple(p.parse_live_status(data["live_status"])) if "live_status" in data else None
                return cls(capacity=capacity, statuses=statuses)
            case p.TopicKind.SERVICES_REPLY:
                return cls(reply=p.parse_service_reply(envelope))
        return cls()
