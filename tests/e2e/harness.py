"""Helpers for the browser tests: a static file server and a page harness."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, ConsoleMessage, Error, Page

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


class StaticServer:
    """Serves a fixed set of files (URL path -> file) on 127.0.0.1 from a daemon thread."""

    def __init__(self, routes: dict[str, Path]) -> None:
        self.routes = dict(routes)
        routes_ = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = routes_.get(self.path.split("?", 1)[0])
                if path is None or not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPES.get(path.suffix, "text/plain"))
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="e2e-static", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@dataclass
class Harness:
    browser: Browser
    gateway: Any  # tests/conftest.py GatewayProcess
    static_url: str
    console: list[str] = field(default_factory=list)
    # Scripts run in every page this harness opens before the page's own (e.g. rtc_recorder.js).
    init_scripts: list[Path] = field(default_factory=list)

    async def open(self, url: str, label: str) -> Page:
        """A new page (own browser context) whose console and errors are recorded."""
        page = await self.browser.new_page()
        for script in self.init_scripts:
            await page.add_init_script(path=script)

        def on_console(msg: ConsoleMessage) -> None:
            self.console.append(f"[{label}] {msg.type}: {msg.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.console.append(f"[{label}] pageerror: {exc}"))
        page.on("crash", lambda _page: self.console.append(f"[{label}] page crashed"))
        await page.goto(url)
        return page

    async def open_websdk(self, label: str) -> Page:
        """The WebSDK harness page with an ESTABLISHED session to the gateway."""
        page = await self.open(f"{self.static_url}/websdk.html", label)
        await page.evaluate("url => e2e.connect(url)", self.gateway.ws_url)
        await self.wait_for(
            page,
            "e2e.state.session",
            lambda s: s == "ESTABLISHED",
            timeout=10,
            what=f"{label}: WebSDK session ESTABLISHED",
        )
        return page

    def report(self, headline: str) -> str:
        log = self.gateway.log_text()
        log_tail = "\n".join(log.splitlines()[-60:])[-8000:]
        try:
            health = json.dumps(self.gateway.health())
        except (OSError, ValueError) as exc:
            health = f"unreachable: {exc}"
        console = "\n".join(self.console[-80:])[-8000:]
        return (
            f"{headline}\n"
            f"--- gateway /healthz: {health}\n"
            f"--- gateway log tail:\n{log_tail}\n"
            f"--- browser console (last lines):\n{console}"
        )

    async def wait_for(
        self,
        page: Page,
        expression: str,
        predicate: Callable[[Any], bool],
        *,
        timeout: float,
        what: str,
        arg: Any = None,
        fail_if: Callable[[Any], bool] | None = None,
    ) -> Any:
        """Evaluate `expression` every 100 ms until `predicate` holds; fail after `timeout` s."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while True:
            try:
                value = await page.evaluate(expression, arg)
            except Error as exc:
                value = f"<evaluate failed: {exc}>"
            else:
                if predicate(value):
                    return value
                if fail_if is not None and fail_if(value):
                    break
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        pytest.fail(self.report(f"{what}: not reached within {timeout} s; last value: {value!r}"))

    async def wait_status(
        self, page: Page, label: str, expected: str, *, timeout: float = 15
    ) -> dict[str, Any]:
        """Wait until stream `label` has status `expected`; fail early on another terminal one."""
        terminal = {"FAILED", "STOPPED", "UNPUBLISHED"}
        return await self.wait_for(
            page,
            "label => e2e.state.streams[label] || null",
            lambda s: bool(s) and s["status"] == expected,
            fail_if=lambda s: bool(s) and s["status"] in terminal - {expected},
            timeout=timeout,
            what=f"stream {label!r} status {expected}",
            arg=label,
        )
