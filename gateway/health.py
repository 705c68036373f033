"""The figures of ``GET /healthz``: what runs in the process, so a leak shows what leaked."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from typing import Any, Protocol

from gateway.media.registry import StreamRegistry
from gateway.media.webrtc.icemux import IceMux
from gateway.media.webrtc.peer import Peer


class MqttLinked(Protocol):
    @property
    def connected(self) -> asyncio.Event: ...


def figures(
    registry: StreamRegistry,
    sessions: int,
    ice_mux: IceMux,
    mqtt_links: dict[str, MqttLinked | None],
) -> dict[str, Any]:
    """``sessions``: open WebSocket connections; ``mqtt_links``: each MQTT client by name
    (None: not running), reported up or not (the broker may be down; a link keeps trying)."""
    tasks = asyncio.all_tasks()
    return {
        # A mirror (another worker's stream relayed here) is counted by the worker holding it.
        "streams": sum(1 for stream in registry.streams() if not registry.is_mirror(stream)),
        "sessions": sessions,
        "peer_connections": Peer.open_count,
        "tasks": len(tasks),
        # What the tasks run, by coroutine: a leak shows what leaked.
        "task_kinds": dict(Counter(_coroutine_name(task) for task in tasks)),
        "threads": threading.active_count(),
        "mqtt_links": {name: link.connected.is_set() for name, link in mqtt_links.items() if link},
        "fds": len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else -1,
        "webrtc_ports": ice_mux.figures(),
    }


def _coroutine_name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return str(getattr(coro, "__qualname__", type(coro).__name__))
