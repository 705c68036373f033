"""Publisher role: publishes the synthetic clip to the gateway over the WCS API.

Commands: publish {url, name, clip, fps} -> {status}; stop {} -> {}; latency_start,
latency_stop: see `latency_probe.SendStamps`.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from gateway.media.synthetic import EncodedVideoTrack
from gateway.wcs.client import ClientStream, WcsClient

from .common import run_role
from .latency_probe import SendStamps


class Publisher:
    def __init__(self) -> None:
        self.client: WcsClient | None = None
        self.session: ClientStream | None = None
        self.track: EncodedVideoTrack | None = None
        self.latency = SendStamps()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "publish":
            if self.client is not None:
                raise RuntimeError("already publishing")
            self.track = EncodedVideoTrack.from_clip(Path(request["clip"]), float(request["fps"]))
            self.client = await WcsClient.connect(str(request["url"]))
            self.session = await self.client.publish(str(request["name"]), [self.track], video_codec="H264")
            await self.session.wait_status("PUBLISHING", timeout=20.0)
            return {"status": "PUBLISHING"}
        if cmd in SendStamps.COMMANDS:
            return self.latency.handle(request, self.session)
        if cmd == "stop":
            await self.close()
            return {}
        raise ValueError(f"unknown command {cmd!r}")

    async def close(self) -> None:
        self.latency.stop()
        if self.session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.session.stop(), 10.0)
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), 10.0)
        if self.track is not None:
            self.track.stop()
        self.session = self.client = self.track = None


def run() -> None:
    run_role("publisher", Publisher)
