"""The stream registry: the one place where sources and sinks meet, by stream name."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping
from typing import Protocol

from gateway.log import get_logger
from gateway.media.stream import Stream
from gateway.telemetry.hub import TelemetryHub

log = get_logger(__name__)


class StreamNameInUse(Exception):
    pass


class StreamNameReserved(StreamNameInUse):
    """The name belongs to an on-demand source (a device camera, an ``rtsp://`` URL): a
    publisher there would pose as the device. Only the source's own claim may take it."""


INFO_NAME_RESERVED = "the name belongs to a device camera"


class StreamUnavailable(Exception):
    """An on-demand stream could not be started; ``info`` says why, for the viewer."""

    def __init__(self, info: str) -> None:
        super().__init__(info)
        self.info = info


class ControlRefusal(enum.Enum):
    UNKNOWN_STREAM = "unknown stream"
    BAD_VALUE = "bad value"
    NOT_LIVE = "not live"
    DEVICE_REFUSED = "device refused"
    NO_REPLY = "no reply"


class StreamControlError(Exception):
    """A control (quality, lens) the source could not carry out; ``info`` is for people."""

    def __init__(self, refusal: ControlRefusal, info: str) -> None:
        super().__init__(info)
        self.refusal = refusal
        self.info = info


class OnDemandSource(Protocol):
    """A source started when someone wants one of its names (a drone camera), and stopped
    when nobody does any more. The registry counts the wanting; the source decides."""

    def serves(self, name: str) -> bool: ...

    def wanted(self, name: str) -> None: ...

    def unwanted(self, name: str) -> None: ...

    async def control(self, name: str, action: str, value: object) -> None:
        """Ask the device behind ``name`` to change ``action`` ("quality", "lens") to
        ``value``; returns when it agreed, raises StreamControlError otherwise."""
        ...


class NameDirectory(Protocol):
    """The machine's stream names when several workers share them (`gateway.cluster`)."""

    def owner_elsewhere(self, name: str) -> int | None:
        """The other worker holding ``name``, if one does."""
        ...

    def claimed(self, name: str) -> None: ...

    def released(self, name: str) -> None: ...

    async def take_over(self, name: str) -> None:
        """A returning push here wants ``name``, which another worker holds: that worker
        hands it over if its stream has no source (`StreamRegistry.resumable` there), and
        this worker holds the name on return. Raises StreamNameInUse if it does not."""
        ...


class StreamRegistry:
    def __init__(
        self,
        *,
        keyframe_interval: float = 1.0,
        aliases: Mapping[str, str] | None = None,
        directory: NameDirectory | None = None,
    ) -> None:
        self._streams: dict[str, Stream] = {}
        # With several workers: names are unique across them (None: this process only).
        self.directory = directory
        # Copies of streams another worker holds: here for local viewers, not a claim.
        self._mirrors: set[Stream] = set()
        # Other names viewers may use (a friendly name for a drone camera's video_id).
        self.aliases = dict(aliases or {})
        self._keyframe_interval = keyframe_interval
        self._on_demand: list[OnDemandSource] = []
        self._waiting: dict[str, list[asyncio.Future[Stream]]] = {}
        # Telemetry meets its streams' viewers here too, by stream name.
        self.telemetry = TelemetryHub(self.find)

    # --- on-demand sources ----------------------------------------------------------------

    def add_on_demand(self, source: OnDemandSource) -> None:
        self._on_demand.append(source)

    def resolve(self, name: str) -> str:
        """The stream name behind a viewer-facing name (an alias or the name itself)."""
        return self.aliases.get(name, name)

    def on_demand_for(self, name: str) -> OnDemandSource | None:
        name = self.resolve(name)
        return next((s for s in self._on_demand if s.serves(name)), None)

    async def want(self, name: str) -> Stream:
        """Tell the on-demand source of ``name`` that a viewer wants it and wait until it
        plays. Raises StreamUnavailable if the source fails (it counts as unwanted then).
        Every successful `want` is paired with an `unwant` when the viewer leaves."""
        name = self.resolve(name)
        source = self.on_demand_for(name)
        if source is None:
            raise StreamUnavailable("Stream not found")
        stream = self.get(name)
        waiter: asyncio.Future[Stream] = asyncio.get_running_loop().create_future()
        if stream is not None:
            waiter.set_result(stream)
        else:
            # Wait before telling the source: it may fail at once (device offline).
            self._waiting.setdefault(name, []).append(waiter)
        try:
            source.wanted(name)
        except BaseException:
            # The source could not even start: it counts nothing, nobody waits.
            self._drop_waiter(name, waiter)
            raise
        try:
            return await waiter
        except BaseException:
            source.unwanted(name)
            raise
        finally:
            self._drop_waiter(name, waiter)

    def _drop_waiter(self, name: str, waiter: asyncio.Future[Stream]) -> None:
        waiters = self._waiting.get(name, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiting.pop(name, None)

    def viewing(self, name: str) -> Viewing:
        """A viewer's hold on ``name``: ``async with registry.viewing(name) as stream``, or
        ``await viewing.open()`` ... ``viewing.close()`` for a viewer that outlives a block.
        For an on-demand name it starts the source (and waits for it), counts this viewer
        and uncounts it on close; else it is the playable stream or StreamUnavailable."""
        return Viewing(self, name)

    def unwant(self, name: str) -> None:
        name = self.resolve(name)
        source = self.on_demand_for(name)
        if source is not None:
            source.unwanted(name)

    async def control(self, name: str, action: str, value: object) -> None:
        """Pass a viewer's or an operator's control to the on-demand source of ``name``."""
        source = self.on_demand_for(name)
        if source is None:
            raise StreamControlError(ControlRefusal.UNKNOWN_STREAM, f"No device behind stream {name!r}")
        await source.control(self.resolve(name), action, value)

    def fail_waiting(self, name: str, info: str) -> None:
        """The on-demand source of ``name`` gave up: every viewer waiting for it fails."""
        for waiter in self._waiting.pop(name, []):
            if not waiter.done():
                waiter.set_exception(StreamUnavailable(info))

    def _stream_live(self, stream: Stream) -> None:
        for waiter in self._waiting.pop(stream.name, []):
            if not waiter.done():
                waiter.set_result(stream)

    # --- sources and sinks ----------------------------------------------------------------

    def claim(
        self, name: str, *, resume: bool = False, on_demand: bool = False, mirror: bool = False
    ) -> Stream:
        """Reserve ``name`` for a new source. Raises StreamNameInUse if it is taken (here or,
        with several workers, in another one), and StreamNameReserved if an on-demand source
        owns it, unless ``on_demand`` says the claim is that source's own (its pull, a push
        with an ingest key it issued). With ``resume``, a stream of that name whose source went
        away (and that has not ended) is handed back instead, with its viewers. A ``mirror``
        is this worker's copy of a stream another worker holds (not a claim on the name)."""
        directory = self.directory
        if not mirror and directory is not None and directory.owner_elsewhere(name) is not None:
            raise StreamNameInUse(name)
        if not on_demand and self.on_demand_for(name) is not None:
            raise StreamNameReserved(name)
        if name in self.aliases:
            raise StreamNameInUse(name)  # a publisher there could never be played
        existing = self._streams.get(name)
        if resume and existing is not None and existing is self.resumable(name):
            return existing
        if existing is not None:
            raise StreamNameInUse(name)
        stream = Stream(name, keyframe_interval=self._keyframe_interval)
        stream.on_live = self._stream_live
        self._streams[name] = stream
        if mirror:
            self._mirrors.add(stream)
        elif directory is not None:
            directory.claimed(name)
        log.info("stream_claimed", stream=name, mirror=mirror)
        return stream

    async def claim_push(self, name: str, *, resume: bool, on_demand: bool) -> Stream:
        """A push's `claim` (RTMP, WHIP). A returning push (``resume``) whose name another
        worker holds takes it over from there if that worker's stream has no source (its
        viewers go on, fed from here); StreamNameInUse if it has one. The caller attaches its
        source before it waits for anything (a WHIP answer: `WebRtcPublisher.accept`), so
        that a push still connecting is not `resumable` by another one."""
        directory = self.directory
        try:
            return self.claim(name, resume=resume, on_demand=on_demand)
        except StreamNameReserved:
            raise
        except StreamNameInUse:
            if not resume or directory is None or directory.owner_elsewhere(name) is None:
                raise
        await directory.take_over(name)
        return self.claim(name, resume=resume, on_demand=on_demand)

    def resumable(self, name: str) -> Stream | None:
        """The stream a returning push may take back: held here (not a mirror), without a
        source, not ended. The one rule of resuming, in one worker or from another one."""
        stream = self._streams.get(name)
        if stream is None or stream.source is not None or stream.ended or stream in self._mirrors:
            return None
        return stream

    def hand_over(self, stream: Stream) -> None:
        """Another worker took ``stream``'s name over: the stream stays, with its viewers, as
        a mirror of that worker's (the directory moved the name; nothing to release)."""
        if self._streams.get(stream.name) is stream:
            self._mirrors.add(stream)

    def adopt(self, stream: Stream) -> None:
        """The directory gave this worker the name of a mirror here (a push taking it over,
        or a handover undone): the stream is this worker's, without a source until a push
        attaches, its viewers kept."""
        if stream in self._mirrors:
            self._mirrors.discard(stream)
            if stream.source is not None:
                stream.detach_source(stream.source)
            log.info("stream_adopted", stream=stream.name, viewers=len(stream.subscriptions))

    def get(self, name: str) -> Stream | None:
        """The stream of that name (or alias) if it can be played: codecs negotiated, media
        arriving."""
        stream = self._streams.get(self.resolve(name))
        playable = stream is not None and stream.ready and stream.live and not stream.ended
        return stream if playable else None

    def release(self, stream: Stream, info: str | None = None) -> None:
        """``stream`` is over: end it (its viewers fail with ``info`` if given) and free its
        name."""
        if self._streams.get(stream.name) is stream:
            del self._streams[stream.name]
            log.info("stream_released", stream=stream.name, viewers=len(stream.subscriptions), info=info)
            if stream in self._mirrors:
                self._mirrors.discard(stream)
            elif self.directory is not None:
                self.directory.released(stream.name)
        stream.end(info)

    def is_mirror(self, stream: Stream) -> bool:
        """A copy of a stream another worker holds (its figures are that worker's)."""
        return stream in self._mirrors

    def find(self, name: str) -> Stream | None:
        """The stream of that name, playable or not (a source may be away)."""
        return self._streams.get(name)

    def available(self, name: str) -> bool:
        """``name`` (or alias) can be played here or, with several workers, is held by another
        worker (WCS availableStream)."""
        if self.get(name) is not None:
            return True
        return self.directory is not None and self.directory.owner_elsewhere(self.resolve(name)) is not None

    def playing(self, name: str) -> bool:
        """A source is feeding ``name`` and its video has started (what an on-demand source
        waits for before it calls its push a success)."""
        stream = self._streams.get(name)
        return stream is not None and stream.live and stream.source is not None and not stream.ended

    def end_stream(self, name: str, info: str | None = None) -> None:
        """End the stream of that name if there is one (see `release`)."""
        stream = self._streams.get(name)
        if stream is not None:
            self.release(stream, info)

    def __len__(self) -> int:
        return len(self._streams)

    def streams(self) -> list[Stream]:
        return list(self._streams.values())


class Viewing:
    """One viewer's hold on a stream (see `StreamRegistry.viewing`). ``close`` is idempotent
    and may come before ``open`` finished (a player that left while the source started):
    cancelling the ``open`` task then uncounts the viewer."""

    def __init__(self, registry: StreamRegistry, name: str) -> None:
        self.registry = registry
        self.name = name
        self.on_demand = registry.on_demand_for(name) is not None
        self._counted = False
        self._closed = False

    async def open(self) -> Stream:
        """The stream, playing. Raises StreamUnavailable with the viewer's reason."""
        if self._closed:
            raise StreamUnavailable("Stopped")
        if not self.on_demand:
            stream = self.registry.get(self.name)
            if stream is None:
                raise StreamUnavailable("Stream not found")
            return stream
        if self._counted:
            stream = self.registry.get(self.name)
            if stream is not None:
                return stream
        else:
            stream = await self.registry.want(self.name)
            self._counted = True
            if self._closed:  # closed while the source started
                self._release()
                raise StreamUnavailable("Stopped")
            return stream
        raise StreamUnavailable("Stream not found")

    def close(self) -> None:
        self._closed = True
        self._release()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self.registry.unwant(self.name)

    async def __aenter__(self) -> Stream:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        self.close()
