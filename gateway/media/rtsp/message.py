"""The RTSP/1.0 message codec (RFC 2326 section 4-6, 10.12): requests and responses with
their headers and bodies, and ``$``-framed interleaved binary data sharing the byte stream.

`RtspParser.receive_data` takes bytes split anywhere and returns the complete messages.
It raises `RtspError` (with the status a server should answer) on a garbage start line, a
malformed header, a bad number, a header block over 8 KiB or a body over 64 KiB.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

MAX_HEADER_BYTES = 8 * 1024
MAX_BODY_BYTES = 64 * 1024
VERSION = "RTSP/1.0"

REASONS: dict[int, str] = {
    200: "OK",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    409: "Conflict",
    413: "Request Entity Too Large",
    414: "Request-URI Too Large",
    415: "Unsupported Media Type",
    454: "Session Not Found",
    455: "Method Not Valid in This State",
    459: "Aggregate Operation Not Allowed",
    461: "Unsupported Transport",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "RTSP Version Not Supported",
}

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS_LINE = re.compile(r"RTSP/1\.\d ([0-9]{3})(?: (.*))?")
_REQUEST_LINE = re.compile(r"(\S+) (\S+) (RTSP/\d\.\d)")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


class RtspError(Exception):
    """The peer broke the protocol (or asked for something impossible); ``status`` is the
    reply a server gives for it."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _Headers:
    """Case-insensitive access to a message's header list (names may repeat)."""

    __slots__ = ()
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        lower = name.lower()
        return next((value for key, value in self.headers if key.lower() == lower), None)

    def header_values(self, name: str) -> list[str]:
        lower = name.lower()
        return [value for key, value in self.headers if key.lower() == lower]

    @property
    def cseq(self) -> int | None:
        value = self.header("CSeq")
        return None if value is None else parse_int(value, "CSeq")


@dataclass(frozen=True, slots=True)
class Request(_Headers):
    method: str
    uri: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def encode(self) -> bytes:
        # A "$" first is interleaved data to the reader (RFC 2326 10.12): such a method could
        # not be told apart (found by the property tests, test_fuzz_rtsp).
        if not _TOKEN.fullmatch(self.method) or self.method.startswith("$"):
            raise ValueError(f"method {self.method[:20]!r} cannot be sent")
        return _encode(f"{self.method} {self.uri} {VERSION}", self.headers, self.body)


@dataclass(frozen=True, slots=True)
class Response(_Headers):
    status: int
    reason: str = ""  # the standard phrase when empty
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def encode(self) -> bytes:
        # A reason phrase can come from elsewhere (a publish hook's refusal): one clean line,
        # in ASCII as parsers (ours too) read a status line: the property tests found a
        # non-ASCII reason our own RtspParser refused (test_fuzz_rtsp).
        printable = "".join(c if c.isprintable() and c.isascii() else " " for c in self.reason)
        reason = " ".join(printable.split())[:200] or REASONS.get(self.status, "Unknown")
        return _encode(f"{VERSION} {self.status} {reason}", self.headers, self.body)


@dataclass(frozen=True, slots=True)
class InterleavedFrame:
    """Binary data on the RTSP connection (RFC 2326 10.12): RTP or RTCP of one channel."""

    channel: int
    payload: bytes


Message = Request | Response | InterleavedFrame


def _encode(start_line: str, headers: tuple[tuple[str, str], ...], body: bytes) -> bytes:
    lines = [start_line]
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} cannot be sent")  # header injection
        if name.lower() != "content-length":
            lines.append(f"{name}: {value}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def encode_interleaved(channel: int, payload: bytes) -> bytes:
    if not 0 <= channel <= 255 or len(payload) > 0xFFFF:
        raise ValueError("interleaved frame out of range")
    return struct.pack("!cBH", b"$", channel, len(payload)) + payload


def parse_int(value: str, what: str, maximum: int = 2**31 - 1) -> int:
    value = value.strip()
    # int() raises ValueError past 4300 digits, which a header holds: compare lengths first
    # (found by the property tests, test_fuzz_rtsp).
    digits = value.lstrip("0") or "0"
    if not value.isascii() or not value.isdigit() or len(digits) > len(str(maximum)) or int(digits) > maximum:
        raise RtspError(f"bad {what}: {value[:40]!r}")
    return int(digits)


class RtspParser:
    """Incremental parser of one direction of an RTSP connection."""

    def __init__(
        self, *, max_header_bytes: int = MAX_HEADER_BYTES, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._buffer = bytearray()
        # A message whose header block is parsed, waiting for its body.
        self._pending: tuple[str, tuple[tuple[str, str], ...], int] | None = None

    def receive_data(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        while True:
            message = self._next()
            if message is None:
                return messages
            messages.append(message)

    def _next(self) -> Message | None:
        buf = self._buffer
        if self._pending is not None:
            return self._body()
        # Empty lines between messages are allowed (RFC 2326 4, "robust" parsing).
        while buf[:2] == b"\r\n" or buf[:1] == b"\n":
            del buf[: 2 if buf[:1] == b"\r" else 1]
        if not buf:
            return None
        if buf[0] == 0x24:  # "$"
            if len(buf) < 4:
                return None
            _, channel, length = struct.unpack_from("!cBH", buf)
            if len(buf) < 4 + length:
                return None
            frame = InterleavedFrame(channel, bytes(buf[4 : 4 + length]))
            del buf[: 4 + length]
            return frame
        line_end = buf.find(b"\n")
        if line_end >= 0:
            # Refuse garbage as soon as its first line is complete, not after 8 KiB.
            _start_line(bytes(buf[:line_end]).rstrip(b"\r"))
        end = _HEADER_END.search(buf)
        if end is None:
            if len(buf) > self.max_header_bytes:
                raise RtspError("header block over the size limit")
            return None
        if end.end() > self.max_header_bytes:
            raise RtspError("header block over the size limit")
        lines = bytes(buf[: end.start()]).split(b"\n")
        del buf[: end.end()]
        start = _start_line(lines[0].rstrip(b"\r"))
        headers = _headers([line.rstrip(b"\r") for line in lines[1:]])
        length = 0
        for name, value in headers:
            if name.lower() == "content-length":
                length = parse_int(value, "Content-Length")
        if length > self.max_body_bytes:
            raise RtspError("body over the size limit", 413)
        self._pending = (start, headers, length)
        return self._body()

    def _body(self) -> Message | None:
        assert self._pending is not None
        start, headers, length = self._pending
        if len(self._buffer) < length:
            return None
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        self._pending = None
        status = _STATUS_LINE.fullmatch(start)
        if status is not None:
            return Response(int(status.group(1)), status.group(2) or "", headers, body)
        method, uri, _ = start.split(" ")
        return Request(method, uri, headers, body)


def _start_line(raw: bytes) -> str:
    try:
        line = raw.decode("ascii")
    except UnicodeDecodeError:
        raise RtspError("start line is not ASCII") from None
    if _STATUS_LINE.fullmatch(line):
        return line
    request = _REQUEST_LINE.fullmatch(line)
    if request is None or not _TOKEN.fullmatch(request.group(1)):
        raise RtspError(f"not an RTSP start line: {line[:60]!r}")
    if request.group(3) != VERSION:
        raise RtspError(f"unsupported version {request.group(3)}", 505)
    return line


def _headers(lines: list[bytes]) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    for raw in lines:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RtspError("header is not UTF-8") from None
        if line[:1] in (" ", "\t") and headers:  # folded continuation line
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise RtspError(f"malformed header line: {line[:60]!r}")
        headers.append((name, value.strip()))
    return tuple(headers)


# --- header values ----------------------------------------------------------------------------


def parse_session(value: str) -> tuple[str, float | None]:
    """``Session: id[;timeout=seconds]`` (RFC 2326 12.37) as (id, timeout)."""
    session, *params = (part.strip() for part in value.split(";"))
    if not session:
        raise RtspError("empty Session header")
    timeout: float | None = None
    for param in params:
        key, _, number = param.partition("=")
        if key.strip().lower() == "timeout":
            timeout = float(parse_int(number, "session timeout", 86400))
    return session, timeout


@dataclass(frozen=True, slots=True)
class Transport:
    """One transport specification of a Transport header (RFC 2326 12.39)."""

    profile: str = "RTP/AVP"
    lower: str = "UDP"  # TCP for interleaved
    unicast: bool = True
    interleaved: tuple[int, int] | None = None
    client_port: tuple[int, int] | None = None
    ssrc: int | None = None
    mode: str | None = None
    server_port: tuple[int, int] | None = None

    @property
    def udp(self) -> bool:
        """Unicast RTP over UDP to (and from) a client port pair."""
        return self.lower == "UDP" and self.unicast and self.client_port is not None

    @property
    def tcp(self) -> bool:
        return self.lower == "TCP"

    def encode(self) -> str:
        parts = [f"{self.profile}/{self.lower}" if self.lower != "UDP" else self.profile]
        parts.append("unicast" if self.unicast else "multicast")
        if self.interleaved is not None:
            parts.append(f"interleaved={self.interleaved[0]}-{self.interleaved[1]}")
        if self.client_port is not None:
            parts.append(f"client_port={self.client_port[0]}-{self.client_port[1]}")
        if self.server_port is not None:
            parts.append(f"server_port={self.server_port[0]}-{self.server_port[1]}")
        if self.ssrc is not None:
            parts.append(f"ssrc={self.ssrc:08X}")
        if self.mode is not None:
            parts.append(f'mode="{self.mode}"')
        return ";".join(parts)


def parse_transports(value: str) -> list[Transport]:
    """All the comma-separated alternatives of a Transport header, in preference order."""
    transports: list[Transport] = []
    for spec in value.split(","):
        fields = [part.strip() for part in spec.split(";") if part.strip()]
        if not fields:
            continue
        protocol = fields[0].upper().split("/")
        if len(protocol) < 2 or len(protocol) > 3:
            raise RtspError(f"bad transport {fields[0][:40]!r}")
        profile = "/".join(protocol[:2])
        lower = protocol[2] if len(protocol) == 3 else "UDP"
        unicast = True
        interleaved = client_port = server_port = None
        ssrc = None
        mode = None
        for param in fields[1:]:
            key, _, arg = param.partition("=")
            key = key.strip().lower()
            if key == "multicast":
                unicast = False
            elif key == "interleaved":
                interleaved = _pair(arg, 255, "interleaved")
            elif key == "client_port":
                client_port = _pair(arg, 65535, "client_port")
            elif key == "server_port":
                server_port = _pair(arg, 65535, "server_port")
            elif key == "ssrc":
                try:
                    ssrc = int(arg.strip(), 16) & 0xFFFFFFFF
                except ValueError:
                    raise RtspError(f"bad ssrc {arg[:20]!r}") from None
            elif key == "mode":
                mode = arg.strip().strip('"').upper()
        transports.append(
            Transport(profile, lower, unicast, interleaved, client_port, ssrc, mode, server_port)
        )
    return transports


def _pair(value: str, maximum: int, what: str) -> tuple[int, int]:
    first, dash, second = value.partition("-")
    low = parse_int(first, what, maximum)
    return low, parse_int(second, what, maximum) if dash else min(low + 1, maximum)
