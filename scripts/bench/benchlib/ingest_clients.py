"""Child roles of the ingest benchmark: the publishers that do not run as ffmpeg.

``publishers``: K WebRTC publishers of the synthetic clip, over the WCS WebSocket API
(`WcsClient`, one connection each) or WHIP (`WhipClient`).
    publish {kind: "webrtc"|"whip", url, names, clip, fps} -> {published}; stop {} -> {}

``rtsp-source``: an RTSP server (the gateway's own `RtspServer` over a private registry)
serving K live streams of the clip (`ClipFeed`), for the gateway to pull.
    start {names, clip, fps} -> {port}; stop {} -> {}
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from gateway.media.synthetic import ClipFeed, EncodedVideoTrack, read_access_units

from .common import run_role


class Publishers:
    def __init__(self) -> None:
        self._stops: list[Any] = []  # coroutine functions ending one publish each
        self._tracks: list[EncodedVideoTrack] = []

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "publish":
            if self._stops:
                raise RuntimeError("already publishing")
            units = read_access_units(Path(request["clip"]))
            fps = float(request["fps"])
            names = [str(n) for n in request["names"]]
            kind = request["kind"]
            starts = [self._publish(kind, str(request["url"]), name, units, fps) for name in names]
            await asyncio.gather(*starts)
            return {"published": len(names)}
        if cmd == "stop":
            await self.close()
            return {}
        raise ValueError(f"unknown command {cmd!r}")

    async def _publish(self, kind: str, url: str, name: str, units: Any, fps: float) -> None:
        track = EncodedVideoTrack(units, fps)
        self._tracks.append(track)
        if kind == "webrtc":
            from gateway.wcs.client import WcsClient

            client = await WcsClient.connect(url)
            session = await client.publish(name, [track], video_codec="H264")

            async def stop_wcs() -> None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(session.stop(), 10.0)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 10.0)

            self._stops.append(stop_wcs)
            await session.wait_status("PUBLISHING", timeout=30.0)
        elif kind == "whip":
            from gateway.media.whip_client import WhipClient

            whip = WhipClient(f"{url}/whip/{name}", track)

            async def stop_whip() -> None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(whip.stop(), 10.0)

            self._stops.append(stop_whip)
            await whip.start()
        else:
            raise ValueError(f"unknown publisher kind {kind!r}")

    async def close(self) -> None:
        stops, self._stops = self._stops, []
        await asyncio.gather(*(stop() for stop in stops))
        for track in self._tracks:
            track.stop()
        self._tracks = []


class RtspSource:
    def __init__(self) -> None:
        self._server: Any = None
        self._feeds: list[ClipFeed] = []
        self._registry: Any = None

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "start":
            from gateway.media.registry import StreamRegistry
            from gateway.media.servers.rtsp import RtspServer

            if self._server is None:
                self._registry = StreamRegistry()
                self._server = RtspServer(self._registry, "127.0.0.1", 0, udp=False)
                await self._server.start()
            await self._stop_feeds()
            units = read_access_units(Path(request["clip"]))
            for name in request["names"]:
                stream = self._registry.claim(str(name))
                self._feeds.append(ClipFeed(stream, units, float(request["fps"])))
            return {"port": self._server.port}
        if cmd == "stop":
            await self._stop_feeds()
            return {}
        raise ValueError(f"unknown command {cmd!r}")

    async def _stop_feeds(self) -> None:
        feeds, self._feeds = self._feeds, []
        for feed in feeds:
            await feed.stop()
            self._registry.release(feed.stream)

    async def close(self) -> None:
        await self._stop_feeds()
        if self._server is not None:
            await self._server.stop()
            self._server = None


def run(role: str) -> None:
    if role == "publishers":
        run_role("publishers", Publishers)
    else:
        run_role("rtsp-source", RtspSource)
