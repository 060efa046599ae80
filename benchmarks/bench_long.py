"""Long documents (issue 17): banded sliding-window attention against the full form and plain exports.

One pair per batch at several lengths (128 … 7,999 tokens of real text), fp32, on the distilled 17m:

* ``rerankrt-banded``: the current export (sliding layers attend in blocks), onnxruntime and OpenVINO f32;
* ``rerankrt-unchunked``: the same export with ``--global-query-chunks 1`` (global layers score every query
  row at once: the graph before query chunking), both backends;
* ``rerankrt-full``: the export with ``--local-attention full --global-query-chunks 1`` (n×n scores masked
  afterwards: the graph before banded attention), both backends;
* ``plain``: ``torch.onnx.export`` of the PyTorch module (what a user would do), onnxruntime and OpenVINO f32.

Every (system, length) runs in its own process: load, one warm-up call, then the median of ``--passes``
timed calls; the child's peak RSS (``VmHWM``) is the memory one such pair costs. Ratios compare
rows of this run only.

    python benchmarks/bench_long.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import common

WORK = common.REPO_ROOT / "benchmarks" / "work"
LENGTHS = (128, 256, 512, 2048, 4096, 7999)
# Short pairs come in batches (the CPU token budget, 2,048 tokens, holds 16 × 128 or 4 × 512); long ones alone.
ROWS = {128: 16, 256: 8, 512: 4}
SYSTEMS = ("rerankrt-banded-ort", "rerankrt-banded-ov", "rerankrt-unchunked-ort", "rerankrt-unchunked-ov",
           "rerankrt-full-ort", "rerankrt-full-ov", "plain-ort", "plain-ov")
# form → (artifact name, local attention, global query chunks)
FORMS = {"banded": ("17m-distilled-banded", "banded", 16), "unchunked": ("17m-distilled-unchunked", "banded", 1),
         "full": ("17m-distilled-full", "full", 1)}


def artifact_for(form: str) -> Path:
    """The distilled 17m exported (fp32 only) with sliding layers in ``form``; cached under work/."""
    from rerankrt.export.pipeline import export

    name, local, chunks = FORMS[form]
    out = WORK / "artifacts" / name
    manifest = out / "manifest.json"
    builder = common.REPO_ROOT / "export" / "graph.py"  # an artifact older than the graph builder is stale
    if (not manifest.is_file() or manifest.stat().st_mtime < builder.stat().st_mtime
            or json.loads(manifest.read_text())["graphs"]["fp32"].get("local_attention") != local
            or json.loads(manifest.read_text())["graphs"]["fp32"].get("global_query_chunks") != chunks):
        common.say(f"exporting the distilled 17m with local_attention={local}, global_query_chunks={chunks}")
        export(str(common.DISTILLED_DIR), out, precisions=["fp32"], overwrite=True, local_attention=local,
               global_query_chunks=chunks, long_lengths=(), log=None)
    return out


def plain_graph() -> Path:
    path = WORK / "peers" / common.DISTILLED_NAME / "plain.fp32.onnx"
    if not path.is_file():
        from rerankrt.export.graph import export_with_torch
        from rerankrt.export.source import read_source

        path.parent.mkdir(parents=True, exist_ok=True)
        common.say("plain torch.onnx.export of the distilled 17m")
        export_with_torch(read_source(str(common.DISTILLED_DIR)), path)
    return path


def token_ids(length: int) -> list[int]:
    """[CLS] query [SEP] document [SEP] of exactly ``length`` tokens, the document made of scifact abstracts."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(common.DISTILLED_DIR / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    query = tokenizer.encode("What is the role of inflammation in insulin resistance?", add_special_tokens=False).ids
    doc: list[int] = []
    for text in common.read_texts(common.SCIFACT_FILE):
        doc += tokenizer.encode(text, add_special_tokens=False).ids
        if len(doc) + len(query) + 3 >= length:
            break
    return [50281, *query, 50282, *doc[:length - len(query) - 3], 50282]


def scorer(system: str, artifact: dict[str, Path], plain: Path):
    """``fn(ids, mask) -> logits`` for one system, loaded as that system's users would load it."""
    family, backend = system.rsplit("-", 1)
    backend = {"ort": "onnxruntime", "ov": "openvino"}[backend]
    if family.startswith("rerankrt"):
        from rerankrt.engine import Reranker

        reranker = Reranker.from_pretrained(artifact[family.removeprefix("rerankrt-")], precision="fp32",
                                            backend=backend, threads=common.THREADS, max_length=7999)
        return lambda ids, rows: reranker.logits_for_token_ids([ids] * rows)
    if backend == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = common.THREADS
        session = ort.InferenceSession(str(plain), options, providers=["CPUExecutionProvider"])
        return lambda ids, rows: session.run(None, _feed(ids, rows))[0]
    import openvino as ov

    compiled = ov.Core().compile_model(str(plain), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                           "INFERENCE_NUM_THREADS": common.THREADS,
                                                           "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda ids, rows: np.asarray(request.infer(_feed(ids, rows))[0])


def _feed(ids: list[int], rows: int) -> dict[str, np.ndarray]:
    array = np.asarray([ids] * rows, dtype=np.int64)
    return {"input_ids": array, "attention_mask": np.ones_like(array)}


def child(args: argparse.Namespace) -> None:
    artifacts = {form: WORK / "artifacts" / name for form, (name, _, _) in FORMS.items()}
    ids = token_ids(args.length)
    rows = ROWS.get(args.length, 1)
    started = time.perf_counter()
    fn = scorer(args.system, artifacts, plain_graph())
    load_s = time.perf_counter() - started
    loaded_mib = common.peak_rss_mib()  # after loading, before the first call
    first = time.perf_counter()
    logit = float(np.asarray(fn(ids, rows)).ravel()[0])
    first_s = time.perf_counter() - first
    times = common.pass_seconds(lambda: fn(ids, rows), args.passes)
    print(json.dumps({"system": args.system, "length": len(ids), "rows": rows, "load_s": load_s, "first_s": first_s,
                      "times_s": times, "median_s": statistics.median(times), "logit": logit,
                      "peak_rss_mib": common.peak_rss_mib(), "loaded_rss_mib": loaded_mib}))


def run_child(system: str, length: int, passes: int) -> dict:
    """One (system, length) in a fresh process; its peak RSS is its own ``VmHWM`` (``os.wait4``'s would
    carry this driver's peak across fork + exec)."""
    proc = subprocess.run([sys.executable, __file__, "--child", "--system", system, "--length", str(length),
                           "--passes", str(passes)], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        return {"system": system, "length": length, "error": f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def targets(rows: list[dict]) -> list[dict]:
    """Issue 17's speed and memory targets, from this run's rows."""
    def best(prefix: str, length: int) -> dict | None:
        found = [r for r in rows if r["system"].startswith(prefix) and r["length"] == length and "median_s" in r]
        return min(found, key=lambda r: r["median_s"]) if found else None

    out = []
    for length, vs_full, vs_plain in ((4096, 1.8, 2.2), (7999, 2.2, None), (512, 1.0, None), (256, 1.0, None),
                                      (128, 1.0, None)):
        banded, full, plain = best("rerankrt-banded", length), best("rerankrt-full", length), best("plain", length)
        if banded and full:
            ratio = full["median_s"] / banded["median_s"]
            out.append({"target": f"{length} tokens: banded vs the full-form graph", "goal": f"≥ {vs_full}×",
                        "ratio": ratio, "passed": ratio >= vs_full,
                        "detail": f"{banded['system']} {banded['median_s'] * 1000:,.0f} ms vs {full['system']} "
                                  f"{full['median_s'] * 1000:,.0f} ms"})
        if banded and plain and vs_plain:
            ratio = plain["median_s"] / banded["median_s"]
            out.append({"target": f"{length} tokens: banded vs the best plain export", "goal": f"≥ {vs_plain}×",
                        "ratio": ratio, "passed": ratio >= vs_plain,
                        "detail": f"{plain['system']} {plain['median_s'] * 1000:,.0f} ms"})
    def per_backend(lengths, before: str, what: str, goal: str, threshold: float, with_rss: bool) -> None:
        """The banded (current) form against ``before``'s form on the same backend, at each length."""
        def cell(row: dict) -> str:
            rss = f" ({row['peak_rss_mib']:,.0f} MiB)" if with_rss else ""
            return f"{row['median_s'] * 1000:,.1f} ms{rss}"

        for length in lengths:
            for backend in ("ort", "ov"):
                current = best(f"rerankrt-banded-{backend}", length)
                other = best(f"rerankrt-{before}-{backend}", length)
                if current and other:
                    ratio = other["median_s"] / current["median_s"]
                    out.append({"target": f"{length} tokens on {backend}: {what}", "goal": goal, "ratio": ratio,
                                "passed": ratio >= threshold, "detail": f"{cell(current)} vs {cell(other)}"})

    # per backend: the form a backend runs best at short lengths; query chunks of the global layers at every length
    per_backend((128, 256, 512), "full", "banded vs full (same backend)", "≥ 1.0× (per backend)", 1.0, False)
    per_backend(sorted({r["length"] for r in rows}), "unchunked", "query-chunked global layers vs unchunked",
                "≥ 1.0× (noise ±5%)", 0.95, True)
    longest = [r for r in rows if r["system"].startswith("rerankrt-banded") and r["length"] == max(LENGTHS)
               and "peak_rss_mib" in r]
    for r in longest:
        out.append({"target": f"one {r['length']}-token pair: peak RSS ({r['system']})", "goal": "≤ 1 GB",
                    "ratio": None, "passed": r["peak_rss_mib"] * 2**20 <= 1e9,
                    "detail": f"{r['peak_rss_mib']:,.0f} MiB (the whole process: interpreter, runtime, model)"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--system", choices=SYSTEMS)
    parser.add_argument("--length", type=int)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds for lengths up to 512 (median)")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--out", type=Path, default=common.REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    for form in FORMS:
        artifact_for(form)
    plain_graph()
    environment = common.run_environment(("openvino",))
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        # short batches take ~0.1 s: a noisy neighbour for a few seconds swings one child's median by 2x, so
        # they run in --rounds interleaved rounds (every system once per round) and keep the median round
        rounds = args.rounds if length <= 512 else 1
        found: dict[str, list[dict]] = {system: [] for system in args.systems.split(",")}
        for _ in range(rounds):
            for system in found:
                found[system].append(run_child(system, length, args.passes if length > 512 else 4 * args.passes))
        for system, runs in found.items():
            ok = sorted((r for r in runs if "median_s" in r), key=lambda r: r["median_s"])
            row = dict(ok[len(ok) // 2], round_medians_s=[r["median_s"] for r in runs if "median_s" in r],
                       peak_rss_mib=max(r["peak_rss_mib"] for r in ok)) if ok else runs[0]
            common.say(f"{length:>5} tokens {system:<20} " + (f"{row['median_s'] * 1000:9,.1f} ms  "
                       f"RSS {row['peak_rss_mib']:,.0f} MiB  logit {row['logit']:.5f}" if "median_s" in row
                       else row["error"]))
            rows.append(row)
    goals = targets(rows)
    systems = args.systems.split(",")
    lengths = sorted({r["length"] for r in rows})
    body = ["fp32, distilled 17m, " + f"{common.THREADS} threads. One call scores a batch of identical-length rows: "
            + ", ".join(f"{n} × {length}" for length, n in ROWS.items()) + " tokens (what the CPU token budget "
            "puts in one batch), one pair from 2,048 tokens on. Each cell: median of the timed calls "
            f"({4 * args.passes} for short batches, {args.passes} for long ones) after a warm-up, in a fresh process; "
            f"short batches: the median of {args.rounds} interleaved rounds (ms per call; peak RSS MiB).", "",
            "| tokens × rows | " + " | ".join(systems) + " |", "|---:|" + "---:|" * len(systems)]
    for length in lengths:
        cells = []
        for system in systems:
            r = next((r for r in rows if r["system"] == system and r["length"] == length), {})
            cells.append(f"{r['median_s'] * 1000:,.0f} ({r['peak_rss_mib']:,.0f})" if "median_s" in r else "—")
        body.append(f"| {length:,} × {ROWS.get(length, 1)} | " + " | ".join(cells) + " |")
    body += ["", "| target | goal | ratio | met | detail |", "|---|---|---:|---|---|"]
    body += [f"| {g['target']} | {g['goal']} | {common.fmt(g['ratio'], '.2f')} | {'yes' if g['passed'] else 'NO'} | "
             f"{g['detail']} |" for g in goals]
    spread = {length: np.ptp([r["logit"] for r in rows if r["length"] == length and "logit" in r])
              for length in lengths}
    body += ["", "Largest logit difference between systems per length (all compute the same function): "
             + ", ".join(f"{k:,}: {v:.1e}" for k, v in spread.items())]
    common.write_report(args.out, "long", "Long documents: banded vs full sliding-window attention",
                        "python benchmarks/bench_long.py " + " ".join(sys.argv[1:]), environment,
                        rows + [{"targets": goals}], body)


if __name__ == "__main__":
    main()
