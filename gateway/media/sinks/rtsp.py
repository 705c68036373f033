"""The RTSP server for players: every live H.264 Stream of the registry at
``rtsp://host:port/{name}``, RTP interleaved on the RTSP connection. A thin I/O layer
around the sans-I/O `RtspServerConnection`.

One task per connection reads requests. Frames are written from the Stream's push straight
to the connection's transport (no task per frame); a player whose unsent data passes a
bound is handed no more frames until the next keyframe (`FrameQueue` skips for it), so a
slow player loses time, never blocks another, and never gets a broken GOP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from gateway.log import get_logger
from gateway.media.h264 import NAL_PPS, NAL_SPS, iter_nal_units
from gateway.media.registry import StreamRegistry
from gateway.media.rtsp.auth import ServerAuth
from gateway.media.rtsp.message import RtspError, encode_interleaved
from gateway.media.rtsp.rtp import rtp_header
from gateway.media.rtsp.sdp import H264_CONTROL, H264_PAYLOAD_TYPE, build_h264_sdp
from gateway.media.rtsp.server import (
    DescribeRequested,
    PlayRequested,
    RtspServerConnection,
    SetupRequested,
    TeardownRequested,
)
from gateway.media.stream import MediaFrame, Stream, Subscription
from gateway.media.webrtc.fanout import rtp_payloads

log = get_logger(__name__)

# The same packetization as WebRTC viewers: a frame's RTP payloads are made once for all.
H264_RTP = RTCRtpCodecParameters(
    mimeType="video/H264",
    clockRate=90000,
    payloadType=H264_PAYLOAD_TYPE,
    parameters={"packetization-mode": "1"},
)
# RTP waiting in a player's socket buffer beyond which it skips to the next keyframe.
MAX_UNSENT_BYTES = 1024 * 1024
VIEWER_QUEUE_FRAMES = 90


def cached_parameter_sets(stream: Stream) -> tuple[bytes | None, bytes | None]:
    """SPS and PPS of the stream's cached keyframe (every keyframe carries them)."""
    sps = pps = None
    if stream.keyframe is not None:
        for nal in iter_nal_units(stream.keyframe.data):
            if nal[0] & 0x1F == NAL_SPS:
                sps = nal
            elif nal[0] & 0x1F == NAL_PPS:
                pps = nal
    return sps, pps


class RtspViewer:
    """One playing RTSP session as a subscriber of a Stream."""

    def __init__(
        self,
        stream: Stream,
        transport: asyncio.WriteTransport,
        *,
        channel: int,
        ssrc: int,
        on_end: Callable[[], None],
        max_unsent_bytes: int = MAX_UNSENT_BYTES,
    ) -> None:
        self.stream = stream
        self.channel = channel
        self.ssrc = ssrc
        self.packets = 0
        self._transport = transport
        self._on_end = on_end
        self._max_unsent = max_unsent_bytes
        self._sequence = random.randint(0, 0xFFFF)
        self._timestamp_origin = random.getrandbits(32)
        self.subscription: Subscription = stream.subscribe(self, VIEWER_QUEUE_FRAMES)

    def rtp_info(self, url: str) -> str:
        """The RTP-Info of the PLAY answer: where sequence and timestamp start. The first
        frame is the cached keyframe, stamped with the stream's last video time."""
        timestamp = (self._timestamp_origin + self.stream.last_video_pts) & 0xFFFFFFFF
        return f"url={url};seq={self._sequence};rtptime={timestamp}"

    def start(self) -> None:
        """Send frames from now on (after the PLAY answer is written)."""
        self.subscription.audio.attach(lambda frame: True)  # no audio track in the SDP
        self.subscription.video.attach(self._deliver)

    def _deliver(self, frame: MediaFrame) -> bool:
        transport = self._transport
        if transport.is_closing() or transport.get_write_buffer_size() > self._max_unsent:
            return False
        payloads, timestamp = rtp_payloads(self.stream, frame, H264_RTP)
        timestamp = (self._timestamp_origin + timestamp) & 0xFFFFFFFF
        last = len(payloads) - 1
        packets = []
        for index, payload in enumerate(payloads):
            header = rtp_header(
                payload_type=H264_PAYLOAD_TYPE,
                marker=index == last,
                sequence=self._sequence,
                timestamp=timestamp,
                ssrc=self.ssrc,
            )
            packets.append(encode_interleaved(self.channel, header + payload))
            self._sequence = (self._sequence + 1) & 0xFFFF
        transport.write(b"".join(packets))
        self.packets += len(packets)
        return True

    def close(self) -> None:
        self.stream.unsubscribe(self.subscription)

    # --- StreamListener ---------------------------------------------------------------------

    def on_video_format(self, width: int, height: int) -> None:
        """The SDP carries no dimensions: the decoder reads them from the next SPS."""

    def on_stream_event(self, event_type: str, payload: Any) -> None:
        """RTSP has no way to carry stream events."""

    def on_stream_end(self, info: str | None) -> None:
        self._on_end()


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
    ) -> None:
        self.registry = registry
        self.host, self.port = host, port
        self.credentials = credentials
        self.session_timeout = session_timeout
        self.max_unsent_bytes = max_unsent_bytes
        # The kernel's own send buffer (None: autotuned, up to megabytes) comes before the
        # bound above: a smaller one makes a stalled player skip sooner, with less delay.
        self.socket_send_buffer = socket_send_buffer
        self.viewers: set[RtspViewer] = set()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        log.info("rtsp_listening", host=self.host, port=self.port, auth=self.credentials is not None)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Closing the listener leaves accepted connections open: end them too.
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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
        peer = str(writer.get_extra_info("peername"))
        sock = writer.get_extra_info("socket")
        if self.socket_send_buffer is not None and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.socket_send_buffer)
        auth = ServerAuth(*self.credentials) if self.credentials is not None else None
        rtsp = RtspServerConnection(auth=auth, session_timeout=self.session_timeout)
        viewer: RtspViewer | None = None
        reason = "closed by the player"
        try:
            while not rtsp.closed:
                try:
                    data = await asyncio.wait_for(reader.read(65536), self.session_timeout)
                except TimeoutError:
                    reason = "session timeout"
                    break
                if not data:
                    break
                try:
                    events = rtsp.receive_data(data)
                except RtspError as exc:
                    log.info("rtsp_bad_request", peer=peer, status=exc.status, error=str(exc)[:200])
                    reason = "bad request"
                    events = []
                for event in events:
                    viewer = self._handle(event, rtsp, writer, peer, viewer)
                self._flush(rtsp, writer)
                # Replies piling up past what RTP may (requests sent, nothing read): close.
                if writer.transport.get_write_buffer_size() > 4 * self.max_unsent_bytes:
                    reason = "not reading"
                    break
        except (ConnectionError, OSError) as exc:
            reason = str(exc)[:200] or type(exc).__name__
        except asyncio.CancelledError:
            reason = "server stopped"
        finally:
            self._connections.discard(task)
            if viewer is not None:
                self._end_viewer(viewer, reason)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _flush(self, rtsp: RtspServerConnection, writer: asyncio.StreamWriter) -> None:
        out = rtsp.data_to_send()
        if out and not writer.transport.is_closing():
            writer.write(out)

    def _handle(
        self,
        event: DescribeRequested | SetupRequested | PlayRequested | TeardownRequested,
        rtsp: RtspServerConnection,
        writer: asyncio.StreamWriter,
        peer: str,
        viewer: RtspViewer | None,
    ) -> RtspViewer | None:
        if isinstance(event, TeardownRequested):
            if viewer is not None:
                self._end_viewer(viewer, "teardown")
            return None
        stream = self.playable(event.name)
        if stream is None:
            log.info("rtsp_stream_not_found", peer=peer, stream=event.name, method=event.request.method)
            rtsp.refuse(event.request, 404)
            return viewer
        address = str(writer.get_extra_info("sockname", ("0.0.0.0",))[0])
        if isinstance(event, DescribeRequested):
            sps, pps = cached_parameter_sets(stream)
            sdp = build_h264_sdp(
                session_id=int.from_bytes(os.urandom(4), "big"),
                address=address,
                name=stream.name,
                sps=sps,
                pps=pps,
            )
            rtsp.describe(event, sdp, self._content_base(event.request.uri, address, stream.name))
        elif isinstance(event, SetupRequested):
            rtsp.accept_setup(event)
        elif viewer is not None:  # PLAY again: already playing
            rtsp.accept_play(event)
        else:
            viewer = RtspViewer(
                stream,
                writer.transport,
                channel=rtsp.channel,
                ssrc=rtsp.ssrc,
                on_end=writer.transport.close,
                max_unsent_bytes=self.max_unsent_bytes,
            )
            control = self._content_base(event.request.uri, address, stream.name) + H264_CONTROL
            rtsp.accept_play(event, viewer.rtp_info(control))
            self._flush(rtsp, writer)  # the PLAY answer goes before the first packet
            self.viewers.add(viewer)
            viewer.start()
            log.info("rtsp_play_started", stream=stream.name, peer=peer, session=rtsp.session)
        return viewer

    def _content_base(self, uri: str, address: str, name: str) -> str:
        """The player's own URL of the stream (it knows how it reached us), ending in a slash
        so that ``trackID=0`` resolves below it."""
        base = uri.split("?", 1)[0]
        if not base.lower().startswith("rtsp://"):
            host = f"[{address}]" if ":" in address else address
            base = f"rtsp://{host}:{self.port}/{quote(name)}"
        else:
            base = base.rstrip("/")
            if base.endswith(f"/{H264_CONTROL}"):
                base = base[: -len(H264_CONTROL) - 1]
        return base + "/"

    def _end_viewer(self, viewer: RtspViewer, reason: str) -> None:
        if viewer not in self.viewers:
            return
        self.viewers.discard(viewer)
        viewer.close()
        video = viewer.subscription.video
        log.info(
            "rtsp_play_ended",
            stream=viewer.stream.name,
            reason=reason,
            packets=viewer.packets,
            video_dropped=video.dropped,
        )
