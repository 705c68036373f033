"""The server side of an RTMP publishing connection, sans I/O (in the style of h11).

Feed it bytes with `receive_data`; it returns `Event`s (a publish request with its app and
stream key, media messages, the end of a publish) and queues its own bytes (handshake,
control messages, command replies) for `data_to_send`. It handles the simple handshake,
chunk streams of any chunk size, extended timestamps, AMF0 commands and acknowledgements.
Whether a publish is allowed is the caller's decision: `accept_publish` / `reject_publish`.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass
from typing import Any

from gateway.media.rtmp import amf0
from gateway.media.rtmp.chunks import (
    ABORT,
    ACK,
    AUDIO,
    COMMAND_AMF0,
    COMMAND_AMF3,
    DATA_AMF0,
    DATA_AMF3,
    HANDSHAKE_SIZE,
    MAX_CHUNK_SIZE,
    MAX_MESSAGE_SIZE,
    PEER_BANDWIDTH,
    SET_CHUNK_SIZE,
    USER_CONTROL,
    VIDEO,
    WINDOW_ACK,
    ChunkReader,
    ChunkWriter,
    RtmpError,
)

__all__ = [
    "ABORT",
    "ACK",
    "AUDIO",
    "COMMAND_AMF0",
    "COMMAND_AMF3",
    "DATA_AMF0",
    "DATA_AMF3",
    "HANDSHAKE_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_MESSAGE_SIZE",
    "OUT_CHUNK_SIZE",
    "PEER_BANDWIDTH",
    "SET_CHUNK_SIZE",
    "USER_CONTROL",
    "VIDEO",
    "WINDOW_ACK",
    "WINDOW_ACK_SIZE",
    "Event",
    "MediaMessage",
    "MetaData",
    "PublishEnded",
    "PublishRequested",
    "RtmpError",
    "RtmpServerConnection",
]

OUT_CHUNK_SIZE = 4096
WINDOW_ACK_SIZE = 2_500_000


@dataclass(frozen=True, slots=True)
class PublishRequested:
    app: str
    key: str
    stream_id: int
    query: str = ""  # after "?" in the publish name (a token, for example)


@dataclass(frozen=True, slots=True)
class MediaMessage:
    kind: int  # AUDIO or VIDEO
    timestamp: int  # milliseconds
    payload: bytes


@dataclass(frozen=True, slots=True)
class MetaData:
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PublishEnded:
    reason: str


Event = PublishRequested | MediaMessage | MetaData | PublishEnded


class _Phase(enum.Enum):
    C0C1 = 1
    C2 = 2
    CHUNKS = 3
    CLOSED = 4


class RtmpServerConnection:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._out = bytearray()
        self._phase = _Phase.C0C1
        self._chunks = ChunkReader()
        self._writer = ChunkWriter(OUT_CHUNK_SIZE)
        self._received = 0
        self._acked = 0
        self._window = WINDOW_ACK_SIZE
        self.app = ""
        self.publishing: PublishRequested | None = None
        self._requested: PublishRequested | None = None  # awaiting accept/reject

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    @property
    def closed(self) -> bool:
        return self._phase is _Phase.CLOSED

    @property
    def handshake_done(self) -> bool:
        """C0, C1 and C2 received: chunks may follow."""
        return self._phase is _Phase.CHUNKS

    def receive_data(self, data: bytes) -> list[Event]:
        """Bytes from the peer (b"" at end of stream). Raises RtmpError on a violation."""
        if self._phase is _Phase.CLOSED:
            return []
        if not data:
            self._phase = _Phase.CLOSED
            return [PublishEnded("connection closed")] if self.publishing else []
        self._buffer += data
        self._received += len(data)
        events: list[Event] = []
        while True:
            before = len(self._buffer)
            if self._phase is _Phase.C0C1:
                self._handshake_c0c1()
            elif self._phase is _Phase.C2:
                if len(self._buffer) >= HANDSHAKE_SIZE:
                    del self._buffer[:HANDSHAKE_SIZE]
                    self._phase = _Phase.CHUNKS
            elif self._phase is _Phase.CHUNKS:
                events += self._chunk()
            if len(self._buffer) == before or self._phase is _Phase.CLOSED:
                break
        self._acknowledge()
        return events

    # --- handshake --------------------------------------------------------------------------

    def _handshake_c0c1(self) -> None:
        if len(self._buffer) < 1 + HANDSHAKE_SIZE:
            return
        if self._buffer[0] != 3:
            raise RtmpError(f"unsupported RTMP version {self._buffer[0]} (RTMPE/RTMPT are not served)")
        c1 = bytes(self._buffer[1 : 1 + HANDSHAKE_SIZE])
        del self._buffer[: 1 + HANDSHAKE_SIZE]
        # Simple handshake: S1 = time, zero, random; S2 echoes C1.
        s1 = b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00" + os.urandom(HANDSHAKE_SIZE - 8)
        self._out += b"\x03" + s1 + c1
        self._phase = _Phase.C2

    # --- chunks -----------------------------------------------------------------------------

    def _chunk(self) -> list[Event]:
        """Consume one complete chunk if buffered; return the events of a completed message."""
        message = self._chunks.read(self._buffer)
        if message is None:
            return []
        return self._message(message.type_id, message.stream_id, message.timestamp, message.body)

    # --- messages ---------------------------------------------------------------------------

    def _message(self, type_id: int, stream_id: int, timestamp: int, body: bytes) -> list[Event]:
        # Set Chunk Size and Abort were applied by the chunk reader.
        if type_id == WINDOW_ACK and len(body) >= 4:
            self._window = max(1, int.from_bytes(body[:4], "big"))
        elif type_id in (VIDEO, AUDIO):
            if self.publishing is not None:
                return [MediaMessage(type_id, timestamp, body)]
        elif type_id in (DATA_AMF0, DATA_AMF3):
            return self._data(body[1:] if type_id == DATA_AMF3 else body)
        elif type_id in (COMMAND_AMF0, COMMAND_AMF3):
            return self._command(stream_id, body[1:] if type_id == COMMAND_AMF3 else body)
        return []  # ACK, ABORT, USER_CONTROL, PEER_BANDWIDTH: nothing to do for a publisher

    def _data(self, body: bytes) -> list[Event]:
        try:
            values = amf0.decode_all(body)
        except amf0.Amf0Error:
            return []  # metadata is informational: a bad one is not worth a disconnect
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            return [MetaData(values[1])]
        return []

    def _command(self, stream_id: int, body: bytes) -> list[Event]:
        try:
            values = amf0.decode_all(body)
        except amf0.Amf0Error as exc:
            raise RtmpError(f"bad command: {exc}") from None
        if len(values) < 2 or not isinstance(values[0], str):
            raise RtmpError("command without a name and transaction id")
        name, txid = values[0], values[1] if isinstance(values[1], int | float) else 0
        args = values[2:]
        if name == "connect":
            command = args[0] if args and isinstance(args[0], dict) else {}
            self.app = str(command.get("app", "")).strip("/")
            self._send(WINDOW_ACK, 2, 0, struct.pack(">I", WINDOW_ACK_SIZE))
            self._send(PEER_BANDWIDTH, 2, 0, struct.pack(">IB", WINDOW_ACK_SIZE, 2))
            self._send(SET_CHUNK_SIZE, 2, 0, struct.pack(">I", OUT_CHUNK_SIZE))
            self._result(
                txid,
                {"fmsVer": "FMS/3,0,1,123", "capabilities": 31},
                {
                    "level": "status",
                    "code": "NetConnection.Connect.Success",
                    "description": "Connection succeeded.",
                    "objectEncoding": 0,
                },
            )
        elif name == "createStream":
            self._result(txid, None, 1)
        elif name in ("releaseStream", "FCPublish", "FCUnpublish"):
            if name == "FCUnpublish" and self.publishing is not None:
                return self._end("unpublished")
            self._result(txid, None, None)
        elif name == "publish":
            key = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            if self.publishing is not None or self._requested is not None:
                raise RtmpError("a second publish on one connection")
            key, _, query = key.partition("?")
            self._requested = PublishRequested(self.app, key, stream_id or 1, query)
            return [self._requested]
        elif name in ("deleteStream", "closeStream") and self.publishing is not None:
            return self._end("unpublished")
        return []

    def accept_publish(self, request: PublishRequested) -> None:
        self.publishing = request
        self._on_status(
            request.stream_id, "status", "NetStream.Publish.Start", f"{request.key} is now published"
        )

    def reject_publish(self, request: PublishRequested, description: str) -> None:
        self._requested = None
        self._on_status(request.stream_id, "error", "NetStream.Publish.BadName", description)
        self._phase = _Phase.CLOSED

    def _end(self, reason: str) -> list[Event]:
        self.publishing = None
        return [PublishEnded(reason)]

    # --- output -----------------------------------------------------------------------------

    def _result(self, txid: float, properties: Any, information: Any) -> None:
        self._send(COMMAND_AMF0, 3, 0, amf0.encode("_result", txid, properties, information))

    def _on_status(self, stream_id: int, level: str, code: str, description: str) -> None:
        info = {"level": level, "code": code, "description": description}
        self._send(COMMAND_AMF0, 5, stream_id, amf0.encode("onStatus", 0, None, info))

    def _acknowledge(self) -> None:
        if self._received - self._acked >= self._window:
            self._acked = self._received
            self._send(ACK, 2, 0, struct.pack(">I", self._received & 0xFFFFFFFF))

    def _send(self, type_id: int, csid: int, stream_id: int, body: bytes) -> None:
        """One message in chunks of OUT_CHUNK_SIZE (timestamp 0: control and commands)."""
        self._out += self._writer.message(csid, type_id, stream_id, 0, body)
