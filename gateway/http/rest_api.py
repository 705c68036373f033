"""The WCS-compatible REST API under ``/rest-api`` (what the WebSDK's rest-module and WCS
backends call): streams, connections, RTSP pulls and RTMP republishes (``push/*``). Requests
are POSTs with a JSON body; a body-less GET is accepted for the ``find_all`` calls, as the
WebSDK sends them. Answers are JSON; a search that finds nothing is 404, a bad body 400,
errors carry ``{"error": message}``.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.http.json_body import BadJson, read_json
from gateway.media.names import BadStreamName, validate_stream_name
from gateway.media.recorders import Recorders
from gateway.media.registry import StreamRegistry
from gateway.media.sinks.rtmp_push import RtmpRepublishes, StreamNotLive
from gateway.media.sources.rtsp_pulls import PullRefused, RtspPulls
from gateway.media.stream import Stream
from gateway.media.thumbnails import Thumbnails, ThumbnailUnavailable
from gateway.wcs.server import WcsServer

PREFIX = "/rest-api"
APP_KEY = "defaultApp"
# How WCS names the way a stream arrives, by skyrelay's ingest.
MEDIA_PROVIDERS = {"webrtc": "WebRTC", "whip": "WebRTC", "rtmp": "Flash", "rtsp": "RTSP", "camera": "RTSP"}

Handler = Callable[[dict[str, Any]], Awaitable[web.Response]]
# The calls about one stream by its name, and the body fields that may name it (first
# found wins): with several workers, the worker holding that stream answers them.
STREAM_NAME_FIELDS = {
    "stream/snapshot": ("streamName", "name"),
    "stream/startRecording": ("name",),
    "stream/stopRecording": ("name",),
    "push/startup": ("streamName",),
}


class RestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class WcsRestApi:
    def __init__(
        self,
        registry: StreamRegistry,
        wcs: WcsServer,
        rtsp: RtspPulls | None,
        recorders: Recorders | None = None,
        thumbnails: Thumbnails | None = None,
        republishes: RtmpRepublishes | None = None,
        machine: Callable[[bool], Awaitable[list[dict[str, Any]]]] | None = None,
    ) -> None:
        """``machine``: this gateway is one worker of several; the stream list (with
        metrics or not) of the whole machine (`gateway.cluster.machine`)."""
        self.machine = machine
        self.thumbnails = thumbnails
        self.republishes = republishes
        self.registry = registry
        self.wcs = wcs
        self.rtsp = rtsp
        self.recorders = recorders

    def routes(self) -> list[web.RouteDef]:
        calls: dict[str, Handler] = {
            "stream/find_all": self._stream_find_all,
            "stream/find": self._stream_find,
            "stream/terminate": self._stream_terminate,
            "stream/snapshot": self._snapshot,
            "stream/startRecording": self._start_recording,
            "stream/stopRecording": self._stop_recording,
            "recorder/find_all": self._recorder_find_all,
            "connection/find_all": self._connection_find_all,
            "rtsp/startup": self._rtsp_startup,
            "rtsp/find_all": self._rtsp_find_all,
            "rtsp/terminate": self._rtsp_terminate,
            "push/startup": self._push_startup,
            "push/find_all": self._push_find_all,
            "push/find": self._push_find,
            "push/terminate": self._push_terminate,
        }
        routes = []
        for path, handler in calls.items():
            endpoint = self._endpoint(handler)
            routes.append(web.post(f"{PREFIX}/{path}", endpoint))
            if path.endswith("find_all"):
                routes.append(web.get(f"{PREFIX}/{path}", endpoint))
        return routes

    def _endpoint(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def endpoint(request: web.Request) -> web.Response:
            try:
                return await handler(await _body(request))
            except RestError as exc:
                return web.json_response({"error": exc.message}, status=exc.status)

        return endpoint

    # --- streams -----------------------------------------------------------------------------

    async def _stream_find_all(self, body: dict[str, Any]) -> web.Response:
        return web.json_response(await self._listed(metrics=False))

    async def _stream_find(self, body: dict[str, Any]) -> web.Response:
        display = body.get("display") or []
        if not isinstance(display, list):
            raise RestError(400, "'display' must be a list, e.g. [\"metrics\"]")
        keys = ("mediaSessionId", "name", "published", "status")
        wanted = {key: body[key] for key in keys if body.get(key) is not None}
        found = [
            entry
            for entry in await self._listed(metrics="metrics" in display)
            if all(entry.get(key) == value for key, value in wanted.items())
        ]
        if not found:
            raise RestError(404, "not found")
        return web.json_response(found)

    async def _stream_terminate(self, body: dict[str, Any]) -> web.Response:
        media_session_id = _text(body, "mediaSessionId")
        if not self.wcs.terminate(media_session_id):
            raise RestError(404, f"no media session {media_session_id!r}")
        return web.json_response({"mediaSessionId": media_session_id, "status": "terminated"})

    async def _listed(self, *, metrics: bool) -> list[dict[str, Any]]:
        return await self.machine(metrics) if self.machine is not None else await self.entries(metrics)

    async def entries(self, metrics: bool) -> list[dict[str, Any]]:
        """WebSocket media sessions (publishers and players), then every stream that came
        in another way (RTMP, WHIP, RTSP, drones), as WCS lists them; this process's
        only, without mirrors (another worker's streams, listed by that worker)."""
        entries = []
        for session_id, desc in self.wcs.media_sessions():
            entry = {"appKey": APP_KEY, "sessionId": session_id, "mediaProvider": "WebRTC", **desc.as_dict()}
            if metrics:
                stream = self.registry.find(self.registry.resolve(desc.name))
                entry["metrics"] = _metrics(stream, 0, 0, 0)
                rates = await self.wcs.rates(desc.media_session_id)
                if rates is not None:  # this session's own figures (a player's outbound side)
                    entry["metrics"].update(
                        VIDEO_RATE=rates.bit_rate,
                        VIDEO_FPS=rates.fps,
                        VIDEO_NACK=rates.nack,
                        VIDEO_PLI=rates.pli,
                        VIDEO_LOST=rates.lost_packets,
                    )
            entries.append(entry)
        for stream in self.registry.streams():
            if stream.ingest == "webrtc" or self.registry.is_mirror(stream):
                continue  # listed above as its publisher's media session, or by its worker
            entry = {
                "appKey": APP_KEY,
                "sessionId": stream.ingest,
                "mediaSessionId": stream.id,
                "name": stream.name,
                "published": True,
                "status": "PUBLISHING" if stream.live and stream.source is not None else "PENDING",
                "mediaProvider": MEDIA_PROVIDERS.get(stream.ingest, stream.ingest),
                "hasVideo": stream.video_codec is not None,
                "hasAudio": stream.audio_codec is not None,
                "videoCodec": stream.video_codec.name if stream.video_codec else None,
                "audioCodec": stream.audio_codec.name if stream.audio_codec else None,
                "width": stream.width,
                "height": stream.height,
            }
            if metrics:
                entry["metrics"] = _metrics(stream, 0, 0, 0)
                if stream.source is not None:
                    feedback = await stream.source.feedback()
                    figures = {
                        "VIDEO_NACK": feedback.nack,
                        "VIDEO_PLI": feedback.pli,
                        "VIDEO_LOST": feedback.lost_packets,
                    }
                    entry["metrics"].update({key: v for key, v in figures.items() if v is not None})
            entries.append(entry)
        return entries

    # --- snapshot ------------------------------------------------------------------------------

    async def _snapshot(self, body: dict[str, Any]) -> web.Response:
        """``{streamName}`` (or ``name``) -> ``{"data": base64 PNG}``, as WCS answers."""
        name = body.get("streamName", body.get("name"))
        if not isinstance(name, str) or not name:
            raise RestError(400, "the body must have 'streamName' or 'name' (a non-empty string)")
        if self.thumbnails is None:
            raise RestError(404, "snapshots are off")
        try:
            png = await self.thumbnails.png(self.registry.resolve(name))
        except ThumbnailUnavailable as exc:
            raise RestError(404, str(exc)) from None
        return web.json_response({"streamName": name, "data": base64.b64encode(png).decode()})

    # --- recording ----------------------------------------------------------------------------

    def _published(self, body: dict[str, Any]) -> Stream:
        """The stream a recording call names: ``mediaSessionId`` of its publisher (or the
        stream's id), or ``name``."""
        msid, name = body.get("mediaSessionId"), body.get("name")
        if msid is None and name is None:
            raise RestError(400, "the body must have 'mediaSessionId' or 'name'")
        for key, value in (("mediaSessionId", msid), ("name", name)):
            if value is not None and (not isinstance(value, str) or not value):
                raise RestError(400, f"{key!r} must be a non-empty string")
        for _, desc in self.wcs.media_sessions():
            if desc.published and desc.media_session_id == msid:
                name = desc.name
        stream = next((s for s in self.registry.streams() if s.id == msid), None)
        if stream is None and isinstance(name, str):
            stream = self.registry.get(name)
        if stream is None:
            raise RestError(404, "no such published stream")
        return stream

    def _recording(self) -> Recorders:
        if self.recorders is None:
            raise RestError(404, "recording is off")
        return self.recorders

    async def _start_recording(self, body: dict[str, Any]) -> web.Response:
        recorders, stream = self._recording(), self._published(body)
        try:
            recorders.start(stream)
        except ValueError as exc:
            raise RestError(400, str(exc)) from None
        return web.json_response({"name": stream.name, "recording": True})

    async def _stop_recording(self, body: dict[str, Any]) -> web.Response:
        recorders, stream = self._recording(), self._published(body)
        if not await recorders.stop(stream.name):
            raise RestError(404, f"{stream.name!r} is not being recorded")
        return web.json_response({"name": stream.name, "recording": False})

    async def _recorder_find_all(self, body: dict[str, Any]) -> web.Response:
        return web.json_response(self._recording().find_all())

    # --- connections -------------------------------------------------------------------------

    async def _connection_find_all(self, body: dict[str, Any]) -> web.Response:
        return web.json_response([connection.describe() for connection in self.wcs.connections])

    # --- RTSP pulls --------------------------------------------------------------------------

    def _pulls(self) -> RtspPulls:
        if self.rtsp is None:
            raise RestError(404, "RTSP pulls are off")
        return self.rtsp

    async def _rtsp_startup(self, body: dict[str, Any]) -> web.Response:
        uri = _text(body, "uri")
        name = body.get("name", body.get("localStreamName"))
        if name is not None:
            _check_name(name)
        try:
            transport = body.get("transport", "tcp")
            source = await self._pulls().startup(uri, name, transport if isinstance(transport, str) else "")
        except PullRefused as exc:
            raise RestError(409 if "already" in str(exc) else 400, str(exc)) from None
        return web.json_response(source.describe(self.registry))

    async def _rtsp_find_all(self, body: dict[str, Any]) -> web.Response:
        return web.json_response(self._pulls().find_all())

    async def _rtsp_terminate(self, body: dict[str, Any]) -> web.Response:
        key = body.get("name") or body.get("uri")
        if not isinstance(key, str) or not key:
            raise RestError(400, "the body must name the pull: 'uri' or 'name'")
        if not await self._pulls().terminate(key):
            raise RestError(404, "no such RTSP pull")
        return web.json_response({"terminated": True})

    # --- RTMP republishing ---------------------------------------------------------------------

    def _pushes(self) -> RtmpRepublishes:
        if self.republishes is None:
            raise RestError(404, "RTMP republishing is off")
        return self.republishes

    async def _push_startup(self, body: dict[str, Any]) -> web.Response:
        """``{streamName, rtmpUrl}``: publish a live stream to another RTMP server."""
        name, url = _check_name(body.get("streamName")), _text(body, "rtmpUrl")
        try:
            republish = await self._pushes().startup(name, url)
        except StreamNotLive as exc:
            raise RestError(404, str(exc)) from None
        except ValueError as exc:
            raise RestError(400, str(exc)) from None
        return web.json_response(republish.describe())

    async def _push_find_all(self, body: dict[str, Any]) -> web.Response:
        return web.json_response(self._pushes().find_all())

    async def _push_find(self, body: dict[str, Any]) -> web.Response:
        """By ``mediaSessionId``, ``streamName`` and/or ``rtmpUrl`` (as given at startup, or
        as listed, without the key); 404 when none matches."""
        pushes = self._pushes()
        wanted = {key: body.get(key) for key in ("mediaSessionId", "streamName", "rtmpUrl")}
        if any(value is not None and not isinstance(value, str) for value in wanted.values()):
            raise RestError(400, "'mediaSessionId', 'streamName' and 'rtmpUrl' must be strings")
        found = [
            republish.describe()
            for republish in pushes.republishes.values()
            if wanted["mediaSessionId"] in (None, republish.id)
            and wanted["streamName"] in (None, republish.name)
            and wanted["rtmpUrl"] in (None, republish.url, republish.rtmp_url)
        ]
        if not found:
            raise RestError(404, "not found")
        return web.json_response(found)

    async def _push_terminate(self, body: dict[str, Any]) -> web.Response:
        media_session_id = _text(body, "mediaSessionId")
        if not await self._pushes().terminate(media_session_id):
            raise RestError(404, f"no RTMP republish {media_session_id!r}")
        return web.json_response({"mediaSessionId": media_session_id, "status": "terminated"})


def _metrics(stream: Stream | None, nack: int, pli: int, lost: int) -> dict[str, Any]:
    figures = stream.figures() if stream is not None else {}
    return {
        "VIDEO_RATE": figures.get("bit_rate", 0),
        "VIDEO_FPS": figures.get("fps", 0),
        "VIDEO_WIDTH": figures.get("width", 0),
        "VIDEO_HEIGHT": figures.get("height", 0),
        "VIDEO_CODEC": figures.get("video_codec"),
        "AUDIO_CODEC": figures.get("audio_codec"),
        "VIDEO_NACK": nack,
        "VIDEO_PLI": pli,
        "VIDEO_LOST": lost,
        "VIEWERS": figures.get("viewers", 0),
    }


async def _body(request: web.Request) -> dict[str, Any]:
    # body_exists, not can_read_body: a worker of several may have read it already to see
    # which stream it names (aiohttp keeps it for read()).
    if request.method == "GET" or not request.body_exists:
        return {}
    try:
        body = await read_json(request)
    except BadJson as exc:
        raise RestError(400, str(exc)) from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise RestError(400, "the body must be a JSON object")
    return body


def _check_name(name: Any) -> str:
    """A stream name by the rule of every ingress; 400 otherwise."""
    try:
        return validate_stream_name(name)
    except BadStreamName as exc:
        raise RestError(400, str(exc)) from None


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise RestError(400, f"the body must have {key!r} (a string)")
    return value
