"""HTTP server: the demo page from gateway/static/, /healthz, /api/devices, /api/streams (ingest
figures, quality and lens controls) and WHIP ingest at /whip/{key}. Every error it answers
is JSON (`json_errors`). It holds no state of its own: it reads the stream registry and
hands WHIP offers to the WHIP ingest."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from multidict import CIMultiDict

from gateway.access import AccessPolicy, AccessRequest, Action, OpenAccess
from gateway.cluster.channel import CallFailed
from gateway.http.json_body import BadJson, read_json
from gateway.log import get_logger
from gateway.media.offers import OfferRefused
from gateway.media.registry import ControlRefusal, StreamControlError, StreamRegistry
from gateway.media.sinks.whep import WhepEgress
from gateway.media.sources.whip import WhipIngest
from gateway.net_limits import LISTEN_BACKLOG, ConnectionLimits

log = get_logger(__name__)

CONTROL_STATUS = {
    ControlRefusal.UNKNOWN_STREAM: 404,
    ControlRefusal.BAD_VALUE: 400,
    ControlRefusal.NOT_LIVE: 409,
    ControlRefusal.DEVICE_REFUSED: 502,
    ControlRefusal.NO_REPLY: 504,
}
# The body field of each control, with the names people also use for it.
CONTROL_FIELDS = {"quality": ("video_quality", "quality"), "lens": ("video_type", "lens")}
SDP = "application/sdp"
CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "Location"}


class Machine(Protocol):
    """The answers for the whole machine of a gateway that is one worker of several
    (`gateway.cluster.machine.MachineView`)."""

    async def health(self) -> dict[str, Any]: ...

    async def streams(self) -> list[dict[str, Any]]: ...


def stream_list(registry: StreamRegistry) -> list[dict[str, Any]]:
    """``/api/streams`` of this process: its streams by name, without mirrors (another
    worker's streams relayed here, listed by that worker)."""
    streams = sorted(registry.streams(), key=lambda stream: stream.name)
    return [stream.figures() for stream in streams if not registry.is_mirror(stream)]


class HttpServer:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        static_dir: Path,
        health: Callable[[], dict[str, Any]],
        registry: StreamRegistry,
        devices: Callable[[], Awaitable[Any]] | None = None,
        whip: WhipIngest | None = None,
        whep: WhepEgress | None = None,
        access: AccessPolicy | None = None,
        api_token: str | None = None,
        tls: ssl.SSLContext | None = None,
        routes: Sequence[web.RouteDef] = (),
        connection_limits: ConnectionLimits | None = None,
        sock: socket.socket | None = None,
        machine: Machine | None = None,
        middlewares: Sequence[Any] = (),
        private_path: str | None = None,
    ) -> None:
        """``machine``, ``middlewares``, ``private_path``: this gateway is one worker of
        several: /healthz and /api/streams answer for the machine, ``middlewares`` see each
        request before the access checks (`gateway.cluster.forward` passes requests about
        another worker's stream on), and the same app answers on the Unix socket
        ``private_path`` too (for the other workers)."""
        self.host, self.port = host, port
        self.sock = sock  # a listening socket to accept on (workers share one), else host:port
        self.static_dir = static_dir
        self.health = health
        self.registry = registry
        self.devices = devices
        self.whip = whip
        self.whep = whep
        self.access = access or OpenAccess()
        self.api_token = api_token
        self.tls = tls  # https:// when set
        # Other parts' routes (REST API, metrics, ...), matched before the generic ones here.
        self.routes = list(routes)
        self.connection_limits = connection_limits
        self.machine = machine
        self.middlewares = list(middlewares)
        self.private_path = private_path
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._private: asyncio.Server | None = None

    def build_app(self) -> web.Application:
        app = web.Application(
            client_max_size=1024 * 1024, middlewares=[json_errors, *self.middlewares, self._bearer]
        )
        app.router.add_routes(self.routes)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/api/devices", self._devices)
        app.router.add_get("/api/streams", self._streams)
        app.router.add_post("/api/streams/{name:.+}/{action:quality|lens}", self._control)
        app.router.add_get("/api/streams/{name:.+}", self._stream)
        app.router.add_post("/whip/{key}", self._whip_offer)
        app.router.add_route("OPTIONS", "/whip/{key}", self._whip_options)
        app.router.add_delete("/whip/{key}/{resource}", self._whip_delete)
        app.router.add_patch("/whip/{key}/{resource}", self._whip_patch)
        app.router.add_delete("/whep/sessions/{resource}", self._whep_delete)
        app.router.add_patch("/whep/sessions/{resource}", self._whip_patch)
        app.router.add_post("/whep/{name:.+}", self._whep_offer)
        app.router.add_route("OPTIONS", "/whep/{name:.+}", self._whip_options)
        app.router.add_get("/", self._index)
        if self.static_dir.is_dir():
            # Not under the API prefixes: a wrong method there is a 405, not a missing file.
            app.router.add_get(r"/{path:(?!(?:rest-api|api|whip|whep|hls)/).+}", self._static)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.build_app(), access_log=None)
        await self._runner.setup()
        # Our own listener rather than a web.TCPSite: it puts the per-address limit in front
        # of aiohttp's handler, at accept time.
        handler = self._runner.server
        assert handler is not None
        factory = (
            handler
            if self.connection_limits is None
            else self.connection_limits.guard_factory("http", handler)
        )
        loop = asyncio.get_running_loop()
        if self.sock is not None:
            self._listener = await loop.create_server(
                factory, sock=self.sock, ssl=self.tls, backlog=LISTEN_BACKLOG
            )
        else:
            self._listener = await loop.create_server(
                factory, self.host, self.port, ssl=self.tls, backlog=LISTEN_BACKLOG
            )
        if self.private_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.private_path)  # left by this worker's predecessor
            self._private = await loop.create_unix_server(handler, self.private_path)
            os.chmod(self.private_path, 0o600)
        log.info("http_listening", host=self.host, port=self.port, private=self.private_path)

    async def stop(self) -> None:
        listeners = [server for server in (self._listener, self._private) if server is not None]
        self._listener = self._private = None
        for listener in listeners:
            listener.close()  # no new connections; the runner closes the open ones
        if self._runner is not None:
            await self._runner.cleanup()
        for listener in listeners:
            await listener.wait_closed()
        if self.private_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.private_path)

    @web.middleware
    async def _bearer(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """With ``api_token`` set, the REST API and /metrics need ``Authorization: Bearer``.
        Without it, the control endpoints answer loopback clients only (as MediaMTX binds
        its API to 127.0.0.1): an open port must not let anyone start pulls or pushes."""
        protected = request.path.startswith(("/rest-api/", "/api/")) or request.path == "/metrics"
        if self.api_token and protected:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_token}".encode()):
                return error(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
        elif not self.api_token and is_control(request) and not is_loopback(request.remote):
            log.warning("http_control_refused", path=request.path, peer=request.remote)
            return error(403, CONTROL_REFUSED)
        response: web.StreamResponse = await handler(request)
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.machine is not None:
            return web.json_response(await self.machine.health())
        return web.json_response({"status": "ok", **self.health()})

    async def _devices(self, request: web.Request) -> web.Response:
        try:
            described = None if self.devices is None else await self.devices()
        except CallFailed as exc:  # the control process holds the DJI bridge and did not answer
            return web.json_response({"error": str(exc)}, status=503)
        if described is None:
            return web.json_response({"mqtt_connected": False, "gateways": [], "info": "no --mqtt broker"})
        return web.json_response(described)

    async def _index(self, request: web.Request) -> web.StreamResponse:
        index = self.static_dir / "index.html"
        if not index.is_file():
            return web.Response(text="skyrelay: no demo page installed\n")
        return web.FileResponse(index)

    async def _static(self, request: web.Request) -> web.StreamResponse:
        """A file of the demo page's directory; anything else (a directory, a missing file, a
        path that leads out of the directory) is a 404, given as JSON like every error."""
        root = self.static_dir.resolve()
        try:
            # A NUL (``/%00``) makes the OS calls raise ValueError; an over-long name, OSError.
            target = (root / request.match_info["path"]).resolve()
            found = target.is_relative_to(root) and target.is_file()
        except (ValueError, OSError):
            found = False
        if not found:
            raise web.HTTPNotFound()
        return web.FileResponse(target)

    # --- streams --------------------------------------------------------------------------

    async def _streams(self, request: web.Request) -> web.Response:
        if self.machine is not None:
            return web.json_response({"streams": await self.machine.streams()})
        return web.json_response({"streams": stream_list(self.registry)})

    async def _stream(self, request: web.Request) -> web.Response:
        name = self.registry.resolve(request.match_info["name"])
        stream = self.registry.find(name)
        if stream is None:
            return error(404, f"no stream {name!r}")
        return web.json_response(stream.figures())

    async def _control(self, request: web.Request) -> web.Response:
        name, action = request.match_info["name"], request.match_info["action"]
        try:
            body = await read_json(request)
        except BadJson as exc:
            return error(400, f"the body must be a JSON object: {exc}")
        fields = CONTROL_FIELDS[action]
        value = next((body[f] for f in fields if f in body), None) if isinstance(body, dict) else None
        if value is None:
            return error(400, f"the body must be a JSON object with {fields[0]!r}")
        try:
            await self.registry.control(name, action, value)
        except StreamControlError as exc:
            return error(CONTROL_STATUS[exc.refusal], exc.info)
        return web.json_response({"stream": name, fields[0]: value, "status": "ok"})

    # --- WHIP -----------------------------------------------------------------------------

    async def _whip_offer(self, request: web.Request) -> web.Response:
        if self.whip is None:
            return error(404, "WHIP ingest is off")
        if request.content_type != SDP:
            return error(415, f"a WHIP offer is {SDP}, not {request.content_type or 'nothing'}")
        key = request.match_info["key"]
        try:
            offer = await request.text()
            resource, answer = await self.whip.publish(key, offer, request.query.get("token"))
        except UnicodeDecodeError:
            return error(400, "the SDP offer is not text")
        except OfferRefused as exc:
            return error(exc.status, exc.info, CORS)
        headers = {**CORS, "Location": f"/whip/{key}/{resource}"}
        return web.Response(status=201, text=answer, content_type=SDP, headers=headers)

    async def _whip_options(self, request: web.Request) -> web.Response:
        headers = {
            **CORS,
            "Accept-Post": SDP,
            "Access-Control-Allow-Methods": "POST, DELETE, PATCH, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type, Authorization",
        }
        return web.Response(status=204, headers=headers)

    async def _whip_delete(self, request: web.Request) -> web.Response:
        key, resource = request.match_info["key"], request.match_info["resource"]
        if self.whip is None or not await self.whip.delete(key, resource):
            return error(404, "no such WHIP session", CORS)
        return web.Response(status=200, headers=CORS)

    # --- WHEP -----------------------------------------------------------------------------

    async def _whep_offer(self, request: web.Request) -> web.Response:
        if self.whep is None:
            return error(404, "WHEP is off")
        if request.content_type != SDP:
            return error(415, f"a WHEP offer is {SDP}, not {request.content_type or 'nothing'}", CORS)
        name = request.match_info["name"]
        reason = await self.access.check(AccessRequest(Action.PLAY, name, request.query.get("token")))
        if reason is not None:
            return error(403, reason, CORS)
        try:
            offer = await request.text()
            resource, answer = await self.whep.play(name, offer)
        except UnicodeDecodeError:
            return error(400, "the SDP offer is not text", CORS)
        except OfferRefused as exc:
            return error(exc.status, exc.info, CORS)
        headers = {**CORS, "Location": f"/whep/sessions/{resource}"}
        return web.Response(status=201, text=answer, content_type=SDP, headers=headers)

    async def _whep_delete(self, request: web.Request) -> web.Response:
        if self.whep is None or not await self.whep.delete(request.match_info["resource"]):
            return error(404, "no such WHEP session", CORS)
        return web.Response(status=200, headers=CORS)

    async def _whip_patch(self, request: web.Request) -> web.Response:
        # The answer carries every candidate; trickle ICE and ICE restarts are not offered.
        return error(405, "trickle ICE is not supported: the answer has all candidates", CORS)


CONTROL_REFUSED = (
    "control endpoints answer only loopback clients (127.0.0.1, ::1) unless the gateway has an"
    " api_token; set one and send it as 'Authorization: Bearer <token>'"
)
# REST API calls that only read (everything else there starts, stops or changes something).
REST_READS = ("find", "find_all", "snapshot")


def is_control(request: web.Request) -> bool:
    """An endpoint that starts, stops or changes something: every /rest-api call but the
    reads, and every /api call that is not a GET (HEAD, OPTIONS)."""
    path = request.path
    if path.startswith("/rest-api/"):
        return path.rstrip("/").rpartition("/")[2] not in REST_READS
    return path.startswith("/api/") and request.method not in ("GET", "HEAD", "OPTIONS")


def is_loopback(remote: str | None) -> bool:
    """A client address on this machine: 127.0.0.0/8, ::1 or their IPv4-mapped form. A Unix
    socket's peer (an empty address) or an unknown one is not."""
    try:
        address = ipaddress.ip_address((remote or "").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


# Headers of an HTTP error that describe its old (text) body, not the JSON one.
BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding", "transfer-encoding"})


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every HTTP error is JSON ``{"error": message}`` with its status: aiohttp's own (no
    route 404, wrong method 405, body too large 413, ...), any other raised or returned with
    a text body, and a handler's crash (500, logged). Other headers (``Allow`` of a 405,
    CORS, ...) are kept; redirects and successful answers pass untouched."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _as_json(request, exc.status, exc.reason, exc.text, exc.headers)
    except ConnectionError:
        raise  # the client went away: nobody to answer
    except Exception:
        if request.writer.output_size > 0:
            raise  # part of an answer went out already: nothing else can follow it
        log.exception("http_handler_failed", method=request.method, path=request.path)
        return web.json_response({"error": "internal error: see the gateway's log"}, status=500)
    if (
        response.status >= 400
        and isinstance(response, web.Response)
        and not response.prepared
        and response.content_type != "application/json"
    ):
        text = (
            response.body.decode(response.charset or "utf-8", "replace")
            if isinstance(response.body, bytes)
            else None
        )
        return _as_json(request, response.status, response.reason, text, response.headers)
    return response


def _as_json(request: web.Request, status: int, reason: str, text: str | None, headers: Any) -> web.Response:
    kept = CIMultiDict((key, value) for key, value in headers.items() if key.lower() not in BODY_HEADERS)
    said = (text or "").strip()
    if said and said != f"{status}: {reason}":
        message = said  # the handler's or aiohttp's own words, e.g. the size limit of a 413
    elif status == 404:
        message = f"not found: {request.method} {request.path}"
    elif status == 405:
        allowed = kept.get("Allow", "")
        message = f"method {request.method} is not allowed on {request.path}; allowed: {allowed or 'none'}"
    else:
        message = reason
    return web.json_response({"error": message}, status=status, headers=kept)
