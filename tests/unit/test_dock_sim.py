"""gateway.dji.dock_sim's flight: the aircraft osd the simulator publishes, as a pure
function of time, read back with the osd model."""

from __future__ import annotations

import math

from gateway.dji import protocol as p
from gateway.dji.dock_sim import (
    AIRCRAFT_CAMERA,
    HOME,
    LOOP_SECONDS,
    TAKEOFF_SECONDS,
    dock_state,
    flight_state,
)
from gateway.dji.osd import Aircraft, DeviceKind, OsdSample, parse_osd

DOCK, AIRCRAFT = "SIMDOCK0000001", "SIMAIRCRAFT0001"
METRES_PER_DEGREE = 111_320.0


def sample(t: float) -> OsdSample:
    envelope = p.Envelope("t", "b", "", flight_state(t), 1, DOCK)
    return parse_osd(AIRCRAFT, envelope, received_at_ms=1)


def aircraft(t: float) -> Aircraft:
    found = sample(t).aircraft
    assert found is not None
    return found


def offset(a: Aircraft) -> tuple[float, float]:
    """East and north of the dock, m."""
    assert a.latitude is not None and a.longitude is not None
    north = (a.latitude - HOME[0]) * METRES_PER_DEGREE
    east = (a.longitude - HOME[1]) * METRES_PER_DEGREE * math.cos(math.radians(HOME[0]))
    return east, north


LOOP = [TAKEOFF_SECONDS + 0.5 + i * 0.5 for i in range(int(LOOP_SECONDS * 2) + 1)]  # one loop


def test_every_field_is_a_valid_dji_aircraft_property() -> None:
    for t in (0.0, 3.3, TAKEOFF_SECONDS, 61.7, 3600.0):
        s = sample(t)
        assert s.kind is DeviceKind.AIRCRAFT and s.dropped == () and s.cut == 0
        a = s.aircraft
        assert a is not None and a.attitude is not None
        assert None not in (a.latitude, a.longitude, a.height, a.elevation, a.horizontal_speed)
        assert None not in (a.vertical_speed, a.battery, a.mode_code)
        (camera,) = s.cameras
        assert camera.payload_index == AIRCRAFT_CAMERA and camera.gimbal is not None
        assert camera.zoom_factor is not None and camera.liveview_world_region is not None
        assert camera.camera_mode == 1


def test_it_takes_off_from_the_dock() -> None:
    start = aircraft(0.0)
    assert start.elevation == 0.0 and math.hypot(*offset(start)) < 1.0
    assert start.mode_code == 4 and aircraft(TAKEOFF_SECONDS + 1).mode_code == 5


def test_it_loops_around_the_dock() -> None:
    positions = [offset(aircraft(t)) for t in LOOP]
    distances = [math.hypot(east, north) for east, north in positions]
    assert 100 <= min(distances) and max(distances) <= 200
    # The bearing from the dock turns through a whole circle, one way, in one loop.
    bearings = [math.atan2(north, east) for east, north in positions]
    turned = sum(
        (b - a + math.pi) % (2 * math.pi) - math.pi for a, b in zip(bearings, bearings[1:], strict=False)
    )
    assert math.isclose(abs(turned), 2 * math.pi, rel_tol=0.05)
    assert all(
        (b - a + math.pi) % (2 * math.pi) - math.pi > 0 for a, b in zip(bearings, bearings[1:], strict=False)
    )


def test_heading_and_speed_follow_the_path() -> None:
    speeds = []
    for t in LOOP[:-1]:
        a, b = aircraft(t), aircraft(t + 0.1)
        (e0, n0), (e1, n1) = offset(a), offset(b)
        assert a.attitude is not None and a.horizontal_speed is not None and a.attitude.head is not None
        bearing = math.degrees(math.atan2(e1 - e0, n1 - n0))
        assert abs((bearing - a.attitude.head + 180) % 360 - 180) < 5
        assert math.isclose(math.hypot(e1 - e0, n1 - n0) / 0.1, a.horizontal_speed, rel_tol=0.1)
        speeds.append(a.horizontal_speed)
    assert max(speeds) - min(speeds) > 3  # it speeds up and slows down
    assert 2 < min(speeds) and max(speeds) < 25


def test_height_changes_with_its_vertical_speed() -> None:
    heights = [aircraft(t).elevation for t in LOOP]
    assert max(h for h in heights if h is not None) - min(h for h in heights if h is not None) > 20
    for t in LOOP[:-1]:
        a, b = aircraft(t), aircraft(t + 0.1)
        assert a.elevation is not None and b.elevation is not None and a.vertical_speed is not None
        assert a.height is not None and math.isclose(a.height - a.elevation, HOME[2], abs_tol=0.02)
        climbed = (b.elevation - a.elevation) / 0.1
        assert abs(climbed - a.vertical_speed) < 0.3


def test_gimbal_and_zoom_move_and_battery_drains_slowly() -> None:
    pitches, zooms = set(), set()
    for t in LOOP:
        (camera,) = sample(t).cameras
        assert (
            camera.gimbal is not None and camera.gimbal.pitch is not None and camera.zoom_factor is not None
        )
        assert -90 <= camera.gimbal.pitch <= 0 and 1 <= camera.zoom_factor <= 4
        pitches.add(camera.gimbal.pitch)
        zooms.add(camera.zoom_factor)
    assert max(pitches) - min(pitches) > 20 and len(zooms) > 10
    batteries = [aircraft(t).battery for t in range(0, 3600, 10)]
    assert batteries == sorted(batteries, key=lambda b: -(b or 0))  # never rises
    assert batteries[0] == 100 and 90 <= aircraft(120).battery <= 99  # type: ignore[operator]
    assert min(b for b in batteries if b is not None) == 20  # a landing reserve is kept


def test_the_dock_reports_mode_and_network() -> None:
    envelope = p.Envelope("t", "b", "", dock_state(), 1, DOCK)
    s = parse_osd(DOCK, envelope, received_at_ms=1, topology=p.Topology(DOCK, "3", 2, (AIRCRAFT,)))
    assert s.kind is DeviceKind.DOCK and s.dropped == () and s.dock is not None
    assert s.dock.mode_code == 4 and s.dock.network is not None and s.dock.network.quality == 5
