"""gateway.media.rtmp.client and chunks: the publishing client's state machine against a
scripted server (Adobe RTMP 1.0: 5.2 handshake, 5.3 chunking, 5.4 control, 7.2 commands),
and back to back with the ingest's own `RtmpServerConnection`, through publish and media."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from gateway.media.rtmp import amf0
from gateway.media.rtmp.chunks import (
    ACK,
    AUDIO,
    COMMAND_AMF0,
    DATA_AMF0,
    HANDSHAKE_SIZE,
    PEER_BANDWIDTH,
    SET_CHUNK_SIZE,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK,
    ChunkReader,
    ChunkWriter,
    Message,
    RtmpError,
)
from gateway.media.rtmp.client import (
    ClientState,
    Connected,
    ConnectionClosed,
    PublishStarted,
    Refused,
    RtmpClientConnection,
    StatusReceived,
    parse_rtmp_url,
)
from gateway.media.rtmp.flv import AvcTagReader, AvcTagWriter
from gateway.media.rtmp.protocol import MediaMessage, MetaData, PublishRequested, RtmpServerConnection
from tests.unit.helpers import access_units, annexb

# --- chunks -------------------------------------------------------------------------------------


def read_all(data: bytes, reader: ChunkReader | None = None) -> list[Message]:
    reader = reader or ChunkReader()
    buf, out = bytearray(data), []
    while True:
        before = len(buf)
        message = reader.read(buf)
        if message is not None:
            out.append(message)
        if len(buf) == before:
            return out


@pytest.mark.parametrize("chunk_size", [1, 128, 4096, 0xFFFFFF])
@pytest.mark.parametrize("timestamp", [0, 40, 0xFFFFFE, 0xFFFFFF, 0x12345678, 0xFFFFFFFF])
def test_writer_and_reader_agree(chunk_size: int, timestamp: int) -> None:
    body = random.Random(chunk_size ^ timestamp).randbytes(5000)
    writer, reader = ChunkWriter(chunk_size), ChunkReader()
    reader.chunk_size = chunk_size
    data = writer.message(6, VIDEO, 1, timestamp, body) + writer.message(6, VIDEO, 1, timestamp + 1, b"x")
    assert read_all(data, reader) == [
        Message(VIDEO, 1, timestamp, body),
        Message(VIDEO, 1, (timestamp + 1) & 0xFFFFFFFF, b"x"),
    ]


def test_writer_layout() -> None:
    """fmt 0 header, then fmt 3 continuations; an extended timestamp in every chunk."""
    data = ChunkWriter(4).message(6, VIDEO, 1, 0x01000000, b"abcdefgh")
    ext = (0x01000000).to_bytes(4, "big")
    header = (
        bytes([6]) + b"\xff\xff\xff" + (8).to_bytes(3, "big") + bytes([VIDEO]) + (1).to_bytes(4, "little")
    )
    assert data == header + ext + b"abcd" + bytes([0xC6]) + ext + b"efgh"
    assert ChunkWriter(4).message(6, VIDEO, 1, 7, b"abcd")[1:4] == b"\x00\x00\x07"
    with pytest.raises(ValueError):
        ChunkWriter().message(64, VIDEO, 1, 0, b"")


def test_reader_applies_set_chunk_size_and_abort() -> None:
    reader, writer = ChunkReader(), ChunkWriter()
    data = writer.message(2, SET_CHUNK_SIZE, 0, 0, struct.pack(">I", 1000))
    writer.chunk_size = 1000
    data += writer.message(6, VIDEO, 1, 0, bytes(900))
    assert [m.type_id for m in read_all(data, reader)] == [SET_CHUNK_SIZE, VIDEO]
    assert reader.chunk_size == 1000
    with pytest.raises(RtmpError, match="chunk size 0"):
        read_all(ChunkWriter().message(2, SET_CHUNK_SIZE, 0, 0, bytes(4)))


# --- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "tls", "app", "name"),
    [
        ("rtmp://example.com/live/key", "example.com", 1935, False, "live", "key"),
        ("rtmp://127.0.0.1:19350/live/k?token=a&b=c", "127.0.0.1", 19350, False, "live", "k?token=a&b=c"),
        (
            "RTMPS://a.rtmp.youtube.com:443/live2/xxxx-yyyy",
            "a.rtmp.youtube.com",
            443,
            True,
            "live2",
            "xxxx-yyyy",
        ),
        ("rtmps://host/app/key", "host", 443, True, "app", "key"),
        ("rtmp://[::1]:1936/live/a/b", "::1", 1936, False, "live", "a/b"),
        ("rtmp://host/live", "host", 1935, False, "live", "default"),
        ("rtmp://host/live/", "host", 1935, False, "live", "default"),
    ],
)
def test_parse_url(url: str, host: str, port: int, tls: bool, app: str, name: str) -> None:
    parsed = parse_rtmp_url(url, default_name="default")
    assert (parsed.host, parsed.port, parsed.tls, parsed.app, parsed.name) == (host, port, tls, app, name)
    assert name.split("?")[0] not in parsed.redacted.removeprefix(parsed.tc_url)


def test_url_redaction_and_tc_url() -> None:
    parsed = parse_rtmp_url("rtmp://example.com/live/secret-key?token=t")
    assert parsed.tc_url == "rtmp://example.com:1935/live"
    assert parsed.redacted == "rtmp://example.com:1935/live/***"
    assert "secret" not in parsed.redacted and "token" not in parsed.redacted
    assert parse_rtmp_url("rtmp://[::1]/live/k").tc_url == "rtmp://[::1]:1935/live"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "http://example.com/live/key",
        "rtsp://example.com/live/key",
        "rtmp:///live/key",
        "rtmp://example.com",
        "rtmp://example.com/",
        "rtmp://example.com/live",  # no key, no default
        "rtmp://user:pw@example.com/live/key",
        "rtmp://example.com:99999/live/key",
        "rtmp://example.com:port/live/key",
        "rtmp://example.com/live/key#frag",
        "rtmp://example.com/live/" + "k" * 5000,
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_rtmp_url(url)


# --- the client against a scripted server -------------------------------------------------------


class ScriptedServer:
    """Plays the server by hand: reads the client's chunks, writes chosen messages."""

    def __init__(self) -> None:
        self.client = RtmpClientConnection("live", "rtmp://127.0.0.1:1935/live", "key?token=t")
        self.reader = ChunkReader()
        self.writer = ChunkWriter()
        self.s1 = bytes([0, 0, 0, 1, 0, 0, 0, 0]) + bytes(i % 256 for i in range(HANDSHAKE_SIZE - 8))
        c0c1 = self.client.data_to_send()
        assert len(c0c1) == 1 + HANDSHAKE_SIZE and c0c1[0] == 3
        self.c1 = c0c1[1:]

    def handshake(self) -> list[Message]:
        assert self.client.receive_data(b"\x03" + self.s1 + self.c1) == []
        out = self.client.data_to_send()
        assert out[:HANDSHAKE_SIZE] == self.s1  # C2 echoes S1
        return self.received(out[HANDSHAKE_SIZE:])

    def received(self, data: bytes | None = None) -> list[Message]:
        return read_all(self.client.data_to_send() if data is None else data, self.reader)

    def send(self, type_id: int, body: bytes, *, csid: int = 3, stream_id: int = 0) -> list[Any]:
        return self.client.receive_data(self.writer.message(csid, type_id, stream_id, 0, body))

    def command(self, *values: Any, stream_id: int = 0) -> list[Any]:
        return self.send(COMMAND_AMF0, amf0.encode(*values), stream_id=stream_id)

    def connected(self) -> list[Message]:
        self.handshake()
        info = {"level": "status", "code": "NetConnection.Connect.Success", "description": "ok"}
        assert self.command("_result", 1, {"fmsVer": "FMS/3,0,1,123"}, info) == [Connected(info)]
        return self.received()

    def publish_requested(self) -> Message:
        self.connected()
        assert self.command("_result", 4, None, 7) == []
        (publish,) = self.received()
        return publish

    def publishing(self) -> None:
        self.publish_requested()
        info = {"level": "status", "code": "NetStream.Publish.Start", "description": "go"}
        assert self.command("onStatus", 0, None, info, stream_id=7) == [PublishStarted(7, "go")]


def values(message: Message) -> list[Any]:
    return amf0.decode_all(message.body)


def test_handshake_waits_for_s0_s1_s2() -> None:
    server = ScriptedServer()
    whole = b"\x03" + server.s1 + server.c1
    assert server.client.receive_data(whole[:-1]) == []
    assert server.client.data_to_send() == b""
    assert server.client.state is ClientState.HANDSHAKE
    server.client.receive_data(whole[-1:])
    assert server.client.data_to_send()[:HANDSHAKE_SIZE] == server.s1
    assert server.client.state is ClientState.CONNECTING


def test_wrong_server_version() -> None:
    server = ScriptedServer()
    with pytest.raises(RtmpError, match="version 6"):
        server.client.receive_data(b"\x06" + server.s1 + server.c1)


def test_connect_after_the_handshake() -> None:
    chunk_size, connect = ScriptedServer().handshake()
    assert (chunk_size.type_id, struct.unpack(">I", chunk_size.body)[0]) == (SET_CHUNK_SIZE, 4096)
    assert connect.type_id == COMMAND_AMF0 and connect.stream_id == 0
    name, txid, command = values(connect)
    assert (name, txid) == ("connect", 1.0)
    assert command["app"] == "live" and command["tcUrl"] == "rtmp://127.0.0.1:1935/live"
    assert command["type"] == "nonprivate" and command["flashVer"].startswith("FMLE/3.0")


def test_connect_result_starts_the_stream_commands() -> None:
    messages = ScriptedServer().connected()
    assert [values(m)[:2] for m in messages] == [
        ["releaseStream", 2.0],
        ["FCPublish", 3.0],
        ["createStream", 4.0],
    ]
    assert values(messages[0])[2:] == [None, "key?token=t"]
    assert values(messages[1])[2:] == [None, "key?token=t"]


def test_publish_goes_on_the_created_stream() -> None:
    publish = ScriptedServer().publish_requested()
    assert publish.stream_id == 7
    assert values(publish) == ["publish", 5.0, None, "key?token=t", "live"]


def test_publish_start() -> None:
    server = ScriptedServer()
    server.publishing()
    assert server.client.publishing and server.client.stream_id == 7


def test_bad_name_is_a_refusal() -> None:
    server = ScriptedServer()
    server.publish_requested()
    info = {"level": "error", "code": "NetStream.Publish.BadName", "description": "unknown key"}
    events = server.command("onStatus", 0, None, info, stream_id=7)
    assert events == [Refused("publish", "NetStream.Publish.BadName", "unknown key")]
    assert str(events[0]) == "publish refused: NetStream.Publish.BadName (unknown key)"
    assert server.client.closed
    with pytest.raises(RtmpError):
        server.client.send_video(0, b"\x17\x01\x00\x00\x00")


def test_connect_error_is_a_refusal() -> None:
    server = ScriptedServer()
    server.handshake()
    info = {"level": "error", "code": "NetConnection.Connect.Rejected", "description": "no such app"}
    assert server.command("_error", 1, None, info) == [
        Refused("connect", "NetConnection.Connect.Rejected", "no such app")
    ]
    assert server.client.closed and server.client.receive_data(b"more") == []


def test_connect_result_with_a_failure_code_is_a_refusal() -> None:
    server = ScriptedServer()
    server.handshake()
    info = {"level": "error", "code": "NetConnection.Connect.Rejected", "description": "auth"}
    assert server.command("_result", 1, None, info) == [
        Refused("connect", "NetConnection.Connect.Rejected", "auth")
    ]


def test_create_stream_error_is_a_refusal() -> None:
    server = ScriptedServer()
    server.connected()
    events = server.command("_error", 4, None, {"code": "NetStream.Failed", "description": "full"})
    assert events == [Refused("createStream", "NetStream.Failed", "full")]


def test_other_status_and_commands() -> None:
    server = ScriptedServer()
    server.publishing()
    assert server.command("onBWDone", 0, None) == []
    assert server.command("onFCPublish", 0, None, {"code": "NetStream.Publish.Start"}) == []
    assert server.command("onFCPublish") == []  # ffmpeg's server: no transaction id
    idle = {"level": "status", "code": "NetStream.Publish.Idle", "description": ""}
    assert server.command("onStatus", 0, None, idle, stream_id=7) == [
        StatusReceived("status", "NetStream.Publish.Idle", "")
    ]
    assert server.client.publishing


def test_media_before_publishing_is_an_error() -> None:
    server = ScriptedServer()
    server.connected()
    with pytest.raises(RtmpError, match="creating stream"):
        server.client.send_video(0, b"\x17")
    with pytest.raises(RtmpError):
        server.client.send_metadata({})


def test_metadata_and_video_on_the_stream() -> None:
    server = ScriptedServer()
    server.publishing()
    server.client.send_metadata({"width": 320, "height": 240})
    server.client.send_video(0, b"\x17\x00\x00\x00\x00config")
    server.client.send_video(0x1000000, b"\x27\x01\x00\x00\x00" + bytes(10_000))
    data, video_a, video_b = server.received()
    assert (data.type_id, data.stream_id) == (DATA_AMF0, 7)
    assert values(data) == ["@setDataFrame", "onMetaData", {"width": 320.0, "height": 240.0}]
    assert data.body[amf0.encode("@setDataFrame", "onMetaData").__len__()] == amf0.ECMA_ARRAY
    assert (video_a.type_id, video_a.stream_id, video_a.timestamp) == (VIDEO, 7, 0)
    assert (video_b.timestamp, len(video_b.body)) == (0x1000000, 10_005)


def test_audio_on_the_stream_in_a_chunk_stream_of_its_own() -> None:
    server = ScriptedServer()
    server.publishing()
    server.client.send_audio(0, b"\xaf\x00\x11\x90")
    server.client.send_video(0, b"\x17\x00\x00\x00\x00config")
    server.client.send_audio(21, b"\xaf\x01" + bytes(300))
    data = server.client.data_to_send()
    header, video, frame = server.received(data)
    assert (header.type_id, header.stream_id, header.timestamp, header.body) == (
        AUDIO,
        7,
        0,
        b"\xaf\x00\x11\x90",
    )
    assert video.type_id == VIDEO
    assert (frame.type_id, frame.timestamp, len(frame.body)) == (AUDIO, 21, 302)
    assert data[0] & 0x3F == 4 and data[0] >> 6 == 0  # chunk stream 4 (ffmpeg's audio), full header


def test_acknowledges_the_window() -> None:
    server = ScriptedServer()
    server.connected()
    server.send(WINDOW_ACK, struct.pack(">I", 5000), csid=2)
    assert server.received() == []
    server.command("onBWDone", 0, None, "x" * 6000)
    (ack,) = server.received()
    assert ack.type_id == ACK
    assert struct.unpack(">I", ack.body)[0] > 5000  # every byte received, the handshake too


def test_answers_peer_bandwidth_with_its_window_once() -> None:
    server = ScriptedServer()
    server.handshake()
    server.send(PEER_BANDWIDTH, struct.pack(">IB", 2_500_000, 2), csid=2)
    (window,) = server.received()
    assert (window.type_id, struct.unpack(">I", window.body)[0]) == (WINDOW_ACK, 2_500_000)
    server.send(PEER_BANDWIDTH, struct.pack(">IB", 2_500_000, 2), csid=2)
    assert server.received() == []


def test_answers_pings() -> None:
    server = ScriptedServer()
    server.publishing()
    server.send(USER_CONTROL, struct.pack(">HI", 6, 0xDEADBEEF), csid=2)
    (pong,) = server.received()
    assert (pong.type_id, pong.body) == (USER_CONTROL, struct.pack(">HI", 7, 0xDEADBEEF))
    server.send(USER_CONTROL, struct.pack(">HI", 0, 1), csid=2)  # StreamBegin: nothing to say
    assert server.received() == []


def test_messages_in_many_chunks() -> None:
    """A connect result larger than the default chunk size of 128 (ffmpeg's server sends one)."""
    server = ScriptedServer()
    server.handshake()
    info = {"code": "NetConnection.Connect.Success", "description": "d" * 300}
    data = server.writer.message(3, COMMAND_AMF0, 0, 0, amf0.encode("_result", 1, None, info))
    assert len(data) > 3 * 128
    assert server.client.receive_data(data) == [Connected(info)]
    assert [values(m)[0] for m in server.received()] == ["releaseStream", "FCPublish", "createStream"]


def test_honours_the_servers_chunk_size() -> None:
    server = ScriptedServer()
    server.handshake()
    server.send(SET_CHUNK_SIZE, struct.pack(">I", 4096), csid=2)
    server.writer.chunk_size = 4096
    info = {"code": "NetConnection.Connect.Success", "padding": "p" * 3000}
    assert server.command("_result", 1, None, info) == [Connected(info)]


def test_close_unpublishes() -> None:
    server = ScriptedServer()
    server.publishing()
    server.client.close()
    unpublish, delete = server.received()
    assert values(unpublish)[0] == "FCUnpublish" and values(unpublish)[2:] == [None, "key?token=t"]
    assert values(delete)[0] == "deleteStream" and values(delete)[2:] == [None, 7.0]
    assert server.client.closed


def test_end_of_stream() -> None:
    server = ScriptedServer()
    server.publishing()
    assert server.client.receive_data(b"") == [ConnectionClosed("closed by the server")]
    assert server.client.closed


def test_garbage_command_is_an_error() -> None:
    server = ScriptedServer()
    server.handshake()
    with pytest.raises(RtmpError):
        server.send(COMMAND_AMF0, b"\x02\x00\x05conn")


# --- back to back with the ingest's server ------------------------------------------------------


def pump(
    client: RtmpClientConnection, server: RtmpServerConnection, *, bytewise: bool = False
) -> tuple[list[Any], list[Any]]:
    """Exchange bytes until both sides are quiet: (client events, server events)."""
    client_events: list[Any] = []
    server_events: list[Any] = []
    while True:
        to_server, to_client = client.data_to_send(), server.data_to_send()
        if not to_server and not to_client:
            return client_events, server_events
        if bytewise:
            for i in range(len(to_server)):
                server_events += server.receive_data(to_server[i : i + 1])
            for i in range(len(to_client)):
                client_events += client.receive_data(to_client[i : i + 1])
        else:
            server_events += server.receive_data(to_server) if to_server else []
            client_events += client.receive_data(to_client) if to_client else []


@pytest.mark.parametrize("bytewise", [False, True])
def test_publish_to_the_ingest_server(encoded: dict[str, bytes], bytewise: bool) -> None:
    url = parse_rtmp_url("rtmp://127.0.0.1:1935/live/KEY?token=abc")
    client, server = RtmpClientConnection.for_url(url), RtmpServerConnection()
    client_events, server_events = pump(client, server, bytewise=bytewise)
    assert [type(e) for e in client_events] == [Connected]
    assert server_events == [PublishRequested("live", "KEY", 1, "token=abc")]
    assert server.app == "live"
    server.accept_publish(server_events[0])
    client_events, server_events = pump(client, server, bytewise=bytewise)
    assert client_events == [PublishStarted(1, "KEY is now published")] and server_events == []

    # media: metadata, then what the writer makes of real access units, 40 ms apart
    units = access_units(encoded["gop"])
    client.send_metadata({"width": 640, "height": 360, "videocodecid": 7})
    writer = AvcTagWriter()
    for index, unit in enumerate(units):
        for tag in writer.write(annexb(unit)):
            client.send_video(index * 40, tag)
    _, server_events = pump(client, server, bytewise=bytewise)
    assert server_events[0] == MetaData({"width": 640.0, "height": 360.0, "videocodecid": 7.0})
    reader, read = AvcTagReader(), []
    for event in server_events[1:]:
        assert isinstance(event, MediaMessage) and event.kind == VIDEO
        access_unit = reader.read(event.payload)
        if access_unit is not None:
            read.append((event.timestamp, access_unit.data))
    assert read == [(index * 40, annexb(unit)) for index, unit in enumerate(units)]

    # unpublish
    client.close()
    _, server_events = pump(client, server)
    assert [type(e).__name__ for e in server_events] == ["PublishEnded"]


def test_refused_by_the_ingest_server() -> None:
    client = RtmpClientConnection.for_url(parse_rtmp_url("rtmp://127.0.0.1/live/bad"))
    server = RtmpServerConnection()
    _, (request,) = pump(client, server)
    server.reject_publish(request, "unknown, used or expired stream key")
    client_events, _ = pump(client, server)
    assert client_events == [
        Refused("publish", "NetStream.Publish.BadName", "unknown, used or expired stream key")
    ]
