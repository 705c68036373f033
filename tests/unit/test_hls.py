"""`HlsPackager` fed access units straight into a Stream (no pacing): segments cut at keyframes
at the target, a sliding window, a new init segment and a discontinuity when the parameter
sets change, and segments that ffprobe decodes frame for frame."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from gateway.media.sinks.hls import HlsPackager
from gateway.media.stream import Codec, MediaFrame, Stream
from gateway.media.synthetic import make_h264_clip, read_access_units

CACHE = Path(os.environ.get("SKYRELAY_TEST_CACHE", Path.home() / ".cache" / "skyrelay-tests"))
Units = list[tuple[bytes, bool]]


@pytest.fixture(scope="module")
def clips() -> tuple[Units, Units]:
    """4 s of 320x240 with a keyframe a second, and 2 s of 160x120 with one every half second."""
    CACHE.mkdir(parents=True, exist_ok=True)
    big = make_h264_clip(CACHE, width=320, height=240, fps=30, seconds=4, bitrate=300_000, gop=30)
    small = make_h264_clip(CACHE, width=160, height=120, fps=30, seconds=2, bitrate=100_000, gop=15)
    return read_access_units(big), read_access_units(small)


class Feed:
    def __init__(self) -> None:
        self.stream = Stream("cam/hls")
        self.stream.set_codecs(Codec("H264", 90000), None)
        self.pts = 0

    async def push(self, units: Units) -> None:
        for data, keyframe in units:
            self.stream.push(MediaFrame("video", "H264", data, self.pts, Fraction(1, 90000), keyframe))
            self.pts += 3000
            await asyncio.sleep(0)  # let the packager take it


def ffprobe_frames(path: Path) -> tuple[int, int, int]:
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-of", "json",
         "-show_entries", "stream=width,height,nb_read_frames", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    stream = json.loads(done.stdout)["streams"][0]
    return stream["width"], stream["height"], int(stream["nb_read_frames"])


async def test_segments_window_and_discontinuity(clips: tuple[Units, Units], tmp_path: Path) -> None:
    big, small = clips
    feed = Feed()
    packager = HlsPackager(feed.stream, segment_target=1.0, window=3)
    try:
        await feed.push(big)
        # Keyframes at 0, 1, 2, 3 s: three finished one-second segments, the fourth open.
        assert [(s.sequence, s.duration, s.init) for s in packager.segments] == [
            (0, 1.0, 0),
            (1, 1.0, 0),
            (2, 1.0, 0),
        ]
        assert all(s.data[4:8] == b"moof" for s in packager.segments)
        assert packager.inits[0][4:8] == b"ftyp"
        # The whole first rendition decodes: init + segments = every frame so far.
        first = tmp_path / "first.mp4"
        first.write_bytes(packager.inits[0] + b"".join(s.data for s in packager.segments))
        assert ffprobe_frames(first) == (320, 240, 90)

        # New parameter sets (another size): the open segment is closed, a new init starts.
        await feed.push(small)
        segments = list(packager.segments)
        # The last 320x240 second (closed by the change), then the first 160x120 second.
        assert [(s.sequence, s.init, s.discontinuity) for s in segments] == [
            (0, 0, False),
            (1, 0, False),
            (2, 0, False),
            (3, 0, False),
            (4, 1, True),
        ]
        assert segments[3].duration == pytest.approx(1.0) and segments[4].duration == 1.0
        assert 1 in packager.inits

        playlist = packager.playlist()
        listed = [int(n) for n in re.findall(r"^seg-(\d+)\.m4s$", playlist, re.M)]
        assert len(listed) == 3 and listed == list(
            range(segments[-1].sequence - 2, segments[-1].sequence + 1)
        )
        assert f"#EXT-X-MEDIA-SEQUENCE:{listed[0]}\n" in playlist
        assert playlist.startswith("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:1\n")
        # The MAP of each rendition comes before its first listed segment; the discontinuity
        # before the first segment of the new one.
        maps = re.findall(r'^#EXT-X-MAP:URI="init-(\d+)\.mp4"$', playlist, re.M)
        assert maps[-1] == "1" and "#EXT-X-DISCONTINUITY\n" in playlist

        second = tmp_path / "second.mp4"
        second.write_bytes(packager.inits[1] + b"".join(s.data for s in segments if s.init == 1))
        width, height, frames = ffprobe_frames(second)
        assert (width, height) == (160, 120) and frames > 0
    finally:
        await packager.stop()
    assert packager.closed and not feed.stream.subscriptions


async def test_stream_end_closes_the_packager(clips: tuple[Units, Units]) -> None:
    feed = Feed()
    packager = HlsPackager(feed.stream, segment_target=1.0, window=3)
    await feed.push(clips[0][:45])
    feed.stream.end()
    async with asyncio.timeout(5):
        while not packager.closed:
            await asyncio.sleep(0.01)
    assert packager.first_segment.is_set() and not feed.stream.subscriptions
    await packager.stop()
