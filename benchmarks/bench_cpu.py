"""CPU benchmark: sentence-transformers ``CrossEncoder`` (torch fp32) vs rerankrt fp32 and int8, in one run.

Why one command: a speed-up is only meaningful against a baseline measured on the same machine, in
the same run, on the same pairs. The driver builds (and caches) Ettin-shaped models and their
artifacts, writes the workloads, then runs every system in its own subprocess, one after another,
so peak RSS and cold start belong to that system alone. It writes one JSON row per
model × workload × system and a markdown summary with the hardware it ran on.

    python benchmarks/bench_cpu.py --models 17m,32m,68m,150m --out benchmarks/results
    python benchmarks/bench_cpu.py --smoke --out /tmp/bench_smoke      # end-to-end check, seconds

``python benchmarks/bench_cpu.py worker ...`` is the per-system measurement; the driver calls it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path

# Cold start is measured from the parent's spawn time; this marks when the interpreter reached
# our code (only the stdlib imported so far), so the report can split launch from loading.
SCRIPT_START = time.time()

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
TOKENIZER_FILE = SHARED / "data" / "modernbert-tokenizer.json"
DISTILLED_DIR = SHARED / "models" / "ettin-17m-distilled"
DISTILLED_NAME = "17m-distilled"
NEGCONSTRAINT_DIR = SHARED / "data" / "negconstraint"
SCIFACT_FILE = SHARED / "data" / "scifact" / "abstracts.jsonl"

THREADS = 2
MAX_LENGTH = 512
SYSTEMS = ("st", "rerankrt-fp32", "rerankrt-int8")
WORKLOADS = ("negconstraint", "scifact")
ST_BATCH_SIZES = (16, 32, 64)
# st on 68m scores ~7 pairs/s on a 2-core machine: cap the big models so a run stays within an hour.
DEFAULT_PAIRS_LIMIT = {"17m": 1000, "32m": 1000, "68m": 300, "150m": 300, DISTILLED_NAME: 1000}
PEAK_SHAPE = (2048, 512, 2048)  # M, K, N of the matmul that measures the fp32 peak

PredictFn = Callable[[list[tuple[str, str]], "int | None"], np.ndarray]
RankFn = Callable[[str, list[str], "int | None"], list]


def say(message: str, tag: str = "bench_cpu") -> None:
    print(f"[{tag}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Worker: one system, one model, one workload, in a fresh process.
# ---------------------------------------------------------------------------------------------
def read_pairs(path: Path) -> tuple[list[tuple[str, str]], list[int]]:
    """Pairs and their query index (the group for per-query top-10 agreement and rank latency)."""
    pairs, groups = [], []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            pairs.append((row["query"], row["document"]))
            groups.append(row["query_index"])
    return pairs, groups


def load_scorer(system: str, model_dir: Path, artifact_dir: Path) -> tuple[PredictFn, RankFn]:
    """``predict(pairs, batch_size)`` and ``rank(query, docs, batch_size)`` for one system.

    Imports happen here, not at module level, so each worker pays only for its own stack
    (torch + sentence-transformers, or onnxruntime) in cold start and RSS.
    """
    if system == "st":
        import torch
        from sentence_transformers import CrossEncoder

        torch.set_num_threads(THREADS)
        model = CrossEncoder(str(model_dir), device="cpu", max_length=MAX_LENGTH)

        def st_predict(pairs: list[tuple[str, str]], batch_size: int | None) -> np.ndarray:
            return np.asarray(model.predict(pairs, batch_size=batch_size or 32, show_progress_bar=False), np.float32)

        def st_rank(query: str, docs: list[str], batch_size: int | None) -> list:
            return model.rank(query, docs, batch_size=batch_size or 32, show_progress_bar=False)

        return st_predict, st_rank

    from rerankrt.engine import Reranker

    # onnxruntime pinned: this script measures the core runtime; bench_cpu_peers.py covers OpenVINO
    reranker = Reranker.from_pretrained(artifact_dir, precision=system.removeprefix("rerankrt-"), threads=THREADS,
                                        max_length=MAX_LENGTH, backend="onnxruntime")
    return (lambda pairs, batch_size: reranker.predict(pairs, batch_size=batch_size),
            lambda query, docs, batch_size: reranker.rank(query, docs, batch_size=batch_size))


def peak_rss_mib() -> float:
    """This process's peak resident set.

    ``VmHWM`` first: Linux carries ``ru_maxrss`` across fork + exec, so a worker spawned by a
    driver that once held torch would report the driver's peak, not its own. ``ru_maxrss`` (KiB
    on Linux) is the fallback where ``/proc`` is missing.
    """
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def measure_scorer(predict: PredictFn, rank: RankFn, pairs: list[tuple[str, str]], groups: list[int], passes: int,
                   latency_calls: int, spawn_time: float, batch_sizes: tuple[int, ...] = ()) -> tuple[dict, np.ndarray]:
    """Cold start, throughput, ``rank`` latency and peak RSS of a loaded scorer; returns ``(result, scores)``.

    ``batch_sizes`` (sentence-transformers): try each and time the passes with the fastest;
    empty (rerankrt and anything behind its ``Reranker``): batches are cut by the token budget.
    The first call, one pair, ends the cold start that began at ``spawn_time`` in the parent.
    """
    predict(pairs[:1], None)
    first_score = time.time()

    if batch_sizes:
        # sentence-transformers has a fixed batch size; give it its best one. The first (short)
        # call pays one-off allocations so that no trial is penalised for going first.
        predict(pairs[:max(batch_sizes)], max(batch_sizes))
        trials = {bs: timed(partial(predict, pairs, bs))[0] for bs in batch_sizes}
        batch_size = min(trials, key=trials.get)
    else:
        predict(pairs, None)  # warm-up pass; rerankrt cuts batches by its token budget
        trials, batch_size = {}, None

    pass_times, scores = [], None
    for _ in range(passes):
        seconds, scores = timed(partial(predict, pairs, batch_size))
        pass_times.append(seconds)

    by_query: dict[int, tuple[str, list[str]]] = {}
    for (query, doc), group in zip(pairs, groups):
        by_query.setdefault(group, (query, []))[1].append(doc)
    queries = list(by_query.values())
    latencies = []
    for i in range(latency_calls):
        query, docs = queries[i % len(queries)]
        latencies.append(timed(partial(rank, query, docs, batch_size))[0] * 1e3)

    median_pass = statistics.median(pass_times)
    result = {
        "n_pairs": len(pairs),
        "batch_size": batch_size,
        "batch_size_trials_s": {str(k): round(v, 4) for k, v in trials.items()},
        "pass_times_s": [round(t, 4) for t in pass_times],
        "pairs_per_s": len(pairs) / median_pass,
        "rank_latency_ms": {"p50": float(np.percentile(latencies, 50)), "p95": float(np.percentile(latencies, 95)),
                            "calls": len(latencies), "docs": len(queries[0][1])},
        "cold_start_s": first_score - spawn_time,
        "launch_s": SCRIPT_START - spawn_time,
        "peak_rss_mib": peak_rss_mib(),
    }
    return result, np.asarray(scores, np.float32)


def write_worker_output(out_prefix: Path, result: dict, scores: np.ndarray | None) -> None:
    """``<prefix>.json`` (timings, RSS) and, when scored, ``<prefix>.npy`` (the scores, input order)."""
    if scores is not None:
        np.save(out_prefix.with_suffix(".npy"), np.asarray(scores, np.float32))
    out_prefix.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


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


# ---------------------------------------------------------------------------------------------
# Driver: models, workloads, the machine, then every system in turn.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Model:
    name: str
    source_dir: Path  # the CrossEncoder directory sentence-transformers loads
    artifact_dir: Path
    pairs_limit: int


@dataclass(frozen=True)
class Workload:
    """Every query paired with every document, as in retrieve-then-rerank."""

    name: str
    queries: list[str]
    documents: list[str]

    def n_queries(self, pairs_limit: int) -> int:
        """Whole queries only, so per-query top-10 and the rank latency see full candidate lists."""
        return min(len(self.queries), max(1, pairs_limit // len(self.documents)))

    def write_pairs(self, path: Path, n_queries: int) -> Path:
        """The JSONL the workers read: every system scores exactly these pairs, in this order."""
        with path.open("w", encoding="utf-8") as fh:
            for qi, query in enumerate(self.queries[:n_queries]):
                for doc in self.documents:
                    fh.write(json.dumps({"query_index": qi, "query": query, "document": doc}) + "\n")
        return path


def read_texts(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh]


def load_workloads(names: list[str], n_queries: int, n_docs: int, n_abstracts: int) -> list[Workload]:
    """Sampled from ../shared/data at run time (the text never enters the repository)."""
    rng = random.Random(0)  # same draws as random.seed(0) + random.sample
    queries = rng.sample(read_texts(NEGCONSTRAINT_DIR / "queries.jsonl"), n_queries)
    docs = rng.sample(read_texts(NEGCONSTRAINT_DIR / "corpus.jsonl"), n_docs)
    abstracts = random.Random(0).sample(read_texts(SCIFACT_FILE), n_abstracts)
    available = {"negconstraint": Workload("negconstraint", queries, docs),
                 "scifact": Workload("scifact", queries, abstracts)}
    return [available[name] for name in names]


def prepare_model(name: str, work: Path, pairs_limit: int | None, precisions: tuple[str, ...] = ("fp32", "int8"),
                  force_export: bool = False, tag: str = "bench_cpu") -> Model:
    """Build the fixture (unless it is the distilled model) and export it, reusing cached copies.

    The cached artifact is re-exported when it lacks one of ``precisions`` or ``force_export`` is set.
    """
    from rerankrt.export.fixtures import make_ettin_fixture
    from rerankrt.export.pipeline import export

    rebuilt = False
    if name == DISTILLED_NAME:
        source = DISTILLED_DIR
    else:
        source = work / "fixtures" / name
        if not (source / "modules.json").is_file():
            say(f"building the random-weight {name} fixture", tag)
            partial = source.with_name(name + ".partial")  # a crash never leaves a half fixture behind
            shutil.rmtree(partial, ignore_errors=True)
            make_ettin_fixture(partial, name, tokenizer_file=TOKENIZER_FILE, max_length=7999)
            shutil.rmtree(source, ignore_errors=True)
            partial.rename(source)
            rebuilt = True
    artifact = work / "artifacts" / name
    manifest = artifact / "manifest.json"
    if (rebuilt or force_export or not manifest.is_file()
            or set(precisions) - set(json.loads(manifest.read_text())["graphs"])):
        say(f"exporting {name} ({', '.join(precisions)})", tag)
        export(str(source), artifact, precisions=list(precisions), allow_parity_failure=True, overwrite=True,
               log=None)
    limit = pairs_limit if pairs_limit is not None else DEFAULT_PAIRS_LIMIT.get(name, 1000)
    return Model(name, source, artifact, limit)


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("rerankrt", "torch", "onnxruntime", "onnx", "sentence-transformers", "transformers", "tokenizers",
                "numpy", *extra):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def hardware_info() -> dict:
    """What decides which precision wins: the CPU's vector/matrix features (AVX2, AVX-512, VNNI, BF16, AMX)."""
    from rerankrt.engine.hardware import cpu_info

    info = cpu_info()
    return {"cpu": info.summary(), "flags": " ".join(sorted(info.flags)), "os_cpu_count": os.cpu_count(),
            "platform": platform.platform()}


def measure_matmul_peak(threads: int = THREADS, runs: int = 15) -> dict:
    """fp32 GFLOP/s of one large MatMul in onnxruntime: the ceiling the models' matmuls can approach.

    B is an initializer, as weights are in the models, so onnxruntime may prepack it the same way.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = PEAK_SHAPE
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "B")
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "matmul_peak",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("C", TensorProto.FLOAT, [m, n])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"A": rng.standard_normal((m, k), dtype=np.float32)}
    for _ in range(3):
        session.run(None, feed)
    median_s = statistics.median(timed(lambda: session.run(None, feed))[0] for _ in range(runs))
    return {"gflops": 2 * m * k * n / median_s / 1e9, "shape_mkn": list(PEAK_SHAPE), "threads": threads,
            "runs": runs, "median_s": median_s}


def token_lengths(model: Model, pairs: list[tuple[str, str]]) -> np.ndarray:
    """Unpadded lengths with the artifact's own tokenizer, truncated at MAX_LENGTH as every system does."""
    from rerankrt.engine.artifact import load_artifact
    from rerankrt.engine.tokenize import PairTokenizer

    artifact = load_artifact(model.artifact_dir)
    spec = artifact.tokenizer_spec
    tokenizer = PairTokenizer(artifact.tokenizer_path, MAX_LENGTH, spec["pad_id"], spec["cls_id"], spec["sep_id"])
    return np.array([len(ids) for ids in tokenizer.encode(pairs)], dtype=np.float64)


def estimate_flops(config: dict, lengths: np.ndarray) -> float:
    """Useful FLOPs of the encoder over the workload: an estimate, not a count.

    Per token per layer: 2·(4H² + 3HI) for the QKV/output projections and the gated MLP, plus
    2·2·S·H for QKᵀ and AV, with S the pair's length on global layers and min(S, window) on
    sliding ones. Padding, embeddings, norms, softmax and the head are left out.
    """
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    layers = config["num_hidden_layers"]
    every = config.get("global_attn_every_n_layers", 1)
    types = config.get("layer_types") or ["full_attention" if i % every == 0 else "sliding_attention"
                                          for i in range(layers)]
    window = config.get("local_attention", 128) + 1
    dense = 2 * (4 * hidden * hidden + 3 * hidden * inter) * lengths.sum() * layers
    attention = sum(float((4 * hidden * lengths * (lengths if kind == "full_attention"
                                                   else np.minimum(lengths, window))).sum()) for kind in types)
    return float(dense + attention)


def spawn_worker(script: Path, worker_args: list[str], out_prefix: Path, env: dict[str, str] | None = None) -> dict:
    """Run ``script worker ARGS --spawn-time NOW`` and wait; returns the ``<out_prefix>.json`` it wrote.

    One worker at a time: systems never overlap, so neither steals the other's cores. The spawn
    time is taken last, just before the process starts, so cold start includes the interpreter.
    """
    out_prefix.with_suffix(".json").unlink(missing_ok=True)
    command = [sys.executable, str(Path(script).resolve()), "worker", *worker_args, "--out-prefix", str(out_prefix),
               "--spawn-time"]
    command.append(repr(time.time()))
    subprocess.run(command, check=True, env=env)
    return json.loads(out_prefix.with_suffix(".json").read_text(encoding="utf-8"))


def run_worker(system: str, model: Model, pairs_file: Path, out_prefix: Path, passes: int,
               latency_calls: int) -> dict:
    return spawn_worker(Path(__file__), ["--system", system, "--model-dir", str(model.source_dir),
                                         "--artifact", str(model.artifact_dir), "--pairs", str(pairs_file),
                                         "--passes", str(passes), "--latency-calls", str(latency_calls)], out_prefix)


def agreement(reference: np.ndarray, candidate: np.ndarray, groups: list[int]) -> dict:
    from rerankrt.export.parity import spearman, top_k_agreement

    delta = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    score_range = float(reference.max() - reference.min())
    return {"max_abs_delta": float(delta.max()),
            "max_rel_delta": float(delta.max() / score_range) if score_range > 0 else None,
            "reference_range": score_range, "spearman": spearman(reference, candidate),
            "top10_agreement": top_k_agreement(reference, candidate, groups, k=10)}


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
            "precision": "fp32" if system == "st" else system.removeprefix("rerankrt-"),
            "n_queries": n_queries, "docs_per_query": len(workload.documents),
            "tokens_total": int(lengths.sum()), "tokens_mean": float(lengths.mean()), **result,
            "flops_estimate": flops, "achieved_gflops": flops / median_s / 1e9,
            "fraction_of_peak": flops / median_s / 1e9 / environment["matmul_peak"]["gflops"],
        }
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


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def hardware_lines(environment: dict) -> list[str]:
    """The CPU and the features that decide which precision wins, as markdown bullets."""
    hw, cpu = environment["hardware"], environment["hardware"]["cpu"]
    flags = set(hw["flags"].split())
    yes = {True: "yes", False: "no"}
    return [
        f"- CPU: {cpu['model']} — `os.cpu_count()` = {hw['os_cpu_count']}; every system uses {THREADS} threads",
        f"- AVX2: {yes['avx2' in flags]} · AVX-512: {yes[cpu['avx512']]} · VNNI: {yes[cpu['vnni']]} · "
        f"BF16: {yes[cpu['bf16']]} · AMX: {yes[bool({'amx_bf16', 'amx_int8'} & flags)]}",
        f"- features: {' '.join(cpu['features'])}",
    ]


def run_environment(extra_packages: tuple[str, ...] = ()) -> dict:
    """Hardware, package versions and load: what every result file records beside its numbers."""
    return {"hardware": hardware_info(), "versions": package_versions(extra_packages),
            "load_average_1m": os.getloadavg()[0]}


def write_report(out: Path, prefix: str, title: str, command: str, environment: dict, rows: list[dict],
                 body: list[str]) -> None:
    """``<prefix>-<stamp>.json`` (rows + environment) and ``.md`` (title, command, hardware, ``body``); prints the markdown."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{prefix}-{stamp}.json").write_text(
        json.dumps({"stamp": stamp, "environment": environment, "rows": rows}, indent=1))
    lines = [f"# {title} — {stamp}", "", f"Command: `{command}`", "", *hardware_lines(environment),
             load_line(environment), "", *body]
    (out / f"{prefix}-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def load_line(environment: dict) -> str:
    return (f"- 1-minute load average at start: {environment['load_average_1m']:.2f}"
            + (" — **the machine was busy; timings are unreliable**" if environment["load_average_1m"] > 0.5 else ""))


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
        lines.append("")
    parity = [r for r in rows if "export_parity" in r and r["workload"] == rows[0]["workload"]]
    if parity:
        lines += ["## Export parity (builtin calibration pairs vs PyTorch; gate not enforced here)", "",
                  "| model | precision | max \\|Δ\\|/range | Spearman | top-10 | gate |", "|---|---|---:|---:|---:|---|"]
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
    names = ["tiny"] if args.smoke else list(dict.fromkeys(args.models.split(",")))
    if not args.smoke and not args.no_distilled and DISTILLED_NAME not in names:
        names.append(DISTILLED_NAME)
    systems, workload_names = args.systems.split(","), args.workloads.split(",")
    from rerankrt.export.fixtures import ETTIN_SHAPES

    for label, chosen, known in (("model", names, [*ETTIN_SHAPES, DISTILLED_NAME]), ("system", systems, SYSTEMS),
                                 ("workload", workload_names, WORKLOADS)):
        unknown = [c for c in chosen if c not in known]
        if unknown:
            raise SystemExit(f"unknown {label}(s) {unknown}; choose from {list(known)}")

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
    (out / f"{run_id}.md").write_text(summary, encoding="utf-8")
    (out / "LATEST-cpu.md").write_text(summary, encoding="utf-8")
    say(f"wrote {jsonl}, {out / (run_id + '.md')} and {out / 'LATEST-cpu.md'}")
    print(summary)


def parse_args(argv: list[str]) -> argparse.Namespace:
    if argv[:1] == ["worker"]:
        parser = argparse.ArgumentParser(prog="bench_cpu.py worker", description="Measure one system (internal).")
        parser.add_argument("--system", choices=SYSTEMS, required=True)
        parser.add_argument("--model-dir", type=Path, required=True)
        parser.add_argument("--artifact", type=Path, required=True)
        parser.add_argument("--pairs", type=Path, required=True)
        parser.add_argument("--out-prefix", type=Path, required=True)
        parser.add_argument("--passes", type=int, required=True)
        parser.add_argument("--latency-calls", type=int, required=True)
        parser.add_argument("--spawn-time", type=float, required=True, help="parent's time.time() before spawning")
        args = parser.parse_args(argv[1:])
        args.mode = "worker"
        return args
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="17m,32m,68m,150m", help="Ettin sizes (fixtures.ETTIN_SHAPES)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "benchmarks" / "work",
                        help="cache for fixtures, artifacts, pairs and scores")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--pairs-limit", type=int, default=None,
                        help="max pairs per workload for every model (default: 1000 for 17m/32m, 300 for 68m/150m)")
    parser.add_argument("--no-distilled", action="store_true", help=f"leave out {DISTILLED_NAME}")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model, 2 queries × 10 docs, 1 timed pass, 2 latency calls: checks the script")
    args = parser.parse_args(argv)
    args.mode = "driver"
    return args


def main() -> None:
    args = parse_args(sys.argv[1:])
    if args.mode == "worker":
        worker_main(args)
    else:
        driver_main(args)


if __name__ == "__main__":
    main()
