"""Publisher role: publishes the synthetic clip to the gateway over the WCS API.

Commands: publish {url, name, clip, fps} -> {status}; stop {} -> {}.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from gateway.media.synthetic import EncodedVideoTrack

from .common import restrict_ice_to_loopback, serve_commands, setup_child_logging
from .wcs import load_client_class


class Publisher:
    def __init__(self, wcs_client: str) -> None:
        self.wcs_client = wcs_client
        self.client: Any = None
        self.session: Any = None
        self.track: EncodedVideoTrack | None = None

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "publish":
            if self.client is not None:
                raise RuntimeError("already publishing")
            self.track = EncodedVideoTrack.from_clip(Path(request["clip"]), float(request["fps"]))
            client_cls = load_client_class(self.wcs_client)
            self.client = await client_cls.connect(str(request["url"]))
            self.session = await self.client.publish(str(request["name"]), [self.track])
            await self.session.wait_status("PUBLISHING", timeout=20.0)
            return {"status": "PUBLISHING", "client": f"{client_cls.__module__}"}
        if cmd == "stop":
            await self.close()
            return {}
        raise ValueError(f"unknown command {cmd!r}")

    async def close(self) -> None:
        if self.session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.session.stop(), 10.0)
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), 10.0)
        if self.track is not None:
            self.track.stop()
        self.session = self.client = self.track = None


async def _amain(wcs_client: str) -> None:
    publisher = Publisher(wcs_client)
    await serve_commands(publisher.handle, publisher.close)


def run(wcs_client: str) -> None:
    setup_child_logging("publisher")
    restrict_ice_to_loopback()
    asyncio.run(_amain(wcs_client))
