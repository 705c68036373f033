"""A raw-protocol WCS client on aiortc, speaking to skyrelay (or WCS) as the mobile SDKs do.

Used by the integration tests and the fan-out benchmark. It answers the
server's pings, routes every message that names a media session to that stream, and keeps
a log of everything it received.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from websockets.asyncio.client import ClientConnection, connect

TERMINAL = ("FAILED", "STOPPED", "UNPUBLISHED")

# Called with the server's answer before it is applied (a test adds an ICE-TCP path there).
BeforeAnswer = Callable[["ClientStream", str], Awaitable[None]]


class WcsError(Exception):
    pass


class ClientStream:
    """One publish or play: its peer connection and everything the server said about it."""

    def __init__(self, client: WcsClient, media_session_id: str, name: str, published: bool) -> None:
        self.client = client
        self.media_session_id = media_session_id
        self.name = name
        self.published = published
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.statuses: list[dict[str, Any]] = []
        # When each status first came (time.time_ns(), as it was read): the fan-out
        # benchmark's time from PLAYING to the first keyframe.
        self.status_times: dict[str, int] = {}
        self.rates: list[dict[str, Any]] = []
        self.events: list[tuple[str, Any]] = []  # (message name, data) of anything else
        self.tracks: list[MediaStreamTrack] = []
        # Data channels the server opened (the telemetry channel), and what came on them.
        self.data_channels: list[RTCDataChannel] = []
        self.data_messages: list[tuple[str, str | bytes]] = []  # (channel label, message)
        self.answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._changed = asyncio.Event()
        self.pc.on("track", self.tracks.append)
        self.pc.on("datachannel", self._data_channel)

    def _data_channel(self, channel: RTCDataChannel) -> None:
        self.data_channels.append(channel)

        def message(data: str | bytes) -> None:
            self.data_messages.append((channel.label, data))
            self._changed.set()

        channel.on("message", message)
        self._changed.set()

    @property
    def status(self) -> str | None:
        return self.statuses[-1]["status"] if self.statuses else None

    @property
    def info(self) -> str | None:
        return self.statuses[-1].get("info") if self.statuses else None

    def _receive(self, message: str, data: list[Any]) -> None:
        if message == "notifyStreamStatusEvent":
            self.statuses.append(data[0])
            self.status_times.setdefault(str(data[0].get("status")), time.time_ns())
            if data[0].get("status") in TERMINAL and not self.answer.done():
                self.answer.set_exception(WcsError(f"{data[0]['status']}: {data[0].get('info')}"))
        elif message in ("inboundVideoRate", "outboundVideoRate"):
            self.rates.append(data[0])
        elif message == "setRemoteSDP":
            if not self.answer.done():
                self.answer.set_result(data[1])
        else:
            self.events.append((message, data))
        self._changed.set()

    async def wait_status(self, *statuses: str, timeout: float = 20.0) -> dict[str, Any]:
        """Wait until the latest status is one of ``statuses``; fail early on another
        terminal status."""
        async with asyncio.timeout(timeout):
            while True:
                if self.statuses:
                    last = self.statuses[-1]
                    if last["status"] in statuses:
                        return last
                    if last["status"] in TERMINAL:
                        raise WcsError(f"stream {self.name!r} is {last['status']}: {last.get('info')}")
                self._changed.clear()
                await self._changed.wait()

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def stop(self, wait: bool = True) -> dict[str, Any] | None:
        """unPublishStream / stopStream, then wait for the terminal status."""
        message = "unPublishStream" if self.published else "stopStream"
        await self.client.send(
            message,
            {
                "mediaSessionId": self.media_session_id,
                "name": self.name,
                "published": self.published,
                "hasVideo": True,
                "hasAudio": True,
                "status": self.status or "PENDING",
                "record": False,
            },
        )
        try:
            if wait:
                return await self.wait_status(*TERMINAL, timeout=10)
            return None
        finally:
            await self.pc.close()


class WcsClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.user_data: dict[str, Any] | None = None
        self.streams: dict[str, ClientStream] = {}
        self.messages: list[tuple[str, list[Any]]] = []
        self.pings = 0
        self.answer_pings = True
        self._established = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls, url: str, *, timeout: float = 10.0, tls: ssl.SSLContext | None = None, **fields: Any
    ) -> WcsClient:
        """Open a session (``tls``: the context to check a wss:// server with)."""
        ws = await connect(url, max_size=None, open_timeout=timeout, ping_interval=None, ssl=tls)
        client = cls(ws)
        await client.send(
            "connection",
            {
                "appKey": "defaultApp",
                "mediaProviders": ["WebRTC"],
                "clientVersion": "skyrelay-client",
                "clientOSVersion": "python",
                "clientBrowserVersion": "aiortc",
                **fields,
            },
        )
        async with asyncio.timeout(timeout):
            client.user_data = await client._established
        return client

    async def send(self, message: str, *data: Any) -> None:
        await self.ws.send(orjson.dumps({"message": message, "data": list(data)}).decode())

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                msg = orjson.loads(frame)
                name, data = msg["message"], msg.get("data") or [None]
                self.messages.append((name, data))
                if name == "getUserData" and not self._established.done():
                    self._established.set_result(data[0])
                elif name == "ping":
                    self.pings += 1
                    if self.answer_pings:
                        await self.send("pong", None)
                else:
                    stream = self._stream_for(name, data)
                    if stream is not None:
                        stream._receive(name, data)
        except Exception as exc:  # closed connection or garbage: wake waiters
            if not self._established.done():
                self._established.set_exception(WcsError(f"connection failed: {exc!r}"))

    def _stream_for(self, name: str, data: list[Any]) -> ClientStream | None:
        first = data[0] if data else None
        if name in ("setRemoteSDP", "notifyAudioCodec") and isinstance(first, str):
            return self.streams.get(first)
        if isinstance(first, dict):
            msid = first.get("mediaSessionId") or first.get("id")
            if isinstance(msid, str):
                return self.streams.get(msid)
        return None

    def received(self, name: str) -> list[list[Any]]:
        return [data for message, data in self.messages if message == name]

    async def wait_message(
        self, name: str, matches: Callable[[list[Any]], bool] = lambda _: True, timeout: float = 10.0
    ) -> list[Any]:
        """The data of the first ``name`` message (received so far or later) that matches."""
        async with asyncio.timeout(timeout):
            while True:
                found = next((data for data in self.received(name) if matches(data)), None)
                if found is not None:
                    return found
                await asyncio.sleep(0.05)

    async def publish(
        self,
        name: str,
        tracks: Sequence[MediaStreamTrack],
        *,
        video_codec: str | None = None,
        audio_codec: str | None = None,
        timeout: float = 20.0,
        before_answer: BeforeAnswer | None = None,
        **fields: Any,
    ) -> ClientStream:
        """Offer ``tracks``, each kind only in the codec given ("H264", "VP8"; "opus",
        "PCMU", "PCMA") if any, and apply the server's answer. Raises WcsError if refused."""
        stream = self._new_stream(name, published=True)
        only = {"video": video_codec, "audio": audio_codec}
        for track in tracks:
            transceiver = stream.pc.addTransceiver(track, direction="sendonly")
            codec = only.get(track.kind)
            if codec:
                wanted = (f"{track.kind}/{codec}".lower(), f"{track.kind}/rtx")
                codecs = RTCRtpSender.getCapabilities(track.kind).codecs
                transceiver.setCodecPreferences([c for c in codecs if c.mimeType.lower() in wanted])
        kinds = {t.kind for t in tracks}
        await self._negotiate(
            stream, "publishStream", timeout, {"record": False, **fields}, kinds, before_answer
        )
        return stream

    async def play(
        self,
        name: str,
        *,
        kinds: Sequence[str] = ("audio", "video"),
        timeout: float = 20.0,
        before_answer: BeforeAnswer | None = None,
        data_channel: bool = False,
        **fields: Any,
    ) -> ClientStream:
        """Ask to play ``name`` with recvonly transceivers (``fields`` go into the request,
        e.g. ``custom``). ``data_channel``: open one before the offer, so that the offer has
        an m=application section and the server may open its own (telemetry). Raises
        WcsError if refused."""
        stream = self._new_stream(name, published=False)
        for kind in kinds:
            stream.pc.addTransceiver(kind, direction="recvonly")
        if data_channel:
            stream.pc.createDataChannel("client")
        await self._negotiate(
            stream, "playStream", timeout, {"record": False, **fields}, set(kinds), before_answer
        )
        return stream

    def _new_stream(self, name: str, published: bool) -> ClientStream:
        stream = ClientStream(self, str(uuid.uuid1()), name, published)
        self.streams[stream.media_session_id] = stream
        return stream

    async def _negotiate(
        self,
        stream: ClientStream,
        message: str,
        timeout: float,
        fields: dict[str, Any],
        kinds: set[str],
        before_answer: BeforeAnswer | None = None,
    ) -> None:
        await stream.pc.setLocalDescription(await stream.pc.createOffer())
        await self.send(
            message,
            {
                "mediaSessionId": stream.media_session_id,
                "name": stream.name,
                "published": stream.published,
                "hasVideo": "video" in kinds,
                "hasAudio": "audio" in kinds,
                "status": "PENDING",
                "mediaProvider": "WebRTC",
                "sdp": stream.pc.localDescription.sdp,
                **fields,
            },
        )
        try:
            async with asyncio.timeout(timeout):
                answer = await stream.answer
        except BaseException:
            await stream.pc.close()
            raise
        if before_answer is not None:
            await before_answer(stream, answer)
        await stream.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    async def close(self) -> None:
        for stream in list(self.streams.values()):
            await stream.pc.close()
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
