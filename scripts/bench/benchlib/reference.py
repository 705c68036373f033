"""Reference role: stock aiortc fan-out of the same clip, in one process, without WCS.

One `EncodedVideoTrack` feeds a hub task; the hub puts every `av.Packet` into
a bounded queue per viewer (a full queue drops until the next keyframe; a new
viewer starts at a keyframe). Each viewer has its own `RTCPeerConnection` and
stock `RTCRtpSender`, which packetises, serialises, encrypts and sends on its
own. Signalling: a viewer opens a WebSocket to this process, sends
``{"sdp": offer}`` and gets ``{"sdp": answer}``; closing the socket closes the
peer connection.

Commands: start {clip, fps, port} -> {port}; count {} -> {viewers}.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import av
import orjson
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcsessiondescription import RTCSessionDescription
from websockets.asyncio.server import Server, ServerConnection, serve

from gateway.media.synthetic import EncodedVideoTrack

from .common import LOOPBACK, run_role

QUEUE_FRAMES = 60


class QueueTrack(MediaStreamTrack):
    """A viewer's track: packets from the hub through a bounded queue."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[av.Packet | None] = asyncio.Queue(QUEUE_FRAMES)
        self.waiting_for_keyframe = True
        self.dropped = 0

    def offer(self, packet: av.Packet) -> None:
        if self.waiting_for_keyframe:
            if not packet.is_keyframe:
                self.dropped += 1
                return
            self.waiting_for_keyframe = False
        try:
            self.queue.put_nowait(packet)
        except asyncio.QueueFull:
            self.dropped += 1
            self.waiting_for_keyframe = True

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self.queue.get()
        if packet is None:
            raise MediaStreamError
        return packet

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)


class ReferenceSender:
    def __init__(self) -> None:
        self.source: EncodedVideoTrack | None = None
        self.tracks: set[QueueTrack] = set()
        self.pcs: set[RTCPeerConnection] = set()
        self.hub: asyncio.Task[None] | None = None
        self.server: Server | None = None

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "start":
            return await self.start(Path(request["clip"]), float(request["fps"]))
        if cmd == "count":
            return {"viewers": len(self.pcs)}
        raise ValueError(f"unknown command {cmd!r}")

    async def start(self, clip: Path, fps: float) -> dict[str, Any]:
        if self.server is not None:
            raise RuntimeError("already started")
        self.source = EncodedVideoTrack.from_clip(clip, fps)
        self.hub = asyncio.create_task(self._run_hub(self.source))
        self.server = await serve(self._signalling, LOOPBACK, 0)
        port = next(iter(self.server.sockets)).getsockname()[1]
        return {"port": port}

    async def _run_hub(self, source: EncodedVideoTrack) -> None:
        while True:
            try:
                packet = await source.recv()
            except MediaStreamError:
                return
            for track in self.tracks:
                track.offer(packet)

    async def _signalling(self, ws: ServerConnection) -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        track = QueueTrack()
        self.pcs.add(pc)
        try:
            async with asyncio.timeout(20.0):
                offer = orjson.loads(await ws.recv())
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
                transceiver = next(t for t in pc.getTransceivers() if t.kind == "video")
                transceiver.direction = "sendonly"
                codecs = RTCRtpSender.getCapabilities("video").codecs
                transceiver.setCodecPreferences([c for c in codecs if c.mimeType == "video/H264"])
                pc.addTrack(track)
                await pc.setLocalDescription(await pc.createAnswer())
                await ws.send(orjson.dumps({"sdp": pc.localDescription.sdp}).decode())
            self.tracks.add(track)
            await ws.wait_closed()
        finally:
            self.tracks.discard(track)
            track.stop()
            self.pcs.discard(pc)
            await pc.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 10.0)
        for pc in list(self.pcs):
            with contextlib.suppress(Exception):
                await pc.close()
        if self.source is not None:
            self.source.stop()
        if self.hub is not None:
            self.hub.cancel()
            with contextlib.suppress(BaseException):
                await self.hub


def run() -> None:
    run_role("reference", ReferenceSender)
