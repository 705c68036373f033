"""Sans-I/O: the machine's stream names across workers.

The control process keeps the `Directory` (which worker holds which name, first claim
wins); every worker keeps a `Replica` of it, told of every change, so that its registry
refuses a name another worker holds without a round trip. Two workers claiming one name in
the same instant both pass their replica; the directory grants the first and refuses the
second, whose registry then ends that stream ("already in use").

A returning push (a drone's, whose stream outlives a dropped push) may land on another
worker than the one that kept its stream: that worker takes the name over. The directory asks
the owner (`take_over`: ``ask``); the owner agrees if its stream has no source (it keeps the
stream, as a mirror of the taker's); then `handed_over` moves the name in one step, or puts
it back with its owner (refused, timed out, the taker gone). One takeover of a name at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Notice:
    """A control message for one worker (``to``) or for all (``to`` None)."""

    to: int | None
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Takeover:
    """A step of a takeover: ask worker ``ask`` (the owner) to hand the name over, or the
    decision (``granted`` or not, ``info`` saying why not), with the notices to send."""

    granted: bool
    notices: list[Notice]
    ask: int | None = None
    info: str = ""


INFO_TAKEOVER_UNDER_WAY = "another push is taking the name over"
INFO_TAKER_GONE = "the worker taking the name over stopped"
INFO_OWNER_REFUSED = "stream already has a source"


class Directory:
    def __init__(self) -> None:
        self.owners: dict[str, int] = {}
        self.endpoints: dict[int, str] = {}  # worker -> its media link's socket path
        self.handovers: dict[str, int] = {}  # name -> the worker taking it over (owner asked)

    def hello(self, worker: int, endpoint: str) -> list[Notice]:
        """A worker (re)started: everyone learns its media link; it learns every name."""
        self.endpoints[worker] = endpoint
        return [
            Notice(None, {"op": "workers", "endpoints": {str(w): p for w, p in self.endpoints.items()}}),
            Notice(worker, {"op": "names", "owners": dict(self.owners)}),
        ]

    def claim(self, worker: int, name: str) -> list[Notice]:
        owner = self.owners.get(name)
        if owner is not None and owner != worker:
            return [Notice(worker, {"op": "refused", "name": name, "owner": owner})]
        self.owners[name] = worker
        return [Notice(None, {"op": "owner", "name": name, "worker": worker})]

    def release(self, worker: int, name: str) -> list[Notice]:
        if self.owners.get(name) != worker:
            return []  # a refused claim's release, or already gone with its worker
        del self.owners[name]
        return [Notice(None, {"op": "released", "name": name})]

    def take_over(self, taker: int, name: str) -> Takeover:
        """A returning push on ``taker`` wants ``name``: granted at once if nobody holds it,
        else the owner is asked (its answer goes to `handed_over`)."""
        owner = self.owners.get(name)
        if name in self.handovers:
            return Takeover(False, [], info=INFO_TAKEOVER_UNDER_WAY)
        if owner is None or owner == taker or owner not in self.endpoints:
            self.owners[name] = taker
            return Takeover(True, [Notice(None, {"op": "owner", "name": name, "worker": taker})])
        self.handovers[name] = taker
        return Takeover(False, [], ask=owner)

    def handed_over(self, taker: int, name: str, owner: int, agreed: bool, info: str = "") -> Takeover:
        """The owner's answer (``agreed``: it let its stream go), or its failure to answer:
        the name moves to ``taker`` in this one step, or stays with its owner, who is told
        (it takes back a stream it let go). A name freed meanwhile goes to the taker."""
        if self.handovers.get(name) == taker:
            del self.handovers[name]
        current = self.owners.get(name)
        taker_alive = taker in self.endpoints
        if taker_alive and (current is None or (agreed and current == owner)):
            self.owners[name] = taker
            moved: dict[str, Any] = {"op": "owner", "name": name, "worker": taker}
            if current is not None:
                moved["from"] = current  # mirrors of the old owner's stream follow the name
            return Takeover(True, [Notice(None, moved)])
        why = INFO_TAKER_GONE if not taker_alive else info or INFO_OWNER_REFUSED
        if current is None:
            return Takeover(False, [], info=why)
        return Takeover(False, [Notice(current, {"op": "owner", "name": name, "worker": current})], info=why)

    def worker_gone(self, worker: int) -> list[Notice]:
        """A worker died: its names are free again."""
        self.endpoints.pop(worker, None)
        notices = [
            Notice(None, {"op": "workers", "endpoints": {str(w): p for w, p in self.endpoints.items()}})
        ]
        for name in [n for n, w in self.owners.items() if w == worker]:
            notices += self.release(worker, name)
        return notices


class Replica:
    """A worker's copy of the directory, and the endpoints of the other workers."""

    def __init__(self, worker: int) -> None:
        self.worker = worker
        self.owners: dict[str, int] = {}
        self.endpoints: dict[int, str] = {}

    def owner_elsewhere(self, name: str) -> int | None:
        """The other worker holding ``name``, if one does."""
        owner = self.owners.get(name)
        return None if owner is None or owner == self.worker else owner

    def apply(self, message: dict[str, Any]) -> str | None:
        """Take in a directory message; returns the name it refused to this worker, if so."""
        match message:
            case {"op": "workers", "endpoints": dict(endpoints)}:
                self.endpoints = {int(w): str(p) for w, p in endpoints.items()}
            case {"op": "names", "owners": dict(owners)}:
                self.owners = {str(n): int(w) for n, w in owners.items()}
            case {"op": "owner", "name": str(name), "worker": int(worker)}:
                self.owners[name] = worker
            case {"op": "released", "name": str(name)}:
                self.owners.pop(name, None)
            case {"op": "refused", "name": str(name), "owner": int(owner)}:
                self.owners[name] = owner
                return name
        return None
