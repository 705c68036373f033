"""RTMP chunk streams (Adobe RTMP 1.0, 5.3 and 5.4), both directions, sans I/O.

`ChunkReader` reassembles messages from chunks of any size on any chunk stream, with
extended timestamps, and applies the chunk-layer control messages (Set Chunk Size, Abort)
itself. What it holds is bounded: at most MAX_CHUNK_STREAMS chunk streams, and
``max_pending_bytes`` of unfinished messages across them (RtmpError past either).
`ChunkWriter` cuts messages into chunks. The server (protocol.py) and the publishing client
(client.py) share both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HANDSHAKE_SIZE = 1536
DEFAULT_CHUNK_SIZE = 128
MAX_CHUNK_SIZE = 0xFFFFFF
MAX_MESSAGE_SIZE = 8 * 1024 * 1024  # a single video frame larger than this is an attack
EXTENDED_TIMESTAMP = 0xFFFFFF
# Encoders use a handful of chunk stream ids (ffmpeg 2-8, OBS 2-6); the protocol allows 65599,
# each with its own state and unfinished message. nginx-rtmp refuses ids past 32 (max_streams).
MAX_CHUNK_STREAMS = 64
# Unfinished messages across all chunk streams: one frame at the limit and its audio, twice.
MAX_PENDING_BYTES = 2 * MAX_MESSAGE_SIZE

# message types
SET_CHUNK_SIZE, ABORT, ACK, USER_CONTROL, WINDOW_ACK, PEER_BANDWIDTH = 1, 2, 3, 4, 5, 6
AUDIO, VIDEO, DATA_AMF3, COMMAND_AMF3, DATA_AMF0, COMMAND_AMF0 = 8, 9, 15, 17, 18, 20


class RtmpError(Exception):
    """The peer broke the protocol; the connection should be closed."""


@dataclass(frozen=True, slots=True)
class Message:
    """One reassembled RTMP message."""

    type_id: int
    stream_id: int
    timestamp: int  # milliseconds, 32 bits
    body: bytes


@dataclass
class _ChunkStream:
    timestamp: int = 0
    delta: int = 0
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    extended: bool = False
    body: bytearray = field(default_factory=bytearray)


class ChunkReader:
    def __init__(self, *, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.max_pending_bytes = max_pending_bytes
        self._streams: dict[int, _ChunkStream] = {}
        self._pending = 0  # bytes of unfinished messages, all chunk streams together

    def read(self, buf: bytearray) -> Message | None:
        """Consume one complete chunk from the front of ``buf`` if it is all there; return the
        message it completes, if any. The caller sees whether ``buf`` shrank."""
        if not buf:
            return None
        fmt, csid, pos = buf[0] >> 6, buf[0] & 0x3F, 1
        if csid == 0:
            if len(buf) < 2:
                return None
            csid, pos = 64 + buf[1], 2
        elif csid == 1:
            if len(buf) < 3:
                return None
            csid, pos = 64 + buf[1] + buf[2] * 256, 3
        header_size = (11, 7, 3, 0)[fmt]
        if len(buf) < pos + header_size:
            return None
        stream = self._streams.get(csid)
        if stream is None:
            if fmt != 0:
                raise RtmpError(f"chunk stream {csid} starts without a full header")
            # Bounded since the property tests (test_fuzz_rtmp): each id kept state, up to
            # 65599 of them per connection.
            if len(self._streams) >= MAX_CHUNK_STREAMS:
                raise RtmpError(f"more than {MAX_CHUNK_STREAMS} chunk streams")
            stream = self._streams[csid] = _ChunkStream()
        header = buf[pos : pos + header_size]
        pos += header_size
        new_message = not stream.body
        timestamp_field = None
        if fmt <= 2:
            timestamp_field = int.from_bytes(header[0:3], "big")
        extended = stream.extended if fmt == 3 else timestamp_field == EXTENDED_TIMESTAMP
        if extended:
            if len(buf) < pos + 4:
                return None
            timestamp_field = int.from_bytes(buf[pos : pos + 4], "big")
            pos += 4
        length, type_id, stream_id = stream.length, stream.type_id, stream.stream_id
        if fmt <= 1:
            length = int.from_bytes(header[3:6], "big")
            type_id = header[6]
            if length > MAX_MESSAGE_SIZE:
                raise RtmpError(f"message of {length} bytes is over the limit")
            if length < len(stream.body):
                # Found by the property tests (test_fuzz_rtmp): a header shortening the message
                # under way gave a negative chunk, taken from bytes that were never consumed.
                raise RtmpError(f"chunk stream {csid}: a header shortens the message under way")
        if fmt == 0:
            stream_id = int.from_bytes(header[7:11], "little")
        need = min(self.chunk_size, length - len(stream.body))
        if len(buf) < pos + need:
            return None
        if need < length - len(stream.body) and self._pending + need > self.max_pending_bytes:
            # Bounded since the property tests (test_fuzz_rtmp): every chunk stream could hold
            # most of an 8 MiB message at once.
            raise RtmpError(f"over {self.max_pending_bytes} bytes of messages pending")
        # The whole chunk is here: commit the header, then take the payload.
        stream.extended = extended
        stream.length, stream.type_id, stream.stream_id = length, type_id, stream_id
        if new_message and timestamp_field is not None:
            if fmt == 0:
                # A fmt 3 chunk that follows repeats this as its delta (RTMP 5.3.1.2.4).
                stream.timestamp = stream.delta = timestamp_field
            else:
                stream.delta = timestamp_field
                stream.timestamp = (stream.timestamp + stream.delta) & 0xFFFFFFFF
        elif new_message:  # fmt 3 starting a new message: repeat the last delta
            stream.timestamp = (stream.timestamp + stream.delta) & 0xFFFFFFFF
        stream.body += buf[pos : pos + need]
        del buf[: pos + need]
        if len(stream.body) < stream.length:
            self._pending += need
            return None
        self._pending -= len(stream.body) - need
        body, stream.body = bytes(stream.body), bytearray()
        message = Message(stream.type_id, stream.stream_id, stream.timestamp, body)
        self._control(message)
        return message

    def _control(self, message: Message) -> None:
        """Set Chunk Size and Abort belong to the chunk layer: apply them here."""
        body = message.body
        if message.type_id == SET_CHUNK_SIZE:
            if len(body) < 4:
                raise RtmpError("short Set Chunk Size")
            size = int.from_bytes(body[:4], "big") & 0x7FFFFFFF
            if size == 0:
                raise RtmpError("chunk size 0")
            # Any size above the largest message length behaves the same (RTMP 5.4.1).
            self.chunk_size = min(size, MAX_CHUNK_SIZE)
        elif message.type_id == ABORT and len(body) >= 4:
            aborted = self._streams.get(int.from_bytes(body[:4], "big"))
            if aborted is not None:
                self._pending -= len(aborted.body)
                aborted.body = bytearray()


class ChunkWriter:
    """Cuts messages into chunks of ``chunk_size``: a full (fmt 0) header, then fmt 3
    continuations. Announcing a new size to the peer (Set Chunk Size) is the caller's job."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size

    def message(self, csid: int, type_id: int, stream_id: int, timestamp: int, body: bytes) -> bytes:
        if not 2 <= csid < 64:
            raise ValueError(f"chunk stream id {csid} is not one of the one-byte ids 2-63")
        timestamp &= 0xFFFFFFFF
        extended = timestamp >= EXTENDED_TIMESTAMP
        field_value = EXTENDED_TIMESTAMP if extended else timestamp
        # An extended timestamp is repeated in every continuation chunk (RTMP 5.3.1.3), as
        # ffmpeg, librtmp and our own reader expect.
        ext = timestamp.to_bytes(4, "big") if extended else b""
        out = bytearray([csid])
        out += field_value.to_bytes(3, "big") + len(body).to_bytes(3, "big") + bytes([type_id])
        out += stream_id.to_bytes(4, "little") + ext
        size = self.chunk_size
        out += body[:size]
        for offset in range(size, len(body), size):
            out.append(0xC0 | csid)
            out += ext
            out += body[offset : offset + size]
        return bytes(out)
