"""gateway.dji.devices: the device registry, fed MQTT messages as plain data with a clock."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from typing import Any

import pytest
import structlog

from gateway.dji import protocol as p
from gateway.dji.devices import (
    MAX_VIDEOS_PER_DEVICE,
    OSD_RATE,
    TOO_MANY_DEVICES,
    TOO_MANY_GATEWAYS,
    DeviceLimitExceeded,
    DeviceRegistry,
    Event,
    GatewayOffline,
    GatewayOnline,
    LiveStatusChanged,
    OsdRateLimited,
    Publish,
    ServiceReplied,
    TelemetryReceived,
    VideosChanged,
)
from gateway.dji.mqtt import DjiMqtt
from gateway.dji.osd import DeviceKind
from gateway.dji.protocol import DjiProtocolError
from gateway.mqtt_link import BrokerAddress
from tests.unit.helpers import DJI_LIVE_CAPACITY

GW = "1ZMDGBW0000135"
GW2 = "4TADKAQ000002J"
AIRCRAFT = "1ZNDH1D0010054"
AIRCRAFT2 = "1581F5BMD228Q00A82XX"

STATUS = f"sys/product/{GW}/status"
STATE = f"thing/product/{GW}/state"
OSD = f"thing/product/{GW}/osd"
EVENTS = f"thing/product/{GW}/events"
SERVICES_REPLY = f"thing/product/{GW}/services_reply"

# The official live_capacity example (reference §3): three videos of the aircraft.
CAPACITY: dict[str, Any] = DJI_LIVE_CAPACITY
VIDEO_IDS = [
    p.VideoId(AIRCRAFT, "42-0-0", "zoom-0"),
    p.VideoId(AIRCRAFT, "42-0-0", "wide-0"),
    p.VideoId(AIRCRAFT, "39-0-7", "normal-0"),
]
LIVE_STATUS = [
    {
        "video_id": str(VIDEO_IDS[2]),
        "video_type": "normal",
        "video_quality": 0,
        "status": 1,
        "error_status": 0,
    }
]

_counter = iter(range(1_000_000))


def payload(method: str = "", data: Any = None, **fields: Any) -> bytes:
    """A device message with fresh tid and bid."""
    n = next(_counter)
    body = {"tid": f"tid-{n}", "bid": f"bid-{n}", "timestamp": 1654070968655, "method": method}
    body["data"] = {} if data is None else data
    return json.dumps({**body, **fields}).encode()


def update_topo(*subs: str, **fields: Any) -> bytes:
    data = {
        "domain": "3",
        "type": 98,
        "sub_type": 0,
        "device_secret": "secret",
        "nonce": "nonce",
        "thing_version": "1.1.2",
        "sub_devices": [{"sn": sn, "domain": "0", "type": 116, "sub_type": 0, "index": "A"} for sn in subs],
    }
    return payload("update_topo", data, **fields)


def state(gateway: str = GW, **data: Any) -> bytes:
    return payload("", data, gateway=gateway)


def online(registry: DeviceRegistry, now: float = 0.0, gateway: str = GW) -> list[Event]:
    """update_topo (with the aircraft) then the official live_capacity."""
    registry.receive(f"sys/product/{gateway}/status", update_topo(AIRCRAFT), now)
    return registry.receive(f"thing/product/{gateway}/state", state(gateway, live_capacity=CAPACITY), now)


def without_telemetry(events: list[Event]) -> list[Event]:
    """The events other than TelemetryReceived (an osd of a known device adds one)."""
    return [event for event in events if not isinstance(event, TelemetryReceived)]


def snapshot(registry: DeviceRegistry) -> Any:
    return copy.deepcopy((registry.gateways, registry._gateway_of_device, registry.videos()))


# --- presence and update_topo ----------------------------------------------------------------


def test_update_topo_brings_the_gateway_online_and_is_answered() -> None:
    registry = DeviceRegistry()
    raw = update_topo(AIRCRAFT)
    sent = json.loads(raw)
    events = registry.receive(STATUS, raw, 5.0)
    assert events[0] == GatewayOnline(GW)
    assert len(events) == 2
    reply = events[1]
    assert isinstance(reply, Publish)
    assert reply.topic == f"sys/product/{GW}/status_reply"
    assert (reply.envelope.tid, reply.envelope.bid) == (sent["tid"], sent["bid"])
    assert reply.envelope.data == {"result": 0}
    on_wire = json.loads(p.encode(reply.envelope))
    assert (
        on_wire["tid"] == sent["tid"] and on_wire["bid"] == sent["bid"] and on_wire["data"] == {"result": 0}
    )
    gateway = registry.gateways[GW]
    assert gateway.online and gateway.last_seen == 5.0
    assert gateway.topology == p.Topology(GW, "3", 98, (AIRCRAFT,))


def test_second_update_topo_is_answered_without_a_new_gateway_online() -> None:
    registry = DeviceRegistry()
    registry.receive(STATUS, update_topo(AIRCRAFT), 0.0)
    events = registry.receive(STATUS, update_topo(), 1.0)  # aircraft offline
    assert [type(e) for e in events] == [Publish]
    assert registry.gateways[GW].topology == p.Topology(GW, "3", 98, ())


def test_status_message_other_than_update_topo_is_not_answered() -> None:
    registry = DeviceRegistry()
    events = registry.receive(STATUS, payload("something_else"), 0.0)
    assert events == [GatewayOnline(GW)]


def test_update_topo_with_need_reply_is_answered_once() -> None:
    registry = DeviceRegistry()
    events = registry.receive(STATUS, update_topo(AIRCRAFT, need_reply=1), 0.0)
    assert sum(isinstance(e, Publish) for e in events) == 1


# --- live_capacity and live_status -----------------------------------------------------------


def test_live_capacity_lists_the_videos_with_the_gateway_sn() -> None:
    registry = DeviceRegistry()
    registry.receive(STATUS, update_topo(AIRCRAFT), 0.0)
    events = registry.receive(STATE, state(live_capacity=CAPACITY), 1.0)
    assert len(events) == 1
    (changed,) = events
    assert isinstance(changed, VideosChanged) and changed.sn == GW
    assert [v.video_id for v in changed.videos] == VIDEO_IDS
    assert [(sn, v.video_id) for sn, v in registry.videos()] == [(GW, vid) for vid in VIDEO_IDS]
    assert [v.video_type for _, v in registry.videos()] == ["zoom", "wide", "normal"]
    assert registry.gateway_of(VIDEO_IDS[0]) is registry.gateways[GW]
    assert registry.gateway_of(p.VideoId(AIRCRAFT, "42-0-0", "ir-0")) is None


def test_live_capacity_on_a_first_message_brings_the_gateway_online() -> None:
    registry = DeviceRegistry()
    events = registry.receive(STATE, state(live_capacity=CAPACITY), 0.0)
    assert events[0] == GatewayOnline(GW)
    assert isinstance(events[1], VideosChanged) and len(events) == 2


def test_same_capacity_again_is_no_change() -> None:
    registry = DeviceRegistry()
    online(registry)
    assert registry.receive(STATE, state(live_capacity=copy.deepcopy(CAPACITY)), 1.0) == []
    # a change that does not touch the videos list: still none
    other = {**CAPACITY, "available_video_number": 1}
    assert registry.receive(STATE, state(live_capacity=other), 2.0) == []


def test_changed_capacity_is_announced() -> None:
    registry = DeviceRegistry()
    online(registry)
    smaller = copy.deepcopy(CAPACITY)
    smaller["device_list"][0]["camera_list"].pop(0)
    (changed,) = registry.receive(STATE, state(live_capacity=smaller), 1.0)
    assert changed == VideosChanged(GW, (p.Video(VIDEO_IDS[2], "normal"),))
    assert [v.video_id for _, v in registry.videos()] == [VIDEO_IDS[2]]
    (changed,) = registry.receive(STATE, state(live_capacity={"device_list": []}), 2.0)
    assert changed == VideosChanged(GW, ())
    assert registry.videos() == []


def test_live_status_is_kept_and_announced() -> None:
    registry = DeviceRegistry()
    online(registry)
    (changed,) = registry.receive(STATE, state(live_status=LIVE_STATUS), 1.0)
    expected = p.LiveStatus(VIDEO_IDS[2], True, "normal", 0, 0)
    assert changed == LiveStatusChanged(GW, (expected,))
    assert registry.gateways[GW].live_status == {VIDEO_IDS[2]: expected}
    # the next live_status replaces it
    stopped = [{**LIVE_STATUS[0], "status": 0, "error_status": 513008}]
    (changed,) = registry.receive(STATE, state(live_status=stopped), 2.0)
    assert isinstance(changed, LiveStatusChanged) and changed.statuses[0].error == 513008
    assert registry.gateways[GW].live_status[VIDEO_IDS[2]].streaming is False
    (changed,) = registry.receive(STATE, state(live_status=[]), 3.0)
    assert changed == LiveStatusChanged(GW, ()) and registry.gateways[GW].live_status == {}


def test_live_status_in_osd_is_accepted_too() -> None:
    registry = DeviceRegistry()
    online(registry)
    changed, telemetry = registry.receive(OSD, state(live_status=LIVE_STATUS), 1.0)
    assert isinstance(changed, LiveStatusChanged) and isinstance(telemetry, TelemetryReceived)


def test_capacity_and_status_in_one_message() -> None:
    registry = DeviceRegistry()
    registry.receive(STATUS, update_topo(AIRCRAFT), 0.0)
    events = registry.receive(STATE, state(live_capacity=CAPACITY, live_status=LIVE_STATUS), 1.0)
    assert [type(e) for e in events] == [VideosChanged, LiveStatusChanged]


# --- replies the device waits for ------------------------------------------------------------


def test_state_with_need_reply_is_answered_on_state_reply() -> None:
    registry = DeviceRegistry()
    online(registry)
    raw = payload("", {"live_status": LIVE_STATUS}, gateway=GW, need_reply=1)
    sent = json.loads(raw)
    events = registry.receive(STATE, raw, 1.0)
    assert [type(e) for e in events] == [LiveStatusChanged, Publish]
    reply = events[-1]
    assert isinstance(reply, Publish)
    assert reply.topic == f"thing/product/{GW}/state_reply"
    assert (reply.envelope.tid, reply.envelope.bid, reply.envelope.data) == (
        sent["tid"],
        sent["bid"],
        {"result": 0},
    )


def test_state_without_need_reply_is_not_answered() -> None:
    registry = DeviceRegistry()
    online(registry)
    assert registry.receive(STATE, payload("", {}, gateway=GW, need_reply=0), 1.0) == []
    assert registry.receive(STATE, payload("", {}, gateway=GW), 2.0) == []


def test_events_with_need_reply_are_answered_on_events_reply() -> None:
    registry = DeviceRegistry()
    online(registry)
    raw = payload("hms", {"list": []}, gateway=GW, need_reply=1)
    sent = json.loads(raw)
    (reply,) = registry.receive(EVENTS, raw, 1.0)
    assert isinstance(reply, Publish)
    assert reply.topic == f"thing/product/{GW}/events_reply"
    assert (reply.envelope.tid, reply.envelope.bid, reply.envelope.method) == (
        sent["tid"],
        sent["bid"],
        "hms",
    )
    assert reply.envelope.data == {"result": 0}


def test_events_without_need_reply_are_not_answered() -> None:
    registry = DeviceRegistry()
    online(registry)
    assert registry.receive(EVENTS, payload("hms", gateway=GW), 1.0) == []


def test_osd_with_need_reply_is_not_answered() -> None:
    registry = DeviceRegistry()
    online(registry)
    events = registry.receive(OSD, payload("", {"x": 1}, gateway=GW, need_reply=1), 1.0)
    assert without_telemetry(events) == []


# --- aircraft messages -----------------------------------------------------------------------


def test_aircraft_osd_refreshes_its_gateway() -> None:
    registry = DeviceRegistry(offline_after=60.0)
    online(registry, 0.0)
    events = registry.receive(f"thing/product/{AIRCRAFT}/osd", payload("", {"height": 10}), 50.0)
    assert without_telemetry(events) == []
    assert set(registry.gateways) == {GW}
    assert registry.gateways[GW].last_seen == 50.0
    assert registry.tick(100.0) == []  # 50 s after the osd: still online
    assert registry.gateways[GW].online


def test_aircraft_osd_naming_its_gateway_refreshes_it() -> None:
    registry = DeviceRegistry()
    online(registry, 0.0)
    assert registry.receive(f"thing/product/{AIRCRAFT2}/osd", payload("", {}, gateway=GW), 7.0) == []
    assert set(registry.gateways) == {GW} and registry.gateways[GW].last_seen == 7.0


def test_aircraft_no_longer_in_topo_is_its_own_device() -> None:
    registry = DeviceRegistry()
    online(registry, 0.0)
    registry.receive(STATUS, update_topo(), 1.0)  # aircraft gone
    events = registry.receive(f"thing/product/{AIRCRAFT}/osd", payload(), 2.0)
    assert events == [GatewayOnline(AIRCRAFT)]
    assert registry.gateways[GW].last_seen == 1.0


def test_aircraft_moved_to_another_gateway_stays_there() -> None:
    registry = DeviceRegistry()
    registry.receive(STATUS, update_topo(AIRCRAFT), 0.0)
    registry.receive(f"sys/product/{GW2}/status", update_topo(AIRCRAFT), 1.0)  # now behind GW2
    registry.receive(STATUS, update_topo(), 2.0)  # GW loses it
    events = registry.receive(f"thing/product/{AIRCRAFT}/osd", payload(), 3.0)
    assert without_telemetry(events) == []
    assert registry.gateways[GW2].last_seen == 3.0
    assert AIRCRAFT not in registry.gateways


# --- services_reply --------------------------------------------------------------------------


def test_services_reply_is_passed_on() -> None:
    registry = DeviceRegistry()
    online(registry)
    request = p.live_start_push(p.UrlType.RTMP, "rtmp://h/live/x", VIDEO_IDS[2], p.VideoQuality.ADAPTIVE)
    raw = json.dumps(
        {
            "tid": request.tid,
            "bid": request.bid,
            "timestamp": 1654070969001,
            "gateway": GW,
            "method": "live_start_push",
            "data": {"result": 0, "output": {"status": "ok"}},
        }
    ).encode()
    (replied,) = registry.receive(SERVICES_REPLY, raw, 1.0)
    assert replied == ServiceReplied(
        GW, p.ServiceReply(request.tid, request.bid, "live_start_push", 0, {"status": "ok"})
    )


def test_services_reply_with_error_and_old_info() -> None:
    registry = DeviceRegistry()
    online(registry)
    raw = payload("live_start_push", {"result": 513013, "info": "rtsp://u:p@h/live/1"}, gateway=GW)
    (replied,) = registry.receive(SERVICES_REPLY, raw, 1.0)
    assert isinstance(replied, ServiceReplied)
    assert replied.reply.result == 513013 and replied.reply.output == "rtsp://u:p@h/live/1"


def test_services_reply_without_result_is_an_error() -> None:
    registry = DeviceRegistry()
    online(registry)
    with pytest.raises(p.DjiProtocolError):
        registry.receive(SERVICES_REPLY, payload("live_start_push", {}, gateway=GW), 1.0)


# --- going offline and back ------------------------------------------------------------------


def test_silent_gateway_goes_offline_and_loses_its_videos() -> None:
    registry = DeviceRegistry(offline_after=60.0)
    online(registry, 0.0)
    assert registry.tick(60.0) == []  # not longer than offline_after yet
    events = registry.tick(60.5)
    assert len(events) == 2
    offline, changed = events
    assert isinstance(offline, GatewayOffline) and offline.sn == GW and offline.reason
    assert changed == VideosChanged(GW, ())
    assert registry.videos() == []
    assert registry.gateway_of(VIDEO_IDS[0]) is None
    assert registry.gateways[GW].online is False
    assert registry.tick(1000.0) == []  # told once


def test_offline_gateway_without_videos_only_goes_offline() -> None:
    registry = DeviceRegistry(offline_after=10.0)
    registry.receive(STATUS, update_topo(), 0.0)
    (offline,) = registry.tick(11.0)
    assert isinstance(offline, GatewayOffline)


def test_gateway_comes_back_with_its_old_videos() -> None:
    registry = DeviceRegistry(offline_after=60.0)
    online(registry, 0.0)
    registry.tick(100.0)
    events = without_telemetry(
        registry.receive(f"thing/product/{GW}/osd", payload("", {}, gateway=GW), 120.0)
    )
    assert events[0] == GatewayOnline(GW)
    assert isinstance(events[1], VideosChanged) and events[1].sn == GW
    assert [v.video_id for v in events[1].videos] == VIDEO_IDS
    assert len(events) == 2
    assert [v.video_id for _, v in registry.videos()] == VIDEO_IDS
    assert registry.gateway_of(VIDEO_IDS[2]) is registry.gateways[GW]
    assert registry.gateways[GW].last_seen == 120.0


def test_gateway_comes_back_through_its_aircraft() -> None:
    registry = DeviceRegistry(offline_after=60.0)
    online(registry, 0.0)
    registry.tick(61.0)
    events = registry.receive(f"thing/product/{AIRCRAFT}/osd", payload(), 62.0)
    assert events[0] == GatewayOnline(GW) and isinstance(events[1], VideosChanged)
    assert set(registry.gateways) == {GW}


def test_only_silent_gateways_go_offline() -> None:
    registry = DeviceRegistry(offline_after=60.0)
    online(registry, 0.0)
    registry.receive(f"sys/product/{GW2}/status", update_topo(), 30.0)
    events = registry.tick(70.0)
    assert [type(e) for e in events] == [GatewayOffline, VideosChanged]
    assert events[0].sn == GW  # type: ignore[union-attr]
    assert registry.gateways[GW2].online


# --- what is ignored or refused --------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "unknown/topic",
        f"thing/product/{GW}/services",
        f"thing/product/{GW}/status",
        f"sys/product/{GW}/state",
        f"thing/product/{GW}/state_reply",
        "thing/product/+/state",
        "",
    ],
)
def test_unknown_topic_is_ignored(topic: str) -> None:
    registry = DeviceRegistry()
    online(registry)
    before = snapshot(registry)
    assert registry.receive(topic, b"not even json", 1.0) == []
    assert registry.receive(topic, state(live_capacity=CAPACITY), 1.0) == []
    assert snapshot(registry) == before


def test_requests_topic_makes_no_events() -> None:
    registry = DeviceRegistry()
    online(registry)
    assert registry.receive(f"thing/product/{GW}/requests", payload("config", gateway=GW), 1.0) == []


@pytest.mark.parametrize(
    ("topic", "raw"),
    [
        (STATE, b"not json"),
        (STATE, b"[]"),
        (STATUS, b'{"bid":"b"}'),
        (OSD, b'{"tid":"t","bid":"b","data":[]}'),
        (OSD, b"not json"),
        (f"thing/product/{AIRCRAFT2}/osd", b'{"tid":"t","bid":"b","data":"flying"}'),
        (f"thing/product/{AIRCRAFT2}/osd", b"[" * 5000 + b"]" * 5000),
        (
            f"thing/product/{AIRCRAFT2}/osd",
            b'{"tid":"t","bid":"b","data":{"x":"' + b"x" * p.MAX_PAYLOAD_BYTES + b'"}}',
        ),
        (EVENTS, b'{"tid":"t","bid":"b","gateway":"bad/sn"}'),
        (SERVICES_REPLY, b"\xff"),
        (STATE, b"x" * (p.MAX_PAYLOAD_BYTES + 1)),
    ],
)
def test_malformed_payload_raises_and_changes_nothing(topic: str, raw: bytes) -> None:
    registry = DeviceRegistry()
    online(registry, 0.0, GW2)
    registry.receive(STATUS, update_topo(AIRCRAFT2), 0.0)
    before = snapshot(registry)
    with pytest.raises(p.DjiProtocolError):
        registry.receive(topic, raw, 5.0)
    assert snapshot(registry) == before


@pytest.mark.parametrize(
    "data",
    [{"live_capacity": []}, {"live_capacity": None}, {"live_status": {}}, {"live_status": "x"}],
)
def test_malformed_state_raises_and_other_gateways_are_unchanged(data: dict[str, Any]) -> None:
    registry = DeviceRegistry()
    online(registry, 0.0, GW2)
    before = copy.deepcopy(registry.gateways[GW2])
    with pytest.raises(p.DjiProtocolError):
        registry.receive(STATE, state(**data), 5.0)
    assert registry.gateways[GW2] == before
    assert [sn for sn, _ in registry.videos()] == [GW2] * 3


@pytest.mark.parametrize(
    ("topic", "data"),
    [
        (STATE, {"live_capacity": []}),
        (STATE, {"live_status": {}}),
        (SERVICES_REPLY, {"output": {}}),
    ],
)
def test_malformed_first_message_does_not_swallow_gateway_online(topic: str, data: dict[str, Any]) -> None:
    registry = DeviceRegistry()
    with pytest.raises(p.DjiProtocolError):
        registry.receive(topic, state(**data), 0.0)
    # The bridge never heard of GW: its next good message must announce it.
    assert registry.receive(OSD, state(), 1.0) == [GatewayOnline(GW)]


def test_malformed_message_from_an_offline_gateway_does_not_swallow_its_return() -> None:
    registry = DeviceRegistry(offline_after=60.0)
    online(registry, 0.0)
    registry.tick(61.0)
    with pytest.raises(p.DjiProtocolError):
        registry.receive(STATE, state(live_status="bad"), 62.0)
    events = registry.receive(OSD, state(), 63.0)
    assert events[:1] == [GatewayOnline(GW)]


def test_bad_live_status_does_not_swallow_a_capacity_change() -> None:
    registry = DeviceRegistry()
    registry.receive(STATUS, update_topo(AIRCRAFT), 0.0)
    with pytest.raises(p.DjiProtocolError):
        registry.receive(STATE, state(live_capacity=CAPACITY, live_status="bad"), 1.0)
    events = registry.receive(STATE, state(live_capacity=CAPACITY), 2.0)
    assert [type(e) for e in events] == [VideosChanged]


# --- across restarts --------------------------------------------------------------------------


def test_wire_encoders_are_the_inverse_of_the_parsers() -> None:
    capacity = p.parse_live_capacity(CAPACITY)
    assert len(capacity.videos) == 3 and capacity.coexist_max > 0
    assert p.parse_live_capacity(p.live_capacity_data(capacity)) == capacity
    topology = p.parse_update_topo(GW, p.parse_envelope(update_topo(AIRCRAFT)))
    again = p.parse_update_topo(GW, p.Envelope("", "", "update_topo", p.update_topo_data(topology)))
    assert again == topology and topology.sub_devices == (AIRCRAFT,)


def test_a_restored_registry_offers_the_videos_as_soon_as_the_gateway_speaks() -> None:
    """Docks send live_capacity only when it changes: a restarted bridge knows the videos
    from the snapshot, offline until the dock's next message (an aircraft's osd will do)."""
    before = DeviceRegistry()
    before.receive(STATUS, update_topo(AIRCRAFT), 0.0)
    before.receive(STATE, state(live_capacity=CAPACITY), 1.0)
    before.receive(f"sys/product/{GW2}/status", update_topo(), 2.0)  # a dock with no aircraft
    snapshot = json.loads(json.dumps(before.snapshot()))  # as the file holds it

    after = DeviceRegistry()
    assert sorted(after.restore(snapshot)) == sorted([GW, GW2])
    assert after.videos() == [] and not after.gateways[GW].online
    assert after.gateways[GW].last_seen is None
    assert after.tick(10_000.0) == []  # never heard from: not "went offline" again
    # The aircraft's osd names no gateway: the restored topology says whose it is.
    events = without_telemetry(
        after.receive(f"thing/product/{AIRCRAFT}/osd", payload("", {"height": 10}), 5.0)
    )
    assert events == [GatewayOnline(GW), VideosChanged(GW, tuple(after.gateways[GW].capacity.videos))]
    assert [str(v.video_id) for _, v in after.videos()] == [str(v) for v in VIDEO_IDS]
    assert after.gateways[GW].capacity == before.gateways[GW].capacity
    assert after.gateways[GW].topology == before.gateways[GW].topology
    assert after.gateways[GW].last_seen == 5.0


def test_restore_keeps_what_is_known_and_skips_what_is_malformed() -> None:
    registry = DeviceRegistry()
    registry.receive(STATUS, update_topo(AIRCRAFT), 0.0)
    capacity = p.live_capacity_data(p.parse_live_capacity(CAPACITY))
    snapshot = {
        "version": 1,
        "gateways": {
            GW: {"update_topo": None, "live_capacity": capacity},  # known already: left alone
            GW2: {"update_topo": {"sub_devices": "nope"}, "live_capacity": capacity},
            "bad sn/+": {"update_topo": None, "live_capacity": capacity},
            "4TADKAQ000003K": {"live_capacity": "not an object"},
            "4TADKAQ000004L": "not an entry",
        },
    }
    assert registry.restore(snapshot) == [GW2]
    assert registry.gateways[GW].online and registry.gateways[GW].capacity.videos == ()
    assert registry.gateways[GW2].topology is not None and registry.gateways[GW2].topology.sub_devices == ()
    for bad in (None, [], {"version": 1}, {"version": 1, "gateways": []}, {"version": 99, "gateways": {}}):
        with pytest.raises(p.DjiProtocolError):
            registry.restore(bad)


def test_revision_counts_only_what_a_snapshot_holds() -> None:
    registry = DeviceRegistry()
    registry.receive(STATUS, update_topo(AIRCRAFT), 0.0)
    assert registry.revision == 1
    registry.receive(STATUS, update_topo(AIRCRAFT), 1.0)  # the same topology again
    registry.receive(OSD, state(height=1), 2.0)
    registry.receive(STATE, state(live_status=LIVE_STATUS), 3.0)
    assert registry.revision == 1
    registry.receive(STATE, state(live_capacity=CAPACITY), 4.0)
    registry.receive(STATE, state(live_capacity=CAPACITY), 5.0)
    assert registry.revision == 2
    registry.tick(1000.0)  # offline: still the same devices and videos
    assert registry.revision == 2


# --- bounds ------------------------------------------------------------------------------------


def gateway_sn(n: int) -> str:
    return f"FLOOD{n:09d}"


def test_gateways_past_the_maximum_are_refused_and_the_known_ones_go_on() -> None:
    registry = DeviceRegistry(max_gateways=3)
    online(registry)
    for n in range(2):
        registry.receive(f"sys/product/{gateway_sn(n)}/status", update_topo(), 1.0)
    before = snapshot(registry)
    for topic in (f"sys/product/{gateway_sn(2)}/status", f"thing/product/{gateway_sn(2)}/osd"):
        with pytest.raises(DeviceLimitExceeded) as refused:
            registry.receive(topic, update_topo() if "status" in topic else state(gateway_sn(2)), 2.0)
        assert (refused.value.reason, refused.value.gateway_sn) == (TOO_MANY_GATEWAYS, gateway_sn(2))
    # An aircraft naming an unknown gateway is refused too; it cannot add one either.
    with pytest.raises(DeviceLimitExceeded):
        registry.receive(f"thing/product/{AIRCRAFT2}/osd", state("NEWGATEWAY01"), 2.0)
    assert snapshot(registry) == before and len(registry.gateways) == 3
    # The gateways already known are still heard and answered.
    events = registry.receive(STATE, payload("", {"live_capacity": CAPACITY}, gateway=GW, need_reply=1), 3.0)
    assert any(isinstance(e, Publish) for e in events)
    assert [v.video_id for _, v in registry.videos()] == VIDEO_IDS


def test_a_gateway_with_too_many_devices_is_refused_whole() -> None:
    registry = DeviceRegistry(max_devices_per_gateway=4)
    online(registry)
    before = snapshot(registry)
    many = [f"AIRCRAFT{n:06d}" for n in range(5)]
    with pytest.raises(DeviceLimitExceeded) as refused:
        registry.receive(STATUS, update_topo(*many), 1.0)
    assert (refused.value.reason, refused.value.gateway_sn) == (TOO_MANY_DEVICES, GW)
    camera = {"camera_index": "53-0-0", "video_list": [{"video_index": "normal-0"}]}
    capacity = {"device_list": [{"sn": sn, "camera_list": [camera]} for sn in many]}
    with pytest.raises(DeviceLimitExceeded):
        registry.receive(STATE, state(live_capacity=capacity), 1.0)
    assert snapshot(registry) == before
    registry.receive(STATUS, update_topo(*many[:4]), 2.0)  # at the bound: taken
    assert registry.gateways[GW].topology is not None
    assert registry.gateways[GW].topology.sub_devices == tuple(many[:4])


def test_a_device_with_too_many_videos_is_refused() -> None:
    registry = DeviceRegistry(max_devices_per_gateway=1)
    videos = [{"video_index": f"normal-{n}"} for n in range(MAX_VIDEOS_PER_DEVICE * 2 + 1)]
    camera = {"camera_index": "53-0-0", "video_list": videos}
    capacity = {"device_list": [{"sn": AIRCRAFT, "camera_list": [camera]}]}
    with pytest.raises(DeviceLimitExceeded):
        registry.receive(STATE, state(live_capacity=capacity), 0.0)


def test_restore_keeps_to_the_bounds() -> None:
    full = DeviceRegistry()
    online(full)
    for n in range(3):
        full.receive(f"sys/product/{gateway_sn(n)}/status", update_topo(), 1.0)
    crowded = f"CROWDED{0:07d}"
    full.receive(f"sys/product/{crowded}/status", update_topo(*[f"AIRCRAFT{n:06d}" for n in range(10)]), 1.0)
    small = DeviceRegistry(max_gateways=3, max_devices_per_gateway=5)
    restored = small.restore(full.snapshot())
    assert len(restored) == 3 and crowded not in restored and len(small.gateways) == 3


# --- telemetry (osd) -------------------------------------------------------------------------

AIRCRAFT_OSD = f"thing/product/{AIRCRAFT}/osd"
# An aircraft's osd, the shape of DJI's documented aircraft properties (see test_dji_osd.py).
FLYING = {
    "latitude": 22.579,
    "longitude": 113.937,
    "height": 120.5,
    "elevation": 60.2,
    "attitude_head": 87.0,
    "attitude_pitch": -1.2,
    "attitude_roll": 0.4,
    "horizontal_speed": 8.1,
    "vertical_speed": 0.3,
    "battery": {"capacity_percent": 76},
    "mode_code": 5,
    "39-0-7": {"gimbal_pitch": -30.0, "gimbal_roll": 0.0, "gimbal_yaw": 87.0, "payload_index": "39-0-7"},
}


def telemetry(events: list[Event]) -> list[TelemetryReceived]:
    return [event for event in events if isinstance(event, TelemetryReceived)]


def test_osd_of_a_known_aircraft_is_a_sample_with_its_gateway_and_lens() -> None:
    registry = DeviceRegistry(wall_clock=lambda: 1701940000.150)
    online(registry)
    registry.receive(STATE, state(live_status=LIVE_STATUS), 1.0)  # 39-0-7 live with its normal lens
    events = registry.receive(AIRCRAFT_OSD, payload("", FLYING, gateway=GW), 2.0)
    (received,) = telemetry(events)
    sample = received.sample
    assert (sample.sn, sample.gateway_sn, sample.kind) == (AIRCRAFT, GW, DeviceKind.AIRCRAFT)
    assert sample.device_time_ms == 1654070968655 and sample.received_at_ms == 1701940000150
    assert sample.aircraft is not None and sample.aircraft.height == 120.5 and sample.aircraft.battery == 76
    (camera,) = sample.cameras
    assert camera.payload_index == "39-0-7" and camera.lens == "normal"
    assert registry.gateways[GW].last_seen == 2.0  # liveness as before


def test_a_dock_osd_is_a_dock_sample_and_its_link_quality_goes_to_its_aircraft() -> None:
    registry = DeviceRegistry()
    online(registry)  # update_topo with domain "3": a dock
    dock_osd = {
        "mode_code": 4,
        "network_state": {"type": 2, "quality": 5, "rate": 1200.5},
        "wireless_link": {"sdr_quality": 3, "4g_quality": 65535},
    }
    (dock,) = telemetry(registry.receive(OSD, payload("", dock_osd, gateway=GW), 1.0))
    assert dock.sample.kind is DeviceKind.DOCK and dock.sample.dock is not None
    assert dock.sample.dock.mode_code == 4 and dock.sample.gauges() == {"link_quality": 5.0}
    (aircraft,) = telemetry(registry.receive(AIRCRAFT_OSD, payload("", FLYING, gateway=GW), 2.0))
    assert aircraft.sample.aircraft is not None and aircraft.sample.aircraft.link_quality == 3


def test_the_gateways_update_topo_decides_dock_or_remote_controller() -> None:
    registry = DeviceRegistry()
    rc_topo = update_topo(AIRCRAFT)
    rc_topo = rc_topo.replace(b'"domain": "3"', b'"domain": "2"').replace(b'"type": 98', b'"type": 144')
    registry.receive(STATUS, rc_topo, 0.0)
    # An RC's osd: nothing in it says "dock" or "RC" but the topology.
    (rc,) = telemetry(registry.receive(OSD, payload("", {"latitude": 22.5, "height": 10.0}, gateway=GW), 1.0))
    assert rc.sample.kind is DeviceKind.RC and rc.sample.rc is not None and rc.sample.rc.latitude == 22.5


def test_a_device_owning_videos_in_a_capacity_is_known() -> None:
    registry = DeviceRegistry()
    registry.receive(STATE, state(live_capacity=CAPACITY), 0.0)  # no update_topo: only the capacity
    (received,) = telemetry(registry.receive(AIRCRAFT_OSD, payload("", FLYING, gateway=GW), 1.0))
    assert received.sample.sn == AIRCRAFT


def test_osd_of_an_unknown_device_gives_no_telemetry_and_is_counted() -> None:
    registry = DeviceRegistry()
    online(registry)
    events = registry.receive(f"thing/product/{AIRCRAFT2}/osd", payload("", FLYING, gateway=GW), 3.0)
    assert events == [] and registry.osd_unknown == 1
    assert registry.gateways[GW].last_seen == 3.0  # it still says the gateway is there
    # A gateway known only from its osd (never announced itself) is not a known device either.
    events = registry.receive(f"thing/product/{GW2}/osd", payload("", {"mode_code": 0}, gateway=GW2), 4.0)
    assert events == [GatewayOnline(GW2)] and registry.osd_unknown == 2
    # The known aircraft still gets its samples.
    assert telemetry(registry.receive(AIRCRAFT_OSD, payload("", FLYING, gateway=GW), 5.0))


def test_malformed_osd_values_are_dropped_field_by_field() -> None:
    registry = DeviceRegistry()
    online(registry)
    bad = {
        **FLYING,
        "latitude": 200,
        "height": "high",
        "battery": {"capacity_percent": 300},
        "mode_code": True,
    }
    (received,) = telemetry(registry.receive(AIRCRAFT_OSD, payload("", bad, gateway=GW), 1.0))
    sample = received.sample
    assert set(sample.dropped) == {"latitude", "height", "battery.capacity_percent", "mode_code"}
    assert sample.aircraft is not None and sample.aircraft.longitude == 113.937
    assert sample.aircraft.latitude is None and sample.aircraft.battery is None


def test_osd_past_the_rate_is_refused_unparsed_and_counted_and_liveness_goes_on() -> None:
    registry = DeviceRegistry(max_osd_rate=50)
    online(registry)
    message = payload("", FLYING, gateway=GW)
    accepted, firsts = 0, 0
    for i in range(1000):  # 1,000 messages in one second
        try:
            events = registry.receive(AIRCRAFT_OSD, message, 10.0 + i / 1000)
        except OsdRateLimited as exc:
            firsts += exc.first_of_burst
            assert exc.reason == OSD_RATE and exc.sn == AIRCRAFT
            continue
        accepted += 1
        assert telemetry(events)
    assert 50 <= accepted <= 50 + registry.osd_burst + 1
    assert registry.osd_limited == 1000 - accepted
    assert firsts == 1  # one burst: logged once, not once per message
    assert registry.gateways[GW].last_seen is not None and registry.gateways[GW].last_seen > 10.9
    # Refused by the topic alone: not even parsed (garbage refused as rate, not as bad JSON).
    with pytest.raises(OsdRateLimited):
        registry.receive(AIRCRAFT_OSD, b"not json at all", 10.999)
    # Other devices are not limited by it, and the dock's own osd passes.
    assert registry.receive(OSD, payload("", {"mode_code": 0}, gateway=GW), 11.0)
    # A second later the device has its rate again; a later flood is a new burst.
    assert telemetry(registry.receive(AIRCRAFT_OSD, message, 12.0))
    refusals = []
    for i in range(100):
        with contextlib.suppress(OsdRateLimited):
            registry.receive(AIRCRAFT_OSD, message, 30.0)
            continue
        refusals.append(i)
    assert refusals  # refused past the burst


def test_osd_rate_limit_state_is_bounded_by_the_registry_limits() -> None:
    registry = DeviceRegistry(max_gateways=3, max_devices_per_gateway=1, max_osd_rate=5)
    for n in range(100):
        with contextlib.suppress(DjiProtocolError):
            registry.receive(f"thing/product/{gateway_sn(n)}/osd", payload("", {}), float(n))
    assert len(registry._osd_buckets) <= registry.max_osd_buckets == 3 * 2
    assert len(registry.gateways) == 3


def test_rate_refusals_are_logged_once_per_burst_by_the_mqtt_side() -> None:
    registry = DeviceRegistry(max_osd_rate=10)
    online(registry)
    now = [0.0]
    mqtt = DjiMqtt(
        BrokerAddress.parse("mqtt://127.0.0.1:1"), registry, lambda event: None, clock=lambda: now[0]
    )
    message = payload("", FLYING, gateway=GW)

    async def flood() -> None:
        for i in range(1000):
            now[0] = 5.0 + i / 1000
            await mqtt._receive(AIRCRAFT_OSD, message)

    with structlog.testing.capture_logs() as logs:
        asyncio.run(flood())
    assert mqtt.limited[OSD_RATE] == registry.osd_limited > 900
    assert [entry["event"] for entry in logs] == ["dji_osd_rate_limited"]
    assert mqtt.dropped_messages == 0 and mqtt.failed_messages == 0
