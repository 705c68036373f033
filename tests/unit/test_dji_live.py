"""gateway.dji.live: the on-demand live controller, driven with plain data and a clock."""

from __future__ import annotations

import pytest

from gateway.dji import protocol as p
from gateway.dji.live import (
    CloseIngest,
    Failed,
    LiveController,
    LiveSettings,
    NotLive,
    OpenIngest,
    Output,
    Phase,
    PullFrom,
    SendCommand,
)

VIDEO = p.VideoId("1581F5BMD228Q00A82XX", "39-0-7", "normal-0")
URL = "rtmp://10.0.0.5:1935/live/k3y"


def controller(**settings: object) -> LiveController:
    return LiveController("DOCK1", VIDEO, LiveSettings(**settings))  # type: ignore[arg-type]


def commands(out: list[Output]) -> list[p.Envelope]:
    return [o.envelope for o in out if isinstance(o, SendCommand)]


def started(live: LiveController, now: float = 0.0) -> p.Envelope:
    """First viewer, ingest opened, live_start_push sent: returns the request."""
    assert live.viewer_joined(now) == [OpenIngest(VIDEO, p.UrlType.RTMP)]
    (request,) = commands(live.ingest_ready(URL, now))
    return request


def answer(request: p.Envelope, result: int = 0, tid: str | None = None) -> p.ServiceReply:
    return p.ServiceReply(tid or request.tid, request.bid, request.method, result)


def live_now(live: LiveController, now: float = 0.0) -> None:
    request = started(live, now)
    assert live.reply(answer(request), now) == []
    live.media_started(now)
    assert live.phase is Phase.LIVE


def test_first_viewer_opens_ingest_then_sends_live_start_push() -> None:
    live = controller()
    request = started(live)
    assert request.method == "live_start_push"
    assert request.data == {"url_type": 1, "url": URL, "video_id": str(VIDEO), "video_quality": 0}
    assert live.phase is Phase.STARTING and live.deadline == 20.0


def test_reply_then_media_makes_it_live_and_more_viewers_send_nothing() -> None:
    live = controller()
    request = started(live)
    assert live.reply(answer(request), 1.0) == []
    assert live.phase is Phase.WAITING
    assert live.media_started(2.0) == []
    assert live.phase is Phase.LIVE and live.deadline is None
    assert live.viewer_joined(3.0) == [] and live.viewer_joined(4.0) == []
    assert live.viewers == 3


def test_reply_with_another_tid_or_bid_is_ignored() -> None:
    live = controller()
    request = started(live)
    assert live.reply(answer(request, tid="someone-else"), 1.0) == []
    assert live.reply(p.ServiceReply(request.tid, "other-bid", "live_start_push", 0), 1.0) == []
    assert live.phase is Phase.STARTING


def test_already_streaming_counts_as_success() -> None:
    live = controller()
    request = started(live)
    assert live.reply(answer(request, 513003), 1.0) == []
    assert live.phase is Phase.WAITING


def test_transient_error_is_retried_after_a_backoff_with_a_new_tid() -> None:
    live = controller(retry_backoff=2.0)
    first = started(live)
    assert live.reply(answer(first, 613006), 1.0) == []
    assert live.phase is Phase.STARTING and live.deadline == 3.0
    assert live.tick(2.9) == []
    (second,) = commands(live.tick(3.0))
    assert second.tid != first.tid and second.bid != first.bid
    assert second.data == first.data
    # A late answer to the first attempt changes nothing.
    assert live.reply(answer(first, 0), 3.5) == []
    assert live.phase is Phase.STARTING
    assert live.reply(answer(second, 0), 4.0) == []
    assert live.phase is Phase.WAITING


def test_backoff_doubles_and_attempts_are_bounded() -> None:
    live = controller(retry_backoff=1.0, max_attempts=3)
    request = started(live)
    now = 0.0
    for backoff in (1.0, 2.0):
        live.reply(answer(request, 513015), now)
        assert live.deadline == now + backoff
        now += backoff
        (request,) = commands(live.tick(now))
    out = live.reply(answer(request, 513015), now)
    failed = [o for o in out if isinstance(o, Failed)]
    assert failed and "after 3 attempts" in failed[0].info and "513015" in failed[0].info
    assert CloseIngest(VIDEO) in out
    assert [c.method for c in commands(out)] == ["live_stop_push"]
    assert live.phase is Phase.IDLE


def test_other_errors_fail_at_once_with_code_and_meaning() -> None:
    live = controller()
    request = started(live)
    out = live.reply(answer(request, 513013), 1.0)
    (failed,) = [o for o in out if isinstance(o, Failed)]
    assert "513013" in failed.info and "not supported" in failed.info
    assert CloseIngest(VIDEO) in out
    assert live.phase is Phase.IDLE and live.viewers == 0


def test_no_reply_is_retried_then_fails_after_the_timeout() -> None:
    live = controller(reply_timeout=20.0, max_attempts=2, retry_backoff=1.0)
    started(live)
    assert live.tick(20.0) == []  # no reply: backoff, then a second attempt
    assert len(commands(live.tick(21.0))) == 1
    out = live.tick(41.0)
    (failed,) = [o for o in out if isinstance(o, Failed)]
    assert "no reply from the device within 20 s" in failed.info


def test_push_that_never_starts_fails_the_viewers() -> None:
    live = controller(push_timeout=20.0)
    request = started(live)
    live.reply(answer(request), 1.0)
    out = live.tick(21.0)
    (failed,) = [o for o in out if isinstance(o, Failed)]
    assert "no video from the device within 20 s" in failed.info
    assert [c.method for c in commands(out)] == ["live_stop_push"]


def test_push_drop_keeps_viewers_until_it_resumes() -> None:
    live = controller(push_timeout=20.0)
    live_now(live)
    assert live.media_lost(10.0) == []
    assert live.phase is Phase.WAITING and live.deadline == 30.0
    assert live.tick(25.0) == []
    live.media_started(26.0)
    assert live.phase is Phase.LIVE and live.tick(100.0) == []


def test_push_drop_longer_than_the_timeout_fails() -> None:
    live = controller(push_timeout=20.0)
    live_now(live)
    live.media_lost(10.0)
    out = live.tick(30.0)
    assert any(isinstance(o, Failed) for o in out)
    assert live.phase is Phase.IDLE


def test_last_viewer_leaving_stops_the_push_after_the_linger() -> None:
    live = controller(linger=30.0)
    live_now(live)
    live.viewer_joined(1.0)
    assert live.viewer_left(5.0) == []
    assert live.viewer_left(6.0) == []
    assert live.phase is Phase.LINGERING and live.deadline == 36.0
    assert live.tick(35.0) == []
    out = live.tick(36.0)
    assert [c.method for c in commands(out)] == ["live_stop_push"]
    assert commands(out)[0].data == {"video_id": str(VIDEO)}
    assert CloseIngest(VIDEO) in out and not any(isinstance(o, Failed) for o in out)
    assert live.phase is Phase.IDLE


def test_viewer_during_the_linger_cancels_it_without_any_command() -> None:
    live = controller(linger=30.0)
    live_now(live)
    live.viewer_left(5.0)
    assert live.viewer_joined(10.0) == []
    assert live.phase is Phase.LIVE and live.deadline is None
    assert live.tick(100.0) == []


def test_viewer_after_the_linger_starts_again() -> None:
    live = controller(linger=30.0)
    live_now(live)
    live.viewer_left(5.0)
    live.tick(35.0)
    assert live.viewer_joined(40.0) == [OpenIngest(VIDEO, p.UrlType.RTMP)]


def test_all_viewers_gone_while_starting_gives_up_and_stops() -> None:
    live = controller()
    request = started(live)
    out = live.viewer_left(1.0)
    assert [c.method for c in commands(out)] == ["live_stop_push"]
    assert CloseIngest(VIDEO) in out and not any(isinstance(o, Failed) for o in out)
    assert live.reply(answer(request), 2.0) == []  # too late: ignored
    assert live.phase is Phase.IDLE


def test_viewer_gone_before_the_ingest_opened_sends_nothing_to_the_device() -> None:
    live = controller()
    live.viewer_joined(0.0)
    out = live.viewer_left(0.5)
    assert out == [CloseIngest(VIDEO)]
    assert live.ingest_ready(URL, 1.0) == []


def test_device_offline_fails_viewers_without_a_stop_command() -> None:
    live = controller()
    live_now(live)
    out = live.device_offline()
    assert out == [Failed(VIDEO, "DJI device offline"), CloseIngest(VIDEO)]
    assert live.device_offline() == []


def test_whip_and_quality_come_from_the_settings() -> None:
    live = controller(url_type=p.UrlType.WHIP, quality=p.VideoQuality.HD)
    assert live.viewer_joined(0.0) == [OpenIngest(VIDEO, p.UrlType.WHIP)]
    (request,) = commands(live.ingest_ready("http://10.0.0.5:8081/whip/k3y", 0.0))
    assert request.data["url_type"] == 4 and request.data["video_quality"] == 3


def test_rtsp_device_reply_url_is_pulled() -> None:
    live = controller(url_type=p.UrlType.RTSP)
    assert live.viewer_joined(0.0) == [OpenIngest(VIDEO, p.UrlType.RTSP)]
    (request,) = commands(live.ingest_ready("userName=skyrelay&password=k3y&port=8554", 0.0))
    assert request.data["url_type"] == 2
    served = "rtsp://skyrelay:k3y@192.168.1.100:8554/live/1"
    reply = p.ServiceReply(request.tid, request.bid, request.method, 0, served)
    assert live.reply(reply, 1.0) == [PullFrom(VIDEO, served)]
    assert live.phase is Phase.WAITING


@pytest.mark.parametrize("output", [None, "", 42, "http://not-rtsp/"])
def test_rtsp_reply_without_a_url_fails_clearly(output: object) -> None:
    live = controller(url_type=p.UrlType.RTSP)
    live.viewer_joined(0.0)
    (request,) = commands(live.ingest_ready("userName=a&password=b&port=8554", 0.0))
    out = live.reply(p.ServiceReply(request.tid, request.bid, request.method, 0, output), 1.0)
    assert Failed(VIDEO, "DJI device replied to live_start_push without an RTSP URL") in out
    assert live.phase is Phase.IDLE


def test_quality_is_sent_to_a_pushing_device_and_kept_for_the_next_start() -> None:
    live = controller()
    assert live.set_quality(p.VideoQuality.SMOOTH) == []  # idle: nothing to tell
    request = started(live)
    assert request.data["video_quality"] == int(p.VideoQuality.SMOOTH)
    live.reply(answer(request), 0.0)
    (command,) = commands(live.set_quality(p.VideoQuality.UHD))
    assert command.method == "live_set_quality"
    assert command.data == {"video_id": str(VIDEO), "video_quality": 4}


def test_quality_changed_while_starting_is_sent_after_the_start_succeeds() -> None:
    live = controller()
    request = started(live)
    assert live.set_quality(p.VideoQuality.HD) == []
    (command,) = commands(live.reply(answer(request), 0.0))
    assert (command.method, command.data["video_quality"]) == ("live_set_quality", 3)


def test_lens_change_needs_a_pushing_device_and_a_known_lens() -> None:
    live = controller()
    with pytest.raises(NotLive):
        live.change_lens("zoom")
    live_now(live)
    (command,) = commands(live.change_lens("zoom"))
    assert command.method == "live_lens_change"
    assert command.data == {"video_id": str(VIDEO), "video_type": "zoom"}
    with pytest.raises(p.DjiProtocolError, match="unknown lens"):
        live.change_lens("fisheye")


def test_link_down_fails_a_start_in_flight_at_once_without_retries() -> None:
    live = controller()
    request = started(live)
    out = live.link_down("link lost (broker gone)")
    info = "MQTT link to the device is down: link lost (broker gone)"
    assert out == [Failed(VIDEO, info), CloseIngest(VIDEO)]
    assert live.phase is Phase.IDLE and live.deadline is None and live.attempts == 1
    assert live.reply(answer(request), 1.0) == []  # a late reply changes nothing


def test_link_down_during_the_retry_backoff_or_while_opening_fails_too() -> None:
    live = controller()
    request = started(live)
    assert live.reply(answer(request, 613006), 1.0) == []  # transient: retry after a backoff
    assert live.phase is Phase.STARTING
    assert isinstance(live.link_down("x")[0], Failed) and live.phase is Phase.IDLE
    opening = controller()
    opening.viewer_joined(0.0)
    assert opening.link_down("x") == [Failed(VIDEO, "MQTT link to the device is down: x"), CloseIngest(VIDEO)]


def test_an_unsent_start_fails_only_if_it_is_the_one_in_flight() -> None:
    live = controller()
    first = started(live)
    live.tick(20.0)  # no reply: the retry is due after the backoff
    (second,) = commands(live.tick(22.0))
    assert live.link_down("could not publish", unsent=first) == []  # an old attempt
    assert live.phase is Phase.STARTING
    assert isinstance(live.link_down("could not publish", unsent=second)[0], Failed)


def test_link_down_leaves_a_running_push_alone() -> None:
    live = controller()
    live_now(live)
    assert live.link_down("link lost") == [] and live.phase is Phase.LIVE
    live.viewer_left(1.0)
    assert live.link_down("link lost") == [] and live.phase is Phase.LINGERING
