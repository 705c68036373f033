"""The DJI device registry kept in a JSON file across restarts (see `DeviceRegistry.snapshot`).

Loaded once at start; written again whenever the registry's devices or videos change, as a
whole new file renamed over the old one, so a crash mid-write never leaves half a file. A
file that cannot be read as a snapshot is moved aside (``.bad``) for the operator to look at,
and the bridge starts with no devices: the docks announce themselves again.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import orjson

from gateway.dji.devices import DeviceRegistry
from gateway.dji.protocol import DjiProtocolError
from gateway.log import get_logger

log = get_logger(__name__)

MAX_FILE_BYTES = 16 * 1024 * 1024  # thousands of docks fit; more is not a snapshot of ours


class DeviceStateFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved_revision: int | None = None
        self._failing = False  # log a failing disk once, not at every change

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

    def save(self, registry: DeviceRegistry) -> bool:
        """Write the registry if it changed since the last save; False if that failed."""
        if registry.revision == self.saved_revision:
            return True
        data = orjson.dumps(registry.snapshot(), option=orjson.OPT_INDENT_2)
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
        self.saved_revision = registry.revision
        return True
