"""Prometheus metrics of the server, in a registry of its own (one per app, so tests can run several).

What an operator needs to see why latency moved: requests by endpoint and status, end-to-end
latency, how long pairs waited in the queue, how full the batches were (rows and padded
tokens), and where the time went (tokenization on the request path vs inference on the worker).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .scheduler import SchedulerStats

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_BATCH_TOKENS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class ServerMetrics:
    """The metric families; ``render()`` is the ``/metrics`` body."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rerankrt_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("rerankrt_request_duration_seconds", "End-to-end request latency",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.pairs = Counter("rerankrt_pairs", "Pairs scored", ["model"], registry=r)
        self.input_tokens = Counter("rerankrt_input_tokens", "Tokens of scored pairs (after truncation)",
                                    ["model"], registry=r)
        self.queue_depth = Gauge("rerankrt_queue_pairs", "Pairs waiting in the batching queue", ["model"], registry=r)
        self.queue_wait = Histogram("rerankrt_queue_wait_seconds", "Time from submit until a request's first pair "
                                    "enters a batch window", ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("rerankrt_batch_pairs", "Pairs per inference batch", ["model"],
                                    buckets=_BATCH_ROWS, registry=r)
        self.batch_tokens = Histogram("rerankrt_batch_padded_tokens", "Padded tokens per inference batch", ["model"],
                                      buckets=_BATCH_TOKENS, registry=r)
        self.tokenize_time = Histogram("rerankrt_tokenize_seconds", "Tokenization time per request", ["model"],
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.inference_time = Histogram("rerankrt_inference_seconds", "Inference time per batch", ["model"],
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.rejected = Counter("rerankrt_rejected", "Requests refused before scoring, by reason",
                                ["reason"], registry=r)
        self.connections = Counter("rerankrt_connections", "Connection events: opened, and closed by the server "
                                   "(header_timeout, idle_timeout, evicted, refused, bad_request, head_too_large)",
                                   ["event"], registry=r)
        self.expired = Counter("rerankrt_expired_pairs", "Pairs dropped unscored because their request's deadline "
                               "passed (or could no longer be met)", ["model"], registry=r)

    def scheduler_stats(self, model: str) -> SchedulerStats:
        rows, tokens, seconds = (self.batch_rows.labels(model), self.batch_tokens.labels(model),
                                 self.inference_time.labels(model))
        depth, wait = self.queue_depth.labels(model), self.queue_wait.labels(model)

        def on_batch(n_rows: int, n_tokens: int, elapsed: float) -> None:
            rows.observe(n_rows)
            tokens.observe(n_tokens)
            seconds.observe(elapsed)

        return SchedulerStats(on_batch=on_batch, on_queue_wait=wait.observe, on_queue_depth=depth.set,
                              on_expired=self.expired.labels(model).inc)

    def render(self) -> bytes:
        return generate_latest(self.registry)
