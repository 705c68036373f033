"""gateway.media.rtsp.sdp: DESCRIBE answers as cameras and servers write them (absolute and
relative control URLs, audio tracks, sprop-parameter-sets), and the SDP the server builds."""

from __future__ import annotations

import base64

import pytest

from gateway.media import h264
from gateway.media.rtsp.record import announced_tracks
from gateway.media.rtsp.sdp import (
    SERVED_AUDIO,
    build_h264_sdp,
    h264_track,
    parse_sdp,
    resolve_control,
    sprop_parameter_sets,
)

from .helpers import access_units

SPS = bytes.fromhex("6742c00dd90141fb011000000300100000030320f142a480")  # 320x240 baseline, x264
PPS = bytes.fromhex("68cb83cb20")

# The shape of a Hikvision answer: absolute controls, G.711 audio after the video.
CAMERA = (
    "v=0\r\n"
    "o=- 1109162014219182 1109162014219192 IN IP4 192.168.1.64\r\n"
    "s=Media Presentation\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "t=0 0\r\n"
    "a=control:rtsp://192.168.1.64:554/Streaming/Channels/101/?transportmode=unicast\r\n"
    "m=video 0 RTP/AVP 96\r\n"
    "a=rtpmap:96 H264/90000\r\n"
    f"a=fmtp:96 profile-level-id=42C01E;packetization-mode=1;sprop-parameter-sets="
    f"{base64.b64encode(SPS).decode()},{base64.b64encode(PPS).decode()}\r\n"
    "a=control:rtsp://192.168.1.64:554/Streaming/Channels/101/trackID=1?transportmode=unicast\r\n"
    "m=audio 0 RTP/AVP 0\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=control:rtsp://192.168.1.64:554/Streaming/Channels/101/trackID=2?transportmode=unicast\r\n"
)

# Audio first, relative controls, LF only, mode 0: what many small encoders send.
RELATIVE = (
    "v=0\no=- 0 0 IN IP4 10.0.0.2\ns=live\nt=0 0\na=control:*\n"
    "m=audio 0 RTP/AVP 97\na=rtpmap:97 MPEG4-GENERIC/48000/2\na=control:track2\n"
    "m=video 0 RTP/AVP 98\na=rtpmap:98 h264/90000\na=control:track1\n"
)


def test_camera_answer_with_absolute_controls_and_audio() -> None:
    sdp = parse_sdp(CAMERA)
    assert [m.kind for m in sdp.media] == ["video", "audio"]
    assert sdp.control is not None and sdp.control.endswith("?transportmode=unicast")
    track = h264_track(sdp, "rtsp://192.168.1.64:554/Streaming/Channels/101")
    assert track is not None
    assert (
        track.control_url == "rtsp://192.168.1.64:554/Streaming/Channels/101/trackID=1?transportmode=unicast"
    )
    assert (track.payload_type, track.clock_rate, track.packetization_mode) == (96, 90000, 1)
    assert (track.sps, track.pps) == (SPS, PPS)


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("rtsp://10.0.0.2/live/cam", "rtsp://10.0.0.2/live/cam/track1"),
        ("rtsp://10.0.0.2/live/cam/", "rtsp://10.0.0.2/live/cam/track1"),
    ],
)
def test_relative_control_is_appended_to_the_base(base: str, expected: str) -> None:
    track = h264_track(parse_sdp(RELATIVE), base)
    assert track is not None
    assert track.control_url == expected
    assert (track.payload_type, track.packetization_mode, track.sps, track.pps) == (98, 0, None, None)


def test_resolve_control() -> None:
    assert resolve_control("rtsp://h/a/", "*") == "rtsp://h/a/"
    assert resolve_control("rtsp://h/a", None) == "rtsp://h/a"
    assert resolve_control("rtsp://h/a", "RTSP://other/x") == "RTSP://other/x"
    assert (
        resolve_control("rtsp://h/SN/165-0-7/normal-0/", "trackID=0")
        == "rtsp://h/SN/165-0-7/normal-0/trackID=0"
    )


def test_no_h264_video() -> None:
    audio_only = "v=0\r\ns=x\r\nm=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    assert h264_track(parse_sdp(audio_only), "rtsp://h/x") is None
    h265 = "v=0\r\ns=x\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H265/90000\r\n"
    assert h264_track(parse_sdp(h265), "rtsp://h/x") is None


def test_bad_parameter_sets_are_skipped() -> None:
    value = f"%%%,{base64.b64encode(PPS).decode()},,{base64.b64encode(SPS).decode()}"
    assert sprop_parameter_sets(value) == (SPS, PPS)
    assert sprop_parameter_sets("") == (None, None)


def test_built_sdp_round_trips_with_the_streams_parameter_sets(encoded: dict[str, bytes]) -> None:
    unit = access_units(encoded["1280x720-baseline"])[0]
    sps = next(n for n in unit if n[0] & 0x1F == h264.NAL_SPS)
    pps = next(n for n in unit if n[0] & 0x1F == h264.NAL_PPS)
    text = build_h264_sdp(session_id=42, address="127.0.0.1", name="SN/165-0-7/normal-0", sps=sps, pps=pps)
    assert text.endswith("\r\n") and "\r\nm=video 0 RTP/AVP 96\r\n" in text
    assert f"profile-level-id={sps[1:4].hex().upper()}" in text
    track = h264_track(parse_sdp(text), "rtsp://127.0.0.1:8554/SN/165-0-7/normal-0/")
    assert track is not None
    assert track.control_url == "rtsp://127.0.0.1:8554/SN/165-0-7/normal-0/trackID=0"
    assert (track.sps, track.pps, track.packetization_mode) == (sps, pps, 1)
    assert h264.sps_dimensions(track.sps) == (1280, 720)
    # Without a keyframe yet: no parameter sets, they come in band.
    bare = build_h264_sdp(session_id=1, address="::1", name="x", sps=None, pps=None)
    assert "sprop-parameter-sets" not in bare and "IN IP6 ::1" in bare


@pytest.mark.parametrize(
    ("codec", "media_line", "rtpmap"),
    [
        ("opus", "m=audio 0 RTP/AVP 97", "a=rtpmap:97 opus/48000/2"),
        ("PCMU", "m=audio 0 RTP/AVP 0", "a=rtpmap:0 PCMU/8000"),
        ("PCMA", "m=audio 0 RTP/AVP 8", "a=rtpmap:8 PCMA/8000"),
    ],
)
def test_built_sdp_with_audio_has_a_second_track(codec: str, media_line: str, rtpmap: str) -> None:
    video_only = build_h264_sdp(session_id=7, address="127.0.0.1", name="cam", sps=SPS, pps=PPS)
    text = build_h264_sdp(
        session_id=7, address="127.0.0.1", name="cam", sps=SPS, pps=PPS, audio=SERVED_AUDIO[codec]
    )
    # The video section is the same; the audio section follows it, with its own control.
    assert text == video_only + f"{media_line}\r\n{rtpmap}\r\na=control:trackID=1\r\n"
    sdp = parse_sdp(text)
    assert [(m.kind, m.control) for m in sdp.media] == [("video", "trackID=0"), ("audio", "trackID=1")]
    track = h264_track(sdp, "rtsp://127.0.0.1:8554/cam/")
    assert track is not None and track.control_url == "rtsp://127.0.0.1:8554/cam/trackID=0"
    assert resolve_control("rtsp://127.0.0.1:8554/cam/", sdp.media[1].control) == (
        "rtsp://127.0.0.1:8554/cam/trackID=1"
    )
    # What the server serves is what it takes from a publisher: the same codec comes out.
    video, audio = announced_tracks(text.encode())
    assert video.h264 and (audio.audio_codec, audio.clock_rate) == (codec, SERVED_AUDIO[codec].clock_rate)
    assert "m=audio" not in video_only
