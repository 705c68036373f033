"""gateway.wcs.session: the per-connection state machine, fed plain frames and media events."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gateway.media.rates import VideoRates
from gateway.wcs.session import (
    INFO_PUBLISHER_STOPPED,
    TERMINAL,
    Close,
    ControlStream,
    Output,
    QueryAvailable,
    RelayStreamEvent,
    Send,
    Session,
    SessionLimits,
    StartPlay,
    StartPublish,
    State,
    StopMedia,
    TakeSnapshot,
)

from .helpers import PLAY_FIELDS, PUBLISH_FIELDS, TINY_SDP, client_frame, decode

PUB = "pub-1"
PLAYER = "play-1"
RATES = VideoRates(bit_rate=500_000, fps=30, nack=1, pli=2, lost_packets=3, width=640, height=360)


# --- helpers ------------------------------------------------------------------------------


def new_session(**limits: int) -> Session:
    return Session(
        session_id="s1",
        auth_token="/1.2.3.4:5000/5.6.7.8:8080",
        version="test-1",
        limits=SessionLimits(**limits),
    )


def established(**limits: int) -> Session:
    session = new_session(**limits)
    session.receive_text(client_frame("connection", {"appKey": "defaultApp", "clientVersion": "2.0"}))
    assert session.state is State.ESTABLISHED
    return session


def frames(outputs: list[Output]) -> list[dict[str, Any]]:
    """Every frame sent, decoded and checked for the framing."""
    return [decode(out.text) for out in outputs if isinstance(out, Send)]


def names(outputs: list[Output]) -> list[str]:
    return [frame["message"] for frame in frames(outputs)]


def statuses(outputs: list[Output]) -> list[dict[str, Any]]:
    """The bodies of every notifyStreamStatusEvent sent."""
    return [f["data"][0] for f in frames(outputs) if f["message"] == "notifyStreamStatusEvent"]


def only_status(outputs: list[Output]) -> dict[str, Any]:
    found = statuses(outputs)
    assert len(found) == 1, outputs
    return found[0]


def fails(outputs: list[Output]) -> list[dict[str, Any]]:
    return [f["data"][0] for f in frames(outputs) if f["message"] == "fail"]


def stops(outputs: list[Output]) -> list[str]:
    return [out.media_session_id for out in outputs if isinstance(out, StopMedia)]


def publish(session: Session, msid: str = PUB, name: str = "cam", **extra: Any) -> list[Output]:
    body = {**PUBLISH_FIELDS, "mediaSessionId": msid, "name": name, "sdp": TINY_SDP, **extra}
    return session.receive_text(client_frame("publishStream", body))


def play(session: Session, msid: str = PLAYER, name: str = "cam", **extra: Any) -> list[Output]:
    body = {**PLAY_FIELDS, "mediaSessionId": msid, "name": name, "sdp": TINY_SDP, **extra}
    return session.receive_text(client_frame("playStream", body))


def unpublish(session: Session, msid: str = PUB, name: str = "cam") -> list[Output]:
    body = {"mediaSessionId": msid, "name": name, "published": True, "status": "PUBLISHING"}
    return session.receive_text(client_frame("unPublishStream", body))


def stop(session: Session, msid: str = PLAYER, name: str = "cam") -> list[Output]:
    body = {"mediaSessionId": msid, "name": name, "published": False, "status": "PLAYING"}
    return session.receive_text(client_frame("stopStream", body))


def publishing(session: Session, msid: str = PUB, name: str = "cam") -> None:
    assert isinstance(publish(session, msid, name)[0], StartPublish)
    session.media_answer(msid, "v=0\r\n")
    assert (
        only_status(session.media_started(msid, audio_codec="opus", video_codec="H264"))["status"]
        == "PUBLISHING"
    )


def playing(session: Session, msid: str = PLAYER, name: str = "cam") -> None:
    assert isinstance(play(session, msid, name)[0], StartPlay)
    session.media_answer(msid, "v=0\r\n", "opus")
    assert (
        only_status(session.media_started(msid, audio_codec="opus", video_codec="H264"))["status"]
        == "PLAYING"
    )


# --- connection -----------------------------------------------------------------------------


def test_connection_gets_user_data_then_version() -> None:
    session = new_session()
    out = session.receive_text(client_frame("connection", {"appKey": "defaultApp", "clientVersion": "2.0"}))
    assert all(isinstance(o, Send) for o in out)
    sent = frames(out)
    assert [f["message"] for f in sent] == ["getUserData", "getVersion"]
    user = sent[0]["data"][0]
    assert user["status"] == "ESTABLISHED"
    assert user["authToken"] == "/1.2.3.4:5000/5.6.7.8:8080"
    assert user["appKey"] == "defaultApp" and user["clientVersion"] == "2.0"
    assert "webRTCMetricsServerDescription" not in user
    assert sent[1]["data"] == ["test-1"]
    assert session.state is State.ESTABLISHED
    assert session.client == {"appKey": "defaultApp", "clientVersion": "2.0"}


def test_second_connection_fails_and_keeps_the_session() -> None:
    session = established()
    out = session.receive_text(client_frame("connection", {"appKey": "other"}))
    assert names(out) == ["fail"]
    assert "already" in fails(out)[0]["info"]
    assert session.state is State.ESTABLISHED
    assert session.client["appKey"] == "defaultApp"


@pytest.mark.parametrize(
    ("message", "body"),
    [
        ("publishStream", {**PUBLISH_FIELDS, "sdp": TINY_SDP}),
        ("playStream", {**PLAY_FIELDS, "sdp": TINY_SDP}),
        ("unPublishStream", {"mediaSessionId": "x", "name": "cam"}),
        ("stopStream", {"mediaSessionId": "x", "name": "cam"}),
        ("availableStream", {"mediaSessionId": "x", "name": "cam"}),
        ("sendStreamEvent", {"mediaSessionId": "x", "type": "audioMuted"}),
    ],
)
def test_requests_before_connection_fail(message: str, body: dict[str, Any]) -> None:
    session = new_session()
    out = session.receive_text(client_frame(message, body))
    assert names(out) == ["fail"], out
    assert "connection" in fails(out)[0]["info"]
    assert not any(isinstance(o, StartPublish | StartPlay | StopMedia | QueryAvailable) for o in out)
    assert session.media == {}
    assert session.state is State.CONNECTED


@pytest.mark.parametrize(
    ("message", "body"),
    [
        ("publishStream", {**PUBLISH_FIELDS, "sdp": TINY_SDP}),
        ("playStream", {**PLAY_FIELDS, "sdp": TINY_SDP}),
    ],
)
def test_request_before_connection_names_its_media_session(message: str, body: dict[str, Any]) -> None:
    session = new_session()
    failed = fails(session.receive_text(client_frame(message, body)))[0]
    assert failed["id"] == body["mediaSessionId"]
    assert failed["apiMethod"] == message


def test_ping_pong_and_ignored_before_connection() -> None:
    session = new_session()
    assert names(session.receive_text(client_frame("ping", None))) == ["pong"]
    assert session.receive_text(client_frame("pong", None)) == []
    assert session.receive_text(client_frame("pushLogs", {"logs": "x"})) == []


def test_client_ping_gets_pong() -> None:
    session = established()
    out = session.receive_text(client_frame("ping", None))
    assert frames(out) == [{"message": "pong", "data": [None]}]


@pytest.mark.parametrize("name", ["pushLogs", "submitBugReport", "webRTCMetricsBatch", "sendData"])
def test_ignored_messages_yield_nothing(name: str) -> None:
    assert established().receive_text(client_frame(name, {"x": 1})) == []


# --- bad frames ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", "{}", '{"message": "launch"}', '{"message": "publishStream", "data": {}}'],
)
def test_bad_frames_get_fail_with_readable_info(text: str) -> None:
    session = established()
    out = session.receive_text(text)
    assert names(out) == ["fail"]
    info = fails(out)[0]["info"]
    assert isinstance(info, str) and len(info) > 5
    assert session.state is State.ESTABLISHED


def test_binary_frame_gets_fail() -> None:
    session = established()
    out = session.receive_binary()
    assert names(out) == ["fail"]
    assert "Binary" in fails(out)[0]["info"]
    assert session.state is State.ESTABLISHED


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"name": "n" * 257}, "256"),
        ({"name": ""}, "empty"),
        ({"name": "a\nb"}, "control"),
        ({"name": None}, "string"),
        ({"sdp": ""}, "sdp"),
        ({"hasAudio": "yes"}, "hasAudio"),
    ],
)
@pytest.mark.parametrize("message", ["publishStream", "playStream"])
def test_bad_publish_or_play_fails_that_media_session(
    message: str, changes: dict[str, Any], words: str
) -> None:
    session = established()
    body = {**(PUBLISH_FIELDS if message == "publishStream" else PLAY_FIELDS), "sdp": TINY_SDP, **changes}
    body["mediaSessionId"] = "bad-1"
    out = session.receive_text(client_frame(message, body))
    status = only_status(out)
    assert status["mediaSessionId"] == "bad-1"
    assert status["status"] == "FAILED"
    assert words in status["info"]
    assert status["published"] is (message == "publishStream")
    assert not any(isinstance(o, StartPublish | StartPlay | StopMedia) for o in out)
    assert session.media == {}


def test_bad_publish_without_media_session_id_gets_fail() -> None:
    session = established()
    body = {**PUBLISH_FIELDS, "sdp": TINY_SDP}
    del body["mediaSessionId"]
    out = session.receive_text(client_frame("publishStream", body))
    assert names(out) == ["fail"]
    assert "mediaSessionId" in fails(out)[0]["info"]


def test_bad_publish_reusing_a_live_id_does_not_fail_the_live_session() -> None:
    session = established()
    publishing(session)
    out = publish(session, PUB, name="")
    assert statuses(out) == []
    assert names(out) == ["fail"]
    assert fails(out)[0]["id"] == PUB
    assert PUB in session.media


def test_bad_stream_event_gets_fail_naming_the_id() -> None:
    session = established()
    publishing(session)
    out = session.receive_text(client_frame("sendStreamEvent", {"mediaSessionId": PUB, "type": ""}))
    assert names(out) == ["fail"]
    assert fails(out)[0]["id"] == PUB


# --- publish ------------------------------------------------------------------------------


def test_publish_stream_starts_publishing() -> None:
    session = established()
    out = publish(session, PUB, "cam", hasAudio=False, record=True)
    assert len(out) == 1 and isinstance(out[0], StartPublish)
    request = out[0].request
    assert request.media_session_id == PUB
    assert request.name == "cam"
    assert request.sdp == TINY_SDP
    assert request.has_audio is False
    assert request.record is True
    assert session.is_publisher(PUB)


def test_publisher_answer_is_set_remote_sdp_only() -> None:
    session = established()
    publish(session)
    out = session.media_answer(PUB, "v=0\r\nanswer\r\n", "opus")
    assert frames(out) == [{"message": "setRemoteSDP", "data": [PUB, "v=0\r\nanswer\r\n", True]}]


def test_publisher_started_once() -> None:
    session = established()
    publish(session)
    session.media_answer(PUB, "v=0\r\n")
    status = only_status(
        session.media_started(PUB, audio_codec="opus", video_codec="H264", width=640, height=360)
    )
    assert status["status"] == "PUBLISHING"
    assert status["mediaSessionId"] == PUB
    assert status["name"] == "cam"
    assert status["published"] is True
    assert (status["audioCodec"], status["videoCodec"]) == ("opus", "H264")
    assert (status["width"], status["height"]) == (640, 360)
    assert "info" not in status
    assert session.media_started(PUB) == []
    assert session.media_started(PUB, video_codec="VP8") == []


def test_unpublish_stream() -> None:
    session = established()
    publishing(session)
    out = unpublish(session)
    assert stops(out) == [PUB]
    status = only_status(out)
    assert status["status"] == "UNPUBLISHED"
    assert status["mediaSessionId"] == PUB
    assert status["published"] is True
    assert PUB not in session.media
    # the StopMedia comes first: the slot is released before the client hears about it
    assert isinstance(out[0], StopMedia)


def test_unpublish_while_pending() -> None:
    session = established()
    publish(session)
    out = unpublish(session)
    assert stops(out) == [PUB]
    assert only_status(out)["status"] == "UNPUBLISHED"
    assert session.media_started(PUB) == []
    assert session.media_answer(PUB, "v=0\r\n") == []


# --- play ---------------------------------------------------------------------------------


def test_play_stream_starts_playing() -> None:
    session = established()
    out = play(session, PLAYER, "cam", hasAudio=False)
    assert len(out) == 1 and isinstance(out[0], StartPlay)
    assert out[0].request.media_session_id == PLAYER
    assert out[0].request.name == "cam"
    assert out[0].request.has_audio is False
    assert not session.is_publisher(PLAYER)


def test_player_answer_notifies_audio_codec_first() -> None:
    session = established()
    play(session)
    out = session.media_answer(PLAYER, "v=0\r\nanswer\r\n", "opus")
    assert frames(out) == [
        {"message": "notifyAudioCodec", "data": [PLAYER, {"name": "opus"}]},
        {"message": "setRemoteSDP", "data": [PLAYER, "v=0\r\nanswer\r\n", True]},
    ]


def test_player_answer_without_audio_codec() -> None:
    session = established()
    play(session)
    assert names(session.media_answer(PLAYER, "v=0\r\n")) == ["setRemoteSDP"]


def test_answer_for_unknown_media_session_is_dropped() -> None:
    assert established().media_answer("nope", "v=0\r\n", "opus") == []


def test_player_started_once() -> None:
    session = established()
    play(session)
    status = only_status(session.media_started(PLAYER, audio_codec="opus", video_codec="H264"))
    assert status["status"] == "PLAYING"
    assert status["published"] is False
    assert status["name"] == "cam"
    assert session.media_started(PLAYER) == []


def test_stop_stream() -> None:
    session = established()
    playing(session)
    out = stop(session)
    assert stops(out) == [PLAYER]
    status = only_status(out)
    assert status["status"] == "STOPPED"
    assert status["mediaSessionId"] == PLAYER
    assert status["info"] == "Stopped by user"
    assert PLAYER not in session.media


def test_publisher_and_players_on_one_connection() -> None:
    session = established()
    publishing(session, PUB, "cam")
    playing(session, "p1", "cam")
    playing(session, "p2", "cam")
    out = stop(session, "p1")
    assert stops(out) == ["p1"]
    assert set(session.media) == {PUB, "p2"}


# --- unknown and mismatched ids --------------------------------------------------------------


@pytest.mark.parametrize("request_fn", [unpublish, stop])
def test_stop_of_unknown_media_session_fails_that_id(request_fn: Any) -> None:
    session = established()
    out = request_fn(session, "ghost")
    assert stops(out) == []
    status = only_status(out)
    assert status["mediaSessionId"] == "ghost"
    assert status["status"] == "FAILED"
    assert "Unknown mediaSessionId" in status["info"]
    assert status["published"] is (request_fn is unpublish)


def test_unpublish_with_a_players_id_fails_and_ends_the_player() -> None:
    session = established()
    playing(session)
    out = unpublish(session, PLAYER)
    assert stops(out) == [PLAYER]
    status = only_status(out)
    assert status["mediaSessionId"] == PLAYER
    assert status["status"] == "FAILED"
    assert "unPublishStream for a playing stream" in status["info"]


def test_stop_with_a_publishers_id_fails_and_ends_the_publisher() -> None:
    session = established()
    publishing(session)
    out = stop(session, PUB)
    assert stops(out) == [PUB]
    status = only_status(out)
    assert status["status"] == "FAILED"
    assert "stopStream for a publishing stream" in status["info"]


def test_unpublish_with_a_players_id_sends_one_terminal_status_only() -> None:
    session = established()
    play(session)
    out = unpublish(session, PLAYER)  # FAILED for PLAYER: terminal for the WebSDK
    out += session.media_started(PLAYER)
    out += stop(session, PLAYER)
    out += session.close()
    mine = [s for s in statuses(out) if s["mediaSessionId"] == PLAYER]
    assert [s["status"] for s in mine] == ["FAILED"], "after a terminal status nothing more for that id"
    assert stops(out) == [PLAYER], "the player the client was told has FAILED must be released"


# --- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("request_fn", [publish, play])
def test_duplicate_media_session_id_fails(request_fn: Any) -> None:
    session = established()
    playing(session, "same")
    out = request_fn(session, "same", "other")
    assert not any(isinstance(o, StartPublish | StartPlay) for o in out)
    status = only_status(out)
    assert status["mediaSessionId"] == "same"
    assert status["status"] == "FAILED"
    assert "already in use" in status["info"]


def test_duplicate_media_session_id_sends_one_terminal_status_only() -> None:
    session = established()
    play(session, "same")
    out = play(session, "same")  # FAILED for "same": terminal for the WebSDK
    out += session.media_started("same")
    out += stop(session, "same")
    assert [s["status"] for s in statuses(out) if s["status"] in TERMINAL] == ["FAILED"]


def test_too_many_media_sessions() -> None:
    session = established(max_media_sessions=3)
    for i in range(3):
        assert isinstance(play(session, f"p{i}")[0], StartPlay)
    for request_fn, msid in ((play, "p3"), (publish, "x3")):
        out = request_fn(session, msid)
        status = only_status(out)
        assert status["mediaSessionId"] == msid
        assert status["status"] == "FAILED"
        assert status["info"].startswith("Too many streams")
        assert "3" in status["info"]
        assert not any(isinstance(o, StartPlay | StartPublish) for o in out)
    assert len(session.media) == 3
    # a finished session frees its slot
    stop(session, "p0")
    assert isinstance(play(session, "p4")[0], StartPlay)


def test_default_limits() -> None:
    limits = SessionLimits()
    assert limits.max_media_sessions == 16
    assert limits.ping_probes == 10


# --- failures and terminal statuses -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["publish", "play"])
def test_media_failed(kind: str) -> None:
    session = established()
    msid = PUB if kind == "publish" else PLAYER
    (publish if kind == "publish" else play)(session, msid)
    out = session.media_failed(msid, "Failed by ICE timeout")
    assert stops(out) == [msid]
    status = only_status(out)
    assert status["status"] == "FAILED"
    assert status["info"] == "Failed by ICE timeout"
    assert status["mediaSessionId"] == msid
    assert msid not in session.media


def test_media_failed_after_started() -> None:
    session = established()
    playing(session)
    out = session.media_failed(PLAYER, "Stream not found")
    assert only_status(out)["status"] == "FAILED"
    assert only_status(out)["info"] == "Stream not found"


def test_terminal_status_at_most_once() -> None:
    session = established()
    playing(session)
    assert only_status(stop(session))["status"] == "STOPPED"
    assert session.media_failed(PLAYER, "late") == []
    assert session.publisher_stopped(PLAYER) == []
    assert session.media_started(PLAYER) == []
    assert session.video_format(PLAYER, 1, 1) == []
    assert session.video_rate(PLAYER, RATES) == []
    assert session.stream_event(PLAYER, "audioMuted", None) == []


def test_media_failed_twice() -> None:
    session = established()
    publish(session)
    assert len(statuses(session.media_failed(PUB, "first"))) == 1
    assert session.media_failed(PUB, "second") == []


def test_media_failed_for_unknown_id_yields_nothing() -> None:
    assert established().media_failed("ghost", "x") == []


def test_publisher_stopped_stops_the_player() -> None:
    session = established()
    playing(session)
    out = session.publisher_stopped(PLAYER)
    assert stops(out) == [PLAYER]
    status = only_status(out)
    assert status["status"] == "STOPPED"
    assert status["info"] == INFO_PUBLISHER_STOPPED == "Stopped by publisher stop"
    assert session.publisher_stopped(PLAYER) == []
    # the client's own stop racing with it releases nothing and is not STOPPED a second time
    late = stop(session)
    assert stops(late) == []
    assert "STOPPED" not in [s["status"] for s in statuses(late)]


def test_publisher_stopped_while_pending() -> None:
    session = established()
    play(session)
    assert only_status(session.publisher_stopped(PLAYER))["status"] == "STOPPED"
    assert session.media_started(PLAYER) == []


# --- video format, events, availability, rates ----------------------------------------------------


def test_video_format_for_a_player() -> None:
    session = established()
    playing(session)
    out = session.video_format(PLAYER, 1280, 720)
    assert frames(out) == [
        {
            "message": "notifyVideoFormat",
            "data": [
                {
                    "mediaSessionId": PLAYER,
                    "status": "RESIZE",
                    "streamerVideoWidth": 1280,
                    "streamerVideoHeight": 720,
                }
            ],
        },
        {
            "message": "notifyStreamEvent",
            "data": [
                {
                    "mediaSessionId": PLAYER,
                    "type": "resize",
                    "payload": {"streamerVideoWidth": 1280, "streamerVideoHeight": 720},
                }
            ],
        },
    ]
    # the stopped status later reports the size
    status = only_status(stop(session))
    assert (status["width"], status["height"]) == (1280, 720)


def test_video_format_for_a_publisher_sends_nothing() -> None:
    session = established()
    publishing(session)
    assert session.video_format(PUB, 640, 360) == []
    status = only_status(unpublish(session))
    assert (status["width"], status["height"]) == (640, 360)


def test_video_format_for_unknown_id() -> None:
    assert established().video_format("ghost", 640, 360) == []


def test_send_stream_event_from_publisher_is_relayed() -> None:
    session = established()
    publishing(session, PUB, "cam")
    body = {"mediaSessionId": PUB, "type": "videoMuted", "payload": {"by": "user"}}
    out = session.receive_text(client_frame("sendStreamEvent", body))
    assert out == [RelayStreamEvent("cam", "videoMuted", {"by": "user"})]


def test_send_stream_event_from_a_player_fails() -> None:
    session = established()
    playing(session)
    out = session.receive_text(client_frame("sendStreamEvent", {"mediaSessionId": PLAYER, "type": "data"}))
    assert names(out) == ["fail"]
    failed = fails(out)[0]
    assert failed["id"] == PLAYER
    assert failed["apiMethod"] == "sendStreamEvent"
    assert "publisher" in failed["info"]
    assert not any(isinstance(o, RelayStreamEvent) for o in out)


@pytest.mark.parametrize(
    ("event_type", "payload", "action", "value"),
    [
        ("setQuality", {"video_quality": 3}, "quality", 3),
        ("setQuality", {"quality": "hd"}, "quality", "hd"),
        ("setQuality", 1, "quality", 1),
        ("changeLens", {"video_type": "zoom"}, "lens", "zoom"),
        ("changeLens", "wide", "lens", "wide"),
    ],
)
def test_a_player_controls_the_camera_with_stream_events(
    event_type: str, payload: Any, action: str, value: Any
) -> None:
    session = established()
    playing(session, PLAYER, "DOCK1/165-0-7/normal-0")
    body = {"mediaSessionId": PLAYER, "type": event_type, "payload": payload}
    out = session.receive_text(client_frame("sendStreamEvent", body))
    assert out == [ControlStream(PLAYER, "DOCK1/165-0-7/normal-0", event_type, action, value)]


@pytest.mark.parametrize("payload", [None, {}, {"other": 1}])
def test_a_camera_control_without_a_value_fails(payload: Any) -> None:
    session = established()
    playing(session)
    body = {"mediaSessionId": PLAYER, "type": "changeLens", "payload": payload}
    out = session.receive_text(client_frame("sendStreamEvent", body))
    assert names(out) == ["fail"] and "video_type" in fails(out)[0]["info"]


def test_send_stream_event_from_unknown_id_fails() -> None:
    session = established()
    out = session.receive_text(client_frame("sendStreamEvent", {"mediaSessionId": "ghost", "type": "data"}))
    assert names(out) == ["fail"]
    assert fails(out)[0]["id"] == "ghost"
    assert "Unknown" in fails(out)[0]["info"]


def test_stream_event_for_a_player() -> None:
    session = established()
    playing(session)
    out = session.stream_event(PLAYER, "audioMuted", None)
    assert frames(out) == [
        {
            "message": "notifyStreamEvent",
            "data": [{"mediaSessionId": PLAYER, "type": "audioMuted", "payload": None}],
        }
    ]
    assert session.stream_event("ghost", "audioMuted", None) == []


def test_available_stream_is_queried() -> None:
    session = established()
    out = session.receive_text(client_frame("availableStream", {"mediaSessionId": "a1", "name": "cam/0"}))
    assert out == [QueryAvailable("a1", "cam/0")]
    assert session.media == {}


@pytest.mark.parametrize(("found", "status"), [(True, "true"), (False, "false")])
def test_available_reply(found: bool, status: str) -> None:
    out = established().available("a1", found, "" if found else "Stream not found")
    assert frames(out) == [
        {
            "message": "availableStream",
            "data": [{"id": "a1", "status": status, "info": "" if found else "Stream not found"}],
        }
    ]


def test_video_rate_only_for_started_sessions() -> None:
    session = established()
    publish(session)
    play(session)
    assert session.video_rate(PUB, RATES) == []
    assert session.video_rate(PLAYER, RATES) == []
    assert session.video_rate("ghost", RATES) == []
    session.media_started(PUB)
    session.media_started(PLAYER)
    inbound = frames(session.video_rate(PUB, RATES))
    outbound = frames(session.video_rate(PLAYER, RATES))
    assert [f["message"] for f in inbound] == ["inboundVideoRate"]
    assert [f["message"] for f in outbound] == ["outboundVideoRate"]
    assert inbound[0]["data"] == [
        {
            "mediaSessionId": PUB,
            "videoRate": 500_000,
            "fps": 30,
            "nack": 1,
            "pli": 2,
            "lostPackets": 3,
            "width": 640,
            "height": 360,
        }
    ]
    assert outbound[0]["data"][0]["mediaSessionId"] == PLAYER


# --- keep-alive -------------------------------------------------------------------------------------


def test_ping_due_sends_ping_and_counts() -> None:
    session = established()
    out = session.ping_due()
    assert frames(out) == [{"message": "ping", "data": [None]}]
    assert session.missed_pings == 1


def test_unanswered_pings_drop_the_client() -> None:
    session = established(ping_probes=3)
    publish(session, "a")
    play(session, "b")
    for _ in range(3):
        assert names(session.ping_due()) == ["ping"]
    out = session.ping_due()
    assert sorted(stops(out)) == ["a", "b"]
    assert isinstance(out[-1], Close)
    assert out[-1].code == 1001
    assert "3" in out[-1].reason
    assert statuses(out) == [], "the socket is going away: no statuses"
    assert session.state is State.CLOSED
    assert session.ping_due() == []
    assert session.receive_text(client_frame("pong", None)) == []


def test_default_ping_probes_is_ten() -> None:
    session = established()
    for _ in range(10):
        assert names(session.ping_due()) == ["ping"]
    assert isinstance(session.ping_due()[-1], Close)


@pytest.mark.parametrize(
    "frame",
    [
        client_frame("pong", None),
        client_frame("ping", None),
        client_frame("pushLogs", {}),
        client_frame("availableStream", {"mediaSessionId": "a", "name": "x"}),
    ],
)
def test_any_frame_resets_the_missed_pings(frame: str) -> None:
    session = established(ping_probes=2)
    for _ in range(5):
        session.ping_due()
        session.ping_due()
        session.receive_text(frame)
        assert session.missed_pings == 0
    assert names(session.ping_due()) == ["ping"]
    assert session.state is State.ESTABLISHED


def test_pings_before_connection() -> None:
    session = new_session(ping_probes=1)
    assert names(session.ping_due()) == ["ping"]
    assert isinstance(session.ping_due()[-1], Close)


# --- close ---------------------------------------------------------------------------------------


def test_close_stops_every_media_session_and_sends_nothing() -> None:
    session = established()
    publishing(session, "a", "cam")
    playing(session, "b", "cam")
    play(session, "c", "cam2")  # pending
    out = session.close()
    assert all(isinstance(o, StopMedia) for o in out)
    assert sorted(stops(out)) == ["a", "b", "c"]
    assert session.state is State.CLOSED
    assert session.media == {}


def test_nothing_after_close() -> None:
    session = established()
    playing(session)
    publish(session)
    session.close()
    assert session.close() == []
    assert session.receive_text(client_frame("ping", None)) == []
    assert session.receive_text("not json") == []
    assert session.receive_binary() == []
    assert publish(session, "new") == []
    assert stop(session) == []
    assert session.media_started(PUB) == []
    assert session.media_answer(PUB, "v=0\r\n") == []
    assert session.media_failed(PLAYER, "x") == []
    assert session.publisher_stopped(PLAYER) == []
    assert session.video_format(PLAYER, 1, 1) == []
    assert session.video_rate(PLAYER, RATES) == []
    assert session.ping_due() == []


def test_close_before_connection() -> None:
    session = new_session()
    assert session.close() == []
    assert session.state is State.CLOSED


# --- invariants over random sequences ---------------------------------------------------------------


def _run_random(seed: int) -> None:
    """Random, protocol-respecting sequences: every request gets exactly one terminal status at
    most, nothing follows it, and every media session started is released exactly once."""
    rng = random.Random(seed)
    session = established(max_media_sessions=4, ping_probes=3)
    kinds: dict[str, bool] = {}  # msid -> published
    terminal: dict[str, int] = {}
    released: dict[str, int] = {}
    started_media: set[str] = set()
    log: list[str] = []

    def check(out: list[Output]) -> None:
        for msid in stops(out):
            released[msid] = released.get(msid, 0) + 1
        for status in statuses(out):
            msid = status["mediaSessionId"]
            assert terminal.get(msid, 0) == 0, f"status {status['status']} after a terminal one: {log}"
            if status["status"] in TERMINAL:
                terminal[msid] = 1
        for o in out:
            if isinstance(o, StartPublish | StartPlay):
                started_media.add(o.request.media_session_id)

    for step in range(60):
        op = rng.choice(
            ["publish", "play", "stop", "started", "failed", "pubstop", "format", "rate", "ping", "pong"]
        )
        known = [k for k in kinds if terminal.get(k, 0) == 0]
        msid = rng.choice(known) if known and rng.random() < 0.8 else f"m{step}"
        log.append(f"{op}:{msid}")
        if op == "publish" and msid not in kinds:
            kinds[msid] = True
            check(publish(session, msid, f"s{step}"))
        elif op == "play" and msid not in kinds:
            kinds[msid] = False
            check(play(session, msid, "s"))
        elif op == "stop" and msid in kinds:
            check(unpublish(session, msid) if kinds[msid] else stop(session, msid))
        elif op == "started":
            check(session.media_started(msid))
        elif op == "failed":
            check(session.media_failed(msid, "boom"))
        elif op == "pubstop" and msid in kinds and not kinds[msid]:
            check(session.publisher_stopped(msid))
        elif op == "format":
            check(session.video_format(msid, 320, 240))
        elif op == "rate":
            check(session.video_rate(msid, RATES))
        elif op == "ping":
            out = session.ping_due()
            check(out)
            if any(isinstance(o, Close) for o in out):
                break
        elif op == "pong":
            check(session.receive_text(client_frame("pong", None)))
    check(session.close())
    assert session.media == {}
    for msid in started_media:
        assert released.get(msid) == 1, f"{msid} released {released.get(msid, 0)} times: {log}"
    assert set(released) <= started_media


@pytest.mark.parametrize("seed", range(40))
def test_random_sequences_keep_the_invariants(seed: int) -> None:
    _run_random(seed)


def test_snapshot_of_a_media_session_is_taken_and_answered_as_a_stream_event() -> None:
    session = established()
    playing(session, PLAYER, "cam")
    out = session.receive_text(client_frame("snapshot", {"mediaSessionId": PLAYER, "name": "cam"}))
    assert out == [TakeSnapshot(PLAYER, "cam")]
    (event,) = frames(session.snapshot_taken(PLAYER, "iVBORw0KGgo="))
    assert event["message"] == "notifyStreamEvent"
    assert event["data"][0]["type"] == "snapshotCompleted"
    assert event["data"][0]["payload"] == {"snapshot": "iVBORw0KGgo="}
    (failed,) = frames(session.snapshot_failed(PLAYER, "no picture yet"))
    assert failed["data"][0]["type"] == "snapshotFailed"
    out = session.receive_text(client_frame("snapshot", {"mediaSessionId": "ghost", "name": "cam"}))
    assert names(out) == ["fail"]
