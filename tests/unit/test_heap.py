"""gateway.heap: the startup heap is frozen out of the collector's sight, and a full
collection after it walks only what came after."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway import heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the other tests in this process see the collector as it was


def test_what_exists_at_start_is_frozen_and_later_garbage_still_collected(unfrozen: None) -> None:
    before = len(gc.get_objects())
    frozen = heap.freeze_startup()
    assert frozen == gc.get_freeze_count() > 0
    assert len(gc.get_objects()) < before  # out of the collector's sight

    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle made after the freeze
    del a, b
    assert gc.collect() >= 2  # is still found and freed
