"""Viewer worker role: hosts many receive-only aiortc peers that do not decode.

Commands (see `common.serve_commands`):
  add    {mode: "wcs"|"ref", url, name, count, timeout, custom, data_channel} -> {added, total}
         "wcs": play `name` through the WCS API at `url` (the gateway), with `custom` (if
         given) in playStream and, with `data_channel`, an m=application section;
         "ref": send an offer to the reference sender's signalling socket at `url`.
  stats  {} -> {received: [int], lost: [int], telemetry: [int]}  (inbound-rtp video, and
         telemetry messages on the WebSocket or the data channel; one entry per viewer)
  close  {} -> {closed}
  latency_start, latency_stop: see `latency_probe.ViewerStamps` (WCS viewers only)
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.rtcsessiondescription import RTCSessionDescription
from websockets.asyncio.client import ClientConnection, connect

from gateway.wcs.client import ClientStream, WcsClient

from .common import disable_decoding, lighten_receivers, run_role
from .latency_probe import ViewerProbe, ViewerStamps

CONNECT_CONCURRENCY = 8
TELEMETRY = "telemetry"


class Viewer:
    """One viewer: its peer connection and whatever keeps its signalling alive."""

    def __init__(self, pc: RTCPeerConnection, closer: Any, stream: ClientStream | None = None) -> None:
        self.pc = pc
        self._closer = closer
        self._stream = stream
        self.probe: ViewerProbe | None = None  # its latency stamps (WCS viewers)
        self._telemetry = 0

    @property
    def sampled(self) -> bool:
        """Whether its access units are stamped for the latency figures."""
        return self.probe is not None and self.probe.sampled

    def telemetry(self) -> int:
        """Telemetry messages received so far (``notifyStreamEvent`` type ``telemetry`` or on
        the ``telemetry`` data channel). What the client kept of them is dropped once
        counted: at 10 a second per viewer the lists would grow for the whole run."""
        stream = self._stream
        if stream is None:
            return 0
        self._telemetry += sum(
            1
            for message, data in stream.events
            if message == "notifyStreamEvent"
            and isinstance(data[0], dict)
            and data[0].get("type") == TELEMETRY
        )
        self._telemetry += sum(1 for label, _ in stream.data_messages if label == TELEMETRY)
        stream.events.clear()
        stream.data_messages.clear()
        stream.client.messages.clear()
        return self._telemetry

    async def stats(self) -> tuple[int, int]:
        received = lost = 0
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind != "video":
                continue
            report = await transceiver.receiver.getStats()
            for stat in report.values():
                if stat.type == "inbound-rtp":
                    received += stat.packetsReceived
                    lost += max(0, stat.packetsLost)
        return received, lost

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._closer(), 10.0)
        with contextlib.suppress(Exception):
            await self.pc.close()


async def _connect_wcs(
    url: str, name: str, custom: dict[str, Any] | None, data_channel: bool, probe: ViewerProbe | None = None
) -> Viewer:
    client = await WcsClient.connect(url)
    try:
        fields: dict[str, Any] = {} if custom is None else {"custom": custom}
        if probe is not None:
            fields["before_answer"] = probe.before_answer
        view = await client.play(name, data_channel=data_channel, **fields)
        await view.wait_status("PLAYING", timeout=20.0)
    except BaseException:
        with contextlib.suppress(Exception):
            await client.close()
        raise

    async def closer() -> None:
        with contextlib.suppress(Exception):
            await view.stop()
        await client.close()

    return Viewer(view.pc, closer, view)


async def _connect_ref(url: str) -> Viewer:
    ws: ClientConnection = await connect(url, open_timeout=10)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        transceiver = pc.addTransceiver("video", direction="recvonly")
        codecs = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences([c for c in codecs if c.mimeType == "video/H264"])
        await pc.setLocalDescription(await pc.createOffer())
        await ws.send(orjson.dumps({"sdp": pc.localDescription.sdp}).decode())
        async with asyncio.timeout(20.0):
            answer = orjson.loads(await ws.recv())
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            while pc.connectionState != "connected":
                if pc.connectionState in ("failed", "closed"):
                    raise RuntimeError(f"reference viewer: connection {pc.connectionState}")
                await asyncio.sleep(0.05)
    except BaseException:
        await pc.close()
        await ws.close()
        raise

    async def closer() -> None:
        await ws.close()

    return Viewer(pc, closer)


class ViewerWorker:
    def __init__(self) -> None:
        self.viewers: list[Viewer] = []
        self.latency = ViewerStamps()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "add":
            return await self.add(request)
        if cmd == "stats":
            results = await asyncio.gather(*(v.stats() for v in self.viewers))
            return {
                "received": [r for r, _ in results],
                "lost": [lo for _, lo in results],
                "telemetry": [v.telemetry() for v in self.viewers],
            }
        if cmd in ViewerStamps.COMMANDS:
            return self.latency.handle(request)
        if cmd == "close":
            closed = len(self.viewers)
            await self.close()
            return {"closed": closed}
        raise ValueError(f"unknown command {cmd!r}")

    async def add(self, request: dict[str, Any]) -> dict[str, Any]:
        mode = request["mode"]
        url = str(request["url"])
        name = str(request.get("name", ""))
        count = int(request["count"])
        timeout = float(request.get("timeout", 60.0))
        custom = request.get("custom")
        data_channel = bool(request.get("data_channel", False))
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(index: int) -> Viewer:
            async with gate:
                if mode == "wcs":
                    probe = self.latency.probe(index, count)
                    viewer = await _connect_wcs(url, name, custom, data_channel, probe)
                    viewer.probe = probe
                    return viewer
                return await _connect_ref(url)

        tasks = [asyncio.create_task(one(i)) for i in range(count)]
        try:
            async with asyncio.timeout(timeout):
                results = await asyncio.gather(*tasks, return_exceptions=True)
        except TimeoutError:
            results = []
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is None:
                    results.append(t.result())
                else:
                    t.cancel()
                    results.append(TimeoutError(f"not PLAYING within {timeout} s"))
        added = [r for r in results if isinstance(r, Viewer)]
        self.viewers.extend(added)
        errors = [f"{type(r).__name__}: {r}" for r in results if not isinstance(r, Viewer)]
        if errors:
            raise RuntimeError(f"{len(errors)} of {count} viewers failed; first: {errors[0]}")
        return {"added": len(added), "total": len(self.viewers)}

    async def close(self) -> None:
        viewers, self.viewers = self.viewers, []
        self.latency.clear()
        await asyncio.gather(*(v.close() for v in viewers), return_exceptions=True)


def run(light: bool) -> None:
    disable_decoding()
    if light:
        lighten_receivers()
    run_role("viewers", ViewerWorker)
