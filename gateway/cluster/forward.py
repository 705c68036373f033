"""HTTP requests about one stream, by name, answered by the worker holding it.

With several workers an HTTP request lands on any of them, but a stream's figures, its
thumbnails, its HLS packaging and its controls are those of the worker holding it (HLS
above all: segments numbered by one worker mean nothing to another). So every worker also
serves its HTTP app on a private Unix socket (`http_socket`, in the runtime directory,
mode 0600), and a worker that gets such a request for a stream another worker holds passes
it there as it is and streams the answer back (Server-Sent Events, segments).

The one rule of which requests are about a stream is `stream_named`; which worker holds a
name is the directory's (`WorkerLink.owner_elsewhere`). Requests about something else held
by one worker (a WHIP/WHEP session, a media session, an RTMP republish, an RTSP pull, by
its id) and the REST lists of such things are `machine_call`s: answered here, then, for an
id this worker does not know (404), by each other worker in turn; a list is every worker's
put together. The worker answering checks access as for any request: the forwarding worker
passes the client's address along (`PEER_HEADER`), trusted only on the private socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from enum import Enum
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
# On a machine-wide list: the workers that did not answer (what they hold is missing).
SILENT_HEADER = "X-Skyrelay-Workers-Silent"
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


class MachineCall(Enum):
    BY_ID = "by id"  # one worker knows the id: the first answer that is not 404
    LIST = "list"  # every worker's list, put together (404: an empty list)


# Requests that name a thing one worker holds, by its id (not a stream name).
BY_ID = {
    ("DELETE", "/whip/{key}/{resource}"),
    ("DELETE", "/whep/sessions/{resource}"),
    *(("POST", f"{REST_PREFIX}/{call}") for call in ("stream/terminate", "push/terminate", "rtsp/terminate")),
}
# REST lists of what each worker holds.
LISTS = {
    f"{REST_PREFIX}/{call}"
    for call in ("connection/find_all", "rtsp/find_all", "push/find_all", "push/find", "recorder/find_all")
}


def machine_call(method: str, template: str | None) -> MachineCall | None:
    """Whether a request (not about a stream by name) is answered by the whole machine."""
    if template is None:
        return None
    if (method, template) in BY_ID:
        return MachineCall.BY_ID
    if template in LISTS and method in ("GET", "POST"):
        return MachineCall.LIST
    return None


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
        if owner is not None and name is not None:
            return await self._forward(request, owner, name)
        resource = request.match_info.route.resource
        call = machine_call(request.method, resource.canonical if resource is not None else None)
        body = await request.read() if call is not None and request.body_exists else None
        response = await handler(request)
        if call is MachineCall.BY_ID and response.status == 404:
            response = await self._by_id(request, body) or response
        elif call is MachineCall.LIST and isinstance(response, web.Response):
            response = await self._list(request, body, response)
        if not response.prepared:  # an SSE stream has sent its headers already
            response.headers.setdefault(WORKER_HEADER, str(self.link.place.index))
        return response

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

    def _others(self) -> list[int]:
        place = self.link.place
        return [index for index in range(place.workers) if index != place.index]

    @contextlib.asynccontextmanager
    async def _ask(
        self, request: web.Request, worker: int, body: bytes | None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """``request`` as it is, to ``worker``'s private socket (raises aiohttp.ClientError
        or OSError when that worker does not answer)."""
        # Set, not added: a client's own X-Skyrelay-Peer (any case) goes, only ours says who it is.
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_HEADERS)
        headers[PEER_HEADER] = request.remote or ""
        path = http_socket(self.link.place.runtime_dir, worker)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
        async with aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path, force_close=True), timeout=timeout, auto_decompress=False
        ) as session:
            upstream = await session.request(
                request.method,
                f"http://worker{request.rel_url}",
                headers=headers,
                data=body,
                allow_redirects=False,
            )
            async with upstream:
                yield upstream

    def _headers(self, worker: int) -> dict[str, str]:
        return {WORKER_HEADER: str(self.link.place.index), FORWARDED_HEADER: str(worker)}

    async def _forward(self, request: web.Request, owner: int, name: str) -> web.StreamResponse:
        body = await request.read() if request.body_exists else None
        try:
            async with self._ask(request, owner, body) as upstream:
                return await _relay(request, upstream, self._headers(owner))
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("http_forward_failed", stream=name, worker=owner, error=str(exc))
            return web.json_response(
                {"error": f"the worker holding stream {name[:200]!r} does not answer"}, status=502
            )

    async def _by_id(self, request: web.Request, body: bytes | None) -> web.StreamResponse | None:
        """The first other worker's answer that is not 404, or None (no worker knows it)."""
        for worker in self._others():
            try:
                async with self._ask(request, worker, body) as upstream:
                    if upstream.status != 404:
                        return await _relay(request, upstream, self._headers(worker))
            except (aiohttp.ClientError, OSError) as exc:
                log.warning("http_forward_failed", path=request.path, worker=worker, error=str(exc))
        return None

    async def _list(self, request: web.Request, body: bytes | None, local: web.Response) -> web.Response:
        """``local`` (this worker's list) and every other worker's, as one list; 404 as an
        empty list, and an answer that is not a list (an error) as it is."""
        mine = json_list(local.status, local.body if isinstance(local.body, bytes) else b"")
        if mine is None:
            return local
        entries, silent = list(mine), []
        for worker in self._others():
            try:
                async with self._ask(request, worker, body) as upstream:
                    theirs = json_list(upstream.status, await upstream.read())
            except (aiohttp.ClientError, OSError) as exc:
                log.warning("http_forward_failed", path=request.path, worker=worker, error=str(exc))
                theirs = None
            if theirs is None:
                silent.append(worker)
            else:
                entries += theirs
        if not entries and local.status == 404:
            return local
        response = web.json_response(entries)
        if silent:  # the list lacks what these workers hold
            response.headers[SILENT_HEADER] = ",".join(map(str, silent))
        return response


def json_list(status: int, body: bytes) -> list[Any] | None:
    """A list answer's entries (404: none); None for anything else."""
    if status == 404:
        return []
    if status != 200:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


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
