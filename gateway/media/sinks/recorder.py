"""DVR: a Stream recorded into segmented, fragmented MP4 files, remuxed with PyAV by the
`Remuxer` it shares with HLS (never transcoded): its H.264 video and, when it has Opus
audio, that too (G.711 cannot go in MP4 and is left out, logged once; see
`gateway.media.sinks.fmp4`), under ``{directory}/{stream directory}/{start}.mp4`` (see
`gateway.media.recordings` for the names).

Fragmented MP4 so that a file is playable at every moment: the header (``ftyp``+``moov``) and
each fragment (``moof``+``mdat``, one per GOP or per ``fragment_seconds``) go to the file with
one ``write`` as soon as the muxer flushes them, so a gateway killed mid-segment leaves files
that play up to the last complete fragment. A file is created only with its first fragment:
no header-only files. A new file starts at the first keyframe ``segment_seconds`` after the
current one started, and when the parameter sets change.

The files are created, written and closed by a worker thread, in order (`SegmentFiles`): a
slow or full disk never holds the event loop, and every other stream with it, back. When
more than `MAX_PENDING_BYTES` wait for the disk, the file is closed and recording resumes
at a keyframe once the disk has caught up.

With a telemetry hub, the samples of the stream go to a sidecar beside each file
(``{start}.telemetry.jsonl``, see `gateway.media.recordings`): one JSON line a sample,
``{"t": seconds, "pts": 90 kHz, "sample": {...}}``, on the file's timeline (0 is its first
video frame, as the MP4's presentation times). A sample goes to the file that holds the
frame it was stamped with (`TelemetryTrack`). The sidecar is created with the first sample
of its file (no empty sidecars for cameras without telemetry), by the same worker thread, and
each batch of whole lines goes to it with one unbuffered ``write``: a killed gateway leaves it
readable up to its last whole line. A sidecar that fails (a full disk) is given up alone;
the video goes on.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

from gateway.log import get_logger
from gateway.media.recordings import (
    SUFFIX,
    RecordingStore,
    format_stamp,
    hold_while_writing,
    sidecar_path,
    stream_dirname,
)
from gateway.media.sinks.fmp4 import Fmp4Muxer, Fragment
from gateway.media.sinks.remux import REMUX_ERRORS, Remuxer
from gateway.media.sinks.telemetry import TelemetryTrack
from gateway.media.stream import VIDEO_CLOCK_RATE, MediaFrame, Stream, to_90khz
from gateway.telemetry.hub import TelemetryHub

log = get_logger(__name__)

SUBSCRIPTION_FRAMES = 300
MAX_PENDING_BYTES = 32 * 1024 * 1024  # about a minute of 4 Mbit/s video


class SegmentFiles:
    """One recorder's files: created, written and closed in a worker thread, one operation
    after the other in the order they were asked for. Failures (a full disk) are kept for
    the recorder to see at its next frame."""

    def __init__(self, stream: str, directory: Path, store: RecordingStore | None) -> None:
        self.stream = stream
        self.directory = directory
        self.store = store
        self.files: list[Path] = []  # every file created, oldest first
        self.bytes_written = 0
        self.pending_bytes = 0  # asked for, not written yet (counted on the event loop only)
        self.error: OSError | None = None
        self.path: Path | None = None  # the file being written
        self.sidecars: list[Path] = []  # every telemetry sidecar created, oldest first
        self.telemetry_lines = 0  # written to sidecars
        self._fd: int | None = None
        self._broken = False  # a write to the current file failed
        self._sidecar_fd: int | None = None
        self._sidecar_broken = False  # a write to the current sidecar failed
        self._ops: asyncio.Queue[tuple[Callable[[], None], int] | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name=f"recording-files:{stream}")

    def create(self, start_epoch: float, data: bytes) -> None:
        """A new file named after ``start_epoch``, beginning with ``data``."""
        self._ask(lambda: self._create(start_epoch, data), len(data))

    def write(self, data: bytes) -> None:
        self._ask(lambda: self._write(data), len(data))

    def telemetry(self, lines: bytes, count: int) -> None:
        """``count`` whole lines for the current file's sidecar (created with the first)."""
        self._ask(lambda: self._write_telemetry(lines, count), len(lines))

    def close(self) -> None:
        self._ask(self._close, 0)

    def _ask(self, op: Callable[[], None], size: int) -> None:
        self.pending_bytes += size
        self._ops.put_nowait((op, size))

    async def finish(self) -> None:
        """Every operation asked for done; the worker ends."""
        self._ops.put_nowait(None)
        await asyncio.shield(self._task)

    async def _run(self) -> None:
        while (asked := await self._ops.get()) is not None:
            op, size = asked
            try:
                await asyncio.to_thread(op)
                continue
            except OSError as exc:
                self.error = exc
            except Exception as exc:  # a bug: say so, and let the recorder start a new file
                log.exception("recording_file_failed", stream=self.stream)
                self.error = OSError(f"{type(exc).__name__}: {exc}")
            finally:
                self.pending_bytes -= size
            # Nothing more goes into this file: after a failed (or partial) write, more
            # fragments would follow a hole. It plays up to its last complete fragment.
            self._broken = True

    # --- in the worker thread ----------------------------------------------------------------

    def _create(self, start_epoch: float, data: bytes) -> None:
        self._close()
        self.directory.mkdir(parents=True, exist_ok=True)  # retention removes empty ones
        start = start_epoch
        while True:
            path = self.directory / f"{format_stamp(start)}{SUFFIX}"
            # Told before the file exists: retention removes empty files nobody is
            # writing, and this one is empty until the first write.
            if self.store is not None:
                self.store.writing(path)
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                hold_while_writing(self._fd)  # for the retention of every worker
                break
            except FileExistsError:
                if self.store is not None:
                    self.store.written(path)
                start += 0.001  # the same millisecond as another file of this stream
            except OSError:
                if self.store is not None:
                    self.store.written(path)
                raise
        self.path = path
        self.files.append(path)
        log.info("recording_file", stream=self.stream, path=str(path))
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self._fd is None or self._broken:
            return  # its file could not be created, or a write to it failed
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.bytes_written += len(data)

    def _write_telemetry(self, lines: bytes, count: int) -> None:
        if self.path is None or self._fd is None or self._broken or self._sidecar_broken:
            return  # no file to go with (it failed)
        try:
            if self._sidecar_fd is None:
                path = sidecar_path(self.path)
                # O_TRUNC: only a stale sidecar whose recording is gone can be there (the
                # recording's name was new).
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
                self._sidecar_fd = os.open(path, flags, 0o644)
                self.sidecars.append(path)
                log.info("recording_telemetry_file", stream=self.stream, path=str(path))
            # Unbuffered: each batch of whole lines is in the kernel once `write` returns.
            view = memoryview(lines)
            while view:
                view = view[os.write(self._sidecar_fd, view) :]
            self.telemetry_lines += count
        except OSError as exc:
            self._sidecar_broken = True
            log.warning("recording_telemetry_failed", stream=self.stream, error=str(exc)[:200])

    def _close(self) -> None:
        self._broken = False
        self._sidecar_broken = False
        sidecar, self._sidecar_fd = self._sidecar_fd, None
        if sidecar is not None:
            try:
                os.close(sidecar)
            except OSError:
                pass
        fd, self._fd = self._fd, None
        path, self.path = self.path, None
        if fd is None or path is None:
            return
        try:
            empty = os.fstat(fd).st_size == 0
            os.close(fd)
            if empty:
                # Nothing was written (its first write failed): no recording to keep. Another
                # process's retention would wait EMPTY_GRACE_S before taking it for litter.
                path.unlink(missing_ok=True)
                log.info("recording_file_removed", stream=self.stream, path=str(path), reason="empty")
        finally:
            if self.store is not None:
                self.store.written(path)
                self.store.apply_retention()


class Recorder(Remuxer):
    """Records one Stream while started; `stop` (or the stream's end) finishes the last file.

    Raises `UnsafeStreamName` for a name that cannot be a directory name. With a ``store``,
    the file being written is protected from retention and retention runs after each file."""

    audio_left_out_event = "recording_audio_left_out"
    audio_left_out_reason = "MP4 carries no such audio: the files are video only"
    skip_replay = True  # the cached keyframe replayed to a joining subscriber is the past

    def __init__(
        self,
        stream: Stream,
        directory: Path,
        *,
        segment_seconds: float = 60.0,
        fragment_seconds: float = 1.0,
        store: RecordingStore | None = None,
        clock: Callable[[], float] = time.time,
        queue_frames: int = SUBSCRIPTION_FRAMES,
        telemetry: TelemetryHub | None = None,
    ) -> None:
        if segment_seconds <= 0 or fragment_seconds <= 0:
            raise ValueError("segment_seconds and fragment_seconds must be positive")
        super().__init__(stream, fragment_seconds=fragment_seconds)
        self.queue_frames = queue_frames
        self.directory = Path(directory) / stream_dirname(stream.name)
        self.segment_seconds = segment_seconds
        self.store = store
        self.done = asyncio.Event()  # stopped, or the stream ended
        self.errors = 0  # files given up: a full or slow disk, a frame the muxer refused
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._segment_start: int | None = None  # pts of the current file's first frame
        self._start_epoch = 0.0
        self._file_open = False  # asked for: the worker may not have created it yet
        self._files: SegmentFiles | None = None
        self._finishing: asyncio.Future[None] | None = None
        self._hub = telemetry
        self.telemetry: TelemetryTrack | None = None
        self._lines: list[bytes] = []  # for the current file, until it is created
        self.telemetry_dropped = 0  # samples with no file to go in (before the first keyframe)

    @property
    def current(self) -> Path | None:
        """The file being written, if any."""
        return self._files.path if self._files is not None else None

    @property
    def files(self) -> list[Path]:
        """Every file this recorder created, oldest first."""
        return self._files.files if self._files is not None else []

    @property
    def sidecars(self) -> list[Path]:
        """Every telemetry sidecar this recorder created, oldest first."""
        return self._files.sidecars if self._files is not None else []

    @property
    def bytes_written(self) -> int:
        return self._files.bytes_written if self._files is not None else 0

    def start(self) -> None:
        self._files = SegmentFiles(self.stream.name, self.directory, self.store)
        if self._hub is not None:
            self.telemetry = TelemetryTrack(self._hub, self.stream.name)
        self._subscribe(self, self.queue_frames)
        self._task = asyncio.create_task(self._run(), name=f"recorder:{self.stream.name}")
        log.info("recording_started", stream=self.stream.name, directory=str(self.directory))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._finish()

    async def _run(self) -> None:
        try:
            await self._remux()
        finally:
            await self._finish()

    def _check(self, frame: MediaFrame) -> None:
        files = self._files
        assert files is not None
        if self.telemetry is not None and frame.kind == "video":
            # Before the frame: a keyframe that cuts the file has not closed it yet.
            self._place(self.telemetry.due(to_90khz(frame.pts, frame.time_base)))
        if files.error is not None:
            error, files.error = files.error, None
            raise error
        if frame.kind == "video" and files.pending_bytes > MAX_PENDING_BYTES:
            raise OSError(f"the disk is not keeping up: {files.pending_bytes / 1024**2:.1f} MB waiting")

    def _failed(self, exc: Exception) -> None:
        # A full disk or a frame the muxer refuses: close this file, try a new one at the
        # next keyframe.
        self.errors += 1
        log.warning("recording_error", stream=self.stream.name, error=str(exc)[:200])

    def _cut_due(self, keyframe: MediaFrame) -> bool:
        start = self._segment_start
        return start is not None and (keyframe.pts - start) * keyframe.time_base >= self.segment_seconds

    def _opened(self, keyframe: MediaFrame) -> None:
        self._segment_start = keyframe.pts
        self._start_epoch = self._clock()

    def _place(self, samples: list[tuple[int, str]]) -> None:
        """Samples into the current file's sidecar, on its timeline."""
        if not samples:
            return
        muxer = self.muxer
        if muxer is None or muxer.origin is None:
            self.telemetry_dropped += len(samples)  # no file now: between files, or before the first
            return
        origin = to_90khz(muxer.origin, muxer.time_base)
        lines = []
        for pts, body in samples:
            at = pts - origin
            # The sample's JSON as the hub encoded it: not decoded, not encoded again.
            lines.append(f'{{"t":{at / VIDEO_CLOCK_RATE:.6f},"pts":{at},"sample":{body}}}\n'.encode())
        if self._file_open:
            assert self._files is not None
            self._files.telemetry(b"".join(lines), len(lines))
        else:
            self._lines += lines  # the file is created with its first fragment

    def _take(self, muxer: Fmp4Muxer, fragments: list[Fragment]) -> None:
        """Write complete fragments (with the header first, in the same write)."""
        if not fragments:
            return
        data = b"".join(fragment.data for fragment in fragments)
        files = self._files
        assert files is not None
        if not self._file_open:
            assert muxer.header is not None
            files.create(self._start_epoch, muxer.header + data)
            self._file_open = True
            if self._lines:
                lines, self._lines = self._lines, []
                files.telemetry(b"".join(lines), len(lines))
        else:
            files.write(data)

    def _closed(self) -> None:
        self._segment_start = None
        self.telemetry_dropped += len(self._lines)  # a file that never got a fragment
        self._lines = []
        if self._file_open:
            self._file_open = False
            assert self._files is not None
            self._files.close()

    async def _finish(self) -> None:
        # Once, whoever comes first (stop, or the stream's end); the other waits for it.
        if self._finishing is None:
            self._finishing = asyncio.ensure_future(self._finish_once())
        await asyncio.shield(self._finishing)

    async def _finish_once(self) -> None:
        telemetry = self.telemetry
        if telemetry is not None:
            # What came after the last frame taken, stamped with a frame in this file.
            last = telemetry.last_pts
            self._place(telemetry.up_to(last) if last is not None else [])
            telemetry.close()
        try:
            self._close_muxer(flush_held=True)
        except REMUX_ERRORS as exc:
            log.warning("recording_error", stream=self.stream.name, error=str(exc)[:200])
        self._unsubscribe()
        if self._files is not None:
            await self._files.finish()
        self.done.set()
        log.info(
            "recording_stopped", stream=self.stream.name, files=len(self.files), bytes=self.bytes_written
        )
