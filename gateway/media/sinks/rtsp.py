"""The RTSP viewer: one playing RTSP session as a subscriber of a Stream, its H.264 video
and its Opus, PCMU or PCMA audio (a second track) relayed as they are, each track's RTP to
its own output: interleaved on the player's RTSP connection, or datagrams from the server's
shared UDP port. The server that makes viewers is `gateway.media.servers.rtsp`.

Frames are written from the Stream's push straight to the connection's transport or the UDP
socket (no task per frame); a player whose unsent data passes a bound is handed no more
frames until the next keyframe (`FrameQueue` skips for it), so a slow player loses time,
never blocks another, and never gets a broken GOP. A UDP player is never waited for at all:
the network drops what it cannot take.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from gateway.media.rtp_frames import frame_packets, sequence_after
from gateway.media.rtsp.message import encode_interleaved
from gateway.media.rtsp.rtp import rtp_header
from gateway.media.rtsp.sdp import (
    AUDIO_CONTROL,
    H264_CONTROL,
    H264_PAYLOAD_TYPE,
    SERVED_AUDIO,
    AudioFormat,
)
from gateway.media.stream import MediaFrame, Stream, Subscription
from gateway.media.webrtc.fanout import rtp_payloads

# The same packetization as WebRTC viewers: a frame's RTP payloads are made once for all.
H264_RTP = RTCRtpCodecParameters(
    mimeType="video/H264",
    clockRate=90000,
    payloadType=H264_PAYLOAD_TYPE,
    parameters={"packetization-mode": "1"},
)
# RTP waiting in a player's socket buffer beyond which it skips to the next keyframe.
MAX_UNSENT_BYTES = 1024 * 1024
VIEWER_QUEUE_FRAMES = 90  # the default of the viewer_queue_frames setting, as for WebRTC viewers

Address = tuple[str, int]


def served_audio(stream: Stream) -> AudioFormat | None:
    """How the SDP carries the stream's audio; None: no audio track (none, or a codec that
    cannot be relayed as it is)."""
    return SERVED_AUDIO.get(stream.audio_codec.name) if stream.audio_codec is not None else None


class RtpOutput(Protocol):
    """Where one player's RTP goes."""

    def writable(self) -> bool:
        """False when congested or gone: the frame is skipped (and the GOP with it)."""
        ...

    def send(self, packets: list[bytes]) -> None: ...


_Transport = TypeVar("_Transport", asyncio.WriteTransport, asyncio.DatagramTransport)


class _BoundedOutput(Generic[_Transport]):
    """An output over an asyncio transport: writable while its unsent data stays within
    ``max_unsent_bytes``."""

    def __init__(self, transport: _Transport, max_unsent_bytes: int) -> None:
        self.transport: _Transport = transport
        self.max_unsent_bytes = max_unsent_bytes

    def writable(self) -> bool:
        transport = self.transport
        # Both transports have get_write_buffer_size; asyncio's stub gives it to WriteTransport only.
        unsent: int = transport.get_write_buffer_size()  # type: ignore[attr-defined]
        return not transport.is_closing() and unsent <= self.max_unsent_bytes


class InterleavedOutput(_BoundedOutput[asyncio.WriteTransport]):
    """RTP interleaved on the player's RTSP connection (RFC 2326 10.12)."""

    def __init__(self, transport: asyncio.WriteTransport, channel: int, max_unsent_bytes: int) -> None:
        super().__init__(transport, max_unsent_bytes)
        self.channel = channel

    def send(self, packets: list[bytes]) -> None:
        self.transport.write(b"".join(encode_interleaved(self.channel, packet) for packet in packets))


class UdpOutput(_BoundedOutput[asyncio.DatagramTransport]):
    """RTP in datagrams from the server's shared RTP socket to the player's RTP port. The
    socket is shared: only when the kernel refuses datagrams does asyncio buffer them, and
    then every UDP player skips alike rather than the buffer growing."""

    def __init__(self, transport: asyncio.DatagramTransport, address: Address, max_unsent_bytes: int) -> None:
        super().__init__(transport, max_unsent_bytes)
        self.address = address

    def send(self, packets: list[bytes]) -> None:
        for packet in packets:
            self.transport.sendto(packet, self.address)


class RtspViewer:
    """One playing RTSP session as a subscriber of a Stream: the RTP of the tracks it set up,
    each to its own output (``video`` or ``audio`` None: not set up)."""

    def __init__(
        self,
        stream: Stream,
        video: RtpOutput | None,
        *,
        ssrc: int,
        on_end: Callable[[], None],
        audio: RtpOutput | None = None,
        audio_ssrc: int = 0,
        queue_frames: int = VIEWER_QUEUE_FRAMES,
    ) -> None:
        self.stream = stream
        self.output = video
        self.ssrc = ssrc
        self.audio_output = audio
        self.audio_ssrc = audio_ssrc
        # The audio of the SDP; frames of another codec (a new source's) are not sent.
        self.audio_format = served_audio(stream) if audio is not None else None
        self.packets = 0
        self._on_end = on_end
        self._sequence = random.randint(0, 0xFFFF)
        self._timestamp_origin = random.getrandbits(32)
        self._audio_sequence = random.randint(0, 0xFFFF)
        self._audio_rtptime = random.getrandbits(32)  # of the first audio frame (RTP-Info)
        self._audio_origin: int | None = None  # set by the first audio frame
        self.subscription: Subscription = stream.subscribe(self, queue_frames)

    @property
    def udp(self) -> bool:
        return isinstance(self.output or self.audio_output, UdpOutput)

    def rtp_info(self, base: str) -> str:
        """The RTP-Info of the PLAY answer, for each set-up track below the Content-Base
        ``base``: where sequence and timestamp start. The first video frame is the cached
        keyframe, stamped with the stream's last video time; the first audio frame is the
        next one."""
        info = []
        if self.output is not None:
            timestamp = (self._timestamp_origin + self.stream.last_video_pts) & 0xFFFFFFFF
            info.append(f"url={base}{H264_CONTROL};seq={self._sequence};rtptime={timestamp}")
        if self.audio_output is not None:
            info.append(f"url={base}{AUDIO_CONTROL};seq={self._audio_sequence};rtptime={self._audio_rtptime}")
        return ",".join(info)

    def start(self) -> None:
        """Send frames from now on (after the PLAY answer is written)."""
        self.subscription.audio.attach(self._deliver_audio if self.audio_output else lambda frame: True)
        self.subscription.video.attach(self._deliver if self.output else lambda frame: True)

    def _deliver(self, frame: MediaFrame) -> bool:
        assert self.output is not None
        if not self.output.writable():
            return False
        payloads, timestamp = rtp_payloads(self.stream, frame, H264_RTP)
        timestamp = (self._timestamp_origin + timestamp) & 0xFFFFFFFF
        packets = [
            rtp_header(
                payload_type=H264_PAYLOAD_TYPE,
                marker=marker,
                sequence=sequence,
                timestamp=timestamp,
                ssrc=self.ssrc,
            )
            + payload
            for sequence, marker, payload in frame_packets(payloads, self._sequence)
        ]
        self._sequence = sequence_after(self._sequence, len(packets))
        self.output.send(packets)
        self.packets += len(packets)
        return True

    def _deliver_audio(self, frame: MediaFrame) -> bool:
        """One audio frame in one packet (RFC 7587, RFC 3551: no marker for continuous audio)."""
        audio, output = self.audio_format, self.audio_output
        assert output is not None
        if audio is None or frame.codec != audio.codec:
            return True  # not what the SDP announced: nothing to send
        if not output.writable():
            return False
        time = round(frame.pts * frame.time_base * audio.clock_rate)
        if self._audio_origin is None:
            # The first frame is "now", as the replayed keyframe is for the video: the
            # stream's audio and video clocks need not share an origin.
            self._audio_origin = self._audio_rtptime - time
        header = rtp_header(
            payload_type=audio.payload_type,
            marker=False,
            sequence=self._audio_sequence,
            timestamp=(self._audio_origin + time) & 0xFFFFFFFF,
            ssrc=self.audio_ssrc,
        )
        output.send([header + frame.data])
        self._audio_sequence = (self._audio_sequence + 1) & 0xFFFF
        self.packets += 1
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
