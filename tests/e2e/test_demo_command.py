"""`skyrelay demo`, as the README tells a user to run it: the page lists the simulated
dock's cameras, one click plays one in Chromium, and the video is live."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser

from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[int, int]]:
    ws_port, http_port, webrtc_port = free_port(), free_port(), free_port()
    cmd = [
        sys.executable, "-m", "gateway", "demo",
        "--host", "127.0.0.1",
        "--ws-port", str(ws_port),
        "--http-port", str(http_port),
        "--rtmp-port", str(free_port()),
        "--rtsp-port", str(free_port()),
        "--mqtt-broker", f"127.0.0.1:{free_port()}",
        "--ice-address", "127.0.0.1",
        "--webrtc-udp-port", str(webrtc_port),
        "--webrtc-tcp-port", str(webrtc_port),
    ]  # fmt: skip
    # In a directory of its own: the demo keeps what it learns (state/devices.json) there.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "skyrelay demo: open http://localhost:" in line, line
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield ws_port, http_port
    finally:
        proc.terminate()
        proc.wait(timeout=15)


async def test_one_click_plays_a_drone_camera(
    chromium: Browser, demo: tuple[int, int], tmp_path: Path
) -> None:
    ws_port, http_port = demo
    page = await chromium.new_page()
    await page.goto(f"http://127.0.0.1:{http_port}/?ws=ws://127.0.0.1:{ws_port}")
    button = page.locator("#drones button").first
    await button.wait_for(timeout=30_000)  # the dock announces itself within seconds
    assert "SIMAIRCRAFT0001/53-0-0/normal-0" in (await button.text_content() or "")
    # What the demo learned of the dock is kept for its next start, in its own directory.
    assert "SIMAIRCRAFT0001" in (tmp_path / "state" / "devices.json").read_text()
    await button.click()
    decoded = (
        "() => document.querySelector('#streams video')?.getVideoPlaybackQuality().totalVideoFrames || 0"
    )
    await page.wait_for_function(f"({decoded})() > 0", timeout=45_000)
    first = await page.evaluate(decoded)
    await page.wait_for_function(f"({decoded})() > {first + 20}", timeout=15_000)
    size = await page.evaluate(
        "() => [document.querySelector('#streams video').videoWidth,"
        " document.querySelector('#streams video').videoHeight]"
    )
    assert size == [1280, 720]

    # The lens control on the card: the dock restarts its push with the new lens and the
    # video goes on in the same player.
    await page.select_option("#streams .controls .lens", "zoom")
    await page.wait_for_selector("#streams .controls[data-result=ok]", timeout=30_000)
    after_switch = await page.evaluate(decoded)
    await page.wait_for_function(f"({decoded})() > {after_switch + 30}", timeout=30_000)
    await page.select_option("#streams .controls .quality", "1")
    await page.wait_for_function(
        "() => document.querySelector('#streams .controls .result').textContent === 'quality ok'",
        timeout=30_000,
    )
