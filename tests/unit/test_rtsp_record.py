"""RTSP over UDP and publishing (ANNOUNCE/RECORD), sans I/O: the announced SDP's tracks, the
server's record and UDP sessions, and the client's UDP setup, as plain data."""

from __future__ import annotations

import base64

import pytest

from gateway.media.rtsp.client import Playing, RtspClientConnection
from gateway.media.rtsp.message import Request, Response, RtspError, encode_interleaved, parse_transports
from gateway.media.rtsp.record import AudioUnit, Recording, announced_tracks
from gateway.media.rtsp.rtp import AccessUnit, rtp_header
from gateway.media.rtsp.sdp import build_h264_sdp
from gateway.media.rtsp.server import (
    AnnounceRequested,
    DescribeRequested,
    PlayRequested,
    RecordRequested,
    RtspServerConnection,
    SetupRequested,
    TeardownRequested,
)

from .helpers import annexb
from .test_rtsp_session import IDR, PPS, SPS, URL, requests_of, responses_of

SPROP = f"{base64.b64encode(SPS).decode()},{base64.b64encode(PPS).decode()}"
# What ffmpeg announces for H.264 video and AAC audio.
FFMPEG_SDP = (
    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=No Name\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "a=tool:libavformat 59.27.100\r\n"
    "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    f"a=fmtp:96 packetization-mode=1; sprop-parameter-sets={SPROP}; profile-level-id=42C00D\r\n"
    "a=control:streamid=0\r\n"
    "m=audio 0 RTP/AVP 97\r\nb=AS:128\r\na=rtpmap:97 MPEG4-GENERIC/44100/1\r\n"
    "a=fmtp:97 profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3\r\n"
    "a=control:streamid=1\r\n"
)
PCMU_SDP = (
    "v=0\r\ns=cam\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\na=control:audio\r\n"
    "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:rtsp://cam.local/live/video\r\n"
)


def req(method: str, uri: str, cseq: int, *headers: tuple[str, str], body: bytes = b"") -> bytes:
    return Request(method, uri, (("CSeq", str(cseq)), *headers), body).encode()


def rtp(pt: int, sequence: int, timestamp: int, payload: bytes, marker: bool = True) -> bytes:
    return (
        rtp_header(payload_type=pt, marker=marker, sequence=sequence, timestamp=timestamp, ssrc=7) + payload
    )


def only(server: RtspServerConnection) -> Response:
    (response,) = responses_of(server.data_to_send())
    return response


# --- the announced SDP --------------------------------------------------------------------------


def test_announced_tracks() -> None:
    video, audio = announced_tracks(FFMPEG_SDP.encode())
    assert (video.index, video.control, video.payload_type, video.h264) == (0, "streamid=0", 96, True)
    assert (video.sps, video.pps, video.clock_rate) == (SPS, PPS, 90000)
    assert (audio.kind, audio.encoding, audio.clock_rate, audio.audio_codec) == (
        "audio",
        "MPEG4-GENERIC",
        44100,
        None,
    )
    pcmu, video = announced_tracks(PCMU_SDP.encode())  # a static payload type needs no rtpmap
    assert (pcmu.encoding, pcmu.clock_rate, pcmu.audio_codec, pcmu.control) == ("PCMU", 8000, "PCMU", "audio")
    assert video.control == "rtsp://cam.local/live/video"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"\xff\xfe garbage", 400),
        (b"hello", 400),
        (b"v=0\r\nm=video 0 RTP/AVP\r\n", 400),  # no payload type
        (b"v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n", 415),
        (b"v=0\r\nm=audio 0 RTP/AVP 0\r\n", 415),
        (FFMPEG_SDP.replace("streamid=1", "streamid=0").encode(), 400),  # two tracks, one control
    ],
)
def test_bad_announced_sdp(body: bytes, status: int) -> None:
    with pytest.raises(RtspError) as error:
        announced_tracks(body)
    assert error.value.status == status


def test_recording_relays_video_and_simple_audio_and_drops_the_rest() -> None:
    recording = Recording(announced_tracks(FFMPEG_SDP.encode()))
    (unit,) = recording.receive(0, rtp(96, 1, 1000, IDR))
    assert unit == AccessUnit(annexb([SPS, PPS, IDR]), 0, True, None)  # the SDP's SPS/PPS put in
    assert recording.receive(1, rtp(97, 1, 0, b"aac")) == [] and recording.ignored_packets == 1
    assert recording.receive(0, b"junk") == [] and recording.receive(0, rtp(97, 2, 0, IDR)) == []
    assert recording.bad_packets == 2
    pcmu = Recording(announced_tracks(PCMU_SDP.encode()))
    assert pcmu.receive(0, rtp(0, 10, 5000, b"\xff" * 160)) == [AudioUnit(0, "PCMU", b"\xff" * 160, 0, 8000)]
    assert pcmu.receive(0, rtp(0, 10, 5000, b"\xff" * 160)) == []  # repeated
    assert pcmu.receive(0, rtp(0, 11, 5160, b"\x7f" * 160)) == [
        AudioUnit(0, "PCMU", b"\x7f" * 160, 160, 8000)
    ]


# --- the server: publishing ---------------------------------------------------------------------


def announce(
    server: RtspServerConnection, sdp: str = FFMPEG_SDP, uri: str = URL + "?token=t"
) -> AnnounceRequested:
    (event,) = server.receive_data(
        req("ANNOUNCE", uri, 1, ("Content-Type", "application/sdp"), body=sdp.encode())
    )
    assert isinstance(event, AnnounceRequested)
    return event


def test_server_records_over_tcp() -> None:
    server = RtspServerConnection(session_id="S1")
    event = announce(server)
    assert (event.name, event.query, len(event.tracks)) == ("SN/165-0-7/normal-0", "token=t", 2)
    server.accept_announce(event)
    assert only(server).status == 200
    # RECORD before the video is set up.
    assert server.receive_data(req("RECORD", URL, 2)) == []
    assert only(server).status == 455
    # ffmpeg puts the query before the control.
    tcp = "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record"
    (setup,) = server.receive_data(req("SETUP", URL + "?token=t/streamid=0", 3, ("Transport", tcp)))
    assert isinstance(setup, SetupRequested) and (setup.track, setup.record, setup.udp) == (0, True, False)
    server.accept_setup(setup)
    answer = only(server)
    assert answer.header("Session") == "S1;timeout=60"
    assert parse_transports(answer.header("Transport") or "")[0].interleaved == (0, 1)
    # Without interleaved channels the server picks them.
    (audio,) = server.receive_data(
        req(
            "SETUP",
            URL + "/streamid=1",
            4,
            ("Transport", "RTP/AVP/TCP;unicast;mode=record"),
            ("Session", "S1"),
        )
    )
    server.accept_setup(audio)
    assert parse_transports(only(server).header("Transport") or "")[0].interleaved == (2, 3)
    assert server.receive_data(encode_interleaved(0, rtp(96, 1, 0, IDR))) == []  # before RECORD
    (record,) = server.receive_data(req("RECORD", URL, 5, ("Session", "S1")))
    assert isinstance(record, RecordRequested)
    server.accept_record(record)
    assert only(server).status == 200
    events = server.receive_data(encode_interleaved(0, rtp(96, 2, 3000, IDR)) + encode_interleaved(1, b"sr"))
    assert events == [AccessUnit(annexb([SPS, PPS, IDR]), 0, True, None)]
    assert server.receive_data(encode_interleaved(2, rtp(97, 1, 0, b"aac"))) == []  # AAC: dropped
    assert server.receive_data(req("PLAY", URL, 6, ("Session", "S1"))) == []
    assert only(server).status == 455  # a publishing session does not play
    assert server.receive_data(req("TEARDOWN", URL, 7, ("Session", "S1"))) == [
        TeardownRequested("SN/165-0-7/normal-0")
    ]
    assert only(server).status == 200 and server.mode is None and server.recording is None


def test_server_records_over_udp() -> None:
    server = RtspServerConnection(session_id="S1")
    server.accept_announce(announce(server, PCMU_SDP, "rtsp://cam.local/live"))
    server.data_to_send()
    (setup,) = server.receive_data(
        req(
            "SETUP",
            "rtsp://cam.local/live/video",
            2,
            ("Transport", "RTP/AVP;unicast;client_port=6000-6001;mode=record"),
        )
    )
    assert isinstance(setup, SetupRequested) and setup.udp and setup.track == 1
    with pytest.raises(ValueError):
        server.accept_setup(setup)  # UDP needs the server's ports
    server.accept_setup(setup, (7000, 7001))
    transport = parse_transports(only(server).header("Transport") or "")[0]
    assert (transport.client_port, transport.server_port, transport.mode) == (
        (6000, 6001),
        (7000, 7001),
        "RECORD",
    )
    (record,) = server.receive_data(req("RECORD", "rtsp://cam.local/live", 3, ("Session", "S1")))
    server.accept_record(record)  # type: ignore[arg-type]
    assert server.receive_rtp(1, rtp(96, 1, 0, IDR)) == [AccessUnit(annexb([IDR]), 0, True, None)]


def test_server_publishing_refusals() -> None:
    server = RtspServerConnection()
    for data, status in (
        (req("ANNOUNCE", URL, 1, ("Content-Type", "text/plain"), body=b"v=0\r\n"), 415),
        (req("ANNOUNCE", URL, 1, ("Content-Type", "application/sdp"), body=b"garbage"), 400),
        (req("ANNOUNCE", URL, 1, body=b"v=0\r\nm=audio 0 RTP/AVP 0\r\n"), 415),
        (req("ANNOUNCE", "rtsp://h/../x", 1, body=FFMPEG_SDP.encode()), 400),
    ):
        assert server.receive_data(data) == []
        response = only(server)
        assert response.status == status and response.reason != ""
    server.refuse(announce(server).request, 403, "Forbidden: no\r\nX-Evil: 1")
    (refused,) = responses_of(server.data_to_send())
    assert (refused.status, refused.reason, refused.header("X-Evil")) == (
        403,
        "Forbidden: no X-Evil: 1",
        None,
    )
    server.accept_announce(announce(server))
    server.data_to_send()
    assert server.receive_data(req("ANNOUNCE", URL, 2, body=FFMPEG_SDP.encode())) == []
    assert only(server).status == 455  # one session per connection
    tcp = ("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record")
    for uri, status in ((URL + "/streamid=5", 404), ("rtsp://h/other/streamid=0", 404)):
        assert server.receive_data(req("SETUP", uri, 3, tcp)) == []
        assert only(server).status == status
    play_mode = ("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1;mode=play")
    assert server.receive_data(req("SETUP", URL + "/streamid=0", 4, play_mode)) == []
    assert only(server).status == 461


def test_oversize_sdp_closes_the_connection() -> None:
    server = RtspServerConnection()
    with pytest.raises(RtspError):
        server.receive_data(req("ANNOUNCE", URL, 1, body=b"v=0\r\n" + b"a=x\r\n" * 20_000))
    response = only(server)
    assert response.status == 413 and server.closed


# --- UDP playing, both ends ---------------------------------------------------------------------


def test_udp_play_client_and_server() -> None:
    server = RtspServerConnection(session_id="S")
    client = RtspClientConnection("rtsp://127.0.0.1:8554/cam", udp_ports=(5000, 5001))
    client.start()
    played: list[Playing] = []
    for _ in range(10):
        for event in server.receive_data(client.data_to_send()):
            if isinstance(event, DescribeRequested):
                sdp = build_h264_sdp(session_id=1, address="127.0.0.1", name="cam", sps=SPS, pps=PPS)
                server.describe(event, sdp, "rtsp://127.0.0.1:8554/cam/")
            elif isinstance(event, SetupRequested):
                assert event.udp and event.transport.client_port == (5000, 5001)
                server.accept_setup(event, (6000, 6001))
            elif isinstance(event, PlayRequested):
                server.accept_play(event)
        played += [e for e in client.receive_data(server.data_to_send()) if isinstance(e, Playing)]
        if played:
            break
    assert played == [Playing("S", 60.0)]
    assert (server.transports[0].client_port, client.server_ports) == ((5000, 5001), (6000, 6001))
    (unit,) = client.receive_rtp(rtp(96, 1, 0, IDR))
    assert unit.keyframe
    # Interleaved data is not what a UDP client set up.
    assert client.receive_data(encode_interleaved(0, rtp(96, 2, 3000, IDR))) == []


def test_udp_can_be_switched_off() -> None:
    server = RtspServerConnection(udp=False)
    udp = ("Transport", "RTP/AVP;unicast;client_port=5000-5001")
    assert server.receive_data(req("SETUP", URL + "/trackID=0", 1, udp)) == []
    assert only(server).status == 461


def test_client_refuses_a_server_that_answers_udp_with_tcp() -> None:
    client = RtspClientConnection("rtsp://h/cam", udp_ports=(5000, 5001))
    client.start()
    (options,) = requests_of(client.data_to_send())
    client.receive_data(Response(200, "", (("CSeq", str(options.cseq)),)).encode())
    (describe,) = requests_of(client.data_to_send())
    sdp = (
        f"v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 sprop-parameter-sets={SPROP}\r\n"
    )
    client.receive_data(Response(200, "", (("CSeq", str(describe.cseq)),), sdp.encode()).encode())
    (setup,) = requests_of(client.data_to_send())
    assert parse_transports(setup.header("Transport") or "")[0].client_port == (5000, 5001)
    headers = (
        ("CSeq", str(setup.cseq)),
        ("Session", "X"),
        ("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1"),
    )
    with pytest.raises(RtspError) as error:
        client.receive_data(Response(200, "", headers).encode())
    assert error.value.status == 461


def test_aac_hbr_frames_come_out_one_per_access_unit() -> None:
    sdp = FFMPEG_SDP.replace("indexdeltalength=3", "indexdeltalength=3;config=1210")
    recording = Recording(announced_tracks(sdp.encode()))
    assert recording.audio is not None and recording.audio.aac_config == bytes.fromhex("1210")
    first, second = b"\x21" * 10, b"\x22" * 7
    headers = (32).to_bytes(2, "big") + (10 << 3).to_bytes(2, "big") + (7 << 3).to_bytes(2, "big")
    units = recording.receive(1, rtp(97, 1, 5000, headers + first + second))
    assert [(u.codec, u.data, u.timestamp) for u in units] == [("aac", first, 0), ("aac", second, 1024)]
    assert recording.receive(1, rtp(97, 2, 7048, (32).to_bytes(2, "big") + b"\xff\xff")) == []
    assert recording.bad_packets == 1  # AU sizes beyond the payload
