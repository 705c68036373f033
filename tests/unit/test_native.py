"""The floor's C burst (gateway/media/webrtc/native.py, burst.c): built with the machine's C
compiler into a cache, checked at start against pylibsrtp like the Python floor, and off,
with the reason, wherever it cannot be built or its bytes differ: the floor then stays in
Python."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from gateway.media.webrtc import aiortc_compat, floor, native

pytestmark = pytest.mark.skipif(native.compiler() is None, reason="no C compiler here")


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test builds into its own directory; the process's floor is checked again after
    (the tests after these expect it on, with its C burst)."""
    cache = tmp_path / "native"
    monkeypatch.setenv("SKYRELAY_NATIVE_DIR", str(cache))
    yield cache
    monkeypatch.undo()
    floor.want_native(True)
    assert floor.self_test() is None and floor.native_available(), floor.native_reason()


def test_built_once_into_the_cache_then_reused(own_cache: Path) -> None:
    path = native.build()
    assert path.parent == own_cache and path.name.startswith("burst-") and path.suffix == ".so"
    built = path.stat().st_mtime_ns
    assert native.build() == path and path.stat().st_mtime_ns == built
    assert [p.name for p in own_cache.iterdir()] == [path.name]  # no temporary file left
    lib = native.load()
    assert lib.path == path


def test_an_object_is_opened_once_and_kept_with_its_helper_thread(own_cache: Path) -> None:
    """Reopened after being closed, an object whose helper thread was waiting would set up
    its lock and condition under that thread (a fan-out that never returned, seen in the
    suite): each object file is opened once and never closed."""
    threads = floor.STATE.threads
    floor.want_threads(2)
    first = native.load()
    assert native.load() is first
    for _ in range(3):  # the start check, with the helper, again and again
        assert floor.self_test() is None and floor.native_available(), floor.native_reason()
        gc.collect()
        assert native.load() is first
    floor.want_threads(threads)


def test_another_source_is_another_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = native.build()
    edited = tmp_path / "burst.c"
    edited.write_text(native.SOURCE.read_text() + "\n/* edited */\n")
    monkeypatch.setattr(native, "SOURCE", edited)
    assert native.build() != first


def test_no_compiler_keeps_the_floor_in_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(native.NativeUnavailable, match="no C compiler"):
        native.build()
    assert floor.self_test() is None and floor.available()
    assert not floor.native_available() and "no C compiler" in str(floor.native_reason())


def test_a_built_object_is_used_without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    """An image built with a compiler it did not keep (the Dockerfile): the cache has it."""
    native.build()
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert floor.self_test() is None and floor.native_available(), floor.native_reason()


def test_the_module_builds_from_the_command_line(own_cache: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.media.webrtc.native"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert Path(done.stdout.strip()) == native.built_path() and native.built_path().parent == own_cache


def test_a_compiler_that_fails_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "false")
    assert floor.self_test() is None and floor.available()
    assert not floor.native_available() and "failed" in str(floor.native_reason())


def test_a_c_burst_whose_bytes_differ_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A C burst that patches the timestamp wrongly: the start check finds it, the floor
    stays on in Python."""
    source = native.SOURCE.read_text()
    right = "p[4] = (unsigned char)(timestamp >> 24);"
    wrong = source.replace(right, "p[4] = (unsigned char)(timestamp >> 16);")
    assert wrong != source
    edited = tmp_path / "burst.c"
    edited.write_text(wrong)
    monkeypatch.setattr(native, "SOURCE", edited)
    assert floor.self_test() is None and floor.available()
    assert not floor.native_available()
    assert "the C burst's bytes" in str(floor.native_reason())


def test_off_by_setting() -> None:
    floor.want_native(False)
    assert floor.self_test() is None and floor.available()
    assert not floor.native_available() and "fanout_native = false" in str(floor.native_reason())


async def test_the_start_logs_whether_the_c_burst_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with structlog.testing.capture_logs() as logs:
        await aiortc_compat.check(port_mux=False)
    (entry,) = [e for e in logs if e["event"] == "aiortc_internals"]
    assert entry["floor_native"] is True and entry["floor_native_off"] is None
    monkeypatch.setenv("SKYRELAY_NATIVE_DIR", str(tmp_path / "empty"))  # nothing built there
    monkeypatch.setenv("CC", "false")
    monkeypatch.setattr(floor, "_logged", set())  # logged once per process: not yet here
    with structlog.testing.capture_logs() as logs:
        await aiortc_compat.check(port_mux=False)
    (entry,) = [e for e in logs if e["event"] == "aiortc_internals"]
    assert entry["floor_native"] is False and "failed" in entry["floor_native_off"]
    assert entry["fanout_floor"] is True  # the floor itself runs, in Python
    (warning,) = [e for e in logs if e["event"] == "fanout_native_unavailable"]
    assert "failed" in warning["reason"]
