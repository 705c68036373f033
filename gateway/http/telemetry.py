"""Telemetry over HTTP: a device's latest sample (``GET /api/devices/{sn}/telemetry``) and a
stream's telemetry as Server-Sent Events (``GET /api/streams/{name}/telemetry``).

An SSE client is a receiver like a player: rate-limited (newest wins), each event the same
JSON a player gets, stamped with the stream's own media clock (90 kHz). It starts with the
stream's latest sample, and a comment line every 15 s keeps proxies from closing a quiet
stream. It does not count as a viewer: it never starts a drone's push.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from gateway.access import AccessPolicy, AccessRequest, Action, OpenAccess
from gateway.http.server import error
from gateway.log import get_logger
from gateway.media.registry import StreamRegistry
from gateway.telemetry.delivery import RateLimitedTelemetry
from gateway.telemetry.hub import TelemetryMessage

log = get_logger(__name__)

KEEPALIVE_S = 15.0
# aiohttp does not cancel a handler whose client left; a quiet stream looks this often.
GONE_CHECK_S = 1.0
MAX_SSE_CLIENTS = 1000  # across streams; each holds a connection and a subscription
CORS = {"Access-Control-Allow-Origin": "*"}


class TelemetryHttp:
    def __init__(self, registry: StreamRegistry, rate: float, access: AccessPolicy | None = None) -> None:
        self.registry = registry
        self.rate = rate
        self.access = access or OpenAccess()
        self.clients = 0
        self._streams: set[asyncio.Task[object]] = set()  # the SSE handlers, ended at stop
        self.refused = 0  # SSE clients turned away at MAX_SSE_CLIENTS

    async def stop(self) -> None:
        """End every SSE stream (aiohttp would otherwise wait for them at shutdown)."""
        for task in list(self._streams):
            task.cancel()
        await asyncio.gather(*self._streams, return_exceptions=True)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/devices/{sn}/telemetry", self.latest),
            web.get("/api/streams/{name:.+}/telemetry", self.events),
        ]

    async def latest(self, request: web.Request) -> web.Response:
        sn = request.match_info["sn"]
        sample = self.registry.telemetry.latest(sn)
        if sample is None:
            return error(404, f"no telemetry from device {sn[:64]!r}", CORS)
        return web.json_response(sample.to_json(), headers=CORS)

    async def events(self, request: web.Request) -> web.StreamResponse:
        name = self.registry.resolve(request.match_info["name"])
        check = AccessRequest(Action.PLAY, name, request.query.get("token"))
        reason = await self.access.check(check)
        if reason is not None:
            return error(403, reason, CORS)
        if self.registry.find(name) is None and self.registry.on_demand_for(name) is None:
            return error(404, f"no stream {name[:200]!r}", CORS)
        if self.clients >= MAX_SSE_CLIENTS:
            self.refused += 1
            return error(503, f"already {MAX_SSE_CLIENTS} telemetry clients", {**CORS, "Retry-After": "5"})
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **CORS}
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        latest: list[TelemetryMessage] = []
        ready = asyncio.Event()

        def arrived(message: TelemetryMessage) -> None:
            latest[:] = [message]  # newest wins: a slow client skips samples, never queues them
            ready.set()

        current = self.registry.telemetry.current(name)
        if current is not None:
            arrived(current)
        receiver = RateLimitedTelemetry(self.registry.telemetry, name, self.rate, arrived)
        self.clients += 1
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        log.info("telemetry_sse_opened", stream=name, peer=request.remote)
        try:
            quiet = 0.0
            while not _gone(request):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(GONE_CHECK_S):
                        await ready.wait()
                if not latest:
                    quiet += GONE_CHECK_S
                    if quiet >= KEEPALIVE_S:
                        quiet = 0.0
                        await response.write(b": keepalive\n\n")
                    continue
                quiet = 0.0
                message = latest.pop()
                ready.clear()
                data = message.media_payload()
                await response.write(f"event: telemetry\ndata: {data}\n\n".encode())
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away
        finally:
            receiver.close()
            self._streams.discard(task)
            self.clients -= 1
            log.info("telemetry_sse_closed", stream=name, sent=receiver.sent)
        return response


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
