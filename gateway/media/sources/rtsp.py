"""An RTSP pull: a camera's (or another server's) ``rtsp://user:pass@host:port/path`` played
over TCP with RTP interleaved, as the source of a Stream. A thin I/O layer around the
sans-I/O `RtspClientConnection`.

It keeps the stream fed until `stop`: a connection that fails, closes or goes quiet for
``timeout`` seconds is retried with capped exponential backoff. Between connections the
stream keeps its viewers (the source is only detached); whoever owns the pull ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from fractions import Fraction

from gateway.log import get_logger
from gateway.media.h264 import sps_dimensions
from gateway.media.registry import StreamNameInUse, StreamRegistry
from gateway.media.rtsp.client import Described, Playing, RtspClientConnection, RtspUrl, parse_rtsp_url
from gateway.media.rtsp.message import RtspError
from gateway.media.rtsp.rtp import AccessUnit
from gateway.media.rtsp.sdp import H264Track
from gateway.media.stream import Codec, MediaFrame, Stream

log = get_logger(__name__)

H264 = Codec("H264", 90000, {"packetization-mode": "1"})
READ_SIZE = 65536


class RtspPull:
    def __init__(
        self,
        registry: StreamRegistry,
        name: str,
        url: str,
        *,
        timeout: float = 10.0,
        backoff: tuple[float, float] = (1.0, 10.0),
    ) -> None:
        self.registry = registry
        self.name = name
        self.url = url
        self.timeout = timeout
        self.backoff = backoff
        self.stream: Stream | None = None
        self.connected = False  # playing: frames may arrive
        self.connections = 0  # sessions that reached PLAY
        self.frames = 0
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

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"rtsp-pull {self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._log.info("rtsp_pull_stopped", frames=self.frames)

    def request_keyframe(self) -> None:
        """RTSP has no way to ask a camera for one: viewers start from the cached keyframe."""

    # --- the connection loop ----------------------------------------------------------------

    async def _run(self) -> None:
        if self._target is None:
            self.failed = self._url_error
            self._log.warning("rtsp_pull_bad_url", reason=self.failed)
            return
        delay = self.backoff[0]
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
                    delay = self.backoff[0]  # it worked for a while: retry soon
                event = "rtsp_pull_disconnected" if self._disconnected() else "rtsp_pull_failed"
                self._log.info(event, reason=reason, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
        finally:
            self._disconnected()

    async def _session(self) -> None:
        target = self._target
        assert target is not None
        self._log.info("rtsp_pull_connecting", host=target.host, port=target.port, tls=target.tls)
        tls = ssl.create_default_context() if target.tls else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port, ssl=tls), self.timeout
        )
        client = RtspClientConnection(self.url)
        loop = asyncio.get_running_loop()
        try:
            client.start()
            await self._send(client, writer)
            # Until PLAY is answered, the whole exchange must fit in one timeout; then RTP
            # must keep coming: keepalive answers or RTCP alone do not make a live stream.
            deadline = loop.time() + self.timeout
            next_keepalive = math.inf
            packets = 0
            while True:
                now = loop.time()
                if now >= deadline:
                    what = "RTP" if client.playing else "an answer to the setup"
                    raise TimeoutError(f"no {what} for {self.timeout:g} s")
                if now >= next_keepalive:
                    client.keepalive()
                    await self._send(client, writer)
                    next_keepalive = now + client.session_timeout / 2
                wait = min(deadline, next_keepalive) - now
                try:
                    data = await asyncio.wait_for(reader.read(READ_SIZE), wait)
                except TimeoutError:
                    continue  # time for a keepalive, or the timeout: checked above
                if not data:
                    return
                for event in client.receive_data(data):
                    if isinstance(event, AccessUnit):
                        self._access_unit(event)
                    elif isinstance(event, Playing):
                        self._playing(event, client.track)
                        deadline = loop.time() + self.timeout
                        next_keepalive = loop.time() + event.timeout / 2
                    elif isinstance(event, Described):
                        self._log.info("rtsp_pull_described", control=event.track.control_url)
                depacketizer = client.depacketizer
                if client.playing and depacketizer is not None and depacketizer.packets > packets:
                    packets = depacketizer.packets
                    deadline = loop.time() + self.timeout
                await self._send(client, writer)
        finally:
            if client.playing and not writer.is_closing():
                client.teardown()  # polite, best effort: the server times the session out anyway
                with contextlib.suppress(ConnectionError, OSError):
                    writer.write(client.data_to_send())
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _send(self, client: RtspClientConnection, writer: asyncio.StreamWriter) -> None:
        out = client.data_to_send()
        if out:
            writer.write(out)
            await asyncio.wait_for(writer.drain(), self.timeout)

    # --- the stream -------------------------------------------------------------------------

    def _playing(self, event: Playing, track: H264Track | None) -> None:
        stream = self.registry.claim(self.name, resume=True)
        self.stream = stream
        stream.set_codecs(H264, None)
        stream.attach_source(self, "rtsp")
        self.connected = True
        self.connections += 1
        if track is not None:
            self._time_base = Fraction(1, track.clock_rate)
            if track.sps is not None:
                # The SDP's SPS gives the size before the first keyframe arrives.
                with contextlib.suppress(ValueError, IndexError):
                    stream.set_dimensions(*sps_dimensions(track.sps))
        self._log.info("rtsp_pull_playing", session_timeout=event.timeout, resumed=self.connections > 1)

    def _access_unit(self, unit: AccessUnit) -> None:
        stream = self.stream
        if stream is None or not self.connected:
            return  # media before the PLAY answer: no stream claimed yet
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
