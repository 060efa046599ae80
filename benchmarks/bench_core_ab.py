"""Before/after for the scoring core: this working tree against an earlier commit, same machine, same run.

    python benchmarks/bench_core_ab.py --base 23aceb4 --out benchmarks/results

Why: moving ``predict``, the server's scheduler and file scoring onto one scoring core must not cost
speed, and the scheduler now lets a backend that overlaps batches (OpenVINO with the THROUGHPUT
hint: several infer requests) run a window's batches at once through ``run_many``. The base commit
is checked out into a git worktree under ``benchmarks/work``; each round runs one worker process
per version (base, then this tree, alternating), and every number is a median over rounds.

Measured per version, on the distilled 17m and 300 negconstraint pairs (3 queries × 100 docs,
max_length 512, 2 threads):

* ``predict`` pairs/s: onnxruntime fp32, OpenVINO int8 (the ``auto`` choice on VNNI/BF16 CPUs);
* the HTTP scheduler without HTTP: 16 requests × 100 documents submitted at once to a
  ``BatchScheduler`` over the model's backend, pairs/s until the last one resolves, with
  OpenVINO int8 under the LATENCY hint (default) and the THROUGHPUT hint.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from common import say

HERE = Path(__file__).resolve().parent
CONFIGS = [  # (kind, precision, backend, performance hint)
    ("predict", "fp32", "onnxruntime", None),
    ("predict", "int8", "openvino", "LATENCY"),
    ("scheduler", "int8", "openvino", "LATENCY"),
    ("scheduler", "int8", "openvino", "THROUGHPUT"),
]


def worker(artifact: str, pairs_file: str, out: str) -> None:
    """Runs inside the version under test: only APIs that both versions have."""
    from rerankrt.engine import Reranker
    from rerankrt.engine.server.scheduler import BatchScheduler

    pairs = [tuple(p) for p in json.loads(Path(pairs_file).read_text())]
    results = {}
    for kind, precision, backend, hint in CONFIGS:
        options = {"performance_hint": hint, "cache_dir": False} if backend == "openvino" else {}
        reranker = Reranker.from_pretrained(artifact, precision=precision, backend=backend, max_length=512,
                                            threads=common.THREADS, backend_options=options)
        reranker.predict(pairs[:64])  # warm-up: first-shape compilation
        if kind == "predict":
            started = time.perf_counter()
            reranker.predict(pairs)
            seconds = time.perf_counter() - started
            n = len(pairs)
        else:
            requests = [pairs[i % 3 * 100:(i % 3 + 1) * 100] for i in range(16)]
            ids = [reranker.tokenizer.encode(r) for r in requests]
            scheduler = BatchScheduler(reranker.backend, reranker.num_labels, reranker.tokenizer.pad_id,
                                       reranker.policy)
            started = time.perf_counter()
            jobs = [scheduler.submit(t) for t in ids]
            for job in jobs:
                job.future.result()
            seconds = time.perf_counter() - started
            scheduler.stop()
            n = sum(len(r) for r in requests)
        results["|".join(str(c) for c in (kind, precision, backend, hint))] = n / seconds
    Path(out).write_text(json.dumps(results))


def _base_tree(rev: str) -> Path:
    """A worktree at ``rev`` and a folder whose ``rerankrt/`` maps onto its engine/ and export/."""
    root = HERE / "work" / f"ab-{rev}"
    tree = root / "tree"
    if not tree.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], check=True, cwd=HERE.parent)
    package = root / "import" / "rerankrt"
    package.mkdir(parents=True, exist_ok=True)
    for name in ("engine", "export"):
        link = package / name
        if not link.exists():
            link.symlink_to(tree / name)
    return root / "import"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="23aceb4", help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return

    model = common.prepare_model(common.DISTILLED_NAME, HERE / "work", None, precisions=("fp32", "int8"))
    rng = random.Random(0)
    queries = rng.sample(common.read_texts(common.NEGCONSTRAINT_DIR / "queries.jsonl"), 3)
    docs = rng.sample(common.read_texts(common.NEGCONSTRAINT_DIR / "corpus.jsonl"), 100)
    work = Path(tempfile.mkdtemp(prefix="ab-", dir=HERE / "work"))
    pairs_file = work / "pairs.json"
    pairs_file.write_text(json.dumps([(q, d) for q in queries for d in docs]))
    versions = {f"base {args.base}": str(_base_tree(args.base)), "this tree": None}
    runs: dict[str, list[dict]] = {v: [] for v in versions}
    for round_ in range(args.rounds):
        for version, pythonpath in versions.items():
            say(f"round {round_ + 1}/{args.rounds}: {version}")
            out = work / f"{version.replace(' ', '-')}-{round_}.json"
            env = dict(os.environ)
            if pythonpath:  # the base version's rerankrt ahead of the installed one
                env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
            env["RERANKRT_CACHE"] = str(work / "cache")
            subprocess.run([sys.executable, __file__, "--worker", str(model.artifact_dir), str(pairs_file), str(out)],
                           check=True, env=env, cwd=work)
            runs[version].append(json.loads(out.read_text()))
    rows = []
    base_name, new_name = list(versions)
    for key in runs[new_name][0]:
        kind, precision, backend, hint = key.split("|")
        medians = {v: statistics.median(r[key] for r in runs[v]) for v in versions}
        rows.append({"what": kind, "precision": precision, "backend": backend, "hint": hint,
                     "base_pairs_per_s": medians[base_name], "new_pairs_per_s": medians[new_name],
                     "ratio": medians[new_name] / medians[base_name],
                     "rounds": {v: [r[key] for r in runs[v]] for v in versions}})
    body = [f"Distilled 17m, 300 negconstraint pairs (3 queries × 100 docs), max_length 512, {common.THREADS} "
            f"threads; base = `{args.base}`, one worker process per version per round, alternating; median of "
            f"{args.rounds} rounds. Scheduler: 16 requests × 100 docs submitted at once, no HTTP.", "",
            "| path | precision | backend | hint | base pairs/s | this tree pairs/s | ratio |",
            "|---|---|---|---|---:|---:|---:|"]
    body += [f"| {r['what']} | {r['precision']} | {r['backend']} | {r['hint']} | {r['base_pairs_per_s']:.1f} | "
             f"{r['new_pairs_per_s']:.1f} | {r['ratio']:.3f} |" for r in rows]
    common.write_report(Path(args.out), "core-ab", "Scoring core before/after",
                        f"python benchmarks/bench_core_ab.py --base {args.base}",
                        common.run_environment(("openvino",)), rows, body)


if __name__ == "__main__":
    main()
