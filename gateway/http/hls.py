"""HLS routes: ``/hls/{name}/index.m3u8``, its init segments and media segments, all served
from `HlsService`'s memory. Stream names may contain slashes (DJI video ids); file names are
matched against fixed patterns and only their numbers are passed on."""

from __future__ import annotations

from aiohttp import web

from gateway.media.sinks.hls import HlsNotFound, HlsNotReady, HlsService

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
# Players on other origins (a web page served elsewhere) fetch with CORS.
CORS = {"Access-Control-Allow-Origin": "*"}


def hls_routes(service: HlsService) -> list[web.RouteDef]:
    async def playlist(request: web.Request) -> web.Response:
        try:
            text = await service.playlist(request.match_info["name"])
        except HlsNotFound as exc:
            return _error(404, str(exc))
        except HlsNotReady as exc:
            return _error(503, str(exc), {"Retry-After": "1"})
        headers = {**CORS, "Cache-Control": "no-cache"}
        return web.Response(text=text, content_type=PLAYLIST_TYPE, headers=headers)

    async def init(request: web.Request) -> web.Response:
        try:
            data = service.init_segment(request.match_info["name"], int(request.match_info["version"]))
        except HlsNotFound as exc:
            return _error(404, str(exc))
        return web.Response(body=data, content_type="video/mp4", headers=CORS)

    async def segment(request: web.Request) -> web.Response:
        try:
            data = service.media_segment(request.match_info["name"], int(request.match_info["sequence"]))
        except HlsNotFound as exc:
            return _error(404, str(exc))
        # A segment never changes once made.
        headers = {**CORS, "Cache-Control": "max-age=60"}
        return web.Response(body=data, content_type="video/iso.segment", headers=headers)

    return [
        web.get("/hls/{name:.+}/index.m3u8", playlist),
        web.get(r"/hls/{name:.+}/init-{version:\d{1,9}}.mp4", init),
        web.get(r"/hls/{name:.+}/seg-{sequence:\d{1,12}}.m4s", segment),
    ]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers={**CORS, **(headers or {})})
