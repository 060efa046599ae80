"""Server settings: limits, admission, batching, connections and auth, with the defaults a shared service wants.

Why limits at all: one 10⁶-document request, a 100 MB string, a flood of requests or a thousand
stalled sockets must cost the sender a clear 4xx (or a closed connection), not every other
client's latency. Each limit is named in the error it causes, so a client knows which one it hit
and its value. The defaults and what they trade are measured in ``benchmarks/bench_overload.py``
and listed in the README (section "Serving under overload").
"""

from __future__ import annotations

import os
from dataclasses import dataclass

API_KEY_ENV = "RERANKRT_API_KEY"
DEADLINE_HEADER = "x-request-timeout"  # seconds; lowers request_timeout_s for one request


@dataclass(frozen=True)
class ServerConfig:
    # -- per request ---------------------------------------------------------------------------
    max_documents: int = 10_000  # documents per request (413 above), checked before any item is validated
    max_document_bytes: int = 1 << 20  # UTF-8 bytes per document or query (413 above)
    max_body_bytes: int = 16 << 20  # request body (413 above), checked on Content-Length and on the bytes read
    request_timeout_s: float = 30.0  # the default deadline; a request may lower it (X-Request-Timeout: seconds)
    auto_truncate: bool = True  # TEI's /rerank with truncate unset: truncate (True) or 413 (False)
    api_key: str | None = None  # checked on every endpoint but the probes, before the body is read
    # -- admission (all answered with 429 + Retry-After at once, before tokenizing) -------------
    max_concurrent_requests: int = 512  # rerank requests admitted and not yet answered (TEI's default)
    max_client_concurrency: int | None = None  # per client (API key, else peer address); None = no limit
    max_queued_pairs: int = 40_000  # pairs waiting per model (a hard cap beside the deadline check)
    tokenize_threads: int | None = None  # parsing + tokenization threads (default: cores); the rest wait…
    max_tokenize_waiting: int = 64  # …up to this many requests; above it, 429 at once
    # -- batching ------------------------------------------------------------------------------
    max_wait_ms: float = 2.0  # how long a lone small request waits for company before running
    window_tokens: int | None = None  # tokens per scheduling window (default 4 × the token budget)
    # -- connections ---------------------------------------------------------------------------
    header_timeout_s: float = 10.0  # a connection that has not sent a request's headers by then is closed
    body_timeout_s: float = 30.0  # a body not received completely by then gets 408
    max_connections: int | None = None  # open connections (default: from the open-file limit); the stalled
    # oldest is closed to make room for a new one
    drain_grace_s: float = 5.0  # after SIGTERM: /ready answers 503 this long while requests are still served
    # -- observability -------------------------------------------------------------------------
    tracing: bool = False  # OpenTelemetry spans per rerank request (extra [otel]); off: nothing is imported

    def __post_init__(self) -> None:
        for name in ("max_documents", "max_document_bytes", "max_body_bytes", "max_queued_pairs",
                     "max_concurrent_requests", "max_tokenize_waiting"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_client_concurrency", "tokenize_threads", "max_connections", "window_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.max_documents > self.max_queued_pairs:
            raise ValueError(f"max_documents ({self.max_documents}) exceeds max_queued_pairs "
                             f"({self.max_queued_pairs}): such a request could never be queued")
        for name in ("request_timeout_s", "header_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.drain_grace_s < 0:
            raise ValueError("max_wait_ms and drain_grace_s must be >= 0")

    @staticmethod
    def api_key_from_env() -> str | None:
        return os.environ.get(API_KEY_ENV) or None
