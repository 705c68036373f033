"""The RTSP server: every live H.264 Stream of the registry played at
``rtsp://host:port/{name}`` (each playing session an `RtspViewer`, gateway.media.sinks.rtsp),
and publishers' ANNOUNCE/RECORD to the same URLs becoming Streams (`RtspPush`,
gateway.media.sources.rtsp_push), with RTP interleaved on the RTSP connection or over UDP
from one port pair shared by all sessions. A thin I/O layer around the sans-I/O
`RtspServerConnection`: one task per connection reads requests.

A session lives as long as its RTSP connection, and ends after ``session_timeout`` seconds
without a request, interleaved data, or a datagram from its client ports (RTCP receiver
reports of a UDP player, RTP of a UDP publisher).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import urllib.parse
from collections.abc import Callable
from urllib.parse import quote

from gateway.log import get_logger
from gateway.media.h264 import parameter_sets
from gateway.media.registry import (
    INFO_NAME_RESERVED,
    StreamNameInUse,
    StreamNameReserved,
    StreamRegistry,
    StreamUnavailable,
    Viewing,
)
from gateway.media.rtsp.auth import ServerAuth
from gateway.media.rtsp.message import Request, RtspError, Transport
from gateway.media.rtsp.record import AudioUnit
from gateway.media.rtsp.rtp import AccessUnit
from gateway.media.rtsp.sdp import AUDIO_TRACK, VIDEO_TRACK, build_h264_sdp
from gateway.media.rtsp.server import (
    AnnounceRequested,
    DescribeRequested,
    Event,
    PlayRequested,
    RecordRequested,
    RtspServerConnection,
    SetupRequested,
    TeardownRequested,
)
from gateway.media.sinks.rtsp import (
    MAX_UNSENT_BYTES,
    VIEWER_QUEUE_FRAMES,
    Address,
    InterleavedOutput,
    RtpOutput,
    RtspViewer,
    UdpOutput,
    served_audio,
)
from gateway.media.sources.rtsp import open_udp_pair
from gateway.media.sources.rtsp_push import AuthorizePublish, RtspPush
from gateway.media.stream import Stream
from gateway.net_limits import LISTEN_BACKLOG, ConnectionLimits
from gateway.tasks import TaskSet
from gateway.watchdog import ReadWatchdog

log = get_logger(__name__)

# The shared UDP socket's kernel buffer: bursts of keyframes to many players at once.
UDP_SEND_BUFFER = 4 * 1024 * 1024
# How long a publish or play authorization hook may take before the request is refused (503).
AUTHORIZATION_TIMEOUT = 10.0
# A drone camera's start (MQTT command, retries, the push) has its own timeouts; this only
# bounds a player's wait if a source never answers.
ON_DEMAND_START_TIMEOUT = 120.0

_TRACK_SUFFIX = re.compile(r"/trackID=\d{1,3}$")


class _UdpPorts:
    """The server's RTP/RTCP socket pair, shared by every UDP session: datagrams go to the
    session registered for their sender's address; others are counted and dropped."""

    def __init__(self) -> None:
        self.rtp: asyncio.DatagramTransport | None = None
        self.rtcp: asyncio.DatagramTransport | None = None
        self.ports = (0, 0)
        self.unknown = 0  # datagrams from nobody's client port (NAT punches, strays)
        self._handlers: tuple[dict[Address, Callable[[bytes], None]], ...] = ({}, {})

    async def open(self, host: str, port: int) -> None:
        self.rtp, self.rtcp = await open_udp_pair(
            host,
            port,
            lambda data, addr: self._received(0, data, addr),
            lambda data, addr: self._received(1, data, addr),
        )
        for transport in (self.rtp, self.rtcp):
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_SEND_BUFFER)
        self.ports = (self.rtp.get_extra_info("sockname")[1], self.rtcp.get_extra_info("sockname")[1])

    def close(self) -> None:
        for transport in (self.rtp, self.rtcp):
            if transport is not None:
                transport.close()

    def register(self, rtcp: bool, address: Address, handler: Callable[[bytes], None]) -> None:
        self._handlers[rtcp][address] = handler

    def unregister(self, rtcp: bool, address: Address, handler: Callable[[bytes], None]) -> None:
        if self._handlers[rtcp].get(address) is handler:
            del self._handlers[rtcp][address]

    def _received(self, rtcp: int, data: bytes, address: Address) -> None:
        handler = self._handlers[rtcp].get(address)
        if handler is None:
            self.unknown += 1
            return
        handler(data)


class RtspServer:
    def __init__(
        self,
        registry: StreamRegistry,
        host: str,
        port: int,
        *,
        credentials: tuple[str, str] | None = None,
        session_timeout: int = 60,
        max_unsent_bytes: int = MAX_UNSENT_BYTES,
        socket_send_buffer: int | None = None,
        udp: bool = True,
        rtp_port: int = 0,
        authorize_publish: AuthorizePublish | None = None,
        authorize_play: AuthorizePublish | None = None,
        viewer_queue_frames: int = VIEWER_QUEUE_FRAMES,
        connection_limits: ConnectionLimits | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.sock = sock  # a listening socket to accept on (workers share one), else host:port
        """``rtp_port`` is the UDP RTP port (RTCP on the next one; 0: any free even pair),
        ``udp`` False answers 461 to UDP. ``authorize_publish(name, query)`` returns None to
        let a publisher ANNOUNCE ``name``, or the reason it may not (403); without it
        everyone may publish. ``authorize_play(name, query)`` does the same for players (at
        their first DESCRIBE, SETUP or PLAY of a name)."""
        self.registry = registry
        self.host, self.port = host, port
        self.credentials = credentials
        self.session_timeout = session_timeout
        self.max_unsent_bytes = max_unsent_bytes
        # The kernel's own send buffer (None: autotuned, up to megabytes) comes before the
        # bound above: a smaller one makes a stalled player skip sooner, with less delay.
        self.socket_send_buffer = socket_send_buffer
        self.rtp_port = rtp_port
        self.authorize_publish = authorize_publish
        self.authorize_play = authorize_play
        self.viewer_queue_frames = viewer_queue_frames
        self.connection_limits = connection_limits
        self.viewers: set[RtspViewer] = set()
        self.pushes: set[RtspPush] = set()
        self.udp = _UdpPorts() if udp else None
        self._server: asyncio.Server | None = None
        self._connections = TaskSet("rtsp")

    @property
    def udp_ports(self) -> tuple[int, int] | None:
        """The (RTP, RTCP) ports UDP sessions use, once started."""
        return self.udp.ports if self.udp is not None and self.udp.rtp is not None else None

    async def start(self) -> None:
        limits = self.connection_limits
        handler = self._connection if limits is None else limits.guard_streams("rtsp", self._connection)
        if self.sock is not None:
            self._server = await asyncio.start_server(handler, sock=self.sock, backlog=LISTEN_BACKLOG)
        else:
            self._server = await asyncio.start_server(handler, self.host, self.port, backlog=LISTEN_BACKLOG)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        if self.udp is not None:
            try:
                await self.udp.open(self.host, self.rtp_port)
            except OSError:
                self._server.close()
                raise
        log.info(
            "rtsp_listening",
            host=self.host,
            port=self.port,
            udp=self.udp_ports,
            auth=self.credentials is not None,
            publish_auth=self.authorize_publish is not None,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Closing the listener leaves accepted connections open: end them too.
        await self._connections.cancel()
        if self.udp is not None:
            self.udp.close()
        log.info("rtsp_stopped", port=self.port)

    def playable(self, name: str) -> Stream | None:
        stream = self.registry.get(name)
        if stream is None or stream.video_codec is None or stream.video_codec.name != "H264":
            return None
        return stream

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        await _Connection(self, reader, writer).run()

    def _content_base(self, uri: str, address: str, name: str) -> str:
        """The player's own URL of the stream (it knows how it reached us), ending in a slash
        so that ``trackID=0`` resolves below it."""
        base = uri.split("?", 1)[0]
        if not base.lower().startswith("rtsp://"):
            host = f"[{address}]" if ":" in address else address
            base = f"rtsp://{host}:{self.port}/{quote(name)}"
        else:
            base = _TRACK_SUFFIX.sub("", base.rstrip("/"))
        return base + "/"

    def _end_viewer(self, viewer: RtspViewer, reason: str) -> None:
        if viewer not in self.viewers:
            return
        self.viewers.discard(viewer)
        viewer.close()
        subscription = viewer.subscription
        log.info(
            "rtsp_play_ended",
            stream=viewer.stream.name,
            reason=reason,
            udp=viewer.udp,
            packets=viewer.packets,
            video_dropped=subscription.video.dropped if viewer.output is not None else None,
            audio_dropped=subscription.audio.dropped if viewer.audio_output is not None else None,
        )

    def _end_push(self, push: RtspPush, reason: str) -> None:
        self.pushes.discard(push)
        push.end(reason)


class _Connection:
    """One RTSP connection: its session (playing or publishing) and its UDP registrations."""

    def __init__(
        self, server: RtspServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader, self.writer = reader, writer
        self.peer = str(writer.get_extra_info("peername"))
        self.peer_host = str(writer.get_extra_info("peername", ("",))[0])
        self.address = str(writer.get_extra_info("sockname", ("0.0.0.0",))[0])
        auth = ServerAuth(*server.credentials) if server.credentials is not None else None
        self.rtsp = RtspServerConnection(
            auth=auth, session_timeout=server.session_timeout, udp=server.udp is not None
        )
        self.viewer: RtspViewer | None = None
        self.push: RtspPush | None = None
        self.allowed_plays: set[str] = set()  # names this connection may play
        # On-demand sources (drone cameras) this player counts for, by name.
        self.viewings: dict[str, Viewing] = {}
        self.loop = asyncio.get_running_loop()
        self.last_activity = self.loop.time()
        self._registered: list[tuple[bool, Address, Callable[[bytes], None]]] = []

    async def run(self) -> None:
        server, rtsp, writer = self.server, self.rtsp, self.writer
        sock = writer.get_extra_info("socket")
        if server.socket_send_buffer is not None and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, server.socket_send_buffer)
        reason = "closed by the peer"
        # UDP datagrams of the session keep it alive as well as the connection does.
        watchdog = ReadWatchdog(
            self.reader, writer.transport, lambda: self.last_activity + server.session_timeout
        )
        try:
            while not rtsp.closed:
                data = await self.reader.read(65536)
                if watchdog.expired:
                    reason = "session timeout"
                    break
                if not data:
                    break
                self.last_activity = self.loop.time()
                try:
                    events = rtsp.receive_data(data)
                except RtspError as exc:
                    log.info("rtsp_bad_request", peer=self.peer, status=exc.status, error=str(exc)[:200])
                    reason = "bad request"
                    events = []
                for event in events:
                    await self._handle(event)
                self._flush()
                # Replies piling up past what RTP may (requests sent, nothing read): close.
                if writer.transport.get_write_buffer_size() > 4 * server.max_unsent_bytes:
                    reason = "not reading"
                    break
        except (ConnectionError, OSError) as exc:
            reason = str(exc)[:200] or type(exc).__name__
        except asyncio.CancelledError:
            reason = "server stopped"
        finally:
            watchdog.cancel()
            self._end(reason)
            writer.close()
            # A peer that reads nothing would hold the close (and the server's stop) forever.
            try:
                async with asyncio.timeout(2.0):
                    await writer.wait_closed()
            except (ConnectionError, OSError, TimeoutError):
                writer.transport.abort()

    def _flush(self) -> None:
        out = self.rtsp.data_to_send()
        if out and not self.writer.transport.is_closing():
            self.writer.write(out)

    def _end(self, reason: str) -> None:
        """The session is over: stop sending, end a push, forget the UDP addresses."""
        udp = self.server.udp
        if udp is not None:
            for rtcp, address, handler in self._registered:
                udp.unregister(rtcp, address, handler)
        self._registered = []
        if self.viewer is not None:
            self.server._end_viewer(self.viewer, reason)
            self.viewer = None
        if self.push is not None:
            self.server._end_push(self.push, reason)
            self.push = None
        for viewing in self.viewings.values():
            viewing.close()
        self.viewings = {}

    def _touch(self, data: bytes) -> None:
        """A datagram from the session's client ports (RTCP, a NAT punch): it is alive."""
        self.last_activity = self.loop.time()

    def _register(self, rtcp: bool, port: int, handler: Callable[[bytes], None]) -> None:
        udp = self.server.udp
        assert udp is not None
        address = (self.peer_host, port)
        udp.register(rtcp, address, handler)
        self._registered.append((rtcp, address, handler))

    async def _handle(self, event: Event) -> None:
        rtsp = self.rtsp
        if isinstance(event, AccessUnit | AudioUnit):
            if self.push is not None:
                self.push.media(event)
        elif isinstance(event, TeardownRequested):
            self._end("teardown")
        elif isinstance(event, AnnounceRequested):
            await self._announce(event)
        elif isinstance(event, RecordRequested):
            rtsp.accept_record(event)
            log.info("rtsp_push_recording", stream=event.name, peer=self.peer, session=rtsp.session)
        elif isinstance(event, SetupRequested) and event.record:
            self._setup(event)
        elif await self._play_allowed(event) and await self._started_on_demand(event):
            self._play_request(event)

    async def _play_allowed(self, event: Event) -> bool:
        """Ask ``authorize_play`` once per name and connection; refuse with 403 (or 503)."""
        server = self.server
        if server.authorize_play is None or not isinstance(
            event, DescribeRequested | SetupRequested | PlayRequested
        ):
            return True
        if event.name in self.allowed_plays:
            return True
        query = urllib.parse.urlsplit(event.request.uri).query
        if not await self._authorized(server.authorize_play, "play", event.name, query, event.request):
            return False
        self.allowed_plays.add(event.name)
        return True

    async def _authorized(
        self, hook: AuthorizePublish, action: str, name: str, query: str, request: Request
    ) -> bool:
        """Ask an authorization hook whether ``name`` may be played or published
        (``action``); refuse the request with 403 and the hook's reason, or with 503 when
        the hook fails or takes longer than `AUTHORIZATION_TIMEOUT`."""
        try:
            async with asyncio.timeout(AUTHORIZATION_TIMEOUT):
                refusal = await hook(name, query)
        except Exception as exc:  # the hook's failure is a refusal, not a crash
            log.warning(f"rtsp_{action}_authorization_failed", stream=name, error=repr(exc)[:200])
            self.rtsp.refuse(request, 503, f"Service Unavailable: {action} authorization failed")
            return False
        if refusal is not None:
            log.info(f"rtsp_{action}_refused", stream=name, peer=self.peer, reason=refusal[:200])
            self.rtsp.refuse(request, 403, f"Forbidden: {refusal}")
            return False
        return True

    async def _started_on_demand(self, event: Event) -> bool:
        """A drone camera (or rtsp:// name) nobody watches yet starts now, as for a WebSocket
        player: this connection counts as its viewer until it ends. False: it did not start
        (404 with the reason)."""
        registry = self.server.registry
        if not isinstance(event, DescribeRequested | SetupRequested | PlayRequested):
            return True
        if event.name in self.viewings or registry.on_demand_for(event.name) is None:
            return True
        viewing = registry.viewing(event.name)
        try:
            async with asyncio.timeout(ON_DEMAND_START_TIMEOUT):
                await viewing.open()
        except (StreamUnavailable, TimeoutError) as exc:
            reason = exc.info if isinstance(exc, StreamUnavailable) else "the source did not start in time"
            log.info("rtsp_on_demand_failed", stream=event.name, peer=self.peer, reason=reason[:200])
            self.rtsp.refuse(event.request, 404, f"Not Found: {reason}")
            return False
        self.viewings[event.name] = viewing
        return True

    async def _announce(self, event: AnnounceRequested) -> None:
        server, rtsp = self.server, self.rtsp
        if server.authorize_publish is not None and not await self._authorized(
            server.authorize_publish, "publish", event.name, event.query, event.request
        ):
            return
        try:
            push = RtspPush(server.registry, event.name, event.tracks, self.peer)
        except StreamNameReserved:
            log.info("rtsp_publish_refused", stream=event.name, peer=self.peer, reason=INFO_NAME_RESERVED)
            rtsp.refuse(event.request, 403, f"Forbidden: {INFO_NAME_RESERVED}")
            return
        except StreamNameInUse:
            log.info("rtsp_publish_refused", stream=event.name, peer=self.peer, reason="name in use")
            rtsp.refuse(event.request, 409, "Conflict: the stream already has a source")
            return
        self.push = push
        server.pushes.add(push)
        rtsp.accept_announce(event)

    def _setup(self, event: SetupRequested) -> None:
        """SETUP of a track, playing or publishing; UDP registers the client's ports."""
        rtsp, udp = self.rtsp, self.server.udp
        if not event.udp:
            rtsp.accept_setup(event)
            return
        assert udp is not None and event.transport.client_port is not None
        rtp_port, rtcp_port = event.transport.client_port
        rtsp.accept_setup(event, udp.ports)
        if event.record:
            track = event.track

            def media(data: bytes) -> None:
                self.last_activity = self.loop.time()
                for unit in rtsp.receive_rtp(track, data):
                    if self.push is not None:
                        self.push.media(unit)

            self._register(False, rtp_port, media)
        else:
            self._register(False, rtp_port, self._touch)  # NAT punches
        self._register(True, rtcp_port, self._touch)  # receiver or sender reports

    def _play_request(self, event: Event) -> None:
        server, rtsp = self.server, self.rtsp
        if not isinstance(event, DescribeRequested | SetupRequested | PlayRequested):
            return
        stream = server.playable(event.name)
        if stream is None:
            log.info("rtsp_stream_not_found", peer=self.peer, stream=event.name, method=event.request.method)
            rtsp.refuse(event.request, 404)
            return
        if isinstance(event, DescribeRequested):
            # Every keyframe of a Stream carries them.
            sps, pps = parameter_sets(stream.keyframe.data) if stream.keyframe else (None, None)
            sdp = build_h264_sdp(
                session_id=int.from_bytes(os.urandom(4), "big"),
                address=self.address,
                name=stream.name,
                sps=sps,
                pps=pps,
                audio=served_audio(stream),
            )
            rtsp.describe(event, sdp, server._content_base(event.request.uri, self.address, stream.name))
        elif isinstance(event, SetupRequested):
            if event.track == AUDIO_TRACK and served_audio(stream) is None:
                rtsp.refuse(event.request, 404, "Not Found: the stream has no audio track")
                return
            self._setup(event)
        elif self.viewer is not None:  # PLAY again: already playing
            rtsp.accept_play(event)
        else:
            outputs = {track: self._output(transport) for track, transport in rtsp.transports.items()}
            viewer = RtspViewer(
                stream,
                outputs.get(VIDEO_TRACK),
                ssrc=rtsp.ssrc,
                on_end=self.writer.transport.close,
                audio=outputs.get(AUDIO_TRACK),
                audio_ssrc=rtsp.audio_ssrc,
                queue_frames=server.viewer_queue_frames,
            )
            self.viewer = viewer
            base = server._content_base(event.request.uri, self.address, stream.name)
            rtsp.accept_play(event, viewer.rtp_info(base))
            self._flush()  # the PLAY answer goes before the first packet
            server.viewers.add(viewer)
            viewer.start()
            log.info(
                "rtsp_play_started",
                stream=stream.name,
                peer=self.peer,
                session=rtsp.session,
                udp=viewer.udp,
                tracks=sorted(outputs),
            )

    def _output(self, transport: Transport) -> RtpOutput:
        """Where a set-up track's RTP goes: the client's UDP port, or its channel here."""
        server = self.server
        if transport.client_port is not None and server.udp is not None and server.udp.rtp is not None:
            address = (self.peer_host, transport.client_port[0])
            return UdpOutput(server.udp.rtp, address, server.max_unsent_bytes)
        assert transport.interleaved is not None
        return InterleavedOutput(self.writer.transport, transport.interleaved[0], server.max_unsent_bytes)
