"""Request bodies → validated requests, cheapest checks first (runs in a worker thread, never on the loop).

Why by hand instead of FastAPI's body parameters: FastAPI validates every item of a list before
any limit can be checked, on the event loop, and builds one error object per bad item — a 1 MiB
``{"documents": [1, 1, …]}`` took 12–18 s, blocked ``/health`` and grew the process by 1.3 GB. Here
the order is: JSON (stdlib, C speed; NaN/Infinity refused) → the body is an object → list lengths
against ``max_documents`` → the pydantic model (strict types, at most 10 errors reported) → text
validity and size per string. Every failure is an :class:`ApiError` with a 4xx status.

Where: a body whose size and number of JSON values are small (:func:`parses_in_process`, which
covers real requests of up to ~1,000 documents) is parsed on the event loop, in about a millisecond;
any other in a worker *process* (:class:`BodyParser`). Parsing holds Python's GIL — json.loads and
pydantic never release it — and a body of many tiny values (``[{"a":1},…]``) costs ~1 µs per value,
during which the event loop could not answer even ``/health``. In a worker process it costs the loop
nothing; only the validated request (at most ``max_documents`` strings) comes back. The worker dies
with the server (:func:`rerankrt.engine.lifetime.exit_with_parent`).

Invalid text: JSON can carry lone UTF-16 surrogates (``"\\ud800"``) that are not Unicode scalar
values; tokenizers cannot take them and UTF-8 cannot encode them. They are refused with 400
``invalid_text`` naming the field (not silently replaced: the scores would be of a different text).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from pydantic import ValidationError

from ..lifetime import exit_with_parent
from .errors import ApiError
from .schemas import RerankRequest, TeiRerankRequest

log = logging.getLogger("rerankrt.server")

# A body parses in the calling thread (the event loop) when its cost is bounded by both its size and
# the number of JSON values in it, counted from its structural characters (``,`` ``[`` ``{``: every
# value but the last of a container follows a comma; commas inside texts only over-count). What costs
# is values, not bytes (measured, 2-core Zen 4, idle): 150 documents of 700 bytes (109 KB, ~1,200
# structural characters) 0.4 ms; 1,000 such (740 KB) 2 ms; but 20,000 structural characters of
# ``{"a":1,"b":[1]}`` items 20 ms, and 44,000 of empty lists 1 ms. The old 64 KiB size rule sent every
# request of ~100+ real documents through the inter-process hop, the slowest part of a 429 under load.
IN_PROCESS_MAX_BYTES = 1 << 20
IN_PROCESS_MAX_VALUES = 8192


def parses_in_process(raw: bytes) -> bool:
    """Whether ``raw`` is cheap enough to parse on the event loop (≤ ~8 ms of GIL at the worst measured mix)."""
    if len(raw) > IN_PROCESS_MAX_BYTES:
        return False
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{") <= IN_PROCESS_MAX_VALUES


@dataclass(frozen=True)
class TextLimits:
    max_documents: int
    max_document_bytes: int


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> object:
    if not raw.strip():
        raise ApiError(400, "invalid_json", "the body is empty; send a JSON object")
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body nests too deeply") from None
    except ValueError as exc:  # JSONDecodeError and the refused constants
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None


def _check_text(text: str, where: str, limit: int) -> None:
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise ApiError(400, "invalid_text", f"{where} contains an invalid character (a lone UTF-16 surrogate "
                           f"U+{ord(text[exc.start]):04X} at position {exc.start}); send valid Unicode",
                           field=where) from None
    if size > limit:
        raise ApiError(413, "limit_exceeded", f"{where} is longer than {limit} UTF-8 bytes",
                       limit="max_document_bytes", value=limit)


def _validate(model: type[RerankRequest] | type[TeiRerankRequest], data: dict) -> RerankRequest | TeiRerankRequest:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        bad_text = next((e for e in errors if e["type"] == "string_unicode"), None)
        if bad_text is not None:  # pydantic refuses a lone surrogate in a key itself: the same error as ours
            where = ".".join(str(p) for p in bad_text["loc"][:-1] if p != "DocumentObject") or "body"
            raise ApiError(400, "invalid_text", f"{where} contains an invalid character (a lone UTF-16 surrogate); "
                           "send valid Unicode", field=where) from None
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(422, "invalid_request", f"{where}: {first['msg']}", error_count=exc.error_count(),
                       errors=[{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in errors[:10]]) from None


def parse_request(raw: bytes, model: type[RerankRequest] | type[TeiRerankRequest],
                  limits: TextLimits) -> RerankRequest | TeiRerankRequest:
    """Validated ``model`` from ``raw``, or an :class:`ApiError` from the first check that fails."""
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", f"the body must be a JSON object, not {type(data).__name__}")
    field = "documents" if model is RerankRequest else "texts"
    items = data.get(field)
    if isinstance(items, list):
        if not items:
            raise ApiError(422, "invalid_request", f"{field} must not be empty")
        if len(items) > limits.max_documents:
            raise ApiError(413, "limit_exceeded", f"{len(items)} {field} exceed the limit of {limits.max_documents} "
                           "per request", limit="max_documents", value=limits.max_documents)
    request = _validate(model, data)
    _check_text(request.query, "query", limits.max_document_bytes)
    texts = request.documents if isinstance(request, RerankRequest) else request.texts
    for i, item in enumerate(texts):
        _check_text(item if isinstance(item, str) else item.text, f"{field}[{i}]", limits.max_document_bytes)
    if isinstance(request, RerankRequest) and request.return_documents:
        for i, item in enumerate(texts):  # other fields of document objects are echoed back too
            if not isinstance(item, str):
                _check_extra(item.model_extra or {}, f"documents[{i}]")
    if request.model is not None:
        _check_text(request.model, "model", 1024)
    return request


def _check_extra(value: object, where: str) -> None:
    """Strings nested in echoed document fields must be encodable too (they go back in the response)."""
    if isinstance(value, str):
        _check_text(value, where, 1 << 62)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(str(k), where, 1 << 62)
            _check_extra(v, f"{where}.{k}")
    elif isinstance(value, list):
        for v in value:
            _check_extra(v, where)


def _init_parse_worker(parent: int) -> None:
    exit_with_parent(parent)


class BodyParser:
    """:func:`parse_request` on the event loop for small bodies, in worker processes for big ones."""

    def __init__(self, limits: TextLimits, processes: int | None = None, max_waiting: int = 64) -> None:
        self.limits = limits
        self.processes = processes or min(2, os.cpu_count() or 1)
        self.max_waiting = max_waiting
        self.pending = 0
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Spawn the workers now (a second or so of imports), not on the first big request."""
        pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_parse_worker, initargs=(os.getpid(),))
        try:
            for future in [pool.submit(parse_request, b'{"query": "q", "texts": ["t"]}', TeiRerankRequest,
                                       self.limits) for _ in range(self.processes)]:
                future.result(timeout=120)
        except Exception as exc:  # noqa: BLE001 - e.g. a __main__ that spawn cannot re-import: serve anyway
            log.warning("body-parsing worker processes did not start (%s); big bodies are parsed in threads", exc)
            pool.shutdown(wait=False, cancel_futures=True)
            return
        self._pool = pool

    async def parse(self, raw: bytes, model: type[RerankRequest] | type[TeiRerankRequest]
                    ) -> RerankRequest | TeiRerankRequest:
        """Called on the event loop: a cheap body is parsed right here (:func:`parses_in_process`: at worst
        ~8 ms of GIL, typically < 1 ms), a costly one in a worker process while the loop goes on. Neither waits in the
        tokenization line, so a request about to be refused is refused in milliseconds."""
        pool = self._pool
        if pool is None or parses_in_process(raw):
            return parse_request(raw, model, self.limits)
        if self.pending >= self.processes + self.max_waiting:
            raise ApiError(429, "overloaded", f"{self.pending} big bodies are being parsed, the server's limit "
                           f"({self.processes} processes + {self.max_waiting} waiting)", headers={"Retry-After": "1"},
                           limit="max_tokenize_waiting", value=self.max_waiting)
        self.pending += 1
        try:
            return await asyncio.wrap_future(pool.submit(parse_request, raw, model, self.limits))
        except BrokenProcessPool:  # a worker died (killed, out of memory): replace the pool, refuse this body
            log.warning("a body-parsing worker died; starting new ones")
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            self.start()
            raise ApiError(413, "limit_exceeded", "the body could not be parsed within the server's resources",
                           limit="max_body_bytes", value=len(raw)) from None
        finally:
            self.pending -= 1

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
