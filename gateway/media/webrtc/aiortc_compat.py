"""Every private aiortc/aioice attribute the gateway relies on, in one place.

aiortc offers no public way to relay encoded media without decoding or re-encoding it, nor
to share sockets between peer connections. The gateway reaches into aiortc 1.16 and aioice
0.13 for that (docs/architecture.md, "Private aiortc/aioice internals relied on"). No other
module spells a private aiortc/aioice name: they call the small accessors here, and
`check()` (run when the gateway starts) probes every name on real objects and says which
fast paths this aiortc supports. tests/unit/test_aiortc_compat.py touches every attribute
on a negotiated peer connection, so an aiortc upgrade that renames one fails there first.

What each feature falls back to when its internals are missing:

- ``fast_fanout`` (packetize once, write each viewer's SRTP directly): aiortc's stock
  sender per viewer (`DirectRtpWriter.attach` returns None);
- ``decoder_tap`` (encoded frames out of a receiver): none; each WebRTC/WHIP publish fails
  with `InternalsMissing` naming it, the rest of the gateway works;
- ``rtcp_feedback`` (NACK/PLI counted and forwarded, keyframe requests to publishers,
  packets lost per SSRC): not counted, no keyframe requests;
- ``ice_workarounds`` (host address choice, consent-task leak guard): aioice's defaults;
- ``port_mux`` (all sessions on one UDP and one TCP port): none; when the ports are
  configured the start fails naming what is missing;
- ``fast_receive`` (a publisher's SRTP unprotected, parsed and handled in the datagram's
  own callback, `install_fast_receive`; its H.264 by the gateway's own RTP receive,
  `OwnH264Receive`): aiortc's receive task, packet by packet;
- ``fast_rtcp`` (a fast fan-out viewer's SRTCP unprotected, parsed, routed and handled in
  the datagram's own callback, `install_fast_rtcp`): aiortc's receive task, datagram by
  datagram;
- ``sender_reports`` (a fast fan-out viewer's RTCP sender reports sent by one timer of the
  process, `sender_reports.py`, instead of a task per sender): aiortc's RTCP loop per
  sender (`hold_sender_reports` returns None);
- ``fanout_floor`` (each viewer's access unit protected in place by libsrtp and written with
  one ``sendmmsg``/GSO ``sendmsg``/TCP write, `floor.py`): the fast fan-out's per-packet
  ``Session.protect`` and ``sendto``. Besides the names, `check()` runs the floor once on a
  known packet and compares its bytes with ``Session.protect``'s (`floor.self_test`).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import struct
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import aioice.ice
import pylibsrtp
from aiortc import (
    RTCConfiguration,
    RTCDtlsTransport,
    RTCIceTransport,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
)
from aiortc import clock as _clock
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcdtlstransport import State as _DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
    unpack_remb_fci,
)
from aiortc.rtp import is_rtcp as _is_rtcp
from aiortc.utils import uint16_add

from gateway.log import get_logger
from gateway.media.rtsp.rtp import AccessUnit
from gateway.media.webrtc import rtp_in

log = get_logger(__name__)

RtcpHandler = Callable[[Any], Awaitable[None]]
NackSender = Callable[[int, list[int]], Awaitable[None]]
PliSender = Callable[[int], Awaitable[None]]


class InternalsMissing(RuntimeError):
    """This aiortc/aioice lacks an internal the gateway needs and has no fallback for."""


# --- RTCRtpSender ------------------------------------------------------------------------------

# What aiortc's RTCP loop builds sender reports from (name-mangled privates of RTCRtpSender).
SENDER_COUNTERS = (
    "_RTCRtpSender__ntp_timestamp",
    "_RTCRtpSender__rtp_timestamp",
    "_RTCRtpSender__octet_count",
    "_RTCRtpSender__packet_count",
)


class SenderCounters(NamedTuple):
    ntp_timestamp: int
    rtp_timestamp: int
    octets: int
    packets: int


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    """The sender's media SSRC and RTX SSRC (aiortc picks them; RTCP reports name them)."""
    return sender._ssrc, sender._rtx_ssrc


def sender_counters(sender: RTCRtpSender) -> SenderCounters:
    """What the sender's next sender report will carry. Raises AttributeError when this
    aiortc keeps them elsewhere (then writing them would only add unused attributes)."""
    ntp, rtp, octets, packets = (getattr(sender, name) for name in SENDER_COUNTERS)
    return SenderCounters(ntp, rtp, octets, packets)


def set_sender_counters(
    sender: RTCRtpSender, *, ntp_timestamp: int, rtp_timestamp: int, octets: int, packets: int
) -> None:
    """Make the sender's reports tell what was written past it (once per frame and viewer:
    plain assignments, no lookup of the names)."""
    sender._RTCRtpSender__ntp_timestamp = ntp_timestamp  # type: ignore[attr-defined]
    sender._RTCRtpSender__rtp_timestamp = rtp_timestamp  # type: ignore[attr-defined]
    sender._RTCRtpSender__octet_count = octets  # type: ignore[attr-defined]
    sender._RTCRtpSender__packet_count = packets  # type: ignore[attr-defined]


_SENDER_STATS = "_RTCRtpSender__stats"


def remote_packets_lost(sender: RTCRtpSender) -> int:
    """The packets lost that the viewer's receiver reports gave (aiortc files them as
    remote-inbound-rtp when a report arrives), read without ``getStats()``, which builds the
    sender's and its transports' statistics anew on every call. Raises AttributeError when
    this aiortc keeps them elsewhere (the caller then uses ``getStats()``)."""
    stats = getattr(sender, _SENDER_STATS)
    return sum(s.packetsLost for s in stats.values() if s.type == "remote-inbound-rtp")


def sender_rtcp_handler(sender: RTCRtpSender) -> RtcpHandler:
    """The coroutine aiortc hands each RTCP packet for this sender (RR, NACK, PLI, FIR...)."""
    handler: RtcpHandler = sender._handle_rtcp_packet
    return handler


def set_sender_rtcp_handler(sender: RTCRtpSender, handler: RtcpHandler) -> None:
    sender._handle_rtcp_packet = handler  # type: ignore[method-assign,assignment]


# What aiortc's RTCP loop keeps for a sender: the events its stop() waits on, and the last
# sender report's middle NTP bits and time, from which receiver reports give the round trip.
_SENDER_RTCP_LOOP = (
    "_RTCRtpSender__rtcp_started",
    "_RTCRtpSender__rtcp_exited",
    "_RTCRtpSender__lsr",
    "_RTCRtpSender__lsr_time",
)


def hold_sender_reports(sender: RTCRtpSender) -> Callable[[bool], None] | None:
    """Call before ``sender.send()``: its RTCP loop (``_run_rtcp``, replaced on the instance)
    waits for a decision, ``decide(True)``: aiortc's own loop (sender reports and SDES every
    0.5 to 1.5 s, BYE at stop); ``decide(False)``: the caller sends the reports (and calls
    `sender_report_sent` for each), and the loop only waits for stop to send the BYE, as
    aiortc's does. Decide right after ``send()`` returns (stop() waits for the loop to have
    begun). None (nothing changed) if this aiortc lacks a name."""
    try:
        stock_loop = sender._run_rtcp
        send_rtcp = sender._send_rtcp
        started, exited, _, _ = (getattr(sender, name) for name in _SENDER_RTCP_LOOP)
        ssrc = sender._ssrc
    except AttributeError:
        return None
    decided: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def run_rtcp() -> None:
        if await decided:
            await stock_loop()
            return
        started.set()
        try:
            await asyncio.get_running_loop().create_future()  # until stop() cancels
        except asyncio.CancelledError:
            # As aiortc's loop: the BYE, then exited (which stop() waits for); the
            # cancellation goes on (stop() does not await this task).
            try:
                await send_rtcp([RtcpByePacket(sources=[ssrc])])
            finally:
                exited.set()
            raise

    def decide(stock: bool) -> None:
        if not decided.done():
            decided.set_result(stock)

    sender._run_rtcp = run_rtcp  # type: ignore[method-assign]
    return decide


def sender_report_sent(sender: RTCRtpSender, ntp_timestamp: int, sent_at: float) -> None:
    """Tell the sender a report with ``ntp_timestamp`` went out at ``sent_at`` (time.time()):
    what its RTCP loop notes, so that the receiver's next report gives the round trip."""
    sender._RTCRtpSender__lsr = (ntp_timestamp >> 16) & 0xFFFFFFFF  # type: ignore[attr-defined]
    sender._RTCRtpSender__lsr_time = sent_at  # type: ignore[attr-defined]


# --- RTCDtlsTransport, RTCIceTransport, aioice Connection -------------------------------------


def tx_srtp(dtls: RTCDtlsTransport) -> Any:
    """The transport's outbound SRTP session (pylibsrtp ``Session``; None before DTLS is up)."""
    return dtls._tx_srtp


def ice_connection(transport: RTCIceTransport) -> aioice.ice.Connection:
    """The aioice ``Connection`` behind an ICE transport."""
    return transport._connection


def nominated_pair(dtls: RTCDtlsTransport) -> aioice.ice.CandidatePair | None:
    """The nominated candidate pair of RTP component 1 under a DTLS transport (None before
    ICE has nominated one). Its ``protocol.transport`` is the socket, ``remote_addr`` the
    peer's address."""
    nominated: dict[int, aioice.ice.CandidatePair] = ice_connection(dtls.transport)._nominated
    return nominated.get(1)


def ice_transports(pc: RTCPeerConnection) -> list[RTCIceTransport]:
    """The peer connection's ICE transports (one per bundle group)."""
    return list(pc._RTCPeerConnection__iceTransports)  # type: ignore[attr-defined]


def add_ice_protocol(connection: aioice.ice.Connection, protocol: aioice.ice.StunProtocol) -> None:
    """Add a protocol (a local socket share) to a connection after gathering started: its
    candidate pairs and consent checks then use it like one aioice opened."""
    connection._protocols.append(protocol)


def forget_remote_candidates_end(connection: aioice.ice.Connection) -> None:
    """Undo an end-of-candidates already applied (ICE may still succeed over ICE-TCP)."""
    connection._remote_candidates_end = False


def connection_closing(connection: aioice.ice.Connection) -> bool:
    """Whether ``close()`` has run on the connection (False if this aioice cannot tell)."""
    closing: bool = getattr(connection, "_closing", False)
    return closing


def cancel_consent_task(connection: aioice.ice.Connection) -> None:
    """Stop the connection's consent-freshness task, if it runs."""
    task = getattr(connection, "_query_consent_task", None)
    if task is not None:
        task.cancel()
        connection._query_consent_task = None


# --- pylibsrtp ---------------------------------------------------------------------------------


def srtp_binding() -> tuple[Any, Any]:
    """pylibsrtp's cffi ``ffi`` and ``lib`` (libsrtp 2: ``srtp_protect(srtp_t, void *, int *)``)."""
    binding = importlib.import_module("pylibsrtp._binding")  # compiled: no stubs for mypy
    return binding.ffi, binding.lib


def srtp_context(session: pylibsrtp.Session) -> Any:
    """The libsrtp ``srtp_t`` of a pylibsrtp ``Session`` (valid while the session lives)."""
    return session._srtp[0]


# --- RTCRtpReceiver ----------------------------------------------------------------------------

_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"


def replace_decoder_queue(receiver: RTCRtpReceiver, queue: Any) -> None:
    """Give the receiver ``queue`` where it puts ``(codec, JitterFrame)`` per complete frame
    (``None`` at stop), and from which its decoder thread ``get()``s. Call before it starts."""
    if not hasattr(receiver, _DECODER_QUEUE):
        raise InternalsMissing(
            "aiortc's RTCRtpReceiver has no decoder queue attribute: this aiortc version is not "
            "supported for passthrough (pin aiortc 1.16.x)"
        )
    setattr(receiver, _DECODER_QUEUE, queue)


def receiver_rtx_ssrcs(receiver: RTCRtpReceiver) -> dict[int, int]:
    """RTX SSRC -> media SSRC, as negotiated ({} if this aiortc does not say)."""
    rtx: dict[int, int] = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", {})
    return rtx


def receiver_stream_statistics(receiver: RTCRtpReceiver) -> dict[int, Any]:
    """SSRC -> aiortc's ``StreamStatistics`` (``packets_lost`` ...) for every SSRC received."""
    streams: dict[int, Any] = getattr(receiver, "_RTCRtpReceiver__remote_streams", {})
    return streams


def receiver_feedback(receiver: RTCRtpReceiver) -> tuple[NackSender, PliSender] | None:
    """The coroutines that send NACK and PLI toward the remote sender (None if missing)."""
    try:
        return receiver._send_rtcp_nack, receiver._send_rtcp_pli
    except AttributeError:
        return None


def set_receiver_feedback(receiver: RTCRtpReceiver, nack: NackSender, pli: PliSender) -> None:
    """Replace them on this receiver (aiortc's jitter buffer calls them by these names)."""
    receiver._send_rtcp_nack = nack  # type: ignore[method-assign,assignment]
    receiver._send_rtcp_pli = pli  # type: ignore[method-assign,assignment]


def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> Awaitable[None]:
    """Ask the remote sender for a keyframe (RTCP PLI naming ``media_ssrc``)."""
    return receiver._send_rtcp_pli(media_ssrc)


# --- frames completed as soon as they can be -------------------------------------------------

_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"


class PassthroughJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer (reordering, loss and NACK handling, its PLI on overflow) with
    frames handed out as soon as they are complete: a video frame at its RTP marker bit
    (the last packet of an access unit, RFC 6184 and 7741) once every packet before it is
    in, an audio packet at once. aiortc's own completes a frame only when the next frame's
    first packet arrives (one frame interval, 33 ms at 30 fps) and holds 4 audio packets
    (80 ms): what a decoder may want, only delay for a relay. A video frame whose sender
    sets no marker is still completed by the next timestamp, as aiortc does. It reads the
    depayloaded bytes where aiortc's receiver puts them (``RtpPacket._data``)."""

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        if not self._is_video:
            # One packet is one audio frame: out as it comes, a gap holds nothing back (a
            # late packet is older than the origin and dropped by `add`).
            pos = sequence_number % self._capacity
            packet: Any = self._packets[pos]
            self._packets[pos] = None
            self._origin = uint16_add(sequence_number, 1)
            return None if packet is None else JitterFrame(data=packet._data, timestamp=packet.timestamp)
        assert self._origin is not None  # set by `add` before it calls this
        packets: list[Any] = []
        timestamp: int | None = None
        for count in range(self._capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None:
                return None  # a packet of this frame is missing (its NACK is out)
            if timestamp is not None and packet.timestamp != timestamp:
                return self._take(packets, timestamp, count)  # ended without a marker
            timestamp = packet.timestamp
            packets.append(packet)
            if packet.marker:
                return self._take(packets, timestamp, count + 1)
        return None

    def _take(self, packets: list[Any], timestamp: int, count: int) -> JitterFrame:
        frame = JitterFrame(data=b"".join(packet._data for packet in packets), timestamp=timestamp)
        self.remove(count)
        return frame


def complete_frames_early(receiver: RTCRtpReceiver) -> bool:
    """Give ``receiver`` a `PassthroughJitterBuffer` like the one it has (call before it
    starts). False (nothing changed) if this aiortc lacks what that needs."""
    current = getattr(receiver, _JITTER_BUFFER, None)
    if type(current) is not JitterBuffer or not all(
        hasattr(current, name) for name in ("_capacity", "_origin", "_packets", "_is_video", "_remove_frame")
    ):
        return False
    setattr(receiver, _JITTER_BUFFER, PassthroughJitterBuffer(current.capacity, is_video=current._is_video))
    return True


# --- the fast receive path ---------------------------------------------------------------------

# What a receiver's RTP handling reads and writes (name-mangled privates of RTCRtpReceiver).
_RECEIVER_STATE = (
    "_RTCRtpReceiver__remote_bitrate_estimator",
    "_RTCRtpReceiver__rtcp_ssrc",
    "_RTCRtpReceiver__active_ssrc",
    "_RTCRtpReceiver__codecs",
    "_RTCRtpReceiver__remote_streams",
    "_RTCRtpReceiver__rtx_ssrc",
    "_RTCRtpReceiver__nack_generator",
    "_RTCRtpReceiver__jitter_buffer",
    "_RTCRtpReceiver__timestamp_mapper",
)
_CONNECTED = _DtlsState.CONNECTED
_now_ms = _clock.current_ms
_parse_rtp = RtpPacket.parse
_parse_rtcp = RtcpPacket.parse

RtpHandler = Callable[[Any, int], None]


def _remb(
    receiver: RTCRtpReceiver, estimator: Any, abs_send_time: int, arrival_ms: int, size: int, ssrc: int
) -> RtcpPsfbPacket | None:
    """One packet into the receiver's bitrate estimator; the REMB to send when it has a new
    estimate and the receiver knows its RTCP SSRC (set late, by the first RTCP)."""
    remb = estimator.add(
        abs_send_time=abs_send_time, arrival_time_ms=arrival_ms, payload_size=size, ssrc=ssrc
    )
    rtcp_ssrc = getattr(receiver, _RECEIVER_STATE[1])
    if rtcp_ssrc is None or remb is None:
        return None
    return RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(*remb))


def fast_rtp_handler(receiver: RTCRtpReceiver, deliver: Callable[[Any], None]) -> RtpHandler:
    """A synchronous stand-in for ``RTCRtpReceiver._handle_rtp_packet`` (aiortc 1.16) that
    hands each complete ``(codec, JitterFrame)`` to ``deliver`` instead of the decoder
    queue. It keeps what a relayed publisher needs, in aiortc's order: REMB from the
    bitrate estimator, the active-SSRC stamps, the per-SSRC statistics (loss, receiver
    reports), RTX unwrapping, NACKs, depayloading, the jitter buffer and its PLIs. The RTCP
    it sends (rare: NACK, PLI, REMB) goes out as tasks. Not done: the per-packet debug log
    and the decoder-error PLI (nothing decodes). Raises AttributeError if this aiortc lacks
    a name (the caller keeps the stock path)."""
    import aiortc.rtcrtpreceiver as rr
    from aiortc.codecs import depayload, is_rtx
    from aiortc.rtp import unwrap_rtx

    (estimator, _, active, codecs, streams, rtx_ssrcs, nacks, jitter, mapper) = (
        getattr(receiver, name) for name in _RECEIVER_STATE
    )
    stream_statistics, current_datetime = rr.StreamStatistics, rr.clock.current_datetime
    send_rtcp = receiver._send_rtcp
    pending: set[asyncio.Future[None]] = set()  # the RTCP sends in flight, held until done
    # Whether a codec is RTX, by its MIME type (``is_rtx`` splits and lowers it per call).
    rtx_by_mime: dict[str, bool] = {}

    def spawn(work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        pending.add(task)
        task.add_done_callback(pending.discard)

    def handle(packet: Any, arrival_time_ms: int) -> None:
        if not receiver._enabled:
            return
        if estimator is not None and packet.extensions.abs_send_time is not None:
            size = len(packet.payload) + packet.padding_size
            remb = _remb(
                receiver, estimator, packet.extensions.abs_send_time, arrival_time_ms, size, packet.ssrc
            )
            if remb is not None:
                spawn(send_rtcp(remb))
        active[packet.ssrc] = current_datetime()
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return
        stats = streams.get(packet.ssrc)
        if stats is None:
            stats = streams[packet.ssrc] = stream_statistics(codec.clockRate)
        stats.add(packet)
        rtx = rtx_by_mime.get(codec.mimeType)
        if rtx is None:
            rtx = rtx_by_mime[codec.mimeType] = is_rtx(codec)
        if rtx:
            original_ssrc = rtx_ssrcs.get(packet.ssrc)
            apt = codec.parameters.get("apt")
            if (
                original_ssrc is None
                or len(packet.payload) < 2
                or not isinstance(apt, int)
                or apt not in codecs
            ):
                return
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)
            codec = codecs[apt]
        if nacks is not None and nacks.add(packet):
            # Looked up per call: the publisher counts them by wrapping this name.
            spawn(receiver._send_rtcp_nack(packet.ssrc, sorted(nacks.missing)))
        try:
            packet._data = depayload(codec, packet.payload) if packet.payload else b""
        except ValueError:
            return
        pli_flag, frame = jitter.add(packet)
        if pli_flag:
            spawn(receiver._send_rtcp_pli(packet.ssrc))
        if frame is not None:
            frame.timestamp = mapper.map(frame.timestamp)
            deliver((codec, frame))

    return handle


RawRtpHandler = Callable[[bytes, int], bool]  # (decrypted RTP packet, arrival in ms): taken
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


class OwnH264Receive:
    """A receiver's H.264 video by the gateway's own RTP receive (`rtp_in.H264Receive`)
    instead of aiortc's per-packet objects: each decrypted packet's header read once, REMB
    from aiortc's bitrate estimator, the per-SSRC statistics its receiver reports read, the
    active-SSRC stamp (per access unit), NACK and PLI sent as aiortc's receiver sends them,
    access units to ``deliver`` (parameter sets put before keyframes, as `h264`'s cache
    does). `raw` takes a decrypted datagram, `parsed` a packet aiortc parsed (those that
    came before the switch, through aiortc's receive task); both return False for another
    payload type (VP8, audio: left to aiortc's handling). Make it with `of`."""

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        codec: RTCRtpCodecParameters,
        video: rtp_in.H264Receive,
        abs_send_time_id: int,
        deliver: Callable[[RTCRtpCodecParameters, AccessUnit], None],
    ) -> None:
        import aiortc.rtcrtpreceiver as rr

        self.receiver = receiver
        self.codec = codec
        self.video = video
        self.abs_send_time_id = abs_send_time_id
        self.deliver = deliver
        self._estimator, self._active, self._streams, self._rtx_ssrcs = (
            getattr(receiver, _RECEIVER_STATE[k]) for k in (0, 2, 4, 5)
        )
        self._send_rtcp = receiver._send_rtcp
        self._statistics, self._now = rr.StreamStatistics, rr.clock.current_datetime
        self._pending: set[asyncio.Future[None]] = set()  # the RTCP sends in flight, held until done
        self._seen = types.SimpleNamespace(sequence_number=0, timestamp=0)  # what StreamStatistics reads

    @classmethod
    def of(
        cls,
        receiver: RTCRtpReceiver,
        parameters: RTCRtpReceiveParameters,
        deliver: Callable[[RTCRtpCodecParameters, AccessUnit], None],
    ) -> OwnH264Receive | None:
        """None if no H.264 was negotiated, or this aiortc lacks a name (the caller keeps
        aiortc's handling for all)."""
        from aiortc.codecs import is_rtx

        h264 = [
            c for c in parameters.codecs if c.mimeType.lower() == "video/h264" and c.payloadType is not None
        ]
        if not h264:
            return None
        h264_types = frozenset(c.payloadType for c in h264 if c.payloadType is not None)
        rtx_types = frozenset(
            c.payloadType
            for c in parameters.codecs
            if is_rtx(c) and c.parameters.get("apt") in h264_types and c.payloadType is not None
        )
        abs_send_time_id = next((x.id for x in parameters.headerExtensions if x.uri == ABS_SEND_TIME_URI), 0)
        try:
            return cls(
                receiver, h264[0], rtp_in.H264Receive(h264_types, rtx_types), abs_send_time_id, deliver
            )
        except AttributeError:
            return None

    def raw(self, data: bytes, arrival_ms: int) -> bool:
        try:
            header = rtp_in.parse_header(data, self.abs_send_time_id)
        except rtp_in.RtpError:
            return True  # what aiortc does: dropped
        return self._packet(header, data, arrival_ms)

    def parsed(self, packet: RtpPacket, arrival_ms: int) -> bool:
        payload = packet.payload
        header = rtp_in.RtpHeader(
            packet.payload_type,
            bool(packet.marker),
            packet.sequence_number,
            packet.timestamp,
            packet.ssrc,
            0,
            len(payload),
            packet.extensions.abs_send_time,
        )
        return self._packet(header, payload, arrival_ms)

    def _packet(self, header: rtp_in.RtpHeader, data: bytes, arrival_ms: int) -> bool:
        receiver, video = self.receiver, self.video
        if not receiver._enabled:
            return True
        if not video.takes(header.payload_type):
            return False
        ssrc = header.ssrc
        if self._estimator is not None and header.abs_send_time is not None:
            remb = _remb(
                receiver, self._estimator, header.abs_send_time, arrival_ms, len(data) - header.start, ssrc
            )
            if remb is not None:
                self._spawn(self._send_rtcp(remb))
        stats = self._streams.get(ssrc)
        if stats is None:
            stats = self._streams[ssrc] = self._statistics(self.codec.clockRate)
        seen = self._seen
        seen.sequence_number, seen.timestamp = header.sequence, header.timestamp
        stats.add(seen)
        if header.payload_type in video.rtx_payload_types:
            media_ssrc = self._rtx_ssrcs.get(ssrc)
            if media_ssrc is None:
                return True  # as aiortc: an RTX stream it cannot tie to its media stream
        else:
            media_ssrc = ssrc
        received = video.packet(header, data)
        if received is rtp_in.NOTHING:
            return True
        if received.nack:
            # Looked up per call: the publisher counts them by wrapping this name.
            self._spawn(receiver._send_rtcp_nack(media_ssrc, received.nack))
        if received.keyframe_wanted:
            self._spawn(receiver._send_rtcp_pli(media_ssrc))
        for unit in received.units:
            self._active[media_ssrc] = self._now()
            self.deliver(self.codec, unit)
        return True

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


def install_own_receive(receiver: RTCRtpReceiver, own: OwnH264Receive) -> bool:
    """Have decrypted SRTP packets routed to ``receiver`` go to ``own`` unparsed (the first
    packet of each SSRC is still parsed by aiortc, to route it), and those aiortc's receive
    task still hands the receiver (queued before the switch) go to it parsed: it sees the
    stream from its first packet. False (nothing changed) if this aiortc lacks a name."""
    fast = _FastPath.of(receiver.transport)
    if fast is None:
        return False
    fast.raw_handlers[receiver] = own.raw
    stock = receiver._handle_rtp_packet

    async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        if not own.parsed(packet, arrival_time_ms):
            await stock(packet, arrival_time_ms=arrival_time_ms)

    receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]
    return True


def own_receive_ssrcs(receiver: RTCRtpReceiver) -> list[int]:
    """The SSRCs whose packets go to ``receiver``'s own-receive handler unparsed (for tests
    and logs: empty when aiortc's handling has them all)."""
    fast: _FastPath | None = getattr(receiver.transport, _FAST_PATH, None)
    handler = fast.raw_handlers.get(receiver) if fast is not None else None
    if fast is None or handler is None:
        return []
    return [ssrc for ssrc, raw in fast.raw_by_ssrc.items() if raw == handler]


def install_fast_receive(receiver: RTCRtpReceiver, handler: RtpHandler) -> bool:
    """Have SRTP packets for ``receiver`` taken off its ICE connection as they arrive
    (``Connection.data_received``, on the instance): unprotected, parsed, routed and handed
    to ``handler`` synchronously, instead of queued for the DTLS transport's receive task
    (one task wake-up and a coroutine chain per packet). DTLS, and anything before SRTP is
    keyed, still take aiortc's path; so do packets routed to a receiver without a handler,
    and any datagram while earlier ones still wait in the connection's queue (so order is
    kept across the switch). SRTCP too, unless `install_fast_rtcp` was called. Call once
    the receiver has started (DTLS connected). False (nothing changed) if this aiortc lacks
    a name."""
    fast = _FastPath.of(receiver.transport)
    if fast is None:
        return False
    fast.rtp_handlers[receiver] = handler
    return True


def install_fast_rtcp(dtls: RTCDtlsTransport) -> bool:
    """Have SRTCP for ``dtls`` (a viewer's receiver reports, NACK, PLI/FIR, BYE) taken off
    its ICE connection as it arrives: unprotected, parsed, routed as aiortc routes it
    (``RtpRouter.route_rtcp``) and handed to each recipient's ``_handle_rtcp_packet`` in the
    datagram's own callback, instead of one wake-up of the DTLS transport's receive task and
    a coroutine chain per datagram. Those handlers are coroutines; each is run at once to
    its end when it never really awaits (aiortc's for a fast fan-out sender: statistics and
    round-trip time, a keyframe flag; the viewer's hook: counts, NACK answered from the
    writer, PLI forwarded), else finished in a task (`_InOrder`), the packets after it
    waiting their turn. The same fall-backs as `install_fast_receive` (DTLS, a backlog,
    SRTP not yet keyed). Call once DTLS is connected; again is harmless. False (nothing
    changed) if this aiortc lacks a name."""
    fast = _FastPath.of(dtls)
    if fast is None:
        return False
    fast.rtcp = True
    return True


# Read by the fast path (besides the DTLS transport's receive state): the transport's counts
# of datagrams received, which its getStats() reports ("transport" packetsReceived/bytesReceived).
_RX_COUNTS = ("_RTCDtlsTransport__rx_packets", "_RTCDtlsTransport__rx_bytes")
_FAST_PATH = "_skyrelay_fast_path"  # on the DTLS transport


class _FastPath:
    """The datagram callback that replaces aioice's ``Connection.data_received`` on one DTLS
    transport's connection (installed once): fast RTP for the receivers with a handler,
    fast SRTCP once `rtcp` is set, aiortc's own queue for everything else."""

    def __init__(self, dtls: RTCDtlsTransport, connection: aioice.ice.Connection) -> None:
        self.dtls = dtls
        self.rtp_handlers: dict[Any, RtpHandler] = {}
        self.raw_handlers: dict[Any, RawRtpHandler] = {}  # by receiver (`install_own_receive`)
        self.raw_by_ssrc: dict[int, RawRtpHandler] = {}  # by SSRC, once routed
        self.rtcp = False
        self.rtcp_runner = _InOrder()
        self._stock = connection.data_received
        self._backlog: asyncio.Queue[Any] = connection._queue
        self._router = dtls._rtp_router
        self._extensions = dtls._rtp_header_extensions_map

    @classmethod
    def of(cls, dtls: RTCDtlsTransport) -> _FastPath | None:
        """The transport's fast path, installed now if need be (None if a name is missing)."""
        fast: _FastPath | None = getattr(dtls, _FAST_PATH, None)
        if fast is not None:
            return fast
        try:
            connection = dtls.transport._connection
            for name in _RX_COUNTS:
                if not isinstance(getattr(dtls, name), int):
                    return None
            if dtls._rx_srtp is None or dtls._state is None or not callable(connection.data_received):
                return None
            fast = cls(dtls, connection)
        except AttributeError:
            return None
        setattr(dtls, _FAST_PATH, fast)
        connection.data_received = fast.data_received  # type: ignore[method-assign]
        return fast

    def data_received(self, data: bytes, component: int) -> None:
        dtls = self.dtls
        srtp = dtls._rx_srtp
        # While datagrams wait for the receive task (DTLS, and what came before the switch),
        # this one queues behind them: handlers see packets in arrival order.
        if not (127 < data[0] < 192) or self._backlog.qsize() or srtp is None or dtls._state != _CONNECTED:
            self._stock(data, component)
            return
        if _is_rtcp(data):
            if not self.rtcp:
                self._stock(data, component)
                return
            self._count(data)
            self._rtcp_received(srtp, data)
        elif self.rtp_handlers:
            self._count(data)
            self._rtp_received(srtp, data)
        else:
            self._stock(data, component)

    def _count(self, data: bytes) -> None:
        # What aiortc's receive task counts for every datagram.
        dtls: Any = self.dtls
        dtls._RTCDtlsTransport__rx_packets += 1
        dtls._RTCDtlsTransport__rx_bytes += len(data)

    def _rtcp_received(self, srtp: Any, data: bytes) -> None:
        try:
            packets = _parse_rtcp(srtp.unprotect_rtcp(data))
        except (pylibsrtp.Error, ValueError, struct.error):
            return  # what aiortc does: dropped (replayed, forged, malformed)
        router, run = self._router, self.rtcp_runner.run
        for packet in packets:
            for recipient in _route_rtcp(router, packet):
                run(recipient._handle_rtcp_packet(packet))

    def _rtp_received(self, srtp: Any, data: bytes) -> None:
        arrival_ms = _now_ms()
        try:
            data = srtp.unprotect(data)
        except pylibsrtp.Error:
            return  # what aiortc does: dropped (replayed, forged)
        raw = self.raw_by_ssrc.get(int.from_bytes(data[8:12], "big")) if self.raw_by_ssrc else None
        if raw is not None and raw(data, arrival_ms):
            return
        try:
            packet = _parse_rtp(data, self._extensions)
        except ValueError:
            return  # what aiortc does: dropped (truncated)
        target = self._router.route_rtp(packet)
        if target is None:
            return
        if raw is None:
            raw = self.raw_handlers.get(target)
            if raw is not None:
                # Routed once by aiortc: this SSRC's next packets go to the receiver unparsed.
                self.raw_by_ssrc[packet.ssrc] = raw
                if raw(data, arrival_ms):
                    return
        fast = self.rtp_handlers.get(target)
        if fast is not None:
            fast(packet, arrival_ms)
        else:
            # Not ours: aiortc's own handling, as a task in arrival order.
            asyncio.ensure_future(target._handle_rtp_packet(packet, arrival_time_ms=arrival_ms))


def _route_rtcp(router: Any, packet: Any) -> list[Any]:
    """``RtpRouter.route_rtcp`` of aiortc 1.16, the same recipients (each once): a sender
    report or BYE to the receiver of its source, reports to the senders they are about,
    feedback to the sender of its media SSRC, REMB to those its FCI names. aiortc's builds a
    typing ``Union`` for a nested function's annotations on every call: most of its cost."""
    recipients: list[Any] = []

    def add(recipient: Any) -> None:
        if recipient is not None and recipient not in recipients:
            recipients.append(recipient)

    ssrc_table, senders = router.ssrc_table, router.senders
    if isinstance(packet, RtcpSrPacket):
        add(ssrc_table.get(packet.ssrc))
    elif isinstance(packet, RtcpByePacket):
        for source in packet.sources:
            add(ssrc_table.get(source))
    if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
        for report in packet.reports:
            add(senders.get(report.ssrc))
    elif isinstance(packet, (RtcpPsfbPacket, RtcpRtpfbPacket)):
        add(senders.get(packet.media_ssrc))
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                for ssrc in unpack_remb_fci(packet.fci)[1]:
                    add(senders.get(ssrc))
            except ValueError:
                pass
    return recipients


class _InOrder:
    """Runs coroutines one after another, each at once in the caller's callback while none
    is pending: one that really suspends is finished by a task, and those that come while
    it is pending run after it in that task. aiortc's receive task awaits each RTCP handler
    before the next datagram; this keeps that order with no task for a handler that never
    waits. A handler that raises is logged (aiortc's receive task would end the transport)."""

    __slots__ = ("_waiting", "_task", "failures")

    def __init__(self) -> None:
        self._waiting: deque[Coroutine[Any, Any, Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    @property
    def pending(self) -> bool:
        return self._waiting is not None

    def run(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self._waiting is not None:
            self._waiting.append(coro)
            return
        try:
            suspended = coro.send(None)
        except StopIteration:
            return
        except Exception as exc:
            self._failed(exc)
            return
        self._waiting = deque()
        self._task = asyncio.ensure_future(self._finish(coro, suspended))

    async def _finish(self, coro: Coroutine[Any, Any, Any], suspended: Any) -> None:
        try:
            try:
                await _resumed(coro, suspended)
            except Exception as exc:
                self._failed(exc)
            while self._waiting:
                try:
                    await self._waiting.popleft()
                except Exception as exc:
                    self._failed(exc)
        finally:
            for left in self._waiting or ():
                left.close()  # cancelled with the loop: never run
            self._waiting = self._task = None

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        if self.failures == 1:  # one event per connection, not per packet
            log.warning("rtcp_handler_failed", error=repr(exc))


@types.coroutine
def _resumed(coro: Coroutine[Any, Any, Any], suspended: Any) -> Generator[Any, Any, Any]:
    """The rest of ``coro``, which was started outside a task and suspended yielding
    ``suspended``: awaited by a task, it hands what ``coro`` yields to that task and what
    the task sends or throws back to ``coro`` (``await`` of a started coroutine)."""
    while True:
        try:
            sent = yield suspended
        except BaseException as exc:
            try:
                suspended = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                suspended = coro.send(sent)
            except StopIteration as stop:
                return stop.value


# --- the start-up check ------------------------------------------------------------------------

FEATURES = (
    "fast_fanout",
    "decoder_tap",
    "rtcp_feedback",
    "ice_workarounds",
    "port_mux",
    "fanout_floor",
    "fast_receive",
    "early_frames",
    "fast_rtcp",
    "sender_reports",
)


_OWNERS = {
    "pc": "aiortc RTCPeerConnection",
    "sender": "aiortc RTCRtpSender",
    "receiver": "aiortc RTCRtpReceiver",
    "dtls": "aiortc RTCDtlsTransport",
    "ice": "aiortc RTCIceTransport",
    "connection": "aioice Connection",
    "protocol": "aioice StunProtocol",
    "module": "aioice ice",
    "srtp": "pylibsrtp Session",
    "srtp_binding": "pylibsrtp _binding",
    "srtp_lib": "pylibsrtp _binding.lib",
    "jitter": "aiortc JitterBuffer",
    "router": "aiortc RtpRouter",
}


@dataclass(frozen=True, slots=True)
class Internal:
    """One attribute the gateway relies on: on which object, for which feature."""

    feature: str
    owner: str  # a key of _OWNERS
    attribute: str  # as Python spells it (name-mangled for a ``__private``)
    kind: type | None = None  # what it must be, where that matters

    @property
    def name(self) -> str:
        cls = _OWNERS[self.owner].split()[1]
        mangled = f"_{cls}__"
        shown = self.attribute
        if shown.startswith(mangled):
            shown = "__" + shown[len(mangled) :]
        return f"{_OWNERS[self.owner]}.{shown}"


# What the datagram callback of both fast receive paths (`_FastPath`) reads or replaces:
# (owner, attribute, kind).
_FAST_PATH_NAMES: tuple[tuple[str, str, type | None], ...] = (
    ("dtls", "_rx_srtp", None),
    ("dtls", "_state", None),
    ("dtls", "_rtp_router", None),
    ("dtls", "_rtp_header_extensions_map", None),
    *(("dtls", name, int) for name in _RX_COUNTS),
    ("ice", "_connection", aioice.ice.Connection),
    ("connection", "data_received", None),
    ("connection", "_queue", asyncio.Queue),
)

# Every internal accessed above or patched elsewhere in gateway/media/webrtc (public names
# too, where the gateway replaces them or relies on what aiortc does with them).
INTERNALS: tuple[Internal, ...] = (
    Internal("fast_fanout", "sender", "_ssrc", int),
    Internal("fast_fanout", "sender", "_rtx_ssrc", int),
    *(Internal("fast_fanout", "sender", name, int) for name in SENDER_COUNTERS),
    Internal("fast_fanout", "sender", "send"),
    Internal("sender_reports", "sender", "_run_rtcp"),
    Internal("sender_reports", "sender", "_send_rtcp"),
    Internal("sender_reports", "sender", "_ssrc", int),
    *(Internal("sender_reports", "sender", name, asyncio.Event) for name in _SENDER_RTCP_LOOP[:2]),
    *(Internal("sender_reports", "sender", name) for name in _SENDER_RTCP_LOOP[2:]),
    Internal("sender_reports", "srtp", "protect_rtcp"),
    Internal("fast_fanout", "dtls", "_tx_srtp"),
    Internal("fast_fanout", "ice", "_connection", aioice.ice.Connection),
    Internal("fast_fanout", "connection", "_nominated", dict),
    Internal("decoder_tap", "receiver", _DECODER_QUEUE),
    Internal("decoder_tap", "receiver", "receive"),
    Internal("rtcp_feedback", "sender", "_handle_rtcp_packet"),
    Internal("rtcp_feedback", "sender", _SENDER_STATS, dict),
    Internal("rtcp_feedback", "receiver", "_send_rtcp_nack"),
    Internal("rtcp_feedback", "receiver", "_send_rtcp_pli"),
    Internal("rtcp_feedback", "receiver", "_RTCRtpReceiver__remote_streams", dict),
    Internal("rtcp_feedback", "receiver", "_RTCRtpReceiver__rtx_ssrc", dict),
    Internal("ice_workarounds", "module", "get_host_addresses"),
    Internal("ice_workarounds", "connection", "connect"),
    Internal("ice_workarounds", "connection", "_closing", bool),
    Internal("ice_workarounds", "connection", "_query_consent_task"),
    Internal("port_mux", "pc", "_RTCPeerConnection__iceTransports", set),
    Internal("port_mux", "ice", "_connection", aioice.ice.Connection),
    Internal("port_mux", "connection", "get_component_candidates"),
    Internal("port_mux", "connection", "add_remote_candidate"),
    Internal("port_mux", "connection", "close"),
    Internal("port_mux", "connection", "_protocols", list),
    Internal("port_mux", "connection", "_remote_candidates_end", bool),
    Internal("port_mux", "connection", "local_username", str),
    Internal("port_mux", "connection", "local_password", str),
    Internal("port_mux", "connection", "stun_server"),
    Internal("port_mux", "protocol", "datagram_received"),
    Internal("port_mux", "protocol", "connection_lost"),
    Internal("port_mux", "module", "server_reflexive_candidate"),
    Internal("fanout_floor", "srtp", "_srtp"),
    Internal("fanout_floor", "srtp_binding", "ffi"),
    Internal("fanout_floor", "srtp_binding", "lib"),
    Internal("fanout_floor", "srtp_lib", "srtp_protect"),
    *(Internal("fast_receive", "receiver", name) for name in _RECEIVER_STATE),
    Internal("fast_receive", "receiver", "_enabled", bool),
    Internal("fast_receive", "receiver", "_send_rtcp"),
    Internal("fast_receive", "receiver", "_handle_rtp_packet"),
    Internal("fast_receive", "router", "route_rtp"),
    *(Internal("fast_receive", *name) for name in _FAST_PATH_NAMES),
    Internal("early_frames", "receiver", _JITTER_BUFFER, JitterBuffer),
    *(Internal("early_frames", "jitter", name) for name in ("_capacity", "_origin", "_packets", "_is_video")),
    Internal("early_frames", "jitter", "_remove_frame"),
    Internal("fast_rtcp", "sender", "_handle_rtcp_packet"),
    Internal("fast_rtcp", "router", "route_rtcp"),
    *(Internal("fast_rtcp", *name) for name in _FAST_PATH_NAMES),
)


@dataclass(frozen=True, slots=True)
class Report:
    """What `check()` found: the missing internal names of each feature."""

    missing: dict[str, list[str]] = field(default_factory=dict)

    def available(self, feature: str) -> bool:
        return not self.missing.get(feature)

    def all_missing(self) -> list[str]:
        return sorted({name for names in self.missing.values() for name in names})


def probe(pc: RTCPeerConnection) -> Report:
    """Probe every internal on ``pc`` (which has at least one transceiver)."""
    owners = probed_objects(pc)
    missing: dict[str, list[str]] = {}
    for internal in INTERNALS:
        owner = owners[internal.owner]
        present = owner is not None and hasattr(owner, internal.attribute)
        if present and internal.kind is not None:
            present = isinstance(getattr(owner, internal.attribute), internal.kind)
        if not present:
            missing.setdefault(internal.feature, []).append(internal.name)
    return Report(missing)


def probed_objects(pc: RTCPeerConnection) -> dict[str, Any]:
    """The objects of `INTERNALS`' owners for ``pc`` and its first transceiver."""
    transceiver = pc.getTransceivers()[0]
    dtls = transceiver.sender.transport
    ice = dtls.transport
    # Without aiortc's connection attribute, aioice's names are probed on a Connection of its own.
    connection = getattr(ice, "_connection", None)
    if not isinstance(connection, aioice.ice.Connection):
        connection = aioice.ice.Connection(ice_controlling=False)
    binding: Any = None
    try:
        binding = importlib.import_module("pylibsrtp._binding")
    except ImportError:
        pass
    return {
        "pc": pc,
        "sender": transceiver.sender,
        "receiver": transceiver.receiver,
        "dtls": dtls,
        "ice": ice,
        "connection": connection,
        "protocol": aioice.ice.StunProtocol,
        "module": aioice.ice,
        "srtp": pylibsrtp.Session(
            pylibsrtp.Policy(key=bytes(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        ),
        "srtp_binding": binding,
        "srtp_lib": getattr(binding, "lib", None),
        "jitter": JitterBuffer(capacity=16, is_video=True),
        "router": getattr(dtls, "_rtp_router", None),
    }


async def check(port_mux: bool) -> Report:
    """Probe the installed aiortc/aioice, log once which fast paths are available, and raise
    InternalsMissing (naming them) when the port mux is wanted (``port_mux``) and cannot work,
    the one feature without a fallback. Also runs the fan-out floor once (`floor.self_test`):
    it is used only if its bytes match pylibsrtp's and the kernel took its sends."""
    from gateway.media.webrtc import floor

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("video", direction="sendrecv")
        report = probe(pc)
    finally:
        await pc.close()
    if report.available("fanout_floor"):
        floor_problem = floor.self_test()
        if floor_problem is not None:
            report.missing.setdefault("fanout_floor", []).append(floor_problem)
    else:
        floor.disable("missing: " + ", ".join(report.missing["fanout_floor"]))
    level = log.warning if report.missing else log.info
    level(
        "aiortc_internals",
        aiortc=_version("aiortc"),
        aioice=_version("aioice"),
        fast_fanout=report.available("fast_fanout"),
        decoder_tap=report.available("decoder_tap"),
        rtcp_feedback=report.available("rtcp_feedback"),
        ice_workarounds=report.available("ice_workarounds"),
        port_mux=report.available("port_mux") if port_mux else "off",
        fanout_floor=report.available("fanout_floor"),
        fast_receive=report.available("fast_receive"),
        early_frames=report.available("early_frames"),
        fast_rtcp=report.available("fast_rtcp"),
        sender_reports=report.available("sender_reports"),
        floor_gso=floor.gso_available(),
        floor_native=floor.native_available(),
        floor_native_off=floor.native_reason(),
        floor_threads=floor.STATE.threads if floor.STATE.use_native else 1,
        missing=report.all_missing() or None,
    )
    if port_mux and not report.available("port_mux"):
        names = ", ".join(report.missing["port_mux"])
        raise InternalsMissing(f"this aiortc/aioice lacks what the WebRTC port mux needs: {names}")
    return report


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def names(feature: str | None = None) -> Iterator[str]:
    """The internal names checked (of one feature, or all), for docs and tests."""
    return (i.name for i in INTERNALS if feature is None or i.feature == feature)
