"""The front door: one pure-ASGI middleware that refuses what it can before any body is read.

Order, cheapest first (each step answers in the documented ``{"error": …}`` shape and costs O(1)):
route (404/405) → API key (401, constant-time compare, before a byte of the body is read: an
unauthenticated 60 MiB body used to cost +1 GB before its 401) → for the rerank routes: started
(503) → the request's deadline (``X-Request-Timeout``) → a concurrency permit, global and per
client (429) → JSON media type, no content coding (415) → declared ``Content-Length`` (413) →
work that would run before any new request already past the deadline (429 with ``Retry-After``)
→ the body, bounded in size (413) and in time (408). Then the app parses, estimates the tokens
(429 before tokenizing), tokenizes and submits (``app.py``), and the permit is returned when the
response is complete.

Why pure ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` wraps
``receive`` in a way that hides ``http.disconnect`` from the endpoint, and the server needs that
message to drop the pairs of a client that went away. The body is read here and replayed to the
app; after it, the app's ``receive`` is the real one (so a disconnect is seen).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import TYPE_CHECKING

from .admission import deadline_for
from .errors import ApiError

if TYPE_CHECKING:
    from .app import ServerState

log = logging.getLogger("rerankrt.server")

SCORING = ("/v2/rerank", "/v1/rerank", "/rerank")
PROBES = ("/health", "/live", "/ready")
ROUTES: dict[str, tuple[str, ...]] = {
    "/v2/rerank": ("POST",), "/v1/rerank": ("POST",), "/rerank": ("POST",), "/health": ("GET",),
    "/live": ("GET",), "/ready": ("GET",), "/info": ("GET",), "/metrics": ("GET",)}
DEADLINE_SCOPE_KEY = "rerankrt.deadline"


class FrontDoor:
    def __init__(self, app, state: ServerState) -> None:
        self.app = app
        self.state = state
        self._key = state.config.api_key.encode() if state.config.api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ROUTES else "other"
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_tracking(message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        try:
            methods = ROUTES.get(path)
            if methods is None:
                raise ApiError(404, "not_found", f"no such endpoint: {path[:200]!r}; see GET /info")
            if scope["method"] not in methods:
                raise ApiError(405, "method_not_allowed", f"{path} accepts {', '.join(methods)}, not "
                               f"{scope['method'][:20]}", headers={"Allow": ", ".join(methods)})
            headers = dict(scope.get("headers") or [])
            if path not in PROBES:
                self._authorize(headers)
            if path in SCORING:
                await self._admit_and_score(scope, receive, send_tracking, headers)
            else:
                await self.app(scope, receive, send_tracking)
        except ApiError as exc:
            self.state.metrics.rejected.labels(exc.reason).inc()
            if status["sent"]:
                log.warning("error after the response started: %s", exc.message)
            else:
                await exc.send(send_tracking)
        finally:
            if endpoint != "/metrics":
                self.state.metrics.requests.labels(endpoint, str(status["code"])).inc()
                self.state.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    def _authorize(self, headers: dict[bytes, bytes]) -> None:
        if self._key is None:
            return
        header = headers.get(b"authorization", b"")
        key = header[7:] if header[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        if not hmac.compare_digest(key.strip(), self._key):
            raise ApiError(401, "unauthorized", "missing or wrong API key (Authorization: Bearer KEY or X-API-Key)",
                           headers={"WWW-Authenticate": "Bearer"})

    @staticmethod
    def _client(scope, headers: dict[bytes, bytes]) -> str:
        key = headers.get(b"authorization") or headers.get(b"x-api-key")
        if key:
            return "key:" + key.decode("latin-1")[-16:]
        client = scope.get("client")
        return "addr:" + (client[0] if client else "?")

    async def _admit_and_score(self, scope, receive, send, headers: dict[bytes, bytes]) -> None:
        state, config = self.state, self.state.config
        if not state.ready:
            raise ApiError(503, "not_ready", "the server is starting", headers={"Retry-After": "1"})
        deadline, timeout = deadline_for(headers, config)
        release = state.permits.acquire(self._client(scope, headers))
        try:
            _check_media_type(headers)
            limit = config.max_body_bytes
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise _body_too_large(limit)
            state.refuse_if_backlogged(timeout, deadline,
                                       int(declared) if declared is not None and declared.isdigit() else None)
            try:
                body, disconnected = await asyncio.wait_for(self._read_body(receive, limit), config.body_timeout_s)
            except TimeoutError:
                raise ApiError(408, "request_timeout", f"the request body was not received within "
                               f"{config.body_timeout_s:g} s", headers={"Connection": "close"},
                               limit="body_timeout_s", value=config.body_timeout_s) from None
            if disconnected:
                return  # nobody to answer
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            scope[DEADLINE_SCOPE_KEY] = (deadline, timeout)
            await self.app(scope, replay, send)
        finally:
            release()

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
                raise _body_too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False


def _check_media_type(headers: dict[bytes, bytes]) -> None:
    """415 unless the body is declared as plain JSON (as TEI does: a form post or gzip is not read as JSON)."""
    media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if media != b"application/json" and not (media.startswith(b"application/") and media.endswith(b"+json")):
        shown = media.decode("latin-1")[:60] or "none"
        raise ApiError(415, "unsupported_media_type", f"send the body as Content-Type: application/json (got {shown})")
    encoding = headers.get(b"content-encoding", b"identity").strip().lower()
    if encoding not in (b"", b"identity"):
        raise ApiError(415, "unsupported_media_type", f"Content-Encoding {encoding.decode('latin-1')[:40]} is not "
                       "supported; send the body uncompressed")


def _body_too_large(limit: int) -> ApiError:
    return ApiError(413, "limit_exceeded", f"request body exceeds {limit} bytes", headers={"Connection": "close"},
                    limit="max_body_bytes", value=limit, reason="body_too_large")
