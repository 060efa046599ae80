"""What racing saves in measured ``auto``: ``rerankrt tune`` with each ``RACE_MARGIN``, alternating, same run.

``engine/tuning.py`` stops timing a candidate whose best pass is over ``RACE_MARGIN`` × the fastest
candidate's best pass (issue 16: tuning the 17m must take ≤ 10 s). Each run here is a fresh
``rerankrt tune ARTIFACT`` process with an empty cache and the margin set (``inf``: every candidate
gets every round, as before racing); the arms alternate (forward, then reversed) so drift hits them
alike. Per arm: the wall time and tuning seconds (median and range), the choice of every run, and
how many candidates were raced out.

    python benchmarks/bench_tuning_race.py --out benchmarks/results [--margins 1.4,inf] [--reps 3]
    python benchmarks/bench_tuning_race.py --emulate-avx2 --out benchmarks/results   # an AVX2-only CPU's kernels
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, THREADS, run_environment, say, write_report

DEFAULT_ARTIFACT = REPO_ROOT / "benchmarks" / "work" / "artifacts" / "17m-distilled"
TUNE = ("import sys, rerankrt.engine.tuning as t; t.RACE_MARGIN = float(sys.argv[1]); "
        "from rerankrt.engine.cli import main; sys.exit(main(['tune', sys.argv[2], '--threads', sys.argv[3]]))")


def tune_once(artifact: Path, margin: str) -> dict:
    """One fresh ``rerankrt tune`` with ``margin``: its wall time and the cached entry it wrote."""
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", TUNE, margin, str(artifact), str(THREADS)],
                       env={**os.environ, "RERANKRT_CACHE": cache}, check=True, capture_output=True)
        wall = time.perf_counter() - started
        entry = json.loads(next(Path(cache, "tuning").glob("*.json")).read_text(encoding="utf-8"))
    table = entry["table"]
    return {"margin": margin, "wall_s": round(wall, 3), "tuning_s": entry["seconds"], "decision": entry["decision"],
            "raced_out": [r["label"] for r in table if "raced_out" in r],
            "passes": {r["label"]: r.get("passes") for r in table}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT,
                        help="an exported artifact (default: the distilled 17m that bench_cpu_peers.py exports)")
    parser.add_argument("--margins", default="1.4,inf", help="comma-separated RACE_MARGIN values; inf = no racing")
    parser.add_argument("--reps", type=int, default=3, help="runs per margin")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "benchmarks" / "work")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="run as an AVX2-only CPU would: kernels dispatched without AVX-512 (avx2_emulation.py)")
    args = parser.parse_args()
    if args.emulate_avx2:
        import avx2_emulation

        avx2_emulation.reexec_emulated(args.work.resolve(), [str(Path(sys.argv[0]).resolve()), *sys.argv[1:]])
    if not (args.artifact / "manifest.json").is_file():
        raise SystemExit(f"{args.artifact} is not an artifact: run bench_cpu_peers.py (it exports the distilled "
                         "17m there) or pass --artifact")
    margins = args.margins.split(",")
    rows: list[dict] = []
    for rep in range(args.reps):
        for margin in margins if rep % 2 == 0 else margins[::-1]:
            rows.append({"rep": rep, **tune_once(args.artifact, margin)})
            say(f"margin {margin}: {rows[-1]['tuning_s']:.2f} s, raced out {len(rows[-1]['raced_out'])}")

    body = [f"`rerankrt tune` on `{args.artifact.name}`, {THREADS} threads, a fresh cache per run, arms alternating; "
            "`inf` = no racing (every candidate timed every round).", "",
            "| RACE_MARGIN | runs | tuning s, median (range) | wall s, median | raced out per run | decisions |",
            "|---|---:|---:|---:|---:|---|"]
    for margin in margins:
        mine = [r for r in rows if r["margin"] == margin]
        tuning_s = [r["tuning_s"] for r in mine]
        decisions = sorted({json.dumps(r["decision"], sort_keys=True) for r in mine})
        body.append(f"| {margin} | {len(mine)} | {statistics.median(tuning_s):.2f} ({min(tuning_s):.2f}–"
                    f"{max(tuning_s):.2f}) | {statistics.median(r['wall_s'] for r in mine):.2f} | "
                    f"{statistics.median(len(r['raced_out']) for r in mine):.0f} | "
                    + "; ".join(decisions).replace("|", "\\|") + " |")
    prefix = "tuning-race" + ("-avx2-emulated" if args.emulate_avx2 else "")
    write_report(args.out, prefix, "Racing in measured auto", "python benchmarks/bench_tuning_race.py "
                 + " ".join(sys.argv[1:]), run_environment(), rows, body)


if __name__ == "__main__":
    main()
