"""The RTMP ingest server: one TCP port for every concurrent push, each keyed by a one-time
ingest key (``rtmp://host:port/{app}/{key}``). A thin I/O layer around the sans-I/O
`RtmpServerConnection`; video becomes Annex-B access units pushed into a Stream. AAC audio,
which WebRTC cannot carry, is transcoded to Opus (audio only, once per stream); mono G.711
(PCMA, PCMU) is relayed as it is, in 20 ms frames; other audio formats are dropped."""

from __future__ import annotations

import asyncio
import socket
import urllib.parse
from dataclasses import dataclass
from fractions import Fraction

from gateway.access import AccessPolicy, AccessRequest, Action
from gateway.log import get_logger
from gateway.media.audio_transcode import OPUS, OPUS_TIME_BASE, AacToOpus
from gateway.media.ingest_keys import IngestKey, IngestKeys
from gateway.media.names import BadStreamName, validate_stream_name
from gateway.media.registry import INFO_NAME_RESERVED, StreamNameInUse, StreamNameReserved, StreamRegistry
from gateway.media.rtmp.flv import (
    AAC_SOUND_FORMAT,
    G711_RATE,
    G711_SOUND_FORMATS,
    AacConfig,
    AvcTagReader,
    FlvError,
    G711Frame,
    metadata_sound_format,
    read_audio_tag,
)
from gateway.media.rtmp.protocol import (
    AUDIO,
    VIDEO,
    MediaMessage,
    MetaData,
    PublishEnded,
    PublishRequested,
    RtmpError,
    RtmpServerConnection,
)
from gateway.media.stream import NO_FEEDBACK, Codec, MediaFrame, SourceFeedback, Stream
from gateway.net_limits import LISTEN_BACKLOG, ConnectionLimits
from gateway.watchdog import ReadWatchdog

log = get_logger(__name__)

H264 = Codec("H264", 90000, {"packetization-mode": "1"})
MS_TO_90K = 90
G711_FRAME = G711_RATE // 50  # samples (bytes) in 20 ms, the packet WebRTC peers expect
G711_TIME_BASE = Fraction(1, G711_RATE)


class RtmpPush:
    """One publishing RTMP connection as the source of a Stream."""

    def __init__(
        self, stream: Stream, grant: IngestKey, transport: asyncio.BaseTransport | None = None
    ) -> None:
        self.stream = stream
        self.grant = grant
        self._transport = transport  # its connection's, closed if the stream ends under it
        self.video = AvcTagReader()
        self.bad_tags = 0
        self.audio: AacToOpus | None = None
        self.bad_audio = 0
        self._g711_pending = b""  # samples short of a 20 ms frame, from _g711_pts on
        self._g711_pts = 0

    def stream_ended(self, info: str) -> None:
        """The stream was ended under this push (`StoppableSource`: its name lost to another
        worker's claim, the device's push given up): no one would see what it sends, so its
        connection is closed (the read loop then ends the push)."""
        log.info("rtmp_push_stopped", stream=self.stream.name, info=info)
        if self._transport is not None:
            self._transport.close()

    def metadata(self, values: dict[str, object]) -> None:
        """An AAC push announces itself before its first frame: offer Opus to viewers now,
        so those who join at the first keyframe get audio too. A field that makes no sense
        is ignored (the tags themselves tell the truth later)."""
        sound_format = metadata_sound_format(values.get("audiocodecid"))
        if sound_format == AAC_SOUND_FORMAT:
            self.stream.set_codecs(H264, OPUS)
        elif sound_format is not None:
            self.stream.set_codecs(H264, Codec(G711_SOUND_FORMATS[sound_format], G711_RATE))

    def audio_tag(self, message: MediaMessage) -> None:
        try:
            content = read_audio_tag(message.payload)
            if isinstance(content, G711Frame):
                self._g711(content, message.timestamp)
                return
            if isinstance(content, AacConfig):
                self.audio = AacToOpus(content.audio_specific_config)
                self.stream.set_codecs(H264, OPUS)
                return
        except (FlvError, ValueError) as exc:  # ValueError: PyAV refused the configuration
            self.bad_audio += 1
            if self.bad_audio == 1:
                log.warning("rtmp_audio_dropped", stream=self.stream.name, reason=str(exc))
            return
        if self.audio is None:
            return  # frames before their configuration: nothing to decode them with
        for data, pts in self.audio.transcode(content.data, message.timestamp):
            self.stream.push(MediaFrame("audio", "opus", data, pts, OPUS_TIME_BASE, True))

    def _g711(self, frame: G711Frame, timestamp_ms: int) -> None:
        """Samples in tags of any size out as 20 ms frames: what is left over waits for the
        next tag, unless that one does not follow on (a gap), when it is dropped."""
        codec = self.stream.audio_codec
        if codec is None or codec.name != frame.codec:
            self.stream.set_codecs(H264, Codec(frame.codec, G711_RATE))
        pts = timestamp_ms * G711_RATE // 1000
        pending = self._g711_pending
        if pending and abs(pts - (self._g711_pts + len(pending))) > G711_FRAME:
            pending = b""
        if not pending:
            self._g711_pts = pts
        data = pending + frame.data
        whole = len(data) - len(data) % G711_FRAME
        for start in range(0, whole, G711_FRAME):
            chunk = data[start : start + G711_FRAME]
            self.stream.push(
                MediaFrame("audio", frame.codec, chunk, self._g711_pts + start, G711_TIME_BASE, True)
            )
        self._g711_pts += whole
        self._g711_pending = data[whole:]

    async def feedback(self) -> SourceFeedback:
        return NO_FEEDBACK  # TCP: nothing is lost on the way

    def request_keyframe(self) -> None:
        """RTMP has no way to ask for one: new viewers start from the cached keyframe."""

    def video_tag(self, message: MediaMessage) -> None:
        try:
            unit = self.video.read(message.payload)
        except FlvError as exc:
            self.bad_tags += 1
            if self.bad_tags == 1:
                log.warning("rtmp_video_unusable", stream=self.stream.name, reason=str(exc))
            return
        if self.video.dimensions is not None:
            self.stream.set_dimensions(*self.video.dimensions)
        if unit is None:
            return
        pts = (message.timestamp + unit.composition_offset) * MS_TO_90K
        self.stream.push(MediaFrame("video", "H264", unit.data, pts, Fraction(1, 90000), unit.keyframe))


@dataclass(frozen=True, slots=True)
class RtmpDeadlines:
    """How long a connection may take to become a push, and a push may stay silent: a port
    that anyone can open must not be held by connections that never publish (or die
    half-open) forever."""

    handshake: float = 10.0  # s from accept to the end of the handshake
    publish: float = 30.0  # s from accept to a publish; and the longest silence of a push

    def next(
        self, opened: float, last_data: float, handshake_done: bool, publishing: bool
    ) -> tuple[float, str]:
        """When the connection is closed unless something happens first, and why."""
        if publishing:
            return last_data + self.publish, "the publisher sent nothing"
        if not handshake_done:
            return opened + self.handshake, "no RTMP handshake in time"
        return opened + self.publish, "no publish in time"


class RtmpIngestServer:
    def __init__(
        self,
        registry: StreamRegistry,
        keys: IngestKeys,
        *,
        host: str,
        port: int,
        access: AccessPolicy | None = None,
        deadlines: RtmpDeadlines | None = None,
        limits: ConnectionLimits | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.sock = sock  # a listening socket to accept on (workers share one), else host:port
        self.registry = registry
        self.keys = keys
        # With a policy, a push whose key is not an ingest key publishes under that name
        # (`rtmp://host/live/{name}?token=...`, OBS, ffmpeg) if the policy allows it.
        self.access = access
        self.host, self.port = host, port
        self.deadlines = deadlines or RtmpDeadlines()
        self.limits = limits
        self.pushes: set[RtmpPush] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        handler = (
            self._connection if self.limits is None else self.limits.guard_streams("rtmp", self._connection)
        )
        if self.sock is not None:
            self._server = await asyncio.start_server(handler, sock=self.sock, backlog=LISTEN_BACKLOG)
        else:
            self._server = await asyncio.start_server(handler, self.host, self.port, backlog=LISTEN_BACKLOG)
        log.info("rtmp_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername"))
        rtmp = RtmpServerConnection()
        push: RtmpPush | None = None
        loop = asyncio.get_running_loop()
        opened = last_data = loop.time()

        def deadline() -> tuple[float, str]:
            return self.deadlines.next(opened, last_data, rtmp.handshake_done, push is not None)

        watchdog = ReadWatchdog(reader, writer.transport, lambda: deadline()[0])
        try:
            while not rtmp.closed:
                data = await reader.read(65536)
                if watchdog.expired:
                    log.info("rtmp_connection_timed_out", peer=peer, reason=deadline()[1])
                    break
                last_data = loop.time()
                for event in rtmp.receive_data(data):
                    if isinstance(event, PublishRequested):
                        push = await self._publish(rtmp, event, peer, writer.transport)
                    elif isinstance(event, MediaMessage) and push is not None and event.kind == VIDEO:
                        push.video_tag(event)
                    elif isinstance(event, MediaMessage) and push is not None and event.kind == AUDIO:
                        push.audio_tag(event)
                    elif isinstance(event, MetaData) and push is not None:
                        push.metadata(event.values)
                    elif isinstance(event, PublishEnded) and push is not None:
                        self._end(push, event.reason)
                        push = None
                out = rtmp.data_to_send()
                if out:
                    writer.write(out)
                    # A peer that sends commands and reads no reply is held to the same deadline.
                    try:
                        async with asyncio.timeout_at(deadline()[0]):
                            await writer.drain()
                    except TimeoutError:
                        log.info("rtmp_connection_timed_out", peer=peer, reason="the peer reads nothing")
                        break
                if not data:
                    break
        except (RtmpError, ConnectionError) as exc:
            log.info("rtmp_connection_error", peer=peer, error=str(exc)[:200])
        except Exception:
            # A bug must end this connection in the JSON log, not as a bare traceback.
            log.exception("rtmp_connection_failed", peer=peer)
        finally:
            watchdog.cancel()
            if push is not None:
                self._end(push, "connection closed")
            writer.close()
            # A peer that reads nothing would hold the close (and the fd) forever.
            try:
                async with asyncio.timeout(2.0):
                    await writer.wait_closed()
            except (ConnectionError, OSError, TimeoutError):
                writer.transport.abort()

    async def _publish(
        self,
        rtmp: RtmpServerConnection,
        request: PublishRequested,
        peer: str,
        transport: asyncio.BaseTransport,
    ) -> RtmpPush | None:
        grant = issued = self.keys.claim(request.key)
        if grant is None:
            grant, reason = await self._named(request.key, request.query)
            if grant is None:
                log.warning("rtmp_publish_refused", peer=peer, app=request.app, reason=reason)
                rtmp.reject_publish(request, reason)
                return None
        try:
            # A key the device camera's source issued may take its name; nothing else may.
            stream = await self.registry.claim_push(
                grant.stream_name, resume=grant.keep_stream, on_demand=issued is not None
            )
        except StreamNameReserved:
            log.warning("rtmp_publish_refused", peer=peer, app=request.app, reason=INFO_NAME_RESERVED)
            rtmp.reject_publish(request, INFO_NAME_RESERVED)
            return None
        except StreamNameInUse:
            self.keys.release(grant.key)
            rtmp.reject_publish(request, "stream already has a source")
            return None
        push = RtmpPush(stream, grant, transport)
        stream.set_codecs(H264, None)
        stream.attach_source(push, "rtmp")
        self.pushes.add(push)
        rtmp.accept_publish(request)
        log.info("rtmp_publishing", stream=stream.name, peer=peer)
        return push

    async def _named(self, name: str, query: str) -> tuple[IngestKey | None, str]:
        """A publish by stream name (not an ingest key), if the access policy allows it."""
        if self.access is None or self.keys.is_key(name):
            return None, "unknown, used or expired stream key"
        try:
            validate_stream_name(name)
        except BadStreamName as exc:
            return None, str(exc)
        token = urllib.parse.parse_qs(query).get("token", [None])[0]
        reason = await self.access.check(AccessRequest(Action.PUBLISH, name, token))
        if reason is not None:
            return None, reason
        return IngestKey("", name, keep_stream=False), ""

    def _end(self, push: RtmpPush, reason: str) -> None:
        if push not in self.pushes:
            return
        self.pushes.discard(push)
        self.keys.release(push.grant.key)
        if push.grant.keep_stream:
            push.stream.detach_source(push)  # the issuer decides when the stream ends
        else:
            self.registry.release(push.stream)
        log.info("rtmp_push_ended", stream=push.stream.name, reason=reason)
