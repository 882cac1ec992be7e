"""Helpers for the serving tests: a real uvicorn server in a thread, on a free loopback port, and
a page of Debian's chromium driven by Playwright (PyPI) to look at it (`bash bootstrap.sh test`
installs both; no browser is downloaded)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


class LiveServer:
    """`with LiveServer(app) as server:` serves app at server.url until the block ends (then shuts
    down the way SIGTERM would: in-flight requests finish, the app's lifespan drains the batcher)."""

    def __init__(self, app, graceful_timeout: int = 10):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=graceful_timeout)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self, wait: float = 30) -> None:
        self.server.should_exit = True
        self.thread.join(wait)
        self.sock.close()

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def browser_page(app, tmp_path: Path):
    """`with browser_page(app, tmp_path) as (page, server, expect):` a chromium page beside `app`
    served live (Playwright's `expect` for waiting on it); when the block ends, the test fails on any
    error the page's scripts raised. Skips where chromium or playwright is missing."""
    if not CHROMIUM.is_file():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (bash bootstrap.sh test installs it with apt)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (bash bootstrap.sh test installs it)")
    problems: list[str] = []
    with LiveServer(app) as server, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            yield page, server, playwright_api.expect
        finally:
            browser.close()
    assert not problems, problems
