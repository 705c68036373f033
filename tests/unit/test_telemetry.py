"""gateway.telemetry: the newest-wins throttle, the hub (one JSON per sample, one stamp per
stream, isolation of a failing receiver), the delivered payload, and the WCS side (the
player's options in playStream's custom data, notifyStreamEvent only once PLAYING)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.media.registry import StreamRegistry
from gateway.media.stream import MediaFrame, Stream
from gateway.telemetry.delivery import RateLimitedTelemetry
from gateway.telemetry.hub import TelemetryHub, TelemetryMessage
from gateway.telemetry.throttle import Throttle
from gateway.wcs import messages as m
from gateway.wcs.session import Send

from .helpers import PLAY_FIELDS, TINY_SDP, client_frame, decode
from .test_wcs_session import PLAYER, established, play, playing


@dataclass(frozen=True)
class Sample:
    sn: str
    values: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"sn": self.sn, **self.values}

    def gauges(self) -> dict[str, float]:
        return {"battery_percent": self.values["battery"]} if "battery" in self.values else {}


def video(pts: int, time_base: Fraction = Fraction(1, 90_000), keyframe: bool = True) -> MediaFrame:
    return MediaFrame("video", "H264", b"\x00\x00\x00\x01\x65", pts, time_base, keyframe)


# --- throttle ---------------------------------------------------------------------------------


def test_throttle_sends_the_first_at_once_and_holds_the_next() -> None:
    throttle: Throttle[str] = Throttle(10)
    assert throttle.offer("a", 0.0) == "a"
    assert throttle.offer("b", 0.05) is None
    assert throttle.next_due == pytest.approx(0.1)
    assert throttle.due(0.09) is None
    assert throttle.due(0.1) == "b"
    assert throttle.next_due is None


def test_throttle_newest_wins_while_waiting() -> None:
    throttle: Throttle[str] = Throttle(10)
    throttle.offer("a", 0.0)
    for i, name in enumerate("bcd"):
        assert throttle.offer(name, 0.01 * (i + 1)) is None
    assert throttle.replaced == 2
    assert throttle.due(0.1) == "d"


@pytest.mark.parametrize("rate", [0, -1, float("nan")])
def test_throttle_refuses_a_rate_that_is_not_positive(rate: float) -> None:
    with pytest.raises(ValueError):
        Throttle(rate)


@given(
    rate=st.floats(min_value=0.5, max_value=100),
    gaps=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=200),
)
@settings(max_examples=200)
def test_throttle_never_sends_faster_than_its_rate_and_always_sends_the_last(
    rate: float, gaps: list[float]
) -> None:
    """Whatever the arrivals, sends are at least 1/rate apart, and the last message offered
    is sent (at once or when due): a receiver always ends up with the latest state."""
    throttle: Throttle[int] = Throttle(rate)
    now, sent = 0.0, []
    for i, gap in enumerate(gaps):
        now += gap
        due = throttle.next_due
        if due is not None and due <= now:
            released = throttle.due(due)
            assert released is not None
            sent.append((due, released))
        ready = throttle.offer(i, now)
        if ready is not None:
            sent.append((now, ready))
    due = throttle.next_due
    if due is not None:
        sent.append((due, throttle.due(due)))
    assert sent[-1][1] == len(gaps) - 1
    times = [t for t, _ in sent]
    assert all(b - a >= 1 / rate - 1e-9 for a, b in zip(times, times[1:], strict=False))
    assert [i for _, i in sent] == sorted(i for _, i in sent)


# --- hub --------------------------------------------------------------------------------------


def hub_with(*streams: Stream) -> TelemetryHub:
    found = {s.name: s for s in streams}
    return TelemetryHub(found.get, clock=lambda: 5.0)


def test_hub_stamps_each_stream_with_its_media_clock_and_encodes_once() -> None:
    a, b = Stream("a"), Stream("b")
    a.push(video(9000))
    b.push(video(3, Fraction(1, 1000)))  # 3 ms on another clock: 270 at 90 kHz
    hub = hub_with(a, b)
    got: list[TelemetryMessage] = []
    hub.subscribe("a", got.append)
    hub.subscribe("b", got.append)
    hub.subscribe("c", got.append)  # no stream (yet): stamped None
    sample = Sample("AIRCRAFT1", {"battery": 80})
    hub.publish(sample, ["a", "b", "c", "unwatched"])
    assert [(msg.stream, msg.stream_pts) for msg in got] == [("a", 9000), ("b", 270), ("c", None)]
    assert got[0].body is got[1].body is got[2].body  # one encoding for every stream
    assert orjson.loads(got[0].body) == sample.to_json()
    assert hub.messages == 3 and hub.samples == 1
    assert hub.latest("AIRCRAFT1") is sample


def test_hub_before_any_video_stamps_none() -> None:
    stream = Stream("a")
    hub = hub_with(stream)
    got: list[TelemetryMessage] = []
    hub.subscribe("a", got.append)
    hub.publish(Sample("X"), ["a"])
    assert got[0].stream_pts is None
    assert orjson.loads(got[0].payload(None))["rtpTimestamp"] is None


def test_payload_is_the_documented_json_with_the_receivers_stamp() -> None:
    sample = Sample("DOCK1", {"dock": {"modeCode": 0}})
    message = TelemetryMessage.make('cam "1"', sample, orjson.dumps(sample.to_json()).decode(), 90, 0.0)
    assert orjson.loads(message.payload(123)) == {
        "rtpTimestamp": 123,
        "stream": 'cam "1"',
        "sample": sample.to_json(),
    }
    assert orjson.loads(message.payload(2**32 + 5))["rtpTimestamp"] == 5  # RTP wraps
    assert orjson.loads(message.media_payload())["rtpTimestamp"] == 90


def test_a_failing_receiver_keeps_nothing_from_the_others() -> None:
    hub = hub_with()
    got: list[TelemetryMessage] = []

    def broken(message: TelemetryMessage) -> None:
        raise RuntimeError("bug")

    hub.subscribe("a", broken)
    hub.subscribe("a", got.append)
    hub.publish(Sample("X"), ["a"])
    hub.publish(Sample("X"), ["a"])
    assert len(got) == 2 and hub.failed["a"] == 2


def test_unsubscribed_receivers_get_nothing_and_leave_no_state() -> None:
    hub = hub_with()
    got: list[TelemetryMessage] = []
    subscription = hub.subscribe("a", got.append)
    subscription.close()
    subscription.close()  # twice is harmless
    hub.publish(Sample("X"), ["a"])
    assert got == [] and hub.subscribers() == 0 and hub.messages == 0


def test_current_is_the_streams_latest_sample_stamped_now() -> None:
    stream = Stream("a")
    hub = hub_with(stream)
    assert hub.current("a") is None
    hub.publish(Sample("X", {"battery": 50}), ["a"])
    stream.push(video(4500))
    current = hub.current("a")
    assert current is not None and current.stream_pts == 4500
    assert orjson.loads(current.body)["battery"] == 50
    hub.forget("X", ["a"])
    assert hub.current("a") is None and hub.latest("X") is None


def test_the_registry_has_one_hub_that_finds_its_streams() -> None:
    registry = StreamRegistry()
    stream = registry.claim("cam")
    stream.push(video(180))
    got: list[TelemetryMessage] = []
    registry.telemetry.subscribe("cam", got.append)
    registry.telemetry.publish(Sample("X"), ["cam"])
    assert got[0].stream_pts == 180


async def test_rate_limited_receiver_sends_the_newest_when_due() -> None:
    hub = hub_with()
    sent: list[TelemetryMessage] = []
    receiver = RateLimitedTelemetry(hub, "a", 20, sent.append)  # 50 ms apart
    for i in range(5):
        hub.publish(Sample("X", {"i": i}), ["a"])
    assert [orjson.loads(s.body)["i"] for s in sent] == [0]
    async with asyncio.timeout(5):
        while len(sent) < 2:
            await asyncio.sleep(0.01)
    assert [orjson.loads(s.body)["i"] for s in sent] == [0, 4]
    assert receiver.replaced == 3 and receiver.sent == 2
    receiver.close()
    hub.publish(Sample("X", {"i": 5}), ["a"])
    await asyncio.sleep(0.1)
    assert len(sent) == 2 and hub.subscribers() == 0


async def test_closing_a_receiver_with_a_message_waiting_drops_it() -> None:
    hub = hub_with()
    sent: list[TelemetryMessage] = []
    receiver = RateLimitedTelemetry(hub, "a", 10, sent.append)
    hub.publish(Sample("X"), ["a"])
    hub.publish(Sample("X"), ["a"])  # waits
    receiver.close()
    await asyncio.sleep(0.15)
    assert len(sent) == 1


# --- WCS: the player's options and the frame ------------------------------------------------


def play_frame(custom: Any) -> m.PlayStream:
    body = {**PLAY_FIELDS, "sdp": TINY_SDP, "custom": custom}
    parsed = m.parse_frame(client_frame("playStream", body))
    assert isinstance(parsed, m.PlayStream)
    return parsed


def test_telemetry_is_on_by_default_and_off_when_the_player_says_so() -> None:
    assert play_frame(None).telemetry is True
    assert play_frame({"other": 1}).telemetry is True
    assert play_frame("a string, as some apps send").telemetry is True
    off = play_frame({"telemetry": False})
    assert off.telemetry is False
    slower = play_frame({"telemetryRate": 2})
    assert slower.telemetry is True and slower.telemetry_rate == 2.0


@pytest.mark.parametrize(
    "custom",
    [
        {"telemetry": "no"},
        {"telemetry": 0},
        {"telemetryRate": 0},
        {"telemetryRate": -5},
        {"telemetryRate": "fast"},
        {"telemetryRate": True},
        {"telemetryRate": 1e9},
    ],
)
def test_bad_telemetry_options_fail_the_play_with_a_reason(custom: dict[str, Any]) -> None:
    body = {**PLAY_FIELDS, "sdp": TINY_SDP, "custom": custom}
    with pytest.raises(m.ProtocolError) as info:
        m.parse_frame(client_frame("playStream", body))
    assert "custom.telemetry" in info.value.info
    assert info.value.media_session_id == PLAY_FIELDS["mediaSessionId"]


def test_bad_telemetry_options_fail_only_that_play() -> None:
    session = established()
    out = play(session, custom={"telemetry": "no"})
    frame = decode(next(o.text for o in out if isinstance(o, Send)))
    assert frame["message"] == "notifyStreamStatusEvent" and frame["data"][0]["status"] == "FAILED"
    assert "custom.telemetry" in frame["data"][0]["info"]
    playing(session, "other-player")  # the session goes on


def test_telemetry_reaches_a_player_only_once_playing() -> None:
    session = established()
    play(session)
    assert session.telemetry(PLAYER, '{"rtpTimestamp":1}') == []  # not PLAYING yet
    assert session.telemetry("unknown", '{"rtpTimestamp":1}') == []
    session.media_answer(PLAYER, "v=0\r\n", "opus")
    session.media_started(PLAYER, video_codec="H264")
    out = session.telemetry(PLAYER, '{"rtpTimestamp":1,"stream":"cam","sample":{}}')
    frame = decode(out[0].text)  # type: ignore[union-attr]
    assert frame == {
        "message": "notifyStreamEvent",
        "data": [
            {
                "mediaSessionId": PLAYER,
                "type": "telemetry",
                "payload": {"rtpTimestamp": 1, "stream": "cam", "sample": {}},
            }
        ],
    }
