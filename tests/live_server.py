"""A real uvicorn server on an ephemeral loopback port, in a thread: what the HTTP tests talk to."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class LiveServer:
    """uvicorn serving ``app`` in a thread on 127.0.0.1:<ephemeral>."""

    def __init__(self, app) -> None:
        sock = _free_socket()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 120
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def post(self, path: str, body, **kwargs) -> httpx.Response:
        return self.client.post(path, json=body, **kwargs)

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(60)
