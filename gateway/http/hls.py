"""HLS routes: ``/hls/{name}/index.m3u8``, its init segments and media segments, all served
from `HlsService`'s memory. Stream names may contain slashes (DJI video ids); file names are
matched against fixed patterns and only their numbers are passed on."""

from __future__ import annotations

import re
import urllib.parse

from aiohttp import web

from gateway.access import AccessPolicy, AccessRequest, Action, OpenAccess
from gateway.media.sinks.hls import HlsNotFound, HlsNotReady, HlsService

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
# Players on other origins (a web page served elsewhere) fetch with CORS.
CORS = {"Access-Control-Allow-Origin": "*"}


def hls_routes(service: HlsService, access: AccessPolicy | None = None) -> list[web.RouteDef]:
    """The routes; with an access policy, every request needs a play token (``?token=``),
    which the playlist passes on to the segment URIs it lists."""
    policy = access or OpenAccess()

    async def refused(request: web.Request) -> web.Response | None:
        check = AccessRequest(Action.PLAY, request.match_info["name"], request.query.get("token"))
        reason = await policy.check(check)
        return None if reason is None else _error(403, reason)

    async def playlist(request: web.Request) -> web.Response:
        if (refusal := await refused(request)) is not None:
            return refusal
        try:
            text = await service.playlist(request.match_info["name"])
        except HlsNotFound as exc:
            return _error(404, str(exc))
        except HlsNotReady as exc:
            return _error(503, str(exc), {"Retry-After": "1"})
        token = request.query.get("token")
        if token:
            text = _with_token(text, token)
        headers = {**CORS, "Cache-Control": "no-cache"}
        return web.Response(text=text, content_type=PLAYLIST_TYPE, headers=headers)

    async def init(request: web.Request) -> web.Response:
        if (refusal := await refused(request)) is not None:
            return refusal
        try:
            data = service.init_segment(request.match_info["name"], int(request.match_info["version"]))
        except HlsNotFound as exc:
            return _error(404, str(exc))
        return web.Response(body=data, content_type="video/mp4", headers=CORS)

    async def segment(request: web.Request) -> web.Response:
        if (refusal := await refused(request)) is not None:
            return refusal
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


_MAP_URI = re.compile(r'URI="([^"]+)"')


def _with_token(playlist: str, token: str) -> str:
    """The playlist with ``?token=`` on every URI it lists (segments, the init map)."""
    query = "?token=" + urllib.parse.quote(token, safe="")
    lines = []
    for line in playlist.splitlines():
        if line and not line.startswith("#"):
            line += query
        elif line.startswith("#EXT-X-MAP:"):
            line = _MAP_URI.sub(lambda m: f'URI="{m.group(1)}{query}"', line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers={**CORS, **(headers or {})})
