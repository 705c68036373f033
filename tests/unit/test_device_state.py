"""gateway.dji.device_state: the device registry in a real file, across "restarts"."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from gateway.dji.device_state import DeviceStateFile
from gateway.dji.devices import DeviceRegistry
from tests.unit.test_dji_devices import AIRCRAFT, CAPACITY, GW, STATE, STATUS, state, update_topo


def learned() -> DeviceRegistry:
    registry = DeviceRegistry()
    registry.receive(STATUS, update_topo(AIRCRAFT), 0.0)
    registry.receive(STATE, state(live_capacity=CAPACITY), 1.0)
    return registry


def test_saved_then_loaded_by_the_next_process(tmp_path: Path) -> None:
    path = tmp_path / "state" / "devices.json"  # the directory is made
    before = learned()
    assert DeviceStateFile(path).save(before)
    after = DeviceRegistry()
    file = DeviceStateFile(path)
    assert file.load(after) == [GW]
    assert after.gateways[GW].capacity == before.gateways[GW].capacity
    assert not after.gateways[GW].online
    assert [p.name for p in path.parent.iterdir()] == ["devices.json"]  # no partial file left


def test_written_only_when_devices_or_videos_change(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    registry = learned()
    file = DeviceStateFile(path)
    assert file.save(registry)
    inode = path.stat().st_ino
    registry.receive(STATE, state(live_capacity=CAPACITY), 2.0)  # the same capacity
    assert file.save(registry) and path.stat().st_ino == inode
    registry.receive(STATE, state(live_capacity={"device_list": []}), 3.0)
    assert file.save(registry) and path.stat().st_ino != inode  # a new file renamed over
    after = DeviceRegistry()
    DeviceStateFile(path).load(after)
    assert after.gateways[GW].capacity.videos == ()


def test_no_file_is_an_empty_registry(tmp_path: Path) -> None:
    registry = DeviceRegistry()
    assert DeviceStateFile(tmp_path / "absent.json").load(registry) == [] and registry.gateways == {}


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00\xff not json", b"[1, 2]", b'{"version": 7, "gateways": {}}', b'{"gateways": "x"}'],
)
def test_an_unreadable_file_is_moved_aside_and_the_registry_starts_empty(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "devices.json"
    path.write_bytes(content)
    registry = DeviceRegistry()
    assert DeviceStateFile(path).load(registry) == [] and registry.gateways == {}
    assert not path.exists() and (tmp_path / "devices.json.bad").read_bytes() == content
    # The next change writes a good file again.
    registry = learned()
    file = DeviceStateFile(path)
    assert file.save(registry)
    assert DeviceStateFile(path).load(DeviceRegistry()) == [GW]


def test_an_unwritable_place_fails_the_save_not_the_bridge(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    file = DeviceStateFile(blocker / "devices.json")
    registry = learned()
    assert not file.save(registry)
    assert not file.save(registry)  # tried again at the next change, logged once
    blocker.unlink()
    assert file.save(registry) and (blocker / "devices.json").exists()


async def test_a_flood_of_changes_is_written_debounced_off_the_loop_and_the_last_state_at_stop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "devices.json"
    registry = DeviceRegistry()
    # An interval no test run reaches: the first change is written at once, every later one
    # waits for the interval, and stop writes what is left.
    file = DeviceStateFile(path, min_interval=3600.0)
    threads: list[threading.Thread] = []
    write = file._write

    def recording_write(revision: int, snapshot: dict[str, Any]) -> bool:
        threads.append(threading.current_thread())
        return write(revision, snapshot)

    file._write = recording_write  # type: ignore[method-assign]
    aircraft = [f"AIRCRAFT{n:06d}" for n in range(500)]
    for n, sn in enumerate(aircraft):
        registry.receive(STATUS, update_topo(sn), float(n))
        file.changed(registry)
        await asyncio.sleep(0)  # let the saver run between messages, as the MQTT loop does
    async with asyncio.timeout(10):
        while file.writes < 1:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert file.writes == 1  # the first change; the other 499 wait for the interval
    await file.close()
    assert file.writes == 2 and file.saved_revision == registry.revision
    assert all(thread is not threading.main_thread() for thread in threads)
    after = DeviceRegistry()
    DeviceStateFile(path).load(after)
    topology = after.gateways[GW].topology
    assert topology is not None and topology.sub_devices == (aircraft[-1],)  # the last state wins
    assert sorted(p.name for p in tmp_path.iterdir()) == ["devices.json"]  # written whole, renamed in
    await file.close()
    assert file.writes == 2  # nothing new: not written again


async def test_changes_after_the_interval_are_written_again(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    registry = learned()
    file = DeviceStateFile(path, min_interval=0.05)
    file.changed(registry)
    async with asyncio.timeout(10):
        while file.writes < 1:
            await asyncio.sleep(0.01)
    registry.receive(STATE, state(live_capacity={"device_list": []}), 3.0)
    file.changed(registry)
    async with asyncio.timeout(10):
        while file.writes < 2:
            await asyncio.sleep(0.01)
    after = DeviceRegistry()
    DeviceStateFile(path).load(after)
    assert after.gateways[GW].capacity.videos == ()
    await file.close()
    assert file.writes == 2
