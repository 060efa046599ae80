"""Long documents: ``truncate`` (the default, as sentence-transformers) or ``chunk`` into token windows.

Why in the scoring core: a document longer than the model reads is either cut (silently, in most
rerankers) or scored window by window. Done here, on token ids, every front-end (``predict``/``rank``,
the server, file scoring, eval, Ray) gets the same windows and the same aggregation, and the windows
go through the same length-sorted token-budget batches as any other pair (a 20k-token document is
a handful of ordinary rows, not one huge one: memory stays what one window costs).

A window is ``[CLS] query [SEP] document[start:start + W] [SEP]``; windows start every ``S`` tokens
until one reaches the document's end (at most ``max_chunks_per_doc``). The pair's score aggregates
its windows' logits: ``max`` (default: the best passage decides, as in MaxP), ``mean`` or ``first``.
A document that fits in one window gives exactly the ids ``truncate`` gives, so its score is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

STRATEGIES = ("truncate", "chunk")
AGGREGATES = ("max", "mean", "first")
MAX_QUERY_SHARE = 0.5  # a query longer than this share of max_length is cut so every window keeps room for text


@dataclass(frozen=True)
class LongDocuments:
    """How a document longer than the model's ``max_length`` is scored.

    ``window``: document tokens per window (default: all that fit beside the query); ``stride``: tokens
    between window starts (default: ``window // 2``, so every passage is seen whole by one window);
    ``max_chunks_per_doc``: windows scored per document at most (the rest is reported as truncated).
    """

    strategy: str = "truncate"
    window: int | None = None
    stride: int | None = None
    aggregate: str = "max"
    max_chunks_per_doc: int | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"long-document strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"chunk aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        for name in ("window", "stride", "max_chunks_per_doc"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.window is not None and self.stride is not None and self.stride > self.window:
            raise ValueError(f"stride ({self.stride}) larger than the window ({self.window}) would skip text")

    @property
    def chunked(self) -> bool:
        return self.strategy == "chunk"


@dataclass(frozen=True)
class Windows:
    """Every window of every pair: their token ids, the pair each belongs to, and its document span."""

    token_ids: list[list[int]]
    owner: np.ndarray  # int64 [windows]: index of the pair
    token_span: np.ndarray  # int64 [windows, 2]: document tokens [start, end)
    char_span: np.ndarray  # int64 [windows, 2]: document characters [start, end)
    dropped: np.ndarray  # bool [pairs]: windows past max_chunks_per_doc were not scored (or the query was cut)
    n_pairs: int


def make_windows(query_ids: Sequence[list[int]], doc_ids: Sequence[list[int]],
                 doc_offsets: Sequence[list[tuple[int, int]]], max_length: int,
                 template: tuple[list[int], list[int], list[int]], policy: LongDocuments) -> Windows:
    """Cut each document into windows beside its query (``[CLS] q [SEP] d[s:s+W] [SEP]``: ``template``
    is the tokenizer's specials before, between and after, ``PairTokenizer.pair_template``)."""
    before, between, after = template
    ids, owners, spans, chars = [], [], [], []
    dropped = np.zeros(len(doc_ids), dtype=bool)
    for pair, (query, doc, offsets) in enumerate(zip(query_ids, doc_ids, doc_offsets, strict=True)):
        room = max_length - len(before) - len(between) - len(after)
        if len(query) > int(room * MAX_QUERY_SHARE) and len(query) + len(doc) > room:
            query = query[:max(int(room * MAX_QUERY_SHARE), room - len(doc))]
            dropped[pair] = True
        width = room - len(query)
        if policy.window is not None:
            width = min(width, policy.window)
        stride = min(policy.stride or max(width // 2, 1), width)
        starts = [0]
        while starts[-1] + width < len(doc):
            if policy.max_chunks_per_doc is not None and len(starts) == policy.max_chunks_per_doc:
                dropped[pair] = True  # text past the last window is not scored
                break
            starts.append(starts[-1] + stride)
        head = [*before, *query, *between]
        for start in starts:
            end = min(start + width, len(doc))
            ids.append([*head, *doc[start:end], *after])
            owners.append(pair)
            spans.append((start, end))
            chars.append((offsets[start][0], offsets[end - 1][1]) if end > start else (0, 0))
    return Windows(ids, np.asarray(owners, dtype=np.int64), np.asarray(spans, dtype=np.int64).reshape(-1, 2),
                   np.asarray(chars, dtype=np.int64).reshape(-1, 2), dropped, len(doc_ids))


def aggregate(window_logits: np.ndarray, windows: Windows, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: the aggregated logits ``[pairs, labels]`` and the index of its best window (by label 0)."""
    n, labels = windows.n_pairs, window_logits.shape[1]
    out = np.empty((n, labels), dtype=np.float32)
    best = np.empty(n, dtype=np.int64)
    order = np.argsort(windows.owner, kind="stable")
    bounds = np.searchsorted(windows.owner[order], np.arange(n + 1))
    for pair in range(n):
        rows = order[bounds[pair]:bounds[pair + 1]]
        values = window_logits[rows]
        best[pair] = rows[int(np.argmax(values[:, 0]))]
        if how == "max":
            out[pair] = values.max(axis=0)
        elif how == "mean":
            out[pair] = values.mean(axis=0)
        else:  # first
            out[pair] = values[0]
    return out, best


@dataclass(frozen=True)
class ChunkedLogits:
    """Aggregated logits per pair, the windows they came from, and each pair's best window."""

    logits: np.ndarray  # float32 [pairs, labels]
    windows: Windows
    best: np.ndarray  # int64 [pairs]: index into windows

    def best_spans(self) -> list[dict]:
        """Per pair: the best window's document token and character spans, and how many windows it had."""
        counts = np.bincount(self.windows.owner, minlength=self.windows.n_pairs)
        first = np.searchsorted(self.windows.owner, np.arange(self.windows.n_pairs))  # windows are made in order
        return [{"chunk_index": int(w - first[pair]), "chunks": int(counts[pair]),
                 "token_span": [int(x) for x in self.windows.token_span[w]],
                 "char_span": [int(x) for x in self.windows.char_span[w]]}
                for pair, w in enumerate(self.best)]


def windows_for(tokenizer, pairs: list[tuple[str, str]], long_documents: LongDocuments) -> Windows:
    """Tokenize the pairs' parts once and cut them into windows (``PairTokenizer.parts`` → :func:`make_windows`)."""
    queries, docs, offsets = tokenizer.parts(pairs)
    return make_windows(queries, docs, offsets, tokenizer.max_length, tokenizer.pair_template, long_documents)


def score_chunked(backend, tokenizer, pairs: list[tuple[str, str]], batch_policy, long_documents: LongDocuments,
                  num_labels: int = 1) -> ChunkedLogits:
    """Windows of every pair → the scoring core's batches (``score_ids``) → aggregated per pair."""
    from .scoring import score_ids

    windows = windows_for(tokenizer, pairs, long_documents)
    window_logits = score_ids(backend, windows.token_ids, batch_policy, tokenizer.pad_id, num_labels)
    logits, best = aggregate(window_logits, windows, long_documents.aggregate)
    return ChunkedLogits(logits, windows, best)


def as_long_documents(value: LongDocuments | str | dict | None) -> LongDocuments:
    """``None``/``"truncate"``/``"chunk"``/a dict of :class:`LongDocuments` fields/an instance → an instance."""
    if value is None:
        return LongDocuments()
    if isinstance(value, LongDocuments):
        return value
    if isinstance(value, str):
        return LongDocuments(strategy=value)
    if isinstance(value, dict):
        unknown = set(value) - {"strategy", "window", "stride", "aggregate", "max_chunks_per_doc"}
        if unknown:
            raise ValueError(f"unknown long-document option(s) {sorted(unknown)}")
        return LongDocuments(**value)
    raise TypeError(f"long_documents must be 'truncate', 'chunk', a dict or LongDocuments, got {type(value).__name__}")


def describe(how: LongDocuments) -> str:
    """``chunk 509/254 max`` (window/stride aggregate, ``auto`` for defaults) or ``truncate``."""
    if not how.chunked:
        return "truncate"
    limit = f", ≤ {how.max_chunks_per_doc} chunks" if how.max_chunks_per_doc else ""
    return f"chunk {how.window or 'auto'}/{how.stride or 'auto'} {how.aggregate}{limit}"
