"""``Reranker``: the one data path, text → token ids → length-sorted batches → backend → scores.

The public names and semantics follow sentence-transformers' ``CrossEncoder`` (``predict``,
``rank``, ``top_k``, ``return_documents``, ``corpus_id``) so switching is one import. The HTTP
server, file scoring and the Ray integration are front-ends on this class.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .artifact import Artifact, is_artifact_dir, load_artifact
from .backends import backend_class
from .batching import BatchPolicy, pad_batch, plan_batches
from .errors import ArtifactError, InvalidInputError, InvalidInputTypeError
from .hub import resolve_model_dir
from .selection import choose_backend, choose_inference_precision, choose_precision
from .tokenize import Pair, PairTokenizer, is_single_pair, normalize_pairs

TOKENIZE_CHUNK = 4096  # pairs tokenized ahead while the previous chunk is scored


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


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


class Reranker:
    """Scores (query, document) pairs with an exported artifact. Thread-safe."""

    def __init__(self, artifact: Artifact, backend, tokenizer: PairTokenizer, policy: BatchPolicy) -> None:
        self.artifact = artifact
        self.backend = backend
        self.tokenizer = tokenizer
        self.policy = policy
        self.activation = artifact.activation
        self.num_labels = artifact.num_labels

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_name_or_path: str | os.PathLike, precision: str = "auto",
                        providers: list[str] | None = None, threads: int | None = None,
                        max_length: int | None = None, backend: str = "auto", device: str = "cpu",
                        revision: str | None = None, token_budget: int | None = None,
                        max_batch_size: int = 256, verify: bool = True,
                        backend_options: dict | None = None) -> Reranker:
        """Load an artifact directory (or a hub repo holding one).

        ``precision``: ``auto`` | ``fp32`` | ``bf16`` | ``fp16`` | ``int8``; ``backend``: ``auto`` |
        ``onnxruntime`` | ``openvino`` (the rule for ``auto`` is in ``selection.py``). ``max_length`` may only shorten
        the artifact's own. ``backend_options`` go to the backend (e.g. OpenVINO's
        ``performance_hint``). ``verify`` checks the graph's sha256 (cheap; catches corrupted files).
        """
        directory, _ = resolve_model_dir(model_name_or_path, revision)
        if not is_artifact_dir(directory):
            raise ArtifactError(
                f"{directory} is not a rerankrt artifact (no manifest.json). If it is a CrossEncoder, export it "
                f"first: rerankrt export {model_name_or_path} -o ARTIFACT_DIR", str(directory))
        artifact = load_artifact(directory)
        chosen = choose_precision(artifact, precision, device)
        graph = artifact.graph(chosen, verify=verify)
        spec = artifact.tokenizer_spec
        if max_length is not None and not 0 < max_length <= artifact.max_length:
            raise ValueError(f"max_length must be in 1..{artifact.max_length} for this model, got {max_length}")
        tokenizer = PairTokenizer(artifact.tokenizer_path, max_length or artifact.max_length, spec["pad_id"],
                                  spec["cls_id"], spec["sep_id"], artifact.manifest["architecture"].get("vocab_size"))
        backend_name = choose_backend(chosen, backend, device)
        options = dict(backend_options or {})
        inference_precision = choose_inference_precision(artifact, chosen, backend_name)
        if inference_precision is not None:
            options.setdefault("inference_precision", inference_precision)
        runner = backend_class(backend_name)(graph.path, precision=chosen, device=device, providers=providers,
                                             threads=threads, **options)
        default_budget = 2048 if device == "cpu" else 16384
        policy = BatchPolicy(token_budget or default_budget, max_batch_size,
                             pad_to_multiple_of=int(getattr(runner, "pad_multiple", 1)))
        return cls(artifact, runner, tokenizer, policy)

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def precision(self) -> str:
        return self.backend.precision

    # -- the data path -----------------------------------------------------------------------
    def _score_tokenized(self, token_ids: list[list[int]], policy: BatchPolicy) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(input positions, logits)`` batch by batch, longest first."""
        lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
        plan = plan_batches(lengths, policy)
        run_many = getattr(self.backend, "run_many", None)
        if run_many is not None and len(plan) > 1:  # backends that overlap batches (OpenVINO streams)
            batches = [pad_batch(token_ids, indices, self.tokenizer.pad_id, policy.pad_to_multiple_of)
                       for indices in plan]
            outputs = run_many([(b.input_ids, b.attention_mask) for b in batches])
            yield from ((b.indices, out) for b, out in zip(batches, outputs))
            return
        for indices in plan:
            batch = pad_batch(token_ids, indices, self.tokenizer.pad_id, policy.pad_to_multiple_of)
            yield batch.indices, self.backend.run(batch.input_ids, batch.attention_mask)

    def logits_for_token_ids(self, token_ids: list[list[int]]) -> np.ndarray:
        """Raw logits ``float32 [n, num_labels]`` for already tokenized pairs, in input order.

        For front-ends that tokenize themselves to count tokens and truncations (file scoring).
        """
        logits = np.empty((len(token_ids), self.num_labels), dtype=np.float32)
        for positions, out in self._score_tokenized(token_ids, self.policy):
            logits[positions] = out
        return logits

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
        try:
            for (start, _chunk), token_ids in zip(chunks, tokenized):
                for positions, out in self._score_tokenized(token_ids, policy):
                    logits[start + positions] = out
                    if progress is not None:
                        progress.update(len(positions))
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
                convert_to_numpy: bool = True) -> np.ndarray | float | list:
        """Scores for ``pairs`` in input order, like ``CrossEncoder.predict``.

        ``batch_size`` caps the rows per batch (batches are otherwise cut by the token budget);
        ``activation_fn`` defaults to the model's own (raw logits for Ettin).
        """
        single = is_single_pair(pairs)
        items = normalize_pairs([pairs] if single else pairs)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        act = resolve_activation(activation_fn, self.activation)
        policy = self.policy if batch_size is None else dataclasses.replace(
            self.policy, max_batch_size=min(batch_size, self.policy.max_batch_size))
        progress = None
        if show_progress_bar:
            from tqdm.auto import tqdm
            progress = tqdm(total=len(items), desc="Scoring", unit="pair")
        try:
            scores = act(self._logits(items, policy, progress)) if items else np.zeros((0, self.num_labels), np.float32)
        finally:
            if progress is not None:
                progress.close()
        if apply_softmax and scores.shape[1] > 1:
            exp = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores = exp / exp.sum(axis=1, keepdims=True)
        if self.num_labels == 1:
            scores = scores[:, 0]
        scores = np.asarray(scores, dtype=np.float32)
        if single:
            return scores[0] if convert_to_numpy else scores[0].tolist()
        return scores if convert_to_numpy else scores.tolist()

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None, return_documents: bool = False,
             batch_size: int | None = None, show_progress_bar: bool = False,
             activation_fn: str | Callable | None = None) -> list[dict]:
        """``[{"corpus_id", "score"[, "text"]}]`` sorted by score, like ``CrossEncoder.rank``."""
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
        scores = self.predict([(query, d) for d in docs], batch_size=batch_size,
                              show_progress_bar=show_progress_bar, activation_fn=activation_fn)
        order = np.argsort(-scores, kind="stable")[:top_k]
        results = []
        for i in order:
            item = {"corpus_id": int(i), "score": float(scores[i])}
            if return_documents:
                item["text"] = docs[i]
            results.append(item)
        return results

    def __repr__(self) -> str:
        return (f"Reranker({Path(self.artifact.directory).name!r}, backend={self.backend.name}, "
                f"precision={self.precision}, max_length={self.max_length})")
