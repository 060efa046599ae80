"""Offline file scoring: ``rerankrt score`` vs in-process ``predict``, processes vs threads, Ray local.

    python benchmarks/bench_score.py --out benchmarks/results

100,000 (query, document) pairs drawn from ../shared/data/negconstraint (at run time; the text
never enters the repository) are written once as JSONL. Then, one after the other on the same
pairs and the same artifact (the distilled 17m, ``precision``/``backend`` auto):

* ``predict``: one in-process ``Reranker.predict`` over all pairs held in memory (the reference);
* ``score 1×N``: ``rerankrt score`` in one process with N intra-op threads (JSONL in, JSONL out);
* ``score N×1``: ``rerankrt score --workers N``, N processes with one thread each;
* ``ray N×1``: ``rerankrt.engine.integrations.ray.rerank_dataset`` on a local Ray (N actors × 1 CPU),
  reading the same JSONL and writing Parquet.

Each run is a fresh process; wall time includes reading and writing the files (and, for Ray, its
start-up, reported separately). N = the machine's cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common
from common import say

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"


def write_pairs(path: Path, n: int) -> None:
    rng = random.Random(0)
    queries = common.read_texts(common.NEGCONSTRAINT_DIR / "queries.jsonl")
    corpus = common.read_texts(common.NEGCONSTRAINT_DIR / "corpus.jsonl")
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": i, "query": rng.choice(queries), "document": rng.choice(corpus)}) + "\n")


def child_predict(args: argparse.Namespace) -> None:
    from rerankrt.engine import Reranker

    started = time.perf_counter()
    with open(args.input, encoding="utf-8") as fh:
        pairs = [(row["query"], row["document"]) for row in map(json.loads, fh)]
    reranker = Reranker.from_pretrained(args.artifact, max_length=args.max_length, threads=args.threads)
    loaded = time.perf_counter()
    reranker.predict(pairs)
    done = time.perf_counter()
    print(json.dumps({"seconds": done - started, "score_seconds": done - loaded, "backend": reranker.backend.name,
                      "precision": reranker.precision, "peak_rss_mib": common.peak_rss_mib()}))


def child_ray(args: argparse.Namespace) -> None:
    import ray

    from rerankrt.engine.integrations.ray import rerank_dataset

    started = time.perf_counter()
    # N actors × 1 CPU, plus logical CPUs for Ray Data's read and write tasks (without them the
    # pipeline waits forever for a free CPU)
    ray.init(num_cpus=args.threads + 2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ready = time.perf_counter()
    ds = ray.data.read_json(args.input)
    out = Path(args.output)
    shutil.rmtree(out, ignore_errors=True)
    rerank_dataset(ds, args.artifact, concurrency=args.threads, num_cpus=1, threads=1, batch_size=4096,
                   max_length=args.max_length).write_parquet(str(out))
    done = time.perf_counter()
    rows = ray.data.read_parquet(str(out)).count()
    ray.shutdown()
    print(json.dumps({"seconds": done - started, "ray_start_seconds": ready - started, "rows": rows}))


def run_child(cmd: list[str]) -> tuple[dict | None, float, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {done.stderr[-2000:]}")
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    return (json.loads(last) if last.startswith("{") else None), elapsed, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--child", choices=["predict", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--artifact", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help=argparse.SUPPRESS)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--render", help="rewrite the markdown of a saved score-*.json")
    args = parser.parse_args()
    if args.render:
        report = json.loads(Path(args.render).read_text())
        report.setdefault("command", "python benchmarks/bench_score.py --out benchmarks/results")
        Path(args.render).with_suffix(".md").write_text(render(report))
        return None
    if args.child == "predict":
        return child_predict(args)
    if args.child == "ray":
        return child_ray(args)

    cores = os.cpu_count() or 2
    model = common.prepare_model(common.DISTILLED_NAME, WORK, None, precisions=("fp32", "bf16", "int8"))
    run_dir = WORK / "runs" / f"score-{dt.datetime.now():%Y%m%d-%H%M}"
    run_dir.mkdir(parents=True, exist_ok=True)
    pairs_file = WORK / f"score-pairs-{args.pairs}.jsonl"
    if not pairs_file.is_file():
        say(f"writing {args.pairs:,} pairs")
        write_pairs(pairs_file, args.pairs)
    environment = common.run_environment(("openvino", "ray", "pyarrow"), auto_artifacts=(model.artifact_dir,))
    me = [sys.executable, __file__, "--artifact", str(model.artifact_dir), "--input", str(pairs_file),
          "--max-length", str(args.max_length)]
    rerankrt = [sys.executable, "-m", "rerankrt.engine.cli", "score", str(model.artifact_dir), str(pairs_file),
                "--max-length", str(args.max_length), "--no-progress", "--overwrite"]
    rows = []

    say("predict (in-process, all pairs in memory)")
    result, wall, _ = run_child([*me, "--child", "predict", "--threads", str(cores)])
    rows.append({"system": f"predict 1×{cores}", "seconds": result["seconds"], "wall_s": wall, **result})
    for label, extra in ((f"score 1×{cores}", ["--threads", str(cores)]),
                         (f"score {cores}×1", ["--workers", str(cores)])):
        say(label)
        out = run_dir / "out.jsonl"
        _, wall, stderr = run_child([*rerankrt, "-o", str(out), *extra])
        lines = sum(1 for _ in out.open())
        rows.append({"system": label, "seconds": wall, "rows_written": lines,
                     "summary": stderr.strip().splitlines()[-1]})
        out.unlink()
    if not args.skip_ray:
        say(f"ray {cores}×1")
        result, wall, _ = run_child([*me, "--child", "ray", "--threads", str(cores), "--output",
                                     str(run_dir / "ray-out")])
        rows.append({"system": f"ray {cores}×1 (local)", "seconds": result["seconds"],
                     "seconds_without_start": result["seconds"] - result["ray_start_seconds"], **result})
    for row in rows:
        row["pairs_per_s"] = args.pairs / row["seconds"]
        say(f"  {row['system']}: {row['seconds']:.1f} s, {row['pairs_per_s']:.1f} pairs/s")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M")
    report = {"stamp": stamp, "pairs": args.pairs, "max_length": args.max_length, "environment": environment,
              "rows": rows, "command": "python benchmarks/bench_score.py " + " ".join(sys.argv[1:])}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"score-{stamp}.json").write_text(json.dumps(report, indent=1))
    text = render(report)
    (out_dir / f"score-{stamp}.md").write_text(text)
    print(text)


def render(report: dict) -> str:
    rows, environment = report["rows"], report["environment"]
    base = rows[0]["pairs_per_s"]
    cores = rows[0]["system"].split("×")[-1]
    lines = [f"# File scoring benchmark — {report['stamp']}", "", f"Command: `{report['command']}`", "",
             *common.hardware_lines(environment), common.load_line(environment), "",
             f"{report['pairs']:,} negconstraint pairs (JSONL), distilled 17m, max_length {report['max_length']}, "
             f"backend/precision auto ({rows[0]['backend']} {rows[0]['precision']}). Each row is a fresh process; "
             "times include reading and writing files.", "",
             "| system | seconds | pairs/s | × predict |", "|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['system']} | {row['seconds']:.1f} | {row['pairs_per_s']:.1f} | "
                     f"{row['pairs_per_s'] / base:.3f} |")
    ray_row = next((r for r in rows if r["system"].startswith("ray")), None)
    if ray_row:
        lines.append("")
        lines.append(f"Ray: {ray_row['ray_start_seconds']:.1f} s of that is `ray.init()`; without it "
                     f"{report['pairs'] / ray_row['seconds_without_start']:.1f} pairs/s.")
    same_layout = next(r for r in rows if r["system"] == f"score 1×{cores}")
    score_rows = [r for r in rows if r["system"].startswith("score")]
    best = max(score_rows, key=lambda r: r["pairs_per_s"])
    lines += ["", f"Overhead of `rerankrt score` over in-process `predict`, same layout (1 process × {cores} threads): "
              f"{100 * (1 - same_layout['pairs_per_s'] / base):.1f}% (target ≤ 5%; negative: faster).",
              f"Faster layout on this machine: **{best['system']}** "
              f"({best['pairs_per_s'] / max(r['pairs_per_s'] for r in score_rows if r is not best):.2f}× the other)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
