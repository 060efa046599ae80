"""What the benchmark scripts share: paths to ../shared, the run settings, models and workloads,
the worker measurement, the machine's description and the report writer.

Why a module: every ``bench_*.py`` measures on the same models, pairs, threads and length, and
records the same hardware and versions beside its numbers, so one definition keeps results
comparable. The scripts run as ``python benchmarks/bench_x.py``, which puts ``benchmarks/`` first
on ``sys.path``: ``import common`` needs no path edit. Importing it loads the standard library
and numpy only; each helper imports rerankrt, torch or onnxruntime when called, so a worker pays
in cold start and RSS only for its own stack.
"""

from __future__ import annotations

import argparse
import contextlib
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
from typing import TextIO

# Cold start is measured from the parent's spawn time; this marks when the interpreter reached
# the benchmark's code (only the stdlib imported so far), so a report can split launch from loading.
SCRIPT_START = time.time()

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
TOKENIZER_FILE = SHARED / "data" / "modernbert-tokenizer.json"
DISTILLED_DIR = SHARED / "models" / "ettin-17m-distilled"
DISTILLED_NAME = "17m-distilled"
NEGCONSTRAINT_DIR = SHARED / "data" / "negconstraint"
SCIFACT_FILE = SHARED / "data" / "scifact" / "abstracts.jsonl"

# The one sys.path edit of the benchmarks: the random-weight model builders are test code
# (tests/builders.py, not part of the installed package), and the benchmarks build the same models.
sys.path.insert(1, str(REPO_ROOT / "tests"))
from builders import ETTIN_SHAPES, make_ettin_fixture  # noqa: E402  (stdlib only at import time)

THREADS = 2
MAX_LENGTH = 512
ST_BATCH_SIZES = (16, 32, 64)
MODEL_NAMES = [*ETTIN_SHAPES, DISTILLED_NAME]  # what prepare_model builds or finds
# st on 68m scores ~7 pairs/s on a 2-core machine: cap the big models so a run stays within an hour.
# The 400m and 1b score ~1 and ~0.3 pairs/s with st: a few queries' worth.
DEFAULT_PAIRS_LIMIT = {"17m": 1000, "32m": 1000, "68m": 300, "150m": 300, "400m": 60, "1b": 30,
                       DISTILLED_NAME: 1000}
PEAK_SHAPE = (2048, 512, 2048)  # M, K, N of the matmul that measures the fp32 peak

PredictFn = Callable[[list[tuple[str, str]], "int | None"], np.ndarray]
RankFn = Callable[[str, list[str], "int | None"], list]


def say(message: str) -> None:
    """A progress line on stderr, tagged with the running script's name."""
    print(f"[{Path(sys.argv[0]).stem}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Models and workloads, cached under --work.
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


def model_names(models: str, smoke: bool, with_distilled: bool) -> list[str]:
    """``--models`` as a list: the tiny model alone for ``--smoke``, else the sizes plus the distilled 17m."""
    names = ["tiny"] if smoke else list(dict.fromkeys(models.split(",")))
    if not smoke and with_distilled and DISTILLED_NAME not in names:
        names.append(DISTILLED_NAME)
    return names


def refuse_unknown(choices: dict[str, tuple[list[str], list[str]]]) -> None:
    """Stop with the known values when a ``label: (chosen, known)`` has a choice that is not known."""
    for label, (chosen, known) in choices.items():
        unknown = [c for c in chosen if c not in known]
        if unknown:
            raise SystemExit(f"unknown {label}(s) {unknown}; choose from {known}")


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


def fixture_dir(name: str, work: Path) -> tuple[Path, bool]:
    """The source model directory of ``name`` (built once into ``work/fixtures``), and whether it was just built."""
    if name == DISTILLED_NAME:
        return DISTILLED_DIR, False
    source = work / "fixtures" / name
    if (source / "modules.json").is_file():
        return source, False
    say(f"building the random-weight {name} fixture")
    partial = source.with_name(name + ".partial")  # a crash never leaves a half fixture behind
    shutil.rmtree(partial, ignore_errors=True)
    make_ettin_fixture(partial, name, tokenizer_file=TOKENIZER_FILE, max_length=7999)
    shutil.rmtree(source, ignore_errors=True)
    partial.rename(source)
    return source, True


def prepare_model(name: str, work: Path, pairs_limit: int | None, precisions: tuple[str, ...] = ("fp32", "int8"),
                  force_export: bool = False) -> Model:
    """Build the fixture (unless it is the distilled model) and export it, reusing cached copies.

    The cached artifact is re-exported when it lacks one of ``precisions``, when its graph form is not
    the exporter's current default (an artifact cached before a graph change would measure the old graph),
    or when ``force_export`` is set.
    """
    from rerankrt.export.pipeline import export

    source, rebuilt = fixture_dir(name, work)
    artifact = work / "artifacts" / name
    manifest = artifact / "manifest.json"
    if (rebuilt or force_export or not manifest.is_file()
            or set(precisions) - set(json.loads(manifest.read_text())["graphs"])
            or _stale_graph_form(json.loads(manifest.read_text()))):
        say(f"exporting {name} ({', '.join(precisions)})")
        export(str(source), artifact, precisions=list(precisions), allow_parity_failure=True, overwrite=True,
               log=None)
    limit = pairs_limit if pairs_limit is not None else DEFAULT_PAIRS_LIMIT.get(name, 1000)
    return Model(name, source, artifact, limit)


def _stale_graph_form(manifest: dict) -> bool:
    """A native ModernBERT graph exported with other forms than today's defaults (an artifact cached before a
    graph change would measure the old graph): banded sliding layers, the default query chunks, the
    attention-op forms onnxruntime loads on CPUs (written wherever this onnxruntime can verify them), and what
    int8 keeps fp32 (the first layer's attention since issue 16's second pass, which also put the attention-op
    form's short batches behind an ``If``)."""
    from rerankrt.engine.backends import ATTENTION_OP_FORM, onnxruntime_reads_attention_op
    from rerankrt.export.graph import GLOBAL_QUERY_CHUNKS
    from rerankrt.export.passes.matmuls import KEEP_FP32_LAYERS, fp32_layers

    fp32, int8 = manifest["graphs"]["fp32"], manifest["graphs"].get("int8")
    layers = int(manifest.get("architecture", {}).get("num_hidden_layers") or 0)  # written as null when unknown
    return fp32.get("graph_form") == "native-modernbert" and (
        fp32.get("local_attention") != "banded" or fp32.get("global_query_chunks") != GLOBAL_QUERY_CHUNKS
        or (onnxruntime_reads_attention_op() and ATTENTION_OP_FORM not in fp32.get("forms", {}))
        or (int8 is not None and int8.get("fp32_layers") != fp32_layers(layers, KEEP_FP32_LAYERS)))


# ---------------------------------------------------------------------------------------------
# Workers: one system in a fresh process, spawned and read back by a driver.
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

    if system == "rerankrt-auto":  # what a user gets by default on this machine (the tuning cache's decision)
        reranker = Reranker.from_pretrained(artifact_dir, threads=THREADS, max_length=MAX_LENGTH)
    else:  # onnxruntime pinned: this script measures the core runtime; bench_cpu_peers.py covers OpenVINO
        reranker = Reranker.from_pretrained(artifact_dir, precision=system.removeprefix("rerankrt-"),
                                            threads=THREADS, max_length=MAX_LENGTH, backend="onnxruntime")
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


def graph_runner(path: Path, runtime: str, hint: str | None = "f32", threads: int = THREADS) -> Callable:
    """``run(input_ids, attention_mask) -> logits`` of a bare OpenVINO (``hint``: its inference precision) or
    onnxruntime CPU session on one graph file: what the graph-form benchmarks time, without the engine around it."""
    if runtime == "openvino":
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        if hint is None:  # OpenVINO's own default (bf16 on BF16 CPUs)
            del config["INFERENCE_PRECISION_HINT"]
        request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
        return lambda i, m: request.infer({"input_ids": i, "attention_mask": m})[0]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda i, m: session.run(None, {"input_ids": i, "attention_mask": m})[0]


def batches_by_multiple(ids: list[list[int]], pad_id: int, multiples: tuple[int, ...] = (1, 16)) -> dict[int, list]:
    """``ids`` in the engine's token-budget batches (2,048 tokens, ≤ 256 rows), padded to each width multiple
    (16: OpenVINO int8's shape buckets)."""
    from rerankrt.engine.batching import BatchPolicy, pad_batch, plan_batches

    lengths = np.array([len(t) for t in ids])
    out = {}
    for multiple in multiples:
        policy = BatchPolicy(token_budget=2048, max_batch_size=256, pad_to_multiple_of=multiple)
        out[multiple] = [pad_batch(ids, b, pad_id, multiple) for b in plan_batches(lengths, policy)]
    return out


def scored_pass(run: Callable, batches: list, rows: int) -> tuple[np.ndarray, float]:
    """One pass of ``run`` over ``batches``: the scores in input order and the seconds it took."""
    out = np.empty(rows, np.float32)
    started = time.perf_counter()
    for batch in batches:
        out[batch.indices] = np.asarray(run(batch.input_ids, batch.attention_mask)).reshape(-1)
    return out, time.perf_counter() - started


def graph_bench_args(doc: str, script: str) -> argparse.Namespace:
    """``--out --work --rounds --emulate-avx2`` of the one-process graph benchmarks (int8 profile, attention
    forms); with ``--emulate-avx2`` the script re-executes itself under the AVX2 emulation first."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "benchmarks" / "work")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--emulate-avx2", action="store_true", help="re-run as an AVX2-only CPU (avx2_emulation.py)")
    args = parser.parse_args()
    if args.emulate_avx2:
        import avx2_emulation

        avx2_emulation.reexec_emulated(args.work.resolve(), [str(Path(script).resolve()), *sys.argv[1:]])
    return args


@dataclass(frozen=True)
class GraphWorkload:
    """The graph benchmarks' workload: 3 negconstraint queries × 100 documents, tokenized and in batches."""

    ids: list[list[int]]
    batches: dict[int, list]  # width multiple → the engine's 2,048-token batches
    groups: list[int]  # the query of each pair, for top-10 agreement


def graph_workload(tokenizer) -> GraphWorkload:
    workload = load_workloads(["negconstraint"], 10, 100, 30)[0]
    pairs = [(q, d) for q in workload.queries[:3] for d in workload.documents]
    ids = tokenizer.encode(pairs)
    return GraphWorkload(ids, batches_by_multiple(ids, tokenizer.pad_id),
                         [i // len(workload.documents) for i in range(len(pairs))])


def interleaved_graph_rows(configs: dict[tuple, tuple[Callable, int]], workload: GraphWorkload, rounds: int,
                           reference_key: tuple) -> dict[tuple, dict]:
    """Time ``configs`` (key → (run, width multiple)) interleaved: a warm-up pass of each (its scores kept), then
    ``rounds`` rounds of one pass each. Per key: pairs/s (median), pass times, and fidelity against
    ``reference_key``'s scores."""
    from rerankrt.engine.agreement import spearman, top_k_agreement

    rows = len(workload.ids)
    scores = {key: scored_pass(run, workload.batches[multiple], rows)[0] for key, (run, multiple) in configs.items()}
    times: dict[tuple, list[float]] = {key: [] for key in configs}
    for round_ in range(rounds):
        say(f"round {round_ + 1}/{rounds}")
        for key, (run, multiple) in configs.items():
            times[key].append(scored_pass(run, workload.batches[multiple], rows)[1])
    reference = scores[reference_key]
    return {key: {"pairs_per_s": rows / statistics.median(times[key]),
                  "pass_times_s": [round(t, 4) for t in times[key]],
                  "max_abs_delta": float(np.abs(scores[key] - reference).max()),
                  "spearman": spearman(reference, scores[key]),
                  "top10": top_k_agreement(reference, scores[key], workload.groups)} for key in configs}


def pass_seconds(fn: Callable[[], object], passes: int = 3) -> list[float]:
    """Seconds of each of ``passes`` calls of ``fn`` (the caller warms up first)."""
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


class ScorerSession:
    """One loaded scorer measured step by step: cold start and warm-up at construction, then timed passes and
    ``rank`` latencies on request, then :meth:`result`.

    Why steps: issue 16's yardstick compares systems a few percent apart, and running each system's passes
    back to back in its own process drifts more than that over a run of minutes (thermal state, noisy
    neighbours). A driver that holds every system's worker alive can ask each for one pass in turn
    (:class:`InterleavedWorker`), so every system sees the same minutes of the machine.

    ``batch_sizes`` (sentence-transformers): try each and time the passes with the fastest;
    empty (rerankrt and anything behind its ``Reranker``): batches are cut by the token budget.
    The first call, one pair, ends the cold start that began at ``spawn_time`` in the parent.
    """

    def __init__(self, predict: PredictFn, rank: RankFn, pairs: list[tuple[str, str]], groups: list[int],
                 spawn_time: float, batch_sizes: tuple[int, ...] = ()) -> None:
        self.predict, self.rank, self.pairs, self.spawn_time = predict, rank, pairs, spawn_time
        predict(pairs[:1], None)
        self.first_score = time.time()
        if batch_sizes:
            # sentence-transformers has a fixed batch size; give it its best one. The first (short)
            # call pays one-off allocations so that no trial is penalised for going first.
            predict(pairs[:max(batch_sizes)], max(batch_sizes))
            self.trials = {bs: timed(partial(predict, pairs, bs))[0] for bs in batch_sizes}
            self.batch_size: int | None = min(self.trials, key=self.trials.get)
        else:
            predict(pairs, None)  # warm-up pass; rerankrt cuts batches by its token budget
            self.trials, self.batch_size = {}, None
        by_query: dict[int, tuple[str, list[str]]] = {}
        for (query, doc), group in zip(pairs, groups):
            by_query.setdefault(group, (query, []))[1].append(doc)
        self.queries = list(by_query.values())
        self.pass_times: list[float] = []
        self.latencies_ms: list[float] = []
        self.scores: np.ndarray | None = None

    def timed_pass(self) -> float:
        """Score every pair once; returns the seconds and keeps the scores (input order)."""
        seconds, scores = timed(partial(self.predict, self.pairs, self.batch_size))
        self.pass_times.append(seconds)
        self.scores = np.asarray(scores, np.float32)
        return seconds

    def rank_calls(self, calls: int) -> list[float]:
        """``calls`` timed ``rank`` calls, one query's documents each (cycling through the queries), in ms."""
        out = []
        for _ in range(calls):
            query, docs = self.queries[len(self.latencies_ms) % len(self.queries)]
            out.append(timed(partial(self.rank, query, docs, self.batch_size))[0] * 1e3)
            self.latencies_ms.append(out[-1])
        return out

    def result(self) -> dict:
        median_pass = statistics.median(self.pass_times)
        return {
            "n_pairs": len(self.pairs),
            "batch_size": self.batch_size,
            "batch_size_trials_s": {str(k): round(v, 4) for k, v in self.trials.items()},
            "pass_times_s": [round(t, 4) for t in self.pass_times],
            "pairs_per_s": len(self.pairs) / median_pass,
            "rank_latency_ms": {"p50": float(np.percentile(self.latencies_ms, 50)) if self.latencies_ms else None,
                                "p95": float(np.percentile(self.latencies_ms, 95)) if self.latencies_ms else None,
                                "calls": len(self.latencies_ms), "docs": len(self.queries[0][1])},
            "cold_start_s": self.first_score - self.spawn_time,
            "launch_s": SCRIPT_START - self.spawn_time,
            "peak_rss_mib": peak_rss_mib(),
        }


def measure_scorer(predict: PredictFn, rank: RankFn, pairs: list[tuple[str, str]], groups: list[int], passes: int,
                   latency_calls: int, spawn_time: float, batch_sizes: tuple[int, ...] = ()) -> tuple[dict, np.ndarray]:
    """Cold start, ``passes`` timed passes back to back, ``rank`` latency and peak RSS of a loaded scorer;
    returns ``(result, scores)`` (see :class:`ScorerSession`)."""
    session = ScorerSession(predict, rank, pairs, groups, spawn_time, batch_sizes)
    for _ in range(passes):
        session.timed_pass()
    session.rank_calls(latency_calls)
    return session.result(), session.scores


# ---------------------------------------------------------------------------------------------
# Interleaved workers: every system loaded in its own long-lived process, one pass of each in turn.
# ---------------------------------------------------------------------------------------------
REPLY_MARK = "@@interleaved "


def reply_channel() -> TextIO:
    """The worker's private line to the driver: the real stdout; fd 1 itself then points at stderr.

    Called first thing in an interleaved worker, so anything a library prints to stdout (at import or
    later) lands on stderr instead of corrupting the replies.
    """
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    os.dup2(2, 1)
    return channel


def serve_interleaved(session: ScorerSession, channel: TextIO, ready: dict) -> None:
    """Answer the driver: ``ready`` once loaded and warm, then one JSON reply per command read from stdin —
    ``pass`` (one timed pass), ``latency N`` (N rank calls), ``finish`` (stop; the caller writes the result)."""

    def reply(message: dict) -> None:
        channel.write(REPLY_MARK + json.dumps(message) + "\n")
        channel.flush()

    reply({"ready": True, **ready})
    for line in sys.stdin:
        if not line.strip():
            continue
        command, *rest = line.split()
        if command == "pass":
            reply({"seconds": session.timed_pass()})
        elif command == "latency":
            reply({"latencies_ms": session.rank_calls(int(rest[0]))})
        elif command == "finish":
            return
        else:
            reply({"error": f"unknown command {command!r}"})


class InterleavedWorker:
    """The driver's end of one interleaved worker (``script worker ARGS --interleaved``).

    Workers are started one at a time (each start waits until the worker is loaded and warm, so
    cold starts never overlap), then driven one command at a time: at most one worker computes at
    any moment, the rest wait on their stdin. A worker that dies raises ``CalledProcessError``; there is
    no timeout (as with :func:`spawn_worker`): a hung worker holds the run until it is interrupted.
    """

    SETTLE_S = 0.2  # after each reply: lets the last worker's spinning thread pools go to sleep

    def __init__(self, script: Path, worker_args: list[str], out_prefix: Path,
                 env: dict[str, str] | None = None) -> None:
        self.out_prefix = out_prefix
        self.command = worker_command(script, [*worker_args, "--interleaved"], out_prefix)
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                        text=True, encoding="utf-8")
        try:
            self.ready = self._read()
        except BaseException:  # a dead, hung-up or garbled start (or Ctrl-C): never leave the process behind
            self.kill()
            raise

    def _read(self) -> dict:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(REPLY_MARK):
                time.sleep(self.SETTLE_S)
                return json.loads(line[len(REPLY_MARK):])
            sys.stderr.write(line)  # not a reply: pass it on
        raise subprocess.CalledProcessError(self.process.wait(), self.command)

    def ask(self, command: str) -> dict:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise subprocess.CalledProcessError(self.process.wait(), self.command) from None
        return self._read()

    def finish(self) -> dict:
        """Stop the worker; returns the ``<out_prefix>.json`` it wrote (its whole result)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write("finish\n")
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        returncode = self.process.wait()
        self._close()
        if returncode:
            raise subprocess.CalledProcessError(returncode, self.command)
        return json.loads(self.out_prefix.with_suffix(".json").read_text(encoding="utf-8"))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close()

    def _close(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()


def write_worker_output(out_prefix: Path, result: dict, scores: np.ndarray | None) -> None:
    """``<prefix>.json`` (timings, RSS) and, when scored, ``<prefix>.npy`` (the scores, input order)."""
    if scores is not None:
        np.save(out_prefix.with_suffix(".npy"), np.asarray(scores, np.float32))
    out_prefix.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def worker_parser(prog: str, systems) -> argparse.ArgumentParser:
    """The arguments every ``<script> worker`` takes; :func:`spawn_worker` adds the last two."""
    parser = argparse.ArgumentParser(prog=prog, description="Measure one system (internal).")
    parser.add_argument("--system", choices=list(systems), required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--passes", type=int, required=True)
    parser.add_argument("--latency-calls", type=int, required=True)
    parser.add_argument("--out-prefix", type=Path, required=True)
    parser.add_argument("--spawn-time", type=float, required=True, help="parent's time.time() before spawning")
    parser.add_argument("--interleaved", action="store_true",
                        help="stay loaded and answer the driver's commands on stdin (InterleavedWorker)")
    return parser


def add_run_arguments(parser: argparse.ArgumentParser, work_help: str) -> None:
    """The driver options every model × system benchmark takes: where results and the cache go, the models."""
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "benchmarks" / "work", help=work_help)
    parser.add_argument("--no-distilled", action="store_true", help=f"leave out {DISTILLED_NAME}")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model, 2 queries × 10 docs, 1 timed pass, 2 latency calls: checks the script")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="run as an AVX2-only CPU would: kernels dispatched without AVX-512 (avx2_emulation.py)")


def run_driver_or_worker(parse_args: Callable[[list[str]], argparse.Namespace],
                         driver_main: Callable[[argparse.Namespace], None],
                         worker_main: Callable[[argparse.Namespace], None]) -> None:
    """``script worker ARGS`` measures one system (``args.mode == "worker"``); anything else drives the run."""
    args = parse_args(sys.argv[1:])
    if args.mode != "worker" and getattr(args, "emulate_avx2", False):
        import avx2_emulation

        avx2_emulation.reexec_emulated(args.work.resolve(), [str(Path(sys.argv[0]).resolve()), *sys.argv[1:]])
    (worker_main if args.mode == "worker" else driver_main)(args)


def worker_command(script: Path, worker_args: list[str], out_prefix: Path) -> list[str]:
    """``python script worker ARGS --out-prefix P --spawn-time NOW``, with any stale ``<P>.json`` removed.

    The spawn time is taken last, just before the caller starts the process, so cold start includes the
    interpreter.
    """
    out_prefix.with_suffix(".json").unlink(missing_ok=True)
    return [sys.executable, str(Path(script).resolve()), "worker", *worker_args, "--out-prefix", str(out_prefix),
            "--spawn-time", repr(time.time())]


def spawn_worker(script: Path, worker_args: list[str], out_prefix: Path, env: dict[str, str] | None = None) -> dict:
    """Run ``script worker ARGS --spawn-time NOW`` and wait; returns the ``<out_prefix>.json`` it wrote.

    One worker at a time: systems never overlap, so neither steals the other's cores.
    """
    subprocess.run(worker_command(script, worker_args, out_prefix), check=True, env=env)
    return json.loads(out_prefix.with_suffix(".json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# What the workload costs and how close two systems' scores are.
# ---------------------------------------------------------------------------------------------
def token_lengths(model: Model, pairs: list[tuple[str, str]]) -> np.ndarray:
    """Unpadded lengths with the artifact's own tokenizer, truncated at MAX_LENGTH as every system does."""
    from rerankrt.engine.artifact import load_artifact
    from rerankrt.engine.tokenize import PairTokenizer

    artifact = load_artifact(model.artifact_dir)
    tokenizer = PairTokenizer.for_artifact(artifact, MAX_LENGTH)
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


def agreement(reference: np.ndarray, candidate: np.ndarray, groups: list[int]) -> dict:
    from rerankrt.export.parity import spearman, top_k_agreement

    delta = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    score_range = float(reference.max() - reference.min())
    return {"max_abs_delta": float(delta.max()),
            "max_rel_delta": float(delta.max() / score_range) if score_range > 0 else None,
            "reference_range": score_range, "spearman": spearman(reference, candidate),
            "top10_agreement": top_k_agreement(reference, candidate, groups, k=10)}


# ---------------------------------------------------------------------------------------------
# The machine and the report beside the numbers.
# ---------------------------------------------------------------------------------------------
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
    import avx2_emulation

    from rerankrt.engine.hardware import CpuInfo, cpu_info, parse_cpuinfo

    info = cpu_info()
    out = {"cpu": info.summary(), "flags": " ".join(sorted(info.flags)), "os_cpu_count": os.cpu_count(),
           "platform": platform.platform()}
    if avx2_emulation.emulated():
        model, host_flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
        out["emulation"] = avx2_emulation.emulated()
        out["host_flags"] = " ".join(CpuInfo(model, host_flags, 1).summary()["features"])
    return out


def run_environment(extra_packages: tuple[str, ...] = (), auto_artifacts: tuple[Path, ...] = ()) -> dict:
    """Hardware, package versions, load, and what ``auto`` loads here for the run's artifacts:
    what every result file records beside its numbers."""
    environment = {"hardware": hardware_info(), "versions": package_versions(extra_packages),
                   "load_average_1m": os.getloadavg()[0]}
    if auto_artifacts:
        environment["auto"] = auto_records(auto_artifacts)
    return environment


def auto_record(artifact_dir: Path, threads: int = THREADS) -> dict:
    """Which configuration ``precision``/``backend`` ``auto`` loads for ``artifact_dir`` on this machine,
    and its ratio to the fastest configuration of the tuning table it chose from.

    Why in every result: which configuration is fastest depends on the CPU (issue 16), so a number
    measured with an explicit configuration says little about what a user gets by default unless the
    file also says what the default is here. The decision is read from the tuning cache; when absent it
    is measured first (``rerankrt tune``, in a child process, as the first ``auto`` load would), so the
    record is the one later loads use. With tuning off (``RERANKRT_TUNE=0``) the rule's choice is recorded.
    """
    from rerankrt.engine.artifact import load_artifact
    from rerankrt.engine.tuning import cached_decision, enabled

    artifact = load_artifact(artifact_dir)
    decision = cached_decision(artifact, threads=threads)
    measured_now = False
    if decision is None and enabled():
        say(f"measuring what auto loads for {artifact_dir.name} here (rerankrt tune)")
        subprocess.run([sys.executable, "-m", "rerankrt.engine.cli", "tune", str(artifact_dir), "--threads",
                        str(threads)], check=False, stdout=subprocess.DEVNULL)
        decision, measured_now = cached_decision(artifact, threads=threads), True
    if decision is None:
        from rerankrt.engine.selection import choose_backend, choose_precision

        precision = choose_precision(artifact, "auto", "cpu")
        backend = choose_backend(precision, "auto", "cpu")
        return {"artifact": artifact_dir.name, "choice": f"{precision} on {backend}", "how": "rule (not measured)"}
    rates = [r for r in decision.table if r.get("pairs_per_s")]
    chosen = next((r for r in rates if r["config"] == decision.config.__dict__), None)
    best = max(rates, key=lambda r: r["pairs_per_s"]) if rates else None
    ratio = chosen["pairs_per_s"] / best["pairs_per_s"] if chosen and best else None
    return {"artifact": artifact_dir.name, "choice": decision.config.label, "config": decision.config.__dict__,
            "how": "measured now" if measured_now else "cached", "choice_pairs_per_s": chosen and chosen["pairs_per_s"],
            "best_pairs_per_s": best and best["pairs_per_s"], "ratio_to_best": ratio,
            "table": [{"config": r["config"], "pairs_per_s": r.get("pairs_per_s"), "skipped": r.get("skipped")}
                      for r in decision.table]}


def auto_records(artifact_dirs: tuple[Path, ...] | list[Path]) -> list[dict]:
    """:func:`auto_record` for each artifact; a failure is recorded, never stops the benchmark."""
    records = []
    for directory in dict.fromkeys(Path(d) for d in artifact_dirs):
        try:
            records.append(auto_record(directory))
        except Exception as exc:  # noqa: BLE001 - the benchmark's numbers matter more than this record
            records.append({"artifact": directory.name, "error": f"{type(exc).__name__}: {exc}"})
    return records


def auto_lines(environment: dict) -> list[str]:
    """One markdown bullet per artifact: what ``auto`` loads here and its ratio to the best it measured."""
    lines = []
    for r in environment.get("auto", []):
        if "error" in r:
            lines.append(f"- auto for {r['artifact']}: not known ({r['error']})")
        elif r.get("ratio_to_best") is None:
            lines.append(f"- auto for {r['artifact']}: {r['choice']} ({r['how']})")
        else:
            runner_up = sorted((t["pairs_per_s"] for t in r["table"] if t.get("pairs_per_s")), reverse=True)
            lines.append(f"- auto for {r['artifact']} on this machine: **{r['choice']}** "
                         f"({r['choice_pairs_per_s']:.1f} pairs/s on the tuning workload, {r['ratio_to_best']:.2f}× "
                         f"the fastest of {len(runner_up)} configurations measured in the same tuning run; {r['how']})")
    return lines


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def hardware_lines(environment: dict) -> list[str]:
    """The CPU and the features that decide which precision wins, as markdown bullets."""
    hw, cpu = environment["hardware"], environment["hardware"]["cpu"]
    flags = set(hw["flags"].split())
    yes = {True: "yes", False: "no"}
    emulation = ([f"- **Emulated**: {hw['emulation']} (`benchmarks/avx2_emulation.py`); the host CPU's own features: "
                  f"{hw['host_flags']}. The timings are of AVX2 code on this CPU's cores: a proxy for an "
                  "AVX2-only CPU, not a measurement of one"] if hw.get("emulation") else [])
    return [
        f"- CPU: {cpu['model']} — `os.cpu_count()` = {hw['os_cpu_count']}; every system uses {THREADS} threads",
        *emulation,
        f"- AVX2: {yes['avx2' in flags]} · AVX-512: {yes[cpu['avx512']]} · VNNI: {yes[cpu['vnni']]} · "
        f"BF16: {yes[cpu['bf16']]} · AMX: {yes[bool({'amx_bf16', 'amx_int8'} & flags)]}",
        f"- features: {' '.join(cpu['features'])}",
        *auto_lines(environment),
    ]


def load_line(environment: dict) -> str:
    return (f"- 1-minute load average at start: {environment['load_average_1m']:.2f}"
            + (" — **the machine was busy; timings are unreliable**" if environment["load_average_1m"] > 0.5 else ""))


def write_summary(out: Path, run_id: str, latest: str, summary: str, jsonl: Path) -> None:
    """``<run_id>.md`` and ``latest`` (the run's markdown summary; its rows are in ``jsonl``), then print it."""
    (out / f"{run_id}.md").write_text(summary, encoding="utf-8")
    (out / latest).write_text(summary, encoding="utf-8")
    say(f"wrote {jsonl}, {out / (run_id + '.md')} and {out / latest}")
    print(summary)


def write_report(out: Path, prefix: str, title: str, command: str, environment: dict, rows: list[dict],
                 body: list[str]) -> None:
    """``<prefix>-<stamp>.json`` (rows + environment) and ``.md`` (title, command, hardware, ``body``);
    prints the markdown."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{prefix}-{stamp}.json").write_text(
        json.dumps({"stamp": stamp, "environment": environment, "rows": rows}, indent=1))
    lines = [f"# {title} — {stamp}", "", f"Command: `{command}`", "", *hardware_lines(environment),
             load_line(environment), "", *body]
    (out / f"{prefix}-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
