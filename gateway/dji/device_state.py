"""The DJI device registry kept in a JSON file across restarts (see `DeviceRegistry.snapshot`).

Loaded once at start; written again when the registry's devices or videos change, as a
whole new file renamed over the old one, so a crash mid-write never leaves half a file.
Writes are debounced (at most one per ``min_interval``, the latest state wins, and the
last one at stop) and made in a worker thread: a device flooding changes must cost the
event loop neither a disk write per message nor the wait for one. A
file that cannot be read as a snapshot is moved aside (``.bad``) for the operator to look at,
and the bridge starts with no devices: the docks announce themselves again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from gateway.dji.devices import DeviceRegistry
from gateway.dji.protocol import DjiProtocolError
from gateway.log import get_logger

log = get_logger(__name__)

MAX_FILE_BYTES = 16 * 1024 * 1024  # thousands of docks fit; more is not a snapshot of ours


class DeviceStateFile:
    def __init__(
        self, path: Path, *, min_interval: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.min_interval = min_interval
        self.clock = clock
        self.saved_revision: int | None = None
        self.writes = 0  # files written (renamed into place), for tests and curiosity
        self._failing = False  # log a failing disk once, not at every change
        self._registry: DeviceRegistry | None = None
        self._last_write = -float("inf")
        self._saver: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()  # set at stop: write now, not after the interval

    def load(self, registry: DeviceRegistry) -> list[str]:
        """Restore ``registry`` from the file; the serial numbers of the gateways restored."""
        try:
            if self.path.stat().st_size > MAX_FILE_BYTES:
                raise DjiProtocolError(f"larger than {MAX_FILE_BYTES} bytes")
            data = orjson.loads(self.path.read_bytes())
            restored = registry.restore(data)
        except FileNotFoundError:
            return []
        except (OSError, orjson.JSONDecodeError, DjiProtocolError) as exc:
            aside = self.path.with_name(self.path.name + ".bad")
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = self.path
            log.warning(
                "device_state_unreadable", path=str(self.path), error=str(exc)[:200], kept_as=str(aside)
            )
            return []
        self.saved_revision = registry.revision
        log.info("device_state_loaded", path=str(self.path), gateways=len(restored))
        return restored

    def changed(self, registry: DeviceRegistry) -> None:
        """Note that ``registry`` may have changed: it is saved within ``min_interval`` if so
        (call from the event loop)."""
        self._registry = registry
        if registry.revision == self.saved_revision or (self._saver is not None and not self._saver.done()):
            return  # nothing new, or the pending save will take the latest state
        self._saver = asyncio.get_running_loop().create_task(self._save_later(registry))

    async def close(self) -> None:
        """Write the latest state now if it is not on disk yet (at stop)."""
        self._hurry.set()
        saver = self._saver
        if saver is not None:
            # Not cancelled: a write under way in its thread must finish before the last one.
            await asyncio.gather(saver, return_exceptions=True)
        if self._registry is not None:
            await self._save_off_loop(self._registry)
        self._hurry.clear()

    async def _save_later(self, registry: DeviceRegistry) -> None:
        while registry.revision != self.saved_revision:
            wait = self._last_write + self.min_interval - self.clock()
            if wait > 0 and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._hurry.wait()
            if not await self._save_off_loop(registry):
                return  # a failing disk: the next change tries again

    async def _save_off_loop(self, registry: DeviceRegistry) -> bool:
        if registry.revision == self.saved_revision:
            return True
        # The snapshot is taken here, on the loop, where the registry changes; it is a fresh
        # structure, so the thread may encode and write it while the registry moves on.
        revision, snapshot = registry.revision, registry.snapshot()
        self._last_write = self.clock()
        return await asyncio.to_thread(self._write, revision, snapshot)

    def save(self, registry: DeviceRegistry) -> bool:
        """Write the registry now if it changed since the last save; False if that failed."""
        if registry.revision == self.saved_revision:
            return True
        return self._write(registry.revision, registry.snapshot())

    def _write(self, revision: int, snapshot: dict[str, Any]) -> bool:
        data = orjson.dumps(snapshot, option=orjson.OPT_INDENT_2)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(data)
            os.replace(partial, self.path)
        except OSError as exc:
            if not self._failing:
                log.warning("device_state_not_saved", path=str(self.path), error=str(exc)[:200])
            self._failing = True
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            return False
        if self._failing:
            log.info("device_state_saved_again", path=str(self.path))
        self._failing = False
        self.saved_revision = revision
        self.writes += 1
        return True
