"""A synthetic, pre-encoded H.264 video source.

Used by tests, benchmarks and the DJI dock simulator. Nothing here encodes at
run time: `make_h264_clip` calls the ffmpeg CLI once (cached on disk),
`read_access_units` turns the clip into Annex-B access units, and
`EncodedVideoTrack` replays them in real time as `av.Packet`s, which an aiortc
`RTCRtpSender` packetises without re-encoding.
"""

from __future__ import annotations

import asyncio
import fractions
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from gateway.media.h264 import (
    NAL_AUD,
    NAL_IDR,
    NAL_PPS,
    NAL_SPS,
    START_CODE,
    find_parameter_sets,
    iter_nal_units,
)
from gateway.media.stream import NO_FEEDBACK, Codec, MediaFrame, SourceFeedback, Stream

__all__ = [
    "VIDEO_CLOCK_RATE",
    "ClipFeed",
    "VIDEO_TIME_BASE",
    "EncodedVideoTrack",
    "make_h264_clip",
    "read_access_units",
]

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)

_CLIP_SUFFIXES = (".mp4", ".h264", ".264")
_FFMPEG_TIMEOUT_S = 300.0
# When the event loop falls this far behind the schedule, re-anchor the clock
# instead of bursting every late frame at once.
_MAX_LAG_S = 1.0


def make_h264_clip(
    path: Path,
    *,
    width: int = 1280,
    height: int = 720,
    fps: int = 30,
    seconds: int = 10,
    bitrate: int = 2_000_000,
    gop: int = 30,
) -> Path:
    """Create (once) an H.264 test clip with ffmpeg and return its path.

    `path` is either a directory, or a file name ending in `.mp4` (MP4,
    AVCC) or `.h264`/`.264` (raw Annex-B). The encoding parameters are
    always put into the file name, so clips with different parameters never
    share a cache entry: ``clips/`` gives
    ``clips/testsrc2-1280x720-30fps-10s-2000000bps-g30.mp4``, and
    ``clips/a.h264`` gives ``clips/a-1280x720-30fps-10s-2000000bps-g30.h264``.
    An existing file is reused. The clip is written to a temporary name and
    renamed, so concurrent callers never see a partial file.

    Encoding: lavfi ``testsrc2``, libx264 ``veryfast``/``zerolatency``,
    Baseline profile, closed GOP of `gop` frames, no B-frames, yuv420p,
    average bitrate `bitrate` bit/s, no audio.
    """
    for name, value in (
        ("width", width),
        ("height", height),
        ("fps", fps),
        ("seconds", seconds),
        ("bitrate", bitrate),
        ("gop", gop),
    ):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs even dimensions, got {width}x{height}")

    path = Path(path)
    tag = f"{width}x{height}-{fps}fps-{seconds}s-{bitrate}bps-g{gop}"
    if path.suffix.lower() in _CLIP_SUFFIXES:
        directory = path.parent
        target = directory / f"{path.stem}-{tag}{path.suffix}"
    else:
        directory = path
        target = directory / f"testsrc2-{tag}.mp4"
    if target.is_file() and target.stat().st_size > 0:
        return target

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("the ffmpeg command is needed to create test clips")
    directory.mkdir(parents=True, exist_ok=True)
    fmt = "mp4" if target.suffix.lower() == ".mp4" else "h264"
    tmp = directory / f".{target.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    # x264 with global headers (MP4) keeps SPS/PPS in extradata only; as a raw
    # stream it repeats them before every IDR (repeat-headers is x264's
    # default when there is no global header).
    cmd = [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={width}x{height}:rate={fps}",
        "-t",
        str(seconds),
        "-an",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-tune",
        "zerolatency",
        "-profile:v",
        "baseline",
        "-g",
        str(gop),
        "-keyint_min",
        str(gop),
        "-sc_threshold",
        "0",
        "-bf",
        "0",
        "-pix_fmt",
        "yuv420p",
        "-b:v",
        str(bitrate),
        "-maxrate",
        str(bitrate),
        "-bufsize",
        str(bitrate),
        "-f",
        fmt,
        str(tmp),
    ]
    try:
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_FFMPEG_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace")[-2000:]
            raise RuntimeError(f"ffmpeg failed ({result.returncode}) creating {target}: {stderr}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _parameter_sets_from_extradata(extradata: bytes | None) -> tuple[bytes | None, bytes | None]:
    """SPS and PPS (without start codes) from avcC or Annex-B extradata."""
    if not extradata:
        return None, None
    sps: bytes | None = None
    pps: bytes | None = None
    if extradata[0] == 1 and len(extradata) >= 7:  # avcC record
        sps, pos = _avcc_first_set(extradata, 6, extradata[5] & 0x1F)
        if pos < len(extradata):
            pps, _ = _avcc_first_set(extradata, pos + 1, extradata[pos])
        return sps, pps
    return find_parameter_sets(iter_nal_units(extradata))


def _avcc_first_set(extradata: bytes, pos: int, count: int) -> tuple[bytes | None, int]:
    """The first of `count` length-prefixed parameter sets of an avcC record starting at
    `pos`, and the position after the last one."""
    first: bytes | None = None
    for _ in range(count):
        size = int.from_bytes(extradata[pos : pos + 2], "big")
        pos += 2
        first = first or extradata[pos : pos + size]
        pos += size
    return first, pos


def read_access_units(path: Path) -> list[tuple[bytes, bool]]:
    """Demux an H.264 clip into Annex-B access units with keyframe flags.

    MP4/FLV (AVCC) input goes through the ``h264_mp4toannexb`` bitstream
    filter; Annex-B input passes through it unchanged. Every IDR access unit
    returned carries SPS and PPS before its first IDR slice (taken from the
    stream, or from the extradata when missing). The keyframe flag is true
    exactly for access units containing an IDR slice.
    """
    units: list[tuple[bytes, bool]] = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        if stream.codec_context.name != "h264":
            raise ValueError(f"{path}: video codec is {stream.codec_context.name}, not h264")
        sps, pps = _parameter_sets_from_extradata(stream.codec_context.extradata)
        bsf = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", in_stream=stream)
        for packet in container.demux(stream):
            if not packet.size:  # the demuxer's end-of-stream marker
                continue
            # filter() empties `packet`; only the output packets are used.
            for out in bsf.filter(packet):
                units.extend(_annexb_units(bytes(out), sps, pps))
        for out in bsf.filter(None):
            units.extend(_annexb_units(bytes(out), sps, pps))

    if not units:
        raise ValueError(f"{path}: no video access units")
    if not units[0][1]:
        raise ValueError(f"{path}: does not start with an IDR access unit")
    return units


def _annexb_units(data: bytes, sps: bytes | None, pps: bytes | None) -> list[tuple[bytes, bool]]:
    if not data:
        return []
    nals = list(iter_nal_units(data))
    types = [nal[0] & 0x1F for nal in nals]
    if NAL_IDR not in types:
        return [(data, False)]
    first_idr = types.index(NAL_IDR)
    have_sps = NAL_SPS in types[:first_idr]
    have_pps = NAL_PPS in types[:first_idr]
    if have_sps and have_pps:
        return [(data, True)]
    # Rebuild: parameter sets first (from this unit if present, else cached).
    own_sps = next((n for n, t in zip(nals, types, strict=True) if t == NAL_SPS), None)
    own_pps = next((n for n, t in zip(nals, types, strict=True) if t == NAL_PPS), None)
    use_sps = own_sps or sps
    use_pps = own_pps or pps
    if use_sps is None or use_pps is None:
        raise ValueError("IDR access unit without SPS/PPS, and none in the extradata")
    # An access unit delimiter, if any, must stay first.
    aud = [n for n, t in zip(nals, types, strict=True) if t == NAL_AUD]
    rest = [n for n, t in zip(nals, types, strict=True) if t not in (NAL_SPS, NAL_PPS, NAL_AUD)]
    return [(b"".join(START_CODE + n for n in (*aud, use_sps, use_pps, *rest)), True)]


class EncodedVideoTrack(MediaStreamTrack):
    """A video track that replays pre-encoded H.264 access units in real time.

    `recv()` returns an `av.Packet` holding one Annex-B access unit, with
    `pts` in a 1/90000 `time_base` that keeps increasing across loops of the
    clip, and `is_keyframe` set. Frames are paced like aiortc's
    `VideoStreamTrack`: the first one is returned at once, frame *n* is
    returned no earlier than ``start + n / fps``. If the caller falls more
    than a second behind, the schedule is re-anchored (pts stays monotonic)
    rather than bursting every missed frame. The clip loops forever, until
    `stop()`.
    """

    kind = "video"

    def __init__(self, access_units: Sequence[tuple[bytes, bool]], fps: float = 30) -> None:
        super().__init__()
        if not access_units:
            raise ValueError("no access units")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if not access_units[0][1]:
            raise ValueError("the first access unit must be a keyframe")
        self._units: tuple[tuple[bytes, bool], ...] = tuple(
            (bytes(data), bool(key)) for data, key in access_units
        )
        self._fps = float(fps)
        self._frame_s = 1.0 / self._fps
        self._ticks_per_frame = VIDEO_CLOCK_RATE / self._fps
        self._count = 0  # frames returned so far
        self._index = 0  # position in the clip
        self._start: float | None = None  # monotonic time of frame `_anchor`
        self._anchor = 0

    @classmethod
    def from_clip(cls, path: Path, fps: float = 30) -> EncodedVideoTrack:
        """Build a track from a clip file (see `read_access_units`)."""
        return cls(read_access_units(path), fps)

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def access_units(self) -> Sequence[tuple[bytes, bool]]:
        return self._units

    @property
    def frames_sent(self) -> int:
        return self._count

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
            self._anchor = self._count
        else:
            due = self._start + (self._count - self._anchor) * self._frame_s
            delay = due - now
            if delay > 0:
                await asyncio.sleep(delay)
                if self.readyState != "live":
                    raise MediaStreamError
            elif delay < -_MAX_LAG_S:
                self._start = now
                self._anchor = self._count
        data, is_key = self._units[self._index]
        packet = av.Packet(data)
        packet.pts = packet.dts = round(self._count * self._ticks_per_frame)
        packet.time_base = VIDEO_TIME_BASE
        packet.is_keyframe = is_key
        self._count += 1
        self._index += 1
        if self._index == len(self._units):
            self._index = 0
        return packet


class ClipFeed:
    """A camera made of pre-encoded access units: feeds them into ``stream`` in real time,
    looping, as its source (tests, the simulated remote controller's RTSP server,
    benchmarks). Nothing is encoded."""

    def __init__(
        self,
        stream: Stream,
        access_units: Sequence[tuple[bytes, bool]],
        fps: float = 30,
        ingest: str = "camera",
    ) -> None:
        self.stream = stream
        stream.set_codecs(Codec("H264", VIDEO_CLOCK_RATE, {"packetization-mode": "1"}), None)
        stream.attach_source(self, ingest)
        self.track = EncodedVideoTrack(access_units, fps=fps)
        self._task = asyncio.ensure_future(self._run())

    async def feedback(self) -> SourceFeedback:
        return NO_FEEDBACK  # generated here: nothing is lost

    def request_keyframe(self) -> None:
        """The clip's keyframes come every GOP anyway."""

    async def _run(self) -> None:
        while True:
            try:
                packet = await self.track.recv()
            except MediaStreamError:
                return  # stopped
            pts = int(packet.pts or 0)
            self.stream.push(
                MediaFrame("video", "H264", bytes(packet), pts, VIDEO_TIME_BASE, packet.is_keyframe)
            )

    async def stop(self) -> None:
        self.track.stop()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
