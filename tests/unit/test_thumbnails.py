"""gateway.media.thumbnails: decode the cached keyframe once, scale, encode, cache, single flight."""

from __future__ import annotations

import asyncio
from fractions import Fraction
from pathlib import Path

import av
import pytest

from gateway.http.thumbnails import parse_width
from gateway.media.registry import StreamRegistry
from gateway.media.stream import Codec, MediaFrame, Stream
from gateway.media.synthetic import read_access_units
from gateway.media.thumbnails import (
    Thumbnails,
    ThumbnailUnavailable,
    Unavailable,
    check_width,
    scaled_size,
)

pytestmark = pytest.mark.timeout(30)

VIDEO_TB = Fraction(1, 90000)


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def decode_image(data: bytes, codec: str) -> av.VideoFrame:
    context = av.CodecContext.create(codec, "r")
    frames = context.decode(av.Packet(data)) + context.decode(None)
    assert frames, f"no {codec} picture"
    return frames[0]


def h264_keyframe(encoded: dict[str, bytes], name: str, tmp_path: Path) -> bytes:
    path = tmp_path / f"{name}.h264"
    path.write_bytes(encoded[name])
    return next(data for data, key in read_access_units(path) if key)


def vp8_keyframe(encoded: dict[str, bytes], tmp_path: Path) -> bytes:
    path = tmp_path / "vp8.ivf"
    path.write_bytes(encoded["vp8"])
    with av.open(str(path)) as container:
        return next(bytes(packet) for packet in container.demux(video=0) if packet.size)


def live_stream(
    registry: StreamRegistry, name: str, codec: str, keyframe: bytes | None, pts: int = 0
) -> Stream:
    stream = registry.claim(name)
    stream.set_codecs(Codec(codec, 90000), None)
    if keyframe is None:
        stream.push(MediaFrame("audio", "opus", b"\xfc", 0, Fraction(1, 48000), True))  # live, no picture
    else:
        stream.push(MediaFrame("video", codec, keyframe, pts, VIDEO_TB, True))
    return stream


@pytest.fixture
def keyframe_720p(encoded: dict[str, bytes], tmp_path: Path) -> bytes:
    return h264_keyframe(encoded, "1280x720-baseline", tmp_path)


async def test_jpeg_is_scaled_to_the_width_keeping_the_aspect(keyframe_720p: bytes) -> None:
    registry = StreamRegistry()
    live_stream(registry, "cam", "H264", keyframe_720p)
    thumbnails = Thumbnails(registry)
    picture = decode_image(await thumbnails.jpeg("cam", 320), "mjpeg")
    assert (picture.width, picture.height) == (320, 180)
    full = decode_image(await thumbnails.jpeg("cam"), "mjpeg")
    assert (full.width, full.height) == (1280, 720)


async def test_png_is_the_stream_size(keyframe_720p: bytes) -> None:
    registry = StreamRegistry()
    live_stream(registry, "cam", "H264", keyframe_720p)
    thumbnails = Thumbnails(registry)
    data = await thumbnails.png("cam")
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    picture = decode_image(data, "png")
    assert (picture.width, picture.height) == (1280, 720)
    # The test pattern is colourful: not a blank (undecoded) picture.
    assert len(set(picture.to_ndarray().reshape(-1, 3)[::997].tobytes())) > 8


async def test_cropped_and_high_profile_streams(encoded: dict[str, bytes], tmp_path: Path) -> None:
    registry = StreamRegistry()
    live_stream(registry, "hd", "H264", h264_keyframe(encoded, "1920x1080-high", tmp_path))
    thumbnails = Thumbnails(registry)
    picture = decode_image(await thumbnails.png("hd"), "png")
    assert (picture.width, picture.height) == (1920, 1080)  # coded 1088, cropped


async def test_vp8_stream(encoded: dict[str, bytes], tmp_path: Path) -> None:
    registry = StreamRegistry()
    live_stream(registry, "vp8", "VP8", vp8_keyframe(encoded, tmp_path))
    thumbnails = Thumbnails(registry)
    picture = decode_image(await thumbnails.jpeg("vp8", 176), "mjpeg")
    assert (picture.width, picture.height) == (176, 144)


async def test_hundred_concurrent_requests_cost_one_decode(keyframe_720p: bytes) -> None:
    registry = StreamRegistry()
    live_stream(registry, "cam", "H264", keyframe_720p)
    thumbnails = Thumbnails(registry)
    images = await asyncio.gather(*(thumbnails.jpeg("cam", 640) for _ in range(100)))
    assert len(set(images)) == 1
    assert (thumbnails.decodes, thumbnails.encodes) == (1, 1)
    # Another format or width of the same keyframe: encoded again, not decoded again.
    await asyncio.gather(thumbnails.png("cam"), thumbnails.jpeg("cam", 160), thumbnails.jpeg("cam", 160))
    assert (thumbnails.decodes, thumbnails.encodes) == (1, 3)


async def test_cache_lasts_max_age_then_decodes_again(keyframe_720p: bytes) -> None:
    registry = StreamRegistry()
    stream = live_stream(registry, "cam", "H264", keyframe_720p)
    clock = Clock()
    thumbnails = Thumbnails(registry, max_age=1.0, clock=clock)
    await thumbnails.jpeg("cam", 320)
    clock.now += 0.9
    # A new keyframe within max_age: the cached image is still served (one decode a second).
    stream.push(MediaFrame("video", "H264", keyframe_720p, 3000, VIDEO_TB, True))
    await thumbnails.jpeg("cam", 320)
    assert thumbnails.decodes == 1
    clock.now += 0.2
    await thumbnails.jpeg("cam", 320)
    assert thumbnails.decodes == 2


async def test_fresh_render_wants_the_latest_keyframe(keyframe_720p: bytes) -> None:
    registry = StreamRegistry()
    stream = live_stream(registry, "cam", "H264", keyframe_720p)
    thumbnails = Thumbnails(registry, clock=Clock())
    first = await thumbnails.render("cam", "jpeg", 320, fresh=True)
    assert first.keyframe_pts == 0 and (first.width, first.height) == (320, 180)
    assert (await thumbnails.render("cam", "jpeg", 320, fresh=True)).keyframe_pts == 0
    assert thumbnails.decodes == 1
    stream.push(MediaFrame("video", "H264", keyframe_720p, 3000, VIDEO_TB, True))
    second = await thumbnails.render("cam", "jpeg", 320, fresh=True)
    assert second.keyframe_pts == 3000 and second.stream_id == stream.id
    assert thumbnails.decodes == 2


async def test_unknown_and_not_live_streams() -> None:
    registry = StreamRegistry()
    registry.claim("claimed")  # no codecs, no media: not playable
    thumbnails = Thumbnails(registry)
    for name in ("nope", "claimed"):
        with pytest.raises(ThumbnailUnavailable) as caught:
            await thumbnails.jpeg(name)
        assert caught.value.kind is Unavailable.UNKNOWN_STREAM and name in caught.value.reason
    ended = live_stream(registry, "ended", "H264", b"\x00\x00\x00\x01\x65")
    registry.release(ended)
    with pytest.raises(ThumbnailUnavailable):
        await thumbnails.png("ended")
    assert thumbnails.decodes == 0


async def test_no_keyframe_yet_and_unsupported_codec() -> None:
    registry = StreamRegistry()
    live_stream(registry, "audio-only", "H264", None)
    live_stream(registry, "h265", "H265", b"\x00\x00\x00\x01\x26\x01")
    thumbnails = Thumbnails(registry)
    with pytest.raises(ThumbnailUnavailable) as caught:
        await thumbnails.jpeg("audio-only")
    assert caught.value.kind is Unavailable.NO_PICTURE
    with pytest.raises(ThumbnailUnavailable) as caught:
        await thumbnails.jpeg("h265")
    assert caught.value.kind is Unavailable.UNSUPPORTED_CODEC


async def test_garbage_keyframe_fails_once_for_all_waiters() -> None:
    registry = StreamRegistry()
    live_stream(registry, "bad", "H264", b"\x00\x00\x00\x01\x65" + bytes(range(256)) * 4)
    thumbnails = Thumbnails(registry)
    results = await asyncio.gather(*(thumbnails.jpeg("bad") for _ in range(10)), return_exceptions=True)
    assert all(isinstance(r, ThumbnailUnavailable) and r.kind is Unavailable.DECODE_FAILED for r in results)
    assert thumbnails.decodes == 1


async def test_a_client_that_goes_away_does_not_cancel_the_others(keyframe_720p: bytes) -> None:
    registry = StreamRegistry()
    live_stream(registry, "cam", "H264", keyframe_720p)
    thumbnails = Thumbnails(registry)
    impatient = asyncio.ensure_future(thumbnails.jpeg("cam", 320))
    patient = asyncio.ensure_future(thumbnails.jpeg("cam", 320))
    await asyncio.sleep(0)
    impatient.cancel()
    assert (await patient).startswith(b"\xff\xd8")
    assert thumbnails.decodes == 1


@pytest.mark.parametrize("width", [0, 15, 3841, -1, True, 2.5, "100"])
async def test_bad_widths(width: object) -> None:
    thumbnails = Thumbnails(StreamRegistry())
    with pytest.raises(ValueError, match="width must be an integer from 16 to 3840"):
        await thumbnails.jpeg("cam", width)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        check_width(width)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["abc", "-5", "+50", " 50", "4_0", "1e3", "15", "100000000", "٣٣٣"])
def test_bad_width_query(text: str) -> None:
    with pytest.raises(ValueError, match="width must be"):
        parse_width(text)


def test_width_query() -> None:
    assert parse_width(None) is None and parse_width("") is None
    assert parse_width("16") == 16 and parse_width("3840") == 3840


def test_scaled_size() -> None:
    assert scaled_size(1280, 720, Fraction(1), None) == (1280, 720)
    assert scaled_size(1280, 720, Fraction(1), 480) == (480, 270)
    assert scaled_size(1440, 1080, Fraction(4, 3), 640) == (640, 360)  # anamorphic 16:9
    assert scaled_size(16, 3840, Fraction(1), 16) == (16, 3840)
    assert scaled_size(3840, 16, Fraction(1), 16) == (16, 1)
