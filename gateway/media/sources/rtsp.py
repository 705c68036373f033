"""An RTSP pull: a camera's (or another server's) ``rtsp://user:pass@host:port/path`` played
over TCP with RTP interleaved (the default) or with RTP over UDP, as the source of a Stream.
A thin I/O layer around the sans-I/O `RtspClientConnection`.

It keeps the stream fed until `stop`: a connection that fails, closes or goes quiet for
``timeout`` seconds is retried with capped exponential backoff. Between connections the
stream keeps its viewers (the source is only detached); whoever owns the pull ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import ssl
from collections.abc import Callable
from fractions import Fraction
from typing import Any, Literal

from gateway.log import get_logger
from gateway.media.h264 import sps_dimensions
from gateway.media.registry import StreamNameInUse, StreamRegistry
from gateway.media.rtsp.client import Described, Playing, RtspClientConnection, RtspUrl, parse_rtsp_url
from gateway.media.rtsp.message import RtspError
from gateway.media.rtsp.record import AudioUnit
from gateway.media.rtsp.rtp import AccessUnit
from gateway.media.sources.rtsp_audio import RtspAudioFeed
from gateway.media.stream import Codec, MediaFrame, SourceFeedback, Stream
from gateway.net_limits import bound_reads
from gateway.reconnect import ReconnectDelay

log = get_logger(__name__)

H264 = Codec("H264", 90000, {"packetization-mode": "1"})
READ_SIZE = 65536
# Room in the kernel for a keyframe's burst of datagrams while the loop is busy.
UDP_RECEIVE_BUFFER = 2 * 1024 * 1024
# Units that overtook the PLAY answer over UDP, kept until the stream is claimed.
EARLY_UNITS = 60


class _Datagrams(asyncio.DatagramProtocol):
    """Hands every datagram to a callback, with its sender's address."""

    def __init__(self, received: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._received = received

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        bound_reads(transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._received(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        """ICMP errors for a peer that went away: its session times out."""


async def open_udp_pair(
    host: str,
    port: int,
    on_rtp: Callable[[bytes, tuple[str, int]], None],
    on_rtcp: Callable[[bytes, tuple[str, int]], None],
    *,
    attempts: int = 32,
) -> tuple[asyncio.DatagramTransport, asyncio.DatagramTransport]:
    """Two UDP sockets on ``host``, RTP on an even port and RTCP on the next (RFC 3550 11);
    ``port`` 0 picks a free pair. Returns the (RTP, RTCP) transports."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(attempts if port == 0 else 1):
        rtp = socket.socket(family, socket.SOCK_DGRAM)
        rtcp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            rtp.bind((host, port))
            first = rtp.getsockname()[1]
            if first % 2:
                raise OSError(f"odd RTP port {first}")
            rtcp.bind((host, first + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            if port != 0:
                raise
            continue
        for sock in (rtp, rtcp):
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        rtp_transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(on_rtp), sock=rtp)
        rtcp_transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(on_rtcp), sock=rtcp)
        return rtp_transport, rtcp_transport
    raise OSError(f"no free UDP port pair on {host}")


class RtspPull:
    def __init__(
        self,
        registry: StreamRegistry,
        name: str,
        url: str,
        *,
        timeout: float = 10.0,
        backoff: tuple[float, float] = (1.0, 10.0),
        transport: Literal["tcp", "udp"] = "tcp",
    ) -> None:
        if transport not in ("tcp", "udp"):
            raise ValueError(f"transport must be tcp or udp, not {transport!r}")
        self.registry = registry
        self.name = name
        self.url = url
        self.transport = transport
        self.timeout = timeout
        ReconnectDelay(*backoff)  # refuses a bad pair now, not in the background task
        self.backoff = backoff
        self.stream: Stream | None = None
        self.connected = False  # playing: frames may arrive
        self.connections = 0  # sessions that reached PLAY
        self.frames = 0
        self.audio_feed: RtspAudioFeed | None = None  # of the current session
        # Why the pull gave up for good: a URL it cannot use (a device's reply), found here
        # but reported by the background task, so the owner is not the one that fails.
        self.failed: str | None = None
        self._url_error = ""
        self._target: RtspUrl | None = None
        self._log = log.bind(stream=name)
        try:
            self._target = parse_rtsp_url(url)
            # The URL without its password is what the logs show.
            self._log = self._log.bind(url=self._target.url)
        except RtspError as exc:
            self._url_error = str(exc)
        self._time_base = Fraction(1, 90000)
        self._task: asyncio.Task[None] | None = None
        self._early: list[AccessUnit] = []
        self.rtp_figures: dict[str, int] = {}  # of the last connection's video
        self._client: RtspClientConnection | None = None  # of the connection now
        self._lost_before = 0  # video RTP packets lost on the connections before it

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"rtsp-pull {self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._log.info("rtsp_pull_stopped", frames=self.frames)

    async def feedback(self) -> SourceFeedback:
        return SourceFeedback(lost_packets=self.lost_packets)  # no feedback in RTSP: the gaps seen

    def request_keyframe(self) -> None:
        """RTSP has no way to ask a camera for one: viewers start from the cached keyframe."""

    # --- the connection loop ----------------------------------------------------------------

    async def _run(self) -> None:
        if self._target is None:
            self.failed = self._url_error
            self._log.warning("rtsp_pull_bad_url", reason=self.failed)
            return
        delays = ReconnectDelay(*self.backoff)
        try:
            while True:
                played = self.connections
                try:
                    await self._session()
                    reason = "closed by the server"
                except (RtspError, StreamNameInUse, OSError, TimeoutError) as exc:
                    reason = f"{type(exc).__name__}: {exc}"[:300]
                except Exception as exc:  # a bug must not end the pull for good: say so, retry
                    self._log.exception("rtsp_pull_crashed")
                    reason = f"{type(exc).__name__}: {exc}"[:300]
                if self.connections > played:
                    delays.reset()  # it worked for a while: retry soon
                delay = delays.next()
                event = "rtsp_pull_disconnected" if self._disconnected() else "rtsp_pull_failed"
                self._log.info(event, reason=reason, retry_in=delay, **self.rtp_figures)
                await asyncio.sleep(delay)
        finally:
            self._disconnected()

    async def _session(self) -> None:
        target = self._target
        assert target is not None
        self._log.info(
            "rtsp_pull_connecting",
            host=target.host,
            port=target.port,
            tls=target.tls,
            transport=self.transport,
        )
        tls = ssl.create_default_context() if target.tls else None
        async with asyncio.timeout(self.timeout):
            reader, writer = await asyncio.open_connection(target.host, target.port, ssl=tls)
        udp: tuple[asyncio.DatagramTransport, asyncio.DatagramTransport] | None = None
        loop = asyncio.get_running_loop()
        client: RtspClientConnection | None = None
        try:
            if self.transport == "udp":
                # The same local address as the RTSP connection: the family and the route
                # the server sends back on.
                local = str(writer.get_extra_info("sockname")[0])
                server_host = str(writer.get_extra_info("peername")[0])
                holder: list[RtspClientConnection] = []

                def on_rtp(data: bytes, addr: tuple[str, int]) -> None:
                    if holder and addr[0] == server_host:  # not whoever finds the port
                        for unit in holder[0].receive_rtp(data):
                            self._access_unit(unit)

                udp = await open_udp_pair(local, 0, on_rtp, lambda data, addr: None)
                ports = (udp[0].get_extra_info("sockname")[1], udp[1].get_extra_info("sockname")[1])
                client = RtspClientConnection(self.url, udp_ports=ports)
                holder.append(client)
            else:
                client = RtspClientConnection(self.url)
            self._client = client
            client.start()
            await self._send(client, writer)
            await self._exchange(client, reader, writer, loop)
        finally:
            self._early.clear()
            self._client = None
            if client is not None and client.depacketizer is not None:
                self.rtp_figures = client.depacketizer.figures()
                self._lost_before += client.depacketizer.lost_packets
            if udp is not None:
                for transport in udp:
                    transport.close()
            if client is not None and client.playing and not writer.is_closing():
                client.teardown()  # polite, best effort: the server times the session out anyway
                with contextlib.suppress(ConnectionError, OSError):
                    writer.write(client.data_to_send())
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _exchange(
        self,
        client: RtspClientConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        # Until PLAY is answered, the whole exchange must fit in one timeout; then RTP must
        # keep coming (on the connection or over UDP): keepalive answers or RTCP alone do not
        # make a live stream.
        deadline = loop.time() + self.timeout
        next_keepalive = math.inf
        packets = 0
        while True:
            depacketizer = client.depacketizer
            if client.playing and depacketizer is not None and depacketizer.packets > packets:
                packets = depacketizer.packets
                deadline = loop.time() + self.timeout
            now = loop.time()
            if now >= deadline:
                what = "RTP" if client.playing else "an answer to the setup"
                raise TimeoutError(f"no {what} for {self.timeout:g} s")
            if now >= next_keepalive:
                client.keepalive()
                await self._send(client, writer)
                next_keepalive = now + client.session_timeout / 2
            # Over UDP the connection is quiet while media flows: wake up to see it did.
            wait = min(deadline, next_keepalive, now + 1.0) - now
            try:
                async with asyncio.timeout(wait):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                continue  # time for a keepalive, or the timeout: checked above
            if not data:
                return
            for event in client.receive_data(data):
                if isinstance(event, AccessUnit):
                    self._access_unit(event)
                elif isinstance(event, AudioUnit):
                    if self.connected and self.stream is not None and self.audio_feed is not None:
                        self.audio_feed.push(self.stream, event)
                elif isinstance(event, Playing):
                    self._playing(event, client)
                    deadline = loop.time() + self.timeout
                    next_keepalive = loop.time() + event.timeout / 2
                elif isinstance(event, Described):
                    self._log.info("rtsp_pull_described", control=event.track.control_url)
            await self._send(client, writer)

    async def _send(self, client: RtspClientConnection, writer: asyncio.StreamWriter) -> None:
        out = client.data_to_send()
        if out:
            writer.write(out)
            async with asyncio.timeout(self.timeout):
                await writer.drain()

    @property
    def lost_packets(self) -> int:
        """Video RTP packets lost (sequence gaps) over every connection so far."""
        client = self._client
        now = client.depacketizer.lost_packets if client is not None and client.depacketizer else 0
        return self._lost_before + now

    # --- the stream -------------------------------------------------------------------------

    def _playing(self, event: Playing, client: RtspClientConnection) -> None:
        track = client.track
        stream = self.registry.claim(self.name, resume=True, on_demand=True)  # its own name
        self.stream = stream
        # Audio as a publisher's: relayed, or AAC to Opus once for every viewer.
        self.audio_feed = RtspAudioFeed(client.audio) if client.audio is not None else None
        stream.set_codecs(H264, self.audio_feed.codec if self.audio_feed is not None else None)
        stream.attach_source(self, "rtsp")
        self.connected = True
        self.connections += 1
        if track is not None:
            self._time_base = Fraction(1, track.clock_rate)
            if track.sps is not None:
                # The SDP's SPS gives the size before the first keyframe arrives.
                with contextlib.suppress(ValueError, IndexError):
                    stream.set_dimensions(*sps_dimensions(track.sps))
        self._log.info(
            "rtsp_pull_playing",
            session_timeout=event.timeout,
            resumed=self.connections > 1,
            transport=self.transport,
            audio=self.audio_feed.codec.name if self.audio_feed is not None else None,
        )
        early, self._early = self._early, []
        for unit in early:
            self._access_unit(unit)

    def _access_unit(self, unit: AccessUnit) -> None:
        stream = self.stream
        if not self.connected:
            # Media before the PLAY answer (UDP overtakes TCP): no stream claimed yet.
            if len(self._early) < EARLY_UNITS:
                self._early.append(unit)
            return
        assert stream is not None
        if unit.dimensions is not None:
            stream.set_dimensions(*unit.dimensions)
        frame = MediaFrame("video", "H264", unit.data, unit.timestamp, self._time_base, unit.keyframe)
        stream.push(frame)
        self.frames += 1

    def _disconnected(self) -> bool:
        """Detach from the stream (its viewers stay); True if it was playing."""
        was_connected, self.connected = self.connected, False
        if self.stream is not None:
            self.stream.detach_source(self)
        return was_connected
