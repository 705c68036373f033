"""The simulated drone camera: an RTMP push of pre-encoded H.264, muxed into FLV by PyAV.

`RtmpCameraPush` replays the Annex-B access units of a test clip in real time, looping, with
timestamps that keep increasing across loops, like a dock pushing its camera (nothing is
encoded at run time). Every access unit carries an SEI user_data_unregistered message with
the wall clock at the moment it was handed to the muxer (`h264.sei_timestamp_nal`), so a
viewer on the same machine can measure glass-to-glass latency.

The muxing runs in a child process (``python -m gateway.dji.camera_sim``), not in a thread:
PyAV opens the RTMP connection (``avio_open``: TCP connect, handshake, publish) without
releasing the GIL, so a push to an RTMP server on an event loop of the same process would
deadlock, and even to another process it would freeze every thread for the handshake. The
child reads its settings and the access units from a private temporary file, reports on
stdout as JSON lines, and stops when its stdin closes: on `stop()`, or when this process
dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gateway.log import get_logger
from gateway.media import h264

log = get_logger(__name__)

AccessUnits = Sequence[tuple[bytes, bool]]

_ROOT = Path(__file__).resolve().parents[2]  # holds the `gateway` package, for the child
_TIME_BASE = fractions.Fraction(1, 90_000)
# When the push falls this far behind its schedule (a stalled connection), re-anchor the clock
# instead of bursting every late frame at once.
_MAX_LAG_S = 1.0
_STOP_WAIT_S = 3.0  # for the child to close its connection after stdin closes


@dataclass
class PushReport:
    """What the camera's push did, as the child process tells it (wall clock, ns)."""

    first_unit_ns: int | None = None  # the first access unit handed to the muxer
    connected_ns: int | None = None  # that mux call returned: RTMP connected, first tag sent
    frames: int = 0  # access units muxed (known once the push has ended)
    ended: str | None = None  # why the push ended, once it has


@functools.lru_cache(maxsize=4)
def clip_access_units(clip: Path) -> tuple[tuple[bytes, bool], ...]:
    """The access units of ``clip``, read once per process (see `read_access_units`)."""
    from gateway.media.synthetic import read_access_units  # imports aiortc: only when needed

    return tuple(read_access_units(clip))


class RtmpCameraPush:
    """Pushes ``access_units`` (Annex-B, the first a keyframe with SPS/PPS) to ``url`` at
    ``fps`` until stopped or until the connection fails; the latter ends the push with one
    log line."""

    def __init__(self, url: str, access_units: AccessUnits, fps: float = 30) -> None:
        if not access_units:
            raise ValueError("no access units")
        if not access_units[0][1]:
            raise ValueError("the first access unit must be a keyframe")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.url = url
        self.access_units = access_units
        self.fps = float(fps)
        self.report = PushReport()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._units_file: Path | None = None
        self._stopped = False

    @property
    def running(self) -> bool:
        return not self._stopped and self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self._proc is not None or self._stopped:
            raise RuntimeError("a camera push starts once")
        self._units_file = _write_units(self.url, self.fps, self.access_units)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.dji.camera_sim", str(self._units_file)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the owner, which stops the push
            )
        except OSError:
            self._units_file.unlink(missing_ok=True)
            raise
        self._reader = threading.Thread(target=self._read_reports, name="camera-push", daemon=True)
        self._reader.start()

    def stop(self, timeout: float = _STOP_WAIT_S) -> None:
        """End the push: the child closes its connection cleanly, or is killed after
        ``timeout`` seconds. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        proc = self._proc
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # the child's signal to stop
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("camera_push_killed", url=_redacted(self.url), after_s=timeout)
                proc.kill()
                proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=1)
        if self._units_file is not None:
            self._units_file.unlink(missing_ok=True)

    def _read_reports(self) -> None:
        """Thread: follow the child's JSON lines until it exits, then log how the push ended."""
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                for name in ("first_unit_ns", "connected_ns", "frames", "ended"):
                    if name in message:
                        setattr(self.report, name, message[name])
        code = proc.wait()
        if self._units_file is not None:
            self._units_file.unlink(missing_ok=True)
        if self.report.ended is None:
            self.report.ended = f"camera process exited with code {code}"
        if self._stopped:
            log.info("camera_push_stopped", url=_redacted(self.url), frames=self.report.frames)
        else:
            log.warning("camera_push_ended", url=_redacted(self.url), reason=self.report.ended)


def _redacted(url: str) -> str:
    """The URL without its one-time stream key, for logs."""
    head, _, _ = url.rpartition("/")
    return f"{head}/…" if head else url


def _write_units(url: str, fps: float, units: AccessUnits) -> Path:
    """A private file with the child's settings (one JSON line) and the access units, each
    as a 4-byte length, a keyframe byte and the data."""
    fd, name = tempfile.mkstemp(prefix="skyrelay-camera-", suffix=".units")
    with os.fdopen(fd, "wb") as out:
        out.write(json.dumps({"url": url, "fps": fps}).encode() + b"\n")
        for data, key in units:
            out.write(len(data).to_bytes(4, "big") + bytes([key]) + data)
    return Path(name)


def _read_units(path: Path) -> tuple[dict[str, Any], list[tuple[bytes, bool]]]:
    raw = path.read_bytes()
    newline = raw.index(b"\n")
    settings = json.loads(raw[:newline])
    units: list[tuple[bytes, bool]] = []
    pos = newline + 1
    while pos < len(raw):
        size = int.from_bytes(raw[pos : pos + 4], "big")
        units.append((raw[pos + 5 : pos + 5 + size], bool(raw[pos + 4])))
        pos += 5 + size
    return settings, units


class BackgroundCamera:
    """A simulated camera running as an asyncio task: `stop` returns at once, `closed`
    waits until its connections are closed."""

    _task: asyncio.Task[None] | None = None

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def closed(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


class WhipCameraPush(BackgroundCamera):
    """Pushes ``access_units`` over WebRTC to a WHIP endpoint (url_type 4), paced in real
    time by an `EncodedVideoTrack` (aiortc packetizes; nothing is encoded). `start` and
    `stop` return at once; `closed` waits until the session is deleted and closed."""

    def __init__(self, url: str, access_units: AccessUnits, fps: float = 30) -> None:
        self.url = url
        self.access_units = access_units
        self.fps = fps
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        from gateway.media.synthetic import EncodedVideoTrack
        from gateway.media.whip_client import WhipClient, WhipError

        client = WhipClient(self.url, EncodedVideoTrack(self.access_units, fps=self.fps))
        try:
            await client.start()
            self.connected.set()
            await asyncio.Event().wait()  # until stopped
        except WhipError as exc:
            log.warning("camera_push_ended", url=_redacted(self.url), reason=str(exc)[:300])
        finally:
            await client.stop()


class RtspCameraServer(BackgroundCamera):
    """The camera served over RTSP by the device itself (url_type 2, remote controllers):
    an RTSP server with the credentials the gateway chose, at ``rtsp://user:pass@host:port/
    live/1``, fed in real time from ``access_units``."""

    PATH = "live/1"

    def __init__(
        self, host: str, port: int, credentials: tuple[str, str], access_units: AccessUnits, fps: float = 30
    ) -> None:
        from gateway.media.registry import StreamRegistry
        from gateway.media.servers.rtsp import RtspServer

        self.registry = StreamRegistry()
        self.server = RtspServer(self.registry, host, port, credentials=credentials)
        self.credentials = credentials
        self.access_units = access_units
        self.fps = fps

    @property
    def url(self) -> str:
        user, password = self.credentials
        return f"rtsp://{user}:{password}@{self.server.host}:{self.server.port}/{self.PATH}"

    async def start(self) -> None:
        """Listen (raises OSError if the port is taken), then feed the stream."""
        await self.server.start()
        self._task = asyncio.ensure_future(self._feed())

    async def _feed(self) -> None:
        from gateway.media.synthetic import ClipFeed

        feed = ClipFeed(self.registry.claim(self.PATH), self.access_units, fps=self.fps)
        try:
            await asyncio.Event().wait()  # until stopped
        finally:
            await feed.stop()
            self.registry.release(feed.stream)
            await self.server.stop()


# --- the child process ----------------------------------------------------------------------


def _emit(out: IO[str], **message: object) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def _push(
    url: str, units: list[tuple[bytes, bool]], fps: float, stop: threading.Event, report: PushReport
) -> None:
    """Mux ``units`` to ``url`` in real time until ``stop``, counting them in ``report``."""
    import av  # only the child needs PyAV's muxer

    sps = next(nal for nal in h264.iter_nal_units(units[0][0]) if nal[0] & 0x1F == h264.NAL_SPS)
    width, height = h264.sps_dimensions(sps)
    # A live stream: no seeking back to write duration and file size at the end.
    container = av.open(url, "w", format="flv", options={"flvflags": "no_duration_filesize"})
    count = 0
    try:
        if not hasattr(container, "add_mux_stream"):
            raise RuntimeError("the camera push needs PyAV >= 17 (OutputContainer.add_mux_stream)")
        # No codec context: the units are muxed as they are. PyAV takes the extradata (SPS/PPS)
        # from the first keyframe; FLV then converts Annex-B to length-prefixed NAL units.
        stream = container.add_mux_stream("h264", rate=round(fps), width=width, height=height)
        ticks_per_frame = 90_000 / fps
        start, anchor = time.monotonic(), 0
        while not stop.is_set():
            delay = start + (count - anchor) / fps - time.monotonic()
            if delay > 0:
                if stop.wait(delay):
                    break
            elif delay < -_MAX_LAG_S:
                start, anchor = time.monotonic(), count
            data, key = units[count % len(units)]
            handed = time.time_ns()
            packet = av.Packet(h264.insert_sei(data, h264.sei_timestamp_nal(handed)))
            packet.stream = stream
            packet.pts = packet.dts = round(count * ticks_per_frame)
            packet.time_base = _TIME_BASE
            packet.is_keyframe = key
            container.mux(packet)
            if count == 0:
                report.first_unit_ns, report.connected_ns = handed, time.time_ns()
                _emit(sys.stdout, first_unit_ns=report.first_unit_ns, connected_ns=report.connected_ns)
            count = report.frames = count + 1
    finally:
        with contextlib.suppress(Exception):  # the connection may already be gone
            container.close()


def _main(argv: list[str]) -> int:
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.buffer.read()  # returns when the owner closes our stdin, or dies
        stop.set()

    threading.Thread(target=wait_for_eof, name="stdin", daemon=True).start()
    report = PushReport()
    url = ""
    try:
        settings, units = _read_units(Path(argv[0]))
        Path(argv[0]).unlink(missing_ok=True)  # read: no need to leave it behind if the owner dies
        url = str(settings["url"])
        _push(url, units, float(settings["fps"]), stop, report)
        _emit(sys.stdout, frames=report.frames, ended="stopped")
        return 0
    except KeyboardInterrupt:
        _emit(sys.stdout, frames=report.frames, ended="interrupted")
        return 130
    except Exception as exc:  # reported to the owner in one line: refused, reset, bad clip
        reason = f"{type(exc).__name__}: {exc}"
        if url:
            reason = reason.replace(url, _redacted(url))  # FFmpeg's messages name the URL
        _emit(sys.stdout, frames=report.frames, ended=reason[:300])
        return 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
