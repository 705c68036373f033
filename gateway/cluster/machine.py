"""``/healthz``, ``/metrics``, ``/api/streams`` and the REST API's stream list for the whole
machine when the gateway runs as several workers.

The worker an HTTP request lands on calls the control process (``gather``, ``what``); the
control process calls every running worker (``report``, ``what``) at once, each with a
short timeout, and returns their reports; the asking worker merges them (`gather`, where
the rules are). A worker that does not answer in time is listed as not answering: the
answer is late by at most `REPORT_TIMEOUT_S`, never hung. When the control process cannot
be asked, a worker answers with its own figures and says so.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.cluster import gather
from gateway.cluster.channel import CallFailed
from gateway.cluster.worker import WorkerLink
from gateway.log import get_logger
from gateway.media.registry import StreamRegistry

log = get_logger(__name__)

# How long the control process waits for each worker's report.
REPORT_TIMEOUT_S = 2.0
REPORTS = ("health", "metrics", "streams", "rest_streams")


# --- the control process's side --------------------------------------------------------------


class Reporter(Protocol):
    """A worker as the control process sees it (`supervisor.WorkerProcess`)."""

    index: int
    restarts: int

    @property
    def pid(self) -> int | None: ...

    @property
    def running(self) -> bool: ...

    async def call(self, op: str, **fields: Any) -> Any: ...


async def collect(workers: Sequence[Reporter], message: dict[str, Any]) -> list[gather.WorkerReport]:
    """Every worker's report of ``message["what"]``, asked at once."""
    what = message.get("what")
    if what not in REPORTS:
        raise ValueError(f"no report {what!r}; one of {', '.join(REPORTS)}")
    fields = {key: value for key, value in message.items() if key not in ("op", "id", "what")}

    async def one(worker: Reporter) -> gather.WorkerReport:
        entry = gather.report_entry(worker.index, worker.pid, worker.running, worker.restarts)
        if not worker.running:
            entry["error"] = "not running"
            return entry
        try:
            async with asyncio.timeout(REPORT_TIMEOUT_S):
                entry["value"] = await worker.call("report", what=what, **fields)
        except TimeoutError:
            entry["error"] = f"no report in {REPORT_TIMEOUT_S:g} s"
        except CallFailed as exc:
            entry["error"] = str(exc)
        return entry

    return list(await asyncio.gather(*(one(worker) for worker in workers)))


# --- a worker's side -------------------------------------------------------------------------


def worker_health(figures: dict[str, Any], registry: StreamRegistry) -> dict[str, Any]:
    """A worker's ``/healthz`` figures and the mirrors it holds (not in its ``streams``)."""
    return {**figures, "mirrors": sum(1 for stream in registry.streams() if registry.is_mirror(stream))}


@dataclass(frozen=True)
class LocalFigures:
    """This worker's own figures, each without the mirrors it holds."""

    health: Callable[[], dict[str, Any]]
    metrics: Callable[[], str]
    streams: Callable[[], list[dict[str, Any]]]
    rest_streams: Callable[[bool], Awaitable[list[dict[str, Any]]]]


class MachineView:
    """A worker's answers for the whole machine; it also answers the control process's
    ``report`` calls with its own figures."""

    def __init__(self, link: WorkerLink, local: LocalFigures) -> None:
        self.link = link
        self.local = local
        link.handlers["report"] = self._report

    async def _report(self, message: dict[str, Any]) -> Any:
        match message.get("what"):
            case "health":
                return self.local.health()
            case "metrics":
                return self.local.metrics()
            case "streams":
                return self.local.streams()
            case "rest_streams":
                return await self.local.rest_streams(bool(message.get("metrics")))
        raise ValueError(f"no report {message.get('what')!r}")

    async def _gather(self, what: str, **fields: Any) -> dict[str, Any] | None:
        """The control process's ``{"control": {...}, "workers": [reports]}``, or None when it
        cannot be asked (this worker is starting, or the control process is gone)."""
        try:
            reply = await self.link.call("gather", what=what, **fields)
        except CallFailed as exc:
            log.warning("machine_gather_failed", what=what, error=str(exc))
            return None
        return reply if isinstance(reply, dict) else None

    def _alone(self, value: Any) -> tuple[dict[str, Any], list[gather.WorkerReport]]:
        """This worker's own report, as the only one (the control process did not answer)."""
        entry = gather.report_entry(self.link.place.index, os.getpid(), True, 0)
        entry["value"] = value
        return {"error": "the control process did not answer"}, [entry]

    async def health(self) -> dict[str, Any]:
        reply = await self._gather("health")
        if reply is None:
            control, reports = self._alone(self.local.health())
            merged = gather.merge_health(reports, control)
            merged["status"] = "degraded"
            merged["problems"].append("the control process did not answer: figures of this worker only")
            return merged
        return gather.merge_health(reply["workers"], reply.get("control") or {})

    async def metrics(self) -> str:
        reply = await self._gather("metrics")
        if reply is None:
            _, reports = self._alone(self.local.metrics())
            return gather.render_families(
                gather.parse_families([(str(self.link.place.index), reports[0]["value"])])
            )
        control = reply.get("control") or {}
        return gather.merge_metrics(reply["workers"], str(control.get("metrics") or ""))

    async def streams(self) -> list[dict[str, Any]]:
        reply = await self._gather("streams")
        if reply is None:
            _, reports = self._alone(self.local.streams())
        else:
            reports = reply["workers"]
        return gather.merge_streams(reports)

    async def rest_streams(self, metrics: bool) -> list[dict[str, Any]]:
        reply = await self._gather("rest_streams", metrics=metrics)
        if reply is None:
            _, reports = self._alone(await self.local.rest_streams(metrics))
        else:
            reports = reply["workers"]
        return gather.merge_entries(reports)
