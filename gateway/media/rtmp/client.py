"""The client side of an RTMP publishing connection, sans I/O (in the style of h11).

It speaks first: `data_to_send` holds C0/C1 from the start. Feed it the server's bytes with
`receive_data`; it answers the handshake, connects (``app``, ``tcUrl``), sends
``releaseStream``/``FCPublish``/``createStream`` and ``publish``, and returns `Event`s:
`Connected`, `PublishStarted` (media may flow from then on: `send_metadata`, `send_video`,
`send_audio`),
`Refused` when the server says no (``NetStream.Publish.BadName``, a failed connect, an
``_error``), `StatusReceived` for other ``onStatus`` messages and `ConnectionClosed` at the
end of the stream. It acknowledges what it received, answers pings and honours the
server's Set Chunk Size; `close` unpublishes politely.
"""

from __future__ import annotations

import enum
import math
import os
import struct
import urllib.parse
from dataclasses import dataclass
from typing import Any

from gateway.media.rtmp import amf0
from gateway.media.rtmp.chunks import (
    ACK,
    AUDIO,
    COMMAND_AMF0,
    COMMAND_AMF3,
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

DEFAULT_PORT = 1935
DEFAULT_TLS_PORT = 443
OUT_CHUNK_SIZE = 4096  # what ffmpeg and OBS use: a 30 kB keyframe in 8 chunks, not 240
WINDOW_ACK_SIZE = 2_500_000
FLASH_VERSION = "FMLE/3.0 (compatible; skyrelay)"

# Chunk stream ids: control, commands, audio, data, video, stream commands (ffmpeg's numbering).
CONTROL_CSID, COMMAND_CSID, AUDIO_CSID, DATA_CSID, VIDEO_CSID, STREAM_CSID = 2, 3, 4, 5, 6, 8

# User control events (RTMP 7.1.7)
PING_REQUEST, PING_RESPONSE = 6, 7


# --- URLs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RtmpUrl:
    """Where to publish: ``rtmp[s]://host[:port]/app/name[?query]``."""

    host: str
    port: int
    tls: bool
    app: str
    name: str  # the publish name with any query (a stream key, a token)

    @property
    def tc_url(self) -> str:
        scheme = "rtmps" if self.tls else "rtmp"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/{self.app}"

    @property
    def redacted(self) -> str:
        """The URL without its stream key: keys are secrets, listings and logs are not."""
        return f"{self.tc_url}/{'***' if self.name else ''}"


def parse_rtmp_url(url: str, default_name: str = "") -> RtmpUrl:
    """``rtmp://host[:port]/app/streamkey`` (or ``rtmps://``; the app is the first path
    segment, the rest is the publish name, query included). Without a name after the app,
    ``default_name`` is published. Raises ValueError for anything else."""
    if not isinstance(url, str) or len(url) > 4096:
        raise ValueError("the RTMP URL must be a string of at most 4096 characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("rtmp", "rtmps"):
        raise ValueError(f"not an rtmp:// or rtmps:// URL: {url[:100]!r}")
    if not parts.hostname:
        raise ValueError("the RTMP URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("user names and passwords in RTMP URLs are not supported; use the stream key")
    if parts.fragment:
        raise ValueError("an RTMP URL has no fragment (#...)")
    app, _, name = parts.path.strip("/").partition("/")
    app = urllib.parse.unquote(app)
    name = urllib.parse.unquote(name) or default_name
    if not app:
        raise ValueError("the RTMP URL has no application: rtmp://host/app/streamkey")
    if not name:
        raise ValueError("the RTMP URL has no stream key: rtmp://host/app/streamkey")
    if parts.query:
        name += "?" + parts.query
    tls = scheme == "rtmps"
    return RtmpUrl(parts.hostname, port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT), tls, app, name)


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """``connect`` succeeded (``NetConnection.Connect.Success``)."""

    info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PublishStarted:
    """``NetStream.Publish.Start``: media may be sent."""

    stream_id: int
    description: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The server said no to ``command`` (connect, createStream, publish, ...): the
    connection is of no further use."""

    command: str
    code: str
    description: str

    def __str__(self) -> str:
        text = f"{self.command} refused: {self.code or 'error'}"
        return f"{text} ({self.description})" if self.description else text


@dataclass(frozen=True, slots=True)
class StatusReceived:
    """Any other ``onStatus`` (``NetStream.Publish.Idle``, ``NetStream.Unpublish.Success``)."""

    level: str
    code: str
    description: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    reason: str


Event = Connected | PublishStarted | Refused | StatusReceived | ConnectionClosed


class ClientState(enum.Enum):
    HANDSHAKE = "handshake"  # C0/C1 sent, waiting for S0/S1/S2
    CONNECTING = "connecting"  # connect sent
    CREATING_STREAM = "creating stream"  # releaseStream/FCPublish/createStream sent
    PUBLISH_REQUESTED = "publish requested"  # publish sent, waiting for onStatus
    PUBLISHING = "publishing"
    CLOSED = "closed"


class RtmpClientConnection:
    def __init__(self, app: str, tc_url: str, name: str, *, flash_version: str = FLASH_VERSION) -> None:
        self.app, self.tc_url, self.name = app, tc_url, name
        self.flash_version = flash_version
        self.state = ClientState.HANDSHAKE
        self.stream_id = 0  # the message stream createStream gave us
        self._buffer = bytearray()
        self._out = bytearray()
        self._reader = ChunkReader()
        self._writer = ChunkWriter()  # 128 until our Set Chunk Size is sent
        self._received = 0
        self._acked = 0
        self._window = WINDOW_ACK_SIZE
        self._announced_window = 0
        self._next_txid = 1
        self._pending: dict[int, str] = {}  # transaction id -> command name
        # Simple handshake (RTMP 5.2): C1 = time, zero, random.
        self._c1 = b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00" + os.urandom(HANDSHAKE_SIZE - 8)
        self._out += b"\x03" + self._c1

    @classmethod
    def for_url(cls, url: RtmpUrl) -> RtmpClientConnection:
        return cls(url.app, url.tc_url, url.name)

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    @property
    def closed(self) -> bool:
        return self.state is ClientState.CLOSED

    @property
    def publishing(self) -> bool:
        return self.state is ClientState.PUBLISHING

    def receive_data(self, data: bytes) -> list[Event]:
        """Bytes from the server (b"" at end of stream). Raises RtmpError on a violation."""
        if self.state is ClientState.CLOSED:
            return []
        if not data:
            self.state = ClientState.CLOSED
            return [ConnectionClosed("closed by the server")]
        self._buffer += data
        self._received += len(data)
        events: list[Event] = []
        if self.state is ClientState.HANDSHAKE:
            self._handshake()
        while self.state is not ClientState.HANDSHAKE and not self.closed:
            before = len(self._buffer)
            message = self._reader.read(self._buffer)
            if message is not None:
                events += self._message(message)
            elif len(self._buffer) == before:
                break  # no whole chunk buffered (a chunk that only continues a message is consumed)
        self._acknowledge()
        return events

    # --- media ------------------------------------------------------------------------------

    def send_metadata(self, values: dict[str, Any]) -> None:
        """``@setDataFrame onMetaData`` (what servers pass on to their players)."""
        self._require_publishing()
        body = amf0.encode("@setDataFrame", "onMetaData", amf0.EcmaArray(values))
        self._out += self._writer.message(DATA_CSID, DATA_AMF0, self.stream_id, 0, body)

    def send_video(self, timestamp: int, tag: bytes) -> None:
        """One FLV video tag body at ``timestamp`` milliseconds."""
        self._require_publishing()
        self._out += self._writer.message(VIDEO_CSID, VIDEO, self.stream_id, timestamp, tag)

    def send_audio(self, timestamp: int, tag: bytes) -> None:
        """One FLV audio tag body at ``timestamp`` milliseconds."""
        self._require_publishing()
        self._out += self._writer.message(AUDIO_CSID, AUDIO, self.stream_id, timestamp, tag)

    def close(self) -> None:
        """Unpublish (FCUnpublish, deleteStream); the caller closes the connection after
        sending what `data_to_send` returns."""
        if self.state is ClientState.PUBLISHING:
            self._command("FCUnpublish", None, self.name)
            self._command("deleteStream", None, self.stream_id)
        self.state = ClientState.CLOSED

    def _require_publishing(self) -> None:
        if self.state is not ClientState.PUBLISHING:
            raise RtmpError(f"cannot send media while {self.state.value}")

    # --- handshake --------------------------------------------------------------------------

    def _handshake(self) -> None:
        if len(self._buffer) < 1 + 2 * HANDSHAKE_SIZE:
            return
        if self._buffer[0] != 3:
            raise RtmpError(f"the server answered with RTMP version {self._buffer[0]}, not 3")
        s1 = bytes(self._buffer[1 : 1 + HANDSHAKE_SIZE])
        # S2 should echo C1; servers that do the digest handshake do not, and it does not
        # matter for the simple one: not checked.
        del self._buffer[: 1 + 2 * HANDSHAKE_SIZE]
        self._out += s1  # C2 echoes S1
        self._send(CONTROL_CSID, SET_CHUNK_SIZE, 0, struct.pack(">I", OUT_CHUNK_SIZE))
        self._writer.chunk_size = OUT_CHUNK_SIZE
        self._command(
            "connect",
            {
                "app": self.app,
                "type": "nonprivate",
                "flashVer": self.flash_version,
                "tcUrl": self.tc_url,
            },
        )
        self.state = ClientState.CONNECTING

    # --- messages ---------------------------------------------------------------------------

    def _message(self, message: Message) -> list[Event]:
        body = message.body
        if message.type_id == WINDOW_ACK and len(body) >= 4:
            self._window = max(1, int.from_bytes(body[:4], "big"))
        elif message.type_id == PEER_BANDWIDTH and len(body) >= 4:
            # The receiver of Set Peer Bandwidth answers with its window size if it is a new
            # one (RTMP 5.4.5).
            size = int.from_bytes(body[:4], "big")
            if size != self._announced_window:
                self._announced_window = size
                self._send(CONTROL_CSID, WINDOW_ACK, 0, struct.pack(">I", size))
        elif message.type_id == USER_CONTROL and len(body) >= 6:
            event = int.from_bytes(body[:2], "big")
            if event == PING_REQUEST:
                self._send(CONTROL_CSID, USER_CONTROL, 0, struct.pack(">H", PING_RESPONSE) + body[2:6])
        elif message.type_id in (COMMAND_AMF0, COMMAND_AMF3):
            return self._command_received(body[1:] if message.type_id == COMMAND_AMF3 else body)
        return []  # ACK, Set Chunk Size and Abort (applied by the reader), media, data

    def _command_received(self, body: bytes) -> list[Event]:
        try:
            values = amf0.decode_all(body)
        except amf0.Amf0Error as exc:
            raise RtmpError(f"bad command from the server: {exc}") from None
        if not values or not isinstance(values[0], str):
            raise RtmpError("a command without a name")
        # ffmpeg's server sends onFCPublish with no transaction id: only the name is required.
        name, txid = values[0], values[1] if len(values) > 1 else None
        args = values[2:]
        # A NaN or infinite transaction id answers nothing we asked (int() of it raised: the
        # property tests, test_fuzz_rtmp).
        if name in ("_result", "_error") and isinstance(txid, int | float) and math.isfinite(txid):
            command = self._pending.pop(int(txid), "")
            info = args[1] if len(args) > 1 else None
            if name == "_error":
                return self._refused(command or "a command", info)
            return self._result(command, info)
        if name == "onStatus":
            info = next((arg for arg in args if isinstance(arg, dict)), {})
            return self._status(info)
        return []  # onBWDone, onFCPublish, ...: nothing a publisher needs

    def _result(self, command: str, info: Any) -> list[Event]:
        if command == "connect" and self.state is ClientState.CONNECTING:
            details = info if isinstance(info, dict) else {}
            if details.get("code", "NetConnection.Connect.Success") != "NetConnection.Connect.Success":
                return self._refused("connect", details)
            # What ffmpeg sends after a connect for publishing (rtmpproto.c).
            self._command("releaseStream", None, self.name)
            self._command("FCPublish", None, self.name)
            self._command("createStream", None)
            self.state = ClientState.CREATING_STREAM
            return [Connected(details)]
        if command == "createStream" and self.state is ClientState.CREATING_STREAM:
            # A message stream id is 32 bits; NaN, infinity or more raised out of int() or the
            # chunk writer (the property tests, test_fuzz_rtmp).
            if not isinstance(info, int | float) or not 0 <= info <= 0xFFFFFFFF:
                return self._refused("createStream", {"description": "no stream id in the answer"})
            self.stream_id = int(info)
            self._command("publish", None, self.name, "live", csid=STREAM_CSID, stream_id=self.stream_id)
            self.state = ClientState.PUBLISH_REQUESTED
        return []  # releaseStream and FCPublish: their answers carry nothing

    def _status(self, info: dict[str, Any]) -> list[Event]:
        level, code = str(info.get("level", "")), str(info.get("code", ""))
        description = str(info.get("description", ""))
        if code == "NetStream.Publish.Start" and self.state is ClientState.PUBLISH_REQUESTED:
            self.state = ClientState.PUBLISHING
            return [PublishStarted(self.stream_id, description)]
        if level == "error" or code in ("NetStream.Publish.BadName", "NetStream.Publish.Rejected"):
            what = "publish" if self.state in (ClientState.PUBLISH_REQUESTED, ClientState.PUBLISHING) else ""
            return self._refused(what or "the connection", info)
        return [StatusReceived(level, code, description)]

    def _refused(self, command: str, info: Any) -> list[Event]:
        details = info if isinstance(info, dict) else {}
        self.state = ClientState.CLOSED
        return [Refused(command, str(details.get("code", "")), str(details.get("description", "")))]

    # --- output -----------------------------------------------------------------------------

    def _command(self, name: str, *args: Any, csid: int = COMMAND_CSID, stream_id: int = 0) -> None:
        txid = self._next_txid
        self._next_txid += 1
        self._pending[txid] = name
        self._send(csid, COMMAND_AMF0, stream_id, amf0.encode(name, txid, *args))

    def _send(self, csid: int, type_id: int, stream_id: int, body: bytes) -> None:
        self._out += self._writer.message(csid, type_id, stream_id, 0, body)

    def _acknowledge(self) -> None:
        if self._received - self._acked >= self._window:
            self._acked = self._received
            self._send(CONTROL_CSID, ACK, 0, struct.pack(">I", self._received & 0xFFFFFFFF))
