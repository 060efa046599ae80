"""Who scores a chunk: this process (one Reranker, N intra-op threads) or N worker processes.

Both sides return the same thing per chunk: scores in input order plus token and truncation
counts, tokenized once with the artifact's tokenizer. Chunks are pipelined: while the writer
handles chunk k, chunks k+1 … k+depth are being scored, so reading, parsing and writing overlap
inference and no stage waits for another.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ..chunking import LongDocuments, score_chunked
from ..lifetime import exit_with_parent
from ..reranker import Reranker
from ..scoring import Encoded, activate

T = TypeVar("T")  # the tag a caller attaches to each chunk


@dataclass
class ChunkScores:
    scores: np.ndarray  # [n_pairs] (single-label) or [n_pairs, labels]
    tokens: int
    truncated: int


def infer_tokens(reranker: Reranker, encoded: Encoded, activation: str | None) -> ChunkScores:
    """The scoring core's second and third steps on one chunk: ids → logits → scores."""
    logits = reranker.logits_for_token_ids(encoded.token_ids)
    scores = activate(logits, activation, reranker.activation)
    return ChunkScores(scores, encoded.tokens, int(encoded.truncated.sum()))


def infer_windows(reranker: Reranker, pairs: list[tuple[str, str]], activation: str | None,
                  long_documents: LongDocuments) -> ChunkScores:
    """Chunked documents (``chunking.py``): windows → the same batches → aggregated per pair. ``tokens``
    counts every window's tokens (what was computed); ``truncated`` the pairs that lost text
    (windows past ``max_chunks_per_doc``, or a query cut to leave room for the document)."""
    chunked = score_chunked(reranker.backend, reranker.tokenizer, pairs, reranker.policy, long_documents,
                            reranker.num_labels)
    return ChunkScores(activate(chunked.logits, activation, reranker.activation),
                       sum(len(t) for t in chunked.windows.token_ids), int(chunked.windows.dropped.sum()))


# -- worker processes (module-level: picklable) --------------------------------------------------
_WORKER: dict = {}


def _init_worker(artifact: str, options: dict, activation: str | None, parent: int | None = None,
                 long_documents: LongDocuments | None = None) -> None:
    # the watchdog first: loading can take seconds, and a parent may die during it
    exit_with_parent(os.getppid() if parent is None else parent)
    _WORKER["reranker"] = Reranker.from_pretrained(artifact, **options)
    _WORKER["activation"] = activation
    _WORKER["long_documents"] = long_documents


def _score_in_worker(pairs: list[tuple[str, str]]) -> ChunkScores:
    reranker, how = _WORKER["reranker"], _WORKER.get("long_documents")
    if how is not None and how.chunked:
        return infer_windows(reranker, pairs, _WORKER["activation"], how)
    return infer_tokens(reranker, reranker.encode(pairs), _WORKER["activation"])


class _Both:
    """Shut two executors down as one."""

    def __init__(self, *executors: Executor) -> None:
        self.executors = executors

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        for executor in self.executors:
            executor.shutdown(wait=wait, cancel_futures=cancel_futures)


class ChunkScorer:
    """``map(chunks)`` → ``ChunkScores`` in chunk order, with at most ``depth`` chunks in flight."""

    def __init__(self, submit: Callable[[list], Future], executor: Executor | _Both, depth: int,
                 describe: str) -> None:
        self._submit, self._executor, self.depth, self.describe = submit, executor, depth, describe

    @classmethod
    def in_process(cls, reranker: Reranker, activation: str | None = None,
                   long_documents: LongDocuments | None = None) -> ChunkScorer:
        """Two stages, one thread each: chunk k+1 is tokenized while chunk k runs on the backend.

        Tokenizing is ~7% of the time of scoring (17m, max_length 128); done in line it showed as
        8.7% overhead over ``predict``, which overlaps it the same way.
        """
        tokenizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerankrt-tokenize")
        inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerankrt-score")

        def submit(pairs: list[tuple[str, str]]) -> Future:
            if long_documents is not None and long_documents.chunked:
                return inference.submit(infer_windows, reranker, pairs, activation, long_documents)
            tokenized = tokenizer.submit(reranker.encode, pairs)
            return inference.submit(lambda: infer_tokens(reranker, tokenized.result(), activation))

        return cls(submit, _Both(tokenizer, inference), depth=2,
                   describe=f"1 process × {reranker.backend.name} {reranker.precision}")

    @classmethod
    def processes(cls, artifact: str, workers: int, options: dict, activation: str | None = None,
                  long_documents: LongDocuments | None = None) -> ChunkScorer:
        import multiprocessing

        executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker,
                                       # spawn: the workers' parent is this process (not a fork server)
                                       initargs=(str(artifact), options, activation, os.getpid(),
                                                 long_documents))
        return cls(lambda pairs: executor.submit(_score_in_worker, pairs), executor, depth=workers + 1,
                   describe=f"{workers} processes × {options.get('threads', 1)} thread(s)")

    def map(self, chunks: Iterable[tuple[T, list[tuple[str, str]]]]) -> Iterator[tuple[T, ChunkScores]]:
        """``(tag, pairs)`` in → ``(tag, scores)`` out, same order."""
        pending: collections.deque[tuple[T, Future]] = collections.deque()
        for tag, pairs in chunks:
            pending.append((tag, self._submit(pairs)))
            if len(pending) > self.depth:
                done_tag, future = pending.popleft()
                yield done_tag, future.result()
        while pending:
            done_tag, future = pending.popleft()
            yield done_tag, future.result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
