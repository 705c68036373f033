"""DVR: a Stream recorded into segmented, fragmented MP4 files, remuxed with PyAV (never
transcoded): its H.264 video and, when it has Opus audio, that too (G.711 cannot go in MP4
and is left out, logged once; see `gateway.media.sinks.fmp4`), under
``{directory}/{stream directory}/{start}.mp4`` (see `gateway.media.recordings` for the names).

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
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from gateway.log import get_logger
from gateway.media.h264 import sps_dimensions
from gateway.media.recordings import SUFFIX, RecordingStore, format_stamp, stream_dirname
from gateway.media.sinks.fmp4 import (
    Arrival,
    ArrivalQueue,
    Fmp4Muxer,
    Fragment,
    muxable_audio,
    parameter_sets,
)
from gateway.media.stream import MediaFrame, Stream, Subscription

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
        self._fd: int | None = None
        self._broken = False  # a write to the current file failed
        self._ops: asyncio.Queue[tuple[Callable[[], None], int] | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name=f"recording-files:{stream}")

    def create(self, start_epoch: float, data: bytes) -> None:
        """A new file named after ``start_epoch``, beginning with ``data``."""
        self._ask(lambda: self._create(start_epoch, data), len(data))

    def write(self, data: bytes) -> None:
        self._ask(lambda: self._write(data), len(data))

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

    def _close(self) -> None:
        self._broken = False
        fd, self._fd = self._fd, None
        path, self.path = self.path, None
        if fd is None or path is None:
            return
        try:
            os.close(fd)
        finally:
            if self.store is not None:
                self.store.written(path)
                self.store.apply_retention()


class Recorder:
    """Records one Stream while started; `stop` (or the stream's end) finishes the last file.

    Raises `UnsafeStreamName` for a name that cannot be a directory name. With a ``store``,
    the file being written is protected from retention and retention runs after each file."""

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
    ) -> None:
        if segment_seconds <= 0 or fragment_seconds <= 0:
            raise ValueError("segment_seconds and fragment_seconds must be positive")
        self.stream = stream
        self.queue_frames = queue_frames
        self.directory = Path(directory) / stream_dirname(stream.name)
        self.segment_seconds = segment_seconds
        self.fragment_seconds = fragment_seconds
        self.store = store
        self.done = asyncio.Event()  # stopped, or the stream ended
        self.errors = 0  # files given up: a full or slow disk, a frame the muxer refused
        self._clock = clock
        self._subscription: Subscription | None = None
        self._arrivals: ArrivalQueue | None = None
        self._audio_left_out = False  # said once
        self._task: asyncio.Task[None] | None = None
        self._muxer: Fmp4Muxer | None = None
        self._params: tuple[bytes, bytes] | None = None
        self._held: MediaFrame | None = None
        self._segment_start: int | None = None  # pts of the current file's first frame
        self._start_epoch = 0.0
        self._file_open = False  # asked for: the worker may not have created it yet
        self._files: SegmentFiles | None = None
        self._finishing: asyncio.Future[None] | None = None

    @property
    def current(self) -> Path | None:
        """The file being written, if any."""
        return self._files.path if self._files is not None else None

    @property
    def files(self) -> list[Path]:
        """Every file this recorder created, oldest first."""
        return self._files.files if self._files is not None else []

    @property
    def bytes_written(self) -> int:
        return self._files.bytes_written if self._files is not None else 0

    def start(self) -> None:
        self._files = SegmentFiles(self.stream.name, self.directory, self.store)
        self._subscription = self.stream.subscribe(self, self.queue_frames)
        self._arrivals = ArrivalQueue(self._subscription, 2 * self.queue_frames)  # video and audio
        self._task = asyncio.create_task(self._run(), name=f"recorder:{self.stream.name}")
        log.info("recording_started", stream=self.stream.name, directory=str(self.directory))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._finish()

    async def _run(self) -> None:
        assert self._arrivals is not None and self._files is not None
        try:
            while (arrival := await self._arrivals.get()) is not None:
                try:
                    if self._files.error is not None:
                        error, self._files.error = self._files.error, None
                        raise error
                    if arrival.frame.kind == "video":
                        self._on_frame(arrival.frame)
                    else:
                        self._on_audio(arrival)
                except (av.FFmpegError, ValueError, OSError) as exc:
                    # A full disk or a frame the muxer refuses: close this file, try a new
                    # one at the next keyframe.
                    self.errors += 1
                    log.warning("recording_error", stream=self.stream.name, error=str(exc)[:200])
                    self._close_file(flush_held=False)
        finally:
            await self._finish()

    def _on_frame(self, frame: MediaFrame) -> None:
        # The cached keyframe replayed to a joining subscriber shows an earlier moment.
        if frame.codec != "H264" or frame.replay:
            return
        held = self._held
        if held is None:
            if frame.keyframe:
                self._held = frame
            return
        if frame.pts <= held.pts:
            return  # a timestamp going back: the MP4 timeline cannot
        self._write(held, frame.pts - held.pts)
        self._held = frame

    def _on_audio(self, arrival: Arrival) -> None:
        """An Opus packet into the current file, on its video's timeline."""
        if self._muxer is not None:
            self._output(self._muxer, self._muxer.write_arrival(arrival))

    def _write(self, frame: MediaFrame, duration: int) -> None:
        pending = self._files.pending_bytes if self._files is not None else 0
        if pending > MAX_PENDING_BYTES:
            raise OSError(f"the disk is not keeping up: {pending / 1024**2:.1f} MB waiting")
        if frame.keyframe:
            params = parameter_sets(frame.data)
            due = (
                self._segment_start is not None
                and (frame.pts - self._segment_start) * frame.time_base >= self.segment_seconds
            )
            if (
                self._muxer is None
                or due
                or params != self._params
                or frame.time_base != self._muxer.time_base
            ):
                self._close_file(flush_held=False)
                if params[0] is None or params[1] is None:
                    return  # not decodable alone: wait for a keyframe that is
                self._open(frame, (params[0], params[1]))
        if self._muxer is None:
            return
        self._output(self._muxer, self._muxer.write(frame.data, frame.pts, duration, frame.keyframe))

    def _open(self, keyframe: MediaFrame, params: tuple[bytes, bytes]) -> None:
        try:
            width, height = sps_dimensions(params[0])
        except (ValueError, IndexError):
            width, height = self.stream.width, self.stream.height
        self._muxer = Fmp4Muxer(
            width,
            height,
            keyframe.time_base,
            audio=self._with_audio(),
            origin=keyframe.pts,
            fragment_seconds=self.fragment_seconds,
        )
        self._params = params
        self._segment_start = keyframe.pts
        self._start_epoch = self._clock()

    def _with_audio(self) -> bool:
        """Whether the next file has the stream's audio (Opus: yes)."""
        codec = self.stream.audio_codec
        if codec is not None and not muxable_audio(self.stream) and not self._audio_left_out:
            self._audio_left_out = True
            log.info(
                "recording_audio_left_out",
                stream=self.stream.name,
                codec=codec.name,
                reason="MP4 carries no such audio: the files are video only",
            )
        return muxable_audio(self.stream)

    def _output(self, muxer: Fmp4Muxer, fragments: list[Fragment]) -> None:
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
        else:
            files.write(data)

    def _close_file(self, *, flush_held: bool) -> None:
        muxer, self._muxer = self._muxer, None
        if muxer is not None:
            if flush_held and self._held is not None:
                # Its duration is unknown: as long as a frame at 30 fps, about.
                held, self._held = self._held, None
                step = max(1, round(Fraction(1, 30) / held.time_base))
                self._output(muxer, muxer.write(held.data, held.pts, step, held.keyframe))
            self._output(muxer, muxer.close())
        self._segment_start = None
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
        try:
            self._close_file(flush_held=True)
        except (av.FFmpegError, ValueError, OSError) as exc:
            log.warning("recording_error", stream=self.stream.name, error=str(exc)[:200])
        if self._subscription is not None:
            self.stream.unsubscribe(self._subscription)
        if self._arrivals is not None:
            self._arrivals.close()
        if self._files is not None:
            await self._files.finish()
        self.done.set()
        log.info(
            "recording_stopped", stream=self.stream.name, files=len(self.files), bytes=self.bytes_written
        )

    # StreamListener
    def on_video_format(self, width: int, height: int) -> None:
        """A new size comes with new parameter sets, which start a new file."""

    def on_stream_event(self, event_type: str, payload: Any) -> None:
        """Recordings carry no stream events."""

    def on_stream_end(self, info: str | None) -> None:
        """`_run` takes what is queued, then finishes the file."""
        if self._arrivals is not None:
            self._arrivals.close()
