"""The server side of an RTSP connection, sans I/O: players (DESCRIBE, SETUP, PLAY) and
publishers (ANNOUNCE, SETUP with ``mode=record``, RECORD), with RTP interleaved on the RTSP
connection or over UDP (``client_port``; the caller owns the server's port pair). A player
sets up the video (``trackID=0``), the audio (``trackID=1``) or both, each on its own
channels or ports.

It answers OPTIONS, keepalives (GET_PARAMETER, SET_PARAMETER), authentication, unknown or
unsupported methods, bad paths and transports, bad SDPs and session mistakes by itself.
What depends on the streams is the caller's: it gets `DescribeRequested`,
`AnnounceRequested`, `SetupRequested`, `PlayRequested` and `RecordRequested` and answers
with `describe`, `accept_announce`, `accept_setup`, `accept_play`, `accept_record` or
`refuse`. `TeardownRequested` is answered already; it tells the caller to stop. While
recording, interleaved RTP comes out as `AccessUnit`s and `AudioUnit`s; RTP the caller
received over UDP goes in through `receive_rtp`.
A request it cannot parse raises `RtspError` after queueing the error reply: close then.
One connection carries one session, either playing or recording one stream.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from gateway.media.names import BadStreamName, validate_stream_name
from gateway.media.rtsp.auth import ServerAuth
from gateway.media.rtsp.message import (
    REASONS,
    InterleavedFrame,
    Request,
    Response,
    RtspError,
    RtspParser,
    Transport,
    parse_session,
    parse_transports,
)
from gateway.media.rtsp.record import AudioUnit, PushTrack, Recording, announced_tracks
from gateway.media.rtsp.rtp import AccessUnit
from gateway.media.rtsp.sdp import AUDIO_TRACK, VIDEO_TRACK

SERVER = "skyrelay"
SESSION_TIMEOUT = 60
SERVED = (
    "OPTIONS",
    "DESCRIBE",
    "ANNOUNCE",
    "SETUP",
    "PLAY",
    "RECORD",
    "TEARDOWN",
    "GET_PARAMETER",
    "SET_PARAMETER",
)
# RFC 2326 methods this server knows but does not offer: 405 with Allow, not 501.
NOT_ALLOWED = ("PAUSE", "REDIRECT")
_TRACK = re.compile(r"trackID=(\d{1,3})")
_QUERY = re.compile(r"\?[^/]*")


@dataclass(frozen=True, slots=True)
class DescribeRequested:
    request: Request
    name: str


@dataclass(frozen=True, slots=True)
class AnnounceRequested:
    """A publisher offers ``tracks`` (an SDP with H.264 video) for stream ``name``; ``query``
    is the request URI's query string (a token, say), for the caller's authorization."""

    request: Request
    name: str
    query: str
    tracks: tuple[PushTrack, ...]


@dataclass(frozen=True, slots=True)
class SetupRequested:
    request: Request
    name: str
    transport: Transport  # the alternative chosen: TCP interleaved (channels), or UDP with client_port
    track: int = 0  # the index of the track (playing: 0 the video, 1 the audio)
    record: bool = False

    @property
    def udp(self) -> bool:
        return not self.transport.tcp


@dataclass(frozen=True, slots=True)
class PlayRequested:
    request: Request
    name: str


@dataclass(frozen=True, slots=True)
class RecordRequested:
    request: Request
    name: str


@dataclass(frozen=True, slots=True)
class TeardownRequested:
    name: str


Event = (
    DescribeRequested
    | AnnounceRequested
    | SetupRequested
    | PlayRequested
    | RecordRequested
    | TeardownRequested
    | AccessUnit
    | AudioUnit
)


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
        audio_ssrc: int | None = None,
        udp: bool = True,
    ) -> None:
        self.auth = auth
        self.session_timeout = session_timeout
        self.udp = udp  # the caller has a UDP port pair to offer
        self.ssrc = ssrc if ssrc is not None else int.from_bytes(os.urandom(4), "big")
        self.audio_ssrc = audio_ssrc if audio_ssrc is not None else int.from_bytes(os.urandom(4), "big")
        self.session: str | None = None  # set by SETUP
        self.stream_name: str | None = None
        self.mode: Literal["play", "record"] | None = None  # set by SETUP (play) or ANNOUNCE
        # Each set-up track's transport (interleaved channels, or the client's UDP ports).
        self.transports: dict[int, Transport] = {}
        self.playing = False
        # Recording: what was announced.
        self.recording: Recording | None = None
        self.recording_started = False
        self._channels: dict[int, int] = {}  # interleaved RTP channel -> track
        self._session_id = session_id or os.urandom(8).hex().upper()
        self._parser = RtspParser()
        self._out = bytearray()
        self.closed = False

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def receive_data(self, data: bytes) -> list[Event]:
        """Bytes from the player or publisher. Raises RtspError (its reply queued) when the
        connection must close."""
        if self.closed:
            return []
        events: list[Event] = []
        try:
            for message in self._parser.receive_data(data):
                if isinstance(message, Request):
                    event = self._request(message)
                    if event is not None:
                        events.append(event)
                elif isinstance(message, InterleavedFrame):
                    track = self._channels.get(message.channel)
                    if track is not None:
                        events += self.receive_rtp(track, message.payload)
                # RTCP (either way) and stray responses need no answer.
        except RtspError as exc:
            self._reply(None, exc.status, (("Connection", "close"),))
            self.closed = True
            raise
        return events

    def receive_rtp(self, track: int, data: bytes) -> list[AccessUnit | AudioUnit]:
        """One RTP packet of a recording's track (interleaved, or a UDP datagram from the
        publisher's client port); nothing before RECORD."""
        if self.recording is None or not self.recording_started:
            return []
        return self.recording.receive(track, data)

    # --- the caller's answers ---------------------------------------------------------------

    def describe(self, event: DescribeRequested, sdp: str, content_base: str) -> None:
        headers = (("Content-Base", content_base), ("Content-Type", "application/sdp"))
        self._reply(event.request, 200, headers, sdp.encode())

    def accept_announce(self, event: AnnounceRequested) -> None:
        self.mode, self.stream_name = "record", event.name
        self.recording = Recording(event.tracks)
        self._reply(event.request, 200)

    def accept_setup(self, event: SetupRequested, server_port: tuple[int, int] | None = None) -> None:
        """Answer a SETUP; ``server_port`` is the caller's UDP pair, for a UDP transport."""
        offered = event.transport
        mode = "RECORD" if event.record else "PLAY"
        ssrc = self.audio_ssrc if not event.record and event.track == AUDIO_TRACK else self.ssrc
        if event.udp:
            if server_port is None:
                raise ValueError("a UDP transport needs the server's port pair")
            chosen = Transport(
                "RTP/AVP",
                "UDP",
                True,
                client_port=offered.client_port,
                ssrc=ssrc,
                mode=mode,
                server_port=server_port,
            )
        else:
            chosen = Transport("RTP/AVP", "TCP", True, offered.interleaved, ssrc=ssrc, mode=mode)
        self.session, self.stream_name = self._session_id, event.name
        if not event.record:
            self.mode = "play"
        self.transports[event.track] = chosen
        if chosen.interleaved is not None:
            self._channels[chosen.interleaved[0]] = event.track
        headers = (("Transport", chosen.encode()), ("Session", self._session_header()))
        self._reply(event.request, 200, headers)

    def accept_play(self, event: PlayRequested, rtp_info: str | None = None) -> None:
        self.playing = True
        headers = [("Session", self._session_header()), ("Range", "npt=0.000-")]
        if rtp_info:
            headers.append(("RTP-Info", rtp_info))
        self._reply(event.request, 200, tuple(headers))

    def accept_record(self, event: RecordRequested) -> None:
        self.recording_started = True
        self._reply(event.request, 200, (("Session", self._session_header()),))

    def refuse(self, request: Request, status: int, reason: str = "") -> None:
        """Refuse ``request``; ``reason`` replaces the standard phrase (for people)."""
        self._reply(request, status, reason=reason)

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
        if method == "SETUP" and self.mode == "record":
            return self._record_setup(request)
        try:
            name, track = stream_path(request.uri)
        except RtspError:
            self._reply(request, 400)
            return None
        if method == "DESCRIBE":
            return DescribeRequested(request, name)
        if method == "ANNOUNCE":
            return self._announce(request, name)
        if method == "SETUP":
            return self._setup(request, name, track)
        if self.session is None:
            self._reply(request, 455, reason="Method Not Valid in This State: SETUP first")
            return None
        if name != self.stream_name:
            self._reply(request, 459 if method in ("PLAY", "RECORD") else 454)
            return None
        if method == "PLAY" or method == "RECORD":
            return self._start(request, name)
        self._reply(request, 200)  # TEARDOWN
        self.session = self.stream_name = self.mode = self.recording = None
        self.playing = self.recording_started = False
        self.transports, self._channels = {}, {}
        return TeardownRequested(name)

    def _start(self, request: Request, name: str) -> Event | None:
        if request.method == "PLAY":
            if self.mode != "play":
                self._reply(request, 455, reason="Method Not Valid in This State: a publishing session")
                return None
            return PlayRequested(request, name)
        if self.mode != "record" or self.recording is None:
            self._reply(request, 455, reason="Method Not Valid in This State: ANNOUNCE first")
            return None
        if self.recording.video.index not in self.transports:
            self._reply(request, 455, reason="Method Not Valid in This State: the video is not set up")
            return None
        return RecordRequested(request, name)

    def _announce(self, request: Request, name: str) -> Event | None:
        if self.mode is not None:
            self._reply(request, 455, reason="Method Not Valid in This State: the session is in use")
            return None
        try:
            validate_stream_name(name)  # the rule of every ingress
        except BadStreamName as exc:
            self._reply(request, 400, reason=f"Bad Request: {exc}")
            return None
        content_type = (request.header("Content-Type") or "application/sdp").split(";")[0].strip()
        if content_type.lower() != "application/sdp":
            self._reply(request, 415, reason="Unsupported Media Type: an SDP is expected")
            return None
        try:
            tracks = announced_tracks(request.body)
        except RtspError as exc:
            self._reply(request, exc.status, reason=f"{REASONS.get(exc.status, 'Bad Request')}: {exc}")
            return None
        query = urlsplit(request.uri).query if "?" in request.uri else ""
        return AnnounceRequested(request, name, query, tracks)

    def _setup(self, request: Request, name: str, track: int | None) -> Event | None:
        """A player's SETUP of the video (the stream's URL or ``trackID=0``) or the audio
        (``trackID=1``; the caller answers 404 for a stream without audio)."""
        track = VIDEO_TRACK if track is None else track
        if track not in (VIDEO_TRACK, AUDIO_TRACK):
            self._reply(request, 404)
            return None
        if self.session is not None and name != self.stream_name:
            self._reply(request, 459)  # one stream per session
            return None
        if self.playing:
            self._reply(request, 455, reason="Method Not Valid in This State: already playing")
            return None
        if track in self.transports:
            self._reply(request, 455, reason="Method Not Valid in This State: the track is already set up")
            return None
        chosen = self._track_transport(request, track, "PLAY")
        if chosen is None:
            return None
        return SetupRequested(request, name, chosen, track)

    def _record_setup(self, request: Request) -> Event | None:
        assert self.recording is not None and self.stream_name is not None
        track = self._record_track(request.uri)
        if track is None:
            self._reply(request, 404, reason="Not Found: no such announced track")
            return None
        chosen = self._track_transport(request, track, "RECORD")
        if chosen is None:
            return None
        return SetupRequested(request, self.stream_name, chosen, track, record=True)

    def _track_transport(self, request: Request, track: int, mode: str) -> Transport | None:
        """The transport of a SETUP of ``track``: interleaved on the offered channels (or
        2N-2N+1), or UDP to the offered client ports, that no other track of the session
        uses (461 otherwise: two tracks' RTP would mix). None once refused."""
        chosen = self._transport(request, mode)
        if chosen is None:
            self._reply(request, 461)
            return None
        others = [transport for index, transport in self.transports.items() if index != track]
        if chosen.tcp:
            channels = chosen.interleaved or (2 * track, 2 * track + 1)
            taken = {channel for other in others if other.interleaved for channel in other.interleaved}
            if taken & set(channels):
                self._reply(request, 461, reason="Unsupported Transport: interleaved channel in use")
                return None
            return dataclasses.replace(chosen, interleaved=channels)
        if any(other.client_port == chosen.client_port for other in others):
            self._reply(request, 461, reason="Unsupported Transport: client port in use")
            return None
        return chosen

    def _transport(self, request: Request, mode: str) -> Transport | None:
        """The first offered alternative this server can do: TCP interleaved, or unicast UDP
        with a client port pair (when the caller has UDP), in the direction ``mode``."""
        try:
            offered = parse_transports(request.header("Transport") or "")
        except RtspError:
            return None
        for transport in offered:
            if transport.profile != "RTP/AVP" or not transport.unicast:
                continue
            if transport.mode not in (None, mode):
                continue
            if transport.tcp or (self.udp and transport.udp):
                return transport
        return None

    def _record_track(self, uri: str) -> int | None:
        """The announced track a SETUP URI names: its control, absolute or relative to the
        announced stream's URL."""
        assert self.recording is not None and self.stream_name is not None
        path = _path(uri)
        for track in self.recording.tracks:
            control = track.control
            if "://" in control:
                if path == _path(control):
                    return track.index
            elif path == f"{self.stream_name}/{control.strip('/')}":
                return track.index
        return None

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
        *,
        reason: str = "",
    ) -> None:
        cseq: tuple[tuple[str, str], ...] = ()
        if request is not None:
            cseq = (("CSeq", str(request.cseq)),)
        all_headers = (*cseq, ("Server", SERVER), *headers)
        self._out += Response(status, reason or REASONS.get(status, ""), all_headers, body).encode()


def _path(uri: str) -> str:
    """A request URI's path without query, slashes around it, or percent escapes. A query
    may sit before the track's control: ffmpeg appends ``/streamid=0`` to the whole URL."""
    uri = _QUERY.sub("", uri)
    try:
        path = urlsplit(uri).path if "://" in uri else uri
    except ValueError:
        return ""
    return unquote(path).strip("/")
