"""The README's first command, as a new user runs it: a fresh clone of the committed
checkout, a login environment with nothing but HOME and PATH (Debian's python3 first on
this machine, whatever runs the tests), and `scripts/demo`. The clone makes its own .venv;
the page is served and the simulated dock is listed."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.install.checkout import new_user_env, process_group
from tests.install.http import get, wait_healthy

pytestmark = [pytest.mark.fresh_clone, pytest.mark.timeout(900)]


def test_scripts_demo_in_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "skyrelay"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    head = ["git", "rev-parse", "HEAD"]
    assert (
        subprocess.run(head, cwd=clone, capture_output=True, text=True).stdout
        == subprocess.run(head, cwd=ROOT, capture_output=True, text=True).stdout
    )
    assert not (clone / ".venv").exists()

    http_port, ws_port = free_port(), free_port()
    cmd = [
        "scripts/demo",
        "--host", "127.0.0.1",
        "--ws-port", str(ws_port),
        "--http-port", str(http_port),
        "--rtmp-port", str(free_port()),
        "--rtsp-port", str(free_port()),
        "--mqtt-broker", f"127.0.0.1:{free_port()}",
        "--ice-address", "127.0.0.1",
        "--webrtc-udp-port", str(webrtc_port := free_port()),
        "--webrtc-tcp-port", str(webrtc_port),
    ]  # fmt: skip
    env = new_user_env(tmp_path / "home")
    log = tmp_path / "demo.log"
    with (
        log.open("w") as out,
        process_group(
            cmd, cwd=clone, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        ) as proc,
    ):
        url = f"http://127.0.0.1:{http_port}"
        # Making the venv and installing into it come first: minutes on a cold pip cache.
        wait_healthy(url, proc, timeout=600, log=log)
        assert f"skyrelay demo: open http://localhost:{http_port}/?ws=ws://localhost:{ws_port}" in (
            log.read_text()
        )
        status, page = get(url + "/")
        assert status == 200
        assert page == (clone / "gateway" / "static" / "index.html").read_bytes()
        assert get(url + "/skyrelay-client.js")[0] == 200

        deadline = time.monotonic() + 60
        aircraft: list[str] = []
        while time.monotonic() < deadline and "SIMAIRCRAFT0001" not in aircraft:
            gateways = json.loads(get(url + "/api/devices")[1])["gateways"]
            aircraft = [sn for gateway in gateways for sn in gateway["aircraft"]]
            time.sleep(0.5)
        assert "SIMAIRCRAFT0001" in aircraft, log.read_text()[-4000:]

    # The clone's own venv, from the first new enough python3 on the new user's PATH.
    config = (clone / ".venv" / "pyvenv.cfg").read_text()
    assert "home = /usr/local/bin" in config or "home = /usr/bin" in config or "home = /bin" in config
    assert proc.poll() is not None
