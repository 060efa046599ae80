"""One pure-ASGI middleware: the body-size limit and per-request metrics.

Why pure ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` wraps
``receive`` in a way that hides ``http.disconnect`` from the endpoint, and the server needs that
message to drop the pairs of a client that went away. The limit is enforced on
``Content-Length`` up front and on the bytes actually received (chunked bodies have no length):
the body is read here, bounded, and replayed to the app (FastAPI would turn an exception raised
while it reads the body into a generic 400).
"""

from __future__ import annotations

import json
import time

from .metrics import ServerMetrics


class _BodyTooLarge(Exception):
    pass


class BodyLimitAndMetrics:
    def __init__(self, app, max_body_bytes: int, metrics: ServerMetrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ("/v1/rerank", "/rerank", "/health", "/info", "/metrics") else "other"
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_tracking(message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        limit = self.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise _BodyTooLarge
            body, disconnected = await self._read_body(receive, limit)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                if disconnected:
                    return {"type": "http.disconnect"}
                return await receive()

            await self.app(scope, replay, send_tracking)
        except _BodyTooLarge:
            self.metrics.rejected.labels("body_too_large").inc()
            await self._reply(send_tracking, 413, {"error": {
                "type": "limit_exceeded", "message": f"request body exceeds {limit} bytes",
                "limit": "max_body_bytes", "value": limit}})
        finally:
            if endpoint != "/metrics":
                self.metrics.requests.labels(endpoint, str(status["code"])).inc()
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    @staticmethod
    async def _read_body(receive, limit: int) -> tuple[bytes, bool]:
        """The whole body (bounded by ``limit``), and whether the client left while sending it."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks), True
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False

    @staticmethod
    async def _reply(send, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
