"""gateway.media.sinks.remux.Remuxer, the remuxing HLS and the DVR share: the held frame,
a new muxer where the parameter sets change or the sink cuts, the last frame of a muxer
given its true duration, errors that cost the muxer only, and the end."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from fractions import Fraction

import pytest

from gateway.media.sinks.fmp4 import Fmp4Muxer, Fragment
from gateway.media.sinks.remux import Remuxer
from gateway.media.stream import Codec, MediaFrame, Stream
from gateway.media.synthetic import make_h264_clip, read_access_units
from tests.unit.test_hls import CACHE, Feed, Units

VIDEO_TB = Fraction(1, 90000)


@pytest.fixture(scope="module")
def clips() -> tuple[Units, Units]:
    """4 s of 320x240 with a keyframe a second, and 2 s of 160x120 (other parameter sets)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    big = make_h264_clip(CACHE, width=320, height=240, fps=30, seconds=4, bitrate=300_000, gop=30)
    small = make_h264_clip(CACHE, width=160, height=120, fps=30, seconds=2, bitrate=100_000, gop=15)
    return read_access_units(big), read_access_units(small)


@dataclass
class Muxed:
    start: int  # pts of its first keyframe
    header: bytes | None = None
    fragments: list[Fragment] = field(default_factory=list)
    end: Fraction | None = None  # where its video ended, once closed


class Collector(Remuxer):
    """Keeps what the remuxer hands out: per muxer its header, fragments and video end."""

    def __init__(self, stream: Stream, *, fail_at: int | None = None, cut_every: int | None = None) -> None:
        super().__init__(stream)
        self.muxers: list[Muxed] = []
        self.failures: list[str] = []
        self.frames = 0
        self.fail_at = fail_at
        self.cut_every = cut_every
        self._subscribe(self, 300)
        self.task = asyncio.create_task(self._remux())

    def _take(self, muxer: Fmp4Muxer, fragments: list[Fragment]) -> None:
        self.muxers[-1].header = muxer.header
        self.muxers[-1].fragments += fragments

    def _opened(self, keyframe: MediaFrame) -> None:
        self.muxers.append(Muxed(keyframe.pts))

    def _closed(self) -> None:
        if self.muxers and self.muxers[-1].end is None:
            self.muxers[-1].end = self.video_end

    def _cut_due(self, keyframe: MediaFrame) -> bool:
        return self.cut_every is not None and keyframe.pts - self.muxers[-1].start >= self.cut_every

    def _check(self, frame: MediaFrame) -> None:
        self.frames += 1
        if self.frames == self.fail_at:
            raise OSError("the disk is full")

    def _failed(self, exc: Exception) -> None:
        self.failures.append(str(exc))


async def finish(collector: Collector, feed: Feed) -> None:
    feed.stream.end()
    async with asyncio.timeout(10):
        await collector.task
    collector._close_muxer(flush_held=True)


async def test_new_parameter_sets_start_a_muxer_and_the_old_one_ends_in_time(
    clips: tuple[Units, Units],
) -> None:
    big, small = clips
    feed = Feed()
    collector = Collector(feed.stream)
    await feed.push(big[:45])
    switch = feed.pts  # the first 160x120 keyframe
    await feed.push(small[:20])
    await finish(collector, feed)
    first, second = collector.muxers
    assert first.end is not None and second.end is not None
    # The last 320x240 frame lasts until the first 160x120 one: the timeline has no gap.
    assert first.end == switch * VIDEO_TB
    assert second.start == switch
    # 20 frames, the last one's duration guessed at the end (1/30 s).
    assert second.end == Fraction(20, 30)
    assert all(m.header is not None and m.fragments for m in collector.muxers)


async def test_the_sink_cuts_at_keyframes_and_an_error_costs_the_muxer_only(
    clips: tuple[Units, Units],
) -> None:
    big, _ = clips
    feed = Feed()
    collector = Collector(feed.stream, cut_every=90000, fail_at=50)
    await feed.push(big)  # 120 frames, a keyframe every 30
    await finish(collector, feed)
    assert collector.failures == ["the disk is full"]
    # Cuts a second after a muxer's start (frames 30 and 90); the error at the 50th frame
    # closes the muxer of frame 30, and the keyframe at 60 starts the next.
    starts = [m.start for m in collector.muxers]
    assert starts == [0, 30 * 3000, 60 * 3000, 90 * 3000]
    assert all(m.end is not None for m in collector.muxers)


async def test_frames_before_a_keyframe_other_codecs_and_steps_back_are_left_out(
    clips: tuple[Units, Units],
) -> None:
    big, _ = clips
    feed = Feed()
    collector = Collector(feed.stream)
    stream = feed.stream
    stream.set_codecs(Codec("H264", 90000), Codec("opus", 48000))
    await feed.push(big[1:30])  # no keyframe: nothing starts
    assert collector.muxers == []
    await feed.push(big[30:32])
    stream.push(MediaFrame("video", "VP8", b"\x00", feed.pts, VIDEO_TB, True))
    stream.push(MediaFrame("video", "H264", big[32][0], feed.pts - 6000, VIDEO_TB, False))  # back in time
    await feed.push(big[33:35])
    await finish(collector, feed)
    (only,) = collector.muxers
    # Four frames from the keyframe (the 30th pushed, at 29 * 3000): 30, 31, 33 and 34.
    assert only.start == 29 * 3000 and only.end == Fraction(4, 30)
