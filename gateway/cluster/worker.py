"""A worker's side of the cluster: its link to the control process (the name directory), its
media link (other workers' viewers of the streams it holds), and the mirrors of streams
other workers hold (`ClusterStreams`, an on-demand source of this worker's registry).

A stream is owned by the worker that holds its source. A worker with viewers of a stream it
does not own receives that stream's frames once, over a Unix socket from the owner, into a
local mirror `Stream`, and fans out from there: the link starts with the cached keyframe
(the owner's subscription does that), carries keyframe requests back, and ends with the
stream.

A returning drone push that lands on another worker than the one that kept its stream takes
the name over (`WorkerLink.take_over`, asked by the registry's `claim_push`): the control
process asks the owner (`_hand_over`), whose stream, if it has no source, becomes a mirror of
the taker's, its viewers kept; other workers' mirrors re-point their link to the new owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.cluster import wire
from gateway.cluster.channel import CallFailed, Channel, Handler
from gateway.cluster.devices import RelayedSample
from gateway.cluster.directory import Replica
from gateway.cluster.shared_counts import COUNTS_FILE, SharedCounts
from gateway.log import get_logger
from gateway.media.ingest_keys import IngestKey, IngestKeys
from gateway.media.registry import (
    ControlRefusal,
    StreamControlError,
    StreamNameInUse,
    StreamRegistry,
    StreamUnavailable,
)
from gateway.media.sources.rtsp import RtspPull
from gateway.media.stream import NO_FEEDBACK, Codec, MediaFrame, SourceFeedback, Stream
from gateway.net_limits import bound_reads
from gateway.tasks import TaskSet

log = get_logger(__name__)

# What a viewer of a stream whose worker died hears (its own connection is elsewhere).
INFO_OWNER_GONE = "The worker holding the stream stopped"
INFO_NAME_TAKEN = "Stream name already in use (claimed by another worker at the same time)"
# A link that says nothing this long after connecting is not a worker of ours.
SUBSCRIBE_TIMEOUT = 5.0
# Unsent bytes on a link past which frames are skipped to the next keyframe (a worker that
# cannot keep up loses time, as a slow viewer does, never a broken GOP).
LINK_HIGH_WATER = 8 << 20
# How often a worker compares its camera streams' playing state with what it last reported.
PLAYING_REPORT_S = 0.2
SYNC_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class WorkerPlace:
    """Where a worker is in its machine: its index, the control channel's descriptor, the
    inherited listening sockets by name, and the directory for its media link's socket."""

    index: int
    control_fd: int
    listeners: dict[str, int]
    runtime_dir: Path
    workers: int

    def listener(self, name: str) -> socket.socket | None:
        fd = self.listeners.get(name)
        return None if fd is None else socket.socket(fileno=fd)

    def connection_counts(self) -> SharedCounts:
        """The machine's connections per address (for the per-address limit)."""
        return SharedCounts(self.runtime_dir / COUNTS_FILE, self.workers, self.index)


class WorkerLink:
    """The worker's end of the control channel and its `Replica` of the directory: the
    registry's `NameDirectory`. Claims go to the control process; a refused one (another
    worker claimed the name in the same instant) ends that stream here."""

    def __init__(self, place: WorkerPlace, registry: StreamRegistry, ingest_keys: IngestKeys) -> None:
        self.place = place
        self.registry = registry
        self.ingest_keys = ingest_keys
        self.replica = Replica(place.index)
        self.media_path = str(place.runtime_dir / f"worker-{place.index}.sock")
        self.remote = ClusterStreams(registry, self.replica, self)
        self.pulls: dict[str, RtspPull] = {}  # device cameras served over RTSP, pulled here
        self._reported: dict[str, bool] = {}  # camera name -> playing, as last told
        self.lost = asyncio.Event()  # the control process went away: this worker stops
        self.synced = asyncio.Event()  # the whole directory arrived: names can be decided here
        # Calls the control process makes of this worker, by op (other parts add theirs).
        self.handlers: dict[str, Handler] = {}
        self.channel: Channel | None = None
        self._server: asyncio.Server | None = None
        self._tasks = TaskSet("cluster")
        self.handlers["pull"] = self._pull
        self.handlers["hand_over"] = self._hand_over
        registry.directory = self
        registry.add_on_demand(self.remote)

    # --- NameDirectory ---------------------------------------------------------------------

    def owner_elsewhere(self, name: str) -> int | None:
        return self.replica.owner_elsewhere(name)

    def claimed(self, name: str) -> None:
        self.replica.owners[name] = self.place.index
        self.send({"op": "claim", "name": name})

    def released(self, name: str) -> None:
        if self.replica.owners.get(name) == self.place.index:
            del self.replica.owners[name]
        self.send({"op": "release", "name": name})

    async def take_over(self, name: str) -> None:
        try:
            answer = await self.call("take_over", name=name)
        except CallFailed as exc:
            answer = {"granted": False, "info": str(exc)}
        owner, info = answer.get("owner"), answer.get("info")
        if not answer.get("granted"):
            log.warning("stream_takeover_refused", stream=name, owner=owner, info=info)
            raise StreamNameInUse(name)
        # The directory's notice came first: the replica names this worker, a mirror here is ours.
        log.info("stream_taken_over", stream=name, owner=owner)

    async def _hand_over(self, message: dict[str, Any]) -> bool:
        """The control process asks for a name held here, for a returning push on worker
        ``to``: agreed if the stream has no source (it stays, a mirror of ``to``'s from now
        on), or if nothing is held here any more. The directory's notice follows either way."""
        name, to = str(message["name"]), int(message["to"])
        stream = self.registry.find(name)
        if stream is None or self.registry.is_mirror(stream):
            return True
        if self.registry.resumable(name) is not stream:
            return False  # its push is live here
        self.registry.hand_over(stream)
        self.replica.owners[name] = to  # no push here may take it back while the directory decides
        log.info("stream_handed_over", stream=name, to=to, viewers=len(stream.subscriptions))
        return True

    # --- I/O -------------------------------------------------------------------------------

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.media_path)  # left by this worker's predecessor
        self._server = await asyncio.start_unix_server(self._serve_link, self.media_path)
        os.chmod(self.media_path, 0o600)
        sock = socket.socket(fileno=self.place.control_fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        self.channel = Channel(reader, writer, self._control, self.handlers, "control")
        self._tasks.spawn(self._read_control(self.channel))
        self._tasks.spawn(self._report_playing())
        self.send({"op": "hello", "worker": self.place.index, "endpoint": self.media_path})
        # Before any listener accepts: a play or publish here needs the machine's names.
        try:
            async with asyncio.timeout(SYNC_TIMEOUT_S):
                await self.synced.wait()
        except TimeoutError:
            raise OSError(f"the control process sent no directory in {SYNC_TIMEOUT_S:.0f} s") from None
        log.info("worker_linked", worker=self.place.index, media=self.media_path)

    async def started(self) -> None:
        """Every part of this worker's gateway runs: the control process may count it up."""
        self.send({"op": "started"})

    async def stopping(self) -> None:
        """This worker's gateway is stopping: the control process sends it no more work."""
        self.send({"op": "stopping"})

    async def stop(self) -> None:
        await self.remote.stop()
        pulls, self.pulls = list(self.pulls.values()), {}
        for pull in pulls:
            await pull.stop()
        if self._server is not None:
            self._server.close()
        await self._tasks.cancel()
        if self.channel is not None:
            self.channel.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.media_path)

    def send(self, message: dict[str, Any]) -> None:
        """A message to the control process (dropped if the channel is gone)."""
        if self.channel is not None:
            self.channel.send(message)

    async def call(self, op: str, **fields: Any) -> Any:
        """Ask the control process (CallFailed if it cannot answer)."""
        if self.channel is None:
            raise CallFailed("not linked to the control process")
        return await self.channel.call(op, **fields)

    async def devices(self) -> Any:
        """The control process's DJI devices (for /api/devices), or None without a bridge."""
        return await self.call("devices")

    async def _read_control(self, channel: Channel) -> None:
        try:
            await channel.run()
        except (ConnectionError, wire.WireError) as exc:
            log.error("worker_control_lost", worker=self.place.index, error=str(exc))
        finally:
            self.lost.set()

    def _control(self, message: dict[str, Any]) -> None:
        refused = self.replica.apply(message)
        if refused is not None:
            taken = self.registry.find(refused)
            log.warning("stream_name_refused", stream=refused, owner=self.replica.owners.get(refused))
            if taken is not None and not self.registry.is_mirror(taken):
                self.registry.release(taken, INFO_NAME_TAKEN)
        match message:
            case {"op": "names"}:
                self.synced.set()
            case {"op": "owner", "name": str(name), "worker": self.place.index}:
                self.remote.adopt(name)  # taken over by a push here, or a handover undone
            case {"op": "owner", "name": str(name)}:
                # A camera a viewer here waits for, or a name taken over from the worker a
                # link here follows.
                moved_from = message.get("from")
                self.remote.mirror_if_wanted(name, moved_from if isinstance(moved_from, int) else None)
            case {"op": "cameras", "names": list(names)}:
                self.remote.cameras = {str(name) for name in names}
            case {"op": "key", "key": str(key), "stream": str(stream_name), "keep": bool(keep)}:
                self.ingest_keys.adopt(IngestKey(key, stream_name, keep))
            case {"op": "revoke", "key": str(key)}:
                self.ingest_keys.revoke(key)
            case {"op": "fail_waiting", "name": str(name), "info": str(info)}:
                self.registry.fail_waiting(name, info)
            case {"op": "end_stream", "name": str(name)}:
                why = message.get("info")
                self.registry.end_stream(name, why if isinstance(why, str) else None)
            case {"op": "telemetry", "sn": str(sn), "sample": dict(body), "streams": list(streams)}:
                gauges = message.get("gauges")
                sample = RelayedSample(sn, body, gauges if isinstance(gauges, dict) else {})
                self.registry.telemetry.publish(sample, [str(name) for name in streams])
            case {"op": "unpull", "name": str(name)}:
                pull = self.pulls.pop(name, None)
                if pull is not None:
                    self._tasks.spawn(pull.stop())

    async def _pull(self, message: dict[str, Any]) -> None:
        """The control process's DJI bridge asks this worker to pull a device's RTSP."""
        name, url = str(message["name"]), str(message["url"])
        old = self.pulls.pop(name, None)
        if old is not None:
            await old.stop()
        pull = self.pulls[name] = RtspPull(self.registry, name, url)
        await pull.start()

    async def _report_playing(self) -> None:
        """Tell the control process's DJI bridge whether each camera stream held here plays
        (it decides on retries and timeouts by it); only changes are sent."""
        while True:
            await asyncio.sleep(PLAYING_REPORT_S)
            for name in self.remote.cameras | set(self._reported):
                stream = self.registry.find(name)
                held = stream is not None and not self.registry.is_mirror(stream)
                playing = held and self.registry.playing(name)
                if self._reported.get(name, False) != playing:
                    self.send({"op": "playing", "name": name, "playing": playing})
                if playing:
                    self._reported[name] = True
                else:
                    self._reported.pop(name, None)

    # --- the media link: other workers' viewers of streams held here -------------------------

    async def _serve_link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = wire.FrameReader(wire.CONTROL_MAX_BYTES)
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                first: list[tuple[wire.Kind, bytes]] = []
                while not first:
                    data = await reader.read(65536)
                    if not data:
                        return
                    first = frames.feed(data)
            kind, payload = first[0]
            name = wire.json_payload(payload).get("name")
            if kind is not wire.Kind.SUBSCRIBE or not isinstance(name, str):
                raise wire.WireError("a link must start with SUBSCRIBE {name}")
            await _feed_link(self.registry, name, reader, writer, frames)
        except (TimeoutError, wire.WireError, ConnectionError) as exc:
            log.warning("media_link_refused", error=str(exc) or "no SUBSCRIBE in time")
        finally:
            writer.close()


async def _feed_link(
    registry: StreamRegistry,
    name: str,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    frames: wire.FrameReader,
) -> None:
    """Send one stream held here to another worker until either side ends."""
    # As a viewer does: a device camera whose push just landed here is waited for until it
    # plays (the link counts as one viewer of it, for as long as it is open).
    viewing = registry.viewing(name)
    try:
        stream = await viewing.open()
    except StreamUnavailable as exc:
        writer.write(wire.json_frame(wire.Kind.END, {"info": exc.info}))
        return
    try:
        sink = _LinkSink(writer)
        writer.write(wire.json_frame(wire.Kind.INFO, _stream_info(stream)))
        sub = stream.subscribe(sink, max_frames=90, first=True)
        sub.video.attach(sink.deliver)
        sub.audio.attach(sink.deliver)
        log.info("media_link_opened", stream=name)
        try:
            while data := await reader.read(4096):
                for kind, payload in frames.feed(data):
                    if kind is wire.Kind.KEYFRAME_REQUEST:
                        stream.request_keyframe()
                    elif kind is wire.Kind.EVENT:
                        _relayed_event(stream, payload)
        finally:
            stream.unsubscribe(sub)
            log.info("media_link_closed", stream=name, video_dropped=sub.video.dropped)
    finally:
        viewing.close()


def _relayed_event(stream: Stream, payload: bytes) -> None:
    """An event sent on a mirror of ``stream``: for every subscriber, the mirrors included
    (the sender's too: it did not broadcast it itself). A bad one is refused alone."""
    try:
        event_type, body = wire.parse_event(payload)
    except wire.WireError as exc:
        log.warning("media_link_event_refused", stream=stream.name, error=str(exc))
        return
    stream.broadcast_event(event_type, body)


def _codec(codec: Codec | None) -> dict[str, Any] | None:
    if codec is None:
        return None
    return {"name": codec.name, "clock_rate": codec.clock_rate, "parameters": codec.parameters}


def _parse_codec(value: Any) -> Codec | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise wire.WireError("bad codec in INFO")
    parameters = value.get("parameters")
    return Codec(
        value["name"], int(value.get("clock_rate", 0)), parameters if isinstance(parameters, dict) else {}
    )


def _stream_info(stream: Stream) -> dict[str, Any]:
    return {
        "video": _codec(stream.video_codec),
        "audio": _codec(stream.audio_codec),
        "width": stream.width,
        "height": stream.height,
        "ingest": stream.ingest,
    }


class _LinkSink:
    """The owner's subscriber for one link: frames and stream news, written as they come."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.transport = writer.transport

    def deliver(self, frame: MediaFrame) -> bool:
        if self.transport.is_closing() or self.transport.get_write_buffer_size() > LINK_HIGH_WATER:
            return False
        # Encoded once per frame, whatever the number of workers watching it.
        encoded = frame.derived.get("link")
        if encoded is None:
            encoded = frame.derived["link"] = wire.media_frame(frame)
        self.transport.write(encoded)
        return True

    def on_video_format(self, width: int, height: int) -> None:
        self.writer.write(wire.json_frame(wire.Kind.FORMAT, {"width": width, "height": height}))

    def on_stream_event(self, event_type: str, payload: Any) -> None:
        self.writer.write(wire.event_frame(event_type, payload))

    def on_stream_end(self, info: str | None) -> None:
        self.writer.write(wire.json_frame(wire.Kind.END, {"info": info}))
        self.writer.close()


class _LinkSource:
    """The source of a mirror: keyframe requests and events sent on it go back to the owner
    (an `EventRelay`)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def request_keyframe(self) -> None:
        if not self.writer.is_closing():
            self.writer.write(wire.frame(wire.Kind.KEYFRAME_REQUEST))

    def relay_event(self, event_type: str, payload: Any) -> None:
        if not self.writer.is_closing():
            self.writer.write(wire.event_frame(event_type, payload))

    async def feedback(self) -> SourceFeedback:
        return NO_FEEDBACK


class ClusterStreams:
    """This worker's on-demand source for what it does not hold itself: the names other
    workers hold, and the device cameras of the control process's DJI bridge.

    A viewer of a device camera is told to the control process (``want``/``unwant``, one per
    viewer), whose bridge starts the device's push; the push lands on some worker. Wherever
    the stream is held by another worker, the first local viewer opens a link to it and a
    mirror stream here; the last one leaving closes both."""

    def __init__(self, registry: StreamRegistry, replica: Replica, link: WorkerLink) -> None:
        self.registry = registry
        self.replica = replica
        self.link = link
        self.cameras: set[str] = set()  # the DJI bridge's stream names, from the control process
        self._wanted: dict[str, int] = {}
        self._links: dict[str, asyncio.Task[None]] = {}
        self._link_owners: dict[str, int] = {}  # the worker each link follows
        # Links replaced by one to a new owner (or whose name is this worker's now): their
        # mirror stream goes on without them.
        self._superseded: set[asyncio.Task[None]] = set()

    def serves(self, name: str) -> bool:
        return name in self.cameras or self.replica.owner_elsewhere(name) is not None or name in self._links

    def wanted(self, name: str) -> None:
        if not self.serves(name):
            raise StreamUnavailable("Stream not found")  # gone since the viewer looked
        self._wanted[name] = self._wanted.get(name, 0) + 1
        if name in self.cameras:
            self.link.send({"op": "want", "name": name})
        self.mirror_if_wanted(name)

    def unwanted(self, name: str) -> None:
        if name in self.cameras:
            self.link.send({"op": "unwant", "name": name})
        count = self._wanted.get(name, 0) - 1
        if count > 0:
            self._wanted[name] = count
            return
        self._wanted.pop(name, None)
        link = self._links.pop(name, None)
        self._link_owners.pop(name, None)
        if link is not None:
            link.cancel()

    def mirror_if_wanted(self, name: str, moved_from: int | None = None) -> None:
        """Open the link to the worker holding ``name`` if viewers here want it and none is
        open (a camera whose push just landed on another worker). A name taken over from
        the worker a link follows (``moved_from``) re-points the link, the mirror kept; a
        mirror here nobody wants any more (this worker handed the name over) ends."""
        owner = self.replica.owner_elsewhere(name)
        path = None if owner is None else self.replica.endpoints.get(owner)
        if owner is None or path is None:
            return
        old = self._links.get(name)
        if old is not None and (moved_from is None or self._link_owners.get(name) != moved_from):
            return
        if self._wanted.get(name):
            self._links[name] = asyncio.ensure_future(self._mirror(name, owner, path))
            self._link_owners[name] = owner
            if old is not None:
                self._superseded.add(old)
                old.cancel()
        elif (mirror := self._mirror_stream(name)) is not None:
            self.registry.release(mirror)

    def adopt(self, name: str) -> None:
        """The directory gave ``name`` to this worker: a mirror of it here becomes this
        worker's stream (a returning push attaches to it), its link dropped."""
        link = self._links.pop(name, None)
        self._link_owners.pop(name, None)
        if link is not None:
            self._superseded.add(link)
            link.cancel()
        mirror = self._mirror_stream(name)
        if mirror is not None:
            self.registry.adopt(mirror)

    def _mirror_stream(self, name: str) -> Stream | None:
        stream = self.registry.find(name)
        return stream if stream is not None and self.registry.is_mirror(stream) else None

    async def control(self, name: str, action: str, value: object) -> None:
        if name not in self.cameras:
            raise StreamControlError(ControlRefusal.UNKNOWN_STREAM, f"No device behind stream {name!r}")
        try:
            answer = await self.link.call("control", name=name, action=action, value=value)
        except CallFailed as exc:
            raise StreamControlError(ControlRefusal.NO_REPLY, str(exc)) from None
        if isinstance(answer, dict) and "refusal" in answer:
            raise StreamControlError(ControlRefusal(answer["refusal"]), str(answer.get("info")))

    async def stop(self) -> None:
        links = list(self._links.values())
        self._links.clear()
        for link in links:
            link.cancel()
        await asyncio.gather(*links, return_exceptions=True)

    async def _mirror(self, name: str, owner: int | None, path: str) -> None:
        stream: Stream | None = None
        info: str | None = INFO_OWNER_GONE
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            bound_reads(writer.transport)  # every frame of the stream comes through it
            writer.write(wire.json_frame(wire.Kind.SUBSCRIBE, {"name": name}))
            frames = wire.FrameReader(wire.MEDIA_MAX_BYTES)
            source = _LinkSource(writer)
            while data := await reader.read(1 << 18):
                for kind, payload in frames.feed(data):
                    if kind is wire.Kind.FRAME and stream is not None:
                        stream.push(wire.parse_media_frame(payload))
                    elif kind is wire.Kind.INFO and stream is None:
                        stream = self._open_mirror(name, wire.json_payload(payload), source, owner)
                    elif kind is wire.Kind.FORMAT and stream is not None:
                        message = wire.json_payload(payload)
                        stream.set_dimensions(int(message["width"]), int(message["height"]))
                    elif kind is wire.Kind.EVENT and stream is not None:
                        stream.broadcast_event(*wire.parse_event(payload))
                    elif kind is wire.Kind.END:
                        ended = wire.json_payload(payload).get("info")
                        info = ended if isinstance(ended, str) else None
                        return
        except asyncio.CancelledError:
            info = None  # the last local viewer left
            raise
        except (OSError, wire.WireError, KeyError, ValueError, StreamNameInUse) as exc:
            log.warning("media_link_failed", stream=name, owner=owner, error=str(exc))
        finally:
            if writer is not None:
                writer.close()
            task = asyncio.current_task()
            if self._links.get(name) is task:
                del self._links[name]
                self._link_owners.pop(name, None)
            if task in self._superseded:
                self._superseded.discard(task)  # the mirror goes on (see `adopt`, `mirror_if_wanted`)
            elif (stream := stream or self._mirror_stream(name)) is not None:
                self.registry.release(stream, info)
            else:
                self.registry.fail_waiting(name, info or "Stream not found")

    def _open_mirror(
        self, name: str, message: dict[str, Any], source: _LinkSource, owner: int | None
    ) -> Stream:
        # A mirror here already (a stream this worker handed over, or a link re-pointed to a
        # new owner) goes on with its viewers: they resume at the next keyframe.
        stream = self._mirror_stream(name) or self.registry.claim(name, on_demand=True, mirror=True)
        stream.set_codecs(_parse_codec(message.get("video")), _parse_codec(message.get("audio")))
        stream.attach_source(source, f"worker {owner}")
        stream.set_dimensions(int(message.get("width", 0)), int(message.get("height", 0)))
        return stream
