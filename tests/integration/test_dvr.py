"""DVR on loopback with real tools: `Recorder` writing segmented fragmented MP4 from a Stream
fed by a pre-encoded clip, every file decoded by ffprobe; a recording process killed with
SIGKILL leaves playable files that a new `RecordingStore` lists; the recording routes list,
filter, download and refuse bad input."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.http.recordings import recording_routes
from gateway.media.recordings import RecordingStore, being_written, stream_dirname
from gateway.media.sinks import recorder as recorder_module
from gateway.media.sinks.recorder import Recorder
from gateway.media.stream import Stream
from gateway.media.synthetic import ClipFeed
from tests.conftest import ROOT, free_port
from tests.integration.conftest import AccessUnits
from tests.integration.test_rtsp import Watcher

NAME = "SN/53-0-0/normal-0"


def clip_feed(name: str, units: AccessUnits) -> ClipFeed:
    """A Stream fed with the clip in real time."""
    return ClipFeed(Stream(name), units, ingest="test")


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def kill_once_writing(
    proc: asyncio.subprocess.Process, writing: Callable[[], bool], more: float
) -> None:
    """Wait until the recording process prints "recording" and then until ``writing``; let
    it write ``more`` seconds and kill it with SIGKILL."""
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):  # the log goes to stdout too
            while (line := await proc.stdout.readline()).strip() != b"recording":
                assert line, "the recording process exited"
        await until(writing)
        await asyncio.sleep(more)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        async with asyncio.timeout(10):
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL


def probe_streams(path: Path) -> tuple[list[dict], float]:
    """ffprobe decoding every frame of ``path``: its streams and duration."""
    done = subprocess.run(
        [
            "ffprobe", "-v", "error", "-count_frames", "-of", "json",
            "-show_entries", "stream=codec_name,width,height,nb_read_frames:format=duration",
            str(path),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{path}: {done.stderr}"
    info = json.loads(done.stdout)
    return info["streams"], float(info["format"].get("duration", 0))


def probe(path: Path) -> dict:
    """ffprobe decoding every frame of ``path``: its video stream and format."""
    streams, duration = probe_streams(path)
    assert len(streams) == 1, streams
    return {**streams[0], "duration": duration}


def assert_playable(path: Path) -> None:
    info = probe(path)
    assert (info["codec_name"], info["width"], info["height"]) == ("h264", 320, 240), info
    assert int(info["nb_read_frames"]) > 0 and info["duration"] > 0, (path, info)


async def test_recorder_writes_segments_ffprobe_decodes(clip_units: AccessUnits, tmp_path: Path) -> None:
    feed = clip_feed(NAME, clip_units)
    store = RecordingStore(tmp_path)
    recorder = Recorder(feed.stream, tmp_path, segment_seconds=1.0, store=store)
    recorder.start()
    try:
        await until(lambda: len(recorder.files) >= 3)
    finally:
        await recorder.stop()
        await feed.stop()
    assert recorder.done.is_set() and not feed.stream.subscriptions
    assert recorder.directory == tmp_path / stream_dirname(NAME)
    for path in recorder.files:
        assert path.parent == recorder.directory
        assert_playable(path)
    listed = store.recordings()
    assert [r.path for r in listed] == recorder.files
    assert all(r.stream == NAME and r.size > 0 and r.end >= r.start for r in listed)


async def test_the_file_being_written_is_locked_for_every_workers_retention(
    clip_units: AccessUnits, tmp_path: Path
) -> None:
    """Several workers share the recordings directory, each with its own retention: the
    file a recorder writes carries its lock until it is closed (a minute's segment here:
    open from its first fragment to the stop)."""
    feed = clip_feed(NAME, clip_units)
    recorder = Recorder(feed.stream, tmp_path, segment_seconds=60.0, fragment_seconds=0.25)
    recorder.start()
    try:
        await until(lambda: bool(recorder.files) and recorder.bytes_written > 0)
        assert being_written(recorder.files[-1])
    finally:
        await recorder.stop()
        await feed.stop()
    assert recorder.files and not any(being_written(path) for path in recorder.files)


async def test_recording_ends_with_the_stream(clip_units: AccessUnits, tmp_path: Path) -> None:
    feed = clip_feed(NAME, clip_units)
    recorder = Recorder(feed.stream, tmp_path, segment_seconds=60.0)
    recorder.start()
    try:
        await until(lambda: recorder.current is not None)
        feed.stream.end()
        async with asyncio.timeout(10):
            await recorder.done.wait()
    finally:
        await recorder.stop()
        await feed.stop()
    assert recorder.current is None and len(recorder.files) == 1
    assert_playable(recorder.files[0])


RECORD_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from fractions import Fraction
    from pathlib import Path
    from gateway.media.sinks.recorder import Recorder
    from gateway.media.stream import Codec, MediaFrame, Stream
    from gateway.media.synthetic import EncodedVideoTrack

    async def main(directory, clip, name):
        stream = Stream(name)
        stream.set_codecs(Codec("H264", 90000), None)
        track = EncodedVideoTrack.from_clip(Path(clip), fps=30)
        Recorder(stream, Path(directory), segment_seconds=2.0).start()
        print("recording", flush=True)
        while True:
            packet = await track.recv()
            stream.push(MediaFrame("video", "H264", bytes(packet), packet.pts, Fraction(1, 90000),
                                   packet.is_keyframe))

    asyncio.run(main(*sys.argv[1:4]))
    """
)


# The same with Opus audio next to the video: 20 ms packets of a tone from PyAV's encoder.
RECORD_WITH_AUDIO_SCRIPT = RECORD_SCRIPT.replace(
    'stream.set_codecs(Codec("H264", 90000), None)',
    """stream.set_codecs(Codec("H264", 90000), Codec("opus", 48000))
    import av, numpy as np
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, "stereo", "s16"
    encoder.time_base = Fraction(1, 48000)
    encoder.open()
    samples = 0""",
).replace(
    "packet.is_keyframe))",
    """packet.is_keyframe))
        while samples < packet.pts * 48000 // 90000:
            tone = (8000 * np.sin(2 * np.pi * 440 * (np.arange(960) + samples) / 48000)).astype(np.int16)
            audio = av.AudioFrame.from_ndarray(np.stack([tone, tone]).T.reshape(1, -1).copy(),
                                               format="s16", layout="stereo")
            audio.sample_rate, audio.pts, audio.time_base = 48000, samples, Fraction(1, 48000)
            for opus in encoder.encode(audio):
                stream.push(MediaFrame("audio", "opus", bytes(opus), samples, Fraction(1, 48000), True))
            samples += 960""",
)


@pytest.mark.parametrize("audio", [False, True], ids=["video", "video+opus"])
async def test_sigkill_mid_recording_leaves_playable_files(clip: Path, tmp_path: Path, audio: bool) -> None:
    script = RECORD_WITH_AUDIO_SCRIPT if audio else RECORD_SCRIPT
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(tmp_path), str(clip), NAME,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    directory = tmp_path / stream_dirname(NAME)

    def files() -> list[Path]:
        return sorted(directory.glob("*.mp4")) if directory.is_dir() else []

    # Killed while a segment is being written: the newest file has fragments but is not
    # finished (segments are 2 s, fragments 1 s).
    await kill_once_writing(proc, lambda: len(files()) >= 2 and files()[-1].stat().st_size > 0, 1.2)
    left = files()
    assert len(left) >= 2
    for path in left:
        if not audio:
            assert_playable(path)
            continue
        streams, duration = probe_streams(path)
        assert [s["codec_name"] for s in streams] == ["h264", "opus"], (path, streams)
        assert all(int(s["nb_read_frames"]) > 0 for s in streams) and duration > 0, (path, streams)
    # A gateway started afterwards finds them.
    listed = RecordingStore(tmp_path).recordings(name=NAME)
    assert [r.path for r in listed] == left


@pytest_asyncio.fixture
async def recordings_api(clip_units: AccessUnits, tmp_path: Path) -> AsyncIterator[tuple[str, Recorder]]:
    """Two short recordings (two streams, one with a name that tries to escape), served by an
    aiohttp app with `recording_routes`."""
    recorders = []
    for name in (NAME, "../../escape"):
        feed = clip_feed(name, clip_units)
        recorder = Recorder(feed.stream, tmp_path, segment_seconds=1.0)
        recorder.start()
        try:
            await until(lambda r=recorder: len(r.files) >= 2)
        finally:
            await recorder.stop()
            await feed.stop()
        recorders.append(recorder)
    app = web.Application()
    app.add_routes(recording_routes(RecordingStore(tmp_path)))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", recorders[0]
    finally:
        await runner.cleanup()


async def get(url: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session,
        session.get(url) as response,
    ):
        return response.status, await response.read()


async def test_recordings_api_lists_filters_and_downloads(
    recordings_api: tuple[str, Recorder], tmp_path: Path
) -> None:
    base, recorder = recordings_api
    status, body = await get(f"{base}/api/recordings")
    assert status == 200
    everything = json.loads(body)["recordings"]
    assert {r["name"] for r in everything} == {NAME, "../../escape"}
    # The escaping name stayed inside the directory, under an escaped directory name.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [stream_dirname(NAME), "~2E~2E~2F~2E~2E~2Fescape"]
    )

    status, body = await get(f"{base}/api/recordings?name={quote(NAME, safe='')}")
    mine = json.loads(body)["recordings"]
    assert status == 200 and [r["name"] for r in mine] == [NAME] * len(recorder.files)
    first, last = mine[0], mine[-1]
    # Time filters (epoch and ISO-8601): recordings overlapping [from, to].
    status, body = await get(f"{base}/api/recordings?name={quote(NAME, safe='')}&from={last['start_epoch']}")
    assert status == 200 and [r["id"] for r in json.loads(body)["recordings"]][-1] == last["id"]
    assert first["id"] not in [r["id"] for r in json.loads(body)["recordings"]]
    status, body = await get(f"{base}/api/recordings?to={quote(first['start'])}&name={quote(NAME, safe='')}")
    assert status == 200 and [r["id"] for r in json.loads(body)["recordings"]] == [first["id"]]
    status, body = await get(f"{base}/api/recordings?from=2999-01-01T00:00:00Z")
    assert status == 200 and json.loads(body)["recordings"] == []

    status, data = await get(f"{base}/api/recordings/{quote(first['id'], safe='')}")
    assert status == 200 and data == recorder.files[0].read_bytes()


async def test_recordings_api_refuses_bad_input(recordings_api: tuple[str, Recorder], tmp_path: Path) -> None:
    base, _ = recordings_api
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"not yours")
    for query in ("from=yesterday", "to=nan", "from=-5", "from=2024-13-01", "from=10&to=5"):
        status, body = await get(f"{base}/api/recordings?{query}")
        assert status == 400 and "error" in json.loads(body), query
    status, body = await get(f"{base}/api/recordings?name=..%2F..%2Fetc")
    assert status == 200 and json.loads(body)["recordings"] == []
    for recording_id in (
        "..%2F..%2Fetc%2Fpasswd",
        "..%2Fsecret",
        "secret",
        "~2E~2E.20240101T000000.000Z",  # a well-formed id of nothing
        f"{stream_dirname(NAME)}.20240101T000000.000Z%2F..%2F..%2Fsecret",
        f"{stream_dirname(NAME)}..%2F..%2Fsecret",
        "%00",
    ):
        status, body = await get(f"{base}/api/recordings/{recording_id}")
        assert status == 404, recording_id
    assert os.path.exists(secret)


class StallingDisk:
    """The recorder module's `os`, whose writes wait for ``moving`` (set) or fail with
    ``failures`` first: a slow, stalled or full disk."""

    def __init__(self, failures: int = 0) -> None:
        self.moving = threading.Event()
        self.waiting = threading.Event()  # a write is held
        self.failures = failures

    def write(self, fd: int, data: memoryview) -> int:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        if not self.moving.is_set():
            self.waiting.set()
            self.moving.wait(60)
        return os.write(fd, data)

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)


async def test_a_stalled_disk_holds_back_the_recording_only(
    clip_units: AccessUnits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes wait for a disk that takes nothing: the event loop goes on (another reader of
    the stream keeps getting frames); once the disk moves, the file is complete."""
    disk = StallingDisk()
    monkeypatch.setattr(recorder_module, "os", disk)
    feed = clip_feed(NAME, clip_units)
    watcher = Watcher(feed.stream)
    recorder = Recorder(feed.stream, tmp_path, segment_seconds=60.0)
    recorder.start()
    try:
        await until(disk.waiting.is_set)
        frames = watcher.frames
        await watcher.wait(frames=frames + 60)  # two seconds of video with the disk stalled
        assert recorder.bytes_written == 0
        disk.moving.set()
        await until(lambda: recorder.bytes_written > 0)
    finally:
        disk.moving.set()
        await watcher.stop()
        await recorder.stop()
        await feed.stop()
    (path,) = recorder.files
    assert_playable(path)


async def test_a_disk_falling_behind_closes_the_file_and_recording_resumes(
    clip_units: AccessUnits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = StallingDisk()
    monkeypatch.setattr(recorder_module, "os", disk)
    monkeypatch.setattr(recorder_module, "MAX_PENDING_BYTES", 20_000)
    feed = clip_feed(NAME, clip_units)
    recorder = Recorder(feed.stream, tmp_path, segment_seconds=60.0)
    recorder.start()
    try:
        await until(disk.waiting.is_set)
        # More than 20 kB waiting: the recorder gave the file up (and its close waits too).
        await until(lambda: recorder.errors > 0)
        disk.moving.set()
        await until(lambda: len(recorder.files) >= 2)  # a new file at a keyframe
    finally:
        disk.moving.set()
        await recorder.stop()
        await feed.stop()
    for path in recorder.files:
        assert_playable(path)


async def test_a_full_disk_fails_a_file_and_recording_goes_on(
    clip_units: AccessUnits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on the first write: that file is given up (empty, so its writer removes it)
    and the next keyframe starts a file that plays."""
    disk = StallingDisk(failures=1)
    disk.moving.set()
    monkeypatch.setattr(recorder_module, "os", disk)
    feed = clip_feed(NAME, clip_units)
    store = RecordingStore(tmp_path)
    recorder = Recorder(feed.stream, tmp_path, segment_seconds=60.0, store=store)
    recorder.start()
    try:
        await until(lambda: len(recorder.files) >= 2 and recorder.bytes_written > 0)
    finally:
        await recorder.stop()
        await feed.stop()
    failed, *written = recorder.files
    assert not failed.exists()  # empty: removed by its writer when it was closed
    for path in written:
        assert_playable(path)
    assert [r.path for r in store.recordings()] == written
