"""Fixtures for end-to-end tests in headless Debian Chromium (driven by playwright's async API).

- `websdk_bundle`: the verified Flashphoner WebSDK bundle (fetched from npm, see websdk.py).
- `static_server`: a stdlib HTTP server on 127.0.0.1 (a thread) serving tests/e2e/pages and
  the SDK; pages must come from http://127.0.0.1 to be a secure context (camera access).
- `chromium`: a fresh headless Chromium (temp profile) with a fake camera, per test.
- `harness`: opens pages, collects their console, polls window state with bounded timeouts and
  builds failure messages carrying the browser console and the gateway log tail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright

from .harness import Harness, StaticServer
from .websdk import BUNDLE_NAME, WebSdkUnavailable, websdk_js

PAGES = Path(__file__).resolve().parent / "pages"
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


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def harness(chromium: Browser, gateway: Any, static_server: StaticServer) -> Harness:
    return Harness(browser=chromium, gateway=gateway, static_url=static_server.url)
