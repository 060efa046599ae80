"""Does measuring ``auto`` cost throughput afterwards? The same configuration, loaded three ways.

Each round starts three processes, one after another, on the same pairs and artifact:

* ``fresh``: ``precision="auto"`` with an empty tuning cache (the process measures every candidate, then
  loads the winner: what the first start on a machine does);
* ``cached``: ``auto`` again, reading the decision the first process cached;
* ``explicit``: the decided configuration asked for by name (``tune=False``).

Each process reports pairs/s (median of 3 ``predict`` passes after a warm-up). Rounds interleave the
three kinds, so drift of the machine hits them alike; the summary gives each kind's median and range.

    python benchmarks/bench_auto_start.py --out benchmarks/results [--rounds 3] [--artifact DIR]

``python benchmarks/bench_auto_start.py worker KIND ARTIFACT PAIRS CACHE`` is one process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO_ROOT, THREADS, load_workloads, pass_seconds, read_pairs, run_environment, say, write_report

DEFAULT_ARTIFACT = REPO_ROOT / "benchmarks" / "work" / "artifacts" / "17m-distilled"
KINDS = ("fresh", "cached", "explicit")


def worker(kind: str, artifact: str, pairs_file: str, cache: str) -> None:
    os.environ["RERANKRT_CACHE"] = cache
    from rerankrt.engine import Reranker, tuning
    from rerankrt.engine.artifact import load_artifact

    pairs, _ = read_pairs(Path(pairs_file))
    if kind == "explicit":
        decided = tuning.cached_decision(load_artifact(artifact), THREADS)
        if decided is None:
            raise SystemExit("no cached decision: run the fresh kind first")
        config = decided.config
        options = {"inference_precision": config.inference_precision} if config.inference_precision else None
        loaded = Reranker.from_pretrained(artifact, precision=config.precision, backend=config.backend,
                                          threads=THREADS, max_length=512, backend_options=options, tune=False)
    else:
        loaded = Reranker.from_pretrained(artifact, threads=THREADS, max_length=512, tune=True)
    loaded.predict(pairs[:32])
    times = pass_seconds(lambda: loaded.predict(pairs))
    print(json.dumps({"kind": kind, "pairs_per_s": len(pairs) / statistics.median(times),
                      "precision": loaded.precision, "backend": loaded.backend.name,
                      "inference_precision": loaded.backend.inference_precision,
                      "tuned_here": bool(loaded.tuning is not None and not loaded.tuning.cached)}))


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        worker(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "benchmarks" / "work")
    args = parser.parse_args()
    environment = run_environment()
    run_dir = args.work.resolve() / "runs" / f"auto-start-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (workload,) = load_workloads(["negconstraint"], 3, 100, 1)
    pairs_file = workload.write_pairs(run_dir / "pairs.jsonl", 3)
    cache = run_dir / "cache"
    rows = []
    for round_ in range(args.rounds):
        shutil.rmtree(cache, ignore_errors=True)
        for kind in KINDS:
            out = subprocess.run([sys.executable, __file__, "worker", kind, str(args.artifact), str(pairs_file),
                                  str(cache)], check=True, capture_output=True, text=True).stdout
            row = {"round": round_, **json.loads(out.strip().splitlines()[-1])}
            rows.append(row)
            say(f"round {round_} {kind}: {row['pairs_per_s']:.1f} pairs/s ({row['precision']} on {row['backend']})")
    body = ["| kind | median pairs/s | range | configuration |", "|---|---:|---|---|"]
    for kind in KINDS:
        rates = [r["pairs_per_s"] for r in rows if r["kind"] == kind]
        last = next(r for r in rows if r["kind"] == kind)
        body.append(f"| {kind} | {statistics.median(rates):.1f} | {min(rates):.1f}–{max(rates):.1f} | "
                    f"{last['precision']} on {last['backend']} ({last['inference_precision']}) |")
    body += ["", f"{len(workload.queries)} negconstraint queries × 100 documents, max_length 512, {THREADS} threads; "
             "each process: median of 3 predict passes after a warm-up; rounds interleave the kinds."]
    command = "python benchmarks/bench_auto_start.py " + " ".join(sys.argv[1:])
    write_report(args.out, "auto-start", "auto: fresh tuning vs cached decision vs explicit load", command,
                 environment, rows, body)


if __name__ == "__main__":
    main()
