"""The media link between two workers, in one process over a real Unix socket: the owner's
end (`WorkerLink._serve_link`) and a viewer worker's mirror (`ClusterStreams`). Stream
events sent on a mirror go to the owner and come back to every subscriber once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog
from hypothesis import given
from hypothesis import strategies as st

from gateway.cluster import wire
from gateway.cluster.worker import WorkerLink, WorkerPlace
from gateway.media.ingest_keys import IngestKeys
from gateway.media.registry import StreamRegistry
from gateway.media.stream import NO_FEEDBACK, Codec, MediaFrame, SourceFeedback, Stream

pytestmark = pytest.mark.timeout(10)

H264 = Codec("H264", 90000)


class Listener:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_video_format(self, width: int, height: int) -> None:
        pass

    def on_stream_event(self, event_type: str, payload: Any) -> None:
        self.events.append((event_type, payload))

    def on_stream_end(self, info: str | None) -> None:
        pass


class Publisher:
    """The owner's source (a publisher here)."""

    def request_keyframe(self) -> None:
        pass

    async def feedback(self) -> SourceFeedback:
        return NO_FEEDBACK


def keyframe(pts: int = 0) -> MediaFrame:
    return MediaFrame("video", "H264", b"\x00\x00\x00\x01\x65\x88", pts, Fraction(1, 90000), keyframe=True)


def worker(index: int, runtime_dir: Path) -> WorkerLink:
    """A worker's link without its control channel (the directory is applied by hand)."""
    place = WorkerPlace(index, control_fd=-1, listeners={}, runtime_dir=runtime_dir, workers=2)
    return WorkerLink(place, StreamRegistry(), IngestKeys())


@pytest_asyncio.fixture
async def linked(tmp_path: Path) -> AsyncIterator[tuple[Stream, Stream]]:
    """A stream held by worker 0 and its mirror in worker 1 (each with one subscriber)."""
    owner, viewer = worker(0, tmp_path), worker(1, tmp_path)
    links: list[asyncio.Task[Any]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        links.append(asyncio.ensure_future(owner._serve_link(reader, writer)))
        await links[-1]

    server = await asyncio.start_unix_server(serve, owner.media_path)
    held = owner.registry.claim("s")
    held.set_codecs(H264, None)
    held.attach_source(Publisher(), "test")
    held.push(keyframe())
    viewer.replica.apply({"op": "workers", "endpoints": {"0": owner.media_path}})
    viewer.replica.apply({"op": "owner", "name": "s", "worker": 0})
    try:
        async with viewer.registry.viewing("s") as mirror:
            assert viewer.registry.is_mirror(mirror)
            yield held, mirror
    finally:
        await viewer.remote.stop()
        await asyncio.gather(*links)  # the owner's end saw the link close
        server.close()
        await server.wait_closed()


async def until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.01)


async def test_an_event_sent_on_a_mirror_reaches_every_subscriber_once(linked: tuple[Stream, Stream]) -> None:
    held, mirror = linked
    here, there = Listener(), Listener()
    held.subscribe(here)
    mirror.subscribe(there)

    mirror.send_event("setQuality", {"quality": 2, "status": "OK"})
    assert there.events == []  # not broadcast on the mirror: it comes back from the owner
    await until(lambda: len(here.events) == 1)
    # Then one from the owner: it follows the first on the link, so a second copy of the
    # first would have arrived by the time it does.
    held.send_event("done", None)
    await until(lambda: len(there.events) == 2)
    assert here.events == there.events == [("setQuality", {"quality": 2, "status": "OK"}), ("done", None)]


async def test_bad_events_on_a_link_are_refused_alone(linked: tuple[Stream, Stream]) -> None:
    held, mirror = linked
    here, there = Listener(), Listener()
    held.subscribe(here)
    mirror.subscribe(there)
    link = mirror.source
    assert link is not None
    writer: asyncio.StreamWriter = link.writer  # type: ignore[attr-defined]
    with structlog.testing.capture_logs() as logs:
        for bad in (b"not json", b"[1]", b'{"payload": 1}', b'{"type": 7}', b'{"type": ""}'):
            writer.write(wire.frame(wire.Kind.EVENT, bad))
        mirror.send_event("fine", [1])
        await until(lambda: len(there.events) == 1)
    assert here.events == there.events == [("fine", [1])]
    refused = [entry for entry in logs if entry["event"] == "media_link_event_refused"]
    assert len(refused) == 5, logs
    # The link goes on carrying media.
    held.push(keyframe(3000))
    await until(lambda: mirror.last_video_pts == 3000)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@given(st.text(min_size=1, max_size=30), json_values)
def test_an_event_crosses_a_link_unchanged(event_type: str, payload: Any) -> None:
    ((kind, body),) = wire.FrameReader(wire.CONTROL_MAX_BYTES).feed(wire.event_frame(event_type, payload))
    assert kind is wire.Kind.EVENT
    assert wire.parse_event(body) == (event_type, payload)


@given(st.binary(max_size=100))
def test_any_event_payload_gives_an_event_or_a_wire_error(payload: bytes) -> None:
    try:
        event_type, _ = wire.parse_event(payload)
    except wire.WireError:
        return
    assert isinstance(event_type, str) and event_type
