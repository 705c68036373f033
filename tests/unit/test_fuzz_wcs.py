"""Property tests of the WCS message parser (gateway/wcs/messages.py) against hostile frames.

For any text, bytes or JSON value, `parse_frame` returns a client message or raises
ProtocolError, never anything else. A frame written with `encode` (the builder the server
uses for its own frames) parses back to the fields it was given. Budget: the Hypothesis
profile (tests/unit/conftest.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.wcs import messages as w

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=25,
)
names = st.sampled_from([*w._PARSERS, *sorted(w.IGNORED_MESSAGES), "", "nope"]) | st.text(max_size=10)
FIELDS = [
    "mediaSessionId",
    "name",
    "sdp",
    "hasAudio",
    "hasVideo",
    "record",
    "transport",
    "type",
    "payload",
    "appKey",
    "clientVersion",
    "authToken",
]
# data[0] objects with the fields parsers read, each of any value or a plausible one.
field_values = st.one_of(
    json_values,
    st.text(max_size=300),
    st.sampled_from(["UDP", "tcp", "ſ", "v=0\r\n", "a" * 257, "\x00", "\u0085"]),
)
first_objects = st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=8)
frames = st.fixed_dictionaries(
    {},
    optional={
        "message": names | json_values,
        "data": st.lists(first_objects | json_values, max_size=2) | json_values,
    },
)


def parse(text: str | bytes) -> w.ClientMessage | None:
    try:
        message = w.parse_frame(text)
    except w.ProtocolError as exc:
        assert isinstance(exc.info, str)
        return None
    w.api_name(message)
    return message


@given(st.binary(max_size=200) | st.text(max_size=200))
@example(b"[" * 5000 + b"]" * 5000)  # nested past orjson's depth limit (the WebSocket's case)
@example('{"message": "\ud800"}')
@example(b'{"message": "playStream", "data": [{"mediaSessionId": 1e400}]}')
def test_parse_frame_raises_only_protocol_error_for_any_bytes(text: str | bytes) -> None:
    parse(text)


@given(frames | json_values)
@example(
    {"message": "playStream", "data": [{"mediaSessionId": "m", "name": "s", "sdp": "x", "transport": "ß"}]}
)
def test_parse_frame_raises_only_protocol_error_for_any_json(frame: Any) -> None:
    message = parse(orjson.dumps(frame))
    if isinstance(message, w.PublishStream | w.PlayStream):
        assert w.validate_stream_name(message.name) == message.name
        assert message.transport in w.TRANSPORTS


stream_names = st.text(
    st.characters(codec="utf-8").filter(lambda c: not (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0)),
    min_size=1,
    max_size=w.MAX_STREAM_NAME,
)
ids = st.text(st.characters(codec="utf-8").filter(str.isprintable), min_size=1, max_size=w.MAX_ID)


@given(
    st.sampled_from(["publishStream", "playStream"]),
    ids,
    stream_names,
    st.text(min_size=1, max_size=50).filter(str.strip),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["UDP", "TCP", "udp", "tcp"]),
)
def test_media_frames_round_trip(
    name: str, msid: str, stream: str, sdp: str, audio: bool, video: bool, transport: str
) -> None:
    """A publishStream/playStream frame written with `encode` parses back to its fields."""
    body = {"mediaSessionId": msid, "name": stream, "sdp": sdp, "hasAudio": audio, "hasVideo": video}
    message = w.parse_frame(w.encode(name, {**body, "transport": transport}))
    assert isinstance(message, w.PublishStream | w.PlayStream)
    assert w.api_name(message) == name
    assert (message.media_session_id, message.name, message.sdp) == (msid, stream, sdp)
    assert (message.has_audio, message.has_video, message.transport) == (audio, video, transport.upper())


@given(st.sampled_from(["unPublishStream", "stopStream", "availableStream", "snapshot"]), ids, stream_names)
def test_stream_frames_round_trip(name: str, msid: str, stream: str) -> None:
    message = w.parse_frame(w.encode(name, {"mediaSessionId": msid, "name": stream}))
    assert w.api_name(message) == name
    assert (message.media_session_id, message.name) == (msid, stream)  # type: ignore[union-attr]


@given(ids, st.text(min_size=1, max_size=64), json_values)
def test_stream_events_round_trip(msid: str, event_type: str, payload: Any) -> None:
    """What a client sends with sendStreamEvent is what the server relays (stream_event)."""
    message = w.parse_frame(
        w.encode("sendStreamEvent", {"mediaSessionId": msid, "type": event_type, "payload": payload})
    )
    assert message == w.SendStreamEvent(msid, event_type, payload)
    relayed = orjson.loads(w.stream_event(msid, event_type, payload))
    assert relayed["data"][0] == {"mediaSessionId": msid, "type": event_type, "payload": payload}
