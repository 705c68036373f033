"""A set of background tasks: started and forgotten by their owner, yet never lost.

The event loop keeps only weak references to tasks, so an owner must hold the ones it
starts; it must also hear when one fails, or the error vanishes with the task. `TaskSet`
does both: it holds each task until it is done, logs a failure once (``task_failed``
with the owner's name), and cancels or waits for what is left when its owner stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

from gateway.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")


class TaskSet:
    def __init__(self, owner: str, logger: Any = None) -> None:
        self.owner = owner  # names the failures in the log
        self._log = logger if logger is not None else log
        self._tasks: set[asyncio.Future[Any]] = set()

    def spawn(self, work: Awaitable[T]) -> asyncio.Future[T]:
        """Run ``work`` in the background (a coroutine or a future); held until done."""
        task = asyncio.ensure_future(work)
        self.add(task)
        return task

    def add(self, task: asyncio.Future[Any]) -> None:
        """Hold ``task`` (one already running, e.g. a connection's handler) until done."""
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("task_failed", owner=self.owner, exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Future[Any]]:
        return iter(list(self._tasks))

    def __contains__(self, task: object) -> bool:
        return task in self._tasks

    async def wait(self, timeout: float | None = None) -> None:
        """Wait for the tasks held now (at most ``timeout`` seconds); they keep running
        after a timeout."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def cancel(self, *, keep: asyncio.Future[Any] | None = None) -> None:
        """Cancel every task (but ``keep``, e.g. the one calling) and wait until they ended."""
        tasks = [task for task in self._tasks if task is not keep]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
