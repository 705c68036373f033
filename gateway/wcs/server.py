"""The WCS WebSocket server: a thin I/O layer around `Session`.

Each connection feeds client frames to its Session and carries out the outputs: frames go
to one ordered outbox, media actions become WebRTC publishers and viewers. Media callbacks
come back through the same `_dispatch`, so everything a client sees is in causal order.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import socket
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from gateway import __version__
from gateway.access import AccessPolicy, AccessRequest, Action, OpenAccess, token_of
from gateway.log import get_logger
from gateway.media.rates import VideoRates
from gateway.media.registry import (
    StreamControlError,
    StreamNameInUse,
    StreamNameReserved,
    StreamRegistry,
    StreamUnavailable,
    Viewing,
)
from gateway.media.sinks.webrtc import WebRtcViewer
from gateway.media.sources.webrtc import WebRtcPublisher
from gateway.media.stream import Stream
from gateway.media.thumbnails import ThumbnailUnavailable
from gateway.media.webrtc.peer import RtcSettings
from gateway.media.webrtc.sdp import OfferError
from gateway.net_limits import LISTEN_BACKLOG, ConnectionLimits
from gateway.tasks import TaskSet
from gateway.wcs import messages as m
from gateway.wcs.session import (
    CONTROL_EVENTS,
    INFO_NAME_IN_USE,
    INFO_NOT_FOUND,
    AuthorizeConnection,
    Close,
    ControlStream,
    Output,
    QueryAvailable,
    RelayStreamEvent,
    Send,
    Session,
    SessionLimits,
    StartPlay,
    StartPublish,
    StopMedia,
    TakeSnapshot,
)

log = get_logger(__name__)

INFO_NAME_RESERVED = "Stream name belongs to a device camera"

OUTBOX_LIMIT = 1000
MediaEndpoint = WebRtcPublisher | WebRtcViewer


class WcsServer:
    def __init__(
        self,
        registry: StreamRegistry,
        settings: RtcSettings,
        *,
        host: str,
        port: int,
        max_frame_bytes: int,
        ping_interval: float,
        limits: SessionLimits,
        access: AccessPolicy | None = None,
        record: Callable[[Stream], object] | None = None,
        tls: ssl.SSLContext | None = None,
        snapshot: Callable[[str], Awaitable[bytes]] | None = None,
        republish: Callable[[str, str], Awaitable[object]] | None = None,
        connection_limits: ConnectionLimits | None = None,
        telemetry_rate: float = 10.0,
        sock: socket.socket | None = None,
    ) -> None:
        self.sock = sock  # a listening socket to accept on (workers share one), else host:port
        # The most telemetry messages a player gets per second (it may ask for fewer).
        self.telemetry_rate = telemetry_rate
        # Pushes a live stream to an RTMP server (publishStream with `rtmpUrl`); it stops by
        # itself when the stream ends.
        self.republish = republish
        self.snapshot = snapshot  # a PNG of a stream (raises ThumbnailUnavailable)
        self.tls = tls  # wss:// when set
        self.access = access or OpenAccess()
        self.record = record  # starts recording a stream (publishStream with record: true)
        self.registry = registry
        self.settings = settings
        self.host, self.port = host, port
        self.max_frame_bytes = max_frame_bytes
        self.ping_interval = ping_interval
        self.limits = limits
        self.connection_limits = connection_limits
        self.connections: set[Connection] = set()
        self._server: Server | None = None

    async def start(self) -> None:
        address: dict[str, Any] = (
            {"sock": self.sock} if self.sock is not None else {"host": self.host, "port": self.port}
        )
        self._server = await serve(
            self._handle,
            **address,
            create_connection=self._guarded_connection(),
            ssl=self.tls,
            max_size=self.max_frame_bytes,
            # The WCS protocol has its own ping/pong messages; no WebSocket-level pings.
            ping_interval=None,
            compression=None,
            backlog=LISTEN_BACKLOG,  # passed on to loop.create_server
        )
        log.info("wcs_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _guarded_connection(self) -> Any:
        """websockets' connection factory, behind the per-address limit (None: no limit)."""
        limits = self.connection_limits
        if limits is None:
            return None
        limits.register("websocket")

        def connection(*args: Any, **kwargs: Any) -> asyncio.Protocol:
            return limits.guard("websocket", ServerConnection(*args, **kwargs))

        return connection

    def media_sessions(self) -> list[tuple[str, m.StreamDescription]]:
        """Every open media session: its connection's id and its description."""
        return [
            (connection.id, media.description)
            for connection in self.connections
            for media in connection.session.media.values()
        ]

    async def rates(self, media_session_id: str) -> VideoRates | None:
        """The figures of a media session's video (as in its 1 Hz rate messages)."""
        for connection in self.connections:
            endpoint = connection.media.get(media_session_id)
            if endpoint is not None:
                return await endpoint.rates()
        return None

    def terminate(self, media_session_id: str) -> bool:
        """End a media session as if its client had stopped it; False if there is none."""
        for connection in self.connections:
            if media_session_id in connection.session.media:
                connection.dispatch(connection.session.terminate(media_session_id))
                return True
        return False

    async def _handle(self, ws: ServerConnection) -> None:
        connection = Connection(self, ws)
        self.connections.add(connection)
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)


class PlayerEvents:
    """What a viewer's stream and peer tell the session of the player's connection."""

    def __init__(self, connection: Connection, media_session_id: str, stream: Stream) -> None:
        self._connection = connection
        self._msid = media_session_id
        self._stream = stream

    def on_started(self) -> None:
        c, s = self._connection, self._stream
        out = c.session.media_started(
            self._msid,
            audio_codec=s.audio_codec.name if s.audio_codec else None,
            video_codec=s.video_codec.name if s.video_codec else None,
            width=s.width,
            height=s.height,
        )
        if s.width and s.height:
            out += c.session.video_format(self._msid, s.width, s.height)
        c.dispatch(out)
        c.log.info("playing", stream=s.name, media_session=self._msid, keyframe_cached=s.keyframe is not None)
        viewer = c.media.get(self._msid)
        if isinstance(viewer, WebRtcViewer):
            viewer.telemetry_joined()

    def on_failed(self, info: str) -> None:
        self._connection.log.info(
            "play_failed", stream=self._stream.name, media_session=self._msid, info=info
        )
        self._connection.dispatch(self._connection.session.media_failed(self._msid, info))

    def on_video_format(self, width: int, height: int) -> None:
        self._connection.dispatch(self._connection.session.video_format(self._msid, width, height))

    def on_stream_event(self, event_type: str, payload: Any) -> None:
        self._connection.dispatch(self._connection.session.stream_event(self._msid, event_type, payload))

    def on_stream_end(self, info: str | None) -> None:
        session = self._connection.session
        if info is None:
            self._connection.dispatch(session.publisher_stopped(self._msid))
        else:
            self._connection.dispatch(session.media_failed(self._msid, info))


class Connection:
    def __init__(self, server: WcsServer, ws: ServerConnection) -> None:
        self.server = server
        self.ws = ws
        self.id = uuid.uuid4().hex[:12]
        remote = ws.remote_address or ("?", 0)
        local = ws.local_address or ("?", 0)
        self.session = Session(
            session_id=self.id,
            auth_token=f"/{remote[0]}:{remote[1]}/{local[0]}:{local[1]}",
            version=f"skyrelay-{__version__}",
            limits=server.limits,
        )
        self.media: dict[str, MediaEndpoint] = {}
        self.streams: dict[str, Stream] = {}  # published by this connection, by media session
        self.starting: dict[str, asyncio.Future[None]] = {}  # players waiting for their streams
        self.viewings: dict[str, Viewing] = {}  # players' holds on their streams, by media session
        self.rtmp_urls: dict[str, str] = {}  # publishers to republish once live: msid -> URL
        self.outbox: asyncio.Queue[str] = asyncio.Queue(OUTBOX_LIMIT)
        self.too_slow = False  # the outbox overflowed: closing, later frames are dropped
        self.log = log.bind(session=self.id)
        self.tasks = TaskSet("wcs_connection", self.log)

    def describe(self) -> dict[str, Any]:
        """This connection as the REST API lists it."""
        return {
            "sessionId": self.id,
            "appKey": "defaultApp",
            "remoteAddress": str(self.ws.remote_address),
            "state": self.session.state.name,
            "mediaSessions": sorted(self.session.media),
        }

    async def run(self) -> None:
        self.log.info("client_connected", remote=str(self.ws.remote_address))
        writer = asyncio.create_task(self._write())
        ticker = asyncio.create_task(self._tick())
        try:
            async for frame in self.ws:
                if isinstance(frame, bytes):
                    self.dispatch(self.session.receive_binary())
                else:
                    self.dispatch(self.session.receive_text(frame))
                if self.too_slow:
                    break  # being closed: what it still sends would only be answered into the void
        except ConnectionClosed:
            pass
        finally:
            ticker.cancel()
            self.dispatch(self.session.close())
            await self._drain_tasks()
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await asyncio.gather(ticker, return_exceptions=True)
            self.log.info("client_disconnected", code=self.ws.close_code)

    # --- outputs ----------------------------------------------------------------------------

    def dispatch(self, outputs: list[Output]) -> None:
        for out in outputs:
            match out:
                case Send(text):
                    self._send(text)
                case StartPublish(request):
                    self._authorized(Action.PUBLISH, request, self._start_publish)
                case StartPlay(request):
                    self._authorized(Action.PLAY, request, self._start_play)
                case TakeSnapshot():
                    self._spawn(self._take_snapshot(out))
                case AuthorizeConnection(fields):
                    self._spawn(self._authorize_connection(fields))
                case StopMedia(msid):
                    self._stop_media(msid)
                case RelayStreamEvent(name, event_type, payload):
                    stream = self.server.registry.get(name)
                    if stream is not None:
                        stream.send_event(event_type, payload)
                case ControlStream():
                    self._spawn(self._control(out))
                case QueryAvailable(msid, name):
                    found = self.server.registry.available(name)
                    self.dispatch(self.session.available(msid, found, "" if found else INFO_NOT_FOUND))
                case Close(code, reason):
                    self.log.info("client_dropped", reason=reason)
                    self._spawn(self.ws.close(code, reason))

    async def _take_snapshot(self, request: TakeSnapshot) -> None:
        msid = request.media_session_id
        if self.server.snapshot is None:
            self.dispatch(self.session.snapshot_failed(msid, "snapshots are off"))
            return
        try:
            png = await self.server.snapshot(self.server.registry.resolve(request.stream_name))
        except ThumbnailUnavailable as exc:
            self.dispatch(self.session.snapshot_failed(msid, str(exc)))
            return
        self.dispatch(self.session.snapshot_taken(msid, base64.b64encode(png).decode()))

    async def _authorize_connection(self, fields: dict[str, Any]) -> None:
        request = AccessRequest(Action.CONNECT, None, token_of(fields), self.id, fields)
        reason = await self.server.access.check(request)
        if reason is None:
            self.dispatch(self.session.connection_allowed())
        else:
            self.log.info("connection_refused", reason=reason)
            self.dispatch(self.session.connection_refused(reason))

    def _authorized(
        self, action: Action, request: m.PublishStream | m.PlayStream, start: Callable[[Any], None]
    ) -> None:
        """Start ``request`` once the access policy allows it (at once when it is open)."""
        if isinstance(self.server.access, OpenAccess):
            start(request)
            return

        async def check() -> None:
            token = token_of(request.fields) or token_of(self.session.client)
            details = {k: v for k, v in request.fields.items() if k != "sdp"}
            access = AccessRequest(action, request.name, token, self.id, details)
            reason = await self.server.access.check(access)
            msid = request.media_session_id
            if msid not in self.session.media:
                return  # stopped while we asked
            if reason is None:
                start(request)
            else:
                self.log.info("access_refused", action=str(action), stream=request.name, reason=reason)
                self.dispatch(self.session.media_failed(msid, reason))

        self._spawn(self._media_task(request.media_session_id, check))

    async def _control(self, request: ControlStream) -> None:
        """Carry out a player's camera control; every viewer of the stream hears of a
        change, only the asker of a refusal."""
        registry = self.server.registry
        try:
            await registry.control(request.stream_name, request.action, request.value)
        except StreamControlError as exc:
            self.log.info("stream_control_refused", stream=request.stream_name, info=exc.info)
            self._send(m.fail("sendStreamEvent", exc.info, request.media_session_id))
            return
        stream = registry.find(registry.resolve(request.stream_name))
        if stream is not None:
            field = CONTROL_EVENTS[request.event_type][1][0]
            stream.send_event(request.event_type, {field: request.value, "status": "OK"})

    def _send(self, text: str) -> None:
        if self.too_slow:
            return  # being closed already: one warning, one close, whatever it still sends
        try:
            self.outbox.put_nowait(text)
        except asyncio.QueueFull:
            # A client that reads nothing must not grow the gateway's memory.
            self.too_slow = True
            self.log.warning("client_too_slow", queued=self.outbox.qsize())
            self._spawn(self.ws.close(1008, "client does not read its messages"))

    async def _write(self) -> None:
        while True:
            text = await self.outbox.get()
            try:
                await self.ws.send(text)
            except ConnectionClosed:
                return

    async def _media_task(self, msid: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run a play's or publish's work; whatever it raises ends that media session with
        FAILED and the error as its info, so that every play gets a status and frees its slot.
        (``work`` is made here, so a task cancelled before it ran leaves no coroutine behind.)"""
        try:
            await work()
        except Exception as exc:
            self.log.exception("media_task_failed", media_session=msid)
            self.dispatch(self.session.media_failed(msid, f"{type(exc).__name__}: {exc}"[:300]))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        return self.tasks.spawn(coro)

    async def _drain_tasks(self) -> None:
        for _ in range(10):  # closing media may start more tasks; bounded
            if not self.tasks:
                return
            await self.tasks.wait(timeout=10)

    # --- media --------------------------------------------------------------------------------

    def _start_publish(self, request: m.PublishStream) -> None:
        msid = request.media_session_id
        try:
            stream = self.server.registry.claim(request.name)
        except StreamNameReserved:
            # A drone camera's (or rtsp://) name: a publisher there would pose as the device.
            self.dispatch(self.session.media_failed(msid, INFO_NAME_RESERVED))
            return
        except StreamNameInUse:
            self.dispatch(self.session.media_failed(msid, INFO_NAME_IN_USE))
            return
        publisher = WebRtcPublisher(
            stream,
            self.server.settings,
            on_started=lambda: self._publisher_started(msid, stream),
            on_failed=lambda info: self._publisher_failed(msid, stream, info),
        )
        self.media[msid] = publisher
        self.streams[msid] = stream
        rtmp_url = request.fields.get("rtmpUrl")
        if isinstance(rtmp_url, str) and rtmp_url:
            self.rtmp_urls[msid] = rtmp_url
        self.log.info("publish_requested", stream=request.name, media_session=msid)
        tcp_only = request.transport == "TCP"
        answer = functools.partial(self._answer, msid, publisher, request.sdp, tcp_only=tcp_only)
        self._spawn(self._media_task(msid, answer))

    def _publisher_started(self, msid: str, stream: Stream) -> None:
        self.dispatch(
            self.session.media_started(
                msid,
                audio_codec=stream.audio_codec.name if stream.audio_codec else None,
                video_codec=stream.video_codec.name if stream.video_codec else None,
                width=stream.width,
                height=stream.height,
            )
        )
        self.log.info("publishing", stream=stream.name, media_session=msid)
        media = self.session.media.get(msid)
        rtmp_url = self.rtmp_urls.pop(msid, None)
        if rtmp_url and self.server.republish is not None:
            self._spawn(self._republish(stream, rtmp_url))
        if media is not None and media.description.record and self.server.record is not None:
            try:
                self.server.record(stream)
            except ValueError as exc:  # a name that cannot be a directory name
                self.log.warning("recording_refused", stream=stream.name, reason=str(exc))

    async def _republish(self, stream: Stream, url: str) -> None:
        assert self.server.republish is not None
        try:
            await self.server.republish(stream.name, url)
        except (ValueError, LookupError) as exc:  # a bad URL, a stream gone already
            self.log.warning("republish_refused", stream=stream.name, reason=str(exc)[:200])

    def _publisher_failed(self, msid: str, stream: Stream, info: str) -> None:
        self.log.info("publish_failed", stream=stream.name, media_session=msid, info=info)
        self.dispatch(self.session.media_failed(msid, info))

    def _start_play(self, request: m.PlayStream) -> None:
        # A drone camera's source starts now (the player waits, PENDING) or runs already;
        # either way its viewing counts this player, to stop only after the last one.
        msid = request.media_session_id
        task = self._spawn(self._media_task(msid, lambda: self._open_play(request)))
        self.starting[msid] = task
        task.add_done_callback(lambda _: self.starting.pop(msid, None))

    async def _open_play(self, request: m.PlayStream) -> None:
        msid = request.media_session_id
        viewing = self.viewings[msid] = self.server.registry.viewing(request.name)
        if viewing.on_demand:
            self.log.info("play_on_demand", stream=request.name, media_session=msid)
        try:
            stream = await viewing.open()
        except StreamUnavailable as exc:
            self.dispatch(self.session.media_failed(msid, exc.info))
            return
        self._play(request, stream)

    def _play(self, request: m.PlayStream, stream: Stream) -> None:
        msid = request.media_session_id
        viewer = WebRtcViewer(stream, self.server.settings, PlayerEvents(self, msid, stream))
        self.media[msid] = viewer
        self.log.info("play_requested", stream=request.name, media_session=msid)
        if request.telemetry:
            rate = min(self.server.telemetry_rate, request.telemetry_rate or self.server.telemetry_rate)
            viewer.start_telemetry(
                self.server.registry.telemetry,
                rate,
                send_text=lambda payload: self.dispatch(self.session.telemetry(msid, payload)),
            )
        audio = stream.audio_codec.name if stream.audio_codec and request.has_audio else None
        tcp_only = request.transport == "TCP"
        answer = functools.partial(
            self._answer, msid, viewer, request.sdp, audio, tcp_only=tcp_only, data_channel=request.telemetry
        )
        self._spawn(self._media_task(msid, answer))

    async def _answer(
        self,
        msid: str,
        media: MediaEndpoint,
        sdp: str,
        audio_codec: str | None = None,
        tcp_only: bool = False,
        data_channel: bool = False,
    ) -> None:
        try:
            if isinstance(media, WebRtcViewer):
                answer = await media.accept(sdp, tcp_only=tcp_only, data_channel=data_channel)
            else:
                answer = await media.accept(sdp, tcp_only=tcp_only)
        except OfferError as exc:
            self.dispatch(self.session.media_failed(msid, str(exc)))
            return
        except Exception as exc:
            if self.media.get(msid) is not media:
                return  # stopped while negotiating
            self.log.exception("negotiation_failed", media_session=msid)
            self.dispatch(self.session.media_failed(msid, f"Negotiation failed: {exc}"[:300]))
            return
        self.dispatch(self.session.media_answer(msid, answer, audio_codec))

    def _stop_media(self, msid: str) -> None:
        starting = self.starting.pop(msid, None)
        if starting is not None:
            starting.cancel()  # its `want` tells the on-demand source
        viewing = self.viewings.pop(msid, None)
        if viewing is not None:
            viewing.close()
        media = self.media.pop(msid, None)
        stream = self.streams.pop(msid, None)
        if stream is not None:
            self.server.registry.release(stream)  # players hear "Stopped by publisher stop"
        if media is not None:
            kind = "publisher" if isinstance(media, WebRtcPublisher) else "viewer"
            self.log.info(
                "media_stopped", stream=media.stream.name, media_session=msid, kind=kind, **media.summary()
            )
            self._spawn(media.close())

    # --- time ---------------------------------------------------------------------------------

    async def _tick(self) -> None:
        """Rate metrics once a second; a ping every ping interval."""
        next_ping = time.monotonic() + self.server.ping_interval
        while True:
            await asyncio.sleep(min(1.0, self.server.ping_interval))
            for msid, media in list(self.media.items()):
                try:
                    rates = await media.rates()
                except Exception:
                    self.log.exception("rates_failed", media_session=msid)
                    continue
                self.dispatch(self.session.video_rate(msid, rates))
            if time.monotonic() >= next_ping:
                next_ping += self.server.ping_interval
                self.dispatch(self.session.ping_due())
