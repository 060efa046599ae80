"""Length-sorted, token-budget batches; padding per batch; scores scattered back to input order.

Why a token budget instead of a pair count: the cost of a batch is its *padded* size, rows ×
longest row, and attention adds a term quadratic in the length. Sorting by length keeps
padding near zero; capping ``rows × length`` keeps every batch in the cache-friendly range
(small batches win on CPU), and capping ``rows × length²`` keeps attention memory bounded for
long documents (one 8k-token pair is a batch of its own). This is text-embeddings-inference's
batching, done per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchPolicy:
    """Limits of one batch: padded tokens, rows, and attention score elements per head."""

    token_budget: int = 2048
    max_batch_size: int = 256
    attention_budget: int = 1 << 23  # rows × length² (≈ 32 MB of fp32 scores per head)
    # Round each batch's width up to a multiple of this. 1 = no rounding. Backends that compile
    # and cache kernels per input shape (OpenVINO int8) run faster and in far less memory with
    # few distinct widths; see ``OpenVinoBackend.pad_multiple``.
    pad_to_multiple_of: int = 1
    # Pad each batch's width up to the smallest of these that holds it (past the largest: to
    # ``pad_to_multiple_of``). Empty = no buckets. A GPU runs a fixed set of shapes: TensorRT builds
    # one optimization profile per bucket and each CUDA graph replays one shape, so widths must land
    # on a few values known when the session is made (``OrtBackend.width_buckets``).
    width_buckets: tuple[int, ...] = ()

    def rows_for_length(self, length: int) -> int:
        """Rows of a batch whose longest row has ``length`` tokens, planned at the width it is padded to
        in a bucket (a bucket is the shape that runs, so it is what the budgets must hold)."""
        length = bucket_width(max(int(length), 1), self.width_buckets)
        return max(1, min(self.max_batch_size, self.token_budget // length,
                          self.attention_budget // (length * length)))

    def padded_width(self, width: int) -> int:
        """The width a batch whose longest row has ``width`` tokens is padded to."""
        return padded_width(width, self.pad_to_multiple_of, self.width_buckets)


def bucket_width(width: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds ``width``; ``width`` itself past the largest bucket (or without any)."""
    fitting = [b for b in buckets if b >= width]
    return min(fitting) if fitting else width


def padded_width(width: int, multiple: int = 1, buckets: tuple[int, ...] = ()) -> int:
    """``width`` up to its bucket, else up to a multiple of ``multiple`` (padding is masked: scores do not change)."""
    if any(b >= width for b in buckets):
        return bucket_width(width, buckets)
    return -(-width // multiple) * multiple if multiple > 1 else width


@dataclass
class Batch:
    """One padded batch and the input positions of its rows."""

    indices: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray


def plan_batches(lengths: np.ndarray, policy: BatchPolicy) -> list[np.ndarray]:
    """Index arrays of batches, longest rows first, each within the policy's limits."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        rows = policy.rows_for_length(lengths[order[start]])  # the first row is the batch's longest
        batches.append(order[start:start + rows])
        start += rows
    return batches


def pad_batch(token_ids: list[list[int]], indices: np.ndarray, pad_id: int, multiple: int = 1,
              buckets: tuple[int, ...] = ()) -> Batch:
    """Right-pad the selected rows to the longest of them (never to a global maximum).

    ``buckets`` round that width up to the smallest bucket that holds it, ``multiple`` rounds it up
    past the largest bucket (or without buckets); padding is masked, so scores do not change.
    """
    rows = [token_ids[i] for i in indices]
    width = padded_width(max(len(r) for r in rows), multiple, buckets)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = row
        mask[r, :len(row)] = 1
    return Batch(np.asarray(indices), ids, mask)
