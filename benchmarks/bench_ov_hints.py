"""OpenVINO performance hint and int8 shape buckets: pairs/s and peak RSS, each configuration in a fresh process.

    python benchmarks/bench_ov_hints.py --out benchmarks/results

The distilled 17m artifact from the CPU benchmarks, 300 negconstraint pairs (3 queries × 100 docs,
max_length 512, 2 threads), 3 predict passes per process, alternating configurations; ``runs``
processes each. Backs the OpenVINO backend's defaults: LATENCY hint, int8 batch widths rounded to 16.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common

HERE = Path(__file__).resolve().parent
CONFIGS = [("fp32", "THROUGHPUT", 1), ("fp32", "LATENCY", 1), ("bf16", "THROUGHPUT", 1), ("bf16", "LATENCY", 1),
           ("int8", "LATENCY", 1), ("int8", "LATENCY", 16)]


def child(args: argparse.Namespace) -> None:
    import dataclasses

    from rerankrt.engine import Reranker

    pairs = [tuple(p) for p in json.loads(Path(args.pairs).read_text())]
    reranker = Reranker.from_pretrained(args.artifact, precision=args.precision, backend="openvino",
                                        threads=common.THREADS, max_length=common.MAX_LENGTH,
                                        backend_options={"performance_hint": args.hint})
    reranker.policy = dataclasses.replace(reranker.policy, pad_to_multiple_of=args.pad)
    reranker.predict(pairs[:20])
    started = time.perf_counter()
    for _ in range(3):
        reranker.predict(pairs)
    print(json.dumps({"pairs_per_s": 3 * len(pairs) / (time.perf_counter() - started),
                      "peak_rss_mib": common.peak_rss_mib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--artifact", "--pairs", "--precision", "--hint"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--pad", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    model = common.prepare_model(common.DISTILLED_NAME, HERE / "work", None, precisions=("fp32", "bf16", "int8"))
    rng = random.Random(0)
    queries = rng.sample(common.read_texts(common.NEGCONSTRAINT_DIR / "queries.jsonl"), 3)
    docs = rng.sample(common.read_texts(common.NEGCONSTRAINT_DIR / "corpus.jsonl"), 100)
    pairs_file = HERE / "work" / "ov-hints-pairs.json"
    pairs_file.write_text(json.dumps([(q, d) for q in queries for d in docs]))
    results: dict[tuple, list[dict]] = {c: [] for c in CONFIGS}
    for _ in range(args.runs):
        for precision, hint, pad in CONFIGS:
            done = subprocess.run([sys.executable, __file__, "--child", "--artifact", str(model.artifact_dir),
                                   "--pairs", str(pairs_file), "--precision", precision, "--hint", hint,
                                   "--pad", str(pad)], capture_output=True, text=True, check=True)
            results[(precision, hint, pad)].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = [{"precision": p, "hint": h, "pad_multiple": m, "runs": r,
             "pairs_per_s_median": statistics.median(x["pairs_per_s"] for x in r),
             "peak_rss_mib_median": statistics.median(x["peak_rss_mib"] for x in r)}
            for (p, h, m), r in results.items()]
    body = [f"Distilled 17m, 300 negconstraint pairs, max_length {common.MAX_LENGTH}, {common.THREADS} threads; "
            f"median over {args.runs} processes (3 passes each).", "",
            "| precision | hint | batch width multiple | pairs/s | peak RSS MiB | per run (pairs/s) |",
            "|---|---|---:|---:|---:|---|"]
    for row in rows:
        per_run = ", ".join(f"{x['pairs_per_s']:.0f}" for x in row["runs"])
        body.append(f"| {row['precision']} | {row['hint']} | {row['pad_multiple']} | {row['pairs_per_s_median']:.1f} | "
                    f"{row['peak_rss_mib_median']:.0f} | {per_run} |")
    common.write_report(Path(args.out), "ov-hints", "OpenVINO hint and int8 shape buckets",
                    "python benchmarks/bench_ov_hints.py", common.run_environment(("openvino",)), rows, body)

if __name__ == "__main__":
    main()
