"""gateway.media.registry: claim, get, release of named streams."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import pytest

from gateway.media.registry import StreamNameInUse, StreamNameReserved, StreamRegistry, StreamUnavailable
from gateway.media.stream import Codec, MediaFrame, Stream

H264 = Codec("H264", 90000)
OPUS = Codec("opus", 48000)


def go_live(stream: Stream, video: Codec = H264, audio: Codec | None = OPUS) -> Stream:
    """What a source does: negotiate codecs, then push media."""
    stream.set_codecs(video, audio)
    stream.push(MediaFrame("video", video.name, b"\x00\x00\x00\x01\x65", 0, Fraction(1, 90000), True))
    return stream


class Listener:
    def __init__(self) -> None:
        self.ended = 0

    def on_video_format(self, width: int, height: int) -> None:
        pass

    def on_stream_event(self, event_type: str, payload: object) -> None:
        pass

    def on_stream_end(self, info: str | None = None) -> None:
        self.ended += 1


def test_claim_returns_a_named_stream() -> None:
    registry = StreamRegistry(keyframe_interval=2.5)
    stream = registry.claim("cam")
    assert isinstance(stream, Stream)
    assert stream.name == "cam"
    assert stream._keyframe_interval == 2.5
    assert len(registry) == 1
    assert registry.streams() == [stream]


def test_name_in_use() -> None:
    registry = StreamRegistry()
    first = registry.claim("cam")
    with pytest.raises(StreamNameInUse):
        registry.claim("cam")
    go_live(first, H264, OPUS)
    with pytest.raises(StreamNameInUse):
        registry.claim("cam")
    assert registry.claim("cam2") is not first
    assert len(registry) == 2


def test_get_hides_a_stream_until_its_codecs_are_known_and_media_arrives() -> None:
    registry = StreamRegistry()
    stream = registry.claim("cam")
    assert registry.get("cam") is None
    stream.set_codecs(H264, None)
    assert registry.get("cam") is None  # negotiated but silent: not playable yet
    go_live(stream, H264, None)
    assert registry.get("cam") is stream


def test_a_stream_is_playable_from_its_first_keyframe_not_its_first_frame() -> None:
    """A play answered before the keyframe would show a frozen black picture."""
    registry = StreamRegistry()
    stream = registry.claim("cam")
    stream.set_codecs(H264, OPUS)
    stream.push(MediaFrame("audio", "opus", b"\xfc", 0, Fraction(1, 48000)))
    stream.push(MediaFrame("video", "H264", b"\x00\x00\x00\x01\x41", 0, Fraction(1, 90000), False))
    assert registry.get("cam") is None and not stream.live
    stream.push(MediaFrame("video", "H264", b"\x00\x00\x00\x01\x65", 3000, Fraction(1, 90000), True))
    assert registry.get("cam") is stream

    radio = registry.claim("radio")
    radio.set_codecs(None, OPUS)
    radio.push(MediaFrame("audio", "opus", b"\xfc", 0, Fraction(1, 48000)))
    assert registry.get("radio") is radio  # no video to wait for


def test_get_unknown_name() -> None:
    assert StreamRegistry().get("nope") is None


def test_release_ends_the_stream_and_frees_the_name() -> None:
    registry = StreamRegistry()
    stream = registry.claim("cam")
    go_live(stream, H264, OPUS)
    listener = Listener()
    stream.subscribe(listener)
    registry.release(stream)
    assert stream.ended
    assert listener.ended == 1
    assert registry.get("cam") is None
    assert len(registry) == 0
    again = registry.claim("cam")
    assert again is not stream


def test_get_hides_an_ended_stream() -> None:
    registry = StreamRegistry()
    stream = registry.claim("cam")
    go_live(stream, H264, OPUS)
    stream.end()
    assert registry.get("cam") is None


def test_release_of_a_stale_stream_keeps_the_new_one() -> None:
    registry = StreamRegistry()
    old = registry.claim("cam")
    registry.release(old)
    new = registry.claim("cam")
    go_live(new, H264, OPUS)
    registry.release(old)  # a late second release of the old one
    assert registry.get("cam") is new
    assert not new.ended
    assert len(registry) == 1


def test_release_twice() -> None:
    registry = StreamRegistry()
    stream = registry.claim("cam")
    listener = Listener()
    stream.subscribe(listener)
    registry.release(stream)
    registry.release(stream)
    assert listener.ended == 1
    assert len(registry) == 0


def test_names_are_exact() -> None:
    registry = StreamRegistry()
    go_live(registry.claim("Cam"), H264, None)
    go_live(registry.claim("камера/0"), H264, None)
    assert registry.get("cam") is None
    assert registry.get("Cam") is not None
    assert registry.get("камера/0") is not None
    assert registry.get("Cam ") is None


def test_aliases_resolve_for_viewers_and_cannot_be_published() -> None:
    registry = StreamRegistry(aliases={"roof": "DOCK1/165-0-7/normal-0"})
    stream = go_live(registry.claim("DOCK1/165-0-7/normal-0"))
    assert registry.get("roof") is stream
    assert registry.resolve("roof") == "DOCK1/165-0-7/normal-0"
    assert registry.resolve("other") == "other"
    with pytest.raises(StreamNameInUse):
        registry.claim("roof")


class Camera:
    """An on-demand source that counts its viewers; `fail` makes `wanted` raise."""

    def __init__(self, registry: StreamRegistry, name: str = "drone") -> None:
        self.registry, self.name = registry, name
        self.viewers = 0
        self.fail: Exception | None = None

    def serves(self, name: str) -> bool:
        return name == self.name

    def wanted(self, name: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.viewers += 1
        if self.registry.get(name) is None:
            go_live(self.registry.claim(name, resume=True, on_demand=True))

    def unwanted(self, name: str) -> None:
        self.viewers -= 1

    async def control(self, name: str, action: str, value: object) -> None:
        pass


def test_claim_refuses_a_name_an_on_demand_source_owns_but_not_to_the_source() -> None:
    registry = StreamRegistry(aliases={"roof": "drone"})
    registry.add_on_demand(Camera(registry))
    for name in ("drone", "roof"):
        with pytest.raises(StreamNameReserved):
            registry.claim(name)
    assert registry.claim("drone", on_demand=True).name == "drone"
    assert registry.claim("other").name == "other"


async def test_viewing_counts_an_on_demand_viewer_until_it_closes() -> None:
    registry = StreamRegistry()
    camera = Camera(registry)
    registry.add_on_demand(camera)
    async with registry.viewing("drone") as stream:
        assert stream.name == "drone" and camera.viewers == 1
        second = registry.viewing("drone")
        assert (await second.open()) is stream and camera.viewers == 2
        second.close()
        second.close()  # idempotent
        assert camera.viewers == 1
    assert camera.viewers == 0


async def test_viewing_a_plain_stream_counts_nothing_and_a_missing_one_is_unavailable() -> None:
    registry = StreamRegistry()
    registry.add_on_demand(Camera(registry))
    with pytest.raises(StreamUnavailable, match="Stream not found"):
        await registry.viewing("nothing").open()
    stream = go_live(registry.claim("cam"))
    async with registry.viewing("cam") as viewed:
        assert viewed is stream


async def test_a_source_that_raises_when_wanted_leaves_nobody_waiting() -> None:
    registry = StreamRegistry()
    camera = Camera(registry)
    camera.fail = ValueError("Port out of range 0-65535")
    registry.add_on_demand(camera)
    viewing = registry.viewing("drone")
    with pytest.raises(ValueError):
        await viewing.open()
    viewing.close()
    assert camera.viewers == 0 and not registry._waiting


async def test_a_viewing_closed_while_its_source_starts_uncounts_the_viewer() -> None:
    registry = StreamRegistry()

    class Slow(Camera):
        def wanted(self, name: str) -> None:
            self.viewers += 1  # starts later

    camera = Slow(registry)
    registry.add_on_demand(camera)
    viewing = registry.viewing("drone")
    task = asyncio.ensure_future(viewing.open())
    await asyncio.sleep(0)
    assert camera.viewers == 1
    viewing.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert camera.viewers == 0
