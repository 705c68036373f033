"""HTTP requests about one stream, by name, answered by the worker holding it.

With several workers an HTTP request lands on any of them, but a stream's figures, its
thumbnails, its HLS packaging and its controls are those of the worker holding it (HLS
above all: segments numbered by one worker mean nothing to another). So every worker also
serves its HTTP app on a private Unix socket (`http_socket`, in the runtime directory,
mode 0600), and a worker that gets such a request for a stream another worker holds passes
it there as it is and streams the answer back (Server-Sent Events, segments).

The one rule of which requests are about a stream is `stream_named`; which worker holds a
name is the directory's (`WorkerLink.owner_elsewhere`). The worker answering checks access
as for any request: the forwarding worker passes the client's address along
(`PEER_HEADER`), trusted only on the private socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.cluster.worker import WorkerLink
from gateway.http.json_body import BadJson, read_json
from gateway.http.rest_api import PREFIX as REST_PREFIX
from gateway.http.rest_api import STREAM_NAME_FIELDS
from gateway.log import get_logger

log = get_logger(__name__)

PEER_HEADER = "X-Skyrelay-Peer"
# On every answer: the worker the request landed on, and the one it was passed to (if so).
WORKER_HEADER = "X-Skyrelay-Worker"
FORWARDED_HEADER = "X-Skyrelay-Forwarded-To"
# Route templates under which the {name} part is a stream's name.
STREAM_ROUTES = ("/api/streams/{name}/", "/hls/{name}/")
STREAM_ROUTE_EXACT = "/api/streams/{name}"
# Not passed on either way (hop by hop, or remade by aiohttp).
HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}
)
CONNECT_TIMEOUT_S = 5.0
# A quiet answer (an SSE stream between events) looks this often whether its client left.
GONE_CHECK_S = 1.0


def http_socket(runtime_dir: Path, worker: int) -> str:
    """Where worker ``worker`` answers HTTP for the other workers."""
    return str(runtime_dir / f"http-{worker}.sock")


def stream_named(template: str | None, match_info: Mapping[str, str], body: Any) -> str | None:
    """The stream a request is about, by name, or None. ``template``: its route's
    (``/api/streams/{name}/thumbnail.jpg``); ``body``: its JSON body (REST API calls)."""
    if template is None:
        return None
    name = match_info.get("name")
    if name and (template == STREAM_ROUTE_EXACT or template.startswith(STREAM_ROUTES)):
        return name
    fields = STREAM_NAME_FIELDS.get(template.removeprefix(REST_PREFIX + "/"))
    if fields is not None and template.startswith(REST_PREFIX + "/") and isinstance(body, dict):
        return next((body[key] for key in fields if isinstance(body.get(key), str) and body[key]), None)
    return None


class Forwarder:
    """A worker's middleware: requests about another worker's stream go there; requests
    from another worker (on the private socket) are answered here, as the client's."""

    def __init__(self, link: WorkerLink) -> None:
        self.link = link
        self.path = http_socket(link.place.runtime_dir, link.place.index)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse
        if self._private(request):
            # From another worker: answered here whatever the directory says (no loops).
            response = await handler(request.clone(remote=request.headers.get(PEER_HEADER, "")))
            return response
        owner, name = await self._owner(request)
        if owner is None or name is None:
            response = await handler(request)
            if not response.prepared:  # an SSE stream has sent its headers already
                response.headers[WORKER_HEADER] = str(self.link.place.index)
            return response
        return await self._forward(request, owner, name)

    def _private(self, request: web.Request) -> bool:
        transport = request.transport
        return transport is not None and transport.get_extra_info("sockname") == self.path

    async def _owner(self, request: web.Request) -> tuple[int | None, str | None]:
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else None
        body = None
        if template is not None and template.startswith(REST_PREFIX + "/") and request.body_exists:
            with contextlib.suppress(BadJson):
                body = await read_json(request)  # kept by aiohttp: the handler reads it again
        name = stream_named(template, request.match_info, body)
        if name is None:
            return None, None
        registry = self.link.registry
        return self.link.owner_elsewhere(registry.resolve(name)), name

    async def _forward(self, request: web.Request, owner: int, name: str) -> web.StreamResponse:
        # Set, not added: a client's own X-Skyrelay-Peer (any case) goes, only ours says who it is.
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_HEADERS)
        headers[PEER_HEADER] = request.remote or ""
        body = await request.read() if request.body_exists else None
        path = http_socket(self.link.place.runtime_dir, owner)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
        async with aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path, force_close=True), timeout=timeout, auto_decompress=False
        ) as session:
            try:
                upstream = await session.request(
                    request.method,
                    f"http://worker{request.rel_url}",
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                )
            except (aiohttp.ClientError, OSError) as exc:
                log.warning("http_forward_failed", stream=name, worker=owner, error=str(exc))
                return web.json_response(
                    {"error": f"the worker holding stream {name[:200]!r} does not answer"}, status=502
                )
            async with upstream:
                return await _relay(
                    request,
                    upstream,
                    {WORKER_HEADER: str(self.link.place.index), FORWARDED_HEADER: str(owner)},
                )


async def _relay(
    request: web.Request, upstream: aiohttp.ClientResponse, extra: dict[str, str]
) -> web.StreamResponse:
    """Stream ``upstream``'s answer to the client until it ends or the client leaves."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    for key, value in upstream.headers.items():
        if key.lower() not in HOP_HEADERS:
            response.headers.add(key, value)
    response.headers.update(extra)
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    await response.prepare(request)
    try:
        while True:
            try:
                async with asyncio.timeout(GONE_CHECK_S):
                    chunk = await upstream.content.readany()
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break  # the client left a quiet stream
                continue
            if not chunk:
                break
            await response.write(chunk)
    except (ConnectionError, aiohttp.ClientError):
        return response  # either side went away mid-answer: nothing more to say
    await response.write_eof()
    return response
