"""Live thumbnails: the cached keyframe of a stream, decoded and encoded as JPEG or PNG.

This is one of the two places in skyrelay that decode video (the other is the SD view over
MQTT, which renders through this one). Decoding a keyframe costs milliseconds of CPU, so:

- work runs in a thread (`asyncio.to_thread`): the event loop keeps relaying meanwhile;
- a keyframe is decoded once, whatever the number of formats and widths asked of it
  (the decoded picture is kept for ``max_age`` seconds);
- an encoded image is kept for ``max_age`` seconds per (stream, format, width), and
  requests that arrive while it is being made wait for that one job (single flight), so
  100 requests in the same second cost one decode and one encode.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, TypeVar

import av
from av.video.reformatter import Interpolation, VideoReformatter

from gateway.log import get_logger
from gateway.media.registry import StreamRegistry
from gateway.media.stream import MediaFrame, Stream

log = get_logger(__name__)

ImageFormat = Literal["jpeg", "png"]

MIN_WIDTH = 16
MAX_WIDTH = 3840
# ffmpeg's JPEG quantiser scale, 2 (best) .. 31: 5 is a good picture at a third of the size of 2.
JPEG_QUALITY = 5
# Entries kept at most; beyond, the oldest go (bounds memory when clients try many widths).
MAX_ENTRIES = 128

_K = TypeVar("_K")
_E = TypeVar("_E")

CONTENT_TYPES: dict[ImageFormat, str] = {"jpeg": "image/jpeg", "png": "image/png"}
# Stream codec names (aiortc's spelling) -> FFmpeg decoders.
DECODERS = {"H264": "h264", "VP8": "vp8"}


class Unavailable(enum.Enum):
    UNKNOWN_STREAM = "unknown stream"  # no such name, or not live
    NO_PICTURE = "no picture yet"  # live, but no keyframe has arrived
    UNSUPPORTED_CODEC = "unsupported codec"
    DECODE_FAILED = "decode failed"


class ThumbnailUnavailable(Exception):
    """No picture can be made for ``name``; ``kind`` says why, ``reason`` says it to people."""

    def __init__(self, name: str, kind: Unavailable, reason: str) -> None:
        super().__init__(reason)
        self.name = name
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Thumbnail:
    data: bytes
    format: ImageFormat
    width: int
    height: int
    stream_id: str
    keyframe_pts: int  # which keyframe it shows (keyframe timestamps rise within a stream)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


def check_width(width: int | None) -> int | None:
    """``width`` if it is an allowed output width (or None: the stream's own), else ValueError."""
    if width is None:
        return None
    if isinstance(width, bool) or not isinstance(width, int) or not MIN_WIDTH <= width <= MAX_WIDTH:
        raise ValueError(f"width must be an integer from {MIN_WIDTH} to {MAX_WIDTH}, got {width!r}")
    return width


@dataclass(slots=True)
class _Decoded:
    keyframe: MediaFrame
    created: float
    job: asyncio.Future[tuple[av.VideoFrame, Fraction]]


@dataclass(slots=True)
class _Image:
    keyframe: MediaFrame
    created: float
    job: asyncio.Future[Thumbnail]


class Thumbnails:
    def __init__(
        self,
        registry: StreamRegistry,
        *,
        max_age: float = 1.0,
        jpeg_quality: int = JPEG_QUALITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_age < 0:
            raise ValueError(f"max_age must not be negative, got {max_age}")
        if not 2 <= jpeg_quality <= 31:
            raise ValueError(f"jpeg_quality must be from 2 (best) to 31, got {jpeg_quality}")
        self.registry = registry
        self.max_age = max_age
        self.jpeg_quality = jpeg_quality
        self.clock = clock
        self.decodes = 0  # keyframes decoded (for tests, benchmarks and /metrics)
        self.encodes = 0  # images encoded
        self.requests = 0
        self._decoded: dict[str, _Decoded] = {}  # by stream id
        self._images: dict[tuple[str, ImageFormat, int | None], _Image] = {}

    async def jpeg(self, name: str, width: int | None = None) -> bytes:
        """A JPEG of the latest keyframe of ``name``, ``width`` pixels wide keeping the
        picture's aspect ratio (None: its own size). ValueError for a width out of bounds,
        ThumbnailUnavailable when there is no picture to show."""
        return (await self.render(name, "jpeg", width)).data

    async def png(self, name: str) -> bytes:
        """A PNG of the latest keyframe of ``name``, at the stream's size."""
        return (await self.render(name, "png")).data

    async def render(
        self, name: str, fmt: ImageFormat, width: int | None = None, *, fresh: bool = False
    ) -> Thumbnail:
        """The image of the latest keyframe. With ``fresh``, an image of an older keyframe
        is not good enough even if younger than ``max_age`` (the SD view sends each keyframe
        once)."""
        width = check_width(width)
        if fmt not in CONTENT_TYPES:
            raise ValueError(f"image format must be jpeg or png, got {fmt!r}")
        self.requests += 1
        stream = self.registry.get(name)
        if stream is None:
            reason = f"Stream {name!r} not found or not live"
            raise ThumbnailUnavailable(name, Unavailable.UNKNOWN_STREAM, reason)
        keyframe = stream.keyframe
        if keyframe is None:
            raise ThumbnailUnavailable(name, Unavailable.NO_PICTURE, f"Stream {name!r} has no keyframe yet")
        if keyframe.codec.upper() not in DECODERS:
            raise ThumbnailUnavailable(
                name, Unavailable.UNSUPPORTED_CODEC, f"Stream {name!r} is {keyframe.codec}: no thumbnails"
            )
        now = self.clock()
        self._expire(now)  # what remains is younger than max_age
        key = (stream.id, fmt, width)
        entry = self._images.get(key)
        if entry is None or (fresh and entry.keyframe is not keyframe):
            self._images.pop(key, None)  # re-inserted last: the newest
            job = asyncio.ensure_future(self._make(stream, keyframe, fmt, width))
            entry = self._images[key] = _Image(keyframe, now, job)
            job.add_done_callback(_retrieve)
        # shield: a client that goes away must not cancel the job the others wait for.
        return await asyncio.shield(entry.job)

    def _usable(self, created: float, now: float) -> bool:
        return now - created < self.max_age

    def _expire(self, now: float) -> None:
        """Forget what is too old, and the oldest when there are too many entries."""
        _prune(self._images, lambda entry: self._usable(entry.created, now))
        _prune(self._decoded, lambda entry: self._usable(entry.created, now))

    async def _make(
        self, stream: Stream, keyframe: MediaFrame, fmt: ImageFormat, width: int | None
    ) -> Thumbnail:
        picture, aspect = await self._decode(stream, keyframe)
        self.encodes += 1
        try:
            data, out_width, out_height = await asyncio.to_thread(
                _encode, picture, aspect, fmt, width, self.jpeg_quality
            )
        except (av.FFmpegError, ValueError) as exc:
            log.warning("thumbnail_encode_failed", stream=stream.name, format=fmt, error=str(exc)[:200])
            reason = f"No {fmt} image could be made of stream {stream.name!r}"
            raise ThumbnailUnavailable(stream.name, Unavailable.DECODE_FAILED, reason) from exc
        return Thumbnail(data, fmt, out_width, out_height, stream.id, keyframe.pts)

    async def _decode(self, stream: Stream, keyframe: MediaFrame) -> tuple[av.VideoFrame, Fraction]:
        now = self.clock()
        entry = self._decoded.get(stream.id)
        if entry is None or entry.keyframe is not keyframe or not self._usable(entry.created, now):
            self._decoded.pop(stream.id, None)
            self.decodes += 1
            job = asyncio.ensure_future(self._decode_job(stream.name, keyframe))
            entry = self._decoded[stream.id] = _Decoded(keyframe, now, job)
            job.add_done_callback(_retrieve)
        return await asyncio.shield(entry.job)

    async def _decode_job(self, name: str, keyframe: MediaFrame) -> tuple[av.VideoFrame, Fraction]:
        try:
            return await asyncio.to_thread(_decode, DECODERS[keyframe.codec.upper()], keyframe.data)
        except (av.FFmpegError, ValueError) as exc:
            log.warning("thumbnail_decode_failed", stream=name, codec=keyframe.codec, error=str(exc)[:200])
            raise ThumbnailUnavailable(
                name, Unavailable.DECODE_FAILED, f"The keyframe of stream {name!r} could not be decoded"
            ) from exc


def _prune(cache: dict[_K, _E], keep: Callable[[_E], bool]) -> None:
    for key in [key for key, entry in cache.items() if not keep(entry)]:
        del cache[key]
    while len(cache) > MAX_ENTRIES:
        del cache[next(iter(cache))]  # the oldest: dicts keep insertion order


def _retrieve(job: asyncio.Future[Any]) -> None:
    """Mark a job's exception as seen: every waiter may have gone (no 'never retrieved')."""
    if not job.cancelled():
        job.exception()


def _decode(decoder: str, data: bytes) -> tuple[av.VideoFrame, Fraction]:
    """The picture of one keyframe (self-contained: SPS/PPS in front for H.264) and its
    sample aspect ratio. Runs in a worker thread; a decoder is cheap to open."""
    context = av.CodecContext.create(decoder, "r")
    assert isinstance(context, av.VideoCodecContext)  # a video codec's context
    context.thread_count = 1  # one picture: threads would only add latency on shared cores
    frames = context.decode(av.Packet(data))
    frames += context.decode(None)  # flush: a decoder may hold the picture back
    if not frames:
        raise ValueError("the decoder returned no picture")
    sar = context.sample_aspect_ratio
    return frames[0], sar if sar and sar > 0 else Fraction(1)


def scaled_size(width: int, height: int, sample_aspect: Fraction, to_width: int | None) -> tuple[int, int]:
    """The output size for ``to_width`` (None: the coded size), keeping the displayed aspect
    ratio: pixels may be non-square (anamorphic SAR, e.g. 1440x1080 shown as 16:9)."""
    if to_width is None:
        return width, height
    display_width = width * sample_aspect
    return to_width, max(1, round(to_width * height / display_width))


def _encode(
    picture: av.VideoFrame, sample_aspect: Fraction, fmt: ImageFormat, width: int | None, quality: int
) -> tuple[bytes, int, int]:
    """Scale and encode in a worker thread. A reformatter of its own: the picture is shared
    between concurrent encodes, and a frame's own reformatter is not thread-safe."""
    out_width, out_height = scaled_size(picture.width, picture.height, sample_aspect, width)
    pix_fmt = "yuvj420p" if fmt == "jpeg" else "rgb24"
    image = VideoReformatter().reformat(
        picture,
        width=out_width,
        height=out_height,
        format=pix_fmt,
        interpolation=Interpolation.AREA if width is not None else None,  # AREA: crisp when shrinking
        threads=1,
    )
    encoder = av.CodecContext.create("mjpeg" if fmt == "jpeg" else "png", "w")
    encoder.width, encoder.height, encoder.pix_fmt = out_width, out_height, pix_fmt
    encoder.time_base = Fraction(1, 1)
    if fmt == "jpeg":
        encoder.qmin = encoder.qmax = quality
    packets = encoder.encode(image)
    packets += encoder.encode(None)
    if not packets:
        raise ValueError(f"the {fmt} encoder returned nothing")
    return bytes(packets[0]), out_width, out_height
