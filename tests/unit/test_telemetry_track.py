"""`TelemetryTrack`: a sink's samples held until its video reaches the frame they came after;
samples before any video, a flood beyond its bound and a timeline that goes back."""

from __future__ import annotations

import json
from fractions import Fraction

from gateway.media.sinks.telemetry import TelemetryTrack
from gateway.media.stream import Codec, MediaFrame, Stream, to_90khz
from gateway.telemetry.hub import TelemetryHub
from tests.telemetry_boxes import Sample

TB = Fraction(1, 90000)


def setup() -> tuple[Stream, TelemetryHub, TelemetryTrack]:
    stream = Stream("cam")
    stream.set_codecs(Codec("H264", 90000), None)
    hub = TelemetryHub(lambda name: stream if name == "cam" else None)
    return stream, hub, TelemetryTrack(hub, "cam", max_waiting=5)


def push(stream: Stream, pts: int) -> None:
    stream.push(MediaFrame("video", "H264", b"\x00\x00\x00\x01\x65", pts, TB, True))


def numbers(samples: list[tuple[int, str]]) -> list[int]:
    return [json.loads(body)["n"] for _, body in samples]


def test_samples_wait_for_the_frame_after_theirs() -> None:
    stream, hub, track = setup()
    hub.publish(Sample("SN", 0), ["cam"])  # before any video: nothing to time it by
    assert track.dropped == 1 and track.received == 1
    push(stream, 1000)
    hub.publish(Sample("SN", 1), ["cam"])
    push(stream, 4000)
    hub.publish(Sample("SN", 2), ["cam"])
    hub.publish(Sample("SN", 3), ["cam"])
    assert track.due(1000) == []  # the frame it came after is not later than it
    due = track.due(4000)
    assert [pts for pts, _ in due] == [1000] and numbers(due) == [1]
    assert numbers(track.due(7000)) == [2, 3]
    assert track.due(10_000) == []
    # Closing lets go of the hub.
    track.close()
    assert hub.subscribers() == 0


def test_a_flood_keeps_the_newest_and_counts_the_rest() -> None:
    stream, hub, track = setup()
    push(stream, 0)
    for n in range(100):
        hub.publish(Sample("SN", n), ["cam"])
    assert track.dropped == 95
    assert numbers(track.due(3000)) == [95, 96, 97, 98, 99]
    track.close()


def test_a_timeline_going_back_releases_what_waits() -> None:
    stream, hub, track = setup()
    push(stream, 900_000)
    assert track.due(900_000) == []
    hub.publish(Sample("SN", 0), ["cam"])
    # A new source whose clock starts lower: the sample's frame was before this one.
    assert numbers(track.due(3000)) == [0]
    assert track.up_to(3000) == []
    track.close()


def test_to_90khz() -> None:
    assert to_90khz(123, TB) == 123
    assert to_90khz(1000, Fraction(1, 1000)) == 90_000
    assert to_90khz(1, Fraction(1, 48000)) == 1  # truncated, as aiortc stamps RTP
