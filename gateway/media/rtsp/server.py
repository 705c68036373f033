"""The server side of an RTSP connection for players, sans I/O: RTP goes interleaved on the
RTSP connection (UDP is answered 461 for now).

It answers OPTIONS, keepalives (GET_PARAMETER, SET_PARAMETER), authentication, unknown or
unsupported methods, bad paths and transports, and session mistakes by itself. What depends
on the streams is the caller's: it gets `DescribeRequested`, `SetupRequested` and
`PlayRequested` and answers with `describe`, `accept_setup`, `accept_play` or `refuse`.
`TeardownRequested` is answered already; it tells the caller to stop sending.
A request it cannot parse raises `RtspError` after queueing the error reply: close then.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from gateway.media.rtsp.auth import ServerAuth
from gateway.media.rtsp.message import (
    REASONS,
    Request,
    Response,
    RtspError,
    RtspParser,
    Transport,
    parse_session,
    parse_transports,
)

SERVER = "skyrelay"
SESSION_TIMEOUT = 60
SERVED = ("OPTIONS", "DESCRIBE", "SETUP", "PLAY", "TEARDOWN", "GET_PARAMETER", "SET_PARAMETER")
# RFC 2326 methods this server knows but does not offer: 405 with Allow, not 501.
NOT_ALLOWED = ("ANNOUNCE", "RECORD", "PAUSE", "REDIRECT")
_TRACK = re.compile(r"trackID=(\d{1,3})")


@dataclass(frozen=True, slots=True)
class DescribeRequested:
    request: Request
    name: str


@dataclass(frozen=True, slots=True)
class SetupRequested:
    request: Request
    name: str
    transport: Transport  # the TCP interleaved alternative the client offered


@dataclass(frozen=True, slots=True)
class PlayRequested:
    request: Request
    name: str


@dataclass(frozen=True, slots=True)
class TeardownRequested:
    name: str


Event = DescribeRequested | SetupRequested | PlayRequested | TeardownRequested


def stream_path(uri: str) -> tuple[str, int | None]:
    """The stream name and track number (``.../trackID=N``) a request URI names. A name
    may contain slashes; an empty, ``.`` or ``..`` segment is refused (400)."""
    if uri.lower().startswith("rtsp://"):
        try:
            path = urlsplit(uri).path
        except ValueError:
            raise RtspError("bad request URI") from None
    elif uri.startswith("/"):
        path = uri.split("?", 1)[0]
    else:
        raise RtspError("bad request URI")
    segments = [unquote(segment) for segment in path.strip("/").split("/")]
    track = None
    match = _TRACK.fullmatch(segments[-1])
    if match is not None and len(segments) > 1:
        track = int(match.group(1))
        segments.pop()
    for segment in segments:
        if segment in ("", ".", "..") or "/" in segment or "\\" in segment or not segment.isprintable():
            raise RtspError(f"bad stream path {path[:80]!r}")
    return "/".join(segments), track


class RtspServerConnection:
    def __init__(
        self,
        *,
        auth: ServerAuth | None = None,
        session_timeout: int = SESSION_TIMEOUT,
        session_id: str | None = None,
        ssrc: int | None = None,
    ) -> None:
        self.auth = auth
        self.session_timeout = session_timeout
        self.ssrc = ssrc if ssrc is not None else int.from_bytes(os.urandom(4), "big")
        self.session: str | None = None  # set by SETUP
        self.stream_name: str | None = None
        self.channel = 0  # RTP; RTCP is channel + 1
        self.playing = False
        self._session_id = session_id or os.urandom(8).hex().upper()
        self._parser = RtspParser()
        self._out = bytearray()
        self.closed = False

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def receive_data(self, data: bytes) -> list[Event]:
        """Bytes from the player. Raises RtspError (its reply queued) when the connection
        must close."""
        if self.closed:
            return []
        events: list[Event] = []
        try:
            for message in self._parser.receive_data(data):
                if isinstance(message, Request):
                    event = self._request(message)
                    if event is not None:
                        events.append(event)
                # Interleaved RTCP receiver reports and stray responses need no answer.
        except RtspError as exc:
            self._reply(None, exc.status, (("Connection", "close"),))
            self.closed = True
            raise
        return events

    # --- the caller's answers ---------------------------------------------------------------

    def describe(self, event: DescribeRequested, sdp: str, content_base: str) -> None:
        headers = (("Content-Base", content_base), ("Content-Type", "application/sdp"))
        self._reply(event.request, 200, headers, sdp.encode())

    def accept_setup(self, event: SetupRequested) -> None:
        interleaved = event.transport.interleaved or (0, 1)
        self.session, self.stream_name, self.channel = self._session_id, event.name, interleaved[0]
        transport = Transport("RTP/AVP", "TCP", True, interleaved, ssrc=self.ssrc, mode="PLAY")
        headers = (("Transport", transport.encode()), ("Session", self._session_header()))
        self._reply(event.request, 200, headers)

    def accept_play(self, event: PlayRequested, rtp_info: str | None = None) -> None:
        self.playing = True
        headers = [("Session", self._session_header()), ("Range", "npt=0.000-")]
        if rtp_info:
            headers.append(("RTP-Info", rtp_info))
        self._reply(event.request, 200, tuple(headers))

    def refuse(self, request: Request, status: int) -> None:
        self._reply(request, status)

    # --- requests ---------------------------------------------------------------------------

    def _request(self, request: Request) -> Event | None:
        if request.cseq is None:
            raise RtspError("request without CSeq")
        method = request.method
        if method not in SERVED:
            if method in NOT_ALLOWED:
                self._reply(request, 405, (("Allow", ", ".join(SERVED)),))
            else:
                self._reply(request, 501)
            return None
        if method == "OPTIONS":
            self._reply(request, 200, (("Public", ", ".join(SERVED)),))
            return None
        if self.auth is not None and not self.auth.check(method, request.header("Authorization")):
            self._reply(request, 401, (("WWW-Authenticate", self.auth.challenge()),))
            return None
        if not self._session_matches(request):
            self._reply(request, 454)
            return None
        if method in ("GET_PARAMETER", "SET_PARAMETER"):
            self._reply(request, 200, (("Session", self._session_header()),) if self.session else ())
            return None
        try:
            name, track = stream_path(request.uri)
        except RtspError:
            self._reply(request, 400)
            return None
        if method == "DESCRIBE":
            return DescribeRequested(request, name)
        if method == "SETUP":
            return self._setup(request, name, track)
        if self.session is None:
            self._reply(request, 455)  # PLAY or TEARDOWN before SETUP
            return None
        if name != self.stream_name:
            self._reply(request, 459 if method == "PLAY" else 454)
            return None
        if method == "PLAY":
            return PlayRequested(request, name)
        self._reply(request, 200)  # TEARDOWN
        self.session = self.stream_name = None
        self.playing = False
        return TeardownRequested(name)

    def _setup(self, request: Request, name: str, track: int | None) -> Event | None:
        if track not in (None, 0):
            self._reply(request, 404)
            return None
        if self.session is not None and name != self.stream_name:
            self._reply(request, 459)  # one stream per session
            return None
        try:
            offered = parse_transports(request.header("Transport") or "")
        except RtspError:
            offered = []
        chosen = next((t for t in offered if t.tcp and t.unicast and t.profile == "RTP/AVP"), None)
        if chosen is None:
            self._reply(request, 461)
            return None
        return SetupRequested(request, name, chosen)

    def _session_matches(self, request: Request) -> bool:
        """A request naming a session must name this connection's."""
        value = request.header("Session")
        if value is None:
            return True
        try:
            session, _ = parse_session(value)
        except RtspError:
            return False
        return session == self.session

    def _session_header(self) -> str:
        return f"{self.session};timeout={self.session_timeout}"

    def _reply(
        self,
        request: Request | None,
        status: int,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
    ) -> None:
        cseq: tuple[tuple[str, str], ...] = ()
        if request is not None:
            cseq = (("CSeq", str(request.cseq)),)
        all_headers = (*cseq, ("Server", SERVER), *headers)
        self._out += Response(status, REASONS.get(status, ""), all_headers, body).encode()
