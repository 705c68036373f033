"""Lean viewers: the ``viewers`` role with a receive path that only counts.

A counting viewer (`common.lighten_receivers`) still takes every RTP packet through
asyncio's datagram transport, aioice, the DTLS transport's queue, SRTP decryption and RTP
parsing: ≈ 0.8 of a core per 100 viewers of a 2 Mbit/s stream, so on two cores the load
generator runs out of CPU before a gateway with two workers does. A lean viewer connects
exactly like the others (a WCS ``playStream``, ICE, DTLS, PLAYING), then takes its ICE
socket's reads away from asyncio's transport: one reader callback drains the socket with
``recvfrom_into`` into one reused buffer, counts the RTP packets of the video stream and
their sequence numbers from the (unencrypted) RTP header, and hands everything else (STUN
consent checks and answers, DTLS, SRTCP sender reports) to aioice as before, so the peer
connection stays alive and answers the gateway's consent checks.

Counted per viewer: RTP packets of the negotiated video payload types (not RTX), and lost
= packets the sequence numbers say were sent (highest extended sequence − first + 1) minus
packets received, as an RTCP receiver report counts them. Nothing is decrypted, so a
packet the gateway got wrong would still be counted; the other viewer modes check that.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any

from aiortc import RTCPeerConnection

from .common import disable_decoding, lighten_receivers, run_role
from .viewers import Viewer, ViewerWorker

BUFFER = 2048  # the gateway sends RTP packets of at most ~1200 bytes


class RtpCounter:
    """Reads one ICE UDP socket in place of asyncio's transport (see the module docstring)."""

    def __init__(self, protocol: Any, payload_types: set[int]) -> None:
        self._protocol = protocol  # aioice StunProtocol: what gets everything that is not RTP
        self._types = frozenset(payload_types)
        self._buffer = bytearray(BUFFER)
        self._view = memoryview(self._buffer)
        self.received = 0
        self._base = -1
        self._highest = -1  # extended sequence number
        transport = protocol.transport
        self._fd = transport.get_extra_info("socket").fileno()
        # A duplicate of the descriptor, so the transport keeps (and closes) its own.
        self._sock = socket.socket(fileno=os.dup(self._fd))
        self._sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        # The transport registered its reader with the loop's private method, and the
        # public remove_reader refuses a descriptor a transport owns; when the transport
        # closes it removes whatever reader is registered (this one).
        self._loop._remove_reader(self._fd)  # type: ignore[attr-defined]
        self._loop._add_reader(self._fd, self._drain)  # type: ignore[attr-defined]

    @property
    def lost(self) -> int:
        if self._base < 0:
            return 0
        return max(0, self._highest - self._base + 1 - self.received)

    def _drain(self) -> None:
        buf = self._buffer
        types = self._types
        recv = self._sock.recvfrom_into
        while True:
            try:
                size, addr = recv(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # closed under us: the transport's close removes this reader
                return
            first, second = buf[0], buf[1]
            # RFC 7983: 128..191 is RTP or RTCP; RTCP's packet types put 192..223 in byte 2.
            if size >= 12 and 128 <= first <= 191 and (second & 0x7F) in types and not 192 <= second <= 223:
                seq = (buf[2] << 8) | buf[3]
                if self._base < 0:
                    self._base = self._highest = seq
                else:
                    delta = (seq - self._highest) & 0xFFFF
                    if delta < 0x8000:  # newer (older ones are reordered, counted only)
                        self._highest += delta
                self.received += 1
            else:
                self._protocol.datagram_received(bytes(self._view[:size]), addr)

    def close(self) -> None:
        """Close the duplicate (after the peer connection closed the transport's own)."""
        with contextlib.suppress(OSError):
            self._sock.close()


def _protocols(pc: RTCPeerConnection) -> list[Any]:
    """The aioice UDP protocols under `pc`'s transceivers (one with BUNDLE)."""
    found: dict[int, Any] = {}
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        if dtls is None:
            continue
        connection = dtls.transport.iceGatherer._connection
        for protocol in connection._protocols:
            if getattr(protocol, "transport", None) is not None:
                found[id(protocol)] = protocol
    return list(found.values())


def _video_payload_types(pc: RTCPeerConnection) -> set[int]:
    types: set[int] = set()
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "video":
            continue
        codecs = transceiver.receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
        types |= {pt for pt, codec in codecs.items() if codec.name != "rtx"}
    return types


class LeanViewer:
    """A connected `Viewer` whose packets are counted by `RtpCounter`s."""

    def __init__(self, viewer: Viewer) -> None:
        self.viewer = viewer
        types = _video_payload_types(viewer.pc)
        if not types:
            raise RuntimeError("lean viewer: no video payload type negotiated")
        protocols = _protocols(viewer.pc)
        if not protocols:
            raise RuntimeError("lean viewer: no ICE UDP socket (aiortc changed?)")
        self.counters = [RtpCounter(p, types) for p in protocols]

    def stats(self) -> tuple[int, int]:
        return sum(c.received for c in self.counters), sum(c.lost for c in self.counters)

    async def close(self) -> None:
        await self.viewer.close()
        for counter in self.counters:
            counter.close()


class LeanViewerWorker(ViewerWorker):
    """`ViewerWorker` whose viewers count with `RtpCounter` once PLAYING; with
    ``keep_sampled`` in an ``add``, those the latency probe samples stay counting viewers
    (the probe stamps each packet as aiortc's transport reads it)."""

    def __init__(self) -> None:
        super().__init__()
        self.lean: list[LeanViewer] = []
        self.counting: list[Viewer] = []

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "add":
            seen = len(self.lean) + len(self.counting)
            try:
                return await self.add(request)
            finally:  # viewers that connected before a failure count too
                added = self.viewers[seen:]
                if request.get("keep_sampled"):
                    await _first_keyframes(added)
                for viewer in added:
                    if request.get("keep_sampled") and viewer.sampled:
                        self.counting.append(viewer)
                    else:
                        self.lean.append(LeanViewer(viewer))
        if cmd == "stats":
            results = [v.stats() for v in self.lean]
            results += await asyncio.gather(*(v.stats() for v in self.counting))
            return {"received": [r for r, _ in results], "lost": [lo for _, lo in results]}
        if cmd == "close":
            closed = len(self.lean)
            await self.close()
            return {"closed": closed}
        return await super().handle(request)

    async def close(self) -> None:
        lean, self.lean = self.lean, []
        counting, self.counting = self.counting, []
        self.viewers = []
        self.latency.clear()
        closing = [v.close() for v in lean] + [v.close() for v in counting]
        await asyncio.gather(*closing, return_exceptions=True)


async def _first_keyframes(viewers: list[Viewer], timeout: float = 5.0) -> None:
    """Wait (at most ``timeout``) until each viewer's probe has its first keyframe after
    PLAYING whole: a lean viewer's packets no longer pass the probe."""
    deadline = asyncio.get_running_loop().time() + timeout
    while any(v.probe is not None and v.probe.key_last is None for v in viewers):
        if asyncio.get_running_loop().time() > deadline:
            return  # reported as missing joins
        await asyncio.sleep(0.02)


def run() -> None:
    disable_decoding()
    lighten_receivers()  # the viewers kept counting, and every viewer until it is made lean
    run_role("viewers", LeanViewerWorker)
