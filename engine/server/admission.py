"""Cheap, immediate admission: concurrency permits, the request's deadline, bounded tokenization.

Why before the body is parsed: text-embeddings-inference takes a concurrency permit before it
tokenizes and refuses at once when none is left. Refusing a request must cost microseconds, not a
JSON parse and a tokenization in a 40-thread pool (measured before this module: 429s took p50
2.7 s, and the rejected requests still burned the CPU the admitted ones needed, so goodput fell to
28% of the sustainable rate). Everything here is O(1) and runs on the event loop.

* :class:`Permits` — rerank requests admitted and not yet answered, globally and per client (API
  key, else peer address); a request over either gets 429 before its body is read.
* :func:`deadline_for` — the request's deadline: the server's default, lowered (never raised) by
  ``X-Request-Timeout: <seconds>``.
* :class:`TokenizePool` — parsing and tokenization in a fixed number of threads with a bounded
  waiting line; a request that would wait beyond it gets 429 at once.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .config import DEADLINE_HEADER, ServerConfig
from .errors import ApiError

T = TypeVar("T")


def deadline_for(headers: dict[bytes, bytes], config: ServerConfig, now: float | None = None) -> tuple[float, float]:
    """``(deadline as time.perf_counter(), timeout in seconds)`` for a request with ``headers``."""
    timeout = config.request_timeout_s
    raw = headers.get(DEADLINE_HEADER.encode())
    if raw is not None:
        try:
            asked = float(raw.decode("latin-1").strip())
        except ValueError:
            asked = math.nan
        if not (asked > 0 and math.isfinite(asked)):
            raise ApiError(400, "invalid_request", f"{DEADLINE_HEADER} must be a positive number of seconds, "
                           f"got {raw.decode('latin-1')[:40]!r}")
        timeout = min(timeout, asked)
    return (time.perf_counter() if now is None else now) + timeout, timeout


class Permits:
    """In-flight rerank requests, globally and per client; ``acquire`` raises 429 instead of waiting."""

    def __init__(self, limit: int, per_client: int | None) -> None:
        self.limit, self.per_client = limit, per_client
        self.in_flight = 0
        self._clients: Counter[str] = Counter()

    def acquire(self, client: str) -> Callable[[], None]:
        """Take a permit for ``client``; returns the function that gives it back (call exactly once)."""
        if self.in_flight >= self.limit:
            raise ApiError(429, "overloaded", f"{self.in_flight} requests are in flight, the server's limit "
                           f"(max_concurrent_requests={self.limit})", headers={"Retry-After": "1"},
                           limit="max_concurrent_requests", value=self.limit)
        if self.per_client is not None and self._clients[client] >= self.per_client:
            raise ApiError(429, "overloaded", f"this client has {self._clients[client]} requests in flight, the "
                           f"per-client limit (max_client_concurrency={self.per_client})",
                           headers={"Retry-After": "1"}, limit="max_client_concurrency", value=self.per_client)
        self.in_flight += 1
        self._clients[client] += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.in_flight -= 1
            self._clients[client] -= 1
            if not self._clients[client]:
                del self._clients[client]

        return release


class TokenizePool:
    """``threads`` workers for JSON parsing + validation + tokenization, at most ``max_waiting`` queued.

    Why bounded: tokenization is CPU work on the same cores as inference. An unbounded pool lets a
    burst of requests tokenize text that will be refused anyway; a fixed pool with a short line
    keeps that work proportional to what the scheduler can take.
    """

    def __init__(self, threads: int | None, max_waiting: int) -> None:
        self.threads = threads or os.cpu_count() or 1
        self.max_waiting = max_waiting
        self.pending = 0
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="rerankrt-tokenize")

    async def run(self, fn: Callable[..., T], *args) -> T:
        if self.pending >= self.threads + self.max_waiting:
            raise ApiError(429, "overloaded", f"{self.pending} requests are being parsed and tokenized, the "
                           f"server's limit ({self.threads} threads + max_tokenize_waiting={self.max_waiting})",
                           headers={"Retry-After": "1"}, limit="max_tokenize_waiting", value=self.max_waiting)
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self.pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
