"""The composition root hands each setting to the part that uses it."""

from __future__ import annotations

from pathlib import Path

from gateway.app import Gateway
from gateway.config import Config


def test_queue_settings_reach_every_viewer_and_remuxer(tmp_path: Path) -> None:
    config = Config(
        viewer_queue_frames=7,
        remux_queue_frames=11,
        mqtt_broker="off",
        recordings_dir=tmp_path,
        device_state_file="off",
    )
    gateway = Gateway(config)
    assert gateway.rtsp is not None and gateway.rtsp.viewer_queue_frames == 7
    assert gateway.whep.settings.viewer_queue_frames == 7
    assert gateway.hls.queue_frames == 11 and gateway.recorders.queue_frames == 11
