"""gateway.wcs.messages: parsing of every client frame, every bad input, every builder."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.media.rates import VideoRates
from gateway.wcs import messages as m

from .helpers import PLAY_FIELDS, PUBLISH_FIELDS, TINY_SDP, client_frame, decode

MSID = "90e14ad0-fdb2-11e8-bce2-a3f72476fb49"
_DROP: Any = object()  # a key to leave out


def publish_body(**changes: Any) -> dict[str, Any]:
    body = {**PUBLISH_FIELDS, "sdp": TINY_SDP, **changes}
    return {k: v for k, v in body.items() if v is not _DROP}


def play_body(**changes: Any) -> dict[str, Any]:
    body = {**PLAY_FIELDS, "sdp": TINY_SDP, **changes}
    return {k: v for k, v in body.items() if v is not _DROP}


def parse_error(text: str | bytes) -> m.ProtocolError:
    with pytest.raises(m.ProtocolError) as info:
        m.parse_frame(text)
    err = info.value
    assert isinstance(err.info, str) and err.info, "info must be a readable text"
    assert str(err) == err.info
    return err


# --- client -> server: good frames -------------------------------------------------------


def test_connection_as_the_websdk_sends_it() -> None:
    fields = {
        "appKey": "defaultApp",
        "mediaProviders": ["WebRTC", "MSE", "WSPlayer"],
        "keepAlive": False,
        "authToken": None,
        "clientVersion": "2.0",
        "clientOSVersion": "5.0 (X11)",
        "clientBrowserVersion": "Mozilla/5.0",
        "msePacketizationVersion": 2,
        "custom": {},
        "clientInfo": {},
    }
    msg = m.parse_frame(client_frame("connection", fields))
    assert msg == m.Connect(fields)


def test_connection_accepts_bytes() -> None:
    msg = m.parse_frame(client_frame("connection", {"appKey": "defaultApp"}).encode())
    assert msg == m.Connect({"appKey": "defaultApp"})


def test_connection_fields_are_a_copy() -> None:
    msg = m.parse_frame(client_frame("connection", {"appKey": "a"}))
    assert isinstance(msg, m.Connect)
    msg.fields["appKey"] = "b"  # must not matter to anything else
    assert m.parse_frame(client_frame("connection", {"appKey": "a"})) == m.Connect({"appKey": "a"})


@pytest.mark.parametrize("key", ["appKey", "clientVersion", "authToken"])
def test_connection_string_fields_must_be_strings(key: str) -> None:
    err = parse_error(client_frame("connection", {key: 5}))
    assert key in err.info
    assert err.api_method == "connection"


@pytest.mark.parametrize("first", [None, [], "x", 1])
def test_connection_data0_must_be_an_object(first: Any) -> None:
    err = parse_error(client_frame("connection", first))
    assert "data[0]" in err.info
    assert err.media_session_id is None


@pytest.mark.parametrize("data", [[None], [], None])
def test_pong(data: Any) -> None:
    assert m.parse_frame(json.dumps({"message": "pong", "data": data})) == m.Pong()


def test_pong_without_data() -> None:
    assert m.parse_frame('{"message":"pong"}') == m.Pong()


def test_ping() -> None:
    assert m.parse_frame(client_frame("ping", None)) == m.Ping()


def test_publish_stream_from_the_documentation() -> None:
    body = publish_body()
    msg = m.parse_frame(client_frame("publishStream", body))
    assert isinstance(msg, m.PublishStream)
    assert msg.media_session_id == MSID
    assert msg.name == "test"
    assert msg.sdp == TINY_SDP
    assert (msg.has_audio, msg.has_video, msg.record) == (True, True, False)
    assert msg.fields == body


def test_publish_stream_flags() -> None:
    body = publish_body(hasAudio=False, hasVideo=True, record=True)
    msg = m.parse_frame(client_frame("publishStream", body))
    assert isinstance(msg, m.PublishStream)
    assert (msg.has_audio, msg.has_video, msg.record) == (False, True, True)


def test_publish_stream_flags_default_when_absent_or_null() -> None:
    body = publish_body(hasAudio=_DROP, hasVideo=None, record=_DROP)
    msg = m.parse_frame(client_frame("publishStream", body))
    assert isinstance(msg, m.PublishStream)
    assert (msg.has_audio, msg.has_video, msg.record) == (True, True, False)


def test_play_stream_from_the_documentation() -> None:
    body = play_body()
    msg = m.parse_frame(client_frame("playStream", body))
    assert isinstance(msg, m.PlayStream)
    assert msg.media_session_id == PLAY_FIELDS["mediaSessionId"]
    assert msg.name == "test"
    assert msg.sdp == TINY_SDP
    assert (msg.has_audio, msg.has_video) == (True, True)
    assert msg.fields["quality"] == 0


def test_play_stream_without_audio() -> None:
    msg = m.parse_frame(client_frame("playStream", play_body(hasAudio=False)))
    assert isinstance(msg, m.PlayStream)
    assert msg.has_audio is False


def test_unpublish_stream() -> None:
    body = {
        "mediaSessionId": "1d91ae20-fdb3-11e8-bddf-9b115426f01b",
        "name": "test",
        "published": True,
        "hasVideo": True,
        "hasAudio": True,
        "status": "PUBLISHING",
        "record": False,
    }
    msg = m.parse_frame(client_frame("unPublishStream", body))
    assert msg == m.UnpublishStream("1d91ae20-fdb3-11e8-bddf-9b115426f01b", "test")


def test_stop_stream() -> None:
    body = {**PLAY_FIELDS, "status": "PLAYING"}
    msg = m.parse_frame(client_frame("stopStream", body))
    assert msg == m.StopStream(PLAY_FIELDS["mediaSessionId"], "test")


@pytest.mark.parametrize("message", ["stopStream", "unPublishStream"])
@pytest.mark.parametrize("name", [_DROP, None, 5, ""])
def test_stop_requests_tolerate_a_missing_name(message: str, name: Any) -> None:
    body = {"mediaSessionId": MSID, "name": name}
    body = {k: v for k, v in body.items() if v is not _DROP}
    msg = m.parse_frame(client_frame(message, body))
    assert isinstance(msg, m.StopStream | m.UnpublishStream)
    assert msg.media_session_id == MSID
    assert msg.name == ""


@pytest.mark.parametrize("message", ["stopStream", "unPublishStream"])
def test_stop_requests_cap_a_long_name(message: str) -> None:
    msg = m.parse_frame(client_frame(message, {"mediaSessionId": MSID, "name": "n" * 5000}))
    assert isinstance(msg, m.StopStream | m.UnpublishStream)
    assert len(msg.name) == m.MAX_STREAM_NAME


def test_available_stream() -> None:
    msg = m.parse_frame(client_frame("availableStream", {"mediaSessionId": MSID, "name": "cam/0"}))
    assert msg == m.AvailableStream(MSID, "cam/0")


@pytest.mark.parametrize("payload", [None, {"a": 1}, "text", [1, 2]])
def test_send_stream_event(payload: Any) -> None:
    body = {"mediaSessionId": MSID, "type": "audioMuted", "payload": payload}
    msg = m.parse_frame(client_frame("sendStreamEvent", body))
    assert msg == m.SendStreamEvent(MSID, "audioMuted", payload)


@pytest.mark.parametrize("event_type", [_DROP, None, "", 5, "t" * 65])
def test_send_stream_event_type_must_be_a_short_string(event_type: Any) -> None:
    body = {"mediaSessionId": MSID, "type": event_type, "payload": None}
    body = {k: v for k, v in body.items() if v is not _DROP}
    err = parse_error(client_frame("sendStreamEvent", body))
    assert "type" in err.info
    assert err.media_session_id == MSID
    assert err.api_method == "sendStreamEvent"


@pytest.mark.parametrize("name", sorted(m.IGNORED_MESSAGES))
def test_ignored_messages(name: str) -> None:
    assert m.parse_frame(client_frame(name, {"logs": "..."})) == m.Ignored(name)


def test_ignored_message_without_data() -> None:
    assert m.parse_frame('{"message":"pushLogs"}') == m.Ignored("pushLogs")


@pytest.mark.parametrize(
    "name",
    ["pushLogs", "submitBugReport", "sessionDebug", "webRTCMetricsClientDescription", "webRTCMetricsBatch"],
)
def test_debug_and_metrics_messages_of_the_reference_are_ignored(name: str) -> None:
    assert name in m.IGNORED_MESSAGES


# --- client -> server: bad frames ---------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "not json", "{", '{"message": "ping",}', "\x00", b"\xff\xfe\x00", '"\\ud800"', "[" * 5000],
)
def test_non_json_text(text: str | bytes) -> None:
    err = parse_error(text)
    assert "not JSON" in err.info
    assert err.media_session_id is None


@pytest.mark.parametrize("text", ["null", "1", '"connection"', "[]", '[{"message": "ping"}]', "true"])
def test_json_that_is_not_an_object(text: str) -> None:
    err = parse_error(text)
    assert "object" in err.info


@pytest.mark.parametrize(
    "frame", [{}, {"data": [None]}, {"message": None}, {"message": ""}, {"message": 5}, {"message": ["ping"]}]
)
def test_json_without_message_name(frame: dict[str, Any]) -> None:
    err = parse_error(json.dumps(frame))
    assert "message" in err.info


def test_unknown_message_name() -> None:
    err = parse_error(client_frame("launchMissiles", {}))
    assert "launchMissiles" in err.info
    assert "Unknown" in err.info


def test_unknown_message_name_is_truncated_in_info() -> None:
    err = parse_error(client_frame("x" * 10_000, {}))
    assert len(err.info) < 200
    assert len(err.api_method) <= 64


@pytest.mark.parametrize("data", [{}, "x", 1, True, {"mediaSessionId": MSID}])
@pytest.mark.parametrize("message", ["connection", "publishStream", "playStream", "stopStream", "pong"])
def test_data_not_an_array(message: str, data: Any) -> None:
    err = parse_error(json.dumps({"message": message, "data": data}))
    assert "'data' must be an array" in err.info
    assert err.api_method == message


@pytest.mark.parametrize("first", [None, "x", 1, [], [{"mediaSessionId": MSID}], True])
@pytest.mark.parametrize(
    "message",
    ["publishStream", "playStream", "unPublishStream", "stopStream", "availableStream", "sendStreamEvent"],
)
def test_data0_not_an_object(message: str, first: Any) -> None:
    err = parse_error(client_frame(message, first))
    assert "data[0] must be an object" in err.info
    assert err.api_method == message
    assert err.media_session_id is None


@pytest.mark.parametrize("message", ["publishStream", "playStream"])
def test_empty_data_array(message: str) -> None:
    err = parse_error(json.dumps({"message": message, "data": []}))
    assert "data[0]" in err.info


@pytest.mark.parametrize("msid", [_DROP, None, "", 5, 1.5, True, ["x"], {"id": "x"}])
@pytest.mark.parametrize(
    "message",
    ["publishStream", "playStream", "unPublishStream", "stopStream", "availableStream", "sendStreamEvent"],
)
def test_missing_or_wrongly_typed_media_session_id(message: str, msid: Any) -> None:
    body = {**publish_body(), "type": "data", "mediaSessionId": msid}
    body = {k: v for k, v in body.items() if v is not _DROP}
    err = parse_error(client_frame(message, body))
    assert "mediaSessionId" in err.info
    assert err.api_method == message
    assert err.media_session_id is None


@pytest.mark.parametrize("msid", ["a" * 129, "bad\nid", "bad\x00id"])
def test_malformed_media_session_id(msid: str) -> None:
    err = parse_error(client_frame("publishStream", publish_body(mediaSessionId=msid)))
    assert "mediaSessionId" in err.info
    assert err.media_session_id is None


def test_media_session_id_of_128_characters_is_accepted() -> None:
    msg = m.parse_frame(client_frame("playStream", play_body(mediaSessionId="a" * 128)))
    assert isinstance(msg, m.PlayStream)
    assert msg.media_session_id == "a" * 128


@pytest.mark.parametrize("sdp", [_DROP, None, "", "   \r\n", 5, ["v=0"], {"type": "offer"}])
@pytest.mark.parametrize("message", ["publishStream", "playStream"])
def test_missing_or_non_string_sdp(message: str, sdp: Any) -> None:
    err = parse_error(client_frame(message, publish_body(sdp=sdp)))
    assert "sdp" in err.info
    assert err.media_session_id == MSID
    assert err.api_method == message


@pytest.mark.parametrize("key", ["hasAudio", "hasVideo"])
@pytest.mark.parametrize("value", ["true", 1, 0, "false", [], {}])
@pytest.mark.parametrize("message", ["publishStream", "playStream"])
def test_media_flags_must_be_booleans(message: str, key: str, value: Any) -> None:
    err = parse_error(client_frame(message, publish_body(**{key: value})))
    assert key in err.info
    assert err.media_session_id == MSID


@pytest.mark.parametrize("value", ["yes", 1])
def test_record_flag_must_be_a_boolean(value: Any) -> None:
    err = parse_error(client_frame("publishStream", publish_body(record=value)))
    assert "record" in err.info
    assert err.media_session_id == MSID


NAME_ERRORS = [
    pytest.param(_DROP, "string", id="missing"),
    pytest.param(None, "string", id="null"),
    pytest.param(5, "string", id="number"),
    pytest.param(["a"], "string", id="array"),
    pytest.param("", "empty", id="empty"),
    pytest.param("n" * 257, "256", id="257-chars"),
    pytest.param("a\nb", "control", id="newline"),
    pytest.param("a\x00b", "control", id="nul"),
    pytest.param("a\x7fb", "control", id="del"),
    pytest.param("a\tb", "control", id="tab"),
    pytest.param("a\rb", "control", id="cr"),
    pytest.param("a\x1bb", "control", id="esc"),
    pytest.param("a\x85b", "control", id="c1-nel"),
    pytest.param("a\x9fb", "control", id="c1-last"),
]


@pytest.mark.parametrize(("name", "expected"), NAME_ERRORS)
@pytest.mark.parametrize("message", ["publishStream", "playStream", "availableStream"])
def test_bad_stream_names(message: str, name: Any, expected: str) -> None:
    err = parse_error(client_frame(message, publish_body(name=name)))
    assert expected in err.info
    assert "name" in err.info.lower()
    assert err.media_session_id == MSID, "the error must name the media session so it can FAIL it"
    assert err.api_method == message


GOOD_NAMES = [
    pytest.param("n" * 256, id="256-chars"),
    pytest.param("камера-1", id="cyrillic"),
    pytest.param("无人机/0/0", id="cjk"),
    pytest.param("drone 🚁", id="emoji"),
    pytest.param("🚁" * 256, id="256-emoji"),
    pytest.param("1581F5BLD228800GMW03/165-0-7/normal-0", id="dji-video-id"),
    pytest.param("rtsp://cam.example/stream?x=1&y=2", id="url"),
    pytest.param(" ", id="space"),
    pytest.param("a\xa0b", id="nbsp"),
    pytest.param("x", id="one-char"),
]


@pytest.mark.parametrize("name", GOOD_NAMES)
@pytest.mark.parametrize("message", ["publishStream", "playStream", "availableStream"])
def test_good_stream_names(message: str, name: str) -> None:
    msg = m.parse_frame(client_frame(message, publish_body(name=name)))
    assert isinstance(msg, m.PublishStream | m.PlayStream | m.AvailableStream)
    assert msg.name == name


def test_good_stream_name_survives_utf8_bytes() -> None:
    text = client_frame("playStream", play_body(name="камера-1")).encode()
    msg = m.parse_frame(text)
    assert isinstance(msg, m.PlayStream)
    assert msg.name == "камера-1"


def test_validate_stream_name_direct() -> None:
    assert m.validate_stream_name("a" * 256) == "a" * 256
    with pytest.raises(ValueError, match="longer than 256"):
        m.validate_stream_name("a" * 257)
    with pytest.raises(ValueError, match="string"):
        m.validate_stream_name(b"bytes")


def test_name_is_checked_before_sdp() -> None:
    # Both wrong: the error is the name's, and still names the media session.
    err = parse_error(client_frame("publishStream", publish_body(name="", sdp=None)))
    assert "empty" in err.info
    assert err.media_session_id == MSID


# --- server -> client: builders -----------------------------------------------------------


def test_encode_always_has_a_data_array() -> None:
    assert decode(m.encode("x")) == {"message": "x", "data": [None]}
    assert decode(m.encode("x", 1, "a")) == {"message": "x", "data": [1, "a"]}


def test_ping_and_pong() -> None:
    assert decode(m.ping()) == {"message": "ping", "data": [None]}
    assert decode(m.pong()) == {"message": "pong", "data": [None]}


def test_get_version() -> None:
    assert decode(m.get_version("5.2.1")) == {"message": "getVersion", "data": ["5.2.1"]}


def test_set_remote_sdp_is_positional() -> None:
    sdp = "v=0\r\no=- 0 1 IN IP4 127.0.0.1\r\n"
    assert decode(m.set_remote_sdp(MSID, sdp)) == {"message": "setRemoteSDP", "data": [MSID, sdp, True]}


CLIENT_ECHO = {
    "appKey": "defaultApp",
    "mediaProviders": ["WebRTC", "MSE", "WSPlayer"],
    "clientVersion": "0.5.28",
    "clientOSVersion": "5.0 (Windows NT 6.1; Win64; x64)",
    "clientBrowserVersion": "Mozilla/5.0",
    "keepAlive": False,
    "custom": {"k": "v"},
}


def test_get_user_data() -> None:
    frame = decode(m.get_user_data(CLIENT_ECHO, "/5.129.23.83:50066/188.40.244.249:8443"))
    assert frame["message"] == "getUserData"
    assert len(frame["data"]) == 1
    body = frame["data"][0]
    assert body["status"] == "ESTABLISHED"
    assert body["authToken"] == "/5.129.23.83:50066/188.40.244.249:8443"
    for key, value in CLIENT_ECHO.items():
        assert body[key] == value, key
    assert body["useWsTunnel"] is False
    assert body["useWsTunnelPacketization2"] is False
    assert body["useBase64BinaryEncoding"] is False
    assert "webRTCMetricsServerDescription" not in body


def test_get_user_data_overrides_client_token_and_status() -> None:
    echo = {**CLIENT_ECHO, "authToken": "client-token", "status": "FAILED", "useWsTunnel": True}
    body = decode(m.get_user_data(echo, "server-token"))["data"][0]
    assert body["authToken"] == "server-token"
    assert body["status"] == "ESTABLISHED"
    assert body["useWsTunnel"] is False


def test_get_user_data_never_echoes_a_metrics_description() -> None:
    echo = {**CLIENT_ECHO, "webRTCMetricsServerDescription": {"url": "x"}}
    body = decode(m.get_user_data(echo, "t"))["data"][0]
    assert "webRTCMetricsServerDescription" not in body


def test_get_user_data_does_not_change_the_echo() -> None:
    echo = {**CLIENT_ECHO, "webRTCMetricsServerDescription": {}, "status": "x"}
    before = dict(echo)
    m.get_user_data(echo, "t")
    assert echo == before


@pytest.mark.parametrize(("available", "status"), [(True, "true"), (False, "false")])
def test_available_stream_status_is_a_string(available: bool, status: str) -> None:
    frame = decode(m.available_stream(MSID, available, "Restricted access"))
    assert frame["message"] == "availableStream"
    assert frame["data"] == [{"id": MSID, "status": status, "info": "Restricted access"}]
    assert isinstance(frame["data"][0]["status"], str)


RATES = VideoRates(bit_rate=704856, fps=31, nack=2, pli=13, lost_packets=4, width=640, height=360)


@pytest.mark.parametrize(("inbound", "name"), [(True, "inboundVideoRate"), (False, "outboundVideoRate")])
def test_video_rate(inbound: bool, name: str) -> None:
    frame = decode(m.video_rate(inbound, MSID, RATES))
    assert frame["message"] == name
    assert frame["data"] == [
        {
            "mediaSessionId": MSID,
            "videoRate": 704856,
            "fps": 31,
            "nack": 2,
            "pli": 13,
            "lostPackets": 4,
            "width": 640,
            "height": 360,
        }
    ]


def test_notify_video_format() -> None:
    frame = decode(m.video_format(MSID, 320, 240))
    assert frame == {
        "message": "notifyVideoFormat",
        "data": [
            {
                "mediaSessionId": MSID,
                "status": "RESIZE",
                "streamerVideoWidth": 320,
                "streamerVideoHeight": 240,
            }
        ],
    }


def test_notify_stream_event() -> None:
    payload = {"streamerVideoWidth": 640, "streamerVideoHeight": 360}
    frame = decode(m.stream_event(MSID, "resize", payload))
    assert frame == {
        "message": "notifyStreamEvent",
        "data": [{"mediaSessionId": MSID, "type": "resize", "payload": payload}],
    }


def test_notify_stream_event_with_null_payload() -> None:
    frame = decode(m.stream_event(MSID, "audioMuted", None))
    assert frame["data"][0]["payload"] is None


def test_notify_audio_codec_is_positional() -> None:
    frame = decode(m.audio_codec(PLAY_FIELDS["mediaSessionId"], "opus"))
    assert frame == {
        "message": "notifyAudioCodec",
        "data": [PLAY_FIELDS["mediaSessionId"], {"name": "opus"}],
    }


def test_fail() -> None:
    frame = decode(m.fail("publishStream", "Something went wrong", MSID))
    assert frame == {
        "message": "fail",
        "data": [
            {"apiMethod": "publishStream", "id": MSID, "status": "FAILED", "info": "Something went wrong"}
        ],
    }


def test_fail_without_method_or_id() -> None:
    body = decode(m.fail("", "Binary frames are not supported"))["data"][0]
    assert body["apiMethod"] == "StreamStatusEvent"
    assert body["id"] is None
    assert body["info"] == "Binary frames are not supported"


# The keys and the shape of a notifyStreamStatusEvent as the WCS documentation shows them.
SEED_STATUS_KEYS = {
    "mediaSessionId",
    "name",
    "published",
    "hasVideo",
    "hasAudio",
    "status",
    "audioCodec",
    "videoCodec",
    "record",
    "width",
    "height",
    "bitrate",
    "minBitrate",
    "maxBitrate",
    "quality",
    "createDate",
    "streamInfo",
    "mediaProvider",
}
SEED_STREAM_INFO_KEYS = {
    "nodeId",
    "appKey",
    "sessionId",
    "mediaSessionId",
    "name",
    "samplingTime",
    "recordTimestamp",
    "recordStarted",
}


def test_stream_status_publishing_like_the_documentation() -> None:
    desc = m.StreamDescription(
        MSID, "test", True, "PUBLISHING", audio_codec="opus", video_codec="H264", created_ms=1544579813186
    )
    frame = decode(m.stream_status(desc))
    assert frame["message"] == "notifyStreamStatusEvent"
    assert len(frame["data"]) == 1
    body = frame["data"][0]
    assert set(body) == SEED_STATUS_KEYS
    assert body == {
        "mediaSessionId": MSID,
        "name": "test",
        "published": True,
        "hasVideo": True,
        "hasAudio": True,
        "status": "PUBLISHING",
        "audioCodec": "opus",
        "videoCodec": "H264",
        "record": False,
        "width": 0,
        "height": 0,
        "bitrate": 0,
        "minBitrate": 0,
        "maxBitrate": 0,
        "quality": 0,
        "createDate": 1544579813186,
        "streamInfo": {
            "nodeId": None,
            "appKey": None,
            "sessionId": None,
            "mediaSessionId": MSID,
            "name": "test",
            "samplingTime": None,
            "recordTimestamp": None,
            "recordStarted": False,
        },
        "mediaProvider": "WebRTC",
    }


def test_stream_status_stopped_with_info() -> None:
    desc = m.StreamDescription(
        "22588500-fdb3-11e8-bddf-9b115426f01b",
        "test",
        False,
        "STOPPED",
        info="Stopped by user",
        audio_codec="opus",
        video_codec="H264",
        width=320,
        height=240,
    )
    body = decode(m.stream_status(desc))["data"][0]
    assert set(body) == SEED_STATUS_KEYS | {"info"}
    assert set(body["streamInfo"]) == SEED_STREAM_INFO_KEYS
    assert body["info"] == "Stopped by user"
    assert (body["published"], body["status"], body["width"], body["height"]) == (False, "STOPPED", 320, 240)
    assert body["streamInfo"]["mediaSessionId"] == body["mediaSessionId"]


def test_stream_status_types() -> None:
    desc = m.StreamDescription(MSID, "test", False, "FAILED", info="Stream not found", has_audio=False)
    body = decode(m.stream_status(desc))["data"][0]
    assert body["hasAudio"] is False and body["hasVideo"] is True
    assert isinstance(body["createDate"], int) and body["createDate"] > 1_600_000_000_000
    for key in ("width", "height", "bitrate", "minBitrate", "maxBitrate", "quality"):
        assert isinstance(body[key], int), key
    assert body["audioCodec"] is None and body["videoCodec"] is None


def test_builders_escape_unicode_and_control_characters() -> None:
    frame = decode(m.stream_event(MSID, "data", {"text": 'квадро "copter"\n\x00'}))
    assert frame["data"][0]["payload"]["text"] == 'квадро "copter"\n\x00'


@pytest.mark.parametrize("message", ["publishStream", "playStream"])
@pytest.mark.parametrize(
    ("value", "expected"), [(_DROP, "UDP"), (None, "UDP"), ("UDP", "UDP"), ("tcp", "TCP")]
)
def test_media_transport(message: str, value: Any, expected: str) -> None:
    body = publish_body(transport=value) if message == "publishStream" else play_body(transport=value)
    msg = m.parse_frame(client_frame(message, body))
    assert isinstance(msg, m.PublishStream | m.PlayStream)
    assert msg.transport == expected


@pytest.mark.parametrize("message", ["publishStream", "playStream"])
@pytest.mark.parametrize("value", ["SCTP", "", 1, True, ["TCP"]])
def test_media_transport_must_be_udp_or_tcp(message: str, value: Any) -> None:
    body = publish_body(transport=value) if message == "publishStream" else play_body(transport=value)
    with pytest.raises(m.ProtocolError, match='\'transport\' must be "UDP" or "TCP"'):
        m.parse_frame(client_frame(message, body))
