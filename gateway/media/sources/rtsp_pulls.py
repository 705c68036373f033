"""RTSP pulls by stream name, as WCS has them: started by the REST API (``rtsp/startup``)
and kept until ``rtsp/terminate``, or on demand by a play of a name that is an
``rtsp://`` URL, stopped a linger after its last viewer left.

Each pull is an `RtspPull` (which reconnects by itself); this module only decides when
pulls exist, and tells waiting viewers when a source does not start playing in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from gateway.log import get_logger
from gateway.media.names import URL_SCHEMES, BadStreamName, validate_stream_name
from gateway.media.registry import ControlRefusal, StreamControlError, StreamRegistry
from gateway.media.sources.rtsp import RtspPull
from gateway.tasks import TaskSet

log = get_logger(__name__)

SCHEMES = URL_SCHEMES  # the names that are pulls are the URLs the name rule allows


class PullRefused(ValueError):
    """A pull that cannot be started; the message says why."""


def redacted(uri: str) -> str:
    """The URI without its password, for listings and logs. Never raises: it is called on
    names and URIs from clients, which may not parse (a bad port, a broken IPv6 host)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    # The authority ends at the first of / ? # (RFC 3986 3.2); its userinfo at its last @.
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, hostport = rest[:end].rpartition("@")
    if not at or ":" not in userinfo:
        return uri
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{hostport}{rest[end:]}"


@dataclass(eq=False)
class RtspSource:
    name: str
    uri: str
    pull: RtspPull
    on_demand: bool  # started by a play (stops after its viewers) or by the REST API
    viewers: int = 0
    timers: TaskSet = field(default_factory=lambda: TaskSet("rtsp_pull"))  # start, start watchdog
    linger: asyncio.Task[None] | None = None  # after the last viewer of an on-demand pull

    def describe(self, registry: StreamRegistry) -> dict[str, object]:
        stream = registry.find(self.name)
        live = stream is not None and stream.live and not stream.ended
        return {
            "name": redacted(self.name),  # a played rtsp:// URL is its own name
            "uri": redacted(self.uri),
            "status": "PLAYING" if self.pull.connected else ("FAILED" if self.pull.failed else "PENDING"),
            "on_demand": self.on_demand,
            "transport": self.pull.transport,
            "viewers": self.viewers,
            "connections": self.pull.connections,
            "frames": self.pull.frames,
            "live": live,
        }


class RtspPulls:
    def __init__(
        self,
        registry: StreamRegistry,
        *,
        start_timeout: float = 10.0,
        linger: float = 10.0,
        pull_timeout: float = 10.0,
    ) -> None:
        self.registry = registry
        self.start_timeout = start_timeout
        self.linger = linger
        self.pull_timeout = pull_timeout
        self.sources: dict[str, RtspSource] = {}  # by stream name
        registry.add_on_demand(self)

    # --- REST ----------------------------------------------------------------------------------

    async def startup(self, uri: str, name: str | None = None, transport: str = "tcp") -> RtspSource:
        """Pull ``uri`` as stream ``name`` (default: the URI itself) over ``transport`` (tcp,
        udp) until terminated."""
        if not uri.startswith(SCHEMES):
            raise PullRefused(f"not an rtsp:// or rtsps:// URI: {redacted(uri)[:100]!r}")
        try:
            parts = urlsplit(uri)
            parts.port  # noqa: B018 - raises for a port out of range
        except ValueError as exc:
            raise PullRefused(f"not a valid URI: {exc}") from None
        if not parts.hostname:
            raise PullRefused("the URI names no host")
        if transport not in ("tcp", "udp"):
            raise PullRefused(f"transport is tcp or udp, not {transport!r}")
        try:
            name = validate_stream_name(name or uri)  # the URI is the name unless one is given
        except BadStreamName as exc:
            raise PullRefused(str(exc)) from None
        existing = self.sources.get(name)
        if existing is not None:
            existing.on_demand = False  # asked for explicitly: it stays
            return existing
        if self.registry.find(name) is not None:
            raise PullRefused(f"stream {name!r} already has a source")
        return await self._start(name, uri, on_demand=False, transport=transport)

    async def terminate(self, key: str) -> bool:
        """Stop the pull whose name or URI is ``key``; its viewers are told it stopped."""
        source = self.sources.get(key) or next((s for s in self.sources.values() if s.uri == key), None)
        if source is None:
            return False
        await self._stop(source, "Stopped by the REST API")
        return True

    def find_all(self) -> list[dict[str, object]]:
        return [source.describe(self.registry) for source in self.sources.values()]

    async def stop(self) -> None:
        for source in list(self.sources.values()):
            await self._stop(source, "Gateway stopping")

    # --- OnDemandSource ------------------------------------------------------------------------

    def serves(self, name: str) -> bool:
        return name in self.sources or name.startswith(SCHEMES)

    def wanted(self, name: str) -> None:
        source = self.sources.get(name)
        if source is None:
            source = self.sources[name] = self._new_source(name, name, on_demand=True)
            self._later(source, source.pull.start())
        source.viewers += 1
        if source.linger is not None:
            source.linger.cancel()  # someone watches again
            source.linger = None
        if self.registry.get(name) is None:
            self._later(source, self._expect_playing(source))

    def unwanted(self, name: str) -> None:
        source = self.sources.get(name)
        if source is None:
            return
        source.viewers = max(0, source.viewers - 1)
        if source.viewers == 0 and source.on_demand and source.linger is None:
            source.linger = asyncio.ensure_future(self._linger(source))

    async def control(self, name: str, action: str, value: object) -> None:
        raise StreamControlError(ControlRefusal.UNKNOWN_STREAM, f"An RTSP source has no {action} control")

    # --- internals -----------------------------------------------------------------------------

    def _new_source(self, name: str, uri: str, *, on_demand: bool, transport: str = "tcp") -> RtspSource:
        over: Literal["tcp", "udp"] = "udp" if transport == "udp" else "tcp"
        pull = RtspPull(self.registry, name, uri, timeout=self.pull_timeout, transport=over)
        log.info("rtsp_source_started", stream=redacted(name), uri=redacted(uri), on_demand=on_demand)
        return RtspSource(name, uri, pull, on_demand)

    async def _start(self, name: str, uri: str, *, on_demand: bool, transport: str = "tcp") -> RtspSource:
        source = self.sources[name] = self._new_source(name, uri, on_demand=on_demand, transport=transport)
        await source.pull.start()
        return source

    def _later(self, source: RtspSource, work: Awaitable[None]) -> None:
        source.timers.spawn(work)

    async def _expect_playing(self, source: RtspSource) -> None:
        """Viewers waiting for a source that never plays fail after start_timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while loop.time() < deadline and self.registry.get(source.name) is None:
            if source.pull.failed:
                break
            await asyncio.sleep(0.1)
        if self.registry.get(source.name) is None:
            why = source.pull.failed or f"no video within {self.start_timeout:g} s"
            self.registry.fail_waiting(source.name, f"RTSP source {redacted(source.uri)} failed: {why}")

    async def _linger(self, source: RtspSource) -> None:
        await asyncio.sleep(self.linger)
        if source.viewers == 0 and source.on_demand:
            await self._stop(source, None)

    async def _stop(self, source: RtspSource, info: str | None) -> None:
        """End the pull and its stream; viewers left get ``info`` as a failure (None: a plain
        stop)."""
        if self.sources.get(source.name) is not source:
            return
        del self.sources[source.name]
        current = asyncio.current_task()
        for timer in [*source.timers, source.linger]:
            if timer is not None and timer is not current:
                timer.cancel()
        await source.pull.stop()
        stream = self.registry.find(source.name)
        if stream is not None:
            self.registry.release(stream, info)
        log.info("rtsp_source_stopped", stream=redacted(source.name), reason=info or "no viewers")
