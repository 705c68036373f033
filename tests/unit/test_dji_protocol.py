"""gateway.dji.protocol: topics, envelopes, live methods, result codes and device state, with
the examples of shared/reference/dji-cloud-api-live.md and every bad input."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from gateway.dji import protocol as p
from tests.unit.helpers import DJI_LIVE_CAPACITY

GW = "1ZMDGBW0000135"
AIRCRAFT = "1ZNDH1D0010054"
_DROP: Any = object()  # a key to leave out

# The official live_capacity example (reference §3).
LIVE_CAPACITY_MESSAGE: dict[str, Any] = {
    "tid": "6a7bfe89-c386-4043-b600-b518e10096cc",
    "bid": "42a19f36-5117-4520-bd13-fd61d818d52e",
    "timestamp": 1654070968655,
    "method": "",
    "gateway": GW,
    "data": {"live_capacity": DJI_LIVE_CAPACITY},
}

# live_start_push request and reply (reference §2 and §4).
START_REQUEST: dict[str, Any] = {
    "tid": "2d6e1b0c-0d8f-4d5e-9e3a-6f3e7b4a1c11",
    "bid": "8c1f2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b",
    "timestamp": 1654070968655,
    "method": "live_start_push",
    "data": {
        "url_type": 1,
        "url": "rtmp://10.0.0.5:1935/live/1581F5BMD228Q00A82XX-39-0-7",
        "video_id": "1581F5BMD228Q00A82XX/39-0-7/normal-0",
        "video_quality": 0,
    },
}
START_REPLY: dict[str, Any] = {
    "tid": START_REQUEST["tid"],
    "bid": START_REQUEST["bid"],
    "timestamp": 1654070969001,
    "gateway": GW,
    "method": "live_start_push",
    "data": {"result": 0, "output": {}},
}

# update_topo on sys/product/{gw}/status (reference §7; the DOC example's fields).
UPDATE_TOPO: dict[str, Any] = {
    "tid": "6a7bfe89-c386-4043-b600-b518e10096cc",
    "bid": "42a19f36-5117-4520-bd13-fd61d818d52e",
    "timestamp": 1598411295123,
    "method": "update_topo",
    "data": {
        "domain": "3",
        "type": 98,
        "sub_type": 0,
        "device_secret": "secret",
        "nonce": "nonce",
        "thing_version": "1.1.2",
        "sub_devices": [
            {
                "sn": AIRCRAFT,
                "domain": "0",
                "type": 116,
                "sub_type": 0,
                "index": "A",
                "device_secret": "secret",
                "nonce": "nonce",
                "thing_version": "1.1.2",
            }
        ],
    },
}


def message(base: dict[str, Any] | None = None, **changes: Any) -> bytes:
    """A JSON message from ``base`` (default: a minimal one) with keys changed or dropped."""
    body = {**(base or {"tid": "t-1", "bid": "b-1", "timestamp": 1, "method": "m", "data": {}}), **changes}
    return json.dumps({k: v for k, v in body.items() if v is not _DROP}).encode()


def envelope_error(payload: bytes | str) -> p.DjiProtocolError:
    with pytest.raises(p.DjiProtocolError) as info:
        p.parse_envelope(payload)
    assert str(info.value), "the error must say why"
    return info.value


def is_uuid(text: str) -> bool:
    return str(uuid.UUID(text)) == text


# --- topics ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "kind"),
    [
        (f"sys/product/{GW}/status", p.TopicKind.STATUS),
        (f"thing/product/{GW}/state", p.TopicKind.STATE),
        (f"thing/product/{GW}/osd", p.TopicKind.OSD),
        (f"thing/product/{GW}/services_reply", p.TopicKind.SERVICES_REPLY),
        (f"thing/product/{GW}/events", p.TopicKind.EVENTS),
        (f"thing/product/{GW}/requests", p.TopicKind.REQUESTS),
    ],
)
def test_parse_topic_every_kind(topic: str, kind: p.TopicKind) -> None:
    assert p.parse_topic(topic) == p.Topic(kind, GW)


def test_parse_topic_serial_numbers_of_the_reference() -> None:
    for sn in ("1ZNDH1D0010098", "1581F5BMD228Q00A82XX", "dock-1", "dock_1", "A", "x" * p.MAX_SN):
        assert p.parse_topic(f"thing/product/{sn}/osd") == p.Topic(p.TopicKind.OSD, sn)


@pytest.mark.parametrize(
    "topic",
    [
        f"thing/product/{GW}/status",  # status lives under sys/
        f"sys/product/{GW}/state",
        f"sys/product/{GW}/osd",
        f"sys/product/{GW}/status_reply",
        f"thing/product/{GW}/services",  # our own commands
        f"thing/product/{GW}/state_reply",
        f"thing/product/{GW}/events_reply",
        f"thing/product/{GW}/property/set_reply",
        f"thing/product/{GW}/drc/up",
        f"thing/product/{GW}/",
        f"thing/product/{GW}",
        f"thing/product/{GW}/osd/extra",
        f"/thing/product/{GW}/osd",
        f"thing/product/{GW}/osd/",
        f"thing/device/{GW}/osd",
        f"things/product/{GW}/osd",
        f"THING/product/{GW}/osd",
        f"thing/product/{GW}/OSD",
        f"system/product/{GW}/status",
        f"other/product/{GW}/state",
        "thing/product//osd",
        "thing/product/+/osd",
        "thing/product/#/osd",
        "thing/product/#",
        "sys/product/+/status",
        "thing/product/GW 1/osd",
        "thing/product/ GW/osd",
        "thing/product/GW\t/osd",
        "thing/product/GW.1/osd",
        "thing/product/GW+1/osd",
        "thing/product/GW#1/osd",
        f"thing/product/{'x' * (p.MAX_SN + 1)}/osd",
        "",
        "/",
        "thing",
    ],
)
def test_parse_topic_refuses_other_topics(topic: str) -> None:
    assert p.parse_topic(topic) is None


def test_parse_topic_refuses_a_serial_number_with_a_slash() -> None:
    # "GW/1" makes the topic one level deeper: no longer a device topic.
    assert p.parse_topic("thing/product/GW/1/state") is None
    assert p.parse_topic("sys/product/GW/1/status") is None


@pytest.mark.parametrize(
    "sn", ["", "a/b", "a+b", "a#b", "a b", " ", "x" * (p.MAX_SN + 1), "a.b", "a:b", "a\x00b"]
)
def test_valid_sn_refuses(sn: str) -> None:
    assert not p.valid_sn(sn)


def test_valid_sn_accepts_up_to_max() -> None:
    assert p.valid_sn("1ZNDH1D0010098") and p.valid_sn("x" * p.MAX_SN) and p.valid_sn("a-b_c")


def test_reply_topics() -> None:
    assert p.reply_topic(p.Topic(p.TopicKind.STATUS, GW)) == f"sys/product/{GW}/status_reply"
    assert p.reply_topic(p.Topic(p.TopicKind.STATE, GW)) == f"thing/product/{GW}/state_reply"
    assert p.reply_topic(p.Topic(p.TopicKind.EVENTS, GW)) == f"thing/product/{GW}/events_reply"
    assert p.reply_topic(p.Topic(p.TopicKind.REQUESTS, GW)) == f"thing/product/{GW}/requests_reply"


def test_reply_topic_of_a_parsed_topic_is_the_received_topic_plus_reply() -> None:
    for topic in (f"sys/product/{GW}/status", f"thing/product/{GW}/state", f"thing/product/{GW}/events"):
        where = p.parse_topic(topic)
        assert where is not None
        assert p.reply_topic(where) == topic + "_reply"


def test_services_topic() -> None:
    assert p.services_topic(GW) == f"thing/product/{GW}/services"
    assert p.parse_topic(p.services_topic(GW)) is None  # we never receive our own commands


def test_subscriptions_cover_every_topic_kind() -> None:
    for pattern in p.SUBSCRIPTIONS:
        where = p.parse_topic(pattern.replace("+", GW))
        assert where is not None and where.sn == GW
    kinds = {p.parse_topic(s.replace("+", GW)).kind for s in p.SUBSCRIPTIONS}  # type: ignore[union-attr]
    assert kinds == set(p.TopicKind)


# --- envelopes: the official examples --------------------------------------------------------


def test_parse_envelope_live_capacity_state_message() -> None:
    env = p.parse_envelope(json.dumps(LIVE_CAPACITY_MESSAGE).encode())
    assert env.tid == LIVE_CAPACITY_MESSAGE["tid"] and env.bid == LIVE_CAPACITY_MESSAGE["bid"]
    assert env.timestamp == 1654070968655
    assert env.gateway == GW and env.method == "" and env.need_reply is False
    assert env.data == LIVE_CAPACITY_MESSAGE["data"]


def test_parse_envelope_live_start_push_request() -> None:
    env = p.parse_envelope(json.dumps(START_REQUEST))
    assert env == p.Envelope(
        START_REQUEST["tid"], START_REQUEST["bid"], "live_start_push", START_REQUEST["data"], 1654070968655
    )


def test_parse_envelope_live_start_push_reply() -> None:
    env = p.parse_envelope(json.dumps(START_REPLY).encode())
    assert (env.tid, env.bid, env.method, env.gateway) == (
        START_REQUEST["tid"],
        START_REQUEST["bid"],
        "live_start_push",
        GW,
    )
    assert env.data == {"result": 0, "output": {}}
    assert env.timestamp == 1654070969001


def test_parse_envelope_update_topo() -> None:
    env = p.parse_envelope(message(UPDATE_TOPO))
    assert env.method == "update_topo" and env.data == UPDATE_TOPO["data"] and env.gateway is None


def test_parse_envelope_defaults() -> None:
    env = p.parse_envelope(b'{"tid":"t","bid":"b"}')
    assert env == p.Envelope("t", "b", "", {}, 0, None, False)


def test_parse_envelope_need_reply() -> None:
    assert p.parse_envelope(message(need_reply=1)).need_reply is True
    assert p.parse_envelope(message(need_reply=0)).need_reply is False
    assert p.parse_envelope(message(need_reply=True)).need_reply is True
    assert p.parse_envelope(message(need_reply=False)).need_reply is False


def test_parse_envelope_data_null_is_empty() -> None:
    assert p.parse_envelope(message(data=None)).data == {}
    assert p.parse_envelope(message(data=_DROP)).data == {}


def test_parse_envelope_gateway_null_is_none() -> None:
    assert p.parse_envelope(message(gateway=None)).gateway is None


def test_parse_envelope_unicode() -> None:
    text = json.dumps(
        {"tid": "tïd-✓", "bid": "比", "method": "直播", "data": {"名": "🚁"}}, ensure_ascii=False
    )
    env = p.parse_envelope(text)
    assert (env.tid, env.bid, env.method, env.data) == ("tïd-✓", "比", "直播", {"名": "🚁"})
    assert p.parse_envelope(text.encode()) == env
    # \u escapes are the same message
    assert p.parse_envelope(json.dumps(json.loads(text))) == env


def test_parse_envelope_accepts_exactly_max_bytes() -> None:
    body = message()
    padded = body[:-1] + b" " * (p.MAX_PAYLOAD_BYTES - len(body)) + b"}"
    assert len(padded) == p.MAX_PAYLOAD_BYTES
    assert p.parse_envelope(padded).tid == "t-1"


# --- envelopes: bad input --------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"", b" ", b"not json", b"{", b'{"tid":"t",}', b"\xff\xfe", "\ud800", b"{'tid':'t'}", b"NaN"],
)
def test_parse_envelope_refuses_non_json(payload: bytes | str) -> None:
    envelope_error(payload)


@pytest.mark.parametrize(
    "payload", [b"[]", b'[{"tid":"t","bid":"b"}]', b'"text"', b"1", b"null", b"true", b"1.5"]
)
def test_parse_envelope_refuses_non_objects(payload: bytes) -> None:
    assert "object" in str(envelope_error(payload))


@pytest.mark.parametrize("key", ["tid", "bid"])
@pytest.mark.parametrize("value", [_DROP, "", None, 1, 0, True, [], {}, ["t"]])
def test_parse_envelope_refuses_bad_tid_or_bid(key: str, value: Any) -> None:
    assert key in str(envelope_error(message(**{key: value})))


@pytest.mark.parametrize("value", [1, 0, True, None, [], {}, ["live_start_push"]])
def test_parse_envelope_refuses_non_string_method(value: Any) -> None:
    assert "method" in str(envelope_error(message(method=value)))


@pytest.mark.parametrize("value", [[], [1], "data", "", 0, 1, True, False, 1.5])
def test_parse_envelope_refuses_data_that_is_not_an_object(value: Any) -> None:
    assert "data" in str(envelope_error(message(data=value)))


@pytest.mark.parametrize("value", [True, False, 1654070968655.0, 1.5, "1654070968655", None, [], {}])
def test_parse_envelope_refuses_non_integer_timestamp(value: Any) -> None:
    assert "timestamp" in str(envelope_error(message(timestamp=value)))


@pytest.mark.parametrize(
    "value", ["", "GW/1", "GW+", "#", "GW 1", "x" * (p.MAX_SN + 1), 1, True, [], {"sn": "GW"}]
)
def test_parse_envelope_refuses_a_gateway_that_is_not_a_serial_number(value: Any) -> None:
    assert "gateway" in str(envelope_error(message(gateway=value)))


@pytest.mark.parametrize("value", [2, -1, "1", "0", "true", None, [], {}, [1]])
def test_parse_envelope_refuses_need_reply_other_than_0_or_1(value: Any) -> None:
    assert "need_reply" in str(envelope_error(message(need_reply=value)))


@pytest.mark.parametrize("value", [1.0, 0.0])
def test_parse_envelope_refuses_float_need_reply(value: float) -> None:
    envelope_error(message(need_reply=value))


def test_parse_envelope_refuses_an_oversized_payload_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    big = message(data={"pad": "x" * p.MAX_PAYLOAD_BYTES})  # valid JSON, over the limit
    assert len(big) > p.MAX_PAYLOAD_BYTES

    def refuse(_: object) -> object:
        raise AssertionError("an oversized payload must not be parsed")

    monkeypatch.setattr(p.orjson, "loads", refuse)
    error = envelope_error(big)
    assert str(p.MAX_PAYLOAD_BYTES) in str(error)
    error = envelope_error(b"x" * (p.MAX_PAYLOAD_BYTES + 1))  # not JSON either: size wins
    assert "over" in str(error)


def test_parse_envelope_refuses_an_oversized_ascii_string() -> None:
    envelope_error(message(data={"pad": "x" * p.MAX_PAYLOAD_BYTES}).decode())


def test_parse_envelope_limit_counts_bytes_of_a_str_payload() -> None:
    text = message(data={"pad": "é" * (p.MAX_PAYLOAD_BYTES // 2)}).decode().replace("\\u00e9", "é")
    assert len(text) < p.MAX_PAYLOAD_BYTES < len(text.encode())
    envelope_error(text)


# --- encode, reply_to, new_request -----------------------------------------------------------


def test_encode_round_trip() -> None:
    env = p.Envelope("t-1", "b-1", "live_stop_push", {"video_id": "SN/39-0-7/normal-0"}, 1654070968655, GW)
    raw = p.encode(env)
    assert json.loads(raw) == {
        "tid": "t-1",
        "bid": "b-1",
        "timestamp": 1654070968655,
        "method": "live_stop_push",
        "data": {"video_id": "SN/39-0-7/normal-0"},
        "gateway": GW,
    }
    assert p.parse_envelope(raw) == env


def test_encode_without_gateway_or_timestamp() -> None:
    raw = json.loads(p.encode(p.Envelope("t", "b", "m", {})))
    assert "gateway" not in raw and "need_reply" not in raw
    assert isinstance(raw["timestamp"], int) and raw["timestamp"] > 1_600_000_000_000  # ms, now


def test_encode_unicode() -> None:
    env = p.Envelope("t", "b", "m", {"name": "直播 🚁"}, 5)
    assert p.parse_envelope(p.encode(env)) == env


def test_reply_to_round_trip() -> None:
    request = p.parse_envelope(message(UPDATE_TOPO, gateway=GW, need_reply=1))
    reply = p.reply_to(request)
    assert (reply.tid, reply.bid, reply.method, reply.data) == (
        UPDATE_TOPO["tid"],
        UPDATE_TOPO["bid"],
        "update_topo",
        {"result": 0},
    )
    back = p.parse_envelope(p.encode(reply))
    assert (back.tid, back.bid, back.method, back.data) == (
        reply.tid,
        reply.bid,
        "update_topo",
        {"result": 0},
    )
    assert back.timestamp > 0
    assert p.reply_to(request, 1).data == {"result": 1}


def test_new_request_makes_fresh_uuids() -> None:
    first, second = p.new_request("m", {"a": 1}), p.new_request("m", {"a": 1})
    for env in (first, second):
        assert is_uuid(env.tid) and is_uuid(env.bid) and env.tid != env.bid
        assert env.method == "m" and env.data == {"a": 1} and env.gateway is None
    assert first.tid != second.tid and first.bid != second.bid


def test_new_request_keeps_a_given_bid() -> None:
    env = p.new_request("m", {}, bid="flow-1")
    assert env.bid == "flow-1" and is_uuid(env.tid)


# --- video ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("1ZNDH1D0010098/39-0-7/normal-0", ("1ZNDH1D0010098", "39-0-7", "normal-0")),
        ("1581F5BMD228Q00A82XX/39-0-7/zoom-0", ("1581F5BMD228Q00A82XX", "39-0-7", "zoom-0")),
        ("DOCK/165-0-7/normal-0", ("DOCK", "165-0-7", "normal-0")),
    ],
)
def test_video_id_parse(text: str, parts: tuple[str, str, str]) -> None:
    video_id = p.VideoId.parse(text)
    assert video_id == p.VideoId(*parts)
    assert (video_id.sn, video_id.camera_index, video_id.video_index) == parts
    assert str(video_id) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SN/39-0-7",
        "SN/39-0-7/normal-0/x",
        "SN/39-0-7/normal-0/",
        "/SN/39-0-7/normal-0",
        "/39-0-7/normal-0",
        "SN//normal-0",
        "SN/39-0-7/",
        "//",
        "S+N/39-0-7/normal-0",
        "SN/39+0+7/normal-0",
        "SN/39-0-7/normal+0",
        "SN/39-0-7/#",
        "S N/39-0-7/normal-0",
        "SN/39-0-7/normal 0",
        " SN/39-0-7/normal-0",
        "SN/39-0-7/normal-0 ",
        f"{'x' * (p.MAX_SN + 1)}/39-0-7/normal-0",
        f"SN/{'1' * 33}/normal-0",
    ],
)
def test_video_id_parse_refuses(text: str) -> None:
    with pytest.raises(p.DjiProtocolError):
        p.VideoId.parse(text)


# --- live methods ----------------------------------------------------------------------------

VIDEO = p.VideoId("1581F5BMD228Q00A82XX", "39-0-7", "normal-0")


def test_live_start_push_matches_the_reference_example() -> None:
    env = p.live_start_push(p.UrlType.RTMP, START_REQUEST["data"]["url"], VIDEO, p.VideoQuality.ADAPTIVE)
    assert env.method == "live_start_push"
    assert env.data == START_REQUEST["data"]
    assert set(env.data) == {"url_type", "url", "video_id", "video_quality"}
    assert type(env.data["url_type"]) is int and type(env.data["video_quality"]) is int
    assert type(env.data["video_id"]) is str
    assert is_uuid(env.tid) and is_uuid(env.bid)
    sent = json.loads(p.encode(env))
    assert sent["data"] == START_REQUEST["data"]
    assert set(sent) == {"tid", "bid", "timestamp", "method", "data"}


@pytest.mark.parametrize("url_type", list(p.UrlType))
@pytest.mark.parametrize("quality", list(p.VideoQuality))
def test_live_start_push_url_type_and_quality_are_plain_ints(
    url_type: p.UrlType, quality: p.VideoQuality
) -> None:
    sent = json.loads(p.encode(p.live_start_push(url_type, "u", VIDEO, quality)))
    assert sent["data"]["url_type"] == int(url_type) and sent["data"]["video_quality"] == int(quality)


def test_enum_values_of_the_reference() -> None:
    assert [int(u) for u in p.UrlType] == [0, 1, 2, 3, 4]
    assert (p.UrlType.AGORA, p.UrlType.RTMP, p.UrlType.RTSP, p.UrlType.GB28181, p.UrlType.WHIP) == (
        0,
        1,
        2,
        3,
        4,
    )
    assert (p.VideoQuality.ADAPTIVE, p.VideoQuality.SMOOTH, p.VideoQuality.UHD) == (0, 1, 4)


def test_live_stop_push() -> None:
    env = p.live_stop_push(VIDEO)
    assert env.method == "live_stop_push"
    assert env.data == {"video_id": "1581F5BMD228Q00A82XX/39-0-7/normal-0"}


def test_live_set_quality() -> None:
    env = p.live_set_quality(VIDEO, p.VideoQuality.HD)
    assert env.method == "live_set_quality"
    assert env.data == {"video_id": str(VIDEO), "video_quality": 3}
    assert type(env.data["video_quality"]) is int


@pytest.mark.parametrize("lens", ["normal", "wide", "zoom", "ir", "thermal"])
def test_live_lens_change(lens: str) -> None:
    env = p.live_lens_change(VIDEO, lens)
    assert env.method == "live_lens_change"
    assert env.data == {"video_id": str(VIDEO), "video_type": lens}


@pytest.mark.parametrize("lens", ["", "Zoom", "infrared", "zoom-0", "wide ", "visible"])
def test_live_lens_change_refuses_an_unknown_lens(lens: str) -> None:
    with pytest.raises(p.DjiProtocolError, match="lens"):
        p.live_lens_change(VIDEO, lens)


def test_builders_make_a_new_transaction_each_time() -> None:
    a, b = p.live_stop_push(VIDEO), p.live_stop_push(VIDEO)
    assert a.tid != b.tid and a.bid != b.bid


# --- service replies and result codes --------------------------------------------------------


def test_parse_service_reply_with_output() -> None:
    reply = p.parse_service_reply(p.parse_envelope(json.dumps(START_REPLY)))
    assert reply == p.ServiceReply(START_REQUEST["tid"], START_REQUEST["bid"], "live_start_push", 0, {})


def test_parse_service_reply_with_old_info() -> None:
    url = "rtsp://user:pass@192.168.1.100:8445/live/1"
    env = p.Envelope("t", "b", "live_start_push", {"result": 0, "info": url})
    assert p.parse_service_reply(env).output == url


def test_parse_service_reply_output_wins_over_info() -> None:
    env = p.Envelope("t", "b", "m", {"result": 0, "output": {"a": 1}, "info": "old"})
    assert p.parse_service_reply(env).output == {"a": 1}


def test_parse_service_reply_error_code_and_no_output() -> None:
    reply = p.parse_service_reply(p.Envelope("t", "b", "live_start_push", {"result": 513013}))
    assert reply.result == 513013 and reply.output is None


@pytest.mark.parametrize("data", [{}, {"output": {}}, {"result": None}, {"result": "0"}, {"result": 0.0}])
def test_parse_service_reply_without_integer_result(data: dict[str, Any]) -> None:
    with pytest.raises(p.DjiProtocolError, match="result"):
        p.parse_service_reply(p.Envelope("t", "b", "m", data))


@pytest.mark.parametrize("value", [True, False])
def test_parse_service_reply_refuses_bool_result(value: bool) -> None:
    with pytest.raises(p.DjiProtocolError):
        p.parse_service_reply(p.Envelope("t", "b", "m", {"result": value}))


def test_describe_result_success() -> None:
    assert p.describe_result(0) == "0: success"


def test_describe_result_already_streaming() -> None:
    text = p.describe_result(513003)
    assert text.startswith("513003") and "already" in text and "(device)" in text
    assert 513003 in p.ALREADY_STREAMING


def test_describe_result_protocol_not_supported() -> None:
    text = p.describe_result(513013)
    assert "513013" in text and "not supported" in text


def test_describe_result_pilot_app_not_on_camera_view() -> None:
    text = p.describe_result(613006)
    assert "613006" in text and "pilot app" in text and "camera view" in text
    assert 613006 in p.TRANSIENT


def test_describe_result_undocumented_513001() -> None:
    text = p.describe_result(513001)
    assert "513001" in text and "no aircraft" in text


@pytest.mark.parametrize("number", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 99])
def test_describe_result_every_live_error_is_known(number: int) -> None:
    text = p.describe_result(513000 + number)
    assert str(513000 + number) in text and "no description" not in text


@pytest.mark.parametrize("code", [514001, 319999, 513050, 513000, 1, -1, 999999999])
def test_describe_result_unknown(code: int) -> None:
    text = p.describe_result(code)
    assert text.startswith(f"{code}:") and "no description known" in text


def test_describe_result_unknown_source() -> None:
    assert "unknown source" in p.describe_result(913003)


# --- live_capacity ---------------------------------------------------------------------------


def capacity(**device_changes: Any) -> dict[str, Any]:
    value = json.loads(json.dumps(LIVE_CAPACITY_MESSAGE["data"]["live_capacity"]))
    value["device_list"][0].update(device_changes)
    return value


def test_parse_live_capacity_official_example() -> None:
    cap = p.parse_live_capacity(LIVE_CAPACITY_MESSAGE["data"]["live_capacity"])
    assert [str(v.video_id) for v in cap.videos] == [
        "1ZNDH1D0010054/42-0-0/zoom-0",
        "1ZNDH1D0010054/42-0-0/wide-0",
        "1ZNDH1D0010054/39-0-7/normal-0",
    ]
    assert [v.video_type for v in cap.videos] == ["zoom", "wide", "normal"]
    assert all(v.switchable_types == () for v in cap.videos)
    assert cap.coexist_max == 1
    assert cap == p.parse_live_capacity(capacity())  # equal values compare equal


def test_parse_live_capacity_switchable_types() -> None:
    value = capacity()
    video = value["device_list"][0]["camera_list"][0]["video_list"][0]
    video["switchable_video_types"] = ["zoom", "wide", 3, None, "ir"]
    assert p.parse_live_capacity(value).videos[0].switchable_types == ("zoom", "wide", "ir")


def test_parse_live_capacity_skips_malformed_entries() -> None:
    good_camera = {
        "camera_index": "39-0-7",
        "video_list": [{"video_index": "normal-0", "video_type": "normal"}],
    }
    value = {
        "coexist_video_number_max": 2,
        "device_list": [
            "not a device",
            None,
            7,
            {"camera_list": [good_camera]},  # no sn
            {"sn": "", "camera_list": [good_camera]},
            {"sn": "BAD/SN", "camera_list": [good_camera]},
            {"sn": 12345, "camera_list": [good_camera]},
            {"sn": "NOCAMERAS"},
            {"sn": "CAMERASNOTLIST", "camera_list": {"camera_index": "39-0-7"}},
            {
                "sn": "DRONE1",
                "camera_list": [
                    "camera",
                    {"video_list": good_camera["video_list"]},  # no camera_index
                    {"camera_index": 39, "video_list": good_camera["video_list"]},
                    {"camera_index": "39/0/7", "video_list": good_camera["video_list"]},
                    {"camera_index": "", "video_list": good_camera["video_list"]},
                    {"camera_index": "39 0 7", "video_list": good_camera["video_list"]},
                    {
                        "camera_index": "42-0-0",
                        "video_list": [
                            None,
                            {"video_type": "zoom"},  # no video_index
                            {"video_index": 0, "video_type": "zoom"},
                            {"video_index": "zoom+0", "video_type": "zoom"},
                            {"video_index": "zoom-0", "video_type": 3},
                            {"video_index": "wide-0", "video_type": "wide"},
                            {"video_index": "ir-0"},  # video_type missing: kept, unknown type
                        ],
                    },
                    good_camera,
                ],
            },
        ],
    }
    cap = p.parse_live_capacity(value)
    assert [(str(v.video_id), v.video_type) for v in cap.videos] == [
        ("DRONE1/42-0-0/wide-0", "wide"),
        ("DRONE1/42-0-0/ir-0", ""),
        ("DRONE1/39-0-7/normal-0", "normal"),
    ]
    assert cap.coexist_max == 2


@pytest.mark.parametrize("value", [None, [], "live", 1, [capacity()]])
def test_parse_live_capacity_refuses_a_non_object(value: Any) -> None:
    with pytest.raises(p.DjiProtocolError, match="live_capacity"):
        p.parse_live_capacity(value)


@pytest.mark.parametrize("device_list", [_DROP, None, {}, "x", []])
def test_parse_live_capacity_without_devices_is_empty(device_list: Any) -> None:
    value = {"coexist_video_number_max": 1, "device_list": device_list}
    cap = p.parse_live_capacity({k: v for k, v in value.items() if v is not _DROP})
    assert cap.videos == ()


@pytest.mark.parametrize(("coexist", "expected"), [(3, 3), (-1, 0), ("2", 0), (None, 0), (_DROP, 0)])
def test_parse_live_capacity_coexist_max(coexist: Any, expected: int) -> None:
    value = {"device_list": [], "coexist_video_number_max": coexist}
    cap = p.parse_live_capacity({k: v for k, v in value.items() if v is not _DROP})
    assert cap.coexist_max == expected


@pytest.mark.parametrize("switchable", [1, True, 2.5])
def test_parse_live_capacity_survives_a_non_list_switchable_types(switchable: Any) -> None:
    value = capacity()
    value["device_list"][0]["camera_list"][0]["video_list"][0]["switchable_video_types"] = switchable
    cap = p.parse_live_capacity(value)
    assert [str(v.video_id) for v in cap.videos][1:] == [
        "1ZNDH1D0010054/42-0-0/wide-0",
        "1ZNDH1D0010054/39-0-7/normal-0",
    ]


@pytest.mark.parametrize("switchable", ["zoom", {"wide": 1}])
def test_parse_live_capacity_ignores_non_list_switchable_types(switchable: Any) -> None:
    value = capacity()
    value["device_list"][0]["camera_list"][0]["video_list"][0]["switchable_video_types"] = switchable
    assert p.parse_live_capacity(value).videos[0].switchable_types == ()


# --- live_status -----------------------------------------------------------------------------


def test_parse_live_status() -> None:
    statuses = p.parse_live_status(
        [
            {
                "video_id": "1581F5BMD228Q00A82XX/39-0-7/normal-0",
                "video_type": "normal",
                "video_quality": 2,
                "status": 1,
                "error_status": 0,
            },
            {
                "video_id": "1ZNDH1D0010054/42-0-0/zoom-0",
                "video_type": "zoom",
                "video_quality": 0,
                "status": 0,
                "error_status": 513008,
            },
        ]
    )
    assert statuses == [
        p.LiveStatus(VIDEO, True, "normal", 2, 0),
        p.LiveStatus(p.VideoId(AIRCRAFT, "42-0-0", "zoom-0"), False, "zoom", 0, 513008),
    ]


def test_parse_live_status_defaults_and_odd_values() -> None:
    (status,) = p.parse_live_status(
        [{"video_id": str(VIDEO), "status": "1", "video_quality": "2", "error_status": "513001"}]
    )
    assert status == p.LiveStatus(VIDEO, False, "", 0, 0)
    (status,) = p.parse_live_status([{"video_id": str(VIDEO), "status": True}])
    assert status.streaming is True


def test_parse_live_status_skips_bad_video_ids() -> None:
    good = {"video_id": str(VIDEO), "status": 1}
    statuses = p.parse_live_status(
        [
            {"video_id": "SN/39-0-7", "status": 1},
            {"video_id": "S N/39-0-7/normal-0", "status": 1},
            {"video_id": "SN/39-0-7/normal-0/x", "status": 1},
            {"video_id": "", "status": 1},
            {"video_id": None, "status": 1},
            {"video_id": 12, "status": 1},
            {"video_id": ["SN", "39-0-7", "normal-0"], "status": 1},
            {"status": 1},
            "SN/39-0-7/normal-0",
            None,
            good,
        ]
    )
    assert [s.video_id for s in statuses] == [VIDEO]


def test_parse_live_status_empty() -> None:
    assert p.parse_live_status([]) == []


@pytest.mark.parametrize("value", [None, {}, {"video_id": str(VIDEO)}, "x", 0])
def test_parse_live_status_refuses_a_non_list(value: Any) -> None:
    with pytest.raises(p.DjiProtocolError, match="live_status"):
        p.parse_live_status(value)


# --- update_topo -----------------------------------------------------------------------------


def test_parse_update_topo_with_sub_devices() -> None:
    topo = p.parse_update_topo(GW, p.parse_envelope(message(UPDATE_TOPO)))
    assert topo == p.Topology(GW, "3", 98, (AIRCRAFT,))


def test_parse_update_topo_aircraft_offline() -> None:
    data = {**UPDATE_TOPO["data"], "sub_devices": []}
    topo = p.parse_update_topo(GW, p.parse_envelope(message(UPDATE_TOPO, data=data)))
    assert topo == p.Topology(GW, "3", 98, ())


def test_parse_update_topo_minimal_and_malformed() -> None:
    assert p.parse_update_topo(GW, p.Envelope("t", "b", "update_topo", {})) == p.Topology(GW)
    data = {
        "type": True,
        "sub_devices": [
            None,
            "SN",
            {"sn": "A/B"},
            {"sn": 5},
            {"type": 116},
            {"sn": ""},
            {"sn": "GOOD1"},
            {"sn": "GOOD2"},
        ],
    }
    topo = p.parse_update_topo(GW, p.Envelope("t", "b", "update_topo", data))
    assert topo.type == 0 and topo.sub_devices == ("GOOD1", "GOOD2")
    topo = p.parse_update_topo(GW, p.Envelope("t", "b", "update_topo", {"type": "98", "sub_devices": {}}))
    assert topo.type == 0 and topo.sub_devices == ()


@pytest.mark.parametrize(
    ("value", "quality"),
    [
        (0, p.VideoQuality.ADAPTIVE),
        ("3", p.VideoQuality.HD),
        ("hd", p.VideoQuality.HD),
        ("UHD", p.VideoQuality.UHD),
    ],
)
def test_video_quality_by_number_or_name(value: object, quality: p.VideoQuality) -> None:
    assert p.parse_video_quality(value) is quality


@pytest.mark.parametrize("value", [5, -1, "ultra", True, None, 2.5, "", [1]])
def test_unknown_video_quality_is_refused(value: object) -> None:
    with pytest.raises(p.DjiProtocolError, match="unknown video quality"):
        p.parse_video_quality(value)
