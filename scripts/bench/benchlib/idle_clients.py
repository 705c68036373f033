"""Idle WebSocket sessions role: many WCS sessions that connect, establish (``connection``
→ ``getUserData``) and then only answer the server's pings, as a mobile app in the
background does.

Commands (see `common.serve_commands`):
  open  {url, count, concurrency} -> {open, failed}   open sessions until ``count`` are open
  stats {} -> {open, pings, closed}   pings answered since start; sessions the server closed
  close {} -> {}
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from .common import run_role

CONNECTION = orjson.dumps(
    {
        "message": "connection",
        "data": [{"appKey": "defaultApp", "mediaProviders": ["WebRTC"], "clientVersion": "2.0"}],
    }
).decode()
PONG = orjson.dumps({"message": "pong", "data": [None]}).decode()


class IdleClients:
    def __init__(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket per session
        self.sessions: list[asyncio.Task[None]] = []
        self.open = 0
        self.pings = 0
        self.closed = 0

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request["cmd"]
        if cmd == "open":
            return await self._open(
                request["url"], int(request["count"]), int(request.get("concurrency", 100))
            )
        if cmd == "stats":
            return {"open": self.open, "pings": self.pings, "closed": self.closed}
        if cmd == "close":
            await self.close()
            return {}
        raise ValueError(f"unknown command {cmd!r}")

    async def _open(self, url: str, count: int, concurrency: int) -> dict[str, Any]:
        failed = 0
        while self.open < count:
            batch = min(concurrency, count - self.open)
            ready = [asyncio.get_running_loop().create_future() for _ in range(batch)]
            for future in ready:
                self.sessions.append(asyncio.create_task(self._session(url, future)))
            results = await asyncio.gather(*ready, return_exceptions=True)
            failed += sum(1 for r in results if isinstance(r, BaseException))
            if failed > count // 10 + 10:
                break  # the server refuses: say so rather than loop
        return {"open": self.open, "failed": failed}

    async def _session(self, url: str, ready: asyncio.Future[None]) -> None:
        ws: ClientConnection | None = None
        try:
            async with asyncio.timeout(30):
                ws = await connect(url, max_size=2**20, ping_interval=None, open_timeout=30)
                await ws.send(CONNECTION)
                while True:  # until getUserData: the session is ESTABLISHED
                    frame = orjson.loads(await ws.recv())
                    if frame.get("message") == "getUserData":
                        break
        except (OSError, TimeoutError, WebSocketException, orjson.JSONDecodeError) as exc:
            if ws is not None:
                await ws.close()
            if not ready.done():
                ready.set_exception(exc)
            return
        self.open += 1
        ready.set_result(None)
        try:
            async for raw in ws:
                if b'"ping"' in (raw if isinstance(raw, bytes) else raw.encode()):
                    await ws.send(PONG)
                    self.pings += 1
        except WebSocketException:
            pass
        finally:
            self.open -= 1
            self.closed += 1

    async def close(self) -> None:
        for task in self.sessions:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self.sessions, return_exceptions=True)


def run() -> None:
    run_role("idle-clients", IdleClients)
