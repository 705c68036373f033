"""Reading a JSON request body, with the parser the WebSocket API uses (orjson): its
nesting limit (1024) is the one depth rule for every JSON the gateway reads, so a body
nested 5,000 deep is a bad body (400), not a RecursionError."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


class BadJson(ValueError):
    """The body is not JSON (or nested too deep); the message says why."""


async def read_json(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise BadJson(f"the body is not JSON: {exc}") from None
