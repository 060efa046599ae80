"""How close two score vectors are: the metrics of the export's parity gate and the load-time int8 check.

Why on the engine side: the runtime re-checks an int8 graph on a CPU class its gate never ran
on (``int8_check.py``), torch-free, with the same metrics and tolerances the export's gate used
and recorded in the manifest. The export's ``parity`` module imports these, never the reverse.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    max_rel_delta: float  # max |Δ| / (max − min of the reference scores)
    min_spearman: float
    min_top10: float


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (scipy's ``rankdata(method="average")``, 1-based)."""
    sorter = np.argsort(x, kind="stable")
    inverse = np.empty_like(sorter)
    inverse[sorter] = np.arange(len(x))
    xs = x[sorter]
    first = np.r_[True, xs[1:] != xs[:-1]]
    dense = first.cumsum()[inverse]
    bounds = np.r_[np.flatnonzero(first), len(first)]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks."""
    if len(a) < 2:
        return 1.0
    ra = average_ranks(np.asarray(a, np.float64))
    rb = average_ranks(np.asarray(b, np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return 1.0 if np.array_equal(ra, rb) else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def top_k_agreement(reference: np.ndarray, candidate: np.ndarray, groups: list[int], k: int = 10) -> float:
    """Mean over query groups of |top-k(reference) ∩ top-k(candidate)| / k."""
    groups_arr = np.asarray(groups)
    overlaps = []
    for g in np.unique(groups_arr):
        idx = np.flatnonzero(groups_arr == g)
        kk = min(k, len(idx))
        top_ref = set(idx[np.argsort(-reference[idx], kind="stable")[:kk]])
        top_can = set(idx[np.argsort(-candidate[idx], kind="stable")[:kk]])
        overlaps.append(len(top_ref & top_can) / kk)
    return float(np.mean(overlaps)) if overlaps else 1.0


def compare(reference: np.ndarray, candidate: np.ndarray, groups: list[int], tolerance: Tolerance) -> dict:
    reference = np.asarray(reference, np.float64).ravel()
    candidate = np.asarray(candidate, np.float64).ravel()
    delta = np.abs(reference - candidate)
    score_range = float(reference.max() - reference.min()) if len(reference) else 0.0
    rel = float(delta.max() / score_range) if score_range > 0 else float(delta.max() if len(delta) else 0.0)
    report: dict[str, Any] = {
        "max_abs_delta": float(delta.max()) if len(delta) else 0.0,
        "mean_abs_delta": float(delta.mean()) if len(delta) else 0.0,
        "max_rel_delta": rel,
        "reference_range": score_range,
        "spearman": spearman(reference, candidate),
        "top10_agreement": top_k_agreement(reference, candidate, groups),
        "finite": bool(np.isfinite(candidate).all()),
        "tolerance": asdict(tolerance),
    }
    failures = []
    if not report["finite"]:
        failures.append("non-finite scores")
    if rel > tolerance.max_rel_delta:
        failures.append(f"max |Δ|/range {rel:.2e} > {tolerance.max_rel_delta:.0e}")
    if report["spearman"] < tolerance.min_spearman:
        failures.append(f"Spearman {report['spearman']:.6f} < {tolerance.min_spearman}")
    if report["top10_agreement"] < tolerance.min_top10:
        failures.append(f"top-10 agreement {report['top10_agreement']:.3f} < {tolerance.min_top10}")
    report["passed"] = not failures
    report["failures"] = failures
    return report
