"""``rerankrt bench``: throughput and 1×100 ``rank`` latency of one loaded Reranker on this machine.

Why in the package and not in benchmarks/: it checks a deployment with the installed command, no
checkout needed. It measures only through the public ``predict``/``rank`` API, so it times what a
user gets; comparisons with other systems, and committed results, belong to benchmarks/.
"""

from __future__ import annotations

import time

import numpy as np

from .hardware import cpu_info
from .reranker import Reranker

_WORDS = ("river bridge history protein treatment patient music island railway algorithm lake novel "
          "city century study result").split()


def synthetic_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` pairs of an 8-word query and a 20–300-word document (seeded: the same pairs every run)."""
    rng = np.random.default_rng(seed)
    return [(" ".join(rng.choice(_WORDS, 8)), " ".join(rng.choice(_WORDS, int(rng.integers(20, 300)))))
            for _ in range(n)]


def measure(reranker: Reranker, pairs: list[tuple[str, str]], passes: int = 3) -> dict:
    """pairs/s (median of ``passes`` ``predict`` calls after a warm-up) and ``rank`` p50/p95 over
    ``5 × passes`` calls of the first pair's query against the first 100 documents."""
    reranker.predict(pairs[:32])
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        reranker.predict(pairs)
        times.append(time.perf_counter() - started)
    query, docs = pairs[0][0], [d for _, d in pairs[:100]]
    latencies = []
    for _ in range(passes * 5):
        started = time.perf_counter()
        reranker.rank(query, docs)
        latencies.append(time.perf_counter() - started)
    return {"pairs": len(pairs), "pairs_per_s": len(pairs) / float(np.median(times)),
            "rank_1x100_ms_p50": 1000 * float(np.percentile(latencies, 50)),
            "rank_1x100_ms_p95": 1000 * float(np.percentile(latencies, 95)),
            "precision": reranker.precision, "backend": reranker.backend.name,
            "inference_precision": getattr(reranker.backend, "inference_precision", None),
            "cpu": cpu_info().summary()}
