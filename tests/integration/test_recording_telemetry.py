"""Telemetry in DVR recordings with real tools: a Stream fed the H.264 test clip, recorded by
two `Recorder`s at once, one with the stream's telemetry and one without; the sidecars read
back and set against the video PyAV finds in each file; the MP4s byte for byte the same; the
recording routes list and download the sidecar and retention deletes it; a recording process
killed with SIGKILL leaves a sidecar whose whole lines all parse; a sidecar whose writes fail
costs its telemetry only."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import av
import pytest
import pytest_asyncio
import structlog
from aiohttp import web

from gateway.dji.dock_sim import DockBehaviour, DockSimulator, run_forever
from gateway.http.recordings import recording_routes
from gateway.media.recordings import TELEMETRY_SUFFIX, RecordingStore, sidecar_path, stream_dirname
from gateway.media.sinks import recorder as recorder_module
from gateway.media.sinks.recorder import Recorder
from gateway.media.stream import Codec, MediaFrame, Stream
from gateway.mqtt_link import BrokerAddress
from gateway.telemetry.hub import TelemetryHub
from gateway.wcs.client import WcsClient, WcsError
from tests.conftest import ROOT, MosquittoProcess, free_port
from tests.integration.conftest import AccessUnits
from tests.integration.drone import AIRCRAFT_VIDEO
from tests.integration.test_dvr import kill_once_writing, until
from tests.telemetry_boxes import Sample

NAME = "SN/53-0-0/normal-0"
TB = Fraction(1, 90000)
FRAME = 3000  # 30 fps at 90 kHz


def video_pts(path: Path) -> list[Fraction]:
    """The presentation times (seconds) of the video packets of an MP4, as PyAV reads them."""
    with av.open(str(path)) as container:
        return sorted(
            p.pts * p.time_base for p in container.demux(video=0) if p.pts is not None and p.size > 0
        )


def sidecar_lines(path: Path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@dataclass
class Recorded:
    directory: Path  # with telemetry
    plain: Path  # the same stream recorded without
    with_telemetry: Recorder
    without: Recorder
    published: list[tuple[int, int]]  # (sample n, the pts of the frame it came after)


async def record_both(units: AccessUnits, tmp_path: Path, *, start: int = 0) -> Recorded:
    """The clip pushed twice (8 s) with no pacing into one stream recorded by both recorders
    (2 s files); a sample after every third frame (10 Hz)."""
    stream = Stream(NAME)
    stream.set_codecs(Codec("H264", 90000), None)
    hub = TelemetryHub(lambda name: stream if name == stream.name else None)
    clock = iter(range(1_700_000_000, 1_800_000_000, 7)).__next__  # file names, the same for both
    clock2 = iter(range(1_700_000_000, 1_800_000_000, 7)).__next__
    directory, plain = tmp_path / "telemetry", tmp_path / "plain"
    recorder = Recorder(stream, directory, segment_seconds=2.0, telemetry=hub, clock=clock)
    without = Recorder(stream, plain, segment_seconds=2.0, clock=clock2)
    recorder.start()
    without.start()
    published: list[tuple[int, int]] = []
    pts = start
    for i, (data, keyframe) in enumerate(units + units):
        stream.push(MediaFrame("video", "H264", data, pts, TB, keyframe))
        if i % 3 == 1:
            hub.publish(Sample("1581F5BKD225D00BC7R2", len(published)), [NAME])
            published.append((len(published), pts))
        pts += FRAME
        await asyncio.sleep(0)
    # The stream's end lets both recorders take every queued frame before they finish.
    stream.end()
    async with asyncio.timeout(30):
        await recorder.done.wait()
        await without.done.wait()
    return Recorded(directory, plain, recorder, without, published)


async def test_sidecar_lines_lie_on_their_files_video_and_the_mp4_is_unchanged(
    clip_units: AccessUnits, tmp_path: Path
) -> None:
    recorded = await record_both(clip_units, tmp_path, start=123_456)
    files, plain = recorded.with_telemetry.files, recorded.without.files
    assert len(files) == 4 and [f.name for f in files] == [f.name for f in plain]
    # The MP4s are the same, byte for byte: telemetry never goes into them.
    for mine, theirs in zip(files, plain, strict=True):
        assert mine.read_bytes() == theirs.read_bytes(), mine.name
    assert not list(recorded.plain.rglob(f"*{TELEMETRY_SUFFIX}"))  # no telemetry: no sidecars

    assert recorded.with_telemetry.sidecars == [sidecar_path(f) for f in files]
    seen: list[int] = []
    for path in files:
        frames = video_pts(path)
        assert frames[0] == 0  # the file's timeline starts at its first frame
        lines = sidecar_lines(sidecar_path(path))
        assert lines
        for line in lines:
            assert set(line) == {"t", "pts", "sample"}
            assert line["t"] == pytest.approx(line["pts"] / 90000, abs=1e-6)
            # Within the file's video, and exactly on the frame the sample came after.
            assert frames[0] <= Fraction(line["pts"], 90000) <= frames[-1], (path.name, line)
            assert Fraction(line["pts"], 90000) in frames
            assert line["sample"] == Sample("1581F5BKD225D00BC7R2", line["sample"]["n"]).to_json()
            seen.append(line["sample"]["n"])
    # Every sample, in order, each once.
    assert seen == [n for n, _ in recorded.published]
    # And each in the file with its frame: its pts there is its frame's distance from the file's start.
    starts = []
    for path in files:
        first = sidecar_lines(sidecar_path(path))[0]
        frame_pts = dict(recorded.published)[first["sample"]["n"]]
        starts.append(frame_pts - first["pts"])
    assert starts == [123_456 + k * 2 * 30 * FRAME for k in range(4)]


@pytest_asyncio.fixture
async def recordings_api(clip_units: AccessUnits, tmp_path: Path) -> AsyncIterator[tuple[str, Recorded]]:
    recorded = await record_both(clip_units, tmp_path)
    app = web.Application()
    app.add_routes(recording_routes(RecordingStore(recorded.directory)))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", recorded
    finally:
        await runner.cleanup()


async def get(url: str) -> tuple[int, bytes, str]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session,
        session.get(url) as response,
    ):
        return response.status, await response.read(), response.headers.get("Content-Type", "")


async def test_listing_shows_the_sidecar_and_it_downloads(recordings_api: tuple[str, Recorded]) -> None:
    base, recorded = recordings_api
    status, body, _ = await get(f"{base}/api/recordings?name={quote(NAME, safe='')}")
    assert status == 200
    listed = json.loads(body)["recordings"]
    assert len(listed) == len(recorded.with_telemetry.files)
    for entry, path in zip(listed, recorded.with_telemetry.files, strict=True):
        sidecar = sidecar_path(path)
        assert entry["telemetry"] == {
            "url": f"/api/recordings/{entry['id']}/telemetry",
            "size": sidecar.stat().st_size,
        }
        status, data, kind = await get(base + entry["telemetry"]["url"])
        assert status == 200 and data == sidecar.read_bytes() and kind == "application/jsonl"
        # The recording itself downloads as before.
        status, data, _ = await get(f"{base}/api/recordings/{entry['id']}")
        assert status == 200 and data == path.read_bytes()


async def test_telemetry_route_refuses_bad_input(
    recordings_api: tuple[str, Recorded], tmp_path: Path
) -> None:
    base, recorded = recordings_api
    secret = tmp_path / "secret.telemetry.jsonl"
    secret.write_text('{"secret": true}\n')
    dirname = stream_dirname(NAME)
    for recording_id in (
        "..%2Fsecret",
        "secret",
        "~2E~2E.20240101T000000.000Z",
        f"{dirname}.20240101T000000.000Z",  # well formed, no such recording
        f"{dirname}.20240101T000000.000Z%2F..%2F..%2Fsecret",
        "%00",
    ):
        status, _, _ = await get(f"{base}/api/recordings/{recording_id}/telemetry")
        assert status == 404, recording_id
    # A recording without telemetry: listed with "telemetry": null, and its route is a 404.
    stamp = recorded.without.files[0].name.removesuffix(".mp4")
    bare_file = recorded.directory / dirname / f"{stamp[:-6]}9.999Z.mp4"
    bare_file.write_bytes(recorded.without.files[0].read_bytes())
    status, body, _ = await get(f"{base}/api/recordings?name={quote(NAME, safe='')}")
    bare = [r for r in json.loads(body)["recordings"] if r["telemetry"] is None]
    assert len(bare) == 1
    status, _, _ = await get(f"{base}/api/recordings/{bare[0]['id']}/telemetry")
    assert status == 404
    assert secret.exists()
    # The server is still serving the others.
    status, _, _ = await get(f"{base}/api/recordings/{json.loads(body)['recordings'][0]['id']}/telemetry")
    assert status == 200


async def test_retention_deletes_the_sidecar_with_its_recording(
    clip_units: AccessUnits, tmp_path: Path
) -> None:
    recorded = await record_both(clip_units, tmp_path)
    files = recorded.with_telemetry.files
    sizes = [f.stat().st_size + sidecar_path(f).stat().st_size for f in files]
    # Room for the newest two recordings with their sidecars, not for three.
    store = RecordingStore(recorded.directory, max_total_bytes=sum(sizes[-2:]))
    removed = store.apply_retention()
    assert [r.path for r in removed] == files[:2]
    for path in files[:2]:
        assert not path.exists() and not sidecar_path(path).exists()
    for path in files[2:]:
        assert path.exists() and sidecar_path(path).exists()
    # By age: everything goes, sidecars too, and the empty directory.
    RecordingStore(recorded.directory, max_age_s=0.0, clock=lambda: 2e9).apply_retention()
    assert not (recorded.directory / stream_dirname(NAME)).exists()


RECORD_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from fractions import Fraction
    from pathlib import Path
    from gateway.media.sinks.recorder import Recorder
    from gateway.media.stream import Codec, MediaFrame, Stream
    from gateway.media.synthetic import EncodedVideoTrack
    from gateway.telemetry.hub import TelemetryHub
    from tests.telemetry_boxes import Sample

    async def main(directory, clip, name):
        stream = Stream(name)
        stream.set_codecs(Codec("H264", 90000), None)
        hub = TelemetryHub(lambda n: stream if n == name else None)
        Recorder(stream, Path(directory), segment_seconds=2.0, telemetry=hub).start()
        track = EncodedVideoTrack.from_clip(Path(clip), fps=30)
        print("recording", flush=True)
        n = 0
        while True:
            packet = await track.recv()
            stream.push(MediaFrame("video", "H264", bytes(packet), packet.pts, Fraction(1, 90000),
                                   packet.is_keyframe))
            # 30 Hz of samples with a long field: lines of a few kB, so a kill can land mid-write.
            hub.publish(Sample("SN", n, height=n / 10), [name])
            hub.publish(Sample("SN" + "x" * 3000, n + 1), [name])
            n += 2

    asyncio.run(main(*sys.argv[1:4]))
    """
)


async def test_sigkill_leaves_a_sidecar_readable_to_its_last_whole_line(clip: Path, tmp_path: Path) -> None:
    """A Recorder in a process of its own, fed long lines at 60 Hz so that the kill can land
    in the middle of one, killed with SIGKILL while it writes (the whole gateway is killed in
    the test below)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RECORD_SCRIPT, str(tmp_path), str(clip), NAME,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    directory = tmp_path / stream_dirname(NAME)

    def sidecars() -> list[Path]:
        return sorted(directory.glob(f"*{TELEMETRY_SUFFIX}")) if directory.is_dir() else []

    await kill_once_writing(proc, lambda: len(sidecars()) >= 2 and sidecars()[-1].stat().st_size > 0, 0.7)
    numbers: list[int] = []
    for path in sidecars():
        text = path.read_text()
        whole, _, torn = text.rpartition("\n")
        for line in whole.split("\n"):
            numbers.append(json.loads(line)["sample"]["n"])
        if torn:  # at most a last line cut short
            with pytest.raises(json.JSONDecodeError):
                json.loads(torn)
        assert path.with_name(path.name.removesuffix(TELEMETRY_SUFFIX) + ".mp4").is_file()
    assert numbers == sorted(numbers) and len(numbers) > 10
    # A gateway started afterwards lists them with their recordings.
    listed = RecordingStore(tmp_path).recordings(name=NAME)
    assert [r.telemetry_path for r in listed if r.telemetry_path is not None] == sidecars()


class FullDiskForSidecars:
    """The recorder module's `os`, whose writes to telemetry sidecars fail (ENOSPC)."""

    def __init__(self) -> None:
        self.sidecar_fds: set[int] = set()

    def open(self, path: Path, flags: int, mode: int = 0o777) -> int:
        fd = os.open(path, flags, mode)
        if str(path).endswith(TELEMETRY_SUFFIX):
            self.sidecar_fds.add(fd)
        return fd

    def write(self, fd: int, data: memoryview) -> int:
        if fd in self.sidecar_fds:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    def close(self, fd: int) -> None:
        self.sidecar_fds.discard(fd)
        os.close(fd)

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)


async def test_a_failing_sidecar_is_given_up_alone(
    clip_units: AccessUnits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sidecar writes fail: the telemetry of that file is given up, the video is recorded
    whole (the same bytes as without telemetry) and the next file tries again."""
    monkeypatch.setattr(recorder_module, "os", FullDiskForSidecars())
    with structlog.testing.capture_logs() as logs:
        recorded = await record_both(clip_units, tmp_path)
    files = recorded.with_telemetry.files
    assert len(files) == 4 and recorded.with_telemetry.errors == 0
    for mine, theirs in zip(files, recorded.without.files, strict=True):
        assert mine.read_bytes() == theirs.read_bytes()
    failures = [e for e in logs if e["event"] == "recording_telemetry_failed"]
    assert len(failures) == 4  # once a file: each new file's sidecar is tried again
    assert recorded.with_telemetry.sidecars == [sidecar_path(f) for f in files]
    assert all(path.stat().st_size == 0 for path in recorded.with_telemetry.sidecars)


async def test_a_killed_gateway_leaves_the_drone_recordings_sidecar_readable(
    make_gateway: Any, mosquitto: MosquittoProcess, clip: Path, tmp_path: Path
) -> None:
    """`skyrelay serve` records a drone camera whose dock sends osd at 30 Hz, and is killed
    with SIGKILL: every line of the sidecar but possibly a torn last one parses, and each is
    an aircraft sample on its recording's timeline."""
    recordings = tmp_path / "recordings"
    gateway = make_gateway(
        {
            "SKYRELAY_MQTT": mosquitto.url,
            "SKYRELAY_RECORDINGS_DIR": str(recordings),
            "SKYRELAY_RECORD_SEGMENT_SECONDS": "2",
        }
    )
    address = BrokerAddress.parse(mosquitto.url)
    sim = DockSimulator(address, clip, behaviour=DockBehaviour(osd_rate=30))
    dock_task = asyncio.create_task(run_forever(sim, retry=0.5))
    client = await WcsClient.connect(gateway.ws_url)
    try:
        async with asyncio.timeout(30):
            while True:  # until the dock is announced
                try:
                    player = await client.play(AIRCRAFT_VIDEO, timeout=30)
                    break
                except WcsError as exc:
                    assert "Stream not found" in str(exc)
                    await asyncio.sleep(0.3)
        await player.wait_status("PLAYING", timeout=30)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{gateway.http_url}/rest-api/stream/startRecording", json={"name": AIRCRAFT_VIDEO}
            ) as reply,
        ):
            assert reply.status == 200, await reply.text()
        directory = recordings / stream_dirname(AIRCRAFT_VIDEO)

        def sidecars() -> list[Path]:
            return sorted(directory.glob(f"*{TELEMETRY_SUFFIX}")) if directory.is_dir() else []

        await until(lambda: len(sidecars()) >= 2 and sidecars()[-1].stat().st_size > 0, timeout=30)
        await asyncio.sleep(0.5)
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(gateway.proc.wait, 10)
    finally:
        dock_task.cancel()
        await asyncio.gather(dock_task, return_exceptions=True)
        await client.close()
    lines = 0
    for path in sidecars():
        whole, _, torn = path.read_text().rpartition("\n")
        for line in whole.split("\n"):
            entry = json.loads(line)
            assert entry["sample"]["sn"] == sim.aircraft_sn and entry["sample"]["kind"] == "aircraft"
            assert entry["t"] == pytest.approx(entry["pts"] / 90_000)
            lines += 1
        if torn:
            with pytest.raises(json.JSONDecodeError):
                json.loads(torn)
    assert lines > 20
