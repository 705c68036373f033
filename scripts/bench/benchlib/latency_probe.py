"""The child side of the fan-out benchmark's latency measurement (see `latency.py` for the
orchestrator's side and docs/performance.md for the method).

Every time here is CLOCK_REALTIME in nanoseconds, the clock the kernel stamps received
packets with (``SIOCGSTAMPNS``); it is one system-wide clock, so the publisher's and the
viewers' stamps compare directly.

- The publisher (`SendStamps`) stamps each of its video RTP packets just before its
  ``sendto`` (the packet is in the gateway's socket buffer when that call returns: loopback)
  and keeps, per access unit (RTP timestamp), the first and the last stamp and the count.
  `LoopbackProbe` measures what loopback itself costs on that path (stamp, ``sendto``,
  kernel receive stamp on another socket), in the same process and window.
- A viewer (`ViewerProbe`) wraps its socket's ``datagram_received`` and takes the kernel's
  receive stamp of each video packet (``SIOCGSTAMPNS`` right after asyncio's ``recvfrom``):
  the time the packet was on the loopback "wire", whatever the viewer's event loop was
  doing then. The RTP header is in the clear in SRTP, so nothing is decrypted for this.
  Sampled viewers keep, while a window records, the same per-access-unit figures as the
  publisher. Every joining viewer keeps the stamps of its first packets until its receiver
  (after decryption) has seen the first keyframe: the first and the last packet of that
  keyframe against the time its WCS client got ``PLAYING``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import re
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCDtlsTransport, RTCPeerConnection, RTCRtpReceiver
from aiortc.rtp import RtpPacket

from gateway.media.webrtc import aiortc_compat
from gateway.wcs.client import ClientStream

SIOCGSTAMPNS = 0x8907  # linux/sockios.h: the receive time of the last packet read
LOOPBACK_PROBE_S = 0.02  # one loopback probe per 20 ms of a window
PENDING_MAX = 4096  # packet stamps a joining viewer keeps until it sees a keyframe
# (RTP timestamp, first stamp, last stamp, packets) of one access unit
Unit = list[int]


def video_payload_type(sdp: str) -> int:
    """The payload type a sender uses for video: the first format of the answer's video
    section (aiortc sends with the first negotiated codec)."""
    found = re.search(r"^m=video \d+ \S+ (\d+)", sdp, re.MULTILINE)
    if found is None:
        raise ValueError("no video section in the answer")
    return int(found.group(1))


def is_video_rtp(data: bytes, payload_type: int) -> bool:
    """An RTP (not RTCP, DTLS or STUN) packet of this payload type (RFC 5761, RFC 7983)."""
    return len(data) > 12 and data[0] >> 6 == 2 and data[1] & 0x7F == payload_type


def add_to_unit(units: dict[int, Unit], data: bytes, stamp: int) -> None:
    timestamp = int.from_bytes(data[4:8], "big")
    unit = units.get(timestamp)
    if unit is None:
        units[timestamp] = [timestamp, stamp, stamp, 1]
    else:
        unit[2] = stamp
        unit[3] += 1


def starts_keyframe(payload: bytes) -> bool:
    """An H.264 RTP payload (RFC 6184) that starts an IDR access unit: SPS or IDR as a single
    NAL unit or first in a STAP-A, or the first FU-A fragment of an IDR slice."""
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal in (5, 7):
        return True
    if nal == 24:  # STAP-A: 16-bit size, then the first NAL unit
        return len(payload) > 3 and payload[3] & 0x1F in (5, 7)
    if nal == 28:  # FU-A: start bit and type in the FU header
        return len(payload) > 1 and payload[1] & 0x80 != 0 and payload[1] & 0x1F == 5
    return False


class KernelClock:
    """The kernel's receive stamp of the last packet read from one socket."""

    def __init__(self, sock: Any) -> None:
        self._fd = sock.fileno()
        self._buf = bytearray(16)
        self.fallbacks = 0  # reads with no kernel stamp (the time of the read instead)
        # The first call turns receive stamping on for the socket (and the host).
        with contextlib.suppress(OSError):
            fcntl.ioctl(self._fd, SIOCGSTAMPNS, self._buf)

    def stamp(self) -> int:
        try:
            fcntl.ioctl(self._fd, SIOCGSTAMPNS, self._buf)
        except OSError:
            self.fallbacks += 1
            return time.time_ns()
        sec, nsec = struct.unpack_from("qq", self._buf)
        return sec * 1_000_000_000 + nsec


def video_dtls(pc: RTCPeerConnection) -> tuple[RTCRtpReceiver, RTCDtlsTransport]:
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "video":
            return transceiver.receiver, transceiver.receiver.transport
    raise ValueError("no video transceiver")


# --- publisher ---------------------------------------------------------------------------


class LoopbackProbe:
    """What loopback alone costs from a stamp before ``sendto`` to the kernel's receive stamp
    on the other end: the part of the publisher-to-viewer time that is not the relay's, on
    the ingest side."""

    def __init__(self) -> None:
        self._rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._rx.bind(("127.0.0.1", 0))
        self._rx.settimeout(0.1)
        self._tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._clock = KernelClock(self._rx)
        self._payload = bytes(1200)  # about one video packet
        self._buf = bytearray(2048)

    def measure(self) -> int | None:
        start = time.time_ns()
        self._tx.sendto(self._payload, self._rx.getsockname())
        try:
            self._rx.recv_into(self._buf)
        except OSError:
            return None
        return self._clock.stamp() - start

    def close(self) -> None:
        self._rx.close()
        self._tx.close()


class SendStamps:
    """The publisher's side: commands ``latency_start`` and ``latency_stop`` (-> units, the
    loopback probe's figures)."""

    COMMANDS = ("latency_start", "latency_stop")

    def __init__(self) -> None:
        self._transport: Any = None
        self._units: dict[int, Unit] = {}
        self._loopback: list[int] = []
        self._probe_task: asyncio.Task[None] | None = None

    def handle(self, request: dict[str, Any], stream: ClientStream | None) -> dict[str, Any]:
        if request.get("cmd") == "latency_start":
            if stream is None or stream.pc.remoteDescription is None:
                raise RuntimeError("not publishing")
            self.start(stream)
            return {}
        return self.stop()

    def start(self, stream: ClientStream) -> None:
        self.stop()
        payload_type = video_payload_type(stream.pc.remoteDescription.sdp)
        pair = aiortc_compat.nominated_pair(video_dtls(stream.pc)[1])
        if pair is None or pair.protocol.transport is None:
            raise RuntimeError("the publisher's ICE has no nominated pair")
        transport = self._transport = pair.protocol.transport
        send = transport.sendto
        units = self._units

        def sendto(data: bytes, addr: Any = None) -> None:
            if is_video_rtp(data, payload_type):
                add_to_unit(units, data, time.time_ns())
            send(data, addr)

        transport.sendto = sendto
        self._probe_task = asyncio.ensure_future(self._probe())

    async def _probe(self) -> None:
        probe = LoopbackProbe()
        try:
            while True:
                cost = probe.measure()
                if cost is not None:
                    self._loopback.append(cost)
                await asyncio.sleep(LOOPBACK_PROBE_S)
        finally:
            probe.close()

    def stop(self) -> dict[str, Any]:
        if self._transport is not None:
            with contextlib.suppress(AttributeError):
                del self._transport.sendto  # the class's own again
            self._transport = None
        if self._probe_task is not None:
            self._probe_task.cancel()
            self._probe_task = None
        units, self._units = list(self._units.values()), {}
        loopback, self._loopback = self._loopback, []
        return {"units": units, "loopback_ns": loopback}


# --- viewers -----------------------------------------------------------------------------


class ViewerProbe:
    """One viewer's stamps: its first keyframe after PLAYING, and (if sampled) every access
    unit while a window records."""

    def __init__(self, ident: int, sampled: bool) -> None:
        self.ident = ident
        self.sampled = sampled
        self.stream: ClientStream | None = None
        self.reported = False  # its join record went to the orchestrator
        self._payload_type = -1
        self._protocol: Any = None
        self._clock: KernelClock | None = None
        self._receiver: RTCRtpReceiver | None = None
        self._joining = True
        self._recording = False
        # sequence number -> (kernel stamp, time read), until the keyframe
        self._pending: dict[int, tuple[int, int]] = {}
        self._key_timestamp: int | None = None
        self.key_first: int | None = None
        self.key_read: int | None = None  # when the event loop read that first packet
        self.key_last: int | None = None
        self.units: dict[int, Unit] = {}

    async def before_answer(self, stream: ClientStream, answer: str) -> None:
        """`WcsClient.play`'s hook: the answer is in, the peer connection not started."""
        try:
            self._payload_type = video_payload_type(answer)
            receiver, _ = video_dtls(stream.pc)
        except ValueError:
            return  # no video to time: the viewer plays unprobed
        self.stream = stream
        self._receiver = receiver
        handle = receiver._handle_rtp_packet

        async def handle_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
            self._decrypted(packet)
            await handle(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtp_packet = handle_rtp  # type: ignore[method-assign]
        # ICE completes before DTLS starts, so no SRTP can come before the socket is hooked.
        # Every transport is watched: which one video uses is known once BUNDLE is applied.
        for transceiver in stream.pc.getTransceivers():
            transceiver.receiver.transport.transport.on("statechange", lambda: self._ice_state(stream.pc))

    def _ice_state(self, pc: RTCPeerConnection) -> None:
        dtls = video_dtls(pc)[1]
        if dtls.transport.state != "completed" or self._protocol is not None:
            return
        pair = aiortc_compat.nominated_pair(dtls)
        if pair is None or pair.protocol.transport is None:
            return
        self._protocol = pair.protocol
        self._clock = KernelClock(pair.protocol.transport.get_extra_info("socket"))
        self._hook()

    def _hook(self) -> None:
        protocol, clock = self._protocol, self._clock
        if protocol is None or clock is None or "datagram_received" in vars(protocol):
            return
        receive: Callable[[bytes, Any], None] = protocol.datagram_received
        payload_type = self._payload_type
        pending, units = self._pending, self.units

        def datagram_received(data: bytes, addr: Any) -> None:
            if is_video_rtp(data, payload_type):
                stamp = clock.stamp()
                if self._recording:
                    add_to_unit(units, data, stamp)
                if self._joining and len(pending) < PENDING_MAX:
                    pending[int.from_bytes(data[2:4], "big")] = (stamp, time.time_ns())
            receive(data, addr)

        protocol.datagram_received = datagram_received

    def _unhook(self) -> None:
        if self._protocol is not None and not (self._joining or self._recording):
            with contextlib.suppress(AttributeError):
                del self._protocol.datagram_received

    def _decrypted(self, packet: RtpPacket) -> None:
        if not self._joining or packet.payload_type != self._payload_type:
            return
        if self._key_timestamp is None:
            if not starts_keyframe(packet.payload):
                return
            self._key_timestamp = packet.timestamp
            self.key_first, self.key_read = self._pending.get(packet.sequence_number, (None, None))
        if packet.timestamp == self._key_timestamp and packet.marker:
            self.key_last = self._pending.get(packet.sequence_number, (None, None))[0]
            self._joining = False
            self._pending.clear()
            if self._receiver is not None:
                with contextlib.suppress(AttributeError):
                    del self._receiver._handle_rtp_packet
            self._unhook()

    @property
    def playing(self) -> int | None:
        return None if self.stream is None else self.stream.status_times.get("PLAYING")

    def join_record(self) -> dict[str, Any]:
        return {
            "id": self.ident,
            "playing": self.playing,
            "key_first": self.key_first,
            "key_read": self.key_read,
            "key_last": self.key_last,
        }

    def record(self, on: bool) -> None:
        self._recording = on
        if on:
            self.units.clear()
            self._hook()
        else:
            self._unhook()

    @property
    def fallbacks(self) -> int:
        return 0 if self._clock is None else self._clock.fallbacks


class ViewerStamps:
    """A viewer worker's side: a probe per WCS viewer; commands ``latency_start`` and
    ``latency_stop`` (-> the sampled viewers' units, the join records not sent yet)."""

    COMMANDS = ("latency_start", "latency_stop")
    SAMPLE_EVERY = 4  # of each batch of viewers: the last, and every 4th before it

    def __init__(self) -> None:
        self.probes: list[ViewerProbe] = []
        self._next = 0

    def probe(self, index: int, count: int) -> ViewerProbe:
        """The probe of viewer ``index`` of a batch of ``count`` this worker attaches."""
        probe = ViewerProbe(self._next, sampled=(count - 1 - index) % self.SAMPLE_EVERY == 0)
        self._next += 1
        self.probes.append(probe)
        return probe

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        sampled = [p for p in self.probes if p.sampled and p.stream is not None]
        if request.get("cmd") == "latency_start":
            for probe in sampled:
                probe.record(True)
            return {"sampled": len(sampled)}
        for probe in sampled:
            probe.record(False)
        joins = [p.join_record() for p in self.probes if not p.reported and p.stream is not None]
        for probe in self.probes:
            probe.reported = probe.reported or probe.stream is not None
        return {
            "viewers": [
                {
                    "id": p.ident,
                    "playing": p.playing,
                    "units": list(p.units.values()),
                    "fallbacks": p.fallbacks,
                }
                for p in sampled
            ],
            "joins": joins,
        }

    def clear(self) -> None:
        self.probes.clear()
