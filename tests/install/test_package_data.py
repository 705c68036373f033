"""A plain, non-editable install of the package serves the demo page from any working
directory: the page is package data (gateway/static/), not a directory of the checkout."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.install.checkout import copy_tracked, process_group
from tests.install.http import get, wait_healthy

pytestmark = pytest.mark.timeout(600)


def test_installed_skyrelay_serves_its_page_from_anywhere(tmp_path: Path) -> None:
    source = copy_tracked(tmp_path / "source")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # The dependencies come from the environment running the tests (plain path entries, so
    # its own editable skyrelay is not seen); skyrelay itself is installed as a user would.
    (site_packages,) = venv.glob("lib/python3*/site-packages")
    (site_packages / "test-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
               "--quiet", "--no-deps", "--disable-pip-version-check", str(source)]  # fmt: skip
    subprocess.run(install, check=True, timeout=300)

    elsewhere = tmp_path / "elsewhere"  # an empty working directory
    elsewhere.mkdir()
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import gateway.config as c; print(c.__file__, c.STATIC_DIR)"],
        cwd=elsewhere, capture_output=True, text=True, check=True,
    )  # fmt: skip
    module, static_dir = where.stdout.split()
    assert Path(module).is_relative_to(site_packages)
    assert Path(static_dir) == site_packages / "gateway" / "static"
    # The floor's C burst is built from its source at the first start: it ships too.
    assert (site_packages / "gateway" / "media" / "webrtc" / "burst.c").is_file()

    http_port = free_port()
    cmd = [
        str(venv / "bin" / "skyrelay"), "serve",
        "--host", "127.0.0.1",
        "--ws-port", str(free_port()),
        "--http-port", str(http_port),
        "--rtmp-port", "0",
        "--rtsp-port", "0",
        "--mqtt-broker", "off",
        "--webrtc-udp-port", str(webrtc_port := free_port()),
        "--webrtc-tcp-port", str(webrtc_port),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYRELAY_", "PYTHON"))}
    log = tmp_path / "skyrelay.log"
    with log.open("w") as out, process_group(cmd, cwd=elsewhere, env=env, stdout=out, stderr=out) as proc:
        url = f"http://127.0.0.1:{http_port}"
        wait_healthy(url, proc, timeout=60, log=log)
        for path, name in (("/", "index.html"), ("/skyrelay-client.js", "skyrelay-client.js")):
            status, body = get(url + path)
            assert status == 200, (path, body[:200])
            assert body == (source / "gateway" / "static" / name).read_bytes()
        assert get(url + "/no-such-file.js")[0] == 404
