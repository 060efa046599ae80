"""The parity metrics (engine/agreement.py) against independent implementations (scipy, plain sets)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr

from rerankrt.engine.agreement import Tolerance, average_ranks, compare, spearman, top_k_agreement


@pytest.mark.parametrize("seed", range(5))
def test_spearman_and_ranks_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 12, size=60).astype(float)  # many ties
    b = a + rng.normal(0, 3, size=60)
    np.testing.assert_allclose(average_ranks(a), rankdata(a, method="average"))
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)


def test_top_k_agreement_by_hand():
    ref = np.array([9, 8, 7, 1, 2, 3], float)  # two groups of three
    cand = np.array([9, 7, 8, 3, 2, 1], float)
    groups = [0, 0, 0, 1, 1, 1]
    # group 0: top-2 {0, 1} vs {0, 2}; group 1: top-2 {5, 4} vs {3, 4} → one of two in each
    assert top_k_agreement(ref, cand, groups, k=2) == pytest.approx(0.5)
    assert top_k_agreement(ref, cand, groups, k=3) == 1.0
    assert top_k_agreement(ref, ref, groups, k=2) == 1.0


def test_compare_names_every_failure():
    ref = np.linspace(0, 1, 20)
    report = compare(ref, ref[::-1], list(range(20)), Tolerance(0.1, 0.9, 1.0))
    assert not report["passed"]
    assert any("Spearman" in f for f in report["failures"]) and any("|Δ|" in f for f in report["failures"])
    assert compare(ref, ref, [0] * 20, Tolerance(0.0, 1.0, 1.0))["passed"]
