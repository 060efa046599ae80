"""The scoring core: the steps of the one data path, text → ids → batches → backend → scores.

Why one module: ``Reranker.predict``/``rank``, the HTTP scheduler, file scoring, eval, Ray, the
load-time int8 check and the export's parity gate all score pairs. Each calls these steps and adds
only what is its own (the server: cross-request windows, cancellation, deadlines; file scoring:
readers, writers, checkpoints), so planning, padding, running and activation exist once:

* :func:`encode` — pairs → token ids, with token counts and truncation flags;
* :func:`iter_batch_logits` / :func:`score_ids` — plan length-sorted token-budget batches → pad
  each to its own longest row → ``run`` (or ``run_many``, which lets a backend overlap batches) →
  logits in input order;
* :func:`activate` and :func:`rank_order` — post-processing: activation, squeeze, ranking.

It must not tokenize twice, hold state, or know any front-end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .batching import Batch, BatchPolicy, pad_batch, plan_batches


@dataclass(frozen=True)
class Encoded:
    """Token ids of pairs, in input order, and which pairs were truncated to fit ``max_length``."""

    token_ids: list[list[int]]
    truncated: np.ndarray  # bool [n]

    @property
    def tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)

    def __len__(self) -> int:
        return len(self.token_ids)


def encode(tokenizer, pairs: Sequence[tuple[str, str]], truncation_direction: str = "right") -> Encoded:
    """Tokenize pairs exactly as sentence-transformers does (``PairTokenizer``); ``"left"`` truncation keeps
    the end of a text instead (TEI's ``truncation_direction``)."""
    token_ids, truncated = tokenizer.encode_with_truncation(list(pairs), truncation_direction)
    return Encoded(token_ids, np.asarray(truncated, dtype=bool))


def padded_batches(token_ids: list[list[int]], policy: BatchPolicy, pad_id: int) -> list[Batch]:
    """Plan and pad every batch up front, longest first: for backends that overlap batches, and for
    consumers that need the padded arrays themselves (the export's PyTorch reference and int8 calibration)."""
    lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
    return [pad_batch(token_ids, indices, pad_id, policy.pad_to_multiple_of, policy.width_buckets)
            for indices in plan_batches(lengths, policy)]


@dataclass
class BatchResult:
    """One batch's outcome: input positions and their logits, or the error that batch raised."""

    indices: np.ndarray
    logits: np.ndarray | None
    padded_tokens: int
    seconds: float
    error: BaseException | None = None


def iter_batch_logits(backend, token_ids: list[list[int]], policy: BatchPolicy, pad_id: int,
                      keep: Callable[[np.ndarray], np.ndarray] | None = None,
                      catch_errors: bool = False) -> Iterator[BatchResult]:
    """Plan → pad → run, batch by batch, longest first.

    ``keep(indices)`` filters each planned batch just before it is padded (the server drops rows
    of cancelled requests there); an empty batch is skipped. With ``catch_errors`` a failing batch
    is yielded with its error instead of ending the iteration, so a server fails only the requests
    in it. Where the backend overlaps batches (``run_many`` with several infer requests), all
    batches are padded first and run in one call.
    """
    lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
    plan = plan_batches(lengths, policy)
    multiple, buckets = policy.pad_to_multiple_of, policy.width_buckets
    if len(plan) > 1 and backend.overlaps_batches:
        if keep is not None:
            plan = [kept for kept in (np.asarray(keep(indices)) for indices in plan) if len(kept)]
        batches = [pad_batch(token_ids, indices, pad_id, multiple, buckets) for indices in plan]
        started = time.perf_counter()
        try:
            outputs = backend.run_many([(b.input_ids, b.attention_mask) for b in batches])
        except Exception as exc:  # noqa: BLE001 - handed to the caller with the rows it concerns
            if not catch_errors:
                raise
            for b in batches:
                yield BatchResult(b.indices, None, int(b.input_ids.size), 0.0, exc)
            return
        seconds = (time.perf_counter() - started) / len(batches)
        for b, out in zip(batches, outputs):
            yield BatchResult(b.indices, out, int(b.input_ids.size), seconds)
        return
    for indices in plan:
        if keep is not None:  # decided batch by batch: a request cancelled meanwhile loses its later rows
            indices = np.asarray(keep(indices))
            if not len(indices):
                continue
        batch = pad_batch(token_ids, indices, pad_id, multiple, buckets)
        started = time.perf_counter()
        try:
            out = backend.run(batch.input_ids, batch.attention_mask)
        except Exception as exc:  # noqa: BLE001 - see catch_errors
            if not catch_errors:
                raise
            yield BatchResult(batch.indices, None, int(batch.input_ids.size), time.perf_counter() - started, exc)
            continue
        yield BatchResult(batch.indices, out, int(batch.input_ids.size), time.perf_counter() - started)


def score_ids(backend, token_ids: list[list[int]], policy: BatchPolicy, pad_id: int, num_labels: int = 1,
              on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Raw logits ``float32 [n, num_labels]`` for tokenized pairs, in input order.

    ``on_batch(rows)`` is called after each batch (progress bars).
    """
    logits = np.empty((len(token_ids), num_labels), dtype=np.float32)
    for result in iter_batch_logits(backend, token_ids, policy, pad_id):
        logits[result.indices] = result.logits
        if on_batch is not None:
            on_batch(len(result.indices))
    return logits


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(x).astype(np.float64)))).astype(np.float32)


def resolve_activation(activation: str | Callable | None, default: str) -> Callable[[np.ndarray], np.ndarray]:
    """``None`` → the model's own (Ettin: identity/raw logits); ``"raw"``/``"identity"``; ``"sigmoid"``; a callable."""
    if callable(activation):
        return activation
    name = default if activation is None else str(activation).lower()
    if name in ("raw", "identity", "none"):
        return lambda x: x
    if name == "sigmoid":
        return sigmoid
    raise ValueError(f"unknown activation {activation!r}; use 'raw', 'sigmoid' or a callable")


def activate(logits: np.ndarray, activation: str | Callable | None, default: str,
             apply_softmax: bool = False) -> np.ndarray:
    """``[n, labels]`` logits → scores: the activation, softmax over labels if asked, ``[n]`` for one label."""
    scores = resolve_activation(activation, default)(logits)
    scores = np.asarray(scores)
    if apply_softmax and scores.ndim == 2 and scores.shape[1] > 1:
        exp = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores = exp / exp.sum(axis=1, keepdims=True)
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    return np.asarray(scores, dtype=np.float32)


def rank_order(scores: np.ndarray, top_k: int | None = None) -> np.ndarray:
    """Positions by descending score, ties in input order (``CrossEncoder.rank``'s order), at most ``top_k``."""
    return np.argsort(-np.asarray(scores), kind="stable")[:top_k]
