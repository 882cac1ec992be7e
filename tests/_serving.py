"""Helpers for the serving tests: a real uvicorn server in a thread, on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


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
