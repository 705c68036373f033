"""The DJI bridge with several workers: one MQTT client for the machine, in the control
process, and the streams it starts wherever the device's push lands.

- `MachineStreams` is what the bridge sees of streams (`gateway.dji.bridge.Streams`): a
  viewer in any worker wants a camera (``want``/``unwant`` from that worker, one per
  viewer, so the `LiveController` counts every viewer of the machine); the worker holding
  the stream reports whether it plays; ending it is a message to that worker; waiting
  viewers fail in every worker; telemetry goes to every worker's hub.
- `SharedIngestKeys`: the bridge issues push keys here; every worker holds a copy, so the
  push is accepted by whichever worker the device's connection lands on (the name
  directory keeps two pushes of one key on two workers from both taking the stream).
- A device that serves RTSP is pulled by a worker (`RemotePull`): the first running one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.log import get_logger
from gateway.media.ingest_keys import IngestKey, IngestKeys
from gateway.media.registry import ControlRefusal, OnDemandSource, StreamControlError
from gateway.telemetry.hub import TelemetrySample

if TYPE_CHECKING:
    from gateway.cluster.supervisor import Supervisor

log = get_logger(__name__)


def key_message(key: IngestKey) -> dict[str, Any]:
    return {"op": "key", "key": key.key, "stream": key.stream_name, "keep": key.keep_stream}


class SharedIngestKeys(IngestKeys):
    """The control process's keys: each issue and revocation is told to every worker."""

    def __init__(self, supervisor: Supervisor) -> None:
        super().__init__()
        self.supervisor = supervisor

    def issue(self, stream_name: str, *, keep_stream: bool = False) -> IngestKey:
        issued = super().issue(stream_name, keep_stream=keep_stream)
        self.supervisor.broadcast(key_message(issued))
        return issued

    def revoke(self, key: str) -> None:
        super().revoke(key)
        self.supervisor.broadcast({"op": "revoke", "key": key})

    def messages(self) -> list[dict[str, Any]]:
        """Every open key, for a worker that (re)started."""
        return [key_message(key) for key in self._open.values()]


class MachineTelemetry:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def publish(self, sample: TelemetrySample, streams: Iterable[str]) -> None:
        message = {"op": "telemetry", "sn": sample.sn, "sample": sample.to_json(), "gauges": sample.gauges()}
        self.supervisor.broadcast({**message, "streams": list(streams)})


@dataclass(frozen=True, slots=True)
class RelayedSample:
    """A telemetry sample as the control process relayed it to a worker's hub."""

    sn: str
    body: dict[str, Any]
    gauge_values: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return self.body

    def gauges(self) -> dict[str, float]:
        return self.gauge_values


class MachineStreams:
    """The machine's streams as the DJI bridge in the control process sees them."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.telemetry = MachineTelemetry(supervisor)
        self.source: OnDemandSource | None = None
        self.playing_names: set[str] = set()  # reported by the workers holding them

    def add_on_demand(self, source: OnDemandSource) -> None:
        self.source = source

    def fail_waiting(self, name: str, info: str) -> None:
        self.supervisor.broadcast({"op": "fail_waiting", "name": name, "info": info})

    def playing(self, name: str) -> bool:
        return name in self.playing_names

    def end_stream(self, name: str, info: str | None = None) -> None:
        self.playing_names.discard(name)
        owner = self.supervisor.directory.owners.get(name)
        if owner is not None:
            self.supervisor.send_to(owner, {"op": "end_stream", "name": name, "info": info})

    # --- from the workers -------------------------------------------------------------------

    def report(self, name: str, playing: bool) -> None:
        if playing:
            self.playing_names.add(name)
        else:
            self.playing_names.discard(name)

    def want(self, name: str) -> None:
        if self.source is not None and self.source.serves(name):
            self.source.wanted(name)

    def unwant(self, name: str) -> None:
        if self.source is not None and self.source.serves(name):
            self.source.unwanted(name)

    async def control(self, name: str, action: str, value: object) -> dict[str, Any]:
        """A worker's viewer or operator asked for a control: the bridge's answer as a reply
        (a refusal is a value, not an error: the worker raises it again for its caller)."""
        if self.source is None:
            refusal = ControlRefusal.UNKNOWN_STREAM.value
            return {"refusal": refusal, "info": f"No device behind stream {name!r}"}
        try:
            await self.source.control(name, action, value)
        except StreamControlError as exc:
            return {"refusal": exc.refusal.value, "info": exc.info}
        return {}


class RemotePull:
    """An RTSP pull from a device, run by a worker."""

    def __init__(self, supervisor: Supervisor, name: str, url: str) -> None:
        self.supervisor = supervisor
        self.name = name
        self.url = url
        self.worker: int | None = None

    async def start(self) -> None:
        worker = self.supervisor.running_worker()
        if worker is None:
            log.error("dji_pull_no_worker", stream=self.name)
            return
        self.worker = worker.index
        await worker.call("pull", name=self.name, url=self.url)

    async def stop(self) -> None:
        if self.worker is not None:
            self.supervisor.send_to(self.worker, {"op": "unpull", "name": self.name})
