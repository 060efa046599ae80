"""``Reranker``: the one data path, text → token ids → length-sorted batches → backend → scores.

The public names and semantics follow sentence-transformers' ``CrossEncoder`` (``predict``,
``rank``, ``top_k``, ``return_documents``, ``corpus_id``) so switching is one import. The HTTP
server, file scoring and the Ray integration are front-ends on this class.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import Artifact, is_artifact_dir, load_artifact
from .backends import Backend, create_backend
from .batching import BatchPolicy
from .chunking import ChunkedLogits, LongDocuments, as_long_documents, score_chunked
from .errors import ArtifactError, InvalidInputError, InvalidInputTypeError
from .hub import resolve_model_dir
from .int8_check import Int8Check
from .scoring import Encoded, activate, encode, rank_order, resolve_activation, score_ids, sigmoid
from .tokenize import Pair, PairTokenizer, is_single_pair, normalize_pairs
from .tuning import Decision

__all__ = ["Reranker", "resolve_activation", "sigmoid"]  # the last two: re-exported for older imports

TOKENIZE_CHUNK = 4096  # pairs tokenized ahead while the previous chunk is scored
log = logging.getLogger("rerankrt")


class Reranker:
    """Scores (query, document) pairs with an exported artifact. Thread-safe."""

    def __init__(self, artifact: Artifact, backend: Backend, tokenizer: PairTokenizer, policy: BatchPolicy) -> None:
        self.artifact = artifact
        self.backend = backend
        self.tokenizer = tokenizer
        self.policy = policy
        self.activation = artifact.activation
        self.num_labels = artifact.num_labels
        self.int8_check: Int8Check | None = None  # set by from_pretrained when int8 was chosen on a CPU
        self.tuning: Decision | None = None  # set by from_pretrained when auto was measured

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_name_or_path: str | os.PathLike, precision: str = "auto",
                        providers: list[str] | None = None, threads: int | None = None,
                        max_length: int | None = None, backend: str = "auto", device: str = "cpu",
                        revision: str | None = None, token_budget: int | None = None,
                        max_batch_size: int = 256, verify: bool = True,
                        backend_options: dict | None = None, int8_check: bool = True,
                        tune: bool | None = None) -> Reranker:
        """Load an artifact directory (or a hub repo holding one).

        ``precision``: ``auto`` | ``fp32`` | ``bf16`` | ``fp16`` | ``int8``; ``backend``: ``auto`` |
        ``onnxruntime`` | ``openvino``. On a CPU, ``auto`` is *measured*: the first such load of an
        artifact on a machine times its faithful configurations and caches the fastest (``tuning.py``;
        seconds for the 17m); ``tune=False`` or ``RERANKRT_TUNE=0`` uses the fixed rule
        (``selection.py``) instead. ``max_length`` may only shorten
        the artifact's own. ``backend_options`` go to the backend (e.g. OpenVINO's
        ``performance_hint``). ``verify`` checks the graph's sha256 (cheap; catches corrupted files).

        int8 on a CPU class its parity gate never ran on (``int8_check.py``) is re-checked once per
        machine against the fp32 graph; if it fails, ``auto`` falls back to the next faithful
        precision with a one-line warning and an explicit ``int8`` raises. ``int8_check=False``
        skips the check.
        """
        directory, _ = resolve_model_dir(model_name_or_path, revision)
        if not is_artifact_dir(directory):
            raise ArtifactError(
                f"{directory} is not a rerankrt artifact (no manifest.json). If it is a CrossEncoder, export it "
                f"first: rerankrt export {model_name_or_path} -o ARTIFACT_DIR", str(directory))
        artifact = load_artifact(directory)
        if max_length is not None and not 0 < max_length <= artifact.max_length:
            raise ValueError(f"max_length must be in 1..{artifact.max_length} for this model, got {max_length}")
        tokenizer = PairTokenizer.for_artifact(artifact, max_length)

        created = create_backend(artifact, precision, backend, device, providers=providers, threads=threads,
                                 token_budget=token_budget, max_batch_size=max_batch_size,
                                 options=backend_options, verify=verify, int8_check=int8_check, tune=tune)
        reranker = cls(artifact, created.backend, tokenizer, created.policy)
        reranker.int8_check = created.int8_check
        reranker.tuning = created.tuning
        return reranker

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def precision(self) -> str:
        return self.backend.precision

    # -- the data path (the steps are scoring.py's) --------------------------------------------
    def encode(self, pairs: Sequence[Pair], truncation_direction: str = "right") -> Encoded:
        """Token ids of ``pairs`` with truncation flags: the first step, for front-ends that queue ids.
        ``truncation_direction="left"`` keeps the end of a too-long text (TEI's option)."""
        return encode(self.tokenizer, pairs, truncation_direction)

    def logits_for_token_ids(self, token_ids: list[list[int]]) -> np.ndarray:
        """Raw logits ``float32 [n, num_labels]`` for already tokenized pairs, in input order."""
        return score_ids(self.backend, token_ids, self.policy, self.tokenizer.pad_id, self.num_labels)

    def _logits(self, pairs: list[Pair], policy: BatchPolicy, progress=None) -> np.ndarray:
        """Raw logits ``[n, num_labels]`` in input order; tokenization of chunk k+1 overlaps scoring of chunk k."""
        logits = np.empty((len(pairs), self.num_labels), dtype=np.float32)
        chunks = [(s, pairs[s:s + TOKENIZE_CHUNK]) for s in range(0, len(pairs), TOKENIZE_CHUNK)]
        if len(chunks) == 1:
            tokenized: Iterator = iter([self.tokenizer.encode(chunks[0][1])])
            pool = None
        else:
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerankrt-tokenize")
            tokenized = self._prefetch(pool, [c for _, c in chunks])
        on_batch = progress.update if progress is not None else None
        try:
            for (start, _chunk), token_ids in zip(chunks, tokenized):
                logits[start:start + len(token_ids)] = score_ids(self.backend, token_ids, policy,
                                                                 self.tokenizer.pad_id, self.num_labels, on_batch)
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        return logits

    def _prefetch(self, pool: ThreadPoolExecutor, chunks: list[list[Pair]]) -> Iterator[list[list[int]]]:
        pending: Future = pool.submit(self.tokenizer.encode, chunks[0])
        for nxt in chunks[1:]:
            current = pending.result()
            pending = pool.submit(self.tokenizer.encode, nxt)
            yield current
        yield pending.result()

    def predict(self, pairs: Sequence[Pair] | Pair, batch_size: int | None = None, show_progress_bar: bool = False,
                activation_fn: str | Callable | None = None, apply_softmax: bool = False,
                convert_to_numpy: bool = True,
                long_documents: LongDocuments | str | dict | None = None) -> np.ndarray | float | list:
        """Scores for ``pairs`` in input order, like ``CrossEncoder.predict``.

        ``batch_size`` caps the rows per batch (batches are otherwise cut by the token budget);
        ``activation_fn`` defaults to the model's own (raw logits for Ettin). ``long_documents``:
        ``"truncate"`` (default, as sentence-transformers) or ``"chunk"`` / a :class:`LongDocuments`
        (windows of the document beside the query, aggregated; ``chunking.py``).
        """
        scores, _ = self._scores(pairs, batch_size, show_progress_bar, activation_fn, apply_softmax, long_documents)
        single = is_single_pair(pairs)
        if single:
            return scores[0] if convert_to_numpy else scores[0].tolist()
        return scores if convert_to_numpy else scores.tolist()

    def _scores(self, pairs, batch_size, show_progress_bar, activation_fn, apply_softmax, long_documents
                ) -> tuple[np.ndarray, ChunkedLogits | None]:
        """predict's work; also returns the windows when documents were chunked (rank reports the best one)."""
        single = is_single_pair(pairs)
        items = normalize_pairs([pairs] if single else pairs)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        resolve_activation(activation_fn, self.activation)  # a bad name fails before any work
        how = as_long_documents(long_documents)
        policy = self.policy if batch_size is None else dataclasses.replace(
            self.policy, max_batch_size=min(batch_size, self.policy.max_batch_size))
        if how.chunked and items:
            chunked = score_chunked(self.backend, self.tokenizer, items, policy, how, self.num_labels)
            return activate(chunked.logits, activation_fn, self.activation, apply_softmax), chunked
        progress = None
        if show_progress_bar:
            from tqdm.auto import tqdm
            progress = tqdm(total=len(items), desc="Scoring", unit="pair")
        try:
            logits = self._logits(items, policy, progress) if items else np.zeros((0, self.num_labels), np.float32)
        finally:
            if progress is not None:
                progress.close()
        return activate(logits, activation_fn, self.activation, apply_softmax), None

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None, return_documents: bool = False,
             batch_size: int | None = None, show_progress_bar: bool = False,
             activation_fn: str | Callable | None = None,
             long_documents: LongDocuments | str | dict | None = None) -> list[dict]:
        """``[{"corpus_id", "score"[, "text"]}]`` sorted by score, like ``CrossEncoder.rank``.

        With chunked documents each item also has ``"chunk"``: the best window's index, the number
        of windows, and its token and character spans in the document.
        """
        if not isinstance(query, str):
            raise InvalidInputTypeError(f"query has type {type(query).__name__}; expected a string")
        if isinstance(documents, (str, bytes)) or documents is None:
            raise InvalidInputTypeError("documents must be a list of strings")
        if self.num_labels != 1:
            raise InvalidInputError("rank() only works for models with a single output (num_labels=1)")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"top_k must be a non-negative integer or None, got {top_k!r}")
        docs = list(documents)
        for i, doc in enumerate(docs):
            if not isinstance(doc, str):
                raise InvalidInputTypeError(
                    f"document {i} has type {type(doc).__name__}; expected a string", i)
        scores, chunked = self._scores([(query, d) for d in docs], batch_size, show_progress_bar, activation_fn,
                                       False, long_documents)
        spans = chunked.best_spans() if chunked is not None else None
        results = []
        for i in rank_order(scores, top_k):
            item: dict[str, Any] = {"corpus_id": int(i), "score": float(scores[i])}
            if return_documents:
                item["text"] = docs[i]
            if spans is not None:
                item["chunk"] = spans[i]
            results.append(item)
        return results

    def __repr__(self) -> str:
        return (f"Reranker({Path(self.artifact.directory).name!r}, backend={self.backend.name}, "
                f"precision={self.precision}, max_length={self.max_length})")
