"""The scoring core (engine/scoring.py): plan → pad → run in input order, filters, errors, post-processing."""

from __future__ import annotations

import numpy as np
import pytest

from rerankrt.engine.backends import BackendBase
from rerankrt.engine.batching import BatchPolicy
from rerankrt.engine.scoring import activate, iter_batch_logits, rank_order, score_ids

PAD = 0


class SumBackend(BackendBase):
    """Logit of a row = sum of its unpadded ids (an independent, order-revealing stand-in for a model)."""

    name = "sum"

    def __init__(self, overlaps: bool = False, fail_on_width: int | None = None) -> None:
        self.overlaps_batches = overlaps
        self.fail_on_width = fail_on_width
        self.calls: list[tuple[int, int]] = []  # (rows, width) per run
        self.run_many_calls = 0

    def run(self, input_ids, attention_mask):
        self.calls.append(input_ids.shape)
        if input_ids.shape[1] == self.fail_on_width:
            raise RuntimeError("boom")
        assert ((input_ids == PAD) | (attention_mask == 1)).all()  # padding is masked
        return (input_ids * attention_mask).sum(axis=1, keepdims=True).astype(np.float32)

    def run_many(self, batches):
        self.run_many_calls += 1
        return super().run_many(batches)


def _rows(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [list(rng.integers(1, 100, size=int(rng.integers(1, 40)))) for _ in range(n)]


@pytest.mark.parametrize("overlaps", [False, True])
def test_scores_come_back_in_input_order_whatever_the_batching(overlaps):
    rows = _rows(57)
    backend = SumBackend(overlaps)
    policy = BatchPolicy(token_budget=64, max_batch_size=8)
    logits = score_ids(backend, rows, policy, PAD)
    assert logits.shape == (57, 1) and logits.dtype == np.float32
    np.testing.assert_array_equal(logits[:, 0], [sum(r) for r in rows])
    assert len(backend.calls) > 1
    assert all(r * w <= 64 or r == 1 for r, w in backend.calls)  # the token budget holds per batch
    assert backend.run_many_calls == (1 if overlaps else 0)  # only a backend that overlaps gets them all at once


def test_widths_are_rounded_to_the_backends_multiple():
    backend = SumBackend()
    score_ids(backend, _rows(20), BatchPolicy(token_budget=128, pad_to_multiple_of=16), PAD)
    assert all(width % 16 == 0 for _, width in backend.calls)


def test_keep_drops_rows_batch_by_batch_and_errors_stay_in_their_batch():
    rows = [[1] * 30, [2] * 30, [3] * 5, [4] * 5]
    policy = BatchPolicy(token_budget=60, max_batch_size=2)
    dropped = {1}
    results = list(iter_batch_logits(SumBackend(), rows, policy, PAD,
                                     keep=lambda idx: np.array([i for i in idx if i not in dropped])))
    seen = sorted(int(i) for r in results for i in r.indices)
    assert seen == [0, 2, 3]
    failing = SumBackend(fail_on_width=30)
    results = list(iter_batch_logits(failing, rows, policy, PAD, catch_errors=True))
    assert [r.error is not None for r in results] == [True, False]
    assert sorted(results[1].indices.tolist()) == [2, 3] and results[1].logits[:, 0].tolist() in ([15, 20], [20, 15])
    with pytest.raises(RuntimeError, match="boom"):
        list(iter_batch_logits(SumBackend(fail_on_width=30), rows, policy, PAD))


def test_activation_softmax_squeeze_and_rank_against_plain_numpy():
    logits = np.array([[0.5], [-2.0], [3.0], [0.5]], np.float32)
    np.testing.assert_allclose(activate(logits, "sigmoid", "identity"), 1 / (1 + np.exp(-logits[:, 0])), rtol=1e-6)
    np.testing.assert_array_equal(activate(logits, None, "identity"), logits[:, 0])
    two = np.array([[1.0, 2.0], [0.0, 0.0]], np.float32)
    soft = activate(two, "raw", "identity", apply_softmax=True)
    np.testing.assert_allclose(soft, np.exp(two) / np.exp(two).sum(1, keepdims=True), rtol=1e-6)
    # descending, ties in input order (CrossEncoder.rank), cut at top_k
    assert rank_order(logits[:, 0]).tolist() == [2, 0, 3, 1]
    assert rank_order(logits[:, 0], 2).tolist() == [2, 0]
    with pytest.raises(ValueError, match="unknown activation"):
        activate(logits, "softplus", "identity")
