"""Fixtures for end-to-end tests in headless Debian Chromium (driven by playwright's async API).

- `websdk_bundle`: the verified Flashphoner WebSDK bundle (fetched from npm, see websdk.py).
- `static_server`: a stdlib HTTP server on 127.0.0.1 (a thread) serving tests/e2e/pages and
  the SDK; pages must come from http://127.0.0.1 to be a secure context (camera access).
- `chromium`: a fresh headless Chromium (temp profile) with a fake camera, per test.
- `udp_block_so`: the UDP-dropping LD_PRELOAD shim (udp_block.c), compiled with gcc.
- `chromium_udp_blocked`: like `chromium`, but every UDP datagram it sends is dropped (the shim
  in LD_PRELOAD; with --no-sandbox its child processes inherit it): a browser behind a
  firewall that blocks UDP. It still gathers its candidates; only ICE-TCP can connect.
- `harness`: opens pages, collects their console, polls window state with bounded timeouts and
  builds failure messages carrying the browser console and the gateway log tail.
- `harness_udp_blocked`: a `harness` on `chromium_udp_blocked`.
- `RTC_RECORDER` (rtc_recorder.js) is a script for `Harness(init_scripts=...)`: it records the
  page's RTCPeerConnections and WCS requests (see the file).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright

from .harness import Harness, StaticServer
from .udp_block import ShimUnavailable, udp_block_library
from .websdk import BUNDLE_NAME, WebSdkUnavailable, websdk_js

PAGES = Path(__file__).resolve().parent / "pages"
RTC_RECORDER = Path(__file__).resolve().parent / "rtc_recorder.js"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
]


@pytest.fixture(scope="session")
def websdk_bundle() -> Path:
    try:
        return websdk_js()
    except WebSdkUnavailable as exc:
        problem = str(exc)
    # Outside the except block: the message alone, without a chained traceback.
    pytest.fail(f"cannot get the Flashphoner WebSDK for browser tests: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def static_server(websdk_bundle: Path) -> Iterator[StaticServer]:
    routes = {f"/{p.name}": p for p in PAGES.iterdir() if p.is_file()}
    routes[f"/{BUNDLE_NAME}"] = websdk_bundle
    server = StaticServer(routes)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def launch_chromium(env: dict[str, str] | None = None) -> AsyncIterator[Browser]:
    """Headless Debian Chromium; `env` adds to this process's environment for the browser."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            timeout=30_000,
            env={**os.environ, **env} if env else None,
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    async with launch_chromium() as browser:
        yield browser


@pytest.fixture(scope="session")
def udp_block_so() -> Path:
    try:
        return udp_block_library()
    except (ShimUnavailable, OSError, subprocess.SubprocessError) as exc:
        problem = str(exc)
    pytest.fail(f"cannot build the UDP-blocking shim: {problem}", pytrace=False)


@pytest.fixture
async def chromium_udp_blocked(udp_block_so: Path) -> AsyncIterator[Browser]:
    async with launch_chromium({"LD_PRELOAD": str(udp_block_so)}) as browser:
        yield browser


@pytest.fixture
async def harness(chromium: Browser, gateway: Any, static_server: StaticServer) -> Harness:
    return Harness(browser=chromium, gateway=gateway, static_url=static_server.url)


@pytest.fixture
async def harness_udp_blocked(
    chromium_udp_blocked: Browser, gateway: Any, static_server: StaticServer
) -> Harness:
    return Harness(
        browser=chromium_udp_blocked,
        gateway=gateway,
        static_url=static_server.url,
        init_scripts=[RTC_RECORDER],
    )
