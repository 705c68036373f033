"""gateway.media.rtmp.protocol: RtmpServerConnection driven by a client-side chunk writer
written here from the Adobe RTMP 1.0 specification (5.3 chunking, 5.4 protocol control
messages, 7.2 commands); its output is parsed back with an independent chunk reader."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.media.rtmp import amf0
from gateway.media.rtmp.protocol import (
    ACK,
    AUDIO,
    COMMAND_AMF0,
    COMMAND_AMF3,
    DATA_AMF0,
    HANDSHAKE_SIZE,
    MAX_MESSAGE_SIZE,
    OUT_CHUNK_SIZE,
    PEER_BANDWIDTH,
    SET_CHUNK_SIZE,
    VIDEO,
    WINDOW_ACK,
    WINDOW_ACK_SIZE,
    MediaMessage,
    MetaData,
    PublishEnded,
    PublishRequested,
    RtmpError,
    RtmpServerConnection,
)

ABORT = 2
EXTENDED = 0xFFFFFF

# --- the client side: a chunk writer ----------------------------------------------------------


def basic_header(fmt: int, csid: int) -> bytes:
    """5.3.1.1: 1 byte for csid 2-63, 2 bytes for 64-319, 3 bytes for 64-65599."""
    assert 2 <= csid <= 65599
    if csid < 64:
        return bytes([fmt << 6 | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    return bytes([fmt << 6 | 1]) + (csid - 64).to_bytes(2, "little")


def chunks(
    csid: int,
    fmt: int,
    body: bytes,
    *,
    timestamp: int = 0,
    type_id: int = VIDEO,
    stream_id: int = 1,
    chunk_size: int = 128,
    extended: bool | None = None,
    extended_on_continuation: bool = True,
) -> list[bytes]:
    """One message as a list of chunks: the first with a ``fmt`` header, the rest fmt 3.

    ``timestamp`` is the header's timestamp field value: absolute for fmt 0, a delta for
    fmt 1/2. For fmt 3, which has no field, it is written as an extended timestamp only when
    ``extended`` says the chunk stream is in extended mode (5.3.1.3)."""
    if extended is None:
        extended = fmt < 3 and timestamp >= EXTENDED
    field_value = EXTENDED if extended else timestamp
    if fmt == 0:
        header = field_value.to_bytes(3, "big") + len(body).to_bytes(3, "big")
        header += bytes([type_id]) + stream_id.to_bytes(4, "little")
    elif fmt == 1:
        header = field_value.to_bytes(3, "big") + len(body).to_bytes(3, "big") + bytes([type_id])
    elif fmt == 2:
        header = field_value.to_bytes(3, "big")
    else:
        header = b""
    ext = timestamp.to_bytes(4, "big") if extended else b""
    out = [basic_header(fmt, csid) + header + ext + body[:chunk_size]]
    for offset in range(chunk_size, len(body), chunk_size):
        cont_ext = ext if extended_on_continuation else b""
        out.append(basic_header(3, csid) + cont_ext + body[offset : offset + chunk_size])
    return out


def message(csid: int, fmt: int, body: bytes, **kwargs: Any) -> bytes:
    return b"".join(chunks(csid, fmt, body, **kwargs))


def command(*values: Any, stream_id: int = 0, csid: int = 3, chunk_size: int = 128) -> bytes:
    return message(
        csid, 0, amf0.encode(*values), type_id=COMMAND_AMF0, stream_id=stream_id, chunk_size=chunk_size
    )


def control(type_id: int, body: bytes) -> bytes:
    return message(2, 0, body, type_id=type_id, stream_id=0)


def set_chunk_size(size: int) -> bytes:
    return control(SET_CHUNK_SIZE, struct.pack(">I", size))


def interleave(*lists: list[bytes]) -> bytes:
    out = bytearray()
    for index in range(max(len(chunk_list) for chunk_list in lists)):
        for chunk_list in lists:
            if index < len(chunk_list):
                out += chunk_list[index]
    return bytes(out)


def c0c1() -> bytes:
    c1 = struct.pack(">II", 1234, 0) + bytes((i * 7 + 3) & 0xFF for i in range(HANDSHAKE_SIZE - 8))
    return b"\x03" + c1


CONNECT = {
    "app": "live",
    "type": "nonprivate",
    "flashVer": "FMLE/3.0 (compatible; Lavf61.1.100)",
    "tcUrl": "rtmp://127.0.0.1:1935/live",
}


def connect_command(app: str = "live") -> bytes:
    return command("connect", 1, {**CONNECT, "app": app})


def publish_commands(name: str = "KEY?token=x") -> bytes:
    """What ffmpeg sends after connect (rtmpproto.c): releaseStream, FCPublish, createStream,
    then publish on the created message stream."""
    return (
        command("releaseStream", 2, None, name)
        + command("FCPublish", 3, None, name)
        + command("createStream", 4, None)
        + command("publish", 5, None, name, "live", stream_id=1, csid=8)
    )


# --- the server side's output: a chunk reader -------------------------------------------------


@dataclass
class Received:
    type_id: int
    stream_id: int
    timestamp: int
    body: bytes

    def values(self) -> list[Any]:
        return amf0.decode_all(self.body)


@dataclass
class ChunkReader:
    """Parses what the server sends, honouring the server's own Set Chunk Size."""

    chunk_size: int = 128
    buffer: bytearray = field(default_factory=bytearray)
    streams: dict[int, dict[str, Any]] = field(default_factory=dict)
    handshake: bytes = b""

    def feed(self, data: bytes) -> list[Received]:
        self.buffer += data
        out: list[Received] = []
        while (message_ := self._chunk()) is not None:
            if message_ != "partial":
                assert isinstance(message_, Received)
                out.append(message_)
        return out

    def _chunk(self) -> Received | str | None:
        buf = self.buffer
        if not buf:
            return None
        fmt, csid, pos = buf[0] >> 6, buf[0] & 0x3F, 1
        if csid == 0:
            csid, pos = 64 + buf[1], 2
        elif csid == 1:
            csid, pos = 64 + buf[1] + 256 * buf[2], 3
        state = self.streams.setdefault(csid, {"ts": 0, "len": 0, "type": 0, "sid": 0, "body": b""})
        assert fmt == 0 or state["len"], "server used a compressed header on a new chunk stream"
        if fmt < 3:
            ts = int.from_bytes(buf[pos : pos + 3], "big")
            assert ts != EXTENDED, "server timestamps are all 0"
            state["ts"] = ts if fmt == 0 else state["ts"] + ts
        if fmt < 2:
            state["len"] = int.from_bytes(buf[pos + 3 : pos + 6], "big")
            state["type"] = buf[pos + 6]
        if fmt == 0:
            state["sid"] = int.from_bytes(buf[pos + 7 : pos + 11], "little")
        pos += (11, 7, 3, 0)[fmt]
        take = min(self.chunk_size, state["len"] - len(state["body"]))
        assert len(buf) >= pos + take, "server output ends within a chunk"
        state["body"] += bytes(buf[pos : pos + take])
        del buf[: pos + take]
        if len(state["body"]) < state["len"]:
            return "partial"
        received = Received(state["type"], state["sid"], state["ts"], state["body"])
        state["body"] = b""
        if received.type_id == SET_CHUNK_SIZE:
            self.chunk_size = struct.unpack(">I", received.body)[0]
        return received


@dataclass
class Client:
    """A server connection with a client on the other side: bytes in, events and parsed
    server messages out."""

    conn: RtmpServerConnection = field(default_factory=RtmpServerConnection)
    reader: ChunkReader = field(default_factory=ChunkReader)
    handshake_out: bytes = b""

    def send(self, data: bytes) -> list[Any]:
        return self.conn.receive_data(data)

    def replies(self) -> list[Received]:
        out = self.conn.data_to_send()
        if not self.handshake_out:
            assert len(out) >= 1 + 2 * HANDSHAKE_SIZE
            self.handshake_out, out = out[: 1 + 2 * HANDSHAKE_SIZE], out[1 + 2 * HANDSHAKE_SIZE :]
        return self.reader.feed(out)


def handshaken() -> Client:
    client = Client()
    assert client.send(c0c1()) == []
    assert client.send(bytes(HANDSHAKE_SIZE)) == []  # C2
    client.replies()
    return client


def connected(app: str = "live") -> Client:
    client = handshaken()
    assert client.send(connect_command(app)) == []
    client.replies()
    return client


def requested(name: str = "KEY?token=x") -> tuple[Client, PublishRequested]:
    client = connected()
    events = client.send(publish_commands(name))
    assert len(events) == 1 and isinstance(events[0], PublishRequested)
    return client, events[0]


def publishing(name: str = "KEY?token=x") -> Client:
    client, request = requested(name)
    client.conn.accept_publish(request)
    client.replies()
    return client


def video(index: int, size: int = 50) -> bytes:
    """A fake FLV video tag body, distinct per index."""
    start = index % 251
    pattern = bytes(range(251)) * ((size + start) // 251 + 1)
    return bytes([0x27, 1, 0, 0, 0]) + pattern[start : start + size - 5]


def media(events: list[Any]) -> list[tuple[int, int, bytes]]:
    assert all(isinstance(event, MediaMessage) for event in events), events
    return [(event.kind, event.timestamp, event.payload) for event in events]


# --- handshake --------------------------------------------------------------------------------


def test_handshake() -> None:
    conn = RtmpServerConnection()
    hello = c0c1()
    assert conn.receive_data(hello) == []
    out = conn.data_to_send()
    assert len(out) == 1 + 2 * HANDSHAKE_SIZE
    assert out[0] == 3  # S0
    s1, s2 = out[1 : 1 + HANDSHAKE_SIZE], out[1 + HANDSHAKE_SIZE :]
    assert s1[4:8] == b"\x00\x00\x00\x00"  # the simple handshake's zero field
    assert s2 == hello[1:]  # S2 echoes C1
    assert conn.data_to_send() == b""
    assert conn.receive_data(s1) == []  # C2 (any content)
    assert conn.data_to_send() == b""
    assert conn.receive_data(connect_command()) == []
    assert conn.data_to_send()  # past the handshake: the connect is answered


@pytest.mark.parametrize("version", [0, 6, 8, 0xFF])
def test_handshake_wrong_version(version: int) -> None:
    conn = RtmpServerConnection()
    with pytest.raises(RtmpError):
        conn.receive_data(bytes([version]) + c0c1()[1:])


def test_handshake_waits_for_all_of_c1() -> None:
    conn = RtmpServerConnection()
    hello = c0c1()
    assert conn.receive_data(hello[:-1]) == []
    assert conn.data_to_send() == b""
    conn.receive_data(hello[-1:])
    assert len(conn.data_to_send()) == 1 + 2 * HANDSHAKE_SIZE


def test_byte_by_byte_session_equals_all_at_once() -> None:
    stream = (
        c0c1()
        + bytes(HANDSHAKE_SIZE)
        + connect_command()
        + publish_commands()
        + set_chunk_size(1000)
        + message(6, 0, video(1, 3000), timestamp=0x1234567, chunk_size=1000)
        + message(4, 0, b"\xaf\x01" + bytes(300), type_id=AUDIO, timestamp=5, chunk_size=1000)
        + message(6, 1, video(2, 40), timestamp=40, chunk_size=1000)
        + message(340, 0, video(3, 2500), timestamp=7, chunk_size=1000)
    )
    whole = RtmpServerConnection()
    whole_events = whole.receive_data(stream)
    whole_out = whole.data_to_send()
    assert [type(e) for e in whole_events] == [PublishRequested]

    single = RtmpServerConnection()
    single_events: list[Any] = []
    single_out = b""
    for i in range(len(stream)):
        single_events += single.receive_data(stream[i : i + 1])
        single_out += single.data_to_send()
    assert single_events == whole_events
    assert single_out[1 + HANDSHAKE_SIZE :] == whole_out[1 + HANDSHAKE_SIZE :]  # S1 is random

    # and once publishing, media byte by byte too
    whole.accept_publish(whole_events[0])
    single.accept_publish(single_events[0])
    media_bytes = stream[stream.index(set_chunk_size(1000)) :]
    expected = whole.receive_data(media_bytes)
    assert len(expected) == 4
    got: list[Any] = []
    for i in range(len(media_bytes)):
        got += single.receive_data(media_bytes[i : i + 1])
    assert got == expected


# --- connect, createStream, publish -----------------------------------------------------------


def test_connect_reply() -> None:
    client = handshaken()
    assert client.send(connect_command()) == []
    replies = client.replies()
    kinds = [reply.type_id for reply in replies]
    assert kinds == [WINDOW_ACK, PEER_BANDWIDTH, SET_CHUNK_SIZE, COMMAND_AMF0]
    window, bandwidth, chunk_size, result = replies
    assert struct.unpack(">I", window.body)[0] == WINDOW_ACK_SIZE
    assert struct.unpack(">I", bandwidth.body[:4])[0] == WINDOW_ACK_SIZE
    assert bandwidth.body[4] in (0, 1, 2)  # hard, soft, dynamic
    assert struct.unpack(">I", chunk_size.body)[0] == OUT_CHUNK_SIZE == 4096
    assert client.reader.chunk_size == 4096
    for control_message in (window, bandwidth, chunk_size):
        assert control_message.stream_id == 0
    name, txid, properties, information = result.values()
    assert (name, txid) == ("_result", 1.0)
    assert isinstance(properties, dict)
    assert information["code"] == "NetConnection.Connect.Success"
    assert information["level"] == "status"
    assert client.conn.app == "live"


@pytest.mark.parametrize(("app", "expected"), [("live", "live"), ("live/", "live"), ("/a/b/", "a/b")])
def test_connect_app(app: str, expected: str) -> None:
    client = connected(app)
    assert client.conn.app == expected
    events = client.send(publish_commands("k"))
    assert events == [PublishRequested(expected, "k", 1)]


def test_connect_spread_over_chunks() -> None:
    # A connect spread over many 128-byte chunks (the default size) is reassembled.
    client = handshaken()
    padded = {**CONNECT, "swfUrl": "rtmp://x/" + "p" * 700, "pageUrl": "q" * 300}
    data = command("connect", 1, padded)
    assert len(data) > 8 * 128
    assert client.send(data) == []
    result = client.replies()[-1]
    assert result.values()[3]["code"] == "NetConnection.Connect.Success"


def test_create_stream_and_the_helper_commands() -> None:
    client = connected()
    assert client.send(command("releaseStream", 2, None, "KEY")) == []
    assert client.send(command("FCPublish", 3, None, "KEY")) == []
    assert client.send(command("createStream", 4, None)) == []
    replies = client.replies()
    assert [reply.values()[:2] for reply in replies] == [["_result", 2.0], ["_result", 3.0], ["_result", 4.0]]
    assert replies[2].values() == ["_result", 4.0, None, 1.0]  # stream id 1


def test_publish_request() -> None:
    client = connected()
    events = client.send(publish_commands("KEY?token=x"))
    assert events == [PublishRequested("live", "KEY", 1, "token=x")]
    assert client.conn.publishing is None  # not before the caller decides


def test_accept_publish() -> None:
    client, request = requested("abcDEF123")
    client.replies()
    client.conn.accept_publish(request)
    assert client.conn.publishing == request
    (status,) = client.replies()
    assert status.type_id == COMMAND_AMF0
    assert status.stream_id == 1
    name, _txid, _null, info = status.values()
    assert name == "onStatus"
    assert info["code"] == "NetStream.Publish.Start"
    assert info["level"] == "status"


def test_reject_publish() -> None:
    client, request = requested()
    client.replies()
    client.conn.reject_publish(request, "unknown key")
    assert client.conn.closed
    (status,) = client.replies()
    assert status.stream_id == 1
    name, _txid, _null, info = status.values()
    assert name == "onStatus"
    assert info["code"] == "NetStream.Publish.BadName"
    assert info["level"] == "error"
    assert info["description"] == "unknown key"
    # a closed connection ignores anything further
    assert client.send(message(6, 0, video(1))) == []
    assert client.send(b"") == []


def test_second_publish_is_an_error() -> None:
    client = publishing()
    with pytest.raises(RtmpError):
        client.send(command("publish", 6, None, "OTHER", "live", stream_id=1, csid=8))


def test_second_publish_before_the_first_is_decided_is_an_error() -> None:
    client = connected()
    both = publish_commands("A") + command("publish", 6, None, "B", "live", stream_id=1, csid=8)
    with pytest.raises(RtmpError):
        client.send(both)


def test_amf3_command_with_its_leading_byte() -> None:
    client = connected()
    body = b"\x00" + amf0.encode("publish", 5, None, "k3", "live")
    events = client.send(message(8, 0, body, type_id=COMMAND_AMF3, stream_id=1))
    assert events == [PublishRequested("live", "k3", 1)]


@pytest.mark.parametrize(
    "body",
    [
        amf0.encode("connect"),  # no transaction id
        amf0.encode(1, 2),  # no name
        b"\x02\x00\x10conn",  # truncated string
        b"\x11\x00",  # AMF3 marker in AMF0
    ],
)
def test_bad_command_is_an_error(body: bytes) -> None:
    client = handshaken()
    with pytest.raises(RtmpError):
        client.send(message(3, 0, body, type_id=COMMAND_AMF0, stream_id=0))


def test_unknown_commands_are_ignored() -> None:
    client = connected()
    assert client.send(command("_checkbw", 6, None) + command("getStreamLength", 7, None, "k")) == []
    assert client.send(command("deleteStream", 8, None, 1)) == []  # not publishing: nothing ends


# --- media ------------------------------------------------------------------------------------


def test_media_before_accept_is_not_reported() -> None:
    client, request = requested()
    assert client.send(message(6, 0, video(1), timestamp=0)) == []
    assert client.send(message(4, 0, b"\xaf\x01\x21", type_id=AUDIO, timestamp=0)) == []
    client.conn.accept_publish(request)
    events = client.send(message(6, 1, video(2), timestamp=40))
    assert media(events) == [(VIDEO, 40, video(2))]


def test_media_before_publish_is_not_reported() -> None:
    client = connected()
    assert client.send(message(6, 0, video(1))) == []


def test_timestamps_through_every_header_format() -> None:
    client = publishing()
    data = (
        message(6, 0, video(0), timestamp=1000)  # absolute
        + message(6, 1, video(1, 60), timestamp=40)  # delta, new length
        + message(6, 2, video(2, 60), timestamp=33)  # delta, same length and type
        + message(6, 3, video(3, 60))  # new message: repeats the delta 33
        + message(6, 3, video(4, 60))  # and again
        + message(6, 0, video(5, 70), timestamp=5000)  # absolute again
        + message(6, 2, video(6, 70), timestamp=0)  # zero delta
        + message(6, 3, video(7, 70))
    )
    events = client.send(data)
    assert [ts for _, ts, _ in media(events)] == [1000, 1040, 1073, 1106, 1139, 5000, 5000, 5000]
    assert [payload for _, _, payload in media(events)] == [
        video(0),
        video(1, 60),
        video(2, 60),
        video(3, 60),
        video(4, 60),
        video(5, 70),
        video(6, 70),
        video(7, 70),
    ]


def test_fmt3_right_after_fmt0_uses_the_absolute_timestamp_as_delta() -> None:
    # ffmpeg (rtmppkt.c ff_rtmp_packet_write) writes fmt 3 whenever the new ts_field equals the
    # previous one, including the previous fmt 0's absolute timestamp: fixed-size audio frames
    # 23 ms apart starting at 23 ms come out as fmt 0 (23), fmt 3, fmt 3.
    client = publishing()
    audio = b"\xaf\x01" + bytes(100)
    data = (
        message(4, 0, audio, type_id=AUDIO, timestamp=23)
        + message(4, 3, audio, type_id=AUDIO)
        + message(4, 3, audio, type_id=AUDIO)
    )
    assert [ts for _, ts, _ in media(client.send(data))] == [23, 46, 69]


def test_fmt3_after_fmt0_at_zero() -> None:
    # The common case ffmpeg produces (the first tag at 0): delta 0 either way.
    client = publishing()
    data = message(6, 0, video(0), timestamp=0) + message(6, 3, video(1))
    assert [ts for _, ts, _ in media(client.send(data))] == [0, 0]


def test_timestamp_wraps_at_32_bits() -> None:
    client = publishing()
    data = message(6, 0, video(0), timestamp=0xFFFFFFF0) + message(6, 2, video(1), timestamp=0x20)
    assert [ts for _, ts, _ in media(client.send(data))] == [0xFFFFFFF0, 0x10]


def test_audio_and_video_kinds() -> None:
    client = publishing()
    events = client.send(
        message(4, 0, b"\xaf\x00\x12\x10", type_id=AUDIO, timestamp=0)
        + message(6, 0, video(1), type_id=VIDEO, timestamp=0)
    )
    assert media(events) == [(AUDIO, 0, b"\xaf\x00\x12\x10"), (VIDEO, 0, video(1))]


@pytest.mark.parametrize("chunk_size", [1, 7, 128, 4096, 60000, 0xFFFFFF])
def test_message_split_over_chunks(chunk_size: int) -> None:
    client = publishing()
    body = video(9, 150_000 if chunk_size > 1 else 700)
    data = b""
    if chunk_size != 128:
        data += set_chunk_size(chunk_size)
    data += message(6, 0, body, timestamp=77, chunk_size=chunk_size)
    data += message(6, 1, video(10, 300), timestamp=10, chunk_size=chunk_size)
    events = client.send(data)
    assert media(events) == [(VIDEO, 77, body), (VIDEO, 87, video(10, 300))]


def test_default_chunk_size_is_128() -> None:
    client = publishing()
    body = video(3, 1000)
    pieces = chunks(6, 0, body, timestamp=1)
    assert len(pieces) == 8
    events: list[Any] = []
    for piece in pieces[:-1]:
        events += client.send(piece)
    assert events == []  # a message is reported only when complete
    assert media(client.send(pieces[-1])) == [(VIDEO, 1, body)]


def test_chunk_size_change_between_messages() -> None:
    client = publishing()
    data = (
        message(6, 0, video(1, 500), timestamp=0)
        + set_chunk_size(60000)
        + message(6, 1, video(2, 100_000), timestamp=40, chunk_size=60000)
        + set_chunk_size(100)
        + message(6, 1, video(3, 1000), timestamp=40, chunk_size=100)
    )
    events = client.send(data)
    assert media(events) == [
        (VIDEO, 0, video(1, 500)),
        (VIDEO, 40, video(2, 100_000)),
        (VIDEO, 80, video(3, 1000)),
    ]


def test_interleaved_chunk_streams() -> None:
    client = publishing()
    audio_body = b"\xaf\x01" + bytes(range(256)) * 3
    video_body = video(4, 1000)
    audio_chunks = chunks(4, 0, audio_body, type_id=AUDIO, timestamp=21)
    video_chunks = chunks(6, 0, video_body, timestamp=20)
    assert len(audio_chunks) > 3 and len(video_chunks) > 3
    events = client.send(interleave(video_chunks, audio_chunks))
    assert sorted(media(events)) == sorted([(AUDIO, 21, audio_body), (VIDEO, 20, video_body)])
    # and a control message between the chunks of a message
    more = chunks(6, 2, video(5, 1000), timestamp=40)
    data = more[0] + more[1] + control(WINDOW_ACK, struct.pack(">I", 10**9)) + b"".join(more[2:])
    assert media(client.send(data)) == [(VIDEO, 60, video(5, 1000))]


@pytest.mark.parametrize("csid", [3, 63, 64, 65, 200, 319, 320, 321, 1000, 65599])
def test_chunk_stream_ids_of_every_basic_header_size(csid: int) -> None:
    client = publishing()
    body = video(csid, 600)
    data = message(csid, 0, body, timestamp=5) + message(csid, 1, video(1, 300), timestamp=5)
    data += message(csid, 3, video(2, 300))
    assert media(client.send(data)) == [
        (VIDEO, 5, body),
        (VIDEO, 10, video(1, 300)),
        (VIDEO, 15, video(2, 300)),
    ]


def test_basic_header_sizes() -> None:
    assert len(basic_header(0, 63)) == 1
    assert basic_header(1, 64) == b"\x40\x00"
    assert basic_header(1, 319) == b"\x40\xff"
    assert basic_header(2, 320) == b"\x81\x00\x01"
    assert basic_header(3, 65599) == b"\xc1\xff\xff"


def test_csids_of_different_sizes_are_distinct_streams() -> None:
    # csid 1 + 64 (2-byte form of 65) and 65 in 3-byte form would collide only if misparsed;
    # 64 (2-byte) and 320 (3-byte, low byte 0) differ only in the high byte.
    client = publishing()
    data = interleave(
        chunks(64, 0, video(1, 400), timestamp=1),
        chunks(320, 0, video(2, 400), timestamp=2),
        chunks(65599, 0, video(3, 400), timestamp=3),
    )
    assert sorted(media(client.send(data))) == sorted(
        [(VIDEO, 1, video(1, 400)), (VIDEO, 2, video(2, 400)), (VIDEO, 3, video(3, 400))]
    )


def test_extended_timestamps() -> None:
    client = publishing()
    big = 0x01234567
    body = video(1, 1000)  # 8 chunks, each continuation repeating the extended timestamp
    first = chunks(6, 0, body, timestamp=big)
    assert first[0][1:4] == b"\xff\xff\xff" and first[1][1:5] == big.to_bytes(4, "big")
    data = b"".join(first)
    data += message(6, 1, video(2, 500), timestamp=40)  # back to a plain delta
    data += message(6, 2, video(3, 500), timestamp=0x1000000)  # an extended delta
    data += message(6, 3, video(4, 500), timestamp=0x1000000, extended=True)  # fmt 3 repeats it
    events = client.send(data)
    assert media(events) == [
        (VIDEO, big, body),
        (VIDEO, big + 40, video(2, 500)),
        (VIDEO, big + 40 + 0x1000000, video(3, 500)),
        (VIDEO, big + 40 + 0x2000000, video(4, 500)),
    ]


def test_timestamp_of_exactly_0xffffff_is_extended() -> None:
    client = publishing()
    data = message(6, 0, video(1, 300), timestamp=0xFFFFFF)
    assert data[1:4] == b"\xff\xff\xff" and data[12:16] == b"\x00\xff\xff\xff"
    assert media(client.send(data)) == [(VIDEO, 0xFFFFFF, video(1, 300))]


def test_extended_timestamp_with_a_large_chunk_size() -> None:
    client = publishing()
    data = set_chunk_size(60000) + message(6, 0, video(5, 200_000), timestamp=0xFFFFFFFF, chunk_size=60000)
    assert media(client.send(data)) == [(VIDEO, 0xFFFFFFFF, video(5, 200_000))]


def test_extended_timestamps_interleaved() -> None:
    client = publishing()
    audio = chunks(4, 0, b"\xaf\x01" + bytes(700), type_id=AUDIO, timestamp=0x2000000)
    vid = chunks(6, 0, video(6, 700), timestamp=0x3000000)
    events = client.send(interleave(audio, vid))
    assert sorted((kind, ts) for kind, ts, _ in media(events)) == [(AUDIO, 0x2000000), (VIDEO, 0x3000000)]


# --- metadata and the end of a publish -------------------------------------------------------


def ecma_array(values: dict[str, Any]) -> bytes:
    body = b"".join(struct.pack(">H", len(k)) + k.encode() + amf0.encode(v) for k, v in values.items())
    return b"\x08" + struct.pack(">I", len(values)) + body + b"\x00\x00\x09"


METADATA = {
    "duration": 0.0,
    "width": 1280.0,
    "height": 720.0,
    "videodatarate": 2500.0,
    "framerate": 30.0,
    "videocodecid": 7.0,
    "encoder": "Lavf61.1.100",
    "filesize": 0.0,
}


def test_set_data_frame_on_metadata() -> None:
    client = publishing()
    body = amf0.encode("@setDataFrame", "onMetaData") + ecma_array(METADATA)
    events = client.send(message(8, 0, body, type_id=DATA_AMF0, timestamp=0))
    assert events == [MetaData(METADATA)]


def test_plain_on_metadata_and_other_data() -> None:
    client = publishing()
    plain = amf0.encode("onMetaData", {"width": 640.0})
    assert client.send(message(8, 0, plain, type_id=DATA_AMF0)) == [MetaData({"width": 640.0})]
    other = amf0.encode("onTextData", {"text": "x"})
    assert client.send(message(8, 0, other, type_id=DATA_AMF0)) == []
    broken = amf0.encode("@setDataFrame", "onMetaData") + b"\x08\x00\x00"
    assert client.send(message(8, 0, broken, type_id=DATA_AMF0)) == []  # informational: no error
    assert not client.conn.closed


@pytest.mark.parametrize(
    "ending",
    [
        command("FCUnpublish", 6, None, "KEY"),
        command("deleteStream", 7, None, 1),
        command("closeStream", 7, None, stream_id=1, csid=8),
    ],
)
def test_unpublish_ends_the_publish(ending: bytes) -> None:
    client = publishing()
    events = client.send(ending)
    assert len(events) == 1 and isinstance(events[0], PublishEnded)
    assert client.conn.publishing is None
    assert client.send(message(6, 0, video(1))) == []  # media after the end is not reported


def test_ffmpeg_ending_reports_one_end() -> None:
    client = publishing()
    events = client.send(command("FCUnpublish", 6, None, "KEY") + command("deleteStream", 7, None, 1))
    assert [type(e) for e in events] == [PublishEnded]


def test_eof_while_publishing() -> None:
    client = publishing()
    events = client.send(b"")
    assert len(events) == 1 and isinstance(events[0], PublishEnded)
    assert client.conn.closed
    assert client.send(b"") == []
    assert client.send(message(6, 0, video(1))) == []


def test_eof_when_not_publishing() -> None:
    client = connected()
    assert client.send(b"") == []
    assert client.conn.closed


def test_eof_during_the_handshake() -> None:
    conn = RtmpServerConnection()
    conn.receive_data(c0c1()[:100])
    assert conn.receive_data(b"") == []
    assert conn.closed


# --- protocol violations ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [1, 2, 3])
def test_compressed_header_on_a_new_chunk_stream(fmt: int) -> None:
    client = handshaken()
    with pytest.raises(RtmpError):
        client.send(message(9, fmt, video(1), timestamp=5))


def test_compressed_header_on_a_new_chunk_stream_when_publishing() -> None:
    client = publishing()
    client.send(message(6, 0, video(1)))
    with pytest.raises(RtmpError):
        client.send(message(7, 1, video(2), timestamp=5))


@pytest.mark.parametrize("fmt", [0, 1])
def test_message_over_the_size_limit(fmt: int) -> None:
    client = publishing()
    client.send(message(6, 0, video(1)))
    header = basic_header(fmt, 6) + b"\x00\x00\x00" + (MAX_MESSAGE_SIZE + 1).to_bytes(3, "big") + b"\x09"
    if fmt == 0:
        header += b"\x01\x00\x00\x00"
    with pytest.raises(RtmpError):
        client.send(header)  # refused on the header, before any of the body is buffered


def test_message_at_the_size_limit() -> None:
    client = publishing()
    body = video(1, MAX_MESSAGE_SIZE)
    events = client.send(set_chunk_size(0xFFFFFF) + message(6, 0, body, chunk_size=0xFFFFFF))
    assert media(events) == [(VIDEO, 0, body)]


def test_bad_set_chunk_size() -> None:
    client = handshaken()
    with pytest.raises(RtmpError):
        client.send(set_chunk_size(0))


@pytest.mark.parametrize("size", [0x1000000, 0x7FFFFFFF])
def test_set_chunk_size_above_the_largest_message(size: int) -> None:
    client = publishing()
    data = set_chunk_size(size) + message(6, 0, video(1, 200_000), chunk_size=size)
    assert media(client.send(data)) == [(VIDEO, 0, video(1, 200_000))]


def test_short_set_chunk_size() -> None:
    client = handshaken()
    with pytest.raises(RtmpError):
        client.send(control(SET_CHUNK_SIZE, b"\x00\x10"))


def test_set_chunk_size_ignores_the_top_bit() -> None:
    client = publishing()
    data = control(SET_CHUNK_SIZE, struct.pack(">I", 0x80000000 | 4096))
    data += message(6, 0, video(1, 5000), chunk_size=4096)
    assert media(client.send(data)) == [(VIDEO, 0, video(1, 5000))]


def test_abort_discards_the_partial_message() -> None:
    client = publishing()
    partial = chunks(6, 0, video(1, 1000))[:3]
    data = b"".join(partial) + control(ABORT, struct.pack(">I", 6))
    data += message(6, 0, video(2, 300), timestamp=9)
    assert media(client.send(data)) == [(VIDEO, 9, video(2, 300))]


# --- acknowledgements -------------------------------------------------------------------------


def acks(replies: list[Received]) -> list[int]:
    return [struct.unpack(">I", reply.body)[0] for reply in replies if reply.type_id == ACK]


def test_acknowledgement_after_the_window() -> None:
    client = publishing()
    sent = len(c0c1()) + HANDSHAKE_SIZE + len(connect_command()) + len(publish_commands())
    assert acks(client.replies()) == []
    chunk_message = set_chunk_size(60000)
    client.send(chunk_message)
    sent += len(chunk_message)
    index = 0
    while sent < WINDOW_ACK_SIZE - 200_000:
        data = message(6, 0 if index == 0 else 1, video(index, 100_000), timestamp=40, chunk_size=60000)
        client.send(data)
        sent += len(data)
        index += 1
    assert acks(client.replies()) == []  # not before the window is full
    data = message(6, 1, video(index, 300_000), timestamp=40, chunk_size=60000)
    events = client.send(data)
    sent += len(data)
    assert len(events) == 1
    assert acks(client.replies()) == [sent]  # the sequence number: every byte received so far
    # the next one after another window
    client.send(data)
    assert acks(client.replies()) == []


def test_client_window_ack_size() -> None:
    client = connected()
    sent = len(c0c1()) + HANDSHAKE_SIZE + len(connect_command())
    window = control(WINDOW_ACK, struct.pack(">I", 5000))
    client.send(window)
    sent += len(window)
    got: list[int] = []
    for _ in range(20):
        data = command("_checkbw", 9, None, "x" * 400)
        client.send(data)
        sent += len(data)
        got += acks(client.replies())
    assert got and got[-1] <= sent
    assert all(b - a >= 5000 for a, b in zip([0, *got], got, strict=False))
    assert got[0] >= 5000
