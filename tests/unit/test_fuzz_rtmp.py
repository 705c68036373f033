"""Property tests of the RTMP decoders (chunks, AMF0, FLV) against hostile bytes.

For any bytes each decoder returns or raises its own error (Amf0Error, RtmpError, FlvError),
never anything else, and what it buffers stays under its documented bounds. Where an
encoder exists, what it writes reads back the same. Budget: the Hypothesis profile
(tests/unit/conftest.py): "ci" in the suite, "fuzz" in scripts/fuzz.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.media import h264
from gateway.media.rtmp import amf0, chunks, flv
from gateway.media.rtmp.chunks import HANDSHAKE_SIZE, ChunkReader, ChunkWriter, RtmpError
from gateway.media.rtmp.client import RtmpClientConnection
from gateway.media.rtmp.protocol import MediaMessage, PublishRequested, RtmpServerConnection

# --- strategies -----------------------------------------------------------------------------

# Values the AMF0 encoder takes: keys and strings of any text, numbers of any float.
amf_scalars = st.none() | st.booleans() | st.floats() | st.text(max_size=40)
amf_values = st.recursive(
    amf_scalars,
    lambda inner: (
        st.dictionaries(st.text(max_size=12), inner, max_size=5)
        | st.dictionaries(st.text(max_size=12), inner, max_size=5).map(amf0.EcmaArray)
    ),
    max_leaves=20,
)


def amf_equal(a: Any, b: Any) -> bool:
    """Equality as AMF0 has it: NaN is NaN, an ECMA array reads back as a dict."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(amf_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# AMF0 bodies that are almost valid: a valid encoding with bytes flipped, cut or appended.
@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[pos] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


amf_bodies = st.binary(max_size=300) | mutated(
    st.lists(amf_values, max_size=4).map(lambda v: amf0.encode(*v))
)


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given positions (taken modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


# --- AMF0 -----------------------------------------------------------------------------------


@given(amf_bodies)
@example(b"\x0a\xff\xff\xff\xff")  # a strict array claiming 4 billion items
@example(b"\x03" * 40)  # objects nested past MAX_DEPTH
@example(b"\x08\x00\x00\x00\x01")  # an ECMA array with its properties cut off
def test_amf0_decode_raises_only_amf0_error(data: bytes) -> None:
    try:
        values = amf0.decode_all(data)
    except amf0.Amf0Error:
        return
    assert isinstance(values, list)


@given(st.lists(amf_values, max_size=5))
def test_amf0_round_trip(values: list[Any]) -> None:
    decoded = amf0.decode_all(amf0.encode(*values))
    assert len(decoded) == len(values)
    assert all(amf_equal(v, d) for v, d in zip(values, decoded, strict=True))
    # What was decoded encodes again to the same values (ECMA arrays are plain objects now).
    again = amf0.decode_all(amf0.encode(*decoded))
    assert all(amf_equal(d, a) for d, a in zip(decoded, again, strict=True))


@given(st.text(min_size=1, max_size=20), st.integers(0, 40))
def test_amf0_long_strings_round_trip(text: str, extra: int) -> None:
    """Strings over 65535 bytes go as LONG_STRING."""
    long = text * (0x10000 // len(text.encode()) + 1) + "x" * extra
    assert len(long.encode()) > 0xFFFF
    assert amf0.decode_all(amf0.encode(long, {"k": long})) == [long, {"k": long}]


# --- chunk streams --------------------------------------------------------------------------

media_type_ids = st.sampled_from(
    [chunks.AUDIO, chunks.VIDEO, chunks.DATA_AMF0, chunks.COMMAND_AMF0, chunks.ACK, chunks.USER_CONTROL]
)
messages = st.tuples(
    st.integers(2, 63),  # csid
    media_type_ids,
    st.integers(0, 0xFFFFFFFF),  # message stream id
    st.integers(0, 0xFFFFFFFF) | st.integers(0xFFFFF0, 0x1000010),  # timestamp, extended ones too
    st.binary(max_size=700),
)


@given(
    st.lists(messages, min_size=1, max_size=8),
    st.integers(1, 1000),
    st.lists(st.integers(0, 10_000), max_size=12),
)
def test_chunk_write_read_round_trip(
    sent: list[tuple[int, int, int, int, bytes]], chunk_size: int, cuts: list[int]
) -> None:
    """Messages cut into chunks of any size (announced with Set Chunk Size) come back whole,
    however the bytes are split on the way."""
    writer = ChunkWriter()
    data = writer.message(2, chunks.SET_CHUNK_SIZE, 0, 0, struct.pack(">I", chunk_size))
    writer.chunk_size = chunk_size
    data += b"".join(writer.message(*m) for m in sent)
    reader, buf, received = ChunkReader(), bytearray(), []
    for piece in splits(data, cuts):
        buf += piece
        while True:
            before = len(buf)
            message = reader.read(buf)
            if message is not None:
                received.append(message)
            if len(buf) == before:
                break
    assert not buf
    assert received[0].type_id == chunks.SET_CHUNK_SIZE and reader.chunk_size == chunk_size
    assert [(m.type_id, m.stream_id, m.timestamp, m.body) for m in received[1:]] == [
        (type_id, stream_id, timestamp, body) for _, type_id, stream_id, timestamp, body in sent
    ]


def reader_pending(reader: ChunkReader) -> int:
    return sum(len(stream.body) for stream in reader._streams.values())


def check_reader_bounds(reader: ChunkReader) -> None:
    assert reader._pending == reader_pending(reader)
    assert len(reader._streams) <= chunks.MAX_CHUNK_STREAMS
    assert reader_pending(reader) <= chunks.MAX_PENDING_BYTES
    assert all(len(stream.body) <= chunks.MAX_MESSAGE_SIZE for stream in reader._streams.values())


def max_leftover(reader: ChunkReader) -> int:
    """The most a connection may keep unparsed: one chunk's header and payload."""
    return 3 + 11 + 4 + min(reader.chunk_size, chunks.MAX_MESSAGE_SIZE)


HANDSHAKE = b"\x03" + bytes(HANDSHAKE_SIZE) + bytes(HANDSHAKE_SIZE)


@st.composite
def chunk_traffic(draw: st.DrawFn) -> bytes:
    """Chunks as a publisher sends them (commands with hostile AMF0, media, Set Chunk Size,
    Abort), some of them damaged, or plain random bytes."""
    writer = ChunkWriter(draw(st.integers(1, 300)))
    out = bytearray()
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["command", "media", "control", "chunk", "random"]))
        csid = draw(st.integers(2, 63))
        if kind == "command":
            name = draw(
                st.sampled_from(["connect", "createStream", "publish", "FCUnpublish", "deleteStream"])
            )
            body = amf0.encode(
                name, draw(st.floats() | st.integers(0, 10)), *draw(st.lists(amf_values, max_size=3))
            )
            type_id = draw(st.sampled_from([chunks.COMMAND_AMF0, chunks.DATA_AMF0]))
            out += writer.message(csid, type_id, 1, 0, draw(mutated(st.just(body))))
        elif kind == "media":
            body = draw(st.binary(max_size=400))
            out += writer.message(csid, draw(media_type_ids), 1, draw(st.integers(0, 0xFFFFFFFF)), body)
        elif kind == "control":
            type_id = draw(st.sampled_from([chunks.SET_CHUNK_SIZE, chunks.ABORT, chunks.WINDOW_ACK]))
            out += writer.message(csid, type_id, 0, 0, draw(st.binary(max_size=6)))
        elif kind == "chunk":  # one chunk with any header type on a few chunk streams
            fmt = draw(st.integers(0, 3))
            out.append(fmt << 6 | draw(st.integers(2, 5)))
            if fmt <= 2:
                out += draw(st.sampled_from([0, 40, 0xFFFFFF])).to_bytes(3, "big")
            if fmt <= 1:
                out += draw(st.integers(0, 400)).to_bytes(3, "big") + bytes([draw(media_type_ids)])
            if fmt == 0:
                out += bytes(4)
            out += draw(st.binary(max_size=200))
        else:
            out += draw(st.binary(max_size=60))
    return bytes(out)


@given(chunk_traffic(), st.lists(st.integers(0, 5000), max_size=10))
@example(b"\x42" + bytes(7), [])  # fmt 1 on a chunk stream that never had a full header
@example(bytes([2]) + bytes(3) + (0x800001).to_bytes(3, "big") + bytes(5), [])  # 8 MiB + 1
@example(bytes([2]) + bytes(3) + b"\x00\x00\x04" + bytes([1]) + bytes(8), [])  # chunk size 0
def test_chunk_reader_raises_only_rtmp_error_and_stays_bounded(data: bytes, cuts: list[int]) -> None:
    reader, buf = ChunkReader(), bytearray()
    try:
        for piece in splits(data, cuts):
            buf += piece
            while True:
                before = len(buf)
                reader.read(buf)
                check_reader_bounds(reader)
                if len(buf) == before:
                    break
            assert len(buf) <= max_leftover(reader)
    except RtmpError:
        pass


def full_chunk(csid: int, type_id: int, body: bytes) -> bytes:
    """A whole message in one fmt 0 chunk on any chunk stream id (2-65599)."""
    if csid < 64:
        basic = bytes([csid])
    elif csid < 320:
        basic = bytes([0, csid - 64])
    else:
        basic = bytes([1, (csid - 64) & 0xFF, (csid - 64) >> 8])
    return basic + bytes(3) + len(body).to_bytes(3, "big") + bytes([type_id]) + bytes(4) + body


def test_chunk_streams_are_bounded_in_number() -> None:
    """A peer opening every chunk stream id made the reader keep state for each (up to 65599):
    refused past MAX_CHUNK_STREAMS, and the connection (which closes on RtmpError) with it."""
    reader = ChunkReader()
    buf = bytearray()
    for csid in range(300, 300 + chunks.MAX_CHUNK_STREAMS):
        buf += full_chunk(csid, chunks.VIDEO, b"x")
    while reader.read(buf) is not None:
        pass
    assert not buf and len(reader._streams) == chunks.MAX_CHUNK_STREAMS
    buf += full_chunk(65599, chunks.VIDEO, b"x")
    with pytest.raises(RtmpError, match="chunk streams"):
        reader.read(buf)
    # The ones it knows still work.
    buf[:] = full_chunk(300, chunks.VIDEO, b"y")
    assert reader.read(buf) == chunks.Message(chunks.VIDEO, 0, 0, b"y")


def test_a_header_shortening_the_message_under_way_is_refused() -> None:
    """Found by test_server_connection_raises_only_rtmp_error: a fmt 1 header on a chunk
    stream with 128 of 300 bytes received, saying 10, made a chunk of -118 bytes: the reader
    returned a message without consuming its chunk. Now RtmpError (the connection closes)."""
    reader, buf = ChunkReader(), bytearray()
    buf += bytes([3]) + bytes(3) + (300).to_bytes(3, "big") + bytes([chunks.VIDEO]) + bytes(4) + b"a" * 128
    assert reader.read(buf) is None and not buf
    buf += bytes([0x40 | 3]) + bytes(3) + (10).to_bytes(3, "big") + bytes([chunks.VIDEO]) + b"b" * 40
    with pytest.raises(RtmpError, match="shortens"):
        reader.read(buf)


def test_partial_messages_are_bounded_in_total() -> None:
    """Many chunk streams each holding most of a large message: refused past the total."""
    reader = ChunkReader(max_pending_bytes=10_000)
    writer = ChunkWriter(4000)
    buf = bytearray()
    buf += writer.message(2, chunks.SET_CHUNK_SIZE, 0, 0, struct.pack(">I", 4000))
    assert reader.read(buf) is not None
    for csid in (3, 4):
        # The first chunk of a 5000-byte message: 4000 bytes of it stay pending.
        buf += writer.message(csid, chunks.VIDEO, 1, 0, bytes(5000))[: 12 + 4000]
        assert reader.read(buf) is None
    assert reader_pending(reader) == 8000
    buf += writer.message(5, chunks.VIDEO, 1, 0, bytes(5000))[: 12 + 4000]
    with pytest.raises(RtmpError, match="pending"):
        reader.read(buf)


# --- whole connections ----------------------------------------------------------------------


@given(st.binary(max_size=200) | chunk_traffic().map(lambda d: HANDSHAKE + d), st.lists(st.integers(0, 9000)))
@example(
    HANDSHAKE + ChunkWriter().message(3, chunks.COMMAND_AMF0, 0, 0, amf0.encode("connect", float("nan"))), []
)
def test_server_connection_raises_only_rtmp_error(data: bytes, cuts: list[int]) -> None:
    conn = RtmpServerConnection()
    try:
        for piece in splits(data, cuts):
            conn.receive_data(piece)
            conn.data_to_send()
            check_reader_bounds(conn._chunks)
            if conn._phase.name == "CHUNKS":
                assert len(conn._buffer) <= max_leftover(conn._chunks)
            else:
                assert len(conn._buffer) <= 1 + HANDSHAKE_SIZE
            if conn._requested is not None and conn.publishing is None:
                conn.accept_publish(conn._requested)
        conn.receive_data(b"")
    except RtmpError:
        pass


def command(csid: int, stream_id: int, *values: Any) -> bytes:
    return ChunkWriter().message(csid, chunks.COMMAND_AMF0, stream_id, 0, amf0.encode(*values))


@st.composite
def publish_session(draw: st.DrawFn) -> list[bytes]:
    """A publish as ffmpeg does it (connect, createStream, publish, metadata, FLV tags), with
    a few things changed: messages left out, repeated, damaged or replaced by other chunks."""
    writer = ChunkWriter()
    metadata = draw(st.dictionaries(st.sampled_from(["width", "audiocodecid", "framerate", "x"]), amf_values))
    script = [
        command(3, 0, "connect", 1.0, {"app": "live", "tcUrl": "rtmp://127.0.0.1/live"}),
        command(3, 0, "createStream", 2.0, None),
        command(8, 1, "publish", 3.0, None, draw(st.sampled_from(["key", "key?token=x", ""])), "live"),
        writer.message(
            5, chunks.DATA_AMF0, 1, 0, amf0.encode("@setDataFrame", "onMetaData", amf0.EcmaArray(metadata))
        ),
    ]
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from([chunks.VIDEO, chunks.AUDIO]))
        if kind == chunks.VIDEO:
            tag = draw(
                st.sampled_from([b"\x17\x00\x00\x00\x00", b"\x17\x01\x00\x00\x00", b"\x27\x01\x00\x00\x00"])
            )
        else:
            tag = draw(st.sampled_from([b"\xaf\x00", b"\xaf\x01", b"\x72", b"\x82"]))
        body = tag + draw(st.binary(max_size=60))
        script.append(
            writer.message(6 if kind == chunks.VIDEO else 4, kind, 1, draw(st.integers(0, 10**6)), body)
        )
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(script) - 1))
        action = draw(st.sampled_from(["drop", "repeat", "insert", "damage"]))
        if action == "drop":
            del script[pos]
        elif action == "repeat":
            script.insert(pos, script[pos])
        elif action == "insert":
            script.insert(pos, draw(chunk_traffic()))
        else:
            script[pos] = draw(mutated(st.just(script[pos])))
        if not script:
            break
    script.append(command(8, 1, draw(st.sampled_from(["FCUnpublish", "deleteStream"])), 4.0, None, "key"))
    return script


@given(publish_session())
@example([command(3, 0, "connect", 1.0, {"app": "live"}), command(8, 1, "publish", 2.0, None, "k")] * 2)
def test_a_publish_session_raises_only_its_errors(script: list[bytes]) -> None:
    """What a publisher sends, through the server connection and the FLV readers as the RTMP
    source reads it: events, or RtmpError (then close); FlvError for a bad tag."""
    conn, video = RtmpServerConnection(), flv.AvcTagReader()
    conn.receive_data(HANDSHAKE)
    try:
        for item in script:
            for event in conn.receive_data(item):
                if isinstance(event, PublishRequested):
                    conn.accept_publish(event)
                elif isinstance(event, MediaMessage):
                    try:
                        if event.kind == chunks.VIDEO:
                            video.read(event.payload)
                        else:
                            flv.read_audio_tag(event.payload)
                    except flv.FlvError:
                        pass
            conn.data_to_send()
            check_reader_bounds(conn._chunks)
    except RtmpError:
        pass


def server_reply(*values: Any) -> bytes:
    return ChunkWriter().message(3, chunks.COMMAND_AMF0, 0, 0, amf0.encode(*values))


@given(
    st.binary(max_size=200) | chunk_traffic().map(lambda d: HANDSHAKE + d),
    st.lists(st.integers(0, 9000)),
)
@example(HANDSHAKE + server_reply("_result", float("nan"), None, None), [])
@example(HANDSHAKE + server_reply("_result", float("inf"), None, None), [])
@example(
    HANDSHAKE + server_reply("_result", 1.0, None, None) + server_reply("_result", 4.0, None, float("nan")),
    [],
)
@example(HANDSHAKE + server_reply("_result", 1.0, None, None) + server_reply("_result", 4.0, None, 1e300), [])
def test_client_connection_raises_only_rtmp_error(data: bytes, cuts: list[int]) -> None:
    """The publishing client reads what a (possibly hostile) server sends."""
    conn = RtmpClientConnection("live", "rtmp://127.0.0.1/live", "key")
    try:
        for piece in splits(data, cuts):
            conn.receive_data(piece)
            conn.data_to_send()
            check_reader_bounds(conn._reader)
            if conn.state.name != "HANDSHAKE":
                assert len(conn._buffer) <= max_leftover(conn._reader)
            else:
                assert len(conn._buffer) < 1 + 2 * HANDSHAKE_SIZE
        conn.receive_data(b"")
    except RtmpError:
        pass


# --- FLV --------------------------------------------------------------------------------------


@given(st.binary(max_size=300))
@example(bytes([0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1F, 0xFF, 0xE1, 0, 0]))  # an empty SPS in a record
@example(bytes([0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1F, 0xFF, 0xE0, 1]))  # a PPS count, no PPS
@example(bytes([0x17, 1, 0, 0, 0, 0, 0, 0, 0]))  # a NAL unit of length 0
def test_avc_tag_reader_raises_only_flv_error(data: bytes) -> None:
    reader = flv.AvcTagReader()
    for tag in (
        data,
        bytes([0x17]) + data[1:],
        bytes([0x17, 0, 0, 0, 0]) + data,
        bytes([0x27, 1, 0, 0, 0]) + data,
    ):
        try:
            unit = reader.read(tag)
        except flv.FlvError:
            continue
        assert unit is None or isinstance(unit.data, bytes)


@given(st.binary(max_size=100))
@example(b"")
@example(b"\x70")
@example(b"\xa0")
def test_audio_tag_readers_raise_only_flv_error(data: bytes) -> None:
    for read in (flv.read_audio_tag, flv.read_aac_tag):
        for tag in (data, bytes([0xAF]) + data, bytes([0x72]) + data):
            try:
                read(tag)
            except flv.FlvError:
                pass


def nal(kind: int, body: bytes) -> bytes:
    """A NAL unit of ``kind`` with ``body`` made safe for Annex-B (no start code inside, a
    non-zero last byte as the RBSP trailing bits give)."""
    return bytes([0x60 | kind]) + h264.add_emulation_prevention(body) + b"\x80"


nal_bodies = st.binary(min_size=3, max_size=120)
slices = st.lists(nal_bodies.map(lambda b: nal(1, b)), min_size=1, max_size=3)
keyframes = st.tuples(nal_bodies, nal_bodies, st.lists(nal_bodies, min_size=1, max_size=2)).map(
    lambda t: [nal(h264.NAL_SPS, t[0]), nal(h264.NAL_PPS, t[1]), *(nal(h264.NAL_IDR, b) for b in t[2])]
)


@given(keyframes, st.lists(slices | keyframes, max_size=6))
def test_avc_tags_round_trip(first: list[bytes], rest: list[list[bytes]]) -> None:
    """Access units written as FLV tags read back byte for byte, keyframe flag and all."""
    writer, reader = flv.AvcTagWriter(), flv.AvcTagReader()
    for units in [first, *rest]:
        access_unit = b"".join(h264.START_CODE + n for n in units)
        read = [reader.read(tag) for tag in writer.write(access_unit)]
        got = [unit for unit in read if unit is not None]
        assert len(got) == 1
        assert got[0].data == access_unit
        assert got[0].keyframe == (h264.NAL_IDR in h264.nal_types(access_unit))


@given(st.lists(st.tuples(st.binary(min_size=2, max_size=5), st.binary(max_size=50)), max_size=6))
def test_aac_tags_round_trip(frames: list[tuple[bytes, bytes]]) -> None:
    writer = flv.AacTagWriter()
    config: bytes | None = None
    for asc, frame in frames:
        for tag in writer.write(asc, frame):
            read = flv.read_audio_tag(tag)
            if isinstance(read, flv.AacConfig):
                config = read.audio_specific_config
            else:
                assert read == flv.AacFrame(frame)
        assert config == asc
