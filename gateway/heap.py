"""The process's heap and Python's cyclic garbage collector.

A full collection walks every object the collector tracks. Most of them are made at start
(modules, classes, functions: aiortc, PyAV, the gateway's own: about 73,000 objects, 34 ms a
walk on the 2-core machines of docs/performance.md) and live as long as the process. Such a
pause stops the event loop, so every viewer's next packets wait for it. `freeze_startup`,
called once a server has started, moves what exists then out of the collector's sight
(``gc.freeze``): later full collections walk only what came after (sessions, peers,
frames). What was frozen is never freed: nearly all of it lives as long as the process
anyway, and what start made and drops later is a bounded, one-time amount.
"""

from __future__ import annotations

import gc

from gateway.log import get_logger

log = get_logger(__name__)


def freeze_startup() -> int:
    """Collect once, then freeze every object tracked now. Returns how many were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("startup_heap_frozen", objects=frozen)
    return frozen
