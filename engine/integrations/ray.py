"""Score a Ray Dataset with an actor pool of Rerankers (extra ``[ray]``).

Why Ray Data and not a home-made cluster: ``map_batches`` over an actor pool already gives
scheduling, backpressure, fault tolerance, and the same code on a laptop and on a multi-node
cluster. Each actor loads one :class:`~rerankrt.engine.Reranker` once (CPU threads or a GPU per
actor) and adds a score column to every batch it is given, so every output row is its input row
plus its score: row identity holds whatever order Ray finishes blocks in.

    import ray
    from rerankrt.engine.integrations.ray import rerank_dataset

    ds = ray.data.read_parquet("s3://bucket/pairs/")           # columns: query, document, …
    scored = rerank_dataset(ds, "/models/ettin-17m", concurrency=8, num_cpus=2)
    scored.write_parquet("s3://bucket/scored/")

On a cluster the artifact directory must be readable on every node (shared storage, or a hub id
each node downloads). Leave Ray some CPUs beyond the actors' (``ray.init(num_cpus=…)`` or the
cluster's size): Ray Data's read and write tasks need a free CPU too, and a pool that takes every
CPU waits for one forever.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rerankrt.engine import Reranker


class RerankActor:
    """One Reranker per actor; ``__call__`` scores a numpy batch and returns it with the score column."""

    def __init__(self, artifact: str, query_column: str, document_column: str, output_column: str,
                 reranker_options: dict, activation: str | None, long_documents: Any = None) -> None:
        self.reranker = Reranker.from_pretrained(artifact, **reranker_options)
        self.long_documents = long_documents
        self.query_column, self.document_column = query_column, document_column
        self.output_column, self.activation = output_column, activation

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pairs = list(zip(batch[self.query_column].tolist(), batch[self.document_column].tolist()))
        batch[self.output_column] = self.reranker.predict(pairs, activation_fn=self.activation,
                                                          long_documents=self.long_documents)
        return batch


def rerank_dataset(dataset: Any, artifact: str, *, query_column: str = "query", document_column: str = "document",
                   output_column: str = "score", concurrency: int | tuple[int, int] = 1, num_cpus: float = 1,
                   num_gpus: float = 0, threads: int | None = None, batch_size: int = 1024, precision: str = "auto",
                   backend: str = "auto", max_length: int | None = None, activation: str | None = None,
                   long_documents: Any = None) -> Any:
    """``dataset`` with an ``output_column`` of scores (lazy, like every Ray Data transform).

    ``concurrency``: actors (or ``(min, max)`` for an autoscaling pool); ``num_cpus``/``num_gpus``:
    resources per actor (a GPU actor runs the artifact with ``device="cuda"``); ``threads``: intra-op
    threads per actor (default ``num_cpus``); ``batch_size``: rows per call, sorted and cut into
    token-budget batches inside the actor as in ``predict``; ``long_documents``: as in ``predict``
    (``"chunk"``, a dict or ``LongDocuments``; checked here, before any actor starts).
    """
    from rerankrt.engine.chunking import as_long_documents

    long_documents = as_long_documents(long_documents)
    options = {"precision": precision, "backend": backend, "max_length": max_length,
               "threads": threads or max(1, int(num_cpus)), "device": "cuda" if num_gpus else "cpu"}
    return dataset.map_batches(
        RerankActor, fn_constructor_kwargs={"artifact": str(artifact), "query_column": query_column,
                                            "document_column": document_column, "output_column": output_column,
                                            "reranker_options": options, "activation": activation,
                                            "long_documents": long_documents},
        concurrency=concurrency, num_cpus=num_cpus, num_gpus=num_gpus, batch_size=batch_size, batch_format="numpy")
