"""gateway.media.webrtc.sender_reports and `DirectRtpWriter.send_sender_report`: every fast
fan-out viewer's RTCP sender report from one timer per event loop, on aiortc's interval,
with the bytes aiortc's own RTCP loop sends."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSdesPacket, RtcpSenderInfo, RtcpSourceInfo, RtcpSrPacket

from gateway.media.stream import Stream
from gateway.media.webrtc import fanout, sender_reports
from gateway.media.webrtc.sender_reports import SenderReports


class Source:
    def __init__(self, loop: asyncio.AbstractEventLoop, reports: int) -> None:
        self.loop = loop
        self.left = reports
        self.times: list[float] = []

    def send_sender_report(self) -> bool:
        if not self.left:
            return False  # gone: forgotten
        self.left -= 1
        self.times.append(self.loop.time())
        return True


async def test_one_timer_sends_each_due_report_and_forgets_the_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    intervals = itertools.cycle([0.03, 0.08, 0.05])
    monkeypatch.setattr(sender_reports, "next_interval", lambda: next(intervals))
    loop = asyncio.get_running_loop()
    reports = SenderReports(loop)
    sources = [Source(loop, reports=n) for n in (3, 1, 4)]
    added = loop.time()
    for source in sources:
        reports.add(source)
    assert len(reports) == 3 and all(not s.times for s in sources)  # none sent at once
    async with asyncio.timeout(10):
        while len(reports):
            await asyncio.sleep(0.01)
    assert [len(s.times) for s in sources] == [3, 1, 4]
    assert reports.sent == 8 and reports._timer is None  # nothing left: no timer
    for source in sources:
        gaps = [b - a for a, b in itertools.pairwise([added, *source.times])]
        assert min(gaps) >= 0.03 - sender_reports.SLACK


def test_the_interval_is_aiortcs(monkeypatch: pytest.MonkeyPatch) -> None:
    for drawn, expected in ((0.0, 0.5), (0.999, 1.499)):
        monkeypatch.setattr(sender_reports.random, "random", lambda drawn=drawn: drawn)
        assert sender_reports.next_interval() == pytest.approx(expected)


class Sender:
    _ssrc, _rtx_ssrc = 0x11223344, 0x55667788
    _RTCRtpSender__ntp_timestamp = _RTCRtpSender__rtp_timestamp = 0
    _RTCRtpSender__octet_count = _RTCRtpSender__packet_count = 0
    _RTCRtpSender__lsr: int | None = None
    _RTCRtpSender__lsr_time: float | None = None


class Socket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, address: Any) -> None:
        self.sent.append(data)

    def get_write_buffer_size(self) -> int:
        return 0


class Srtp:
    def protect(self, data: bytes) -> bytes:
        return data

    def protect_rtcp(self, data: bytes) -> bytes:
        return b"srtcp:" + data


def test_a_writers_report_is_what_aiortcs_rtcp_loop_sends() -> None:
    codec = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)
    socket, sender = Socket(), Sender()
    writer = fanout.DirectRtpWriter(
        Stream("s"),
        sender,
        codec,
        bytes(12),
        None,
        Srtp(),
        socket,
        ("127.0.0.1", 9),  # type: ignore[arg-type]
    )
    writer.start_sender_reports("cname-1")
    writer.packets, writer.octets, writer.last_timestamp = (1 << 32) + 5, 123456, 90000
    writer.ntp_timestamp = 0x0123456789ABCDEF
    assert writer.send_sender_report()
    expected = bytes(
        RtcpSrPacket(
            ssrc=Sender._ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=0x0123456789ABCDEF, rtp_timestamp=90000, packet_count=5, octet_count=123456
            ),
        )
    ) + bytes(RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=Sender._ssrc, items=[(1, b"cname-1")])]))
    assert socket.sent == [b"srtcp:" + expected]
    # Noted as aiortc's loop notes it: the receiver's report then gives the round trip.
    assert sender._RTCRtpSender__lsr == 0x456789AB and sender._RTCRtpSender__lsr_time is not None
    writer.closed = True
    assert not writer.send_sender_report() and len(socket.sent) == 1
