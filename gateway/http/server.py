"""HTTP server: the demo page from static/, /healthz and /api/devices. It holds no state of
its own: what those report comes from callables the composition root gives it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.log import get_logger

log = get_logger(__name__)


class HttpServer:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        static_dir: Path,
        health: Callable[[], dict[str, Any]],
        devices: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.static_dir = static_dir
        self.health = health
        self.devices = devices
        self._runner: web.AppRunner | None = None

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/api/devices", self._devices)
        app.router.add_get("/", self._index)
        if self.static_dir.is_dir():
            app.router.add_static("/", self.static_dir, show_index=False, follow_symlinks=False)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.build_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        log.info("http_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", **self.health()})

    async def _devices(self, request: web.Request) -> web.Response:
        if self.devices is None:
            return web.json_response({"mqtt_connected": False, "gateways": [], "info": "no --mqtt broker"})
        return web.json_response(self.devices())

    async def _index(self, request: web.Request) -> web.StreamResponse:
        index = self.static_dir / "index.html"
        if not index.is_file():
            return web.Response(text="skyrelay: no demo page installed\n")
        return web.FileResponse(index)
