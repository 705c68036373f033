"""gateway.media.stream: bounded per-subscriber queues, keyframe cache, keyframe requests."""

from __future__ import annotations

import asyncio
from fractions import Fraction
from typing import Any

import pytest

from gateway.media.stream import Codec, FrameQueue, MediaFrame, MediaKind, Stream

pytestmark = pytest.mark.timeout(10)

VIDEO_TB = Fraction(1, 90000)
AUDIO_TB = Fraction(1, 48000)


# --- helpers ----------------------------------------------------------------------------------


def video(pts: int, keyframe: bool = False) -> MediaFrame:
    return MediaFrame("video", "H264", b"\x00\x00\x00\x01" + pts.to_bytes(4, "big"), pts, VIDEO_TB, keyframe)


def audio(pts: int) -> MediaFrame:
    return MediaFrame("audio", "opus", b"\xfc" + pts.to_bytes(4, "big"), pts, AUDIO_TB)


def gop_stream(count: int, gop: int = 10, start: int = 0) -> list[MediaFrame]:
    """Video frames numbered from ``start``; a keyframe every ``gop`` frames."""
    return [video(i, keyframe=i % gop == 0) for i in range(start, start + count)]


class Listener:
    def __init__(self) -> None:
        self.formats: list[tuple[int, int]] = []
        self.events: list[tuple[str, Any]] = []
        self.ended = 0

    def on_video_format(self, width: int, height: int) -> None:
        self.formats.append((width, height))

    def on_stream_event(self, event_type: str, payload: Any) -> None:
        self.events.append((event_type, payload))

    def on_stream_end(self, info: str | None = None) -> None:
        self.ended += 1


class Source:
    def __init__(self) -> None:
        self.requests = 0

    def request_keyframe(self) -> None:
        self.requests += 1


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def new_stream(clock: Clock | None = None, interval: float = 1.0) -> tuple[Stream, Source, Clock]:
    clock = clock or Clock()
    stream = Stream("cam", keyframe_interval=interval, clock=clock)
    source = Source()
    stream.source = source
    stream.set_codecs(Codec("H264", 90000), Codec("opus", 48000))
    return stream, source, clock


async def drain(queue: FrameQueue) -> list[MediaFrame]:
    """Every frame queued now, without waiting."""
    out: list[MediaFrame] = []
    while len(queue):
        frame = await queue.get()
        assert frame is not None
        out.append(frame)
    return out


def pts(frames: list[MediaFrame]) -> list[int]:
    return [f.pts for f in frames]


def assert_decodable(delivered: list[MediaFrame]) -> None:
    """Every delta frame follows the frame it was pushed after: no delta after a gap."""
    assert not delivered or delivered[0].keyframe, "a subscriber must start on a keyframe"
    for before, after in zip(delivered, delivered[1:], strict=False):
        if not after.keyframe:
            assert after.pts == before.pts + 1, f"delta {after.pts} delivered after {before.pts}"


# --- MediaFrame / Codec ---------------------------------------------------------------------------


def test_media_frame_packet_is_built_once() -> None:
    frame = video(3000, keyframe=True)
    packet = frame.packet()
    assert bytes(packet) == frame.data
    assert packet.pts == 3000
    assert packet.time_base == VIDEO_TB
    assert frame.packet() is packet


def test_codec_equality_ignores_parameters() -> None:
    assert Codec("H264", 90000, {"profile-level-id": "42e01f"}) == Codec("H264", 90000)
    assert hash(Codec("H264", 90000, {"a": 1})) == hash(Codec("H264", 90000))


# --- FrameQueue -----------------------------------------------------------------------------------


async def test_video_queue_waits_for_the_first_keyframe() -> None:
    gaps: list[int] = []
    queue = FrameQueue("video", 10, lambda: gaps.append(1))
    for frame in [video(0), video(1), video(2, True), video(3)]:
        queue.put(frame)
    assert pts(await drain(queue)) == [2, 3]
    assert queue.dropped == 2
    assert gaps == [], "waiting for the first keyframe is not a gap"


async def test_video_overflow_drops_to_the_next_keyframe() -> None:
    gaps: list[int] = []
    queue = FrameQueue("video", 5, lambda: gaps.append(1))
    frames = gop_stream(30, gop=10)
    for frame in frames[:5]:
        queue.put(frame)  # 0(K) 1 2 3 4: full
    queue.put(frames[5])  # overflow on a delta
    assert len(queue) == 0
    assert gaps == [1]
    for frame in frames[6:10]:
        queue.put(frame)  # deltas after the gap: dropped
    assert len(queue) == 0
    assert gaps == [1], "on_gap once per gap"
    for frame in frames[10:13]:
        queue.put(frame)
    delivered = await drain(queue)
    assert pts(delivered) == [10, 11, 12]
    assert queue.dropped == 10
    assert_decodable(delivered)


async def test_video_overflow_on_a_keyframe_keeps_the_keyframe() -> None:
    gaps: list[int] = []
    queue = FrameQueue("video", 4, lambda: gaps.append(1))
    for frame in gop_stream(4, gop=4):
        queue.put(frame)
    queue.put(video(4, keyframe=True))
    queue.put(video(5))
    assert pts(await drain(queue)) == [4, 5]
    assert gaps == []
    assert queue.dropped == 4


async def test_slow_video_reader_never_gets_a_broken_gop() -> None:
    gaps: list[int] = []
    queue = FrameQueue("video", 8, lambda: gaps.append(1))
    delivered: list[MediaFrame] = []
    for i, frame in enumerate(gop_stream(500, gop=25)):
        queue.put(frame)
        if i % 3 == 0 and len(queue):  # reads one frame for every three pushed
            frame_read = await queue.get()
            assert frame_read is not None
            delivered.append(frame_read)
    delivered += await drain(queue)
    assert_decodable(delivered)
    assert gaps, "the reader was too slow: there were gaps"
    assert queue.dropped + len(delivered) == 500


async def test_audio_overflow_drops_the_oldest() -> None:
    gaps: list[int] = []
    queue = FrameQueue("audio", 8, lambda: gaps.append(1))
    for i in range(20):
        queue.put(audio(i))
    assert pts(await drain(queue)) == list(range(12, 20))
    assert queue.dropped == 12
    assert gaps == []


async def test_audio_needs_no_keyframe() -> None:
    queue = FrameQueue("audio", 8, lambda: None)
    queue.put(audio(0))
    assert pts(await drain(queue)) == [0]


async def test_get_waits_for_a_frame() -> None:
    queue = FrameQueue("audio", 8, lambda: None)
    task = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not task.done()
    queue.put(audio(7))
    frame = await asyncio.wait_for(task, 1)
    assert frame is not None and frame.pts == 7


async def test_close_wakes_a_waiting_get() -> None:
    queue = FrameQueue("video", 8, lambda: None)
    task = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.close()
    assert await asyncio.wait_for(task, 1) is None


async def test_close_drains_then_returns_none() -> None:
    queue = FrameQueue("audio", 8, lambda: None)
    queue.put(audio(1))
    queue.close()
    queue.put(audio(2))  # ignored once closed
    first = await queue.get()
    assert first is not None and first.pts == 1
    assert await queue.get() is None
    assert await queue.get() is None


async def test_video_meter_counts_delivered_frames() -> None:
    queue = FrameQueue("video", 8, lambda: None)
    for frame in gop_stream(3):
        queue.put(frame)
    await drain(queue)
    assert queue.meter.total_frames == 3
    assert queue.meter.total_bytes == sum(len(f.data) for f in gop_stream(3))


# --- Stream: fan-out ------------------------------------------------------------------------------


async def test_push_fans_out_to_every_subscription() -> None:
    stream, _, _ = new_stream()
    subs = [stream.subscribe(Listener()) for _ in range(3)]
    frames = gop_stream(5)
    for i, frame in enumerate(frames):
        stream.push(frame)
        stream.push(audio(i))
    for sub in subs:
        assert pts(await drain(sub.video)) == [0, 1, 2, 3, 4]
        assert pts(await drain(sub.audio)) == [0, 1, 2, 3, 4]
    # the very same objects: one access unit, shared
    stream.push(video(5))
    got = [(await sub.video.get()) for sub in subs]
    assert all(frame is got[0] for frame in got)


def test_a_first_subscriber_is_served_before_the_others() -> None:
    # A link to another worker goes first: that worker fans out while this one still writes.
    stream, _, _ = new_stream()
    order: list[str] = []
    for label, first in (("viewer-1", False), ("viewer-2", False), ("link", True), ("viewer-3", False)):
        sub = stream.subscribe(Listener(), first=first)
        sub.video.attach(lambda frame, label=label: order.append(label) is None)
    stream.push(video(0, True))
    assert order == ["link", "viewer-1", "viewer-2", "viewer-3"]


async def test_keyframe_cache_and_inbound_meter() -> None:
    stream, _, _ = new_stream()
    assert stream.keyframe is None
    key = video(0, True)
    stream.push(key)
    stream.push(video(1))
    stream.push(audio(0))
    assert stream.keyframe is key
    assert stream.inbound.total_frames == 2


STEP = 3000  # 30 fps at 90 kHz


def timed_gops(count: int, start: int = 0) -> list[MediaFrame]:
    """Frames ``start``.. at 30 fps, a keyframe every second (every 30th)."""
    return [video(i * STEP, keyframe=i % 30 == 0) for i in range(start, start + count)]


def frame_numbers(frames: list[MediaFrame]) -> list[int]:
    return [f.pts // STEP for f in frames]


async def test_a_late_subscriber_starts_with_the_cached_keyframe_then_waits_for_a_live_one() -> None:
    stream, source, clock = new_stream()
    early = stream.subscribe(Listener())
    frames = timed_gops(50)  # keyframes 0 and 30; 19 deltas (0.63 s) since the last
    for frame in frames:
        stream.push(frame)
    late = stream.subscribe(Listener())
    for frame in timed_gops(30, start=50):  # 50..79, keyframe 60
        stream.push(frame)
    delivered = await drain(late.video)
    first = delivered[0]
    assert first.keyframe
    assert first.data == frames[30].data, "the cached keyframe comes first"
    assert frame_numbers(delivered[1:]) == list(range(60, 80)), "then the next live keyframe and its deltas"
    assert frame_numbers(await drain(early.video)) == list(range(80))


async def test_a_subscriber_soon_after_a_keyframe_gets_the_frames_since_it() -> None:
    """A viewer waiting for a stream to start joins just after its first keyframe: it gets
    every frame since, so its picture moves at once (not frozen until the next keyframe)."""
    stream, _, _ = new_stream()
    frames = timed_gops(45)  # keyframe 30, then 14 deltas: 0.47 s
    for frame in frames:
        stream.push(frame)
    sub = stream.subscribe(Listener())
    stream.push(video(45 * STEP))
    delivered = await drain(sub.video)
    assert frame_numbers(delivered) == list(range(30, 46))
    assert not any(f.replay for f in delivered), "the live frames themselves, timestamps unchanged"


async def test_cached_keyframe_is_restamped_to_live_time() -> None:
    stream, _, _ = new_stream()
    frames = timed_gops(50)
    for frame in frames:
        stream.push(frame)
    stream.push(audio(0))  # audio does not move the video clock
    sub = stream.subscribe(Listener())
    first = await sub.video.get()
    assert first is not None
    assert first.data == frames[30].data
    assert first.pts == 49 * STEP, "the viewer's timeline starts at the live time"
    assert first.packet().pts == 49 * STEP
    assert frames[30].pts == 30 * STEP and stream.keyframe is frames[30], "the cache itself is untouched"
    stream.push(video(50 * STEP))
    stream.push(video(60 * STEP, keyframe=True))
    later = await drain(sub.video)
    assert frame_numbers(later) == [60]
    assert all(b.pts > a.pts for a, b in zip([first, *later], later, strict=False))


async def test_new_subscriber_without_cached_keyframe_waits_for_one() -> None:
    stream, _, _ = new_stream()
    stream.push(video(0))  # a delta with no keyframe ever seen
    sub = stream.subscribe(Listener())
    for frame in [video(1), video(2), video(3, True), video(4)]:
        stream.push(frame)
    assert pts(await drain(sub.video)) == [3, 4]


async def test_subscribe_asks_the_source_for_a_keyframe() -> None:
    stream, source, _ = new_stream()
    stream.subscribe(Listener())
    assert source.requests == 1
    assert stream.keyframe_requests == 1


# --- Stream: keyframe requests ---------------------------------------------------------------------


def test_request_keyframe_is_rate_limited() -> None:
    stream, source, clock = new_stream(interval=1.0)
    stream.request_keyframe()
    stream.request_keyframe()
    clock.now += 0.5
    stream.request_keyframe()
    assert source.requests == 1
    clock.now += 0.5
    stream.request_keyframe()
    assert source.requests == 2
    clock.now += 0.999
    stream.request_keyframe()
    assert source.requests == 2
    clock.now += 10
    stream.request_keyframe()
    stream.request_keyframe()
    assert source.requests == 3
    assert stream.keyframe_requests == 3


def test_many_subscribers_joining_at_once_ask_once() -> None:
    stream, source, clock = new_stream()
    for _ in range(50):
        stream.subscribe(Listener())
    assert source.requests == 1
    clock.now += 1.0
    stream.subscribe(Listener())
    assert source.requests == 2


def test_video_gap_asks_the_source_for_a_keyframe() -> None:
    stream, source, clock = new_stream()
    stalled = stream.subscribe(Listener(), max_frames=4)
    assert source.requests == 1
    clock.now += 5
    for frame in gop_stream(6, gop=100):
        stream.push(frame)
    assert source.requests == 2, "the overflow of a video queue asks for a keyframe"
    assert len(stalled.video) == 0
    # the following deltas do not ask again while waiting (and the request is rate-limited)
    for frame in gop_stream(10, gop=100, start=6)[1:]:
        stream.push(frame)
    assert source.requests == 2


def test_audio_overflow_asks_for_nothing() -> None:
    stream, source, clock = new_stream()
    stream.subscribe(Listener(), max_frames=8)
    clock.now += 5
    for i in range(100):
        stream.push(audio(i))
    assert source.requests == 1


def test_request_keyframe_without_source_or_after_end() -> None:
    clock = Clock()
    stream = Stream("cam", clock=clock)
    stream.request_keyframe()  # no source: nothing to call, no error
    assert stream.keyframe_requests == 0
    source = Source()
    stream.source = source
    stream.end()
    clock.now += 10
    stream.request_keyframe()
    assert source.requests == 0


# --- Stream: listeners, end, unsubscribe ----------------------------------------------------------------


async def test_end_closes_queues_and_tells_every_listener() -> None:
    stream, _, _ = new_stream()
    listeners = [Listener() for _ in range(3)]
    subs = [stream.subscribe(listener) for listener in listeners]
    stream.push(video(0, True))
    waiting = asyncio.create_task(subs[2].audio.get())
    await asyncio.sleep(0)
    stream.end()
    assert [listener.ended for listener in listeners] == [1, 1, 1]
    assert stream.ended
    assert stream.subscriptions == []
    first = await subs[0].video.get()
    assert first is not None and first.pts == 0  # already queued frames drain first
    assert await subs[0].video.get() is None
    assert await subs[0].audio.get() is None
    assert await asyncio.wait_for(waiting, 1) is None
    stream.end()
    assert [listener.ended for listener in listeners] == [1, 1, 1]


async def test_push_after_end_is_ignored() -> None:
    stream, _, _ = new_stream()
    sub = stream.subscribe(Listener())
    stream.end()
    stream.push(video(0, True))
    assert stream.keyframe is None
    assert await sub.video.get() is None


def test_end_with_a_listener_that_unsubscribes_others() -> None:
    stream, _, _ = new_stream()
    a, b = Listener(), Listener()
    sub_b = stream.subscribe(b)

    class Unsubscriber(Listener):
        def on_stream_end(self, info: str | None = None) -> None:
            super().on_stream_end()
            stream.unsubscribe(sub_b)

    first = Unsubscriber()
    stream.subscribe(first)
    stream.subscribe(a)
    stream.end()
    assert (first.ended, a.ended, b.ended) == (1, 1, 1)


async def test_unsubscribe() -> None:
    stream, _, _ = new_stream()
    keep, gone = Listener(), Listener()
    sub_keep = stream.subscribe(keep)
    sub_gone = stream.subscribe(gone)
    stream.unsubscribe(sub_gone)
    assert stream.subscriptions == [sub_keep]
    stream.push(video(0, True))
    stream.set_dimensions(640, 360)
    stream.broadcast_event("audioMuted", None)
    stream.end()
    assert await sub_gone.video.get() is None
    assert (gone.formats, gone.events, gone.ended) == ([], [], 0)
    assert keep.ended == 1
    stream.unsubscribe(sub_gone)  # twice: harmless


def test_set_dimensions_notifies_only_on_change() -> None:
    stream, _, _ = new_stream()
    listeners = [Listener(), Listener()]
    for listener in listeners:
        stream.subscribe(listener)
    stream.set_dimensions(640, 360)
    stream.set_dimensions(640, 360)
    stream.set_dimensions(1280, 720)
    stream.set_dimensions(1280, 720)
    stream.set_dimensions(640, 360)
    for listener in listeners:
        assert listener.formats == [(640, 360), (1280, 720), (640, 360)]
    assert (stream.width, stream.height) == (640, 360)


def test_set_dimensions_to_the_initial_zero_size_is_no_change() -> None:
    stream, _, _ = new_stream()
    listener = Listener()
    stream.subscribe(listener)
    stream.set_dimensions(0, 0)
    assert listener.formats == []


def test_broadcast_event_reaches_every_listener() -> None:
    stream, _, _ = new_stream()
    listeners = [Listener() for _ in range(3)]
    for listener in listeners:
        stream.subscribe(listener)
    stream.broadcast_event("videoMuted", {"x": 1})
    stream.broadcast_event("data", "hello")
    for listener in listeners:
        assert listener.events == [("videoMuted", {"x": 1}), ("data", "hello")]


# --- isolation --------------------------------------------------------------------------------------


async def test_a_stalled_subscriber_does_not_affect_another() -> None:
    stream, _, _ = new_stream()
    stalled = stream.subscribe(Listener(), max_frames=10)
    reader = stream.subscribe(Listener(), max_frames=10)
    delivered: list[MediaFrame] = []
    frames = gop_stream(1000, gop=30)
    for i, frame in enumerate(frames):
        stream.push(frame)
        stream.push(audio(i))
        delivered += await drain(reader.video)
        await drain(reader.audio)
        assert len(stalled.video) <= 10
        assert len(stalled.audio) <= 10
    assert delivered == frames
    assert reader.video.dropped == 0 and reader.audio.dropped == 0
    assert stalled.video.dropped > 900
    assert_decodable(await drain(stalled.video))


@pytest.mark.parametrize("kind", ["audio", "video"])
def test_subscription_queue_by_kind(kind: MediaKind) -> None:
    stream, _, _ = new_stream()
    sub = stream.subscribe(Listener(), max_frames=3)
    assert sub.queue(kind).kind == kind
    assert sub.video.max_frames == 3
    assert sub.audio.max_frames == 8, "audio queues hold at least 8 packets"


# --- direct delivery (the fast fan-out path) ---------------------------------------------------


class Receiver:
    """A deliver callback: takes frames until told it is congested."""

    def __init__(self) -> None:
        self.frames: list[MediaFrame] = []
        self.congested = False

    def __call__(self, frame: MediaFrame) -> bool:
        if self.congested:
            return False
        self.frames.append(frame)
        return True


def gap_counter() -> tuple[list[int], Any]:
    gaps: list[int] = []
    return gaps, lambda: gaps.append(1)


def test_attach_hands_over_queued_frames_in_order_then_delivers_directly() -> None:
    gaps, on_gap = gap_counter()
    queue = FrameQueue("video", 30, on_gap)
    for frame in gop_stream(5):
        queue.put(frame)
    receiver = Receiver()
    queue.attach(receiver)
    assert [f.pts for f in receiver.frames] == [0, 1, 2, 3, 4]
    assert len(queue) == 0
    for frame in gop_stream(3, start=5):
        queue.put(frame)
    assert [f.pts for f in receiver.frames] == list(range(8))
    assert queue.meter.total_frames == 8
    assert gaps == []


def test_congested_receiver_skips_to_the_next_keyframe_and_asks_for_one() -> None:
    gaps, on_gap = gap_counter()
    queue = FrameQueue("video", 30, on_gap)
    receiver = Receiver()
    queue.attach(receiver)
    frames = gop_stream(30, gop=10)
    for frame in frames[:4]:
        queue.put(frame)
    receiver.congested = True
    queue.put(frames[4])  # refused: the GOP is broken for this viewer from here
    receiver.congested = False
    for frame in frames[5:]:
        queue.put(frame)
    # Frames 5-9 reference the lost frame 4: skipped up to the keyframe at 10.
    assert [f.pts for f in receiver.frames] == [0, 1, 2, 3, *range(10, 30)]
    assert gaps == [1]
    assert queue.dropped == 1 + 5


def test_congestion_while_handing_over_drops_the_rest_of_the_backlog() -> None:
    gaps, on_gap = gap_counter()
    queue = FrameQueue("video", 30, on_gap)
    for frame in gop_stream(6):
        queue.put(frame)
    receiver = Receiver()
    receiver.congested = True
    queue.attach(receiver)
    receiver.congested = False
    assert receiver.frames == []
    assert queue.dropped == 6 and gaps == [1]
    for frame in gop_stream(12, start=6):
        queue.put(frame)
    assert [f.pts for f in receiver.frames] == list(range(10, 18))


def test_congested_audio_just_loses_that_frame() -> None:
    gaps, on_gap = gap_counter()
    queue = FrameQueue("audio", 30, on_gap)
    receiver = Receiver()
    queue.attach(receiver)
    queue.put(audio(0))
    receiver.congested = True
    queue.put(audio(960))
    receiver.congested = False
    queue.put(audio(1920))
    assert [f.pts for f in receiver.frames] == [0, 1920]
    assert queue.dropped == 1 and gaps == []


def test_joining_subscriber_with_direct_delivery_gets_the_replayed_keyframe_then_live_gop() -> None:
    stream = Stream("s")
    stream.set_codecs(Codec("H264", 90000), None)
    for frame in timed_gops(50):
        stream.push(frame)
    sub = stream.subscribe(Listener())
    receiver = Receiver()
    sub.video.attach(receiver)
    for frame in timed_gops(15, start=50):
        stream.push(frame)
    first = receiver.frames[0]
    assert first.keyframe and first.replay and first.pts == 49 * STEP  # cached IDR 30, stamped live
    assert frame_numbers(receiver.frames[1:]) == list(range(60, 65))


class StoppingSource(Source):
    """A source that can be stopped by its stream (`StoppableSource`)."""

    def __init__(self) -> None:
        super().__init__()
        self.told: list[str] = []

    def stream_ended(self, info: str) -> None:
        self.told.append(info)


def test_a_stream_ended_under_its_source_tells_it_why() -> None:
    stream, _, _ = new_stream()
    source = StoppingSource()
    stream.attach_source(source, "test")
    stream.end("Stream name already in use")
    assert source.told == ["Stream name already in use"]
    stream.end("again")  # once
    assert source.told == ["Stream name already in use"]


def test_a_source_that_ends_its_own_stream_is_not_told() -> None:
    # A publisher that stops releases with no info (or detached first): nothing to tell.
    stream, _, _ = new_stream()
    source = StoppingSource()
    stream.attach_source(source, "test")
    stream.end(None)
    assert source.told == []
    detached = Stream("other")
    other = StoppingSource()
    detached.attach_source(other, "test")
    detached.detach_source(other)
    detached.end("the device's push was given up")
    assert other.told == []


def test_a_source_attached_to_a_stream_already_ended_is_told_at_once() -> None:
    # The name was lost to another worker while the publisher was still negotiating.
    stream = Stream("late")
    stream.end("Stream name already in use")
    source = StoppingSource()
    stream.attach_source(source, "test")
    assert source.told == ["Stream name already in use"]


def test_a_queue_is_in_step_while_it_hands_on_every_frame() -> None:
    """`FrameQueue.in_step`: attached, not waiting for a keyframe, open; what lets a batch
    write a viewer ahead of its queue (`fanout.ViewerBatch`). Each time it turns false the
    queue says so (`on_out_of_step`), so the batch need not ask it every frame."""
    delivered: list[int] = []
    ok = [True]
    told: list[bool] = []

    def deliver(frame: MediaFrame) -> bool:
        delivered.append(frame.pts)
        return ok[0]

    queue = FrameQueue("video", 10, lambda: None)
    queue.on_out_of_step = lambda: told.append(queue.in_step)
    assert not queue.in_step  # not attached
    queue.attach(deliver)
    assert not queue.in_step  # waiting for the first keyframe
    queue.put(video(0, True))
    assert queue.in_step and told == []
    ok[0] = False
    queue.put(video(1))  # the consumer could not take it: a gap
    assert not queue.in_step and told == [False]
    ok[0] = True
    queue.put(video(2, True))
    assert queue.in_step
    queue.resync()  # another source: wait for its keyframe
    assert not queue.in_step and told == [False, False]
    queue.put(video(3, True))
    queue.start_with(video(4, True))  # a cached keyframe, then the next live one
    assert not queue.in_step and told == [False] * 3
    queue.put(video(5, True))
    assert queue.in_step
    queue.close()
    assert not queue.in_step and told == [False] * 4 and delivered == [0, 1, 2, 3, 4, 5]
    audio = FrameQueue("audio", 10, lambda: None)
    audio.attach(deliver)
    assert audio.in_step  # audio never waits for a keyframe
