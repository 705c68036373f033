"""Recordings on disk: how a stream name becomes a directory name and a recording an id, and
the store that lists them, applies retention and resolves ids.

The files are the state: ``{root}/{stream directory}/{start}.mp4``, where the directory is a
strict, reversible escape of the stream name (``[A-Za-z0-9_-]`` kept, every other byte of its
UTF-8 as ``~XX``: no dots, no slashes) and ``start`` the UTC time of the first frame. A
restarted gateway lists what an earlier one wrote. Nothing from a request is joined to a
path before it matched these patterns.

A recording of a stream with telemetry has a sidecar beside it, ``{start}.telemetry.jsonl``
(`sidecar_path`): the MP4's name with another suffix, so the pair needs no index (a restarted
gateway finds it by name alone), ``.jsonl`` for JSON Lines, and a suffix that is not
``.mp4``, so it is never listed as a recording of its own. It is listed, downloaded and
deleted with its recording.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.log import get_logger

log = get_logger(__name__)

MAX_DIRNAME = 200  # bytes of a directory name; file systems allow 255
_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
DIRNAME_RE = re.compile(r"(?:[A-Za-z0-9_-]|~[0-9A-F]{2}){1,200}")
STAMP_RE = re.compile(r"\d{8}T\d{6}\.\d{3}Z")
STAMP_FORMAT = "%Y%m%dT%H%M%S"
RECORDING_ID_RE = re.compile(rf"({DIRNAME_RE.pattern})\.({STAMP_RE.pattern})")
SUFFIX = ".mp4"
TELEMETRY_SUFFIX = ".telemetry.jsonl"


class UnsafeStreamName(ValueError):
    """A stream name that cannot be a recording directory (empty, or too long)."""


def stream_dirname(name: str) -> str:
    """The directory of a stream's recordings: ``SN/53-0-0/normal-0`` -> ``SN~2F53-0-0~2Fnormal-0``."""
    raw = name.encode("utf-8")
    out = "".join(chr(b) if b in _SAFE_BYTES else f"~{b:02X}" for b in raw)
    if not out or len(out) > MAX_DIRNAME:
        raise UnsafeStreamName(f"stream name of {len(raw)} bytes cannot be recorded")
    return out


def stream_name(dirname: str) -> str | None:
    """The stream name of a directory made by `stream_dirname`, or None if it is not one."""
    if not DIRNAME_RE.fullmatch(dirname):
        return None
    raw = re.sub(r"~([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), dirname).encode("latin-1")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # Only the canonical escape: one name, one directory.
    return name if stream_dirname(name) == dirname else None


def sidecar_path(recording: Path) -> Path:
    """The telemetry sidecar of the recording file ``recording`` (``….mp4``)."""
    name = recording.name
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    return recording.with_name(stem + TELEMETRY_SUFFIX)


def format_stamp(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return f"{moment.strftime(STAMP_FORMAT)}.{moment.microsecond // 1000:03d}Z"


def parse_stamp(stamp: str) -> float | None:
    if not STAMP_RE.fullmatch(stamp):
        return None
    try:
        moment = datetime.strptime(stamp[:15], STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return moment.timestamp() + int(stamp[16:19]) / 1000


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Recording:
    id: str
    stream: str
    start: float  # epoch seconds: the first frame
    end: float  # epoch seconds: the last write (the file's mtime)
    size: int  # bytes
    path: Path
    telemetry_size: int | None = None  # bytes of its telemetry sidecar; None: it has none

    @property
    def telemetry_path(self) -> Path | None:
        return sidecar_path(self.path) if self.telemetry_size is not None else None

    def to_json(self) -> dict[str, Any]:
        telemetry = (
            None
            if self.telemetry_size is None
            else {"url": f"/api/recordings/{self.id}/telemetry", "size": self.telemetry_size}
        )
        return {
            "id": self.id,
            "name": self.stream,
            "start": iso(self.start),
            "end": iso(self.end),
            "start_epoch": self.start,
            "end_epoch": self.end,
            "duration": round(max(0.0, self.end - self.start), 3),
            "size": self.size,
            "telemetry": telemetry,
        }


class RecordingStore:
    """The recordings under ``directory``: listing, retention, id resolution."""

    def __init__(
        self,
        directory: Path,
        *,
        max_age_s: float | None = None,
        max_total_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.max_age_s = max_age_s
        self.max_total_bytes = max_total_bytes
        self._clock = clock
        # Files a Recorder of this process is writing: retention leaves them alone. Those of
        # another process (with several workers every worker records into this directory)
        # are known by the lock their writer holds (`hold_while_writing`).
        self._writing: set[Path] = set()

    # --- recorders tell the store -----------------------------------------------------------

    def writing(self, path: Path) -> None:
        self._writing.add(path)

    def written(self, path: Path) -> None:
        self._writing.discard(path)

    # --- reading ----------------------------------------------------------------------------

    def _recording(self, dirname: str, name: str, stamp: str) -> Recording | None:
        start = parse_stamp(stamp)
        if start is None:
            return None
        path = self.directory / dirname / f"{stamp}{SUFFIX}"
        try:
            info = path.lstat()  # a symlink is not a recording
        except OSError:
            return None
        if not path.is_file() or path.is_symlink():
            return None
        telemetry_size: int | None = None
        try:
            sidecar = sidecar_path(path).lstat()
            if stat.S_ISREG(sidecar.st_mode):  # a symlink is not a sidecar either
                telemetry_size = sidecar.st_size
        except OSError:
            pass
        return Recording(
            f"{dirname}.{stamp}", name, start, max(start, info.st_mtime), info.st_size, path, telemetry_size
        )

    def recordings(
        self, *, name: str | None = None, start: float | None = None, end: float | None = None
    ) -> list[Recording]:
        """Recordings oldest first; with ``name`` only that stream's, with ``start``/``end``
        only those overlapping that time (epoch seconds)."""
        # An empty file was created, then its gateway killed before the first write:
        # nothing to play (retention removes it).
        return [r for r in self._files(name, start, end) if r.size > 0]

    def _files(self, name: str | None, start: float | None, end: float | None) -> list[Recording]:
        if name is not None:
            try:
                dirnames = [stream_dirname(name)]
            except UnsafeStreamName:
                return []
        else:
            try:
                dirnames = [e.name for e in os.scandir(self.directory) if e.is_dir(follow_symlinks=False)]
            except FileNotFoundError:
                return []
        found: list[Recording] = []
        for dirname in dirnames:
            stream = stream_name(dirname)
            if stream is None:
                continue
            try:
                entries = list(os.scandir(self.directory / dirname))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if not entry.name.endswith(SUFFIX):
                    continue
                recording = self._recording(dirname, stream, entry.name[: -len(SUFFIX)])
                if recording is None:
                    continue
                if start is not None and recording.end < start:
                    continue
                if end is not None and recording.start > end:
                    continue
                found.append(recording)
        found.sort(key=lambda r: (r.start, r.id))
        return found

    def resolve(self, recording_id: str) -> Recording | None:
        """The recording of an id from `recordings`, or None (malformed ids included)."""
        match = RECORDING_ID_RE.fullmatch(recording_id)
        if match is None:
            return None
        dirname, stamp = match.groups()
        stream = stream_name(dirname)
        if stream is None:
            return None
        recording = self._recording(dirname, stream, stamp)
        return recording if recording is not None and recording.size > 0 else None

    # --- retention --------------------------------------------------------------------------

    def apply_retention(self) -> list[Recording]:
        """Delete the recordings older than ``max_age_s`` (by their end), then the oldest
        until the rest fit in ``max_total_bytes`` (telemetry sidecars count). Files being
        written are kept. A recording's sidecar goes with it."""
        every = self._files(None, None, None)
        total = sum(r.size + (r.telemetry_size or 0) for r in every)
        recordings = [r for r in every if r.path not in self._writing]
        removed: list[Recording] = []
        now = self._clock()
        for recording in recordings:  # oldest first
            # An empty file is left over from a failed recording, or one another process
            # created an instant ago and is about to lock and write.
            empty = recording.size == 0 and now - recording.end > EMPTY_GRACE_S
            too_old = self.max_age_s is not None and now - recording.end > self.max_age_s
            too_big = self.max_total_bytes is not None and total > self.max_total_bytes
            if not (empty or too_old or too_big) or being_written(recording.path):
                continue
            if not _delete(recording.path, recording.id):
                continue
            total -= recording.size
            if recording.telemetry_path is not None:
                _delete(recording.telemetry_path, recording.id)
                total -= recording.telemetry_size or 0
            removed.append(recording)
            reason = "empty" if empty else "age" if too_old else "size"
            log.info("recording_deleted", id=recording.id, reason=reason)
        for directory in {r.path.parent for r in removed}:
            try:
                directory.rmdir()  # only when empty
            except OSError:
                pass
        return removed


# An empty recording younger than this may be one a writer has just created.
EMPTY_GRACE_S = 30.0


def hold_while_writing(fd: int) -> None:
    """Mark the recording open on ``fd`` as being written, for every process's retention
    (a shared flock, released when the file is closed or its writer dies)."""
    fcntl.flock(fd, fcntl.LOCK_SH)  # a retention probe holds its lock only for an instant


def being_written(path: Path) -> bool:
    """Whether some process (this one too) holds ``path`` open for writing (its lock)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False  # gone already
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # a file system without flock: this process's own list only
    finally:
        os.close(fd)  # (releases the probe's lock)
    return False


def _delete(path: Path, recording_id: str) -> bool:
    """Delete a file of a recording; False if it is still there (logged)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("recording_delete_failed", id=recording_id, error=str(exc))
        return False
    return True
