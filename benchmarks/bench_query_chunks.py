"""How many chunks the global layers' queries go in: 1, 4, 8 and 16 at 4,096 and 7,999 tokens (issue 17).

One graph serves both CPU backends, and the two want different things: onnxruntime materializes each global
layer's scores (chunks cut its memory and time), OpenVINO fuses attention and never held them (chunks only
add steps). The distilled 17m exported fp32 with ``--global-query-chunks`` 1, 4, 8 and 16; each (length,
backend, chunks) in a fresh process (its peak RSS is the pair's cost): one warm-up call, then the median of
3 timed calls on one pair of random ids; ``--rounds`` (2) interleaved rounds, the median of the rounds.

    python benchmarks/bench_query_chunks.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import common

WORK = common.REPO_ROOT / "benchmarks" / "work" / "artifacts"
CHUNKS = (1, 4, 8, 16)
LENGTHS = (4096, 7999)
BACKENDS = ("onnxruntime", "openvino")


def artifact(chunks: int) -> Path:
    from rerankrt.export.pipeline import export

    out = WORK / f"17m-distilled-chunks{chunks}"
    manifest = out / "manifest.json"
    recorded = json.loads(manifest.read_text())["graphs"]["fp32"] if manifest.is_file() else {}
    if recorded.get("global_query_chunks") != chunks:
        common.say(f"exporting the distilled 17m with global_query_chunks={chunks}")
        export(str(common.DISTILLED_DIR), out, precisions=["fp32"], overwrite=True, global_query_chunks=chunks,
               long_lengths=(), log=None)
    return out


def worker(art: Path, backend: str, length: int) -> dict:
    import time

    import numpy as np

    from rerankrt.engine.artifact import load_artifact
    from rerankrt.engine.backends import create_backend

    run = create_backend(load_artifact(art), precision="fp32", backend=backend, threads=common.THREADS).backend
    ids = np.random.default_rng(0).integers(1000, 50000, size=(1, length)).astype(np.int64)
    ids[0, 0], ids[0, -1] = 50281, 50282
    mask = np.ones_like(ids)
    run.run(ids, mask)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        run.run(ids, mask)
        times.append(time.perf_counter() - started)
    return {"ms": statistics.median(times) * 1000, "peak_rss_mib": common.peak_rss_mib()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=common.REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", nargs=3, metavar=("ARTIFACT", "BACKEND", "LENGTH"))
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), args.worker[1], int(args.worker[2]))))
        return 0
    artifacts = {chunks: artifact(chunks) for chunks in CHUNKS}
    runs: dict[tuple[int, str, int], list[dict]] = {}
    for round_ in range(args.rounds):
        for length in LENGTHS:
            for backend in BACKENDS:
                for chunks in CHUNKS:
                    out = subprocess.run([sys.executable, __file__, "--worker", str(artifacts[chunks]), backend,
                                          str(length)], capture_output=True, text=True, check=True)
                    result = json.loads(out.stdout.strip().splitlines()[-1])
                    runs.setdefault((length, backend, chunks), []).append(result)
                    common.say(f"round {round_}: {length} tokens {backend} chunks {chunks}: {result['ms']:.0f} ms, "
                               f"{result['peak_rss_mib']:.0f} MiB")
    rows = [{"tokens": length, "backend": backend, "chunks": chunks,
             "ms": statistics.median(r["ms"] for r in results), "ms_all": [r["ms"] for r in results],
             "peak_rss_mib": max(r["peak_rss_mib"] for r in results)}
            for (length, backend, chunks), results in sorted(runs.items())]
    body = ["fp32, distilled 17m, 2 threads, one pair of random ids per call; ms: median over rounds of the "
            "median of 3 calls; × 1 chunk: the time of 1 chunk ÷ this one (> 1 is faster).", "",
            "| tokens | backend | chunks | ms | × 1 chunk | peak RSS MiB |", "|---:|---|---:|---:|---:|---:|"]
    base = {(r["tokens"], r["backend"]): r["ms"] for r in rows if r["chunks"] == 1}
    body += [f"| {r['tokens']:,} | {r['backend']} | {r['chunks']} | {r['ms']:,.0f} | "
             f"{base[(r['tokens'], r['backend'])] / r['ms']:.2f}× | {r['peak_rss_mib']:,.0f} |" for r in rows]
    common.write_report(args.out, "query-chunks", "Global layers' query chunks: 1, 4, 8, 16",
                        "python benchmarks/bench_query_chunks.py --out benchmarks/results",
                        common.run_environment(), rows, body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
