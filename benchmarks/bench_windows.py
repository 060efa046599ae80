"""What the server's scheduling window costs in throughput: the same queued requests drained with windows
of 4 × (the default, for fairness) up to 32 × the batch token budget.

    python benchmarks/bench_windows.py --out benchmarks/results

Why: a window is the granularity at which a newly arrived request can overtake queued work (small
windows keep small requests fast beside big ones), but rows of different requests can share a batch
only within a window, and each window ends in a partly filled batch. This measures that price
without HTTP: the distilled 17m (onnxruntime fp32, ``common.THREADS`` threads), 16 requests of 5–150
negconstraint documents queued at once, drained by ``BatchScheduler`` per window size, interleaved
over ``--passes`` rounds (medians). Reports tokens/s, batches, rows per batch and padding efficiency
(real / padded tokens).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

from common import DISTILLED_DIR, NEGCONSTRAINT_DIR, REPO_ROOT, THREADS, prepare_model, run_environment, write_report

WINDOWS = (4, 8, 16, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--work", default=REPO_ROOT / "benchmarks" / "work")
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    from pathlib import Path

    from rerankrt.engine import Reranker
    from rerankrt.engine.server.scheduler import BatchScheduler, SchedulerStats

    if not DISTILLED_DIR.is_dir():
        sys.exit(f"needs {DISTILLED_DIR}")
    model = prepare_model("17m-distilled", Path(args.work).resolve(), None, precisions=("fp32",))
    reranker = Reranker.from_pretrained(model.artifact_dir, precision="fp32", backend="onnxruntime",
                                        threads=THREADS, max_length=512)
    docs = [json.loads(line)["text"] for line in (NEGCONSTRAINT_DIR / "corpus.jsonl").open()]
    queries = [json.loads(line)["text"] for line in (NEGCONSTRAINT_DIR / "queries.jsonl").open()]
    rng = random.Random(0)
    requests = [reranker.encode([(q, d) for d in rng.sample(docs, rng.randint(5, 150))]).token_ids
                for q in rng.sample(queries, 16)]
    real = sum(len(t) for r in requests for t in r)
    results: dict[int, dict[str, list[float]]] = {w: {"tokens_s": [], "batches": [], "rows": [], "padded": []}
                                                  for w in WINDOWS}
    for _ in range(args.passes):
        for w in WINDOWS:
            seen = {"batches": 0, "rows": 0, "padded": 0}

            def on_batch(rows: int, padded: int, _seconds: float, seen=seen) -> None:
                seen["batches"] += 1
                seen["rows"] += rows
                seen["padded"] += padded

            scheduler = BatchScheduler.for_reranker(reranker, window_tokens=w * reranker.policy.token_budget,
                                                    tokens_per_s=10_000, stats=SchedulerStats(on_batch=on_batch))
            started = time.perf_counter()
            jobs = [scheduler.submit(r) for r in requests]
            for job in jobs:
                job.future.result()
            seconds = time.perf_counter() - started
            scheduler.stop()
            results[w]["tokens_s"].append(real / seconds)
            for key in ("batches", "rows", "padded"):
                results[w][key].append(seen[key])
    rows = []
    for w in WINDOWS:
        r = results[w]
        rows.append({"window_x_budget": w, "window_tokens": w * reranker.policy.token_budget,
                     "tokens_per_s_median": statistics.median(r["tokens_s"]), "tokens_per_s": r["tokens_s"],
                     "batches": statistics.median(r["batches"]),
                     "rows_per_batch": statistics.median(r["rows"]) / statistics.median(r["batches"]),
                     "padding_efficiency": real / statistics.median(r["padded"])})
    base = rows[-1]["tokens_per_s_median"]
    body = [f"16 requests (5–150 documents, {real:,} real tokens) queued at once, drained per window size; "
            f"medians of {args.passes} interleaved passes.", "",
            "| window (× budget) | tokens/s | × 32× window | batches | rows/batch | real / padded tokens |",
            "|---:|---:|---:|---:|---:|---:|"]
    body += [f"| {r['window_x_budget']} | {r['tokens_per_s_median']:,.0f} | {r['tokens_per_s_median'] / base:.2f} | "
             f"{r['batches']:.0f} | {r['rows_per_batch']:.1f} | {r['padding_efficiency']:.3f} |" for r in rows]
    write_report(Path(args.out), "windows", "Scheduling window vs throughput",
                 "python benchmarks/bench_windows.py " + " ".join(sys.argv[1:]),
                 run_environment(auto_artifacts=(model.artifact_dir,)), rows, body)


if __name__ == "__main__":
    main()
