"""gateway.sdview: Kerberos SD live view messages and the per-device state machine, with an
explicit clock and plain data."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from gateway.sdview.protocol import (
    MAX_AGENT_MESSAGE_BYTES,
    RECEIVE_SD_STREAM,
    SdImage,
    SdViewProtocolError,
    agent_topic,
    hub_topic,
    parse_agent_message,
    parse_sd_image,
    request_sd_stream,
)
from gateway.sdview.state import Due, Ignored, Publish, Refreshed, Refused, SdViewState, Started, Stopped

DEVICES = {"cam-1": "front", "cam-2": "back"}
JPEG = b"\xff\xd8\xff\xe0" + bytes(200) + b"\xff\xd9"


def keep_alive(device_id: str = "cam-1", **changes: Any) -> dict[str, Any]:
    """The keep-alive exactly as the Kerberos Hub documentation shows it."""
    message: dict[str, Any] = {
        "mid": "xxxx",
        "timestamp": "xxxx",
        "device_id": device_id,
        "hidden": False,
        "payload": {
            "action": "request-sd-stream",
            "device_id": device_id,
            "value": {"timestamp": 1700000000},
        },
    }
    message.update(changes)
    return message


def raw(message: object) -> bytes:
    return orjson.dumps(message)


class Keyframes:
    """keyframe_of for `SdViewState.due`: the latest keyframe mark of each stream."""

    def __init__(self, **marks: int | None) -> None:
        self.marks: dict[str, int | None] = dict(marks)

    def __call__(self, stream: str) -> int | None:
        return self.marks.get(stream)


# --- protocol --------------------------------------------------------------------------------


def test_topics() -> None:
    assert agent_topic("hub-abc") == "kerberos/agent/hub-abc"
    assert hub_topic("hub-abc") == "kerberos/hub/hub-abc"
    for bad in ("", "a/b", "a+", "#", "a\x00"):
        with pytest.raises(ValueError, match="hub key"):
            agent_topic(bad)


def test_parse_the_documented_keep_alive() -> None:
    message = parse_agent_message(raw(keep_alive()))
    assert message.requests_sd_stream
    assert (message.mid, message.timestamp, message.device_id) == ("xxxx", "xxxx", "cam-1")
    assert message.hidden is False
    assert message.value == {"timestamp": 1700000000}


def test_parse_agent_style_numbers_and_optional_fields() -> None:
    message = keep_alive(timestamp=1700000000)
    del message["hidden"]
    del message["payload"]["value"]
    parsed = parse_agent_message(raw(message))
    assert parsed.timestamp == 1700000000 and parsed.value == {} and not parsed.hidden
    assert parse_agent_message(request_sd_stream("cam-2", timestamp=5)).device_id == "cam-2"


def broken(path: str, value: Any) -> dict[str, Any]:
    message = keep_alive()
    target = message
    *parents, leaf = path.split(".")
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[leaf]
    else:
        target[leaf] = value
    return message


MALFORMED: list[tuple[bytes, str]] = [
    (b"", "not JSON"),
    (b"request-sd-stream", "not JSON"),
    (b'{"mid": ', "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (raw([keep_alive()]), "not a JSON object"),
    (raw("text"), "not a JSON object"),
    (raw(None), "not a JSON object"),
    (raw(broken("mid", KeyError)), "mid must be"),
    (raw(broken("mid", 42)), "mid must be"),
    (raw(broken("mid", "")), "mid must be"),
    (raw(broken("timestamp", KeyError)), "timestamp must be"),
    (raw(broken("timestamp", True)), "timestamp must be"),
    (raw(broken("timestamp", 1.5)), "timestamp must be"),
    (raw(broken("timestamp", [1])), "timestamp must be"),
    (raw(broken("device_id", KeyError)), "device_id must be"),
    (raw(broken("device_id", None)), "device_id must be"),
    (raw(broken("device_id", {"id": 1})), "device_id must be"),
    (raw(broken("device_id", "x" * 300)), "longer than"),
    (raw(broken("hidden", "no")), "hidden must be"),
    (raw(broken("payload", KeyError)), "payload must be"),
    (raw(broken("payload", "request-sd-stream")), "payload must be"),
    (raw(broken("payload.action", KeyError)), "payload.action must be"),
    (raw(broken("payload.action", 7)), "payload.action must be"),
    (raw(broken("payload.device_id", KeyError)), "payload.device_id must be"),
    (raw(broken("payload.device_id", "cam-2")), "differs"),
    (raw(broken("payload.value", "x")), "payload.value must be"),
    (raw(broken("payload.value.timestamp", "soon")), "payload.value.timestamp must be"),
    (raw({**keep_alive(), "encrypted": True}), "encrypted"),
    (b" " * (MAX_AGENT_MESSAGE_BYTES + 1), "more than"),
    (raw({**keep_alive(), "padding": "x" * MAX_AGENT_MESSAGE_BYTES}), "more than"),
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_malformed_keep_alives_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(SdViewProtocolError, match=reason):
        parse_agent_message(data)
    state = SdViewState(DEVICES)
    with pytest.raises(SdViewProtocolError):
        state.receive(data, 0.0)
    assert state.watching(0.0) == {}


def test_sd_image_message_is_the_documented_shape() -> None:
    payload = SdImage("cam-1", JPEG, timestamp=1700000001, mid="m1").encode()
    message = orjson.loads(payload)
    assert message == {
        "mid": "m1",
        "timestamp": 1700000001,
        "device_id": "cam-1",
        "hidden": False,
        "payload": {
            "action": RECEIVE_SD_STREAM,
            "device_id": "cam-1",
            "value": {"image": base64.b64encode(JPEG).decode()},
        },
    }
    assert parse_sd_image(payload) == SdImage("cam-1", JPEG, 1700000001, "m1", False)
    with pytest.raises(SdViewProtocolError):
        parse_sd_image(raw(keep_alive()))


# --- state machine ---------------------------------------------------------------------------


def publish(state: SdViewState, device_id: str, keyframe: int, now: float) -> Publish | Refused | None:
    return state.picture(device_id, keyframe, JPEG, now, timestamp=1700000000 + int(now))


def test_keep_alive_starts_publishing_and_silence_stops_it() -> None:
    state = SdViewState(DEVICES)
    keyframes = Keyframes(front=1)
    assert state.due(0.0, keyframes) == []  # nobody asked
    assert state.receive(raw(keep_alive()), 10.0) == Started("cam-1", "front")
    assert state.due(10.0, keyframes) == [Due("cam-1", "front")]
    sent = publish(state, "cam-1", 1, 10.0)
    assert isinstance(sent, Publish) and parse_sd_image(sent.payload).jpeg == JPEG
    keyframes.marks["front"] = 2
    assert state.due(12.9, keyframes) == [Due("cam-1", "front")]
    assert state.expire(12.9) == []
    # 3 s after the last keep-alive: nothing is due and the view closes.
    assert state.due(13.0, keyframes) == []
    assert publish(state, "cam-1", 2, 13.0) is None
    assert state.expire(13.0) == [Stopped("cam-1", "front")]
    assert state.watching(13.0) == {}
    # Asking again opens a new view that gets the current keyframe at once.
    assert state.receive(raw(keep_alive()), 20.0) == Started("cam-1", "front")
    assert state.due(20.0, Keyframes(front=2)) == [Due("cam-1", "front")]


def test_keep_alives_extend_the_view() -> None:
    state = SdViewState(DEVICES)
    state.receive(raw(keep_alive()), 0.0)
    for second in range(1, 10):
        assert state.receive(raw(keep_alive()), float(second)) == Refreshed("cam-1")
    assert state.watching(11.9) == {"cam-1": "front"}
    assert state.expire(12.0) == [Stopped("cam-1", "front")]


def test_at_most_one_picture_a_second() -> None:
    state = SdViewState(DEVICES)
    state.receive(raw(keep_alive()), 0.0)
    assert isinstance(publish(state, "cam-1", 1, 0.0), Publish)
    # An all-intra stream: a new keyframe every 40 ms.
    for step in range(1, 25):
        state.receive(raw(keep_alive()), step * 0.04)
        assert state.due(step * 0.04, Keyframes(front=1 + step)) == []
    assert state.due(1.0, Keyframes(front=100)) == [Due("cam-1", "front")]


def test_a_new_keyframe_is_needed() -> None:
    state = SdViewState(DEVICES)
    state.receive(raw(keep_alive()), 0.0)
    assert isinstance(publish(state, "cam-1", 7, 0.0), Publish)
    for now in (1.0, 1.5, 2.0):
        state.receive(raw(keep_alive()), now)
        assert state.due(now, Keyframes(front=7)) == []  # long GOP: the same keyframe
    assert publish(state, "cam-1", 7, 2.0) is None  # rendering raced: still the same one
    assert state.due(2.0, Keyframes(front=8)) == [Due("cam-1", "front")]
    assert state.due(2.0, Keyframes(front=None)) == []  # no picture at all (stream gone)


def test_unknown_device_and_other_actions_are_ignored() -> None:
    state = SdViewState(DEVICES)
    assert state.receive(raw(keep_alive("cam-9")), 0.0) == Ignored("cam-9", "request-sd-stream")
    other = keep_alive()
    other["payload"]["action"] = "request-hd-stream"
    assert state.receive(raw(other), 0.0) == Ignored("cam-1", "request-hd-stream")
    assert state.watching(0.0) == {}
    assert state.due(0.0, Keyframes(front=1, back=1)) == []


def test_each_device_has_its_own_view() -> None:
    state = SdViewState({"cam-1": "front", "cam-1b": "front", "cam-2": "back"})
    state.receive(raw(keep_alive("cam-1")), 0.0)
    state.receive(raw(keep_alive("cam-2")), 1.0)
    assert state.due(1.0, Keyframes(front=1, back=1)) == [Due("cam-1", "front"), Due("cam-2", "back")]
    publish(state, "cam-1", 1, 1.0)
    assert state.due(1.0, Keyframes(front=1, back=1)) == [Due("cam-2", "back")]
    assert state.expire(3.0) == [Stopped("cam-1", "front")]
    assert state.watching(3.0) == {"cam-2": "back"}


def test_oversize_pictures_are_refused_once_per_keyframe() -> None:
    state = SdViewState(DEVICES, max_payload_bytes=600)
    state.receive(raw(keep_alive()), 0.0)
    refused = state.picture("cam-1", 1, bytes(1000), 0.0, timestamp=0)
    assert isinstance(refused, Refused) and refused.limit == 600 and refused.size > 1000
    assert state.due(0.5, Keyframes(front=1)) == []  # not tried again for that keyframe
    # A refusal does not count against the rate: the next keyframe may go at once.
    assert state.due(0.5, Keyframes(front=2)) == [Due("cam-1", "front")]
    assert isinstance(state.picture("cam-1", 2, JPEG, 0.5, timestamp=0), Publish)


def test_skip_waits_for_the_next_keyframe() -> None:
    state = SdViewState(DEVICES)
    state.receive(raw(keep_alive()), 0.0)
    state.skip("cam-1", 1)
    assert state.due(0.0, Keyframes(front=1)) == []
    assert state.due(0.0, Keyframes(front=2)) == [Due("cam-1", "front")]


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        SdViewState(DEVICES, keepalive_timeout=0)
    with pytest.raises(ValueError):
        SdViewState(DEVICES, max_payload_bytes=0)
