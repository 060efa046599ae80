"""The ASGI app: routes of both rerank APIs on one request path, errors as JSON, metrics.

The request path reads top to bottom in :meth:`ServerState.score`: pick the model → check the
per-request limits → tokenize (in a worker thread, off the event loop) → submit the token ids to
the model's :class:`BatchScheduler` → await the scores (bounded by the request timeout, dropped
if the client goes away) → activation → the API's response shape. Errors are
:class:`ApiError` (status, type, message, and for limits the limit's name and value); nothing
else reaches a client, and no stack trace ever does.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..reranker import Reranker
from ..scoring import activate, rank_order
from .config import ServerConfig
from .metrics import ServerMetrics
from .middleware import BodyLimitAndMetrics
from .scheduler import BatchScheduler, QueueFullError, SchedulerStoppedError
from .schemas import RerankRequest, TeiRerankRequest

log = logging.getLogger("rerankrt.server")

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class ApiError(Exception):
    """An error a client may see: ``{"error": {"type", "message", ...extra}}`` with ``status``."""

    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None, **extra) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers, self.extra = status, kind, message, headers, extra

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"type": self.kind, "message": self.message, **self.extra}},
                            status_code=self.status, headers=self.headers)


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


@dataclass
class ServerState:
    models: dict[str, Reranker]
    config: ServerConfig
    metrics: ServerMetrics
    schedulers: dict[str, BatchScheduler] = field(default_factory=dict)
    ready: bool = False

    @property
    def default_model(self) -> str:
        return next(iter(self.models))

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Warm every model (first-call kernel compilation is not a client's latency), then open the queues."""
        for name, reranker in self.models.items():
            reranker.predict([("warm up", "a short document"), ("warm up " * 20, "a longer document " * 60)])
            self.schedulers[name] = BatchScheduler.for_reranker(
                reranker, max_wait_s=self.config.max_wait_ms / 1000, window_tokens=self.config.window_tokens,
                max_queued_rows=self.config.max_queued_pairs, stats=self.metrics.scheduler_stats(name), name=name)
        self.ready = True
        log.info("ready: %s", ", ".join(f"{n} ({r.backend.name} {r.precision})" for n, r in self.models.items()))

    def stop(self) -> None:
        """Finish every queued pair (uvicorn has already waited for in-flight requests), then stop."""
        self.ready = False
        for scheduler in self.schedulers.values():
            scheduler.stop(drain=True)

    # -- the request path ----------------------------------------------------------------------
    def pick(self, name: str | None) -> tuple[str, Reranker]:
        name = name or self.default_model
        if name not in self.models:
            raise ApiError(404, "model_not_found", f"model {name!r} is not served here; served: {sorted(self.models)}")
        return name, self.models[name]

    def check_limits(self, query: str, documents: Sequence[str]) -> None:
        cfg = self.config
        if not documents:
            raise ApiError(422, "invalid_request", "documents must not be empty")
        if len(documents) > cfg.max_documents:
            raise ApiError(413, "limit_exceeded", f"{len(documents)} documents exceed the limit of "
                           f"{cfg.max_documents} per request", limit="max_documents", value=cfg.max_documents)
        limit = cfg.max_document_bytes
        for i, text in enumerate((query, *documents)):
            if len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit:
                what = "the query" if i == 0 else f"document {i - 1}"
                raise ApiError(413, "limit_exceeded", f"{what} is longer than {limit} UTF-8 bytes",
                               limit="max_document_bytes", value=limit)

    async def score(self, request: Request, endpoint: str, name: str | None, query: str, documents: list[str],
                    truncate: bool) -> Scored:
        if not self.ready:
            raise ApiError(503, "not_ready", "the server is starting or shutting down", headers={"Retry-After": "1"})
        name, reranker = self.pick(name)
        self.check_limits(query, documents)
        started = time.perf_counter()
        encoded = await run_in_threadpool(reranker.encode, [(query, d) for d in documents])
        token_ids, truncated = encoded.token_ids, encoded.truncated
        self.metrics.tokenize_time.labels(name).observe(time.perf_counter() - started)
        if not truncate and truncated.any():
            first = int(np.argmax(truncated))
            raise ApiError(413, "limit_exceeded", f"document {first} does not fit the model's {reranker.max_length} "
                           "tokens with the query; send truncate=true to cut it", limit="max_length",
                           value=reranker.max_length)
        try:
            job = self.schedulers[name].submit(token_ids)
        except QueueFullError as exc:
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError(429, "overloaded", str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
        except SchedulerStoppedError as exc:
            raise ApiError(503, "shutting_down", str(exc), headers={"Retry-After": "1"}) from None
        logits = await self._await_job(request, job)
        tokens = encoded.tokens
        self.metrics.pairs.labels(name).inc(len(token_ids))
        self.metrics.input_tokens.labels(name).inc(tokens)
        return Scored(name, reranker, logits, tokens, int(truncated.sum()))

    async def _await_job(self, request: Request, job) -> np.ndarray:
        """The job's logits; cancels its pending pairs on timeout or when the client disconnects."""
        result = asyncio.wrap_future(job.future)
        gone = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            done, _ = await asyncio.wait({result, gone}, timeout=self.config.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if result in done:
            return result.result()
        job.cancel()
        if gone in done:
            raise ApiError(499, "client_closed_request", "the client closed the connection")
        raise ApiError(504, "timeout", f"not scored within {self.config.request_timeout_s:g} s; its pending pairs "
                       "were dropped", limit="request_timeout_s", value=self.config.request_timeout_s)


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _validation_error(exc: RequestValidationError) -> ApiError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return ApiError(400, "invalid_json", f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return ApiError(422, "invalid_request", f"{where}: {first.get('msg', 'invalid value')}",
                    errors=[{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg")} for e in errors[:10]])


def create_app(models: dict[str, Reranker], config: ServerConfig | None = None) -> FastAPI:
    """An app serving ``models`` (name → Reranker; the first is the default)."""
    if not models:
        raise ValueError("at least one model is needed")
    config = config or ServerConfig()
    state = ServerState(dict(models), config, ServerMetrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(state.start)
        yield
        await run_in_threadpool(state.stop)

    app = FastAPI(title="rerankrt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.rerankrt = state
    app.add_middleware(BodyLimitAndMetrics, max_body_bytes=config.max_body_bytes, metrics=state.metrics)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return ApiError(500, "internal_error", "internal server error").response()

    async def authorized(request: Request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        key = header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key")
        if key != config.api_key:
            raise ApiError(401, "unauthorized", "missing or wrong API key (Authorization: Bearer KEY or X-API-Key)",
                           headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    async def health() -> JSONResponse:
        if not state.ready:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/info", dependencies=[Depends(authorized)])
    async def info() -> dict:
        return {"default_model": state.default_model, "models": [
            {"name": name, "backend": r.backend.name, "precision": r.precision, "max_length": r.max_length,
             "precisions_available": sorted(r.artifact.manifest.get("graphs", {})),
             "queued_pairs": state.schedulers[name].queued_rows if name in state.schedulers else None,
             "manifest": r.artifact.manifest} for name, r in state.models.items()],
            "limits": {k: getattr(config, k) for k in ("max_documents", "max_document_bytes", "max_body_bytes",
                                                       "max_queued_pairs", "request_timeout_s", "max_wait_ms")}}

    @app.get("/metrics", dependencies=[Depends(authorized)])
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.post("/v1/rerank", dependencies=[Depends(authorized)])
    async def rerank_v1(body: RerankRequest, request: Request) -> JSONResponse:
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        scored = await state.score(request, "/v1/rerank", body.model, body.query, texts, truncate=True)
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

    @app.post("/rerank", dependencies=[Depends(authorized)])
    async def rerank_tei(body: TeiRerankRequest, request: Request) -> JSONResponse:
        truncate = config.auto_truncate if body.truncate is None else body.truncate
        scored = await state.score(request, "/rerank", body.model, body.query, body.texts, truncate=truncate)
        scores = scored.scores(body.raw_scores)
        out = []
        for i in rank_order(scores):
            item: dict[str, Any] = {"index": int(i), "score": float(scores[i])}
            if body.return_text:
                item["text"] = body.texts[i]
            out.append(item)
        return JSONResponse(out)

    return app
