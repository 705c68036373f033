"""gateway.dji.osd: DJI osd messages as typed samples, on plain data.

The payloads have the shape of DJI's documented osd properties, as the official demo
(github.com/dji-sdk/DJI-Cloud-API-Demo, cloud-sdk .../cloudapi/device: OsdDockDrone,
OsdDock, OsdRemoteControl, OsdCamera, DockDronePayload, DroneBattery, NetworkState,
WirelessLink) reads them. The aircraft's follows a recorded Dock 2 aircraft osd reproduced
in a public third-party demo's README (payload-index object, battery, cameras; trimmed);
the dock's a Dock osd example with network_state and wireless_link, the RC's an RC osd
as the demo's OsdRemoteControl reads it. Values were changed, the shapes kept.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.dji import protocol as p
from gateway.dji.osd import (
    MAX_EXTRA_KEYS,
    DeviceKind,
    OsdError,
    OsdSample,
    device_kind,
    parse_osd,
)
from tests.unit.test_fuzz_dji import json_values

AIRCRAFT = "1581F5BKD225D00BC7R2"
DOCK = "4TADKAQ000002J"
RC = "5YSZL7L0032SVP"
NOW_MS = 1701940000150

AIRCRAFT_DATA: dict[str, Any] = {
    "39-0-7": {
        "gimbal_pitch": -30.0,
        "gimbal_roll": 0,
        "gimbal_yaw": 87.0,
        "payload_index": "39-0-7",
        "zoom_factor": 0.567,
        "measure_target_distance": 0,
        "thermal_current_palette_style": 0,
    },
    "activation_time": 1698260070,
    "attitude_head": 87.0,
    "attitude_pitch": -1.2,
    "attitude_roll": 0.4,
    "battery": {
        "batteries": [{"capacity_percent": 76, "index": 0, "sn": "4ERPLBQEA2KSCR", "voltage": 14932}],
        "capacity_percent": 76,
        "landing_power": 0,
        "remain_flight_time": 0,
        "return_home_power": 0,
    },
    "cameras": [
        {
            "camera_mode": 1,
            "liveview_world_region": {"bottom": 0.9, "left": 0.1, "right": 0.9, "top": 0.1},
            "payload_index": "39-0-7",
            "photo_state": 0,
            "recording_state": 0,
            "zoom_factor": 2.0,
            "ir_zoom_factor": 2,
        }
    ],
    "elevation": 60.2,
    "firmware_version": "14.01.0002",
    "gear": 1,
    "height": 120.5,
    "home_distance": 0,
    "horizontal_speed": 8.1,
    "latitude": 22.579,
    "longitude": 113.937,
    "mode_code": 5,
    "position_state": {"gps_number": 18, "is_fixed": 2, "quality": 5, "rtk_number": 30},
    "storage": {"total": 60082000, "used": 5656000},
    "total_flight_distance": 404167.679246531,
    "vertical_speed": 0.3,
    "wind_direction": 0,
    "wind_speed": 1.6,
}
# The keys the model reads; every other key of AIRCRAFT_DATA is passed through.
AIRCRAFT_KNOWN = {
    "39-0-7",
    "attitude_head",
    "attitude_pitch",
    "attitude_roll",
    "battery",
    "cameras",
    "elevation",
    "height",
    "horizontal_speed",
    "latitude",
    "longitude",
    "mode_code",
    "vertical_speed",
}

DOCK_DATA: dict[str, Any] = {
    "network_state": {"type": 2, "quality": 5, "rate": 1200.5},
    "drone_charge_state": {"state": 0, "capacity_percent": 100},
    "drone_in_dock": 1,
    "rainfall": 0,
    "wind_speed": 0,
    "environment_temperature": 23,
    "temperature": 24,
    "humidity": 60,
    "latitude": 22.907,
    "longitude": 113.703,
    "height": 36.6,
    "mode_code": 0,
    "cover_state": 0,
    "wireless_link": {
        "4g_freq_band": 2.4,
        "4g_gnd_quality": 0,
        "4g_link_state": 0,
        "4g_quality": 0,
        "4g_uav_quality": 0,
        "dongle_number": 0,
        "link_workmode": 0,
        "sdr_freq_band": 2.4,
        "sdr_link_state": 1,
        "sdr_quality": 4,
    },
}

RC_DATA: dict[str, Any] = {
    "capacity_percent": 90,
    "height": 38.2,
    "latitude": 36.8911,
    "longitude": 127.8223,
    "wireless_link": {
        "4g_freq_band": 5.8,
        "4g_gnd_quality": 0,
        "4g_link_state": 0,
        "4g_quality": 0,
        "4g_uav_quality": 0,
        "dongle_number": 0,
        "link_workmode": 0,
        "sdr_freq_band": 1,
        "sdr_link_state": 1,
        "sdr_quality": 5,
    },
}


def envelope(data: dict[str, Any], gateway: str | None = DOCK, timestamp: int = 1701940000123) -> p.Envelope:
    """As the registry gets it: through parse_envelope."""
    body: dict[str, Any] = {"tid": "t", "bid": "b", "timestamp": timestamp, "method": "", "data": data}
    if gateway is not None:
        body["gateway"] = gateway
    return p.parse_envelope(orjson.dumps(body))


def aircraft_sample(data: dict[str, Any] | None = None, **kwargs: Any) -> OsdSample:
    return parse_osd(
        AIRCRAFT, envelope(AIRCRAFT_DATA if data is None else data), received_at_ms=NOW_MS, **kwargs
    )


# --- recorded shapes ------------------------------------------------------------------------


def test_aircraft_osd_maps_every_field() -> None:
    sample = aircraft_sample(lenses={"39-0-7": "wide"})
    assert (sample.sn, sample.gateway_sn, sample.kind) == (AIRCRAFT, DOCK, DeviceKind.AIRCRAFT)
    assert sample.dropped == () and sample.cut == 0
    body = sample.to_json()
    extra = body.pop("extra")
    assert body == {
        "sn": AIRCRAFT,
        "gateway": DOCK,
        "kind": "aircraft",
        "deviceTime": 1701940000123,
        "receivedAt": NOW_MS,
        "aircraft": {
            "latitude": 22.579,
            "longitude": 113.937,
            "height": 120.5,
            "elevation": 60.2,
            "attitude": {"pitch": -1.2, "roll": 0.4, "head": 87.0},
            "horizontalSpeed": 8.1,
            "verticalSpeed": 0.3,
            "battery": 76,
            "modeCode": 5,
        },
        "cameras": [
            {
                "payloadIndex": "39-0-7",
                "gimbal": {"pitch": -30.0, "roll": 0.0, "yaw": 87.0},
                "zoomFactor": 2.0,  # the camera's own, not the gimbal object's
                "cameraMode": 1,
                "lens": "wide",
                "liveviewWorldRegion": {"left": 0.1, "top": 0.1, "right": 0.9, "bottom": 0.9},
            }
        ],
    }
    # Unknown fields, as they came.
    assert extra == {k: v for k, v in AIRCRAFT_DATA.items() if k not in AIRCRAFT_KNOWN}
    assert sample.gauges() == {"battery_percent": 76.0, "height_m": 120.5}


def test_aircraft_link_quality_from_its_own_or_its_gateways_wireless_link() -> None:
    assert aircraft_sample(gateway_link_quality=3).to_json()["aircraft"]["linkQuality"] == 3
    own = {**AIRCRAFT_DATA, "wireless_link": {"sdr_quality": 2, "4g_quality": 4}}
    sample = aircraft_sample(own, gateway_link_quality=3)
    assert sample.aircraft is not None and sample.aircraft.link_quality == 4
    assert sample.gauges()["link_quality"] == 4.0


def test_a_payload_object_alone_gives_the_gimbal_and_zoom() -> None:
    """Dock 2's aircraft: zoom_factor in the payload-index object, no cameras list."""
    sample = aircraft_sample({"53-0-0": {"gimbal_pitch": -45.5, "gimbal_yaw": 10, "zoom_factor": 5}})
    (camera,) = sample.cameras
    assert camera.to_json() == {
        "payloadIndex": "53-0-0",
        "gimbal": {"pitch": -45.5, "yaw": 10.0},
        "zoomFactor": 5.0,
    }
    assert sample.aircraft is None and "aircraft" not in sample.to_json()


def test_dock_osd_maps_mode_and_network() -> None:
    sample = parse_osd(DOCK, envelope(DOCK_DATA), received_at_ms=NOW_MS)
    assert sample.kind is DeviceKind.DOCK and sample.dropped == ()
    body = sample.to_json()
    assert body["dock"] == {
        "modeCode": 0,
        "network": {"type": 2, "quality": 5, "rate": 1200.5},
        "linkQuality": 4,
    }
    assert "aircraft" not in body and "rc" not in body and "cameras" not in body
    assert body["extra"]["drone_in_dock"] == 1 and body["extra"]["latitude"] == 22.907
    assert sample.gauges() == {"link_quality": 5.0}


def test_a_dock_osd_in_parts_is_still_a_dock() -> None:
    """Docks send their osd in several messages; one may carry only the wireless link."""
    topology = p.Topology(DOCK, "3", 2, (AIRCRAFT,))
    part = {"wireless_link": DOCK_DATA["wireless_link"], "media_file_detail": {"remain_upload": 0}}
    sample = parse_osd(DOCK, envelope(part), received_at_ms=NOW_MS, topology=topology)
    assert sample.kind is DeviceKind.DOCK and sample.dock is not None and sample.dock.link_quality == 4


def test_rc_osd_maps_position_battery_and_link() -> None:
    sample = parse_osd(RC, envelope(RC_DATA, gateway=RC), received_at_ms=NOW_MS)
    assert sample.kind is DeviceKind.RC and sample.dropped == ()
    body = sample.to_json()
    assert body["rc"] == {
        "latitude": 36.8911,
        "longitude": 127.8223,
        "height": 38.2,
        "battery": 90,
        "linkQuality": 5,
    }
    assert "extra" not in body
    assert sample.gauges() == {"battery_percent": 90.0, "height_m": 38.2, "link_quality": 5.0}


def test_an_aircraft_behind_a_remote_controller() -> None:
    """M300/M350 through an RC: the same aircraft properties, the RC as gateway."""
    data = {k: v for k, v in AIRCRAFT_DATA.items() if k != "cameras"}
    sample = parse_osd(AIRCRAFT, envelope(data, gateway=RC), received_at_ms=NOW_MS)
    assert sample.kind is DeviceKind.AIRCRAFT and sample.gateway_sn == RC
    assert sample.aircraft is not None and sample.aircraft.horizontal_speed == 8.1


@pytest.mark.parametrize(
    ("sn", "gateway", "data", "topology", "kind"),
    [
        (AIRCRAFT, DOCK, {}, None, DeviceKind.AIRCRAFT),  # a sub-device of its gateway
        (DOCK, DOCK, {}, p.Topology(DOCK, "3", 2), DeviceKind.DOCK),
        (RC, RC, {"mode_code": 0}, p.Topology(RC, "2", 144), DeviceKind.RC),  # topology beats data
        (DOCK, DOCK, {}, p.Topology(DOCK, "", 3), DeviceKind.DOCK),  # Dock 3 by its type
        (RC, RC, {}, p.Topology(RC, "", 119), DeviceKind.RC),  # RC Plus by its type
        (DOCK, DOCK, {"network_state": {}}, None, DeviceKind.DOCK),
        (RC, RC, {"capacity_percent": 50}, None, DeviceKind.RC),
        (RC, RC, {"wireless_link": {}}, None, DeviceKind.RC),
        (AIRCRAFT, AIRCRAFT, {"attitude_head": 1}, None, DeviceKind.AIRCRAFT),
        (DOCK, DOCK, {"mode_code": 0}, None, DeviceKind.DOCK),  # nothing telling: a dock
        (DOCK, DOCK, {"network_state": {}}, p.Topology("OTHER", "2", 144), DeviceKind.DOCK),  # not its own
    ],
)
def test_device_kind(
    sn: str, gateway: str, data: dict[str, Any], topology: p.Topology | None, kind: DeviceKind
) -> None:
    assert device_kind(sn, gateway, data, topology) is kind


def test_no_value_link_quality_is_absent_not_dropped() -> None:
    data = {**RC_DATA, "wireless_link": {"sdr_quality": 65535, "4g_quality": 65535}}
    sample = parse_osd(RC, envelope(data, gateway=RC), received_at_ms=NOW_MS)
    assert sample.rc is not None and sample.rc.link_quality is None and sample.dropped == ()


def test_timestamp_zero_or_absent_is_none() -> None:
    assert parse_osd(RC, envelope(RC_DATA, timestamp=0), received_at_ms=1).device_time_ms is None
    sample = parse_osd(RC, envelope(RC_DATA, timestamp=-5), received_at_ms=1)
    assert sample.device_time_ms is None and sample.dropped == ("timestamp",)


def test_gateway_defaults_to_the_envelopes_then_the_sn() -> None:
    assert parse_osd(RC, envelope(RC_DATA, gateway=None), received_at_ms=1).gateway_sn == RC
    assert parse_osd(AIRCRAFT, envelope({}, gateway=DOCK), received_at_ms=1).gateway_sn == DOCK


def test_a_bad_serial_number_is_the_modules_error() -> None:
    with pytest.raises(OsdError):
        parse_osd("not/a serial", envelope({}), received_at_ms=1)
    assert issubclass(OsdError, p.DjiProtocolError)


# --- malformed values: dropped one by one ---------------------------------------------------


@pytest.mark.parametrize(
    ("change", "dropped"),
    [
        ({"latitude": 200}, "latitude"),
        ({"latitude": "22.5"}, "latitude"),
        ({"longitude": -181}, "longitude"),
        ({"height": True}, "height"),  # a bool where a number goes
        ({"height": [120]}, "height"),
        ({"elevation": {"m": 1}}, "elevation"),
        ({"attitude_head": 1e300}, "attitude_head"),
        ({"attitude_pitch": None, "attitude_roll": "flat"}, "attitude_roll"),
        ({"horizontal_speed": -3}, "horizontal_speed"),
        ({"vertical_speed": 10_000}, "vertical_speed"),
        ({"battery": {"capacity_percent": 300}}, "battery.capacity_percent"),
        ({"battery": {"capacity_percent": 50.5}}, "battery.capacity_percent"),
        ({"battery": {"capacity_percent": False}}, "battery.capacity_percent"),
        ({"battery": 76}, "battery"),
        ({"mode_code": True}, "mode_code"),
        ({"mode_code": -1}, "mode_code"),
        ({"wireless_link": {"sdr_quality": 9}}, "wireless_link.sdr_quality"),
        ({"wireless_link": "good"}, "wireless_link"),
        ({"39-0-7": {"gimbal_pitch": "down"}}, "39-0-7.gimbal_pitch"),
        ({"39-0-7": {"gimbal_yaw": 720}}, "39-0-7.gimbal_yaw"),
        ({"39-0-7": [1, 2]}, "39-0-7"),
        ({"cameras": {"payload_index": "39-0-7"}}, "cameras"),
        ({"cameras": [1]}, "cameras[0]"),
        ({"cameras": [{"payload_index": 39}]}, "cameras[0]"),
        ({"cameras": [{"payload_index": "../../etc"}]}, "cameras[0]"),
        ({"cameras": [{"payload_index": "39-0-7", "zoom_factor": -2}]}, "cameras[0].zoom_factor"),
        ({"cameras": [{"payload_index": "39-0-7", "camera_mode": "video"}]}, "cameras[0].camera_mode"),
        (
            {"cameras": [{"payload_index": "39-0-7", "liveview_world_region": {"left": 2}}]},
            "cameras[0].liveview_world_region.left",
        ),
        (
            {"cameras": [{"payload_index": "39-0-7", "liveview_world_region": [0, 0, 1, 1]}]},
            "cameras[0].liveview_world_region",
        ),
    ],
)
def test_a_malformed_value_is_dropped_alone(change: dict[str, Any], dropped: str) -> None:
    sample = aircraft_sample({**copy.deepcopy(AIRCRAFT_DATA), **change})
    assert sample.dropped == (dropped,)
    # The rest is kept.
    assert sample.aircraft is not None and sample.aircraft.mode_code in (5, None)
    good = _flat(aircraft_sample().to_json()["aircraft"])
    kept = _flat(sample.to_json().get("aircraft", {}))
    assert all(good[key] == value for key, value in kept.items())
    assert len(kept) >= len(good) - 2  # the dropped one (and a neighbour the change set to null)


def _flat(part: dict[str, Any]) -> dict[str, Any]:
    flat = {key: value for key, value in part.items() if key != "attitude"}
    flat.update({f"attitude.{key}": value for key, value in part.get("attitude", {}).items()})
    return flat


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_dropped(bad: float) -> None:
    # JSON has no NaN: a parser that allows it would hand it over like this.
    data = {**AIRCRAFT_DATA, "height": bad, "39-0-7": {"gimbal_pitch": bad, "gimbal_yaw": 1.0}}
    sample = parse_osd(AIRCRAFT, p.Envelope("t", "b", "", data, 1, DOCK), received_at_ms=1)
    assert set(sample.dropped) == {"height", "39-0-7.gimbal_pitch"}
    assert (
        sample.aircraft is not None and sample.aircraft.height is None and sample.aircraft.latitude == 22.579
    )
    orjson.dumps(sample.to_json())


def test_dock_and_rc_values_are_dropped_alone() -> None:
    dock = {**DOCK_DATA, "mode_code": "idle", "network_state": {"type": 2, "quality": 7, "rate": -1}}
    sample = parse_osd(DOCK, envelope(dock), received_at_ms=1)
    assert set(sample.dropped) == {"mode_code", "network_state.quality", "network_state.rate"}
    assert sample.to_json()["dock"] == {"network": {"type": 2}, "linkQuality": 4}
    rc = {**RC_DATA, "capacity_percent": 101, "latitude": True}
    sample = parse_osd(RC, envelope(rc, gateway=RC), received_at_ms=1)
    assert set(sample.dropped) == {"capacity_percent", "latitude"}
    assert sample.to_json()["rc"] == {"longitude": 127.8223, "height": 38.2, "linkQuality": 5}


# --- bounds ---------------------------------------------------------------------------------


def test_unknown_keys_are_bounded_and_counted() -> None:
    data = {f"unknown_{i}": i for i in range(1000)}
    sample = aircraft_sample({**AIRCRAFT_DATA, **data})
    assert (
        len(sample.extra) == MAX_EXTRA_KEYS
        and sample.cut == 1000 + len(AIRCRAFT_DATA) - len(AIRCRAFT_KNOWN) - 64
    )
    assert sample.aircraft is not None and sample.aircraft.height == 120.5


def test_huge_and_deeply_nested_values_are_cut() -> None:
    deep: Any = 1
    for _ in range(200):
        deep = [deep]
    data = {
        **AIRCRAFT_DATA,
        "huge": "x" * 60_000,
        "many": list(range(10_000)),
        "deep": deep,
        "wide": {str(i): i for i in range(5_000)},
        "long_" + "k" * 100: 1,
        "small": {"kept": [1, 2, 3]},
    }
    sample = aircraft_sample(data)
    assert not {"huge", "many", "deep", "wide"} & set(sample.extra)
    assert sample.extra["small"] == {"kept": [1, 2, 3]}
    assert sample.cut == 5
    assert len(orjson.dumps(sample.to_json())) < 8_000


def test_many_medium_values_stay_within_the_total_bound() -> None:
    data = {f"k{i}": "v" * 3000 for i in range(60)}
    sample = aircraft_sample(data)
    assert len(orjson.dumps(sample.to_json())) < 40_000 and sample.cut > 0


def test_cameras_are_bounded() -> None:
    cameras = [{"payload_index": f"{i}-0-0", "zoom_factor": 1} for i in range(200)]
    payloads = {f"{i}-0-1": {"gimbal_pitch": 0} for i in range(200)}
    sample = aircraft_sample({"cameras": cameras, **payloads})
    assert len(sample.cameras) == 16 and sample.cut == 384


# --- any input ------------------------------------------------------------------------------

osd_like = st.fixed_dictionaries(
    {},
    optional={
        key: json_values
        for key in [
            "latitude",
            "height",
            "attitude_head",
            "battery",
            "mode_code",
            "wireless_link",
            "network_state",
            "capacity_percent",
            "cameras",
            "39-0-7",
            "53-0-0",
        ]
    },
)


@given(
    st.sampled_from([AIRCRAFT, DOCK, RC]),
    st.sampled_from([None, DOCK, RC]),
    osd_like | st.dictionaries(st.text(max_size=10), json_values, max_size=8),
    st.none()
    | st.builds(p.Topology, st.sampled_from([DOCK, RC]), st.sampled_from(["", "2", "3"]), st.integers()),
)
@example(AIRCRAFT, DOCK, AIRCRAFT_DATA, None)
@example(DOCK, None, {"cameras": [{"payload_index": "1-1-1", "liveview_world_region": {"left": None}}]}, None)
def test_any_json_data_gives_a_bounded_serialisable_sample(
    sn: str, gateway: str | None, data: dict[str, Any], topology: p.Topology | None
) -> None:
    try:
        env = p.parse_envelope(orjson.dumps({"tid": "t", "bid": "b", "data": data, "gateway": gateway}))
    except p.DjiProtocolError:
        return
    sample = parse_osd(sn, env, received_at_ms=1, topology=topology, lenses={"39-0-7": "zoom"})
    body = orjson.dumps(sample.to_json())
    assert len(body) < 64 * 1024
    assert orjson.loads(body)["kind"] in ("aircraft", "dock", "rc")
    sample.gauges()
