"""Memory after a burst of long documents: onnxruntime's arena with and without shrinking.

One command::

    python benchmarks/bench_memory_burst.py --out benchmarks/results

Why: a server that scored one burst of long pairs must not keep the burst's peak memory for the
rest of its life. onnxruntime's CPU arena grows to the largest batch it served and never gives the
memory back; ``OrtBackend.run`` now shrinks it after a batch of rows of ≥ 1,024 tokens
(``SHRINK_ARENA_FROM_WIDTH``). Each configuration runs in a fresh process on the distilled 17m
(fp32, full 7,999-token length): resident memory after warm-up, the peak, and what stays resident
after the burst and some short traffic; plus the time of the burst and of short batches, so the
cost of shrinking is visible. ``off`` disables the shrink by raising the width threshold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common
from common import say

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"


def worker(args: argparse.Namespace) -> None:
    import resource

    from rerankrt.engine import Reranker
    from rerankrt.engine.backends import ort as ort_backend

    if args.mode == "off":
        ort_backend.SHRINK_ARENA_FROM_WIDTH = 1 << 30

    def rss_mb() -> float:
        return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024

    reranker = Reranker.from_pretrained(args.artifact, precision="fp32", backend="onnxruntime",
                                        threads=common.THREADS)
    short = [("a short query", "a short document about rivers and bridges " * 6)] * 64
    reranker.predict(short)
    warm = rss_mb()
    started = time.perf_counter()
    reranker.predict([("query", "word " * (args.tokens - 8))] * args.pairs)  # each pair a batch of its own
    burst_s = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    after_burst = rss_mb()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        reranker.predict(short)
        times.append(time.perf_counter() - started)
    print(json.dumps({"mode": args.mode, "pairs": args.pairs, "tokens": args.tokens, "warm_mb": warm,
                      "peak_mb": peak, "after_burst_mb": after_burst, "after_traffic_mb": rss_mb(),
                      "burst_s": burst_s, "short_batch_ms": 1000 * sorted(times)[2]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=7999)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["on", "off"], default="on", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    model = common.prepare_model(common.DISTILLED_NAME, WORK, None, precisions=("fp32",))
    rows = []
    for mode in ("off", "on"):
        say(f"{mode}: {args.pairs} pairs × {args.tokens} tokens")
        out = subprocess.run([sys.executable, __file__, "--worker", "--mode", mode, "--artifact",
                              str(model.artifact_dir), "--pairs", str(args.pairs), "--tokens", str(args.tokens)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    body = ["| arena shrink | RSS warm | peak | after the burst | after short traffic | burst | short batch (64) |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        body.append(f"| {r['mode']} | {r['warm_mb']:,.0f} MB | {r['peak_mb']:,.0f} MB | "
                    f"{r['after_burst_mb']:,.0f} MB | {r['after_traffic_mb']:,.0f} MB | {r['burst_s']:.1f} s | "
                    f"{r['short_batch_ms']:.0f} ms |")
    body += ["", f"{args.pairs} pairs of {args.tokens} tokens, distilled 17m, fp32, onnxruntime, "
             f"{common.THREADS} threads; each mode in a fresh process."]
    common.write_report(args.out, "memory-burst", "Memory after a burst of long documents",
                        "python benchmarks/bench_memory_burst.py --out benchmarks/results",
                        common.run_environment((), auto_artifacts=(model.artifact_dir,)), rows, body)


if __name__ == "__main__":
    main()
