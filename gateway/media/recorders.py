"""The recorders running now, by stream name: started by a publisher's ``record: true`` or
the REST API, stopped by the REST API or by the stream's end; and the periodic retention
of the recordings directory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from gateway.log import get_logger
from gateway.media.recordings import RecordingStore
from gateway.media.registry import StreamRegistry
from gateway.media.sinks.recorder import SUBSCRIPTION_FRAMES, Recorder
from gateway.media.stream import Stream
from gateway.tasks import TaskSet

log = get_logger(__name__)

RETENTION_INTERVAL = 60.0


class Recorders:
    def __init__(
        self,
        registry: StreamRegistry,
        store: RecordingStore,
        *,
        segment_seconds: float = 60.0,
        retention_interval: float = RETENTION_INTERVAL,
        queue_frames: int = SUBSCRIPTION_FRAMES,
    ) -> None:
        self.registry = registry
        self.store = store
        self.segment_seconds = segment_seconds
        self.retention_interval = retention_interval
        self.queue_frames = queue_frames
        self.running: dict[str, Recorder] = {}
        self._tasks = TaskSet("recorders")

    def start(self, stream: Stream) -> Recorder:
        """Record ``stream`` (the running recorder if it is recorded already). Raises
        ValueError (UnsafeStreamName) for a name that cannot be a directory name."""
        recorder = self.running.get(stream.name)
        if recorder is not None and not recorder.done.is_set():
            return recorder
        recorder = Recorder(
            stream,
            self.store.directory,
            segment_seconds=self.segment_seconds,
            store=self.store,
            queue_frames=self.queue_frames,
            telemetry=self.registry.telemetry,
        )
        recorder.start()
        self.running[stream.name] = recorder
        self._spawn(self._forget_when_done(stream.name, recorder))
        return recorder

    async def stop(self, name: str) -> bool:
        recorder = self.running.pop(name, None)
        if recorder is None:
            return False
        await recorder.stop()
        return True

    def find_all(self) -> list[dict[str, object]]:
        return [
            {
                "name": name,
                "files": len(recorder.files),
                "bytes": recorder.bytes_written,
                "current": recorder.current.name if recorder.current else None,
                "errors": recorder.errors,
            }
            for name, recorder in self.running.items()
        ]

    async def start_retention(self) -> None:
        self._spawn(self._retention())

    async def stop_all(self) -> None:
        for name in list(self.running):
            await self.stop(name)
        await self._tasks.cancel()

    async def _forget_when_done(self, name: str, recorder: Recorder) -> None:
        await recorder.done.wait()
        if self.running.get(name) is recorder:
            del self.running[name]

    async def _retention(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                removed = await asyncio.to_thread(self.store.apply_retention)
                if removed:
                    log.info("recordings_removed", count=len(removed))
            await asyncio.sleep(self.retention_interval)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(work)
