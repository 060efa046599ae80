"""The parity gate: every exported precision against the PyTorch reference, on the same ids.

Metrics per precision: max |Δ| (absolute, and relative to the reference's score range),
mean |Δ|, Spearman correlation over all pairs, and mean top-10 agreement per query group.
Default tolerances were set on the distilled 17m fixture (scores spread like a trained
reranker's), not on random weights, which squeeze scores and exaggerate every error.
"""

from __future__ import annotations

from rerankrt.engine.agreement import Tolerance, average_ranks, compare, spearman, top_k_agreement
from rerankrt.engine.errors import ParityError

__all__ = ["DEFAULT_TOLERANCES", "Tolerance", "average_ranks", "compare", "enforce", "format_report", "spearman",
           "top_k_agreement"]


DEFAULT_TOLERANCES = {
    "fp32": Tolerance(max_rel_delta=1e-4, min_spearman=0.9999, min_top10=1.0),
    "fp16": Tolerance(max_rel_delta=1e-2, min_spearman=0.999, min_top10=0.95),
    "bf16": Tolerance(max_rel_delta=2e-2, min_spearman=0.995, min_top10=0.95),
    "int8": Tolerance(max_rel_delta=5e-2, min_spearman=0.995, min_top10=0.95),
}


def format_report(reports: dict[str, dict]) -> str:
    lines = [f"{'precision':<9} {'max|Δ|':>10} {'|Δ|/range':>10} {'spearman':>10} {'top10':>6}  result"]
    for precision, r in reports.items():
        verdict = "ok" if r["passed"] else "FAIL: " + "; ".join(r["failures"])
        lines.append(f"{precision:<9} {r['max_abs_delta']:>10.3g} {r['max_rel_delta']:>10.2e} "
                     f"{r['spearman']:>10.6f} {r['top10_agreement']:>6.3f}  {verdict}")
        for name, sub in r.get("by_backend", {}).items():  # every backend's own line when there are several
            lines.append(f"  {name:<15} {sub['max_rel_delta']:>10.2e} {sub['spearman']:>10.6f} "
                         f"{sub['top10_agreement']:>6.3f}  {'ok' if sub['passed'] else 'failed'}")
    return "\n".join(lines)


def enforce(reports: dict[str, dict], allow_failure: bool = False) -> None:
    failed = [p for p, r in reports.items() if not r["passed"]]
    if failed and not allow_failure:
        raise ParityError(
            f"parity gate failed for {', '.join(failed)} (pass --allow-parity-failure to keep them anyway, "
            f"or --tolerance to set thresholds):\n{format_report(reports)}", reports)
