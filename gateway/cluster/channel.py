"""The control channel between the control process and one worker, seen from either end:
JSON messages, some of them calls that get a reply.

A message with an ``id`` and an ``op`` the receiving end has a handler for is a call; the
handler's result goes back as ``{"op": "reply", "id", "value"}`` (or ``"error"``). Every
other message goes to the end's ``notify`` callback.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.cluster import wire
from gateway.log import get_logger
from gateway.tasks import TaskSet

log = get_logger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
CALL_TIMEOUT_S = 10.0


class CallFailed(Exception):
    """The other end could not answer a call (its handler failed, or it went away)."""


class Channel:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        notify: Callable[[dict[str, Any]], None],
        handlers: Mapping[str, Handler],
        name: str,
    ) -> None:
        self.name = name  # for the log: "control" or "worker N"
        self._reader = reader
        self._writer = writer
        self._notify = notify
        self._handlers = handlers
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._calls = TaskSet(f"{name} calls")

    def send(self, message: dict[str, Any]) -> None:
        if not self._writer.is_closing():
            self._writer.write(wire.json_frame(wire.Kind.CONTROL, message))

    async def call(self, op: str, *, timeout: float = CALL_TIMEOUT_S, **fields: Any) -> Any:
        """Ask the other end; its handler's value, or CallFailed."""
        call_id = next(self._ids)
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = reply
        self.send({"op": op, "id": call_id, **fields})
        try:
            async with asyncio.timeout(timeout):
                return await reply
        except TimeoutError:
            raise CallFailed(f"{self.name} did not answer {op!r} in {timeout:.0f} s") from None
        finally:
            self._pending.pop(call_id, None)

    async def run(self) -> None:
        """Read until the other end closes the channel (or breaks the framing)."""
        frames = wire.FrameReader(wire.CONTROL_MAX_BYTES)
        try:
            while data := await self._reader.read(65536):
                for _, payload in frames.feed(data):
                    self._receive(wire.json_payload(payload))
        finally:
            for reply in self._pending.values():
                if not reply.done():
                    reply.set_exception(CallFailed(f"{self.name} went away"))
            await self._calls.cancel()

    def close(self) -> None:
        self._writer.close()

    def _receive(self, message: dict[str, Any]) -> None:
        op, call_id = message.get("op"), message.get("id")
        if op == "reply" and isinstance(call_id, int):
            reply = self._pending.get(call_id)
            if reply is not None and not reply.done():
                if "error" in message:
                    reply.set_exception(CallFailed(str(message["error"])))
                else:
                    reply.set_result(message.get("value"))
            return
        handler = self._handlers.get(op) if isinstance(op, str) else None
        if handler is not None and isinstance(call_id, int):
            self._calls.spawn(self._answer(handler, call_id, message))
            return
        self._notify(message)

    async def _answer(self, handler: Handler, call_id: int, message: dict[str, Any]) -> None:
        try:
            value = await handler(message)
        except Exception as exc:  # the caller hears why; this end stays up
            log.warning("control_call_failed", channel=self.name, op=message.get("op"), error=str(exc))
            self.send({"op": "reply", "id": call_id, "error": str(exc) or type(exc).__name__})
            return
        self.send({"op": "reply", "id": call_id, "value": value})
