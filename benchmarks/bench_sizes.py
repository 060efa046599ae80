"""Every Ettin size, 17m to 1b: what the export costs and how fast each size scores, against
sentence-transformers in the same run.

    python benchmarks/bench_sizes.py --out benchmarks/results                 # all six sizes
    python benchmarks/bench_sizes.py --models 1b --out benchmarks/results     # one

Per size, one after another (never two at once on these cores):

1. the random-weight fixture (exact sentence-transformers format), built once into ``--work``;
2. ``rerankrt export`` fp32 + int8 in a child process: wall time, **peak RSS** of that process
   (``os.wait4``), the parity gate's pairs and seconds (from its output), artifact sizes (graph plus
   external data), whether the graph went to external data;
3. sentence-transformers (torch fp32), rerankrt fp32 and rerankrt int8 (onnxruntime) on the same
   negconstraint pairs, each in its own process (``bench_cpu.py worker``: warm-up, timed passes,
   one ``rank`` call, peak RSS, cold start), with agreement against st's scores.

The big sizes score a reduced pair set (``PAIRS``: queries × documents per query, said in the
report) because st scores the 1b at ~1 pair/s on 2 cores. Writes ``sizes-<stamp>.json`` (rows)
and ``.md`` with the hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import (
    REPO_ROOT,
    THREADS,
    agreement,
    auto_records,
    fixture_dir,
    load_workloads,
    read_pairs,
    run_environment,
    say,
    spawn_worker,
    write_report,
)

# isort: split
import numpy as np

from builders import ETTIN_SHAPES

BENCH_CPU = Path(__file__).with_name("bench_cpu.py")
SYSTEMS = ("st", "rerankrt-fp32", "rerankrt-int8")
# (queries, documents per query) of negconstraint scored per size
PAIRS = {"17m": (4, 50), "32m": (4, 50), "68m": (4, 25), "150m": (4, 25), "400m": (2, 16), "1b": (2, 16)}


def export_measured(source: Path, artifact: Path, log: Path) -> dict:
    """``rerankrt export`` fp32 + int8 in a child: seconds, its peak RSS, the gate's pairs and seconds."""
    command = [sys.executable, "-m", "rerankrt.engine.cli", "export", str(source), "-o", str(artifact),
               "--precision", "fp32,int8", "--overwrite", "--allow-parity-failure", "--threads", str(THREADS)]
    started = time.perf_counter()
    with log.open("w") as out:
        # unbuffered: the tracer attributes memory to the stage line last written
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
        by_stage: dict[str, float] = {}
        tracer = threading.Thread(target=_trace_stages, args=(child.pid, log, by_stage), daemon=True)
        tracer.start()
        _, status, usage = os.wait4(child.pid, 0)
        tracer.join()
    seconds = time.perf_counter() - started
    text = log.read_text(errors="replace")
    if status != 0:
        raise RuntimeError(f"export failed (status {status}); see {log}:\n{text[-2000:]}")
    gate = re.search(r"the gate took ([\d,]+) s", text)
    pairs = re.search(r"(\d+) calibration pairs \(([\d,]+) tokens\)", text)
    manifest = json.loads((artifact / "manifest.json").read_text())
    sizes = {p: int(g["size_bytes"]) + sum(int(d["size_bytes"]) for d in g.get("data_files", []))
             for p, g in manifest["graphs"].items()}
    return {"export_s": seconds, "export_peak_rss_mib": usage.ru_maxrss / 1024,
            "export_rss_by_stage_mib": by_stage,
            "gate_s": float(gate.group(1).replace(",", "")) if gate else None,
            "gate_pairs": int(pairs.group(1)) if pairs else None,
            "gate_tokens": int(pairs.group(2).replace(",", "")) if pairs else None,
            "artifact_mib": {p: s / 2**20 for p, s in sizes.items()},
            "external_data": {p: bool(g.get("data_files")) for p, g in manifest["graphs"].items()},
            "parity": {p: {k: r.get(k) for k in ("max_rel_delta", "spearman", "passed")}
                       for p, r in manifest["parity"]["results"].items()}}


def _trace_stages(pid: int, log: Path, peaks: dict[str, float], every_s: float = 0.2) -> None:
    """The child's highest sampled RSS (MiB) in each ``[k/6]`` stage of its output, until it exits.

    Sampling misses spikes shorter than ``every_s``; ``ru_maxrss`` stays the true peak. The point is
    *where* the memory goes, e.g. which stage sets the 1b's peak.
    """
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            text = status.read_text()
        except OSError:
            return
        if "\nState:\tZ" in text:
            return
        rss = re.search(r"VmRSS:\s+(\d+) kB", text)  # file-backed pages (mmapped weights) included
        stages = re.findall(r"^\[(\d)/\d\] ([a-z0-9 ]+)", log.read_text(errors="replace"), re.M)
        if rss:
            stage = " ".join(stages[-1])[:40] if stages else "start"
            peaks[stage] = max(peaks.get(stage, 0.0), int(rss.group(1)) / 1024)
        time.sleep(every_s)


def measure_size(size: str, work: Path, run_dir: Path, passes: int, export_only: bool = False) -> dict:
    source, _ = fixture_dir(size, work)
    artifact = work / "artifacts" / size
    say(f"{size}: exporting fp32 + int8 (log: {run_dir / f'export-{size}.log'})")
    row: dict = {"model": size, "shape": dict(zip(("hidden", "layers", "heads", "intermediate"), ETTIN_SHAPES[size])),
                 "parameters": _parameters(source)}
    row.update(export_measured(source, artifact, run_dir / f"export-{size}.log"))
    say(f"  export {row['export_s']:.0f} s, peak RSS {row['export_peak_rss_mib']:,.0f} MiB, gate "
        f"{row['gate_pairs']} pairs in {row['gate_s']} s")
    if export_only:
        return row
    n_queries, n_docs = PAIRS[size]
    (workload,) = load_workloads(["negconstraint"], n_queries, n_docs, 1)
    pairs_file = workload.write_pairs(run_dir / f"pairs-{size}.jsonl", n_queries)
    _, groups = read_pairs(pairs_file)
    row["pairs"] = {"queries": n_queries, "docs_per_query": n_docs}
    reference = None
    for system in SYSTEMS:
        prefix = run_dir / f"{size}-{system}"
        result = spawn_worker(BENCH_CPU, ["--system", system, "--model-dir", str(source), "--artifact",
                                          str(artifact), "--pairs", str(pairs_file), "--passes", str(passes),
                                          "--latency-calls", "1"], prefix)
        scores = np.load(prefix.with_suffix(".npy"))
        entry = {k: result[k] for k in ("pairs_per_s", "peak_rss_mib", "cold_start_s", "batch_size", "pass_times_s")}
        if system == "st":
            reference = scores
        else:
            entry["agreement_vs_st"] = agreement(reference, scores, groups)
        row[system] = entry
        say(f"  {system}: {entry['pairs_per_s']:.2f} pairs/s, RSS {entry['peak_rss_mib']:,.0f} MiB")
    return row


def _parameters(source: Path) -> int:
    from safetensors import safe_open

    total = 0
    for weights in source.rglob("model.safetensors"):
        with safe_open(str(weights), framework="numpy") as fh:
            total += sum(int(np.prod(fh.get_slice(k).get_shape())) for k in fh.keys())  # noqa: SIM118
    return total


def report(rows: list[dict]) -> list[str]:
    lines = ["## Export (fp32 + int8, parity gate included; `rerankrt export` in its own process)", "",
             "| model | parameters | export s | export peak RSS MiB | gate pairs (tokens) | gate s | fp32 MiB | "
             "int8 MiB | external data |", "|---|---:|---:|---:|---|---:|---:|---:|---|"]
    for r in rows:
        ext = ", ".join(p for p, e in r["external_data"].items() if e) or "none"
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:,.0f} M | {r['export_s']:,.0f} | "
                     f"{r['export_peak_rss_mib']:,.0f} | {r['gate_pairs']} ({r['gate_tokens']:,}) | "
                     f"{r['gate_s']:,.0f} | {r['artifact_mib']['fp32']:,.0f} | {r['artifact_mib']['int8']:,.0f} | "
                     f"{ext} |")
    traced = [r for r in rows if r.get("export_rss_by_stage_mib")]
    if traced:
        lines += ["", "Where the export's memory goes: highest RSS sampled (every 0.2 s) in each stage, MiB "
                  "(file-backed pages of memory-mapped weights included):", ""]
        for r in traced:
            stages = ", ".join(f"{k}: {v:,.0f}" for k, v in r["export_rss_by_stage_mib"].items())
            lines.append(f"- {r['model']}: {stages}")
    scored = [r for r in rows if "st" in r]
    if not scored:
        return lines
    lines += ["", f"## Scoring ({THREADS} threads, negconstraint, max_length 512)", "",
              "| model | pairs | system | pairs/s | × st | peak RSS MiB | cold start s | max \\|Δ\\| vs st | "
              "Spearman |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in scored:
        st = r["st"]["pairs_per_s"]
        pairs = f"{r['pairs']['queries']} × {r['pairs']['docs_per_query']}"
        for system in SYSTEMS:
            e = r[system]
            agree = e.get("agreement_vs_st") or {}
            name = f"st (bs {e['batch_size']})" if system == "st" else system
            delta = f"{agree['max_abs_delta']:.2g}" if agree else "—"
            rho = f"{agree['spearman']:.4f}" if agree else "—"
            lines.append(f"| {r['model']} | {pairs} | {name} | {e['pairs_per_s']:.2f} | {e['pairs_per_s'] / st:.2f} | "
                         f"{e['peak_rss_mib']:,.0f} | {e['cold_start_s']:.1f} | {delta} | {rho} |")
    lines += ["", "Notes: random-weight fixtures in the exact sentence-transformers format (their scores are squeezed, "
              "which exaggerates int8 error: the export keeps the gate's default tolerances, made for trained models, "
              "and runs with --allow-parity-failure so a size is measured even where int8 misses them). pairs/s: "
              "median of the timed passes after a warm-up; st uses its fastest batch size of 16/32/64."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(PAIRS))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "benchmarks" / "work")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--from-rows", type=Path, help="write the report of an earlier (e.g. interrupted) run from "
                        "the rows.jsonl it kept in its run directory, measuring nothing")
    parser.add_argument("--export-only", action="store_true", help="measure the export (time, memory, gate) only")
    args = parser.parse_args()
    if args.from_rows:
        rows = [json.loads(line) for line in args.from_rows.read_text().splitlines() if line.strip()]
        command = f"python benchmarks/bench_sizes.py --from-rows {args.from_rows} (rows of that run, measured then)"
        write_report(args.out, "sizes", "Every Ettin size: export and scoring", command, run_environment(), rows,
                     report(rows))
        return
    sizes = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in sizes if m not in PAIRS]
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {list(PAIRS)}")
    environment = run_environment()
    run_dir = args.work.resolve() / "runs" / f"sizes-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in sizes:
        rows.append(measure_size(size, args.work.resolve(), run_dir, args.passes, args.export_only))
        (run_dir / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # kept if a later size fails
    command = "python benchmarks/bench_sizes.py " + " ".join(sys.argv[1:])
    if not args.export_only:  # what auto loads for each size here (its tuning runs after the measurements)
        environment["auto"] = auto_records([args.work.resolve() / "artifacts" / size for size in sizes])
    write_report(args.out, "sizes", "Every Ettin size: export and scoring", command, environment, rows, report(rows))
    if not args.export_only:
        say(f"median st pairs/s over sizes: {statistics.median(r['st']['pairs_per_s'] for r in rows):.2f}")


if __name__ == "__main__":
    main()
