"""gateway.media.rtsp.message: the RTSP/1.0 codec (RFC 2326 4, 6, 7, 10.12) fed with messages
written out here byte for byte, split at every position, with interleaved frames mixed in."""

from __future__ import annotations

import pytest

from gateway.media.rtsp.message import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    InterleavedFrame,
    Request,
    Response,
    RtspError,
    RtspParser,
    Transport,
    encode_interleaved,
    parse_session,
    parse_transports,
)

# RFC 2326 appendix and what ffmpeg sends (CRLF line endings).
DESCRIBE = (
    b"DESCRIBE rtsp://127.0.0.1:8554/SN/165-0-7/normal-0 RTSP/1.0\r\n"
    b"Accept: application/sdp\r\n"
    b"CSeq: 2\r\n"
    b"User-Agent: Lavf60.16.100\r\n"
    b"\r\n"
)
SDP = b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n"
DESCRIBE_OK = (
    b"RTSP/1.0 200 OK\r\n"
    b"CSeq: 2\r\n"
    b"Content-Base: rtsp://127.0.0.1:8554/cam/\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n"
    b"\r\n" + SDP
)
RTP = bytes(range(40))
FRAME = b"$\x00\x00\x28" + RTP


def feed_split(data: bytes, at: int) -> list:
    parser = RtspParser()
    return parser.receive_data(data[:at]) + parser.receive_data(data[at:])


def test_request_with_headers() -> None:
    (request,) = RtspParser().receive_data(DESCRIBE)
    assert isinstance(request, Request)
    assert request.method == "DESCRIBE"
    assert request.uri == "rtsp://127.0.0.1:8554/SN/165-0-7/normal-0"
    assert request.cseq == 2
    assert request.header("accept") == "application/sdp"
    assert request.header("Session") is None
    assert request.body == b""


def test_response_with_body_split_anywhere_between_interleaved_frames() -> None:
    stream = FRAME + DESCRIBE_OK + FRAME + b"$\x01\x00\x00" + DESCRIBE
    expected = RtspParser().receive_data(stream)
    assert [type(m) for m in expected] == [
        InterleavedFrame,
        Response,
        InterleavedFrame,
        InterleavedFrame,
        Request,
    ]
    response = expected[1]
    assert isinstance(response, Response)
    assert (response.status, response.reason, response.ok) == (200, "OK", True)
    assert response.body == SDP
    assert expected[0] == InterleavedFrame(0, RTP)
    assert expected[3] == InterleavedFrame(1, b"")
    for at in range(len(stream) + 1):
        assert feed_split(stream, at) == expected
    # One byte at a time.
    parser = RtspParser()
    assert [m for byte in stream for m in parser.receive_data(bytes([byte]))] == expected


def test_lf_line_endings_blank_lines_and_folded_headers_are_tolerated() -> None:
    data = b"\r\n\r\nOPTIONS * RTSP/1.0\nCSeq: 7\nX-Long: one\n two\n\n"
    (request,) = RtspParser().receive_data(data)
    assert isinstance(request, Request)
    assert (request.method, request.uri, request.cseq) == ("OPTIONS", "*", 7)
    assert request.header("x-long") == "one two"


def test_repeated_headers_are_all_kept() -> None:
    data = (
        b"RTSP/1.0 401 Unauthorized\r\nCSeq: 3\r\n"
        b'WWW-Authenticate: Digest realm="r", nonce="n"\r\nWWW-Authenticate: Basic realm="r"\r\n\r\n'
    )
    (response,) = RtspParser().receive_data(data)
    assert isinstance(response, Response)
    assert response.header_values("www-authenticate") == ['Digest realm="r", nonce="n"', 'Basic realm="r"']


def test_encode_round_trip_and_content_length() -> None:
    request = Request(
        "SETUP", "rtsp://h/s/trackID=0", (("CSeq", "3"), ("Transport", "RTP/AVP/TCP;interleaved=0-1"))
    )
    assert RtspParser().receive_data(request.encode()) == [request]
    response = Response(200, "OK", (("CSeq", "2"), ("Content-Type", "application/sdp")), SDP)
    encoded = response.encode()
    assert b"Content-Length: " + str(len(SDP)).encode() in encoded
    (parsed,) = RtspParser().receive_data(encoded)
    assert isinstance(parsed, Response) and parsed.body == SDP and parsed.cseq == 2
    assert Response(461).encode().startswith(b"RTSP/1.0 461 Unsupported Transport\r\n")
    assert encode_interleaved(0, RTP) == FRAME


def test_header_injection_is_refused_when_encoding() -> None:
    with pytest.raises(ValueError):
        Response(200, headers=(("Content-Base", "rtsp://x/\r\nEvil: 1"),)).encode()
    with pytest.raises(ValueError):
        Request("OPTIONS", "*", (("Bad Name", "x"),)).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",  # another protocol
        b"hello\r\n",  # garbage line: refused as soon as it is complete
        b"\x00\x01\x02\x03\xff\xfe\r\n",  # binary
        b"DESCRIBE rtsp://h/x RTSP/1.0 extra\r\n",
        b"DESC(RIBE rtsp://h/x RTSP/1.0\r\n",  # not a token
        b"OPTIONS * RTSP/1.0\r\nno colon here\r\n\r\n",
        b"OPTIONS * RTSP/1.0\r\nBad Name: x\r\n\r\n",
        b"OPTIONS * RTSP/1.0\r\nContent-Length: -1\r\n\r\n",
        b"OPTIONS * RTSP/1.0\r\nContent-Length: 12abc\r\n\r\n",
        b"OPTIONS * RTSP/1.0\r\nContent-Length: 99999999999999999999\r\n\r\n",
    ],
)
def test_garbage_is_an_error(data: bytes) -> None:
    with pytest.raises(RtspError) as error:
        RtspParser().receive_data(data)
    assert error.value.status == 400


def test_other_rtsp_version_is_505() -> None:
    with pytest.raises(RtspError) as error:
        RtspParser().receive_data(b"OPTIONS * RTSP/2.0\r\nCSeq: 1\r\n\r\n")
    assert error.value.status == 505


def test_bad_cseq_is_an_error() -> None:
    (request,) = RtspParser().receive_data(b"OPTIONS * RTSP/1.0\r\nCSeq: one\r\n\r\n")
    assert isinstance(request, Request)
    with pytest.raises(RtspError, match="CSeq"):
        _ = request.cseq


def test_header_block_limit_even_without_an_end() -> None:
    parser = RtspParser()
    parser.receive_data(b"OPTIONS * RTSP/1.0\r\n")
    with pytest.raises(RtspError, match="size limit"):
        for _ in range(MAX_HEADER_BYTES // 100 + 1):
            parser.receive_data(b"X-Filler: " + b"a" * 88 + b"\r\n")
    # A complete block over the limit, in one piece.
    big = b"OPTIONS * RTSP/1.0\r\nX: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n"
    with pytest.raises(RtspError, match="size limit"):
        RtspParser().receive_data(big)


def test_body_limit_is_413() -> None:
    head = f"ANNOUNCE rtsp://h/x RTSP/1.0\r\nCSeq: 1\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    with pytest.raises(RtspError) as error:
        RtspParser().receive_data(head.encode())
    assert error.value.status == 413
    at_limit = f"ANNOUNCE rtsp://h/x RTSP/1.0\r\nContent-Length: {MAX_BODY_BYTES}\r\n\r\n".encode()
    (request,) = RtspParser().receive_data(at_limit + b"b" * MAX_BODY_BYTES)
    assert isinstance(request, Request) and len(request.body) == MAX_BODY_BYTES


def test_session_header() -> None:
    assert parse_session("47112344;timeout=60") == ("47112344", 60.0)
    assert parse_session("ABC") == ("ABC", None)
    assert parse_session(" 12 ; Timeout = 30 ") == ("12", 30.0)
    with pytest.raises(RtspError):
        parse_session("12;timeout=soon")
    with pytest.raises(RtspError):
        parse_session(";timeout=1")


def test_transport_header() -> None:
    offered = parse_transports(
        "RTP/AVP;unicast;client_port=4588-4589, RTP/AVP/TCP;unicast;interleaved=2-3;ssrc=0A0B0C0D;mode=play"
    )
    assert offered == [
        Transport("RTP/AVP", "UDP", True, None, (4588, 4589)),
        Transport("RTP/AVP", "TCP", True, (2, 3), None, 0x0A0B0C0D, "PLAY"),
    ]
    assert not offered[0].tcp and offered[1].tcp
    assert parse_transports("RTP/AVP/TCP;interleaved=4")[0].interleaved == (4, 5)
    tcp = Transport("RTP/AVP", "TCP", True, (0, 1), ssrc=0x1234, mode="PLAY")
    assert tcp.encode() == 'RTP/AVP/TCP;unicast;interleaved=0-1;ssrc=00001234;mode="PLAY"'
    assert parse_transports(tcp.encode()) == [tcp]
    with pytest.raises(RtspError):
        parse_transports("RTP/AVP/TCP;interleaved=300-301")
    with pytest.raises(RtspError):
        parse_transports("RTP")
