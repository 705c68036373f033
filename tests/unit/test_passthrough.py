"""gateway.media.webrtc.passthrough: which SSRC a keyframe request names, and packet loss
counted on media SSRCs only, read from aiortc's receiver state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.media.webrtc.passthrough import media_ssrc, packets_lost


@dataclass
class Source:
    source: int


@dataclass
class Stats:
    packets_lost: int


class Receiver:
    """Stands for an aiortc RTCRtpReceiver: the same method and private attribute names."""

    def __init__(self, sources: list[int], rtx: dict[int, int], lost: dict[int, int]) -> None:
        self._sources = sources
        self._RTCRtpReceiver__rtx_ssrc = rtx
        self._RTCRtpReceiver__remote_streams = {ssrc: Stats(n) for ssrc, n in lost.items()}

    def getSynchronizationSources(self) -> list[Source]:
        return [Source(s) for s in self._sources]


def receiver(**kwargs: Any) -> Any:
    return Receiver(**kwargs)


def test_keyframe_request_names_the_media_ssrc_not_rtx() -> None:
    # Browsers send bandwidth-probing padding on the RTX SSRC; it may be seen first.
    assert media_ssrc(receiver(sources=[222, 111], rtx={222: 111}, lost={})) == 111
    assert media_ssrc(receiver(sources=[111, 222], rtx={222: 111}, lost={})) == 111


def test_keyframe_request_falls_back_to_the_rtx_mapping_and_to_none() -> None:
    assert media_ssrc(receiver(sources=[222], rtx={222: 111}, lost={})) == 111
    assert media_ssrc(receiver(sources=[], rtx={}, lost={})) is None


def test_packets_lost_counts_media_ssrcs_only() -> None:
    assert packets_lost(receiver(sources=[], rtx={222: 111}, lost={111: 4, 222: 9})) == 4
    assert packets_lost(receiver(sources=[], rtx={}, lost={})) == 0
