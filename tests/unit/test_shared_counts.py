"""The per-address connection counts workers share (a mapped file, one writer per counter)."""

from __future__ import annotations

from pathlib import Path

from gateway.cluster.shared_counts import SharedCounts
from gateway.net_limits import ConnectionLimits


def test_each_worker_sees_the_others_connections_and_a_dead_workers_are_cleared(tmp_path: Path) -> None:
    path = tmp_path / "counts"
    control = SharedCounts(path, 3, -1, create=True)
    w0, w1 = SharedCounts(path, 3, 0), SharedCounts(path, 3, 1)
    w0.add_own("websocket", "10.0.0.1", 1)
    w0.add_own("websocket", "10.0.0.1", 1)
    w1.add_own("websocket", "10.0.0.1", 1)
    assert (w0.elsewhere("websocket", "10.0.0.1"), w1.elsewhere("websocket", "10.0.0.1")) == (1, 2)
    assert w1.elsewhere("http", "10.0.0.1") == 0  # per port kind
    assert w1.elsewhere("nonsense", "10.0.0.1") == 0
    w0.add_own("websocket", "10.0.0.1", -5)  # never below zero
    assert w1.elsewhere("websocket", "10.0.0.1") == 0
    w1.add_own("rtmp", "10.0.0.2", 1)
    control.clear_worker(1)
    assert w0.elsewhere("rtmp", "10.0.0.2") == 0
    for counts in (control, w0, w1):
        counts.close()


def test_the_limit_adds_the_other_workers_connections(tmp_path: Path) -> None:
    path = tmp_path / "counts"
    SharedCounts(path, 2, -1, create=True).close()
    first = ConnectionLimits(3, others=SharedCounts(path, 2, 0))
    second = ConnectionLimits(3, others=SharedCounts(path, 2, 1))
    assert first.admit("rtsp", "1.2.3.4") and first.admit("rtsp", "1.2.3.4")
    assert second.admit("rtsp", "1.2.3.4")
    assert not second.admit("rtsp", "1.2.3.4") and not first.admit("rtsp", "1.2.3.4")
    first.release("rtsp", "1.2.3.4")
    assert second.admit("rtsp", "1.2.3.4")
    assert second.refused == {"rtsp": 1} and first.refused == {"rtsp": 1}
