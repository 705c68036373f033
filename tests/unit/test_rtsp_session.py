"""gateway.media.rtsp.client and .server: the two state machines as plain data, each against
scripted messages of the other side, and wired to each other."""

from __future__ import annotations

import base64

import pytest

from gateway.media.rtsp.auth import ClientAuth, ServerAuth, parse_auth_params
from gateway.media.rtsp.client import Described, Playing, RtspClientConnection, parse_rtsp_url
from gateway.media.rtsp.message import (
    InterleavedFrame,
    Request,
    Response,
    RtspError,
    RtspParser,
    encode_interleaved,
    parse_transports,
)
from gateway.media.rtsp.record import AudioUnit
from gateway.media.rtsp.rtp import AccessUnit, rtp_header
from gateway.media.rtsp.sdp import build_h264_sdp
from gateway.media.rtsp.server import (
    DescribeRequested,
    PlayRequested,
    RtspServerConnection,
    SetupRequested,
    TeardownRequested,
    stream_path,
)

from .helpers import annexb

SPS = bytes.fromhex("6742c00dd90141fb011000000300100000030320f142a480")  # 320x240 baseline, x264
PPS = bytes.fromhex("68cb83cb20")
IDR = bytes([0x65]) + bytes(range(1, 100))

CAMERA_SDP = (
    "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=cam\r\nt=0 0\r\n"
    "m=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=control:trackID=1\r\n"
    "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    f"a=fmtp:96 packetization-mode=1;sprop-parameter-sets={base64.b64encode(SPS).decode()},"
    f"{base64.b64encode(PPS).decode()}\r\na=control:trackID=2\r\n"
)


def requests_of(data: bytes) -> list[Request]:
    messages = RtspParser().receive_data(data)
    assert all(isinstance(m, Request) for m in messages)
    return messages  # type: ignore[return-value]


def responses_of(data: bytes) -> list[Response]:
    messages = RtspParser().receive_data(data)
    assert all(isinstance(m, Response) for m in messages), messages
    return messages  # type: ignore[return-value]


def answer(request: Request, status: int, *headers: tuple[str, str], body: bytes = b"") -> bytes:
    return Response(status, "", (("CSeq", str(request.cseq)), *headers), body).encode()


# --- the client ----------------------------------------------------------------------------------


def test_url_credentials_are_kept_out_of_request_lines() -> None:
    url = parse_rtsp_url("rtsp://admin:p%40ss@10.0.0.9/Streaming/Channels/101?transportmode=unicast")
    assert (url.host, url.port, url.user, url.password) == ("10.0.0.9", 554, "admin", "p@ss")
    assert url.url == "rtsp://10.0.0.9/Streaming/Channels/101?transportmode=unicast"
    assert parse_rtsp_url("rtsp://[::1]:8554/x").url == "rtsp://[::1]:8554/x"
    tls = parse_rtsp_url("RTSPS://rc.local/live")
    assert (tls.tls, tls.port, tls.url) == (True, 322, "rtsps://rc.local/live")
    for bad in ("http://h/x", "rtsp:///x", "rtsp://h:99999/x"):
        with pytest.raises(RtspError):
            parse_rtsp_url(bad)


def test_client_digest_retry_sets_up_video_then_audio_and_plays() -> None:
    client = RtspClientConnection("rtsp://admin:secret@10.0.0.9:8554/live")
    client.start()
    (options,) = requests_of(client.data_to_send())
    assert (options.method, options.uri, options.header("Authorization")) == (
        "OPTIONS",
        "rtsp://10.0.0.9:8554/live",
        None,
    )
    assert (
        client.receive_data(answer(options, 200, ("Public", "OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER")))
        == []
    )
    (describe,) = requests_of(client.data_to_send())
    assert describe.method == "DESCRIBE" and describe.header("Accept") == "application/sdp"
    challenge = ("WWW-Authenticate", 'Digest realm="cam", nonce="abc", qop="auth"')
    assert client.receive_data(answer(describe, 401, challenge)) == []
    (again,) = requests_of(client.data_to_send())
    assert again.method == "DESCRIBE" and again.cseq == describe.cseq + 1  # type: ignore[operator]
    server = ServerAuth("admin", "secret", realm="cam", nonce="abc")
    assert server.check("DESCRIBE", again.header("Authorization"))
    events = client.receive_data(
        answer(again, 200, ("Content-Base", "rtsp://10.0.0.9:8554/live/"), body=CAMERA_SDP.encode())
    )
    assert len(events) == 1 and isinstance(events[0], Described)
    assert (events[0].track.sps, events[0].track.pps) == (SPS, PPS)
    (setup,) = requests_of(client.data_to_send())
    assert setup.uri == "rtsp://10.0.0.9:8554/live/trackID=2"  # the video, not the audio
    assert parse_transports(setup.header("Transport") or "")[0].interleaved == (0, 1)
    assert server.check("SETUP", setup.header("Authorization"))  # credentials on every request now
    transport = ("Transport", "RTP/AVP/TCP;unicast;interleaved=4-5")
    assert client.receive_data(answer(setup, 200, transport, ("Session", "F00D;timeout=20"))) == []
    # Then the audio, on the next channels, in the same session.
    (audio_setup,) = requests_of(client.data_to_send())
    assert (audio_setup.method, audio_setup.uri) == ("SETUP", "rtsp://10.0.0.9:8554/live/trackID=1")
    assert audio_setup.header("Session") == "F00D"
    assert parse_transports(audio_setup.header("Transport") or "")[0].interleaved == (6, 7)
    transport = ("Transport", "RTP/AVP/TCP;unicast;interleaved=8-9")  # the server's choice wins
    assert client.receive_data(answer(audio_setup, 200, transport, ("Session", "F00D"))) == []
    (play,) = requests_of(client.data_to_send())
    assert (play.method, play.uri, play.header("Session")) == ("PLAY", "rtsp://10.0.0.9:8554/live/", "F00D")
    assert client.receive_data(answer(play, 200)) == [Playing("F00D", 20.0)]
    assert client.playing
    # RTP on the server's channels; RTCP and other channels are ignored.
    header = rtp_header(payload_type=96, marker=True, sequence=1, timestamp=0, ssrc=1)
    data = encode_interleaved(5, b"rtcp") + encode_interleaved(4, header + IDR)
    (unit,) = client.receive_data(data)
    assert unit == AccessUnit(annexb([SPS, PPS, IDR]), 0, True, None)  # the SDP's SPS/PPS put in
    ulaw = rtp_header(payload_type=0, marker=False, sequence=7, timestamp=1000, ssrc=2) + bytes(160)
    more = rtp_header(payload_type=0, marker=False, sequence=8, timestamp=1160, ssrc=2) + bytes(160)
    data = encode_interleaved(9, b"rtcp") + encode_interleaved(8, ulaw) + encode_interleaved(8, more)
    assert client.receive_data(data) == [
        AudioUnit(0, "PCMU", bytes(160), 0, 8000),  # track 0: the SDP's first media
        AudioUnit(0, "PCMU", bytes(160), 160, 8000),
    ]
    client.keepalive()
    (keepalive,) = requests_of(client.data_to_send())
    assert (keepalive.method, keepalive.header("Session")) == ("GET_PARAMETER", "F00D")
    # A server that lists GET_PARAMETER but refuses it: OPTIONS from then on.
    client.receive_data(answer(keepalive, 501))
    client.keepalive()
    assert requests_of(client.data_to_send())[0].method == "OPTIONS"
    client.teardown()
    (teardown,) = requests_of(client.data_to_send())
    assert (teardown.method, teardown.header("Session")) == ("TEARDOWN", "F00D")


VIDEO_ON_0 = ("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")


def described_client(sdp: str) -> tuple[RtspClientConnection, Request]:
    """A client whose DESCRIBE was answered with ``sdp``: its video SETUP is out."""
    client = RtspClientConnection("rtsp://10.0.0.9/live")
    client.start()
    (options,) = requests_of(client.data_to_send())
    client.receive_data(answer(options, 200))
    (describe,) = requests_of(client.data_to_send())
    client.receive_data(answer(describe, 200, body=sdp.encode()))
    (setup,) = requests_of(client.data_to_send())
    return client, setup


def test_client_goes_on_with_the_video_when_the_audio_setup_is_refused() -> None:
    client, setup = described_client(CAMERA_SDP)
    transport = ("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")
    client.receive_data(answer(setup, 200, transport, ("Session", "S")))
    (audio_setup,) = requests_of(client.data_to_send())
    client.receive_data(answer(audio_setup, 461))
    (play,) = requests_of(client.data_to_send())
    assert play.method == "PLAY" and client.audio is None
    client.receive_data(answer(play, 200))
    ulaw = rtp_header(payload_type=0, marker=False, sequence=1, timestamp=0, ssrc=2) + bytes(160)
    assert client.receive_data(encode_interleaved(2, ulaw)) == []  # not set up: ignored


def test_client_sets_up_aac_and_splits_its_frames_but_not_audio_it_cannot_relay() -> None:
    aac = (
        "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/2\r\n"
        "a=fmtp:97 streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;"
        "indexdeltalength=3;config=1190\r\na=control:trackID=1\r\n"
    )
    video = CAMERA_SDP[CAMERA_SDP.index("m=video") :]
    head = CAMERA_SDP[: CAMERA_SDP.index("m=audio")]
    client, setup = described_client(head + aac + video)
    client.receive_data(answer(setup, 200, VIDEO_ON_0, ("Session", "S")))
    (audio_setup,) = requests_of(client.data_to_send())
    assert audio_setup.uri.endswith("/trackID=1") and client.audio is not None
    client.receive_data(answer(audio_setup, 200, ("Transport", "RTP/AVP/TCP;unicast;interleaved=2-3")))
    (play,) = requests_of(client.data_to_send())
    client.receive_data(answer(play, 200, ("Session", "S")))
    # Two AAC frames in one packet: AU-headers-length 32 bits, sizes 3 and 2.
    payload = (32).to_bytes(2, "big") + (3 << 3).to_bytes(2, "big") + (2 << 3).to_bytes(2, "big") + b"abcde"
    packet = rtp_header(payload_type=97, marker=True, sequence=1, timestamp=5, ssrc=2) + payload
    assert client.receive_data(encode_interleaved(2, packet)) == [
        AudioUnit(0, "aac", b"abc", 0, 48000),
        AudioUnit(0, "aac", b"de", 1024, 48000),
    ]
    # G.722, which is neither relayed nor transcoded: the video alone is set up.
    g722 = "m=audio 0 RTP/AVP 9\r\na=rtpmap:9 G722/8000\r\na=control:trackID=1\r\n"
    client, setup = described_client(head + g722 + video)
    client.receive_data(answer(setup, 200, VIDEO_ON_0, ("Session", "S")))
    assert requests_of(client.data_to_send())[0].method == "PLAY" and client.audio is None


def test_client_gives_up_on_wrong_credentials() -> None:
    client = RtspClientConnection("rtsp://admin:wrong@h/live")
    client.start()
    (options,) = requests_of(client.data_to_send())
    client.receive_data(answer(options, 200))
    (describe,) = requests_of(client.data_to_send())
    challenge = ("WWW-Authenticate", 'Digest realm="cam", nonce="abc"')
    client.receive_data(answer(describe, 401, challenge))
    (again,) = requests_of(client.data_to_send())
    with pytest.raises(RtspError) as error:
        client.receive_data(answer(again, 401, challenge))
    assert error.value.status == 401
    assert client.data_to_send() == b""


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, b"", 404),
        (200, b"v=0\r\nm=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n", 415),  # no H.264
    ],
)
def test_client_describe_failures(status: int, body: bytes, expected: int) -> None:
    client = RtspClientConnection("rtsp://h/live")
    client.start()
    (options,) = requests_of(client.data_to_send())
    client.receive_data(answer(options, 501))  # a camera without OPTIONS: go on
    (describe,) = requests_of(client.data_to_send())
    with pytest.raises(RtspError) as error:
        client.receive_data(answer(describe, status, body=body))
    assert error.value.status == expected


# --- the server ----------------------------------------------------------------------------------


def request(method: str, uri: str, cseq: int, *headers: tuple[str, str]) -> bytes:
    return Request(method, uri, (("CSeq", str(cseq)), *headers)).encode()


URL = "rtsp://127.0.0.1:8554/SN/165-0-7/normal-0"
TCP = ("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")


def test_stream_path() -> None:
    assert stream_path(URL) == ("SN/165-0-7/normal-0", None)
    assert stream_path(URL + "/") == ("SN/165-0-7/normal-0", None)
    assert stream_path(URL + "/trackID=0") == ("SN/165-0-7/normal-0", 0)
    assert stream_path("/cam%201?x=y") == ("cam 1", None)
    for bad in (
        "rtsp://h/../x",
        "rtsp://h/a/%2e%2E/b",
        "rtsp://h/a//b",
        "rtsp://h/",
        "rtsp://h/a%2Fb",
        "*",
        "x",
    ):
        with pytest.raises(RtspError):
            stream_path(bad)


def test_server_session_without_credentials() -> None:
    server = RtspServerConnection(session_id="S1", ssrc=0xABCD)
    assert server.receive_data(request("OPTIONS", "*", 1)) == []
    (options,) = responses_of(server.data_to_send())
    assert options.status == 200 and "DESCRIBE" in (options.header("Public") or "") and options.cseq == 1
    (describe,) = server.receive_data(request("DESCRIBE", URL, 2))
    assert isinstance(describe, DescribeRequested) and describe.name == "SN/165-0-7/normal-0"
    sdp = build_h264_sdp(session_id=1, address="127.0.0.1", name=describe.name, sps=SPS, pps=PPS)
    server.describe(describe, sdp, URL + "/")
    (described,) = responses_of(server.data_to_send())
    assert described.body == sdp.encode() and described.header("Content-Base") == URL + "/"
    # Multicast is not served.
    udp = ("Transport", "RTP/AVP;unicast;client_port=5000-5001")
    multicast = ("Transport", "RTP/AVP;multicast")
    assert server.receive_data(request("SETUP", URL + "/trackID=0", 3, multicast)) == []
    assert responses_of(server.data_to_send())[0].status == 461
    assert server.receive_data(request("PLAY", URL + "/", 4)) == []  # PLAY before SETUP
    assert responses_of(server.data_to_send())[0].status == 455
    assert server.receive_data(request("SETUP", URL + "/trackID=2", 5, TCP)) == []  # no such track
    assert responses_of(server.data_to_send())[0].status == 404
    (setup,) = server.receive_data(
        request("SETUP", URL + "/trackID=0", 6, ("Transport", f"{multicast[1]},{TCP[1]},{udp[1]}"))
    )
    assert isinstance(setup, SetupRequested) and setup.transport.interleaved == (0, 1)
    server.accept_setup(setup)
    (set_up,) = responses_of(server.data_to_send())
    assert set_up.header("Session") == "S1;timeout=60"
    assert set_up.header("Transport") == 'RTP/AVP/TCP;unicast;interleaved=0-1;ssrc=0000ABCD;mode="PLAY"'
    assert server.receive_data(request("PLAY", URL + "/", 7, ("Session", "WRONG"))) == []
    assert responses_of(server.data_to_send())[0].status == 454
    (play,) = server.receive_data(request("PLAY", URL + "/", 8, ("Session", "S1")))
    assert isinstance(play, PlayRequested)
    server.accept_play(play, "url=x;seq=1;rtptime=2")
    (playing,) = responses_of(server.data_to_send())
    assert playing.status == 200 and playing.header("RTP-Info") == "url=x;seq=1;rtptime=2"
    # Keepalive, and RTCP from the player, need no event.
    assert (
        server.receive_data(
            encode_interleaved(1, b"rtcp") + request("GET_PARAMETER", URL, 9, ("Session", "S1"))
        )
        == []
    )
    assert responses_of(server.data_to_send())[0].status == 200
    assert server.receive_data(request("TEARDOWN", URL + "/", 10, ("Session", "S1"))) == [
        TeardownRequested("SN/165-0-7/normal-0")
    ]
    assert responses_of(server.data_to_send())[0].status == 200
    assert server.session is None


def setup_reply(
    server: RtspServerConnection, data: bytes, server_port: tuple[int, int] | None = None
) -> Response:
    """The answer to a SETUP the caller accepts (if the state machine lets it through)."""
    events = server.receive_data(data)
    for event in events:
        assert isinstance(event, SetupRequested)
        server.accept_setup(event, server_port)
    (response,) = responses_of(server.data_to_send())
    return response


def test_server_two_track_setup_and_play_over_tcp() -> None:
    server = RtspServerConnection(session_id="S2", ssrc=0xABCD, audio_ssrc=0x1234)
    (video,) = server.receive_data(request("SETUP", URL + "/trackID=0", 1, TCP))
    assert isinstance(video, SetupRequested) and video.track == 0
    server.accept_setup(video)
    assert responses_of(server.data_to_send())[0].header("Transport") == (
        'RTP/AVP/TCP;unicast;interleaved=0-1;ssrc=0000ABCD;mode="PLAY"'
    )
    audio_tcp = ("Transport", "RTP/AVP/TCP;unicast;interleaved=2-3")
    (audio,) = server.receive_data(request("SETUP", URL + "/trackID=1", 2, audio_tcp, ("Session", "S2")))
    assert isinstance(audio, SetupRequested) and audio.track == 1 and audio.name == "SN/165-0-7/normal-0"
    server.accept_setup(audio)
    (set_up,) = responses_of(server.data_to_send())
    assert set_up.header("Session") == "S2;timeout=60"
    assert set_up.header("Transport") == 'RTP/AVP/TCP;unicast;interleaved=2-3;ssrc=00001234;mode="PLAY"'
    assert {track: t.interleaved for track, t in server.transports.items()} == {0: (0, 1), 1: (2, 3)}
    (play,) = server.receive_data(request("PLAY", URL + "/", 3, ("Session", "S2")))
    assert isinstance(play, PlayRequested)
    info = f"url={URL}/trackID=0;seq=1;rtptime=2,url={URL}/trackID=1;seq=3;rtptime=4"
    server.accept_play(play, info)
    (playing,) = responses_of(server.data_to_send())
    assert playing.status == 200 and playing.header("RTP-Info") == info
    # RTCP from the player on either track's channel needs no answer.
    assert server.receive_data(encode_interleaved(1, b"rtcp") + encode_interleaved(3, b"rtcp")) == []
    assert server.data_to_send() == b""


def test_server_audio_only_and_two_track_udp() -> None:
    # Audio alone, no channels asked for: the track's own pair, 2-3.
    server = RtspServerConnection(session_id="A")
    response = setup_reply(server, request("SETUP", URL + "/trackID=1", 1, ("Transport", "RTP/AVP/TCP")))
    assert parse_transports(response.header("Transport") or "")[0].interleaved == (2, 3)
    assert list(server.transports) == [1]
    assert isinstance(server.receive_data(request("PLAY", URL, 2, ("Session", "A")))[0], PlayRequested)
    # Both over UDP: each track to its own client ports, from the server's one pair.
    server = RtspServerConnection(session_id="U")
    for cseq, (track, ports) in enumerate(((0, "5000-5001"), (1, "5002-5003")), 1):
        udp = ("Transport", f"RTP/AVP;unicast;client_port={ports}")
        response = setup_reply(server, request("SETUP", f"{URL}/trackID={track}", cseq, udp), (6000, 6001))
        (transport,) = parse_transports(response.header("Transport") or "")
        assert transport.server_port == (6000, 6001)
    assert {track: t.client_port for track, t in server.transports.items()} == {
        0: (5000, 5001),
        1: (5002, 5003),
    }
    assert server.transports[0].ssrc != server.transports[1].ssrc


@pytest.mark.parametrize(
    ("uri", "transport", "status"),
    [
        (URL + "/trackID=2", TCP[1], 404),  # no such track
        (URL + "/trackID=0", "RTP/AVP/TCP;unicast;interleaved=4-5", 455),  # the video again
        (URL, "RTP/AVP/TCP;unicast;interleaved=4-5", 455),  # the aggregate URL is the video too
        (URL + "/trackID=1", TCP[1], 461),  # the video's channels
        (URL + "/trackID=1", "RTP/AVP/TCP;unicast;interleaved=1-2", 461),  # its RTCP channel
        (URL + "/trackID=1", "RTP/AVP;unicast;client_port=5000-5001", 461),  # the video's ports
        ("rtsp://127.0.0.1:8554/other/trackID=1", "RTP/AVP/TCP;unicast;interleaved=2-3", 459),
    ],
)
def test_server_refuses_bad_second_setups_and_goes_on(uri: str, transport: str, status: int) -> None:
    server = RtspServerConnection(session_id="S")
    video = "RTP/AVP;unicast;client_port=5000-5001" if "client_port" in transport else TCP[1]
    assert (
        setup_reply(server, request("SETUP", URL + "/trackID=0", 1, ("Transport", video)), (1, 2)).status
        == 200
    )
    assert server.receive_data(request("SETUP", uri, 2, ("Transport", transport), ("Session", "S"))) == []
    (refused,) = responses_of(server.data_to_send())
    assert (refused.status, refused.cseq) == (status, 2)
    assert not server.closed and list(server.transports) == [0]
    # The session goes on: the audio can still be set up, then both played.
    audio = ("Transport", "RTP/AVP/TCP;unicast;interleaved=6-7")
    assert setup_reply(server, request("SETUP", URL + "/trackID=1", 3, audio, ("Session", "S"))).status == 200
    assert isinstance(server.receive_data(request("PLAY", URL, 4, ("Session", "S")))[0], PlayRequested)
    assert list(server.transports) == [0, 1]


def test_server_refuses_a_setup_while_playing() -> None:
    server = RtspServerConnection(session_id="S")
    setup_reply(server, request("SETUP", URL + "/trackID=0", 1, TCP))
    (play,) = server.receive_data(request("PLAY", URL, 2, ("Session", "S")))
    assert isinstance(play, PlayRequested)
    server.accept_play(play)
    server.data_to_send()
    audio = ("Transport", "RTP/AVP/TCP;unicast;interleaved=2-3")
    assert server.receive_data(request("SETUP", URL + "/trackID=1", 3, audio, ("Session", "S"))) == []
    assert responses_of(server.data_to_send())[0].status == 455
    assert not server.closed and server.playing and list(server.transports) == [0]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (request("FLY", URL, 1), 501),
        (request("PAUSE", URL, 1), 405),
        (request("RECORD", URL, 1), 455),  # before ANNOUNCE and SETUP
        (request("DESCRIBE", "rtsp://h/../../etc/passwd", 1), 400),
        (request("DESCRIBE", "rtsp://h/a/%2e%2e/b", 1), 400),
        (request("SETUP", URL, 1, ("Transport", "nonsense")), 461),
    ],
)
def test_server_refusals_keep_the_connection(data: bytes, status: int) -> None:
    server = RtspServerConnection()
    assert server.receive_data(data) == []
    (response,) = responses_of(server.data_to_send())
    assert (response.status, response.cseq) == (status, 1)
    if status == 405:
        assert "PAUSE" not in (response.header("Allow") or "")
        assert "RECORD" in (response.header("Allow") or "")
    assert not server.closed
    assert server.receive_data(request("OPTIONS", "*", 2)) == []


def test_unparseable_transport_is_unsupported() -> None:
    server = RtspServerConnection()
    assert server.receive_data(request("SETUP", URL, 1, ("Transport", "RTP/AVP/TCP;interleaved=999"))) == []
    assert responses_of(server.data_to_send())[0].status == 461


@pytest.mark.parametrize(
    "data",
    [
        b"hello there\r\n\r\n",
        b"OPTIONS * RTSP/1.0\r\n\r\n",  # no CSeq
        b"OPTIONS * RTSP/1.0\r\nCSeq: x\r\n\r\n",
        b"OPTIONS * RTSP/1.0\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
    ],
)
def test_server_answers_garbage_then_closes(data: bytes) -> None:
    server = RtspServerConnection()
    with pytest.raises(RtspError):
        server.receive_data(data)
    (response,) = responses_of(server.data_to_send())
    assert response.status == 400 and response.header("Connection") == "close"
    assert server.closed
    assert server.receive_data(request("OPTIONS", "*", 2)) == []


def test_server_with_credentials_challenges_everything_but_options() -> None:
    server = RtspServerConnection(auth=ServerAuth("user", "pass", nonce="n0"))
    assert server.receive_data(request("OPTIONS", "*", 1)) == []
    assert responses_of(server.data_to_send())[0].status == 200
    for method in ("DESCRIBE", "GET_PARAMETER", "SETUP"):
        assert server.receive_data(request(method, URL, 2, TCP)) == []
        (challenge,) = responses_of(server.data_to_send())
        assert challenge.status == 401
        params = parse_auth_params((challenge.header("WWW-Authenticate") or "")[len("Digest ") :])
        assert (params["realm"], params["nonce"]) == ("skyrelay", "n0")
    basic = "Basic " + base64.b64encode(b"user:pass").decode()
    assert isinstance(
        server.receive_data(request("DESCRIBE", URL, 3, ("Authorization", basic)))[0], DescribeRequested
    )
    wrong = "Basic " + base64.b64encode(b"user:nope").decode()
    assert server.receive_data(request("DESCRIBE", URL, 4, ("Authorization", wrong))) == []
    assert responses_of(server.data_to_send())[0].status == 401


# --- both, back to back ----------------------------------------------------------------------------


def test_client_and_server_back_to_back_with_digest() -> None:
    server = RtspServerConnection(auth=ServerAuth("user", "pass"), session_id="S")
    client = RtspClientConnection(f"rtsp://user:pass@127.0.0.1:8554/{'SN/165-0-7/normal-0'}")
    client.start()
    played: list[Playing] = []
    for _ in range(20):  # OPTIONS, DESCRIBE (401, again), SETUP, PLAY
        for event in server.receive_data(client.data_to_send()):
            if isinstance(event, DescribeRequested):
                sdp = build_h264_sdp(session_id=1, address="127.0.0.1", name=event.name, sps=SPS, pps=PPS)
                server.describe(event, sdp, URL + "/")
            elif isinstance(event, SetupRequested):
                server.accept_setup(event)
            elif isinstance(event, PlayRequested):
                server.accept_play(event)
        played += [e for e in client.receive_data(server.data_to_send()) if isinstance(e, Playing)]
        if played:
            break
    assert played == [Playing("S", 60.0)]
    header = rtp_header(payload_type=96, marker=True, sequence=9, timestamp=90000, ssrc=server.ssrc)
    assert server.transports[0].interleaved == (0, 1)
    (unit,) = client.receive_data(encode_interleaved(0, header + IDR))
    assert isinstance(unit, AccessUnit) and unit.keyframe and unit.data.startswith(annexb([SPS, PPS]))
    assert not any(isinstance(m, InterleavedFrame) for m in RtspParser().receive_data(client.data_to_send()))


def test_client_auth_object_is_used_when_given() -> None:
    client = RtspClientConnection("rtsp://h/x", auth=ClientAuth("a", "b"))
    assert client.auth is not None and client.auth.user == "a"
