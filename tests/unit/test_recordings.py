"""Recording names, ids, listing and retention on a real directory (no media needed)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.media.recorders import Recorders
from gateway.media.recordings import (
    DIRNAME_RE,
    EMPTY_GRACE_S,
    RecordingStore,
    UnsafeStreamName,
    being_written,
    format_stamp,
    parse_stamp,
    stream_dirname,
    stream_name,
)
from gateway.media.registry import StreamRegistry
from gateway.media.sinks.recorder import Recorder
from gateway.media.stream import Stream

T0 = 1_717_000_000.0  # 2024-05-29T16:26:40Z


@pytest.mark.parametrize(
    "name",
    [
        "SN/53-0-0/normal-0",
        "..",
        ".",
        "../x",
        "/etc/passwd",
        "a b",
        "камера",
        "~2F",
        "a\x00b",
        "C:\\x",
        "%2e%2e",
    ],
)
def test_stream_dirname_is_safe_and_reversible(name: str) -> None:
    dirname = stream_dirname(name)
    assert DIRNAME_RE.fullmatch(dirname)
    assert "." not in dirname and "/" not in dirname and "\\" not in dirname and "\x00" not in dirname
    assert stream_name(dirname) == name


def test_stream_dirname_refuses_empty_and_long_names() -> None:
    with pytest.raises(UnsafeStreamName):
        stream_dirname("")
    with pytest.raises(UnsafeStreamName):
        stream_dirname("/" * 100)  # 300 characters escaped
    assert stream_dirname("x" * 200) == "x" * 200


@pytest.mark.parametrize("dirname", ["", "..", "a.b", "a/b", "~2f", "~41", "~FF", "~2", "lost+found"])
def test_stream_name_refuses_what_stream_dirname_never_makes(dirname: str) -> None:
    assert stream_name(dirname) is None


def test_stamps_round_trip() -> None:
    assert format_stamp(T0 + 0.25) == "20240529T162640.250Z"
    assert parse_stamp("20240529T162640.250Z") == T0 + 0.25
    for bad in ("20241329T162640.250Z", "20240529T162640Z", "../20240529T162640.250Z", "x"):
        assert parse_stamp(bad) is None


def make_recording(root: Path, name: str, start: float, size: int, end: float | None = None) -> Path:
    directory = root / stream_dirname(name)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{format_stamp(start)}.mp4"
    path.write_bytes(b"\0" * size)
    mtime = end if end is not None else start + 60
    os.utime(path, (mtime, mtime))
    return path


def test_store_lists_filters_and_resolves(tmp_path: Path) -> None:
    a1 = make_recording(tmp_path, "cam/a", T0, 10)
    a2 = make_recording(tmp_path, "cam/a", T0 + 60, 20)
    b1 = make_recording(tmp_path, "cam/b", T0 + 30, 30)
    # Not recordings: other names, a symlink, a file where a directory should be, stray dirs.
    (a1.parent / "notes.txt").write_text("x")
    (a1.parent / "20240529T162640.250Z.mp4.part").write_text("x")
    (a1.parent / f"{format_stamp(T0 + 500)}.mp4").symlink_to("/etc/passwd")
    (tmp_path / "lost+found").mkdir()
    (tmp_path / "a.b").mkdir()
    (tmp_path / "plainfile").write_text("x")
    store = RecordingStore(tmp_path)

    listed = store.recordings()
    assert [r.path for r in listed] == [a1, b1, a2]
    assert [(r.stream, r.start, r.end, r.size) for r in listed] == [
        ("cam/a", T0, T0 + 60, 10),
        ("cam/b", T0 + 30, T0 + 90, 30),
        ("cam/a", T0 + 60, T0 + 120, 20),
    ]
    assert [r.path for r in store.recordings(name="cam/a")] == [a1, a2]
    assert store.recordings(name="nobody") == [] and store.recordings(name="") == []
    # Overlap with [start, end].
    assert [r.path for r in store.recordings(start=T0 + 61)] == [b1, a2]
    assert [r.path for r in store.recordings(end=T0 + 29)] == [a1]
    assert [r.path for r in store.recordings(name="cam/a", start=T0 + 100, end=T0 + 200)] == [a2]

    for recording in listed:
        assert store.resolve(recording.id) == recording
        assert recording.to_json()["name"] == recording.stream
    json_a1 = listed[0].to_json()
    assert json_a1["start"] == "2024-05-29T16:26:40.000Z" and json_a1["duration"] == 60


@pytest.mark.parametrize(
    "recording_id",
    [
        "",
        "..",
        "../../etc/passwd",
        "cam~2Fa/../../x",
        "cam~2Fa.20240529T162640.000Z/../x",
        "cam~2Fa.20240529T162640.000Z.mp4",
        "cam~2fa.20240529T162640.000Z",  # not canonical
        "cam~2Fa.20240529T162640.999Z",  # well formed, nothing there
        "cam~2Fa.20240529T172640.250Z",  # the symlink
        "a.b.20240529T162640.000Z",
        "cam~2Fa.20240529T162640.000Z\x00",
    ],
)
def test_store_refuses_ids(tmp_path: Path, recording_id: str) -> None:
    make_recording(tmp_path, "cam/a", T0, 10)
    (tmp_path / stream_dirname("cam/a") / f"{format_stamp(T0 + 3600.25)}.mp4").symlink_to("/etc/passwd")
    assert RecordingStore(tmp_path).resolve(recording_id) is None


def test_retention_by_total_size_removes_the_oldest(tmp_path: Path) -> None:
    old = make_recording(tmp_path, "cam/a", T0, 100)
    middle = make_recording(tmp_path, "cam/b", T0 + 60, 100)
    new = make_recording(tmp_path, "cam/a", T0 + 120, 100)
    store = RecordingStore(tmp_path, max_total_bytes=250, clock=lambda: T0 + 200)
    removed = store.apply_retention()
    assert [r.path for r in removed] == [old]
    assert not old.exists() and middle.exists() and new.exists()
    assert store.apply_retention() == []
    # A file being written is never removed; the next oldest goes instead.
    store.max_total_bytes = 150
    store.writing(middle)
    assert [r.path for r in store.apply_retention()] == [new]
    assert middle.exists()
    # The emptied directory of cam/a is removed with its last recording.
    assert not (tmp_path / stream_dirname("cam/a")).exists()


def test_retention_by_age(tmp_path: Path) -> None:
    old = make_recording(tmp_path, "cam/a", T0, 10, end=T0 + 60)
    recent = make_recording(tmp_path, "cam/a", T0 + 3600, 10, end=T0 + 3660)
    now = T0 + 3700
    store = RecordingStore(tmp_path, max_age_s=1800, clock=lambda: now)
    assert [r.path for r in store.apply_retention()] == [old]
    assert recent.exists() and [r.path for r in store.recordings()] == [recent]
    now += 7200
    assert [r.path for r in store.apply_retention()] == [recent]
    assert store.recordings() == []


async def test_retention_runs_periodically_until_the_recorders_stop(tmp_path: Path) -> None:
    now = T0 + 10_000
    store = RecordingStore(tmp_path, max_age_s=1800, clock=lambda: now)
    recorders = Recorders(StreamRegistry(), store, retention_interval=0.02)
    first = make_recording(tmp_path, "cam/a", T0, 10, end=T0 + 60)
    await recorders.start_retention()
    async with asyncio.timeout(5):
        while first.exists():
            await asyncio.sleep(0.01)
    # Not once at start: a recording that ages out later goes at a later pass.
    later = make_recording(tmp_path, "cam/b", T0 + 9000, 10, end=T0 + 9060)
    assert later.exists()
    now += 3600
    async with asyncio.timeout(5):
        while later.exists():
            await asyncio.sleep(0.01)
    await recorders.stop_all()
    stale = make_recording(tmp_path, "cam/c", T0, 10, end=T0 + 60)
    await asyncio.sleep(0.1)
    assert stale.exists()  # stopped: no pass after stop_all


def test_recorder_refuses_names_that_cannot_be_directories(tmp_path: Path) -> None:
    with pytest.raises(UnsafeStreamName):
        Recorder(Stream(""), tmp_path)
    recorder = Recorder(Stream("../../../etc"), tmp_path)
    assert recorder.directory.parent == tmp_path
    assert recorder.directory.name == "~2E~2E~2F~2E~2E~2F~2E~2E~2Fetc"


def test_an_empty_file_is_not_a_recording_and_retention_removes_it(tmp_path: Path) -> None:
    """A gateway killed between creating a file and its first write leaves an empty file:
    it is neither listed nor served, and retention removes it unless it is being written,
    or so young that its writer (another worker) may be about to lock and write it."""
    kept = make_recording(tmp_path, "cam/a", T0, 10)
    empty = make_recording(tmp_path, "cam/a", T0 + 60, 0, end=T0 + 60)
    writing_here = make_recording(tmp_path, "cam/b", T0 + 60, 0, end=T0 + 60)
    young = make_recording(tmp_path, "cam/c", T0 + 100, 0, end=T0 + 120 - EMPTY_GRACE_S + 1)
    store = RecordingStore(tmp_path, clock=lambda: T0 + 120)
    store.writing(writing_here)
    assert [r.path for r in store.recordings()] == [kept]
    assert store.resolve(f"{stream_dirname('cam/a')}.{format_stamp(T0 + 60)}") is None
    assert [r.path for r in store.apply_retention()] == [empty]
    assert not empty.exists() and kept.exists() and writing_here.exists() and young.exists()


WRITER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
fcntl.flock(fd, fcntl.LOCK_SH)
print("locked", flush=True)
time.sleep(60)
"""


def test_retention_leaves_what_another_process_is_writing(tmp_path: Path) -> None:
    """With several workers each has its own store on one directory: a file another process
    writes (its writer's lock, `hold_while_writing`) is kept, whatever its age, size or the
    total; once that writer is gone it is removed like any other."""
    old = make_recording(tmp_path, "cam/a", T0, 10)
    writing = make_recording(tmp_path, "cam/b", T0 + 10, 0, end=T0 + 10)
    store = RecordingStore(tmp_path, max_age_s=30, max_total_bytes=1, clock=lambda: T0 + 600)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(writing)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"locked\n"
        assert being_written(writing) and not being_written(old)
        assert [r.path for r in store.apply_retention()] == [old]
        assert writing.exists()
    finally:
        writer.kill()
        writer.wait(timeout=10)
    assert not being_written(writing)  # the lock went with its process
    assert [r.path for r in store.apply_retention()] == [writing]
