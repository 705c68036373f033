"""The client side of an RTSP pull, sans I/O: RTP interleaved on the RTSP connection (TCP,
the default), or over UDP to a port pair the caller bound (``udp_ports``).

`start` queues OPTIONS; every answer moves it on: DESCRIBE (answering a 401 challenge once
per nonce), SETUP of the H.264 video track, then over TCP of the first audio track that can
be relayed (Opus, PCMU, PCMA, AAC-hbr; a refused audio SETUP leaves the pull video only),
PLAY. Then it turns interleaved RTP, or the datagrams the caller hands to `receive_rtp`,
into `AccessUnit`s and `AudioUnit`s. Over UDP only the video is set up.
`keepalive` queues GET_PARAMETER (or OPTIONS when the server does not list GET_PARAMETER);
the caller decides when, from `Playing.timeout`.
A refused request raises `RtspError` with the server's status.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from gateway.media.rtsp.auth import ClientAuth
from gateway.media.rtsp.message import (
    InterleavedFrame,
    Request,
    Response,
    RtspError,
    RtspParser,
    Transport,
    parse_session,
    parse_transports,
)
from gateway.media.rtsp.record import AudioDepacketizer, AudioUnit, PushTrack, announced_tracks
from gateway.media.rtsp.rtp import AccessUnit, H264Depacketizer, RtpError, parse_rtp
from gateway.media.rtsp.sdp import H264Track, h264_track, parse_sdp, resolve_control

DEFAULT_PORT = 554
DEFAULT_TLS_PORT = 322  # rtsps (RFC 7826 19.2)
DEFAULT_SESSION_TIMEOUT = 60.0
USER_AGENT = "skyrelay"


@dataclass(frozen=True, slots=True)
class RtspUrl:
    host: str
    port: int
    user: str | None
    password: str | None
    url: str  # without the credentials: what goes in request lines
    tls: bool = False  # rtsps: the connection is TLS, the protocol the same


def parse_rtsp_url(url: str) -> RtspUrl:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        tls = scheme == "rtsps"
        port = parts.port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
    except ValueError as exc:
        raise RtspError(f"bad RTSP URL: {exc}") from None
    if scheme not in ("rtsp", "rtsps") or not parts.hostname:
        raise RtspError("not an rtsp:// or rtsps:// URL with a host")
    host = parts.hostname
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    clean = f"{scheme}://{netloc}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return RtspUrl(host, port, user, password, clean, tls)


@dataclass(frozen=True, slots=True)
class Described:
    track: H264Track
    sdp: str


@dataclass(frozen=True, slots=True)
class Playing:
    session: str
    timeout: float  # the server's session timeout: send a keepalive well within it


Event = Described | Playing | AccessUnit | AudioUnit


class _Phase(enum.Enum):
    IDLE = 0
    OPTIONS = 1
    DESCRIBE = 2
    SETUP = 3
    PLAY = 4
    PLAYING = 5
    CLOSED = 6


class RtspClientConnection:
    def __init__(
        self,
        url: str,
        *,
        auth: ClientAuth | None = None,
        user_agent: str = USER_AGENT,
        udp_ports: tuple[int, int] | None = None,
    ) -> None:
        self.target = parse_rtsp_url(url)
        # RTP and RTCP ports the caller listens on: ask for UDP instead of interleaved TCP.
        self.udp_ports = udp_ports
        self.server_ports: tuple[int, int] | None = None  # where the server sends from (UDP)
        if auth is None and self.target.user is not None:
            auth = ClientAuth(self.target.user, self.target.password or "")
        self.auth = auth
        self.user_agent = user_agent
        self.track: H264Track | None = None
        self.session: str | None = None
        self.session_timeout = DEFAULT_SESSION_TIMEOUT
        self.depacketizer: H264Depacketizer | None = None
        self.audio: PushTrack | None = None  # the audio track, once set up
        self.audio_depacketizer: AudioDepacketizer | None = None
        self._audio_url: str | None = None  # its SETUP, while in flight
        self._audio_channel: int | None = None
        self.bad_rtp = 0
        self._parser = RtspParser()
        self._out = bytearray()
        self._phase = _Phase.IDLE
        self._cseq = 0
        self._pending: dict[int, tuple[Request, bool]] = {}  # cseq -> (request, answered a 401)
        self._base = self.target.url
        self._session_url = self.target.url
        self._channel = 0
        self._get_parameter = False  # the server lists it in Public

    @property
    def playing(self) -> bool:
        return self._phase is _Phase.PLAYING

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def start(self) -> None:
        self._phase = _Phase.OPTIONS
        self._request("OPTIONS", self.target.url)

    def keepalive(self) -> None:
        if self._phase is not _Phase.PLAYING:
            return
        if self._get_parameter:
            self._request("GET_PARAMETER", self._session_url, session=True)
        else:
            self._request("OPTIONS", self.target.url, session=True)

    def teardown(self) -> None:
        if self.session is not None and self._phase is not _Phase.CLOSED:
            self._request("TEARDOWN", self._session_url, session=True)
        self._phase = _Phase.CLOSED

    def receive_data(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for message in self._parser.receive_data(data):
            if isinstance(message, InterleavedFrame):
                events += self._interleaved(message)
            elif isinstance(message, Response):
                events += self._response(message)
            else:  # a server's request (ANNOUNCE, SET_PARAMETER...): nothing we act on
                headers = (("CSeq", str(message.cseq or 0)),)
                self._out += Response(501, headers=headers).encode()
        return events

    # --- requests ---------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        extra: tuple[tuple[str, str], ...] = (),
        *,
        session: bool = False,
        retried: bool = False,
    ) -> None:
        self._cseq += 1
        headers: list[tuple[str, str]] = [("CSeq", str(self._cseq)), ("User-Agent", self.user_agent)]
        if session and self.session is not None:
            headers.append(("Session", self.session))
        if self.auth is not None:
            authorization = self.auth.authorization(method, url)
            if authorization is not None:
                headers.append(("Authorization", authorization))
        request = Request(method, url, (*headers, *extra))
        self._pending[self._cseq] = (request, retried)
        self._out += request.encode()

    def _response(self, response: Response) -> list[Event]:
        cseq = response.cseq
        if cseq is None:  # some servers drop it: answers come in order on TCP
            cseq = min(self._pending, default=-1)
        entry = self._pending.pop(cseq, None)
        if entry is None:
            return []
        request, retried = entry
        method = request.method
        if response.status == 401 and self.auth is not None and not retried:
            if self.auth.challenged(response.header_values("WWW-Authenticate")):
                extra = tuple((k, v) for k, v in request.headers if k.lower() in _KEPT_ON_RETRY)
                has_session = request.header("Session") is not None
                self._request(method, request.uri, extra, session=has_session, retried=True)
                return []
        if self._phase is _Phase.PLAYING:
            return self._playing_answer(request, response)
        if method == "OPTIONS" and self._phase is _Phase.OPTIONS:
            if response.status == 401:
                raise RtspError("OPTIONS: authentication failed", 401)
            # Other failures of OPTIONS are not fatal: some cameras do not implement it.
            public = response.header("Public") or ""
            self._get_parameter = "GET_PARAMETER" in {m.strip().upper() for m in public.split(",")}
            self._phase = _Phase.DESCRIBE
            self._request("DESCRIBE", self.target.url, (("Accept", "application/sdp"),))
            return []
        if method == "SETUP" and self._phase is _Phase.SETUP and request.uri == self._audio_url:
            self._audio_set_up(response)
            return []
        if not response.ok:
            raise RtspError(f"{method} answered {response.status} {response.reason}".strip(), response.status)
        if method == "DESCRIBE" and self._phase is _Phase.DESCRIBE:
            return self._described(response)
        if method == "SETUP" and self._phase is _Phase.SETUP:
            self._set_up(response)
            return []
        if method == "PLAY" and self._phase is _Phase.PLAY:
            self._phase = _Phase.PLAYING
            assert self.session is not None
            return [Playing(self.session, self.session_timeout)]
        return []

    def _described(self, response: Response) -> list[Event]:
        base = response.header("Content-Base") or response.header("Content-Location") or self.target.url
        text = response.body.decode("utf-8", errors="replace")
        sdp = parse_sdp(text)
        track = h264_track(sdp, base)
        if track is None:
            raise RtspError("the server offers no H.264 video track", 415)
        self.track = track
        self._base = base
        # PLAY goes to the session's control URL (the aggregate), or the base.
        self._session_url = resolve_control(base, sdp.control)
        self.depacketizer = H264Depacketizer(sps=track.sps, pps=track.pps)
        if self.udp_ports is None:
            self.audio = relayed_audio(response.body, base)
        self._phase = _Phase.SETUP
        if self.udp_ports is not None:
            transport = Transport("RTP/AVP", "UDP", True, client_port=self.udp_ports)
        else:
            transport = Transport("RTP/AVP", "TCP", True, (0, 1))
        self._request("SETUP", track.control_url, (("Transport", transport.encode()),))
        return [Described(track, text)]

    def _set_up(self, response: Response) -> None:
        session = response.header("Session")
        if session is None:
            raise RtspError("SETUP answer without a Session")
        self.session, timeout = parse_session(session)
        if timeout:
            self.session_timeout = timeout
        transports = parse_transports(response.header("Transport") or "")
        chosen = transports[0] if transports else None
        if self.udp_ports is not None:
            if chosen is None or chosen.tcp:
                raise RtspError("the server did not set up UDP", 461)
            self.server_ports = chosen.server_port
        elif chosen is not None and chosen.interleaved is not None:
            self._channel = chosen.interleaved[0]
        elif chosen is not None and not chosen.tcp:
            raise RtspError("the server set up UDP, not interleaved TCP", 461)
        if self.audio is not None:
            channels = (self._channel + 2, self._channel + 3)
            transport = Transport("RTP/AVP", "TCP", True, channels)
            self._audio_url = resolve_control(self._base, self.audio.control)
            self._request("SETUP", self._audio_url, (("Transport", transport.encode()),), session=True)
            return
        self._play()

    def _audio_set_up(self, response: Response) -> None:
        """The audio SETUP's answer: relay it on the channel the server chose, or (refused,
        or not interleaved) go on with the video alone."""
        self._audio_url = None
        transports = parse_transports(response.header("Transport") or "") if response.ok else []
        chosen = transports[0] if transports else None
        if chosen is not None and chosen.interleaved is not None and self.audio is not None:
            self._audio_channel = chosen.interleaved[0]
            self.audio_depacketizer = AudioDepacketizer(self.audio)
        else:
            self.audio = None
        self._play()

    def _play(self) -> None:
        self._phase = _Phase.PLAY
        self._request("PLAY", self._session_url, (("Range", "npt=0.000-"),), session=True)

    def _playing_answer(self, request: Request, response: Response) -> list[Event]:
        if request.method == "GET_PARAMETER" and response.status in (405, 451, 501):
            self._get_parameter = False  # listed but not served: OPTIONS keeps it alive
        elif response.status == 454:
            raise RtspError("the server lost the session", 454)
        return []

    def _interleaved(self, frame: InterleavedFrame) -> list[Event]:
        if self.udp_ports is not None:
            return []
        audio = self.audio_depacketizer
        if frame.channel == self._audio_channel and audio is not None:
            if self._phase is not _Phase.PLAYING:
                return []
            try:
                return list(audio.receive(parse_rtp(frame.payload)))
            except RtpError:
                self.bad_rtp += 1
                return []
        if frame.channel != self._channel:
            return []  # RTCP, or media we did not set up
        return list(self.receive_rtp(frame.payload))

    def receive_rtp(self, data: bytes) -> list[AccessUnit]:
        """One RTP packet of the video (a datagram on the UDP RTP port, when set up so). Over
        UDP it may overtake the PLAY answer: it counts from SETUP's answer on."""
        if self.depacketizer is None or self._phase not in (_Phase.PLAY, _Phase.PLAYING):
            return []
        try:
            packet = parse_rtp(data)
        except RtpError:
            self.bad_rtp += 1
            return []
        if self.track is not None and packet.payload_type != self.track.payload_type:
            self.bad_rtp += 1
            return []
        return self.depacketizer.receive(packet)


_KEPT_ON_RETRY = {"accept", "transport", "range"}


def relayed_audio(sdp: bytes, base: str) -> PushTrack | None:
    """The first audio track of a DESCRIBE answer that can be relayed (its control is
    resolved against ``base`` for the SETUP); None when there is none, or when the SDP is
    not one a publisher could announce: then the pull is video only."""
    try:
        tracks = announced_tracks(sdp)
    except RtspError:
        return None
    return next((track for track in tracks if track.audio_codec is not None), None)
