"""CPU benchmark: sentence-transformers ``CrossEncoder`` (torch fp32) vs rerankrt fp32 and int8, in one run.

Why one command: a speed-up is only meaningful against a baseline measured on the same machine, in
the same run, on the same pairs. The driver builds (and caches) Ettin-shaped models and their
artifacts, writes the workloads, then runs every system in its own subprocess, one after another,
so peak RSS and cold start belong to that system alone. It writes one JSON row per
model × workload × system and a markdown summary with the hardware it ran on.

    python benchmarks/bench_cpu.py --models 17m,32m,68m,150m --out benchmarks/results
    python benchmarks/bench_cpu.py --smoke --out /tmp/bench_smoke      # end-to-end check, seconds

``python benchmarks/bench_cpu.py worker ...`` is the per-system measurement; the driver calls it.
What the other benchmark scripts share with this one (models, workloads, the worker measurement,
the report) is in ``common.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
from pathlib import Path

from common import (  # first: common.SCRIPT_START marks when the interpreter reached our code (stdlib only)
    DISTILLED_NAME,
    MAX_LENGTH,
    MODEL_NAMES,
    ST_BATCH_SIZES,
    THREADS,
    Model,
    Workload,
    add_run_arguments,
    agreement,
    auto_records,
    estimate_flops,
    fmt,
    hardware_info,
    hardware_lines,
    load_line,
    load_scorer,
    load_workloads,
    measure_matmul_peak,
    measure_scorer,
    model_names,
    package_versions,
    prepare_model,
    read_pairs,
    refuse_unknown,
    run_driver_or_worker,
    say,
    spawn_worker,
    token_lengths,
    worker_parser,
    write_summary,
    write_worker_output,
)

# isort: split
import numpy as np

SYSTEMS = ("st", "rerankrt-fp32", "rerankrt-int8", "rerankrt-auto")  # auto: what a user gets by default here
WORKLOADS = ("negconstraint", "scifact")


def worker_main(args: argparse.Namespace) -> None:
    """Measure one system; write ``<prefix>.json`` (timings, RSS) and ``<prefix>.npy`` (scores)."""
    pairs, groups = read_pairs(args.pairs)
    predict, rank = load_scorer(args.system, args.model_dir, args.artifact)
    measured, scores = measure_scorer(predict, rank, pairs, groups, args.passes, args.latency_calls, args.spawn_time,
                                      batch_sizes=ST_BATCH_SIZES if args.system == "st" else ())
    result = {"system": args.system, **measured}
    write_worker_output(args.out_prefix, result, scores)
    say(f"  {args.system}: {result['pairs_per_s']:.1f} pairs/s, rank p50 {result['rank_latency_ms']['p50']:.1f} ms, "
        f"RSS {result['peak_rss_mib']:.0f} MiB, cold start {result['cold_start_s']:.2f} s")


def run_worker(system: str, model: Model, pairs_file: Path, out_prefix: Path, passes: int,
               latency_calls: int) -> dict:
    return spawn_worker(Path(__file__), ["--system", system, "--model-dir", str(model.source_dir),
                                         "--artifact", str(model.artifact_dir), "--pairs", str(pairs_file),
                                         "--passes", str(passes), "--latency-calls", str(latency_calls)], out_prefix)


def export_parity(model: Model, precision: str) -> dict:
    """The artifact's own parity report (builtin calibration pairs vs the PyTorch reference)."""
    manifest = json.loads((model.artifact_dir / "manifest.json").read_text(encoding="utf-8"))
    report = manifest["parity"]["results"][precision]
    keys = ("max_abs_delta", "max_rel_delta", "spearman", "top10_agreement", "passed", "failures")
    return {key: report[key] for key in keys}


def measure_group(model: Model, workload: Workload, systems: list[str], run_dir: Path, passes: int,
                  latency_calls: int, environment: dict) -> list[dict]:
    """All systems on one model × workload; st first, because every other row is compared with it."""
    n_queries = workload.n_queries(model.pairs_limit)
    pairs_file = workload.write_pairs(run_dir / f"pairs-{workload.name}-q{n_queries}.jsonl", n_queries)
    pairs, groups = read_pairs(pairs_file)
    config = json.loads((model.source_dir / "config.json").read_text(encoding="utf-8"))
    lengths = token_lengths(model, pairs)
    flops = estimate_flops(config, lengths)
    say(f"{model.name} × {workload.name}: {len(pairs)} pairs ({n_queries} queries × {len(workload.documents)} docs), "
        f"mean {lengths.mean():.0f} tokens")

    rows, reference = [], None
    for system in sorted(systems, key=SYSTEMS.index):
        prefix = run_dir / f"{model.name}-{workload.name}-{system}"
        result = run_worker(system, model, pairs_file, prefix, passes, latency_calls)
        scores = np.load(prefix.with_suffix(".npy"))
        median_s = statistics.median(result["pass_times_s"])
        row = {
            "run_id": environment["run_id"], "model": model.name, "workload": workload.name, "system": system,
            "precision": ("fp32" if system == "st" else auto_precision(model) if system == "rerankrt-auto"
                          else system.removeprefix("rerankrt-")),
            "n_queries": n_queries, "docs_per_query": len(workload.documents),
            "tokens_total": int(lengths.sum()), "tokens_mean": float(lengths.mean()), **result,
            "flops_estimate": flops, "achieved_gflops": flops / median_s / 1e9,
            "fraction_of_peak": flops / median_s / 1e9 / environment["matmul_peak"]["gflops"],
        }
        if system == "rerankrt-auto":
            row["auto_choice"] = next((r.get("choice") for r in environment.get("auto", [])
                                       if r["artifact"] == model.artifact_dir.name), None)
        if system == "st":
            reference = (scores, result)
        else:
            row["export_parity"] = export_parity(model, row["precision"])
        if reference is not None and system != "st":
            ref_scores, ref_result = reference
            row["speedup_vs_st"] = result["pairs_per_s"] / ref_result["pairs_per_s"]
            row["rss_ratio_vs_st"] = result["peak_rss_mib"] / ref_result["peak_rss_mib"]
            row["agreement_vs_st"] = agreement(ref_scores, scores, groups)
        row["environment"] = environment
        rows.append(row)
    return rows


def auto_precision(model: Model) -> str:
    """The precision the ``rerankrt-auto`` row loads (from the run's recorded auto decision)."""
    from rerankrt.engine.artifact import load_artifact
    from rerankrt.engine.tuning import cached_decision

    decision = cached_decision(load_artifact(model.artifact_dir), threads=THREADS)
    return decision.config.precision if decision is not None else "int8"


def auto_vs_explicit(group: list[dict]) -> list[str]:
    """Per model: the auto row against the fastest rerankrt row of the same run (issue 16's "ratio to the best")."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in group):
        rows = [r for r in group if r["model"] == model]
        auto = next((r for r in rows if r["system"] == "rerankrt-auto"), None)
        explicit = [r for r in rows if r["system"].startswith("rerankrt-") and r is not auto]
        if auto is None or not explicit:
            continue
        best = max(explicit, key=lambda r: r["pairs_per_s"])
        lines.append(f"- {model}: rerankrt-auto loaded {auto.get('auto_choice', '?')}: {auto['pairs_per_s']:.1f} "
                     f"pairs/s, {auto['pairs_per_s'] / best['pairs_per_s']:.2f}× the fastest explicit rerankrt row "
                     f"({best['system']}, onnxruntime, {best['pairs_per_s']:.1f})")
    return ["", *lines] if lines else []


def markdown_summary(rows: list[dict], environment: dict, command: str) -> str:
    """Short, human-readable: the hardware, then one table per workload."""
    peak = environment["matmul_peak"]
    versions = ", ".join(f"{k} {v}" for k, v in environment["versions"].items())
    lines = [
        f"# CPU benchmark — {environment['date']}", "",
        f"Command: `{command}`", "",
        "## Hardware", "",
        *hardware_lines(environment),
        f"- fp32 matmul peak (onnxruntime, {peak['threads']} threads, "
        f"[{peak['shape_mkn'][0]}×{peak['shape_mkn'][1]}]·[{peak['shape_mkn'][1]}×{peak['shape_mkn'][2]}]): "
        f"{peak['gflops']:.1f} GFLOP/s",
        load_line(environment),
        f"- {versions}", "",
    ]
    for workload in dict.fromkeys(r["workload"] for r in rows):
        group = [r for r in rows if r["workload"] == workload]
        docs = group[0]["rank_latency_ms"]["docs"]
        lines += [f"## {workload} (max_length {MAX_LENGTH})", "",
                  f"| model | pairs | system | pairs/s | × st | rank 1×{docs} p50 / p95 ms | peak RSS MiB (× st) | "
                  "cold start s | max \\|Δ\\| | Spearman | top-10 | GFLOP/s | % peak |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in group:
            agree = r.get("agreement_vs_st") or {}
            system = f"st (bs {r['batch_size']})" if r["system"] == "st" else r["system"]
            rss = f"{r['peak_rss_mib']:.0f}" + (f" ({r['rss_ratio_vs_st']:.2f}×)" if "rss_ratio_vs_st" in r else "")
            lines.append(
                f"| {r['model']} | {r['n_pairs']} | {system} | {r['pairs_per_s']:.1f} | "
                f"{fmt(r.get('speedup_vs_st'), '.2f')} | "
                f"{r['rank_latency_ms']['p50']:.0f} / {r['rank_latency_ms']['p95']:.0f} | {rss} | "
                f"{r['cold_start_s']:.2f} | {fmt(agree.get('max_abs_delta'), '.2g')} | "
                f"{fmt(agree.get('spearman'), '.5f')} | {fmt(agree.get('top10_agreement'), '.2f')} | "
                f"{r['achieved_gflops']:.1f} | {100 * r['fraction_of_peak']:.0f}% |")
        lines += auto_vs_explicit(group)
        lines.append("")
    parity = [r for r in rows if "export_parity" in r and r["workload"] == rows[0]["workload"]]
    if parity:
        lines += ["## Export parity (builtin calibration pairs vs PyTorch; gate not enforced here)", "",
                  "| model | precision | max \\|Δ\\|/range | Spearman | top-10 | gate |",
                  "|---|---|---:|---:|---:|---|"]
        for r in parity:
            p = r["export_parity"]
            lines.append(f"| {r['model']} | {r['precision']} | {fmt(p['max_rel_delta'], '.2e')} | "
                         f"{p['spearman']:.5f} | {p['top10_agreement']:.2f} | {'pass' if p['passed'] else 'fail'} |")
        lines.append("")
    lines += [
        "Notes:",
        "- One run; every ratio compares systems measured back to back in it. pairs/s is the median of the timed "
        "passes after a warm-up; st uses its fastest batch size of 16/32/64, rerankrt its default token budget.",
        "- Agreement (max |Δ|, Spearman, per-query top-10) is against st's scores on the same pairs. Fixtures have "
        f"random weights, which squeeze scores and exaggerate int8 error; `{DISTILLED_NAME}` has trained-like scores.",
        "- GFLOP/s is an analytic estimate (dense matmuls + attention on unpadded tokens, sliding layers capped at "
        "their window) divided by the measured time; % peak is against the fp32 matmul peak above, int8 included.",
        "- Cold start: parent's spawn to the first score of one pair (interpreter, imports, model load, first run).",
    ]
    return "\n".join(lines) + "\n"


def driver_main(args: argparse.Namespace) -> None:
    names = model_names(args.models, args.smoke, not args.no_distilled)
    systems, workload_names = args.systems.split(","), args.workloads.split(",")
    refuse_unknown({"model": (names, MODEL_NAMES), "system": (systems, list(SYSTEMS)),
                    "workload": (workload_names, list(WORKLOADS))})

    now = dt.datetime.now()
    run_id = "cpu-" + now.strftime("%Y%m%d-%H%M")
    work, out = args.work.resolve(), args.out.resolve()
    run_dir = work / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    say(f"measuring the fp32 matmul peak ({THREADS} threads)")
    load = os.getloadavg()[0]
    if load > 0.5:
        say(f"WARNING: 1-minute load average is {load:.2f}; other processes on these cores skew every timing "
            "(torch's OpenMP threads suffer most)")
    environment = {"run_id": run_id, "date": now.isoformat(timespec="minutes"), "load_average_1m": load,
                   "hardware": hardware_info(),
                   "versions": package_versions(), "matmul_peak": measure_matmul_peak(), "threads": THREADS,
                   "max_length": MAX_LENGTH, "smoke": args.smoke}
    say(f"peak {environment['matmul_peak']['gflops']:.1f} GFLOP/s")
    models = [prepare_model(name, work, args.pairs_limit) for name in names]
    environment["auto"] = auto_records([m.artifact_dir for m in models])  # before any auto row loads it
    workloads = (load_workloads(workload_names, 2, 10, 10) if args.smoke
                 else load_workloads(workload_names, 10, 100, 30))
    passes, latency_calls = (1, 2) if args.smoke else (3, 10)

    jsonl = out / f"{run_id}.jsonl"
    jsonl.unlink(missing_ok=True)
    rows: list[dict] = []
    for model in models:
        for workload in workloads:
            group = measure_group(model, workload, systems, run_dir, passes, latency_calls, environment)
            with jsonl.open("a", encoding="utf-8") as fh:  # appended per group: a crash keeps what was measured
                fh.writelines(json.dumps(row) + "\n" for row in group)
            rows += group

    command = "python benchmarks/bench_cpu.py " + " ".join(sys.argv[1:])
    summary = markdown_summary(rows, environment, command)
    write_summary(out, run_id, "LATEST-cpu.md", summary, jsonl)


def parse_args(argv: list[str]) -> argparse.Namespace:
    if argv[:1] == ["worker"]:
        parser = worker_parser("bench_cpu.py worker", SYSTEMS)
        args = parser.parse_args(argv[1:])
        args.mode = "worker"
        return args
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="17m,32m,68m,150m", help="Ettin sizes (builders.ETTIN_SHAPES)")
    add_run_arguments(parser, "cache for fixtures, artifacts, pairs and scores")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--pairs-limit", type=int, default=None,
                        help="max pairs per workload for every model (default: 1000 for 17m/32m, 300 for 68m/150m)")
    args = parser.parse_args(argv)
    args.mode = "driver"
    return args


if __name__ == "__main__":
    run_driver_or_worker(parse_args, driver_main, worker_main)
