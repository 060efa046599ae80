"""The ASGI app: routes of both rerank APIs on one request path, probes, errors as JSON, metrics.

What happens before a request reaches a route (404/405, auth, permits, the deadline, body limits)
is the front door's (``middleware.py``). The request path then reads top to bottom in
:meth:`ServerState.score`: parse + validate + tokenize in the bounded :class:`TokenizePool`
(``parsing.py``; never on the event loop) → submit the token ids with the request's deadline to the
model's :class:`BatchScheduler` (admission: 429 at once if the queued work cannot finish in time)
→ await the scores (dropped if the client goes away or the deadline passes) → activation → the
API's response shape. Errors are :class:`ApiError` (status, type, message, and for limits the
limit's name and value); nothing else reaches a client, and no stack trace ever does.

Probes: ``/live`` answers 200 while the process and its event loop run; ``/ready`` (and TEI's
``/health``, same meaning) answer 503 while starting and from the moment draining begins, while
the listener still serves for the drain grace period, so an orchestrator stops routing traffic
before the socket closes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..chunking import LongDocuments, aggregate, windows_for
from ..reranker import Reranker
from ..scoring import Encoded, activate, rank_order
from .admission import Permits, TokenizePool
from .config import ServerConfig
from .errors import ApiError
from .metrics import ServerMetrics
from .middleware import DEADLINE_SCOPE_KEY, FrontDoor
from .parsing import BodyParser, TextLimits
from .scheduler import (
    ADMIT_FRACTION,
    BatchScheduler,
    DeadlineExceededError,
    QueueFullError,
    SchedulerStoppedError,
    TooMuchWorkError,
)
from .schemas import RerankRequest, TeiRerankRequest
from .tracing import NO_TRACING, RequestTrace, Tracing, fastapi_telemetry

log = logging.getLogger("rerankrt.server")

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def model_name(reranker: Reranker) -> str:
    """A hub id when the artifact came from one, else the artifact directory's name."""
    source = str(reranker.artifact.manifest.get("source", {}).get("id") or "")
    return source if _HUB_ID.match(source) else Path(reranker.artifact.directory).name


@dataclass
class Scored:
    """One request's result before it is shaped for an API."""

    model: str
    reranker: Reranker
    logits: np.ndarray  # [n, labels] raw logits, input order
    tokens: int
    truncated: int

    def scores(self, raw: bool) -> np.ndarray:
        """``[n]`` raw logits, or the rerank APIs' relevance scores in [0, 1] (sigmoid)."""
        return activate(self.logits[:, :1], "raw" if raw else "sigmoid", self.reranker.activation)


def measure_tokens_per_s(reranker: Reranker) -> float:
    """Real tokens per second of ``reranker`` on a short mixed-length workload (the scheduler's first estimate).

    Measured at start-up so that admission is right from the first request instead of after a
    guess; the scheduler then follows the traffic with a moving average.
    """
    pairs = [("warm up query " * (1 + i % 3), "a document of some length " * (4 + 12 * (i % 6))) for i in range(12)]
    encoded = reranker.encode(pairs)
    reranker.logits_for_token_ids(encoded.token_ids)  # first call: kernel selection, caches
    started = time.perf_counter()
    reranker.logits_for_token_ids(encoded.token_ids)
    return encoded.tokens / max(time.perf_counter() - started, 1e-6)


@dataclass
class ServerState:
    models: dict[str, Reranker]
    config: ServerConfig
    metrics: ServerMetrics
    schedulers: dict[str, BatchScheduler] = field(default_factory=dict)
    tracing: Tracing = NO_TRACING
    ready: bool = False  # started: models warm, queues open
    draining: bool = False  # shutdown began: /ready says 503, requests are still served
    permits: Permits = field(init=False)
    pool: TokenizePool = field(init=False)

    def __post_init__(self) -> None:
        self.permits = Permits(self.config.max_concurrent_requests, self.config.max_client_concurrency)
        self.pool = TokenizePool(self.config.tokenize_threads, self.config.max_tokenize_waiting)
        self.parser = BodyParser(TextLimits(self.config.max_documents, self.config.max_document_bytes),
                                 max_waiting=self.config.max_tokenize_waiting)
        self._chars_per_token: dict[str, float] = {}
        self._bytes_per_token: dict[str, float] = {}

    @property
    def default_model(self) -> str:
        return next(iter(self.models))

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Warm every model and measure its token rate (first-call kernel compilation is not a client's latency)."""
        self.parser.start()
        for name, reranker in self.models.items():
            rate = measure_tokens_per_s(reranker)
            self.schedulers[name] = BatchScheduler.for_reranker(
                reranker, max_wait_s=self.config.max_wait_ms / 1000, window_tokens=self.config.window_tokens,
                max_queued_rows=self.config.max_queued_pairs, tokens_per_s=rate,
                stats=self.metrics.scheduler_stats(name), name=name)
            log.info("%s: %s %s, %.0f tokens/s measured at start", name, reranker.backend.name, reranker.precision,
                     rate)
        self.ready = True
        log.info("ready: %s", ", ".join(self.models))

    def begin_drain(self) -> None:
        """Shutdown begins: readiness turns 503 now; requests keep being served until the listener closes."""
        if not self.draining:
            self.draining = True
            log.info("draining: /ready answers 503; still serving")

    def stop(self) -> None:
        """Finish every queued pair (uvicorn has already waited for in-flight requests), then stop."""
        self.draining = True
        self.ready = False
        for scheduler in self.schedulers.values():
            scheduler.stop(drain=True)
        self.pool.close()
        self.parser.close()

    # -- admission ------------------------------------------------------------------------------
    def refuse_if_backlogged(self, timeout_s: float, deadline: float | None = None,
                             body_bytes: int | None = None) -> None:
        """429 before the body is read, when the request cannot be admitted by any model.

        Two checks, both in microseconds: the work that would run before *any* new request (the
        running window and requests already out of slack) exceeds the deadline's admissible share;
        or, given the declared ``Content-Length``, the request's tokens estimated from its size (bytes
        per token learned from this model's admitted traffic) would not be admitted. Why here: a
        refusal after the body is read costs its parse, on a CPU the backend already saturates, and
        measured 150 ms p99 at 2-4x overload; the estimate refuses most of them before any of that.
        The exact checks still run after parsing and tokenizing, so an estimate that is off costs a
        slower 429 or a later one, never a wrong admission.
        """
        if not self.schedulers:
            return
        backlog = min(s.min_wait_s() for s in self.schedulers.values())
        if backlog > ADMIT_FRACTION * timeout_s:
            retry = max(1, math.ceil(backlog - ADMIT_FRACTION * timeout_s))
            raise ApiError(429, "overloaded", f"~{backlog:.2f} s of work is queued ahead, too much for this "
                           f"request's deadline of {timeout_s:g} s", headers={"Retry-After": str(retry)},
                           reason="deadline")
        if deadline is None or not body_bytes:
            return
        refusals: list[QueueFullError] = []
        for name, scheduler in self.schedulers.items():
            per_token = self._bytes_per_token.get(name)
            if per_token is None:
                return  # nothing learned yet for this model: the exact checks decide
            try:
                scheduler.check_admission(int(body_bytes / per_token), deadline)
            except QueueFullError as exc:
                refusals.append(exc)
            else:
                return  # some model could take it: the body says which one
        first = min(refusals, key=lambda e: e.retry_after_s)
        raise ApiError(429, "overloaded", f"{first} (estimated from the request's {body_bytes} bytes)",
                       headers={"Retry-After": str(first.retry_after_s)}, reason=first.reason)

    def _learn_bytes_per_token(self, name: str, body_bytes: int, tokens: int) -> None:
        """Bytes of request body per token scored, a moving average (the front door's estimate)."""
        if body_bytes and tokens:
            ratio = body_bytes / tokens
            old = self._bytes_per_token.get(name)
            self._bytes_per_token[name] = ratio if old is None else 0.8 * old + 0.2 * ratio

    # -- the request path ----------------------------------------------------------------------
    def pick(self, name: str | None) -> tuple[str, Reranker]:
        name = name or self.default_model
        if name not in self.models:
            raise ApiError(404, "model_not_found", f"model {name[:200]!r} is not served here; served: "
                           f"{sorted(self.models)}")
        return name, self.models[name]

    def _estimate_tokens(self, name: str, reranker: Reranker, query: str, texts: list[str],
                         how: LongDocuments | None = None) -> int:
        """Tokens of the pairs, estimated from their length in characters (before tokenizing).

        Characters per token are learned from this model's traffic (a moving average over pairs that
        were not truncated); each pair counts at most the model's ``max_length``, or, with chunked
        documents, twice its text (windows overlap by half by default) up to ``max_chunks_per_doc`` windows.
        """
        per_token = self._chars_per_token.get(name, 4.0)
        cap, q = reranker.max_length, len(query)
        if how is not None and how.chunked:
            limit = cap * how.max_chunks_per_doc if how.max_chunks_per_doc else math.inf
            return int(sum(min(limit, 2 * (q + len(t)) / per_token + 3) for t in texts))
        return int(sum(min(cap, (q + len(t)) / per_token + 3) for t in texts))

    def _windows(self, name: str, reranker: Reranker, query: str, texts: list[str], how: LongDocuments):
        """In a pool thread: the documents cut into windows beside the query (``chunking.make_windows``)."""
        started = time.perf_counter()
        windows = windows_for(reranker.tokenizer, [(query, t) for t in texts], how)
        self.metrics.tokenize_time.labels(name).observe(time.perf_counter() - started)
        return windows

    def _encode(self, name: str, reranker: Reranker, query: str, texts: list[str],
                direction: str = "right") -> Encoded:
        """In a pool thread: tokenize, and learn characters per token for the next estimates."""
        started = time.perf_counter()
        encoded = reranker.encode([(query, t) for t in texts], direction)
        self.metrics.tokenize_time.labels(name).observe(time.perf_counter() - started)
        chars = tokens = 0
        for text, ids, cut in zip(texts, encoded.token_ids, encoded.truncated):
            if not cut:
                chars += len(query) + len(text)
                tokens += len(ids)
        if tokens:
            old = self._chars_per_token.get(name)
            self._chars_per_token[name] = chars / tokens if old is None else 0.8 * old + 0.2 * chars / tokens
        return encoded

    async def score(self, request: Request, schema: type[RerankRequest] | type[TeiRerankRequest],
                    truncate: bool | None = None) -> tuple[Any, Scored]:
        """The request's validated body and its scores, or an :class:`ApiError` (traced when tracing is on)."""
        with self.tracing.request(request.headers, **{"http.route": request.url.path}) as trace:
            try:
                return await self._score(request, schema, truncate, trace)
            except ApiError as exc:
                trace.error(exc.status, exc.kind)
                raise

    async def _score(self, request: Request, schema: type[RerankRequest] | type[TeiRerankRequest],
                     truncate: bool | None, trace: RequestTrace) -> tuple[Any, Scored]:
        deadline, timeout = request.scope.get(DEADLINE_SCOPE_KEY) or (
            time.perf_counter() + self.config.request_timeout_s, self.config.request_timeout_s)
        raw = await request.body()
        with trace.step("parse", **{"http.request.body.size": len(raw)}):
            body = await self.parser.parse(raw, schema)
        name, reranker = self.pick(body.model)
        texts = body.texts if isinstance(body, TeiRerankRequest) else [
            d if isinstance(d, str) else d.text for d in body.documents]
        scheduler = self.schedulers[name]
        refuse_unserved_options(body)
        how = long_documents(body)
        try:
            reservation = scheduler.check_admission(self._estimate_tokens(name, reranker, body.query, texts, how),
                                                    deadline, reserve=True)
        except QueueFullError as exc:
            raise ApiError(429, "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after_s)},
                           reason=exc.reason) from None
        windows = None
        try:  # the reservation holds this request's room while it is tokenized; submit takes it
            with trace.step("tokenize", **{"rerankrt.documents": len(texts)}):  # includes the wait for a thread
                if how.chunked:
                    windows = await self.pool.run(self._windows, name, reranker, body.query, texts, how)
                    encoded = Encoded(windows.token_ids, windows.dropped)
                    token_ids, truncated = encoded.token_ids, windows.dropped
                else:
                    encoded = await self.pool.run(self._encode, name, reranker, body.query, texts,
                                                  truncation_direction(body))
                    token_ids, truncated = encoded.token_ids, encoded.truncated
            self._learn_bytes_per_token(name, len(raw), encoded.tokens)
            if truncate is None:
                asked = getattr(body, "truncate", None)
                truncate = self.config.auto_truncate if asked is None else asked
            if not truncate and truncated.any():
                first = int(np.argmax(truncated))
                raise ApiError(413, "limit_exceeded", f"document {first} does not fit the model's "
                               f"{reranker.max_length} tokens with the query; send truncate=true to cut it",
                               limit="max_length", value=reranker.max_length)
            if time.perf_counter() >= deadline:
                raise _timeout(timeout)
            try:
                job = scheduler.submit(token_ids, deadline=deadline, reservation=reservation)
            except QueueFullError as exc:
                raise ApiError(429, "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after_s)},
                               reason=exc.reason) from None
            except TooMuchWorkError as exc:
                raise ApiError(413, "limit_exceeded", str(exc), limit="request_timeout_s", value=timeout) from None
            except SchedulerStoppedError as exc:
                raise ApiError(503, "shutting_down", str(exc), headers={"Retry-After": "1"}) from None
        finally:
            if reservation is not None:
                reservation.release()
        if trace.enabled:  # the attributes cost a sum over the request: only when traced
            trace.set(**{"rerankrt.model": name, "rerankrt.documents": len(texts), "rerankrt.pairs": len(token_ids),
                         "rerankrt.tokens": encoded.tokens, "rerankrt.truncated": int(truncated.sum())})
        try:
            logits = await self._await_job(request, job, deadline, timeout)
        finally:  # the scheduler stamped when the job's first rows entered a batch
            ended = time.perf_counter()
            began = job.started_at if job.started_at is not None else ended
            trace.interval("queue", job.enqueued_at, began)
            if job.started_at is not None:
                trace.interval("inference", began, ended, **{"rerankrt.backend": reranker.backend.name})
        if windows is not None:  # one row per window → one per document
            logits, _ = aggregate(logits, windows, how.aggregate)
        self.metrics.pairs.labels(name).inc(len(token_ids))
        self.metrics.input_tokens.labels(name).inc(encoded.tokens)
        return body, Scored(name, reranker, logits, encoded.tokens, int(truncated.sum()))

    async def _await_job(self, request: Request, job, deadline: float, timeout: float) -> np.ndarray:
        """The job's logits; its pending pairs are dropped when the client disconnects or the deadline passes."""
        result = asyncio.wrap_future(job.future)
        gone = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            done, _ = await asyncio.wait({result, gone}, timeout=max(deadline - time.perf_counter(), 0) + 0.5,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if result in done:
            try:
                return result.result()
            except DeadlineExceededError:
                raise _timeout(timeout) from None
            except asyncio.CancelledError:
                raise ApiError(499, "client_closed_request", "the request was cancelled") from None
        job.cancel()
        if gone in done:
            raise ApiError(499, "client_closed_request", "the client closed the connection")
        raise _timeout(timeout)


def truncation_direction(body: RerankRequest | TeiRerankRequest) -> str:
    """``"left"`` or ``"right"`` (TEI's ``truncation_direction``; the Cohere/Jina bodies have none)."""
    return str(getattr(body, "truncation_direction", "right")).lower()


def refuse_unserved_options(body: RerankRequest | TeiRerankRequest) -> None:
    """422 for options of the client APIs that would change the answer and are not served here: ignoring
    them (as unknown fields are) would return something else than what the client asked for, silently."""
    asked = body.long_documents
    spans = getattr(body, "relevant_spans", None)
    if spans is not None and spans.mode == "enabled":
        raise ApiError(422, "invalid_request", "relevant_spans mode 'enabled' is not supported by this server: it "
                       "scores whole documents; with long_documents strategy 'chunk', rerankrt's rank reports the "
                       "best window instead", field="relevant_spans")
    fields = getattr(body, "rank_fields", None)
    if fields is not None and list(fields) != ["text"]:
        raise ApiError(422, "invalid_request", f"rank_fields {list(fields)[:10]} is not supported: documents are "
                       "ranked on their 'text' field", field="rank_fields")
    if truncation_direction(body) == "left" and asked is not None and asked.strategy == "chunk":
        raise ApiError(422, "invalid_request", "truncation_direction 'left' applies to truncation; with "
                       "long_documents strategy 'chunk' the windows cover the whole document",
                       field="truncation_direction")


def long_documents(body: RerankRequest | TeiRerankRequest) -> LongDocuments:
    """The request's long-document handling: Cohere v2's ``max_tokens_per_doc`` is one window of that many
    document tokens (the document cut there, as Cohere does); Cohere v1's ``max_chunks_per_doc`` chunks with
    at most that many windows, scored by the best (as Cohere v1 did); ``long_documents`` chunks (rerankrt)."""
    asked = body.long_documents
    cap = getattr(body, "max_tokens_per_doc", None)
    try:
        if asked is not None and asked.strategy == "chunk":
            window = min(asked.window, cap) if asked.window and cap else (asked.window or cap)
            return LongDocuments("chunk", window, asked.stride, asked.aggregate, asked.max_chunks_per_doc)
        if cap is not None:
            return LongDocuments("chunk", window=cap, aggregate="first", max_chunks_per_doc=1)
        chunks = getattr(body, "max_chunks_per_doc", None)
        if chunks is not None:  # Cohere v1: long documents are chunked, the best chunk scores the document
            return LongDocuments("chunk", aggregate="max", max_chunks_per_doc=chunks)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    return LongDocuments()


def _timeout(timeout: float) -> ApiError:
    return ApiError(504, "timeout", f"not scored within the request's deadline ({timeout:g} s); its pending pairs "
                    "were dropped", limit="request_timeout_s", value=timeout)


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(models: dict[str, Reranker], config: ServerConfig | None = None,
               tracer_provider: Any = None) -> FastAPI:
    """An app serving ``models`` (name → Reranker; the first is the default).

    With ``config.tracing`` each rerank request is an OpenTelemetry trace (``tracing.py``), sent to
    ``tracer_provider`` or the process's global one."""
    if not models:
        raise ValueError("at least one model is needed")
    config = config or ServerConfig()
    state = ServerState(dict(models), config, ServerMetrics(),
                        tracing=Tracing(True, tracer_provider) if config.tracing else NO_TRACING)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(state.start)
        yield
        await run_in_threadpool(state.stop)

    app = FastAPI(title="rerankrt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  **fastapi_telemetry(config.tracing, tracer_provider))
    app.state.rerankrt = state
    app.add_middleware(FrontDoor, state=state)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        state.metrics.rejected.labels(exc.reason).inc()
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return ApiError(exc.status_code, kind, str(exc.detail), headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> Response:
        log.exception("internal error")
        return ApiError(500, "internal_error", "internal server error").response()

    @app.get("/live")
    async def live() -> JSONResponse:
        return JSONResponse({"status": "alive"})

    @app.get("/ready")
    @app.get("/health")
    async def ready() -> JSONResponse:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not state.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/info")
    async def info() -> dict:
        return {"default_model": state.default_model, "models": [
            {"name": name, "backend": r.backend.name, "precision": r.precision, "max_length": r.max_length,
             "precisions_available": sorted(r.artifact.manifest.get("graphs", {})),
             "queued_pairs": state.schedulers[name].queued_rows if name in state.schedulers else None,
             "tokens_per_s": round(state.schedulers[name].tokens_per_s) if name in state.schedulers else None,
             "manifest": r.artifact.manifest} for name, r in state.models.items()],
            "limits": {k: getattr(config, k) for k in (
                "max_documents", "max_document_bytes", "max_body_bytes", "max_queued_pairs", "request_timeout_s",
                "max_wait_ms", "max_concurrent_requests", "max_client_concurrency", "header_timeout_s",
                "body_timeout_s", "max_connections", "drain_grace_s")}}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.post("/v2/rerank")
    @app.post("/v1/rerank")
    async def rerank_cohere(request: Request) -> JSONResponse:
        """Cohere v2 (``/v2/rerank``, ``cohere.ClientV2``) and Jina / Cohere-style v1 clients: one shape, the
        response is a superset of both (``meta`` for Cohere, ``usage`` for Jina)."""
        body, scored = await state.score(request, RerankRequest, truncate=True)
        scores = scored.scores(body.raw_scores)
        results = []
        for i in rank_order(scores, body.top_n):
            item: dict[str, Any] = {"index": int(i), "relevance_score": float(scores[i])}
            if body.return_documents:
                doc = body.documents[i]
                item["document"] = {"text": doc} if isinstance(doc, str) else doc.model_dump()
            results.append(item)
        return JSONResponse({
            "id": str(uuid.uuid4()), "model": scored.model, "results": results,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1},
                     "tokens": {"input_tokens": scored.tokens, "output_tokens": 0}},
            "usage": {"total_tokens": scored.tokens, "truncated_documents": scored.truncated}})

    @app.post("/rerank")
    async def rerank_tei(request: Request) -> JSONResponse:
        body, scored = await state.score(request, TeiRerankRequest)
        scores = scored.scores(body.raw_scores)
        out = []
        for i in rank_order(scores):
            item: dict[str, Any] = {"index": int(i), "score": float(scores[i])}
            if body.return_text:
                item["text"] = body.texts[i]
            out.append(item)
        return JSONResponse(out)

    return app

