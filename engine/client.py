"""``RerankClient``: ``Reranker``'s ``rank`` and ``predict`` against a running ``rerankrt serve``.

Why a client of our own when the server speaks Cohere's and TEI's APIs: code written against
:class:`~rerankrt.engine.Reranker` (and the framework integrations in ``integrations/``) should move
from scoring in process to scoring on a shared server by changing the object it is given, not its
calls. So the client has the same method names, argument checks, error types and results: ``rank``
returns ``[{"corpus_id", "score"[, "text"]}]`` sorted like ``Reranker.rank`` (ties in input order),
``predict`` raw logits in input order. Scores are the server's raw logits (``raw_scores: true``),
never its sigmoid, so in-process and remote scores are on one scale.

Input is checked here before anything is sent (``normalize_pairs`` and ``Reranker.rank``'s checks),
so a ``None`` document raises the same :class:`InvalidInputTypeError` at the same index as in
process, without a round trip. What only the server can judge (a text over its byte limit, a lone
surrogate) comes back as 400/413/422 and is raised as :class:`InvalidInputError` with the server's
message; any other failure (unreachable, 401, 404, 429, 5xx) is a :class:`RemoteError`.

httpx is imported when a client is created (extra ``rerankrt[client]``), never by ``rerankrt.engine``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidInputError, InvalidInputTypeError, RemoteError
from .scoring import rank_order
from .tokenize import Pair, is_single_pair, normalize_pairs

if TYPE_CHECKING:
    import httpx

    from .reranker import Reranker

__all__ = ["RerankClient", "check_rank_inputs", "connect_or_load", "rank_raw", "arank_raw", "predict_raw",
           "relevance"]

CLIENT_EXTRA = 'pip install "rerankrt[client]"'
API_KEY_ENV = "RERANKRT_API_KEY"  # the variable the server reads its key from (server/config.py)
INPUT_STATUSES = frozenset({400, 413, 422})  # the server's answers about the request itself
_DOCUMENT_INDEX = re.compile(r"documents\[(\d+)\]")


def _import_httpx():
    try:
        import httpx
    except ImportError as exc:
        raise ImportError(f"RerankClient needs httpx, which is not installed: {CLIENT_EXTRA}") from exc
    return httpx


def check_rank_inputs(query: object, documents: object, top_k: object) -> list[str]:
    """``Reranker.rank``'s argument checks (same error types and messages); the documents as a list."""
    if not isinstance(query, str):
        raise InvalidInputTypeError(f"query has type {type(query).__name__}; expected a string")
    if isinstance(documents, (str, bytes)) or documents is None:
        raise InvalidInputTypeError("documents must be a list of strings")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be a non-negative integer or None, got {top_k!r}")
    try:
        docs = list(documents)  # type: ignore[call-overload]  # any iterable, as Reranker.rank takes
    except TypeError as exc:
        raise InvalidInputTypeError(f"documents must be a list of strings, got {type(documents).__name__}") from exc
    for i, doc in enumerate(docs):
        if not isinstance(doc, str):
            raise InvalidInputTypeError(f"document {i} has type {type(doc).__name__}; expected a string", i)
    return docs


@dataclass
class _Job:
    """One HTTP request: a query and some of its documents, with their positions in the caller's input."""

    query: str
    documents: list[str]
    positions: list[int]


class RerankClient:
    """``rank``/``predict`` (and ``arank``/``apredict``) on a rerankrt server's ``POST /v1/rerank``.

    ``model``: the served model's name (``None``: the server's default); ``api_key`` (default: the
    ``RERANKRT_API_KEY`` variable the server reads too) is sent as ``Authorization: Bearer``;
    ``timeout``: seconds per HTTP request. Long inputs are cut into requests of at most
    ``max_documents_per_request`` documents (the server refuses more than its ``max_documents``,
    10,000 by default), up to ``max_concurrent_requests`` in flight, so the server's batcher can
    score them together. ``transport``/``async_transport`` replace httpx's
    network transports (tests, proxies, ``httpx.MockTransport``). Thread-safe; ``close()`` (or a
    ``with`` block) releases the pooled connections.
    """

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, timeout: float = 30.0,
                 *, max_documents_per_request: int = 1000, max_concurrent_requests: int = 8,
                 headers: dict[str, str] | None = None, transport: httpx.BaseTransport | None = None,
                 async_transport: httpx.AsyncBaseTransport | None = None) -> None:
        hx = _import_httpx()
        if not isinstance(base_url, str) or not base_url:
            raise ValueError(f"base_url must be a URL such as http://localhost:8080, got {base_url!r}")
        if model is not None and not isinstance(model, str):
            raise TypeError(f"model must be a served model's name or None, got {type(model).__name__}")
        for name, value in (("max_documents_per_request", max_documents_per_request),
                            ("max_concurrent_requests", max_concurrent_requests)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.max_documents_per_request = max_documents_per_request
        self.max_concurrent_requests = max_concurrent_requests
        self._headers = {"accept": "application/json", **(headers or {})}
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._async_transport = async_transport
        self._client = hx.Client(base_url=self.base_url, headers=self._headers, timeout=timeout,
                                 transport=transport)

    # -- the Reranker API ------------------------------------------------------------------------
    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None,
             return_documents: bool = False) -> list[dict]:
        """``[{"corpus_id", "score"[, "text"]}]`` by descending raw score, ties in input order (``Reranker.rank``)."""
        docs = check_rank_inputs(query, documents, top_k)
        if not docs:
            return []
        scores = self._run(self._rank_jobs(query, docs), len(docs))
        return _ranked(scores, docs, top_k, return_documents)

    def predict(self, pairs: Sequence[Pair] | Pair) -> np.ndarray | np.float32:
        """Raw logits ``float32 [n]`` in input order (a scalar for one ``(query, document)`` pair).

        Pairs are grouped by query: one request per query (and per ``max_documents_per_request``
        documents), so a query is sent once however many documents it has.
        """
        single = is_single_pair(pairs)
        items = normalize_pairs([pairs] if single else pairs)
        scores = self._run(self._pair_jobs(items), len(items)) if items else np.zeros(0, np.float32)
        return scores[0] if single else scores

    async def arank(self, query: str, documents: Sequence[str], top_k: int | None = None,
                    return_documents: bool = False) -> list[dict]:
        """:meth:`rank` without blocking the event loop (its requests run concurrently)."""
        docs = check_rank_inputs(query, documents, top_k)
        if not docs:
            return []
        scores = await self._arun(self._rank_jobs(query, docs), len(docs))
        return _ranked(scores, docs, top_k, return_documents)

    async def apredict(self, pairs: Sequence[Pair] | Pair) -> np.ndarray | np.float32:
        """:meth:`predict` without blocking the event loop (one request per query, concurrently)."""
        single = is_single_pair(pairs)
        items = normalize_pairs([pairs] if single else pairs)
        scores = await self._arun(self._pair_jobs(items), len(items)) if items else np.zeros(0, np.float32)
        return scores[0] if single else scores

    # -- requests ----------------------------------------------------------------------------------
    def _rank_jobs(self, query: str, docs: list[str]) -> list[_Job]:
        step = self.max_documents_per_request
        return [_Job(query, docs[s:s + step], list(range(s, min(s + step, len(docs)))))
                for s in range(0, len(docs), step)]

    def _pair_jobs(self, pairs: list[Pair]) -> list[_Job]:
        by_query: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(pairs):
            by_query.setdefault(query, []).append(i)
        step = self.max_documents_per_request
        return [_Job(query, [pairs[i][1] for i in positions[s:s + step]], positions[s:s + step])
                for query, positions in by_query.items() for s in range(0, len(positions), step)]

    def _body(self, job: _Job) -> bytes:
        body: dict[str, Any] = {"query": job.query, "documents": job.documents, "raw_scores": True}
        if self.model is not None:
            body["model"] = self.model
        try:
            return json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: send it escaped, the server names the field (400)
            return json.dumps(body, ensure_ascii=True).encode("ascii")

    def _run(self, jobs: list[_Job], n: int) -> np.ndarray:
        scores = np.full(n, np.nan, dtype=np.float32)
        if len(jobs) == 1:
            self._fill(scores, jobs[0], self._post(jobs[0]))
            return scores
        with ThreadPoolExecutor(min(self.max_concurrent_requests, len(jobs)),
                                thread_name_prefix="rerankrt-client") as pool:
            for job, response in zip(jobs, pool.map(self._post, jobs)):
                self._fill(scores, job, response)
        return scores

    async def _arun(self, jobs: list[_Job], n: int) -> np.ndarray:
        hx = _import_httpx()
        scores = np.full(n, np.nan, dtype=np.float32)
        room = asyncio.Semaphore(self.max_concurrent_requests)
        # a client per call: an AsyncClient belongs to the event loop it was opened on, and callers
        # (LlamaIndex, Haystack, notebooks) run each call on a loop of their own
        async with hx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=self.timeout,
                                     transport=self._async_transport) as client:
            async def post(job: _Job) -> httpx.Response:
                async with room:
                    try:
                        return await client.post("/v1/rerank", content=self._body(job),
                                                 headers={"content-type": "application/json"})
                    except hx.HTTPError as exc:
                        raise self._unreachable(exc) from exc

            responses = await asyncio.gather(*(post(job) for job in jobs))
        for job, response in zip(jobs, responses):
            self._fill(scores, job, response)
        return scores

    def _post(self, job: _Job) -> httpx.Response:
        hx = _import_httpx()
        try:
            return self._client.post("/v1/rerank", content=self._body(job),
                                     headers={"content-type": "application/json"})
        except hx.HTTPError as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: Exception) -> RemoteError:
        hx = _import_httpx()
        if isinstance(exc, hx.TimeoutException):
            return RemoteError(f"{self.base_url} did not answer within {self.timeout} s ({type(exc).__name__})",
                               kind="timeout")
        return RemoteError(f"cannot reach {self.base_url}: {type(exc).__name__}: {exc}", kind="unreachable")

    def _fill(self, scores: np.ndarray, job: _Job, response: httpx.Response) -> None:
        if response.status_code >= 400:
            raise _error(response, job)
        try:
            results = response.json()["results"]
            for item in results:
                scores[job.positions[int(item["index"])]] = float(item["relevance_score"])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise RemoteError(f"{self.base_url} answered {response.status_code} with a body that is not a rerank "
                              f"response: {response.text[:200]!r}", response.status_code) from exc
        if len(results) != len(job.documents):
            raise RemoteError(f"{self.base_url} scored {len(results)} of the {len(job.documents)} documents sent",
                              response.status_code)

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the pooled connections (the client is not usable afterwards)."""
        self._client.close()

    def __enter__(self) -> RerankClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RerankClient({self.base_url!r}, model={self.model!r})"


def _ranked(scores: np.ndarray, docs: list[str], top_k: int | None, return_documents: bool) -> list[dict]:
    results = []
    for i in rank_order(scores, top_k):  # the order Reranker.rank uses, ties included
        item: dict[str, Any] = {"corpus_id": int(i), "score": float(scores[i])}
        if return_documents:
            item["text"] = docs[i]
        results.append(item)
    return results


def _error(response: httpx.Response, job: _Job) -> Exception:
    """The server's JSON error (``{"error": {"type", "message", ...}}``) as the exception a caller handles."""
    status = response.status_code
    try:
        error = response.json()["error"]
        kind, message = str(error["type"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        kind, message = "http_error", f"HTTP {status}: {response.text[:500]}"
    if status in INPUT_STATUSES:
        index = None
        found = _DOCUMENT_INDEX.search(message)
        if found and int(found.group(1)) < len(job.positions):
            index = job.positions[int(found.group(1))]  # the caller's position, not the request's
            if index != int(found.group(1)):
                message += f" (input position {index})"
        return InvalidInputError(message, index)
    retry = response.headers.get("retry-after")
    try:
        retry_after = float(retry) if retry is not None else None
    except ValueError:
        retry_after = None
    return RemoteError(f"{message} (HTTP {status} {kind})", status, kind, retry_after)


# -- the one scorer interface the framework integrations use (in process or remote) -------------
def connect_or_load(model: str | os.PathLike | None = None, *, url: str | None = None, api_key: str | None = None,
                    timeout: float = 30.0, **reranker_options: Any) -> Reranker | RerankClient:
    """A :class:`RerankClient` for ``url``, else a :class:`~rerankrt.engine.Reranker` loaded from ``model``.

    With ``url``, ``model`` is the served model's name (``None``: the server's default); without,
    it is an artifact directory or hub id, loaded with ``reranker_options`` (``precision``,
    ``backend``, ``max_length``, ...). The integrations take either so one option switches a
    pipeline between scoring in process and on a shared server.
    """
    if url is not None:
        if reranker_options:
            raise ValueError(f"options {sorted(reranker_options)} load a model in process; with url= the server "
                             "has already loaded it")
        return RerankClient(url, model=None if model is None else str(model), api_key=api_key, timeout=timeout)
    if model is None:
        raise ValueError("give a model (an artifact directory or hub id) to score in process, or url= for a server")
    from .reranker import Reranker

    return Reranker.from_pretrained(model, **reranker_options)


def _is_remote(scorer: Any) -> bool:
    return hasattr(scorer, "arank")


def rank_raw(scorer: Reranker | RerankClient, query: str, documents: Sequence[str],
             top_k: int | None = None) -> list[dict]:
    """``rank`` with raw logits as scores, whichever side scores (a model whose own activation is a
    sigmoid would otherwise rank in process on another scale than remotely)."""
    if _is_remote(scorer):
        return scorer.rank(query, documents, top_k=top_k)
    return scorer.rank(query, documents, top_k=top_k, activation_fn="raw")  # type: ignore[call-arg]


async def arank_raw(scorer: Reranker | RerankClient, query: str, documents: Sequence[str],
                    top_k: int | None = None) -> list[dict]:
    """:func:`rank_raw` for async callers: remote requests are awaited, in-process scoring runs in a thread."""
    if _is_remote(scorer):
        return await scorer.arank(query, documents, top_k=top_k)  # type: ignore[union-attr]
    return await asyncio.to_thread(rank_raw, scorer, query, documents, top_k)


def predict_raw(scorer: Reranker | RerankClient, pairs: Sequence[Pair]) -> np.ndarray:
    """Raw logits ``[n]`` of ``pairs`` in input order, whichever side scores."""
    if _is_remote(scorer):
        return np.asarray(scorer.predict(pairs), dtype=np.float32).reshape(-1)
    scores = scorer.predict(pairs, activation_fn="raw")  # type: ignore[call-arg]
    return np.asarray(scores, dtype=np.float32).reshape(-1)


def relevance(logit: float, activation: str) -> float:
    """A raw logit as the integrations report it: ``"raw"`` as is, ``"sigmoid"`` in [0, 1] like the
    server's and Cohere's ``relevance_score`` (float64: float32 would round logits past ~17 to 1.0)."""
    if activation == "raw":
        return float(logit)
    if activation == "sigmoid":
        x = float(logit)
        if x >= 0:
            return 1.0 / (1.0 + math.exp(-x))
        e = math.exp(x)  # the same function, without overflow for very negative logits
        return e / (1.0 + e)
    raise ValueError(f"activation must be 'sigmoid' or 'raw', got {activation!r}")
