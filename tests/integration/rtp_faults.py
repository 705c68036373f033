"""Packet loss induced on an aiortc peer (a WCS client stream, a WHIP client): what the
NACK, PLI and loss figures are tested with."""

from __future__ import annotations

from typing import Any, Protocol

from aiortc import RTCPeerConnection
from aiortc.rtp import is_rtcp


class HasPeer(Protocol):
    pc: RTCPeerConnection


def drop_sent_video_packets(stream: HasPeer, count: int, after: int) -> list[int]:
    """Make a publisher's transport skip ``count`` video RTP packets after ``after`` sent."""
    dropped: list[int] = []
    sender = next(t.sender for t in stream.pc.getTransceivers() if t.kind == "video")
    transport = sender.transport
    send = transport._send_rtp
    seen = 0

    async def lossy(data: bytes) -> None:
        nonlocal seen
        if not is_rtcp(data) and int.from_bytes(data[8:12], "big") == sender._ssrc:
            seen += 1
            if after < seen <= after + count:
                dropped.append(int.from_bytes(data[2:4], "big"))
                return
        await send(data)

    transport._send_rtp = lossy  # type: ignore[method-assign]
    return dropped


def drop_received_video_packets(stream: HasPeer, count: int, after: int) -> list[int]:
    """Make a player's video receiver ignore ``count`` media packets after ``after``."""
    dropped: list[int] = []
    receiver = next(t.receiver for t in stream.pc.getTransceivers() if t.kind == "video")
    handle = receiver._handle_rtp_packet
    seen = 0
    media_ssrc: list[int] = []

    async def lossy(packet: Any, arrival_time_ms: int) -> None:
        nonlocal seen
        media_ssrc[:] = media_ssrc or [packet.ssrc]
        if packet.ssrc == media_ssrc[0]:
            seen += 1
            if after < seen <= after + count:
                dropped.append(packet.sequence_number)
                return
        await handle(packet, arrival_time_ms)

    receiver._handle_rtp_packet = lossy  # type: ignore[method-assign]
    return dropped
