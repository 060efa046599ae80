"""CPU benchmark against the peers (issue 7): sentence-transformers, a plain ONNX export, OpenVINO, and rerankrt.

One run, every system in its own process, on the same pairs; one system after another, or, with
``--interleaved``, every system loaded at once (each in its own process) and timed one pass each in turn,
round after round, so that every ratio compares the same minutes of the machine:

* ``st``: sentence-transformers ``CrossEncoder``, torch fp32 (the reference for speed and fidelity);
* ``plain-*``: the same PyTorch module through plain ``torch.onnx.export`` (what a user would do
  without rerankrt), run by onnxruntime (fp32; ``quantize_dynamic`` int8 with default settings) and
  by OpenVINO (``f32`` forced; the default precision, bf16 on BF16 CPUs; NNCF int8);
* ``rerankrt-*``: every rerankrt backend × precision of the exported artifact.

The peers score through rerankrt's own ``Reranker`` (same tokenizer, same length-sorted token-budget
batches) with a different backend object, so only the graph and the runtime differ from rerankrt.
It records pairs/s (median of the timed passes), the ratio to st, peak RSS, cold start (and, for
rerankrt's OpenVINO rows, a second start with the compile cache warm), p50/p95 of one ``rank``
call, fidelity against st, the CPU and its flags, and each row's share of the measured matmul
peak of its own precision (fp32, bf16, int8). It ends with the issue's targets, pass or fail.

    python benchmarks/bench_cpu_peers.py                                  # 17m, 68m + 17m-distilled
    python benchmarks/bench_cpu_peers.py --models 17m,68m,150m
    python benchmarks/bench_cpu_peers.py --smoke --out /tmp/peers_smoke   # end-to-end check, a few minutes
    python benchmarks/bench_cpu_peers.py --models 17m --interleaved --emulate-avx2   # issue 16's yardstick

``python benchmarks/bench_cpu_peers.py worker ...`` measures one system; the driver calls it.
"""

from __future__ import annotations

import time

SCRIPT_START = time.time()  # see common.SCRIPT_START: launch vs loading in the cold start

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402
from common import say  # noqa: E402

THREADS = common.THREADS
MAX_LENGTH = common.MAX_LENGTH
DISTILLED_NAME = common.DISTILLED_NAME
DEFAULT_MODELS = "17m,68m"
DEFAULT_PAIRS_LIMIT = 300
WORKLOADS = ("negconstraint", "scifact")
PEAK_SHAPE = common.PEAK_SHAPE
PEAK_RUNS = 30
STRICT_FP32_REL_DELTA = 1e-4  # strict fp32: max |Δ| ≤ 1e-4 of st's score range
FIDELITY_SPEARMAN, FIDELITY_TOP10 = 0.995, 0.95
TARGET_RATIO, TARGET_COLD_START_S = 1.2, 1.5

# The peers' files, next to each other in <work>/peers/<model>/ (rebuilt when the fixture is newer).
PLAIN_FILES = {"plain": "plain.fp32.onnx", "plain-int8-dynamic": "plain.int8-dynamic.onnx",
               "plain-nncf-int8": "plain.nncf-int8.xml"}


@dataclass(frozen=True)
class System:
    name: str
    family: str  # "st" | "plain" | "rerankrt"
    runtime: str  # "torch" | "onnxruntime" | "openvino"
    precision: str  # requested: "fp32" | "bf16" | "int8" | "default" (OpenVINO's own choice)
    graph: str  # "source" | "artifact" | a PLAIN_FILES key
    description: str
    options: tuple[tuple[str, str], ...] = ()  # rerankrt backend_options

    @property
    def needs_openvino(self) -> bool:
        return self.runtime == "openvino"


SYSTEMS = (
    System("st", "st", "torch", "fp32", "source", "sentence-transformers CrossEncoder, torch fp32 (reference)"),
    System("plain-ort-fp32", "plain", "onnxruntime", "fp32", "plain",
           "plain `torch.onnx.export` (opset 17) + onnxruntime"),
    System("plain-ort-int8dyn", "plain", "onnxruntime", "int8", "plain-int8-dynamic",
           "plain export + `quantize_dynamic(weight_type=QInt8)` (defaults) + onnxruntime"),
    System("plain-ov-f32", "plain", "openvino", "fp32", "plain",
           "OpenVINO on the plain export, INFERENCE_PRECISION_HINT f32"),
    System("plain-ov-default", "plain", "openvino", "default", "plain",
           "OpenVINO on the plain export, default precision (bf16 on BF16 CPUs)"),
    System("plain-ov-nncf-int8", "plain", "openvino", "int8", "plain-nncf-int8",
           "NNCF `quantize` (TRANSFORMER, builtin calibration pairs) of the plain export, OpenVINO default precision"),
    System("rerankrt-ort-fp32", "rerankrt", "onnxruntime", "fp32", "artifact", "rerankrt, onnxruntime, fp32"),
    System("rerankrt-ort-int8", "rerankrt", "onnxruntime", "int8", "artifact", "rerankrt, onnxruntime, int8"),
    System("rerankrt-ov-fp32", "rerankrt", "openvino", "fp32", "artifact", "rerankrt, OpenVINO, strict f32"),
    System("rerankrt-ov-bf16", "rerankrt", "openvino", "bf16", "artifact", "rerankrt, OpenVINO, bf16"),
    System("rerankrt-ov-int8", "rerankrt", "openvino", "int8", "artifact",
           "rerankrt, OpenVINO, int8 (bf16 between the int8 matmuls where the CPU has BF16 and the artifact's "
           "gate passed that form, else f32)"),
    System("rerankrt-ov-int8-f32", "rerankrt", "openvino", "int8", "artifact",
           "rerankrt, OpenVINO, int8 with f32 between the int8 matmuls (what CPUs without BF16 run)",
           (("inference_precision", "f32"),)),
    System("rerankrt-auto", "rerankrt", "auto", "auto", "artifact",
           "rerankrt, precision and backend `auto`: measured on this machine at its first load (an empty cache: "
           "the cold start includes the tuning; the second start reads the cached decision)"),
)
BY_NAME = {s.name: s for s in SYSTEMS}
OV_COUNTERPART = {"rerankrt-ov-fp32": "plain-ov-f32", "rerankrt-ov-bf16": "plain-ov-default",
                  "rerankrt-ov-int8": "plain-ov-nncf-int8"}


# ---------------------------------------------------------------------------------------------
# Worker: one system, one model, one workload, in a fresh process.
# ---------------------------------------------------------------------------------------------
class PlainOpenVinoBackend:
    """What a plain OpenVINO user writes: ``compile_model`` with a latency hint, no compile cache.

    ``hint=None`` leaves the inference precision to OpenVINO (bf16 on CPUs with AVX512_BF16/AMX).
    """

    name = "openvino-plain"
    device = "cpu"
    # the rest of the backend contract (engine/backends/base.py) the scoring core reads
    pad_multiple = 1
    overlaps_batches = False
    inference_precision = None

    def run_many(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return [self.run(ids, mask) for ids, mask in batches]

    def __init__(self, model_path: Path, hint: str | None, threads: int = THREADS) -> None:
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads)}
        if hint is not None:
            config["INFERENCE_PRECISION_HINT"] = hint
        self.compiled = ov.Core().compile_model(str(model_path), "CPU", config)
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self._request = self.compiled.create_infer_request()  # the benchmark calls from one thread

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        result = self._request.infer({"input_ids": input_ids, "attention_mask": attention_mask})
        return np.array(next(iter(result.values())), dtype=np.float32).reshape(len(input_ids), -1)


def peer_reranker(artifact_dir: Path, backend):
    """rerankrt's ``Reranker`` around a peer backend: the artifact's tokenizer, the CPU batch policy."""
    from rerankrt.engine.artifact import load_artifact
    from rerankrt.engine.batching import BatchPolicy
    from rerankrt.engine.reranker import Reranker
    from rerankrt.engine.tokenize import PairTokenizer

    artifact = load_artifact(artifact_dir)
    tokenizer = PairTokenizer.for_artifact(artifact, MAX_LENGTH)
    # the same policy Reranker.from_pretrained gives on CPU (each row records its policy, to check)
    return Reranker(artifact, backend, tokenizer, BatchPolicy(token_budget=2048, max_batch_size=256))


def openvino_details(compiled) -> dict:
    """The precision OpenVINO resolved and how its matmuls actually run (runtime graph): precision and the
    kernel it picked (``primitiveType``, e.g. ``brgemm_avx512_I8`` with VNNI, ``jit_gemm_I8`` on AVX2)."""
    matmuls: Counter = Counter()
    kernels: Counter = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind.startswith(("FullyConnected", "MatMul")):
            matmuls[f"{kind}:{info['runtimePrecision'].astype(str)}"] += 1
            kernels[f"{kind}:{info['primitiveType'].astype(str) if 'primitiveType' in info else '?'}"] += 1
    return {"ov_inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            "ov_runtime_matmuls": dict(sorted(matmuls.items())), "ov_runtime_kernels": dict(sorted(kernels.items()))}


def load_system(system: System, model_dir: Path, artifact_dir: Path, plain_dir: Path):
    """``(predict, rank, describe)``; imports happen here so each worker pays only for its own stack."""
    if system.family == "st":
        predict, rank = common.load_scorer("st", model_dir, artifact_dir)
        return predict, rank, dict
    if system.family == "rerankrt":
        from rerankrt.engine import Reranker

        reranker = Reranker.from_pretrained(artifact_dir, precision=system.precision, backend=system.runtime,
                                            threads=THREADS, max_length=MAX_LENGTH,
                                            backend_options=dict(system.options),
                                            tune=True if system.runtime == "auto" else None)
    else:
        path = plain_dir / PLAIN_FILES[system.graph]
        if system.runtime == "onnxruntime":
            from rerankrt.engine.backends.ort import OrtBackend

            backend = OrtBackend(path, system.precision, threads=THREADS)
        else:
            backend = PlainOpenVinoBackend(path, {"fp32": "f32"}.get(system.precision), THREADS)
        reranker = peer_reranker(artifact_dir, backend)

    def describe() -> dict:
        policy = reranker.policy
        out = {"backend": reranker.backend.name, "backend_precision": reranker.backend.precision,
               "batch_policy": {"token_budget": policy.token_budget, "max_batch_size": policy.max_batch_size}}
        compiled = getattr(reranker.backend, "compiled", None)
        if compiled is not None:
            out.update(openvino_details(compiled))
        decision = getattr(reranker, "tuning", None)
        if decision is not None:  # what auto chose, from what table, and what reading the decision costs
            from rerankrt.engine import tuning

            started = time.perf_counter()
            tuning.cached_decision(reranker.artifact, THREADS)
            out.update({"auto_choice": decision.config.label, "auto_config": decision.config.__dict__,
                        "tuning_s": decision.seconds, "tuning_cached": decision.cached,
                        "tuning_table": decision.table,
                        "decision_read_ms": 1000 * (time.perf_counter() - started)})
        return out

    return (lambda pairs, batch_size: reranker.predict(pairs, batch_size=batch_size),
            lambda query, docs, batch_size: reranker.rank(query, docs, batch_size=batch_size), describe)


def worker_main(args: argparse.Namespace) -> None:
    channel = common.reply_channel() if args.interleaved else None  # before any library can print to stdout
    system = BY_NAME[args.system]
    try:
        pairs, groups = common.read_pairs(args.pairs)
        predict, rank, describe = load_system(system, args.model_dir, args.artifact, args.plain_dir)
        if args.start_only:  # the second start of a cached backend: load, score one pair, leave
            predict(pairs[:1], None)
            measured = {"cold_start_s": time.time() - args.spawn_time, "launch_s": SCRIPT_START - args.spawn_time,
                        "peak_rss_mib": common.peak_rss_mib()}
            scores = None
        else:
            session = common.ScorerSession(predict, rank, pairs, groups, args.spawn_time,
                                           batch_sizes=common.ST_BATCH_SIZES if system.family == "st" else ())
            if channel is not None:  # the driver asks for each pass in turn with the other systems'
                common.serve_interleaved(session, channel, {"cold_start_s": session.first_score - args.spawn_time})
            else:
                for _ in range(args.passes):
                    session.timed_pass()
                session.rank_calls(args.latency_calls)
            measured, scores = session.result(), session.scores
        result = {"system": system.name, **measured, **describe()}
    except Exception as exc:  # noqa: BLE001 - benchmark worker: any failure is reported as this system's error row
        message = (str(exc).splitlines() or [""])[0]
        common.write_worker_output(args.out_prefix,
                                   {"system": system.name, "error": f"{type(exc).__name__}: {message}"}, None)
        traceback.print_exc()
        raise SystemExit(1) from None
    common.write_worker_output(args.out_prefix, result, scores)
    if args.start_only:
        say(f"  {system.name} (second start): {result['cold_start_s']:.2f} s")
    else:
        say(f"  {system.name}: {result['pairs_per_s']:.1f} pairs/s, "
            f"rank p50 {result['rank_latency_ms']['p50']:.1f} ms, "
            f"RSS {result['peak_rss_mib']:.0f} MiB, cold start {result['cold_start_s']:.2f} s")


# ---------------------------------------------------------------------------------------------
# Driver: the machine's peaks, models and their peer graphs, then every system in turn.
# ---------------------------------------------------------------------------------------------
def _median_seconds(fn, runs: int) -> float:
    for _ in range(3):
        fn()
    return statistics.median(common.timed(fn)[0] for _ in range(runs))


def measure_openvino_peaks(has_bf16: bool, threads: int = THREADS, runs: int = PEAK_RUNS) -> dict:
    """OpenVINO GFLOP/s (GOPS for int8) of one [M×K]·[K×N] MatMul with constant weights, per precision.

    fp32: ``INFERENCE_PRECISION_HINT`` f32; bf16: hint bf16 (only on BF16 CPUs); int8: the same
    model quantized by NNCF (FakeQuantize on both inputs), run with the f32 hint so only the
    quantized MatMul decides (skipped without nncf, like the NNCF row). The runtime graph says which
    precision the FullyConnected ran in.
    """
    import openvino as ov
    from openvino import opset13 as ops

    m, k, n = PEAK_SHAPE
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((n, k), dtype=np.float32)  # [N, K], transpose_b: OpenVINO's FullyConnected layout
    feed = rng.standard_normal((m, k), dtype=np.float32)

    def matmul_model() -> ov.Model:
        a = ops.parameter([m, k], ov.Type.f32, name="A")
        return ov.Model([ops.matmul(a, ops.constant(weight), False, True)], [a], "matmul_peak")

    def run(model: ov.Model, hint: str) -> dict:
        compiled = ov.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_NUM_THREADS": threads,
                                                          "INFERENCE_PRECISION_HINT": hint})
        request = compiled.create_infer_request()
        seconds = _median_seconds(lambda: request.infer({0: feed}), runs)
        details = openvino_details(compiled)
        return {"gops": 2 * m * k * n / seconds / 1e9, "median_s": seconds, "hint": hint,
                "runtime_matmuls": details["ov_runtime_matmuls"]}

    peaks = {"fp32": run(matmul_model(), "f32")}
    if has_bf16:
        peaks["bf16"] = run(matmul_model(), "bf16")
    try:
        import nncf
    except ImportError:
        return peaks
    calibration = nncf.Dataset([rng.standard_normal((m, k), dtype=np.float32) for _ in range(4)])
    peaks["int8"] = {**run(nncf.quantize(matmul_model(), calibration, subset_size=4), "f32"),
                     "quantized_by": "nncf.quantize"}
    return peaks


def machine_peaks(has_bf16: bool, with_openvino: bool) -> dict:
    """Per precision, the best measured matmul rate (GFLOP/s or GOPS) and where it came from."""
    ort_fp32 = common.measure_matmul_peak(THREADS, runs=PEAK_RUNS)
    peaks = {"fp32": {"gops": ort_fp32["gflops"], "runtime": "onnxruntime", "onnxruntime_gflops": ort_fp32["gflops"]}}
    if with_openvino:
        ov_peaks = measure_openvino_peaks(has_bf16)
        peaks["fp32"]["openvino_gflops"] = ov_peaks["fp32"]["gops"]
        if ov_peaks["fp32"]["gops"] > peaks["fp32"]["gops"]:
            peaks["fp32"].update(gops=ov_peaks["fp32"]["gops"], runtime="openvino")
        for precision in ("bf16", "int8"):
            if precision in ov_peaks:
                peaks[precision] = {**ov_peaks[precision], "runtime": "openvino"}
    return {"shape_mkn": list(PEAK_SHAPE), "threads": THREADS, "runs": PEAK_RUNS, "by_precision": peaks,
            "onnxruntime_fp32": ort_fp32}


def calibration_items(model: common.Model) -> list[dict[str, np.ndarray]]:
    """rerankrt's builtin calibration pairs, tokenized by the artifact's tokenizer, in padded batches
    (token budget 4096, as the export's own calibration): the same data rerankrt's static int8 sees."""
    from rerankrt.engine.artifact import load_artifact
    from rerankrt.engine.batching import BatchPolicy, pad_batch, plan_batches
    from rerankrt.engine.tokenize import PairTokenizer
    from rerankrt.export.calibration import builtin_pairs

    artifact = load_artifact(model.artifact_dir)
    tokenizer = PairTokenizer.for_artifact(artifact, MAX_LENGTH)
    ids = tokenizer.encode(builtin_pairs())
    lengths = np.array([len(t) for t in ids])
    batches = [pad_batch(ids, idx, tokenizer.pad_id) for idx in plan_batches(lengths, BatchPolicy(token_budget=4096))]
    return [{"input_ids": b.input_ids, "attention_mask": b.attention_mask} for b in batches]


def _stale(path: Path, source_dir: Path, force: bool) -> bool:
    if force or not path.is_file():
        return True
    newest_source = max(p.stat().st_mtime for p in source_dir.iterdir() if p.is_file())
    return path.stat().st_mtime < newest_source


def prepare_plain(model: common.Model, work: Path, needed: set[str], force: bool) -> Path:
    """The peers' graphs for ``model``, built once and cached: the plain export and its two int8s."""
    out = work / "peers" / model.name
    out.mkdir(parents=True, exist_ok=True)
    plain = out / PLAIN_FILES["plain"]
    if needed and _stale(plain, model.source_dir, force):
        from rerankrt.export.graph import export_with_torch
        from rerankrt.export.source import read_source

        say(f"plain torch.onnx.export of {model.name}")
        partial = plain.with_suffix(".partial.onnx")
        export_with_torch(read_source(str(model.source_dir)), partial)
        partial.replace(plain)
        force = True  # everything derived from it is stale now
    dynamic = out / PLAIN_FILES["plain-int8-dynamic"]
    if "plain-int8-dynamic" in needed and _stale(dynamic, model.source_dir, force):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        say(f"onnxruntime quantize_dynamic of the plain {model.name} export")
        partial = dynamic.with_suffix(".partial.onnx")
        quantize_dynamic(str(plain), str(partial), weight_type=QuantType.QInt8)
        partial.replace(dynamic)
    nncf_xml = out / PLAIN_FILES["plain-nncf-int8"]
    if "plain-nncf-int8" in needed and _stale(nncf_xml, model.source_dir, force):
        import nncf
        import openvino as ov

        items = calibration_items(model)
        say(f"NNCF int8 of the plain {model.name} export ({len(items)} calibration batches)")
        quantized = nncf.quantize(ov.Core().read_model(str(plain)), nncf.Dataset(items),
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(items))
        partial = nncf_xml.with_name("plain.nncf-int8.partial.xml")
        ov.save_model(quantized, str(partial))  # defaults, as a user would (weights kept fp16 on disk)
        partial.with_suffix(".bin").replace(nncf_xml.with_suffix(".bin"))
        partial.replace(nncf_xml)
    return out


def resolved(system: System, result: dict) -> System:
    """An ``auto`` row as the configuration it loaded (for labels and peaks); other rows as they are."""
    if system.runtime != "auto" or "auto_config" not in result:
        return system
    config = result["auto_config"]
    return System(system.name, system.family, config["backend"], config["precision"], system.graph,
                  system.description)


def peak_precision(system: System, result: dict) -> str:
    """The precision whose peak a row is compared with: int8 rows → int8; OpenVINO → what it resolved."""
    system = resolved(system, result)
    if system.precision == "int8":
        return "int8"
    if system.runtime == "openvino":
        return "bf16" if result.get("ov_inference_precision") == "bf16" else "fp32"
    return "fp32" if system.precision == "default" else system.precision


def run_label(system: System, result: dict) -> str:
    """What the row ran in; OpenVINO int8 rows add how many of their weight matmuls run in int8."""
    if system.runtime == "auto" and "auto_choice" in result:
        return f"auto → {result['auto_choice']}"
    resolved = {"bf16": "bf16", "f32": "fp32"}.get(result.get("ov_inference_precision", ""), "")
    if system.precision == "int8" and system.runtime == "openvino":
        matmuls = result.get("ov_runtime_matmuls") or {}
        int8 = sum(n for key, n in matmuls.items() if key.endswith((":i8", ":u8")))
        share = f" {int8}/{sum(matmuls.values())}" if matmuls else ""
        kernels = sorted({key.split(":", 1)[1] for key in result.get("ov_runtime_kernels") or {}
                          if key.endswith("_I8")})
        share += f" via {'/'.join(kernels)}" if kernels else ""
        return f"int8{share} (rest {resolved})" if resolved else f"int8{share}"
    if system.runtime == "openvino" and resolved:
        return resolved
    return system.precision


def int8_method(model: common.Model) -> str | None:
    manifest = json.loads((model.artifact_dir / "manifest.json").read_text(encoding="utf-8"))
    return (manifest["graphs"].get("int8") or {}).get("method")


@dataclass(frozen=True)
class Launch:
    """How one system's worker is started for one model × workload."""

    system: System
    prefix: Path  # <prefix>.json / .npy: the worker's result and scores
    args: list[str]
    env: dict[str, str] | None
    cache: Path | None  # rerankrt's compile/tuning cache (OpenVINO, auto): empty at the first start, kept for a second

    @property
    def second_prefix(self) -> Path:
        return self.prefix.with_name(self.prefix.name + "-second-start")


def _launches(model: common.Model, systems: list[System], plain_dir: Path, run_dir: Path, pairs_file: Path,
              passes: int, latency_calls: int, workload: common.Workload) -> list[Launch]:
    out = []
    for system in systems:
        prefix = run_dir / f"{model.name}-{workload.name}-{system.name}"
        args = ["--system", system.name, "--model-dir", str(model.source_dir), "--artifact",
                str(model.artifact_dir), "--plain-dir", str(plain_dir), "--pairs", str(pairs_file),
                "--passes", str(passes), "--latency-calls", str(latency_calls)]
        env, cache = None, None
        if system.family == "rerankrt" and system.runtime in ("openvino", "auto"):
            cache = run_dir / "ov-cache" / prefix.name
            shutil.rmtree(cache, ignore_errors=True)
            env = {**os.environ, "RERANKRT_CACHE": str(cache)}
        out.append(Launch(system, prefix, args, env, cache))
    return out


def _second_start(launch: Launch, result: dict) -> None:
    """A second process on the now-warm cache: what every later start of this configuration costs."""
    assert launch.cache is not None
    warm = common.spawn_worker(Path(__file__), [*launch.args, "--start-only"], launch.second_prefix, launch.env)
    result["second_start_s"] = warm["cold_start_s"]
    if "auto_choice" in warm:
        result["second_start_auto_choice"] = warm["auto_choice"]
        result["second_start_decision_read_ms"] = warm["decision_read_ms"]
    result["second_start_peak_rss_mib"] = warm["peak_rss_mib"]
    result["ov_cache_files"] = sum(1 for p in launch.cache.rglob("*") if p.is_file())


def _worker_error(prefix: Path, exc: subprocess.CalledProcessError) -> str:
    """The error the worker wrote to ``<prefix>.json``, else its exit status."""
    failed = prefix.with_suffix(".json")
    return (json.loads(failed.read_text(encoding="utf-8")).get("error") if failed.is_file()
            else None) or f"worker exited with status {exc.returncode}"


def run_sequential(launches: list[Launch]) -> dict[str, dict | str]:
    """Each system in its own process, one after another, all its passes back to back: result or error."""
    out: dict[str, dict | str] = {}
    for launch in launches:
        try:
            result = common.spawn_worker(Path(__file__), launch.args, launch.prefix, launch.env)
            if launch.cache is not None:
                _second_start(launch, result)
            out[launch.system.name] = result
        except subprocess.CalledProcessError as exc:
            out[launch.system.name] = _worker_error(launch.prefix, exc)
    return out


def run_interleaved(launches: list[Launch], passes: int, latency_calls: int) -> dict[str, dict | str]:
    """Every system loaded in its own long-lived process, then ``passes`` rounds of one pass each (in a seeded
    random order per round, so no system keeps the same neighbours), then each one's ``rank`` calls.

    Starts stay one at a time (each worker is loaded and warm before the next is spawned; second starts
    run then), so cold starts are measured as in the sequential mode. Ratios between systems are what
    this mode is for: every system's passes fall in the same minutes of the machine.
    """
    out: dict[str, dict | str] = {}
    workers: dict[str, common.InterleavedWorker] = {}
    by_name = {launch.system.name: launch for launch in launches}
    try:
        for launch in launches:
            name = launch.system.name
            try:
                workers[name] = common.InterleavedWorker(Path(__file__), launch.args, launch.prefix, launch.env)
            except (subprocess.CalledProcessError, ValueError) as exc:
                out[name] = (_worker_error(launch.prefix, exc) if isinstance(exc, subprocess.CalledProcessError)
                             else f"malformed reply: {exc}")
                say(f"  {name} FAILED: {out[name]}")
                continue
            say(f"  {name}: loaded (cold start {workers[name].ready['cold_start_s']:.2f} s)")
            if launch.cache is not None:
                second: dict = {}
                try:
                    _second_start(launch, second)
                except subprocess.CalledProcessError as exc:  # the first start measures on; the row says so
                    second = {"second_start_error": _worker_error(launch.second_prefix, exc)}
                    say(f"  {name} second start FAILED: {second['second_start_error']}")
                out[name] = second  # merged into the result at the end

        def drive(name: str, command: str) -> None:
            try:
                reply = workers[name].ask(command)
                if "error" in reply:
                    raise RuntimeError(reply["error"])
            except (subprocess.CalledProcessError, RuntimeError, ValueError) as exc:
                out[name] = (_worker_error(by_name[name].prefix, exc) if isinstance(exc, subprocess.CalledProcessError)
                             else str(exc))
                say(f"  {name} FAILED: {out[name]}")
                workers.pop(name).kill()

        for round_ in range(passes):
            names = list(workers)
            random.Random(round_).shuffle(names)  # seeded: the same orders every run
            say(f"round {round_ + 1}/{passes}")
            for name in names:
                if name in workers:
                    drive(name, "pass")
        for name in list(workers):
            drive(name, f"latency {latency_calls}")
        for name, worker in list(workers.items()):
            try:
                out[name] = {**worker.finish(), **(out.get(name) or {})}
            except subprocess.CalledProcessError as exc:
                out[name] = _worker_error(by_name[name].prefix, exc)
            workers.pop(name)
    finally:
        for worker in workers.values():
            worker.kill()
    return out


def measure_group(model: common.Model, workload: common.Workload, systems: list[System], plain_dir: Path, run_dir: Path,
                  passes: int, latency_calls: int, environment: dict, interleaved: bool = False) -> list[dict]:
    """Every system on one model × workload; st first, because every other row is compared with it."""
    n_queries = workload.n_queries(model.pairs_limit)
    pairs_file = workload.write_pairs(run_dir / f"pairs-{workload.name}-q{n_queries}.jsonl", n_queries)
    pairs, groups = common.read_pairs(pairs_file)
    config = json.loads((model.source_dir / "config.json").read_text(encoding="utf-8"))
    lengths = common.token_lengths(model, pairs)
    flops = common.estimate_flops(config, lengths)
    say(f"{model.name} × {workload.name}: {len(pairs)} pairs ({n_queries} queries × {len(workload.documents)} docs), "
        f"mean {lengths.mean():.0f} tokens" + (", interleaved" if interleaved else ""))
    peaks = environment["matmul_peaks"]["by_precision"]

    launches = _launches(model, systems, plain_dir, run_dir, pairs_file, passes, latency_calls, workload)
    results = run_interleaved(launches, passes, latency_calls) if interleaved else run_sequential(launches)
    rows, reference = [], None
    for launch in launches:
        system = launch.system
        row = {"record": "measurement", "run_id": environment["run_id"], "model": model.name,
               "workload": workload.name, "system": system.name, "family": system.family,
               "runtime": system.runtime, "precision": system.precision, "n_queries": n_queries,
               "docs_per_query": len(workload.documents), "tokens_total": int(lengths.sum()),
               "tokens_mean": float(lengths.mean()), "interleaved": interleaved}
        result = results[system.name]
        if isinstance(result, str):
            say(f"  {system.name} FAILED: {result}")
            rows.append({**row, "error": result, "environment": environment})
            continue
        scores = np.load(launch.prefix.with_suffix(".npy"))
        median_s = statistics.median(result["pass_times_s"])
        peak_prec = peak_precision(system, result)
        achieved = flops / median_s / 1e9
        row.update({"run_precision": run_label(system, result), **result, "flops_estimate": flops,
                    "best_pass_pairs_per_s": result["n_pairs"] / min(result["pass_times_s"]),
                    "achieved_gops": achieved, "peak_precision": peak_prec,
                    "peak_gops": peaks.get(peak_prec, {}).get("gops"),
                    "fraction_of_peak": achieved / peaks[peak_prec]["gops"] if peak_prec in peaks else None})
        if system.family == "rerankrt" and system.precision == "int8":
            row["artifact_int8_method"] = int8_method(model)
        if system.name == "st":
            reference = (scores, result)
        elif reference is not None:
            ref_scores, ref_result = reference
            row["speedup_vs_st"] = result["pairs_per_s"] / ref_result["pairs_per_s"]
            row["rss_ratio_vs_st"] = result["peak_rss_mib"] / ref_result["peak_rss_mib"]
            row["agreement_vs_st"] = common.agreement(ref_scores, scores, groups)
        row["environment"] = environment
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Targets and the report.
# ---------------------------------------------------------------------------------------------
def _ok(row: dict) -> bool:
    return "error" not in row


def _agree(row: dict, key: str):
    return (row.get("agreement_vs_st") or {}).get(key)


def _faithful(row: dict) -> bool:
    spearman, top10 = _agree(row, "spearman"), _agree(row, "top10_agreement")
    return spearman is not None and spearman >= FIDELITY_SPEARMAN and top10 is not None and top10 >= FIDELITY_TOP10


def _fastest(rows: list[dict]) -> dict | None:
    return max(rows, key=lambda r: r["pairs_per_s"]) if rows else None


def _verdict(passed: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "not measured"}[passed]


def _unique_pairs(pairs: list[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
    seen, out = set(), []
    for mine, theirs in pairs:
        if (mine["system"], theirs["system"]) not in seen:
            seen.add((mine["system"], theirs["system"]))
            out.append((mine, theirs))
    return out


# Issue 16's goals on CPUs whose kernels are AVX2-only (no AVX-512, no VNNI), where they are stricter than
# issue 7's 1.2x: target name → the ratio asked there.
AVX2_ONLY_GOALS = {"strict fp32 vs the faster plain fp32 peer": 1.3,
                   "fastest faithful rerankrt vs fastest faithful OpenVINO peer": 1.5}


def avx2_only(environment: dict) -> bool:
    """Whether the kernels of this run saw an AVX2-only CPU (a real one or the emulation)."""
    cpu = environment["hardware"]["cpu"]
    return "avx2" in cpu["features"] and not cpu["avx512"] and not cpu["vnni"]


def compute_targets(rows: list[dict], fidelity_model: str, start_model: str, avx2_only_cpu: bool = False) -> list[dict]:
    """The issues' targets, from this run's rows only. Each: what was compared, the value, pass/fail.

    On an AVX2-only CPU (``avx2_only_cpu``) the two speed ratios are judged twice: against issue 7's goal and
    against issue 16's stricter one (:data:`AVX2_ONLY_GOALS`)."""
    targets = _targets(rows, fidelity_model, start_model)
    if not avx2_only_cpu:
        return targets
    out = []
    for target in targets:
        out.append(target)
        goal = AVX2_ONLY_GOALS.get(target["target"])
        if goal is not None:
            strict_ok = target.get("strict", True)
            out.append({**target, "target": target["target"] + " (issue 16, AVX2-only CPU)",
                        "goal": target["goal"].replace(f"≥ {TARGET_RATIO}×", f"≥ {goal}×"),
                        "passed": None if target["ratio"] is None else bool(strict_ok) and target["ratio"] >= goal})
    return out


def _targets(rows: list[dict], fidelity_model: str, start_model: str) -> list[dict]:
    ok = [r for r in rows if _ok(r)]
    targets = []
    for model, workload in dict.fromkeys((r["model"], r["workload"]) for r in ok):
        group = [r for r in ok if r["model"] == model and r["workload"] == workload]
        fp32 = [r for r in group if r["family"] == "rerankrt" and r["precision"] == "fp32"
                and _agree(r, "max_rel_delta") is not None]
        strict = [r for r in fp32 if _agree(r, "max_rel_delta") <= STRICT_FP32_REL_DELTA]
        peer = _fastest([r for r in group if r["system"] in ("plain-ov-f32", "plain-ort-fp32")])
        ours = _fastest(strict) or _fastest(fp32)  # without a strict row: the fastest fp32 one, and a miss
        ratio = ours["pairs_per_s"] / peer["pairs_per_s"] if ours and peer else None
        detail = "peer or rerankrt fp32 row missing"
        if ours and peer:
            detail = (f"{ours['system']} {ours['pairs_per_s']:.1f} vs {peer['system']} {peer['pairs_per_s']:.1f} "
                      f"pairs/s; max |Δ|/range {_agree(ours, 'max_rel_delta'):.1e} "
                      f"(peer {fmt(_agree(peer, 'max_rel_delta'), '.1e')})")
            if not strict:
                detail += f": no rerankrt fp32 row within {STRICT_FP32_REL_DELTA:.0e} of st's range"
        targets.append({"target": "strict fp32 vs the faster plain fp32 peer", "model": model, "workload": workload,
                        "ours": ours and ours["system"], "peer": peer and peer["system"], "ratio": ratio,
                        "strict": bool(strict), "goal": f"≥ {TARGET_RATIO}× and max |Δ|/range ≤ "
                        f"{STRICT_FP32_REL_DELTA:.0e}",
                        "passed": None if ratio is None else bool(strict) and ratio >= TARGET_RATIO,
                        "detail": detail})

        if model == fidelity_model:
            ours = _fastest([r for r in group if r["family"] == "rerankrt" and _faithful(r)])
            peer = _fastest([r for r in group
                             if r["family"] == "plain" and r["runtime"] == "openvino" and _faithful(r)])
            ratio = ours["pairs_per_s"] / peer["pairs_per_s"] if ours and peer else None
            targets.append({"target": "fastest faithful rerankrt vs fastest faithful OpenVINO peer", "model": model,
                            "workload": workload, "ours": ours and ours["system"], "peer": peer and peer["system"],
                            "ratio": ratio, "goal": f"≥ {TARGET_RATIO}×",
                            "passed": None if ratio is None else ratio >= TARGET_RATIO,
                            "detail": (f"{ours['system']} {ours['pairs_per_s']:.1f} vs {peer['system']} "
                                       f"{peer['pairs_per_s']:.1f} pairs/s (Spearman ≥ {FIDELITY_SPEARMAN}, "
                                       f"top-10 ≥ {FIDELITY_TOP10})" if ours and peer else
                                       "no faithful rerankrt row" if peer else "no faithful OpenVINO peer row")})
            # memory: the fastest faithful pair, then every OpenVINO precision against its own peer
            pairs = [(ours, peer)] if ours and peer else []
            pairs += [(r, c) for r in group if r["system"] in OV_COUNTERPART
                      for c in group if c["system"] == OV_COUNTERPART[r["system"]]]
            for mine, theirs in _unique_pairs(pairs):
                rss = mine["peak_rss_mib"] / theirs["peak_rss_mib"]
                targets.append({"target": "peak RSS vs the OpenVINO peer", "model": model, "workload": workload,
                                "ours": mine["system"], "peer": theirs["system"], "ratio": rss, "goal": "≤ 1.0×",
                                "passed": rss <= 1.0, "detail": f"{mine['system']} "
                                f"{mine['peak_rss_mib']:.0f} vs {theirs['system']} {theirs['peak_rss_mib']:.0f} MiB"})

        targets += auto_targets(group, model, workload, model == fidelity_model,  # both are 17m-sized
                                model in (start_model, fidelity_model) and workload == ok[0]["workload"])

        if model == start_model and workload == ok[0]["workload"]:
            for r in group:
                if r["family"] != "rerankrt" or r["system"] == "rerankrt-auto":
                    continue
                starts = [r["cold_start_s"]] + ([r["second_start_s"]] if "second_start_s" in r else [])
                detail = f"{r['system']}: {r['cold_start_s']:.2f} s" + (f" (second start, compile cache warm: "
                                                         f"{r['second_start_s']:.2f} s)" if len(starts) > 1 else "")
                targets.append({"target": "cold start", "model": model, "workload": workload, "ours": r["system"],
                                "peer": None, "ratio": None, "value_s": r["cold_start_s"],
                                "second_start_s": r.get("second_start_s"), "goal": f"≤ {TARGET_COLD_START_S} s",
                                "passed": r["cold_start_s"] <= TARGET_COLD_START_S, "detail": detail})
    return targets


def _config_of(row: dict) -> dict | None:
    """The (precision, backend, inference precision) an explicit rerankrt row ran, in tuning's terms."""
    system = BY_NAME.get(row["system"])
    if system is None or system.runtime == "auto":
        return None
    between = row.get("ov_inference_precision") if system.runtime == "openvino" and system.precision == "int8" \
        else None
    return {"precision": system.precision, "backend": system.runtime, "inference_precision": between}


def auto_targets(group: list[dict], model: str, workload: str, judged: bool, start: bool) -> list[dict]:
    """What ``auto`` chose against the fastest faithful explicit rerankrt configuration of the same run
    (≥ 0.95×), and on the start model what tuning and reading its decision cost (≤ 10 s, ≤ 50 ms)."""
    auto = next((r for r in group if r["system"] == "rerankrt-auto"), None)
    if auto is None:
        return []
    best = _fastest([r for r in group if r["family"] == "rerankrt" and r["system"] != "rerankrt-auto"
                     and _faithful(r)])
    # the explicit row that ran auto's choice: what auto picked, measured like every other configuration
    same = next((r for r in group if r["family"] == "rerankrt" and r["system"] != "rerankrt-auto"
                 and _config_of(r) == auto.get("auto_config")), None)
    ratio = same["pairs_per_s"] / best["pairs_per_s"] if best and same else None
    detail = (f"auto chose {auto.get('auto_choice')}"
              + (f" = {same['system']} {same['pairs_per_s']:.1f} pairs/s" if same else " (no explicit row of it)")
              + (f"; fastest faithful: {best['system']} {best['pairs_per_s']:.1f} pairs/s" if best else
                 "; no faithful row")
              + f". The auto row itself: {auto['pairs_per_s']:.1f} pairs/s"
              + (f" ({auto['pairs_per_s'] / best['pairs_per_s']:.2f}× the fastest faithful)" if best else "")
              + f"{', faithful' if _faithful(auto) else ', NOT faithful'}")
    targets = [{"target": "auto's choice vs the fastest faithful configuration", "model": model,
                "workload": workload, "ours": same and same["system"], "peer": best and best["system"],
                "ratio": ratio, "auto_row_ratio": auto["pairs_per_s"] / best["pairs_per_s"] if best else None,
                "goal": "≥ 0.95×" if judged else "report",
                "passed": None if ratio is None else ratio >= 0.95, "detail": detail}]
    if start and "tuning_s" in auto:
        targets.append({"target": "tuning on first load", "model": model, "workload": workload,
                        "ours": "rerankrt-auto", "peer": None, "ratio": None, "goal": "≤ 10 s",
                        "passed": auto["tuning_s"] <= 10.0,
                        "detail": f"{auto['tuning_s']:.1f} s ({len(auto.get('tuning_table', []))} configurations)"})
    if start and "second_start_decision_read_ms" in auto:
        read_ms = auto["second_start_decision_read_ms"]
        targets.append({"target": "start-up cost of a cached decision", "model": model, "workload": workload,
                        "ours": "rerankrt-auto", "peer": None, "ratio": None, "goal": "≤ 50 ms",
                        "passed": read_ms <= 50.0,
                        "detail": f"{read_ms:.1f} ms to key and read it (second start "
                                  f"{auto['second_start_s']:.2f} s, chose {auto.get('second_start_auto_choice')})"})
    return targets


def fmt(value, spec: str) -> str:
    return common.fmt(value, spec)


def markdown_summary(rows: list[dict], targets: list[dict], systems: list[System], environment: dict,
                     command: str) -> str:
    peaks = environment["matmul_peaks"]
    by_prec = peaks["by_precision"]
    m, k, n = peaks["shape_mkn"]
    versions = ", ".join(f"{name} {v}" for name, v in environment["versions"].items())
    peak_parts = []
    for precision, unit in (("fp32", "GFLOP/s"), ("bf16", "GFLOP/s"), ("int8", "GOPS")):
        if precision in by_prec:
            p = by_prec[precision]
            extra = ""
            if precision == "fp32" and "openvino_gflops" in p:
                extra = f"; onnxruntime {p['onnxruntime_gflops']:.0f}, OpenVINO {p['openvino_gflops']:.0f}"
            elif "runtime_matmuls" in p:
                extra = f"; runs as {', '.join(p['runtime_matmuls'])}"
            peak_parts.append(f"{precision} **{p['gops']:.0f}** {unit} ({p['runtime']}{extra})")
        else:
            peak_parts.append(f"{precision} not measured")
    lines = [
        f"# CPU peers benchmark — {environment['date']}", "",
        f"Command: `{command}`", "",
        "## Hardware", "",
        *common.hardware_lines(environment),
        f"- matmul peaks, [{m}×{k}]·[{k}×{n}] with constant weights, {peaks['threads']} threads, median of "
        f"{peaks['runs']}: " + " · ".join(peak_parts),
        common.load_line(environment),
        f"- {versions}", "",
        "## Systems", "",
        *[f"- `{s.name}`: {s.description}" for s in systems], "",
    ]
    ok = [r for r in rows if _ok(r)]
    for workload in dict.fromkeys(r["workload"] for r in rows):
        group = [r for r in rows if r["workload"] == workload]
        docs = next((r["rank_latency_ms"]["docs"] for r in group if _ok(r)), "N")
        lines += [f"## {workload} (max_length {MAX_LENGTH}, {THREADS} threads)", "",
                  f"| model | pairs | system | runs in | pairs/s (best pass) | × st | rank 1×{docs} p50 / p95 ms | "
                  "peak RSS MiB | cold start s (2nd) | max \\|Δ\\|/range | Spearman | top-10 | G(FL)OP/s | % peak |",
                  "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in group:
            if not _ok(r):
                lines.append(f"| {r['model']} | — | {r['system']} | {r['precision']} | failed: {r['error']} "
                             "| | | | | | | | | |")
                continue
            system = f"st (bs {r['batch_size']})" if r["system"] == "st" else r["system"]
            start = f"{r['cold_start_s']:.2f}" + (f" ({r['second_start_s']:.2f})" if "second_start_s" in r else "")
            frac = r["fraction_of_peak"]
            lines.append(
                f"| {r['model']} | {r['n_pairs']} | {system} | {r['run_precision']} | {r['pairs_per_s']:.1f} "
                f"({r.get('best_pass_pairs_per_s', r['pairs_per_s']):.1f}) | "
                f"{fmt(r.get('speedup_vs_st'), '.2f')} | "
                f"{r['rank_latency_ms']['p50']:.0f} / {r['rank_latency_ms']['p95']:.0f} | {r['peak_rss_mib']:.0f} | "
                f"{start} | {fmt(_agree(r, 'max_rel_delta'), '.1e')} | {fmt(_agree(r, 'spearman'), '.5f')} | "
                f"{fmt(_agree(r, 'top10_agreement'), '.2f')} | {r['achieved_gops']:.0f} | "
                + ("—" if frac is None else f"{100 * frac:.0f}% {r['peak_precision']}") + " |")
        lines.append("")

    pairs = [(r, c) for r in ok if r["system"] in OV_COUNTERPART
             for c in ok if c["system"] == OV_COUNTERPART[r["system"]] and c["model"] == r["model"]
             and c["workload"] == r["workload"]]
    if pairs:
        lines += ["## rerankrt on OpenVINO vs the OpenVINO peer of the same precision", "",
                  "| model | workload | rerankrt | peer | × speed | × peak RSS | Spearman (ours / peer) |",
                  "|---|---|---|---|---:|---:|---|"]
        for r, c in pairs:
            lines.append(f"| {r['model']} | {r['workload']} | {r['system']} | {c['system']} | "
                         f"{r['pairs_per_s'] / c['pairs_per_s']:.2f} | {r['peak_rss_mib'] / c['peak_rss_mib']:.2f} | "
                         f"{fmt(_agree(r, 'spearman'), '.4f')} / {fmt(_agree(c, 'spearman'), '.4f')} |")
        lines.append("")

    lines += ["## Targets (this run only)", "", "| target | model | workload | result | goal | |",
              "|---|---|---|---|---|---|"]
    for t in targets:
        value = (f"{t['ratio']:.2f}× — " if t.get("ratio") is not None else "") + t["detail"]
        verdict = "" if t["goal"] == "report" else _verdict(t["passed"])
        cells = [t["target"], t["model"], t["workload"], value, t["goal"], verdict]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if not targets:
        lines.append("| — | | | nothing to compare (systems filtered out or failed) | | |")
    lines.append("")
    if environment["skipped"]:
        lines += ["## Skipped", "", *[f"- `{name}`: {why}" for name, why in environment["skipped"].items()], ""]
    int8_methods = {r["model"]: r["artifact_int8_method"] for r in ok if r.get("artifact_int8_method")}
    lines += [
        "Notes:",
        ("- One run, interleaved (`--interleaved`): every system loaded in its own process, then round after "
         "round of one timed pass of each (a seeded random order per round), so every ratio compares passes from "
         "the same minutes of the machine. pairs/s is "
         if any(r.get("interleaved") for r in rows) else
         "- One run; every ratio compares systems measured back to back in it, each in its own process (a drift "
         "of the machine over the run's minutes lands in the ratios: `--interleaved` avoids it). pairs/s is ")
        + "the median of the timed passes after a warm-up (in brackets: the best pass — on a shared cloud "
        "machine a pass runs in a fast or a ~1.2-1.3× slower mode from one few-second stretch to the next, invisible "
        "to the guest (no steal time), so a median can land on either mode; ratios of the best passes compare each "
        "system's fast mode); st uses its fastest batch size of 16/32/64. Every other "
        "system scores through rerankrt's `Reranker` (same tokenizer, same length-sorted 2048-token batches), so "
        "only the graph and the runtime differ.",
        "- Fidelity is against st's scores on the same pairs: max |Δ| divided by st's score range, Spearman, mean "
        f"per-query top-10 agreement. Random-weight fixtures squeeze the scores together, which exaggerates "
        f"reduced-precision error; judge bf16/int8 fidelity on `{environment['fidelity_model']}`.",
        "- `runs in`: what OpenVINO resolved (`INFERENCE_PRECISION_HINT` of the compiled model); int8 rows list the "
        "precision of their non-quantized parts. % peak divides the analytic GFLOP estimate (common."
        "estimate_flops) by the time and by the matmul peak of the row's precision: fp32 rows by the fp32 peak "
        "(the better of onnxruntime and OpenVINO), bf16 rows (OpenVINO's default on a BF16 CPU included) by the "
        "bf16 peak, int8 rows by the int8 peak; int8 rows keep some matmuls in fp32/bf16, so their % is a floor.",
        "- Cold start: from the parent's spawn to the first score of one pair (interpreter, imports, load, first "
        "run). rerankrt's OpenVINO rows start twice: first with an empty compile cache ($RERANKRT_CACHE), then "
        "again with the cache it wrote (in brackets). The OpenVINO peers use no compile cache (OpenVINO's default).",
        "- Peer graphs are built once per model and cached in `<work>/peers/<model>/`: `torch.onnx.export` of the "
        "PyTorch reference module (opset 17, dynamic batch/sequence); `quantize_dynamic` with default settings; "
        "NNCF `quantize(model_type=TRANSFORMER)` calibrated on rerankrt's builtin pairs (the data rerankrt's own "
        "int8 calibration uses), saved with `openvino.save_model` defaults.",
        (f"- rerankrt int8 graphs measured: {', '.join(f'{k}: {v}' for k, v in int8_methods.items())}."
         if int8_methods else "- No rerankrt int8 row was measured."),
    ]
    return "\n".join(lines) + "\n"


def openvino_available() -> tuple[bool, bool]:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None, importlib.util.find_spec("nncf") is not None


def export_supports_bf16() -> bool:
    from rerankrt.export import pipeline

    return "bf16" in getattr(pipeline, "EXPORT_PRECISIONS", ())


def choose_systems(requested: list[str], has_bf16: bool) -> tuple[list[System], dict[str, str], bool]:
    """The systems to run, in report order, and why any of the requested ones are left out."""
    has_ov, has_nncf = openvino_available()
    bf16_export = export_supports_bf16() and has_bf16  # the export verifies bf16 only where the CPU runs it
    chosen, skipped = [], {}
    for system in SYSTEMS:
        if system.name not in requested:
            continue
        if system.needs_openvino and not has_ov:
            skipped[system.name] = "openvino is not installed (pip install 'rerankrt[openvino]')"
        elif system.graph == "plain-nncf-int8" and not has_nncf:
            skipped[system.name] = "nncf is not installed"
        elif system.name == "rerankrt-ov-bf16" and not has_bf16:
            skipped[system.name] = "this CPU has neither AVX512_BF16 nor AMX_BF16"
        elif system.name == "rerankrt-ov-bf16" and not export_supports_bf16():
            skipped[system.name] = "this rerankrt's export cannot write bf16 yet"
        else:
            chosen.append(system)
    return chosen, skipped, bf16_export


def driver_main(args: argparse.Namespace) -> None:
    from rerankrt.engine.hardware import cpu_info

    names = common.model_names(args.models, args.smoke, not args.no_distilled)
    requested, workload_names = args.systems.split(","), args.workloads.split(",")
    common.refuse_unknown({"model": (names, common.MODEL_NAMES), "system": (requested, list(BY_NAME)),
                           "workload": (workload_names, list(WORKLOADS))})
    has_bf16 = cpu_info().has_bf16
    systems, skipped, bf16_export = choose_systems(requested, has_bf16)
    for name, why in skipped.items():
        say(f"skipping {name}: {why}")
    if "st" not in requested:
        say("WARNING: st is not among the systems: no ratios to st and no fidelity")
    # the smoke model stands in for the distilled model (fidelity) and for 17m (cold start)
    fidelity_model = "tiny" if args.smoke else DISTILLED_NAME
    start_model = "tiny" if args.smoke else "17m"

    stamp = time.strftime("%Y%m%d-%H%M")
    run_id = f"cpu-peers-{stamp}"
    work, out = args.work.resolve(), args.out.resolve()
    run_dir = work / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    load = os.getloadavg()[0]
    if load > 0.5:
        say(f"WARNING: 1-minute load average is {load:.2f}; other processes on these cores skew every timing")
    has_ov, _ = openvino_available()
    say(f"measuring the matmul peaks ({THREADS} threads): fp32 (onnxruntime"
        + (", OpenVINO), bf16 (OpenVINO), int8 (OpenVINO + NNCF)" if has_ov else ")"))
    environment = {"run_id": run_id, "date": time.strftime("%Y-%m-%dT%H:%M"), "load_average_1m": load,
                   "hardware": common.hardware_info(), "versions": common.package_versions(("openvino", "nncf")),
                   "matmul_peaks": machine_peaks(has_bf16, has_ov), "threads": THREADS, "max_length": MAX_LENGTH,
                   "smoke": args.smoke, "skipped": skipped, "fidelity_model": fidelity_model,
                   "start_model": start_model}
    say("peaks: " + ", ".join(f"{p} {v['gops']:.0f}" for p, v in environment["matmul_peaks"]["by_precision"].items()))

    precisions = ("fp32", "bf16", "int8") if bf16_export else ("fp32", "int8")
    models = [common.prepare_model(name, work, args.pairs_limit, precisions, args.reexport) for name in names]
    needed = {s.graph for s in systems if s.family == "plain"}
    needed |= {"plain"} if needed else set()
    plain_dirs = {model.name: prepare_plain(model, work, needed, args.reexport) for model in models}
    workloads = (common.load_workloads(workload_names, 2, 10, 10) if args.smoke
                 else common.load_workloads(workload_names, 10, 100, 30))
    passes, latency_calls = (1, 2) if args.smoke else (5 if args.interleaved else 3, 10)
    passes = args.passes or passes
    environment["systems"] = [s.name for s in systems]

    jsonl = out / f"{run_id}.jsonl"
    jsonl.unlink(missing_ok=True)
    rows: list[dict] = []
    for model in models:
        for workload in workloads:
            group = measure_group(model, workload, systems, plain_dirs[model.name], run_dir, passes, latency_calls,
                                  environment, args.interleaved)
            with jsonl.open("a", encoding="utf-8") as fh:  # appended per group: a crash keeps what was measured
                fh.writelines(json.dumps(row) + "\n" for row in group)
            rows += group

    targets = compute_targets(rows, fidelity_model, start_model, avx2_only(environment))
    with jsonl.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"record": "targets", "run_id": run_id, "targets": targets}) + "\n")
    command = "python benchmarks/bench_cpu_peers.py " + " ".join(sys.argv[1:])
    summary = markdown_summary(rows, targets, systems, environment, command)
    common.write_summary(out, run_id, "LATEST-cpu-peers.md", summary, jsonl)


def parse_args(argv: list[str]) -> argparse.Namespace:
    if argv[:1] == ["worker"]:
        parser = common.worker_parser("bench_cpu_peers.py worker", BY_NAME)
        parser.add_argument("--plain-dir", type=Path, required=True)
        parser.add_argument("--start-only", action="store_true", help="load, score one pair, record the start")
        args = parser.parse_args(argv[1:])
        args.mode = "worker"
        return args
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"Ettin sizes (builders.ETTIN_SHAPES); {DISTILLED_NAME} is added unless --no-distilled")
    parser.add_argument("--systems", default=",".join(BY_NAME), help="comma-separated subset of: " + ", ".join(BY_NAME))
    parser.add_argument("--workloads", default="negconstraint", help="negconstraint (1×100 rank calls), scifact")
    parser.add_argument("--pairs-limit", type=int, default=DEFAULT_PAIRS_LIMIT,
                        help="max pairs per model × workload; whole queries are kept")
    common.add_run_arguments(parser, "cache for fixtures, artifacts, peer graphs, pairs and scores (shared with "
                             "bench_cpu.py)")
    parser.add_argument("--reexport", action="store_true",
                        help="rebuild the cached artifacts and peer graphs (e.g. after the exporter changed)")
    parser.add_argument("--interleaved", action="store_true",
                        help="keep every system loaded in its own process and time one pass of each in turn "
                             "(same minutes of the machine for every system: the ratios issue 16 judges)")
    parser.add_argument("--passes", type=int, default=None,
                        help="timed passes per system (default 3; 5 with --interleaved; 1 with --smoke)")
    args = parser.parse_args(argv)
    args.mode = "driver"
    return args


if __name__ == "__main__":
    common.run_driver_or_worker(parse_args, driver_main, worker_main)
