"""A minimal WCS raw WebSocket API client for the benchmark.

The benchmark prefers the project's own client (`gateway.wcs.client.WcsClient`);
this one has the same small API and is used when that one is not importable,
or when asked for with ``--wcs-client builtin``. It behaves like the
Flashphoner WebSDK: no ICE trickle, `connection` then `publishStream` /
`playStream` with a full offer, answer applied from `setRemoteSDP`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import orjson
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.rtcsessiondescription import RTCSessionDescription
from websockets.asyncio.client import ClientConnection, connect

TERMINAL = frozenset({"FAILED", "STOPPED", "UNPUBLISHED"})


class WcsError(RuntimeError):
    pass


class StreamSession:
    """One published or played stream of a `BuiltinWcsClient`."""

    def __init__(self, client: BuiltinWcsClient, name: str, published: bool) -> None:
        self.client = client
        self.name = name
        self.published = published
        self.media_session_id = str(uuid.uuid1())
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.status = "NEW"
        self.info: str | None = None
        self.rates: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def _on_status(self, data: dict[str, Any]) -> None:
        self.status = str(data.get("status"))
        self.info = data.get("info")
        self._changed.set()

    async def wait_status(self, status: str, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while self.status != status:
                if self.status in TERMINAL:
                    raise WcsError(f"{self.name}: {self.status} ({self.info})")
                self._changed.clear()
                await self._changed.wait()

    async def _negotiate(self, message: str, extra: dict[str, Any]) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {
            "mediaSessionId": self.media_session_id,
            "name": self.name,
            "published": self.published,
            "status": "PENDING",
            "record": False,
            "mediaProvider": "WebRTC",
            "sdp": self.pc.localDescription.sdp,
            **extra,
        }
        self.status = "PENDING"
        await self.client._send(message, body)
        async with asyncio.timeout(20.0):
            sdp = await self._answer
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def stop(self) -> None:
        if self.status not in TERMINAL:
            message = "unPublishStream" if self.published else "stopStream"
            with contextlib.suppress(Exception):
                await self.client._send(
                    message,
                    {
                        "mediaSessionId": self.media_session_id,
                        "name": self.name,
                        "published": self.published,
                        "hasVideo": True,
                        "hasAudio": True,
                        "status": self.status,
                        "record": False,
                    },
                )
        await self.pc.close()
        self.client._sessions.pop(self.media_session_id, None)


class BuiltinWcsClient:
    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._sessions: dict[str, StreamSession] = {}
        self._user_data: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str) -> BuiltinWcsClient:
        ws = await connect(url, max_size=2**22, open_timeout=10)
        client = cls(ws)
        await client._send(
            "connection",
            {"appKey": "defaultApp", "mediaProviders": ["WebRTC"], "clientVersion": "2.0"},
        )
        try:
            async with asyncio.timeout(10.0):
                await client._user_data
        except BaseException:
            await client.close()
            raise
        return client

    async def _send(self, message: str, data: Any) -> None:
        await self._ws.send(orjson.dumps({"message": message, "data": [data]}).decode())

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                try:
                    frame = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(frame, dict):
                    await self._dispatch(str(frame.get("message")), frame.get("data") or [None])
        except Exception:  # connection lost: every open stream fails
            pass
        finally:
            if not self._user_data.done():
                self._user_data.set_exception(WcsError("connection closed"))
            for session in list(self._sessions.values()):
                if session.status not in TERMINAL:
                    session._on_status({"status": "FAILED", "info": "connection closed"})

    async def _dispatch(self, message: str, data: list[Any]) -> None:
        first = data[0] if data else None
        if message == "ping":
            await self._send("pong", None)
        elif message == "getUserData":
            if not self._user_data.done():
                self._user_data.set_result(first if isinstance(first, dict) else {})
        elif message == "setRemoteSDP" and len(data) >= 2:
            session = self._sessions.get(str(data[0]))
            if session is not None and not session._answer.done():
                session._answer.set_result(str(data[1]))
        elif message in ("notifyStreamStatusEvent", "fail") and isinstance(first, dict):
            sid = first.get("mediaSessionId") or first.get("id")
            session = self._sessions.get(str(sid))
            if session is not None:
                session._on_status(first)
        elif message in ("outboundVideoRate", "inboundVideoRate") and isinstance(first, dict):
            session = self._sessions.get(str(first.get("mediaSessionId")))
            if session is not None:
                session.rates.append(first)

    async def publish(self, name: str, tracks: list[MediaStreamTrack]) -> StreamSession:
        session = StreamSession(self, name, published=True)
        self._sessions[session.media_session_id] = session
        for track in tracks:
            transceiver = session.pc.addTransceiver(track, direction="sendonly")
            if track.kind == "video":
                codecs = RTCRtpSender.getCapabilities("video").codecs
                transceiver.setCodecPreferences([c for c in codecs if c.mimeType == "video/H264"])
        kinds = {t.kind for t in tracks}
        await session._negotiate(
            "publishStream", {"hasVideo": "video" in kinds, "hasAudio": "audio" in kinds}
        )
        return session

    async def play(self, name: str) -> StreamSession:
        session = StreamSession(self, name, published=False)
        self._sessions[session.media_session_id] = session
        session.pc.addTransceiver("audio", direction="recvonly")
        session.pc.addTransceiver("video", direction="recvonly")
        await session._negotiate("playStream", {"hasVideo": True, "hasAudio": True})
        return session

    async def close(self) -> None:
        for session in list(self._sessions.values()):
            with contextlib.suppress(Exception):
                await session.pc.close()
        self._sessions.clear()
        with contextlib.suppress(Exception):
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


def load_client_class(which: str) -> Any:
    """`gateway.wcs.client.WcsClient` ("gateway"), this module's ("builtin"), or "auto"."""
    if which in ("auto", "gateway"):
        try:
            from gateway.wcs.client import WcsClient

            return WcsClient
        except ImportError:
            if which == "gateway":
                raise
    return BuiltinWcsClient
