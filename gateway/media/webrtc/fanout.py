"""The fast fan-out path: packetize each access unit once per stream, then for every viewer
only patch an RTP header, encrypt and send, synchronously, in one loop per access unit.

Stock aiortc repeats for every viewer what is the same for all of them: packing the frame
into RTP payloads, building and serialising packets, and one coroutine chain per packet.
Measured on these machines (reference/aiortc-passthrough.md section 7) that is most of the
cost of a viewer. Here the payloads are made once (`rtp_payloads`, cached on the frame), and
a `DirectRtpWriter` per viewer and kind turns them into that viewer's packets.

What is kept from aiortc's sender: its SSRC and RTCP (sender reports carry the counters
written here; receiver reports, PLI and NACK arrive through it). NACKs are answered from
this writer's own history. The writer relies on private attributes of aiortc 1.16 and
aioice 0.13 (through `aiortc_compat`), all read in `DirectRtpWriter.attach`: if any is
missing it returns None and the viewer keeps aiortc's stock sender path.

On top of that, the floor (`floor.py`, on unless ``fanout_floor = false`` or its start
check failed): per access unit one burst that protects in place with libsrtp and sends
with one ``sendmmsg`` (UDP) or one write (ICE-TCP). Without it, each packet is protected
with pylibsrtp's ``Session.protect`` and sent with its own ``sendto``.
"""

from __future__ import annotations

import random
import struct
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from aiortc import RTCRtpSender
from aiortc import clock as rtc_clock
from aiortc.codecs import get_encoder, is_rtx
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters
from aiortc.rtp import RTCP_SR, HeaderExtensionsMap, RtcpSdesPacket, RtcpSourceInfo, RtpPacket

from gateway.log import get_logger
from gateway.media.rtp_frames import frame_packets, h264_payloads, sequence_after
from gateway.media.stream import FrameQueue, MediaFrame, Stream, to_90khz
from gateway.media.webrtc import aiortc_compat, floor

log = get_logger(__name__)

# Packets remembered per viewer for retransmission (about 2 s of 2.5 Mbit/s video), kept
# as the access units' payload lists (shared by all viewers), not a tuple per packet.
HISTORY = 512
# A viewer whose socket has this much unsent data is congested: it skips to a keyframe.
MAX_UNSENT_BYTES = 512 * 1024


def rtp_payloads(stream: Stream, frame: MediaFrame, codec: RTCRtpCodecParameters) -> tuple[list[bytes], int]:
    """The RTP payloads and RTP timestamp (codec clock) of ``frame``, computed once for all
    viewers. H.264 is cut by `h264_payloads`; other codecs by aiortc's packetizer: one
    per stream and kind keeps codec state such as VP8 picture ids
    continuous for the live frames; replayed keyframes for joining viewers use another, so
    they never put a gap in what the other viewers receive."""
    cached = frame.derived.get("rtp")
    if cached is None and codec.mimeType.lower() == "video/h264":
        # Our own packetizer: FU-A fragments of one size (GSO-able bursts), same timestamps.
        cached = frame.derived["rtp"] = (h264_payloads(frame.data), to_90khz(frame.pts, frame.time_base))
    elif cached is None:
        key = f"rtp-packetizer-{frame.kind}{'-replay' if frame.replay else ''}"
        packetizer = stream.shared.get(key)
        if packetizer is None:
            packetizer = stream.shared[key] = get_encoder(codec)
        cached = frame.derived["rtp"] = packetizer.pack(frame.packet())
    return cached


def payload_bytes(frame: MediaFrame, payloads: Sequence[bytes]) -> int:
    """The bytes of ``frame``'s RTP payloads (computed once for all viewers)."""
    size: int | None = frame.derived.get("rtp-bytes")
    if size is None:
        size = frame.derived["rtp-bytes"] = sum(map(len, payloads))
    return size


def packed_payloads(frame: MediaFrame, payloads: Sequence[bytes]) -> floor.Packed | None:
    """``frame``'s RTP payloads as the floor's C burst reads them (made once for all viewers),
    or None when the C burst is not in use."""
    derived = frame.derived
    if "rtp-packed" in derived:
        packed: floor.Packed | None = derived["rtp-packed"]
        return packed
    packed = derived["rtp-packed"] = floor.packed(payloads)
    return packed


class DirectRtpWriter:
    """One viewer's RTP for one media kind, written straight to its SRTP session and socket."""

    def __init__(
        self,
        stream: Stream,
        sender: RTCRtpSender,
        codec: RTCRtpCodecParameters,
        header: bytes,
        rtx: tuple[int, bytes] | None,
        srtp: Any,
        socket: Any,
        address: tuple[str, int],
        burst: floor.FloorPath | None = None,
    ) -> None:
        self.stream = stream
        self.sender = sender
        self.codec = codec
        assert codec.payloadType is not None  # negotiated: attach() checked it
        self._payload_type = codec.payloadType
        self._header = header
        self._protect = srtp.protect
        self._srtp = srtp
        self._socket = socket
        self._address = address
        self.floor = burst  # None: per-packet protect and sendto
        # Retransmissions go as RTX (RFC 4588): a plain resend repeats an SRTP index, which
        # the receiver's replay protection drops.
        self._rtx = rtx
        self._rtx_sequence = random.randint(0, 0xFFFF)
        self._sequence = random.randint(0, 0xFFFF)
        self.timestamp_origin = random.getrandbits(32)
        # Written with the stream's other viewers in one C call per access unit
        # (`ViewerBatch`) where the C burst and the socket allow it. The slot numbers the
        # units a batch writes (the C call moves its sequence number on); `_sequence`
        # follows it, and sets it when this writer joins a batch or writes alone.
        slot = (
            burst.batch_slot(header, self._payload_type, self.timestamp_origin) if burst is not None else None
        )
        self._slot = slot
        self._batch = ViewerBatch.of(stream, sender.kind) if slot is not None else None
        self.member_of: ViewerBatch | None = None  # the batch that writes it ahead, once a member
        self.queue: FrameQueue | None = None  # the viewer's queue that hands it frames (`in_step`)
        # (first sequence number, RTP timestamp, payloads) per access unit, oldest first.
        self._history: deque[tuple[int, int, Sequence[bytes]]] = deque()
        self._history_packets = 0
        self.packets = 0
        self.octets = 0
        self.last_timestamp = 0
        self.retransmitted = 0
        self.closed = False
        self.ntp_timestamp = 0  # of the last frame written: what sender reports carry
        self.own_reports = False  # this writer sends the sender reports (`send_sender_report`)
        self._report_ssrc = 0
        self._sdes = b""  # the SDES packet that follows each sender report

    @classmethod
    def attach(
        cls, stream: Stream, sender: RTCRtpSender, parameters: RTCRtpSendParameters, use_floor: bool = True
    ) -> DirectRtpWriter | None:
        """A writer for a started sender, or None if this aiortc/aioice does not expose
        what the fast path needs (the caller then keeps the stock path). ``use_floor``: write
        in bursts (`floor.py`) if its start check passed and the viewer's socket allows."""
        try:
            codec = parameters.codecs[0]
            if codec.payloadType is None:
                raise KeyError("the codec has no payload type")
            extensions = HeaderExtensionsMap()
            extensions.configure(parameters)
            ssrc, rtx_ssrc = aiortc_compat.sender_ssrcs(sender)
            template = RtpPacket(payload_type=codec.payloadType, sequence_number=0, timestamp=0)
            template.ssrc = ssrc
            template.extensions.mid = parameters.muxId
            header = template.serialize(extensions)
            rtx = None
            rtx_codec = next(
                (c for c in parameters.codecs if is_rtx(c) and c.parameters.get("apt") == codec.payloadType),
                None,
            )
            if rtx_codec is not None and rtx_codec.payloadType is not None:
                rtx_template = RtpPacket(payload_type=rtx_codec.payloadType, sequence_number=0, timestamp=0)
                rtx_template.ssrc = rtx_ssrc
                rtx_template.extensions.mid = parameters.muxId
                rtx = (rtx_codec.payloadType, rtx_template.serialize(extensions))
            dtls = sender.transport
            srtp = aiortc_compat.tx_srtp(dtls)
            pair = aiortc_compat.nominated_pair(dtls)
            if pair is None:
                raise KeyError("no nominated candidate pair")
            socket, address = pair.protocol.transport, pair.remote_addr
            aiortc_compat.sender_counters(sender)  # present, so that writing them is heard
            if srtp is None or socket is None:
                raise AttributeError("SRTP session or socket not ready")
        except (AttributeError, KeyError, IndexError, TypeError) as exc:
            log.warning("fast_fanout_unavailable", stream=stream.name, reason=str(exc))
            return None
        burst = None
        if use_floor and floor.available():
            try:
                burst = floor.FloorPath(srtp, socket, address)
            except (AttributeError, OSError, ValueError) as exc:
                floor.log_once("fanout_floor_unavailable", str(exc), stream=stream.name)
        return cls(stream, sender, codec, header, rtx, srtp, socket, address, burst)

    def follow(self, queue: FrameQueue) -> None:
        """Take frames from ``queue`` (attached to `write`): while it hands on every frame,
        a batch may write them ahead; when it stops (a gap, a new source, closed), the
        batch hears at once."""
        self.queue = queue
        queue.on_out_of_step = self.out_of_step

    def out_of_step(self) -> None:
        """Something `in_step` checks changed: its batch looks at its members again before
        the next unit."""
        batch = self.member_of
        if batch is not None:
            batch.invalidate()

    def close(self) -> None:
        """Write nothing more (the viewer left, or its transport went away)."""
        self.closed = True
        self.out_of_step()

    def write(self, frame: MediaFrame) -> bool:
        """Send ``frame`` to this viewer. False when the viewer's socket is congested (the
        frame was not sent) or gone."""
        if self.closed:
            return False
        member_of = self.member_of
        if member_of is not None and member_of.written is frame:
            # Its batch wrote it before the stream handed it to the subscribers (`ViewerBatch.open`).
            payloads, timestamp = rtp_payloads(self.stream, frame, self.codec)
            self._account(frame, payloads, self.rtp_timestamp(timestamp))
            return True
        try:
            unsent = self._socket.get_write_buffer_size()
            if unsent > MAX_UNSENT_BYTES:
                return False
            payloads, stream_timestamp = rtp_payloads(self.stream, frame, self.codec)
            timestamp = self.rtp_timestamp(stream_timestamp)
            size = payload_bytes(frame, payloads)
            burst = self.floor
            batch, slot = self._batch, self._slot
            fits = len(payloads) <= floor.MAX_MESSAGES
            if (
                batch is not None
                and slot is not None
                and burst is not None
                and batch.frame is frame
                and not unsent
                and fits
            ):
                # Sent with the other viewers once the stream has handed the frame to all;
                # from the next frame on, before (a member of the batch).
                if self._socket.is_closing():
                    raise OSError("the viewer's transport is closed")
                slot.sequence = self._sequence  # the batch's C call moves it on
                batch.add(self, burst, payloads, size, stream_timestamp)
            else:
                if burst is not None and fits:
                    packed = packed_payloads(frame, payloads)
                    self._send_burst(burst, payloads, self._sequence, timestamp, size, packed, unsent)
                else:
                    for sequence, marker, payload in frame_packets(payloads, self._sequence):
                        self._send(sequence, timestamp, marker, payload)
                if slot is not None:
                    slot.sequence = sequence_after(self._sequence, len(payloads))
        except (OSError, RuntimeError, AttributeError) as exc:
            self.transport_failed(exc)
            return False
        self._account(frame, payloads, timestamp)
        return True

    def rtp_timestamp(self, stream_timestamp: int) -> int:
        """This viewer's RTP timestamp for a stream timestamp (codec clock): each viewer's
        timeline starts at its own random origin."""
        return (self.timestamp_origin + stream_timestamp) & 0xFFFFFFFF

    def _account(self, frame: MediaFrame, payloads: Sequence[bytes], timestamp: int) -> None:
        """What a unit written to this viewer changes: its history, counters, next sequence
        number, and what its sender reports say."""
        self._remember(self._sequence, timestamp, payloads)
        self.octets += payload_bytes(frame, payloads)
        self._sequence = sequence_after(self._sequence, len(payloads))
        self.packets += len(payloads)
        self.last_timestamp = timestamp
        ntp = frame.derived.get("ntp")
        if ntp is None:
            # When the frame was first sent, once for all viewers: the wall clock that
            # goes with its RTP timestamp in every viewer's sender reports.
            ntp = frame.derived["ntp"] = rtc_clock.current_ntp_time()
        self.ntp_timestamp = ntp
        if not self.own_reports:
            self.sync_sender_counters()  # aiortc's RTCP loop builds this viewer's reports

    def in_step(self) -> bool:
        """Whether its batch may write it the next frame before the stream hands that frame
        to the subscribers: its queue hands on every frame (attached, not waiting for a
        keyframe, open), its floor and transport are up and hold nothing unsent. What turns
        it false calls `out_of_step`, but for the transport (`transport_owner`, asked by the
        batch each unit). A mux share closed on its own is seen when the writer closes (the
        viewer's teardown closes both)."""
        queue = self.queue
        if self.closed or self._slot is None or self.floor is None or queue is None or not queue.in_step:
            return False
        try:
            socket = self._socket
            return not socket.get_write_buffer_size() and not socket.is_closing()
        except (OSError, RuntimeError, AttributeError):
            return False

    def transport_owner(self) -> Any:
        """The transport whose unsent bytes and closing `in_step` reads: the shared port's
        for a viewer on the UDP mux (one for all its viewers), else its own."""
        socket = self._socket
        return getattr(socket, "shared_transport", socket)

    def _send_burst(
        self,
        burst: floor.FloorPath,
        payloads: Sequence[bytes],
        sequence: int,
        timestamp: int,
        size: int,
        packed: floor.Packed | None,
        unsent: int | None = None,
    ) -> None:
        """One access unit to this viewer alone, by the floor. Raises what the transport
        raises when it is gone."""
        try:
            burst.send(self._header, self._payload_type, payloads, sequence, timestamp, size, packed, unsent)
        except floor.FloorError as exc:
            self.floor_failed(exc)

    def write_alone(self, payloads: Sequence[bytes], size: int, stream_timestamp: int) -> None:
        """The unit this writer added to its batch (its first sequence number in its slot),
        sent by itself: the batch could not send it."""
        burst, slot = self.floor, self._slot
        if burst is None or slot is None or self.closed:
            return
        sequence = int(slot.sequence)
        slot.sequence = sequence_after(sequence, len(payloads))
        try:
            self._send_burst(burst, payloads, sequence, self.rtp_timestamp(stream_timestamp), size, None)
        except (OSError, RuntimeError, AttributeError) as exc:
            self.transport_failed(exc)

    def floor_failed(self, exc: floor.FloorError) -> None:
        """libsrtp refused a packet of a burst: the rest of that unit is lost (its indexes
        may be used), the next ones go packet by packet."""
        self.out_of_step()
        self.floor = self._slot = self._batch = None
        floor.log_once("fanout_floor_stopped", str(exc), stream=self.stream.name)

    def transport_failed(self, exc: Exception) -> None:
        """The transport closed under us (peer gone): stop writing, the peer's own state
        change ends the viewer."""
        if not self.closed:
            self.close()
            log.info("fast_fanout_stopped", stream=self.stream.name, reason=str(exc))

    def _remember(self, sequence: int, timestamp: int, payloads: Sequence[bytes]) -> None:
        history = self._history
        history.append((sequence, timestamp, payloads))
        self._history_packets += len(payloads)
        while self._history_packets - len(history[0][2]) >= HISTORY:
            self._history_packets -= len(history.popleft()[2])

    def _find(self, sequence: int) -> tuple[int, bool, bytes] | None:
        """(timestamp, marker, payload) of a packet still in the history."""
        for first, timestamp, payloads in reversed(self._history):
            index = (sequence - first) & 0xFFFF
            if index < len(payloads):
                return timestamp, index == len(payloads) - 1, payloads[index]
        return None

    def _send(self, sequence: int, timestamp: int, marker: bool, payload: bytes) -> None:
        packet = _patched(self._header, self._payload_type, marker, sequence, timestamp)
        packet += payload
        self._socket.sendto(self._protect(bytes(packet)), self._address)

    def retransmit(self, sequences: list[int]) -> None:
        """Answer a NACK from this writer's history (packets too old are gone). Without a
        negotiated RTX payload type there is no way to resend: the NACK goes unanswered."""
        if self.closed or self._rtx is None:
            return
        payload_type, header = self._rtx
        for sequence in sequences:
            entry = self._find(sequence)
            if entry is None:
                continue
            timestamp, marker, payload = entry
            packet = _patched(header, payload_type, marker, self._rtx_sequence, timestamp)
            packet += struct.pack("!H", sequence) + payload
            self._rtx_sequence = (self._rtx_sequence + 1) & 0xFFFF
            try:
                self._socket.sendto(self._protect(bytes(packet)), self._address)
            except (OSError, RuntimeError, AttributeError):
                self.close()
                return
            self.retransmitted += 1

    def sync_sender_counters(self) -> None:
        """Write this writer's counters into aiortc's sender: its RTCP loop's sender reports
        (when this writer does not send them: per access unit) and its getStats() (the
        viewer's 1 Hz rates) report them."""
        aiortc_compat.set_sender_counters(
            self.sender,
            ntp_timestamp=self.ntp_timestamp,
            rtp_timestamp=self.last_timestamp,
            octets=self.octets,
            packets=self.packets,
        )

    def start_sender_reports(self, cname: str) -> None:
        """Have `send_sender_report` send what aiortc's RTCP loop would for this sender."""
        self._report_ssrc = aiortc_compat.sender_ssrcs(self.sender)[0]
        sdes = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=self._report_ssrc, items=[(1, cname.encode())])])
        self._sdes = bytes(sdes)
        self.own_reports = True

    def send_sender_report(self) -> bool:
        """Send this viewer's RTCP sender report and SDES now, the bytes aiortc's RTCP loop
        would send (`sender_reports.py` calls it on aiortc's interval). False once the
        writer is closed (the viewer left or its transport went away)."""
        if self.closed:
            return False
        ntp = self.ntp_timestamp
        report = _SENDER_REPORT.pack(
            0x80,  # version 2, no reception report blocks
            RTCP_SR,
            6,  # length in 32-bit words, less one
            self._report_ssrc,
            ntp,
            self.last_timestamp,
            self.packets & 0xFFFFFFFF,
            self.octets & 0xFFFFFFFF,
        )
        try:
            self._socket.sendto(self._srtp.protect_rtcp(report + self._sdes), self._address)
        except (OSError, RuntimeError, AttributeError):
            self.close()
            return False
        # What aiortc's loop notes, for the round trip the next receiver report gives.
        aiortc_compat.sender_report_sent(self.sender, ntp, time.time())
        return True


class ViewerBatch:
    """A stream's viewers of one media kind on the C burst, written in one call per access
    unit (`floor.send_batch`) instead of one each.

    A viewer's first frame here (after it joined, or a keyframe after a gap): while
    `Stream.push` hands the frame to the subscribers, its `DirectRtpWriter.write` does its
    bookkeeping and adds itself; `close`, once the stream has handed the frame to all,
    writes it. From then on the viewer is a member: `open` writes it each frame *before*
    the stream hands the frame to anyone (so no viewer waits for the others' Python), and
    its `write` only does the bookkeeping.

    `open` does nothing per member: the members' slots number their units in C, and the
    members are looked at again (`in_step`) only when something changed. A member that
    stops being in step says so (`invalidate`: its queue waits for a keyframe or closed,
    the writer closed or lost its floor), and the few transports the members write through
    are asked each unit whether they hold unsent bytes or are closing. A member no longer
    in step leaves, and goes back to the first way. One per stream and kind (`of`), in
    `Stream.batches`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.frame: MediaFrame | None = None  # the frame the stream is handing out
        self.written: MediaFrame | None = None  # of it, what `open` wrote to the members
        self.members: list[DirectRtpWriter] = []
        self._valid = False  # `members` and what goes with them are as `in_step` says
        self._member_paths: list[floor.FloorPath] = []  # the members' floors
        self._slots: Any = None  # their slots as the C call takes them (`floor.slot_array`)
        self._owners: list[Any] = []  # the transports they write through (`transport_owner`)
        self._writers: list[DirectRtpWriter] = []  # joining with this frame
        self._paths: list[floor.FloorPath] = []  # their floors
        self._unit: tuple[Sequence[bytes], int, int] = ((), 0, 0)  # its payloads, bytes, timestamp
        self.calls = 0  # access units written in a batch (of one or more viewers)
        self.early = 0  # of them, written to members before the subscribers' loop
        self.checks = 0  # times the members were looked at again

    @classmethod
    def of(cls, stream: Stream, kind: str) -> ViewerBatch:
        key = f"fanout-batch-{kind}"
        batch: ViewerBatch | None = stream.shared.get(key)
        if batch is None:
            batch = stream.shared[key] = cls(kind)
            stream.batches.append(batch)
        return batch

    def invalidate(self) -> None:
        """A member may no longer be in step: look at them all before the next unit."""
        self._valid = False

    def open(self, frame: MediaFrame) -> None:
        if frame.kind != self.kind:
            return
        self.frame = frame
        if not self.members:
            return
        first = self.members[0]  # all of one stream and codec: the unit's payloads are theirs
        payloads, timestamp = rtp_payloads(first.stream, frame, first.codec)
        packed = packed_payloads(frame, payloads)
        if packed is None or len(payloads) > floor.MAX_MESSAGES:
            self._set_members([])  # each writes alone, and joins again
            return
        if not self._valid or self._owners_busy():
            self._check_members()
            if not self.members:
                return
        self.written = frame
        self.calls += 1
        self.early += 1
        size = payload_bytes(frame, payloads)
        self._failed(self.members, floor.send_batch(self._member_paths, packed, size, timestamp, self._slots))

    def _owners_busy(self) -> bool:
        for transport in self._owners:
            if transport is None or transport.get_write_buffer_size() or transport.is_closing():
                return True
        return False

    def _check_members(self) -> None:
        """Those no longer in step leave; the slot array and transports are made again."""
        self.checks += 1
        self._set_members([w for w in self.members if w.in_step()])

    def _set_members(self, candidates: list[DirectRtpWriter]) -> None:
        """The members from now on: those of ``candidates`` that still have their floor (one
        may have lost it to a failure in this very unit)."""
        for writer in self.members:
            writer.member_of = None
        members: list[DirectRtpWriter] = []
        paths: list[floor.FloorPath] = []
        for writer in candidates:
            if writer.floor is not None:
                writer.member_of = self
                members.append(writer)
                paths.append(writer.floor)
        self.members = members
        self._member_paths = paths
        self._slots = floor.slot_array(paths) if paths else None
        owners: dict[int, Any] = {}
        for writer in members:
            owner = writer.transport_owner()
            owners.setdefault(id(owner), owner)
        self._owners = list(owners.values())
        self._valid = True

    def add(
        self,
        writer: DirectRtpWriter,
        path: floor.FloorPath,
        payloads: Sequence[bytes],
        size: int,
        timestamp: int,
    ) -> None:
        """``writer`` joins with this unit (``timestamp``: the stream's), its first sequence
        number in its slot."""
        if not self._writers:
            self._unit = (payloads, size, timestamp)
        self._writers.append(writer)
        self._paths.append(path)

    def close(self) -> None:
        frame, self.frame, self.written = self.frame, None, None
        writers, paths = self._writers, self._paths
        if frame is None or not writers:
            return
        self._writers, self._paths = [], []
        payloads, size, timestamp = self._unit
        packed = packed_payloads(frame, payloads)
        if packed is None:  # the C burst was turned off (`floor.want_native`) since they joined
            for writer in writers:
                writer.write_alone(payloads, size, timestamp)
            return
        self.calls += 1
        self._failed(writers, floor.send_batch(paths, packed, size, timestamp))
        joined = [w for w in writers if not w.closed and w.floor is not None and w.member_of is None]
        if joined:
            self._set_members([*self.members, *joined])
            self._valid = False  # members that left meanwhile leave at the next unit

    @staticmethod
    def _failed(writers: Sequence[DirectRtpWriter], failures: list[tuple[int, Exception]]) -> None:
        for index, exc in failures:
            if isinstance(exc, floor.FloorError):
                writers[index].floor_failed(exc)
            else:
                writers[index].transport_failed(exc)


# An RTCP sender report without report blocks (RFC 3550 section 6.4.1).
_SENDER_REPORT = struct.Struct("!BBHLQLLL")


def _patched(header: bytes, payload_type: int, marker: bool, sequence: int, timestamp: int) -> bytearray:
    """A copy of a serialised header template with this packet's marker, payload type,
    sequence number and timestamp (RFC 3550 section 5.1)."""
    packet = bytearray(header)
    struct.pack_into("!BHI", packet, 1, (0x80 if marker else 0) | payload_type, sequence, timestamp)
    return packet
