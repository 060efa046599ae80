"""Server settings: limits, batching and auth, with the defaults a shared service wants.

Why limits at all: one 10⁶-document request, a 100 MB string or a flood of requests must cost
the sender a clear 4xx, not every other client's latency. Each limit is named in the error it
causes, so a client knows which one it hit and its value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

API_KEY_ENV = "RERANKRT_API_KEY"


@dataclass(frozen=True)
class ServerConfig:
    max_documents: int = 10_000  # documents per request (413 above)
    max_document_bytes: int = 1 << 20  # UTF-8 bytes per document or query (413 above)
    max_body_bytes: int = 64 << 20  # request body (413 above)
    max_queued_pairs: int = 40_000  # pairs waiting per model; a request that does not fit gets 429
    max_wait_ms: float = 2.0  # how long a lone small request waits for company before running
    window_tokens: int | None = None  # tokens per scheduling window (default 32 × the token budget)
    request_timeout_s: float = 60.0  # 504 after this (its pending pairs are dropped)
    auto_truncate: bool = True  # TEI's /rerank with truncate unset: truncate (True) or 413 (False)
    api_key: str | None = None  # checked on every endpoint but /health

    def __post_init__(self) -> None:
        for name in ("max_documents", "max_document_bytes", "max_body_bytes", "max_queued_pairs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_documents > self.max_queued_pairs:
            raise ValueError(f"max_documents ({self.max_documents}) exceeds max_queued_pairs "
                             f"({self.max_queued_pairs}): such a request could never be queued")
        if self.max_wait_ms < 0 or self.request_timeout_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and request_timeout_s > 0")

    @staticmethod
    def api_key_from_env() -> str | None:
        return os.environ.get(API_KEY_ENV) or None
