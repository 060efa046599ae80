"""int8 forms across CPU classes: is the int8 graph faithful on AVX2-only CPUs, and what does it cost on VNNI?

    python benchmarks/bench_int8_cpu_classes.py --out benchmarks/results
    python benchmarks/bench_int8_cpu_classes.py --emulate EPYC-Milan   # + an AVX2/FMA-only CPU (Zen 3) under qemu

Why: onnxruntime's and OpenVINO's u8×s8 kernels on x86 CPUs without VNNI (AVX2, AVX-512 without
VNNI) add pairs of byte products in saturating 16-bit lanes (``vpmaddubsw``); with full 8-bit
weights (|w| ≤ 127) a pair can reach 2·255·127 = 64,770 > 32,767 and saturate. 7-bit weights
(onnxruntime's ``reduce_range``, |w| ≤ 64) keep every pair within 2·255·64 = 32,640: no
saturation on any CPU. This script measures both forms, built from the same fp32 graph with the
same calibration batches:

* **fidelity** against sentence-transformers fp32 (the reference users know) on each CPU class:
  the machine's own, and, with ``--emulate MODEL``, a CPU model that ``qemu-x86_64`` (TCG)
  emulates: TCG implements AVX2/FMA but no AVX-512, so ``EPYC-Milan`` (Zen 3) or ``Haswell`` is
  exactly the AVX2-only class. The kernels dispatch on CPUID, which the emulator answers; the
  worker prints the int8 class it sees (``rerankrt.engine.hardware``) so the report shows it;
* **speed** on the machine's own CPU only (emulated time means nothing): every form × runtime
  interleaved in one process, median of ``--rounds`` rounds.

Two models: the distilled 17m (trained-like score spread; the issue's Spearman/top-10 targets)
and the random-weight 17m with the parity gate's own built-in pairs (the case the test suite's
session fixture failed on AVX2-only CPUs).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import common

HERE = Path(__file__).resolve().parent
FORMS = {"8-bit weights (before)": False, "7-bit weights (reduce_range)": True}


# ---------------------------------------------------------------------------------------------
# Worker: scores every form on every runtime on this (possibly emulated) CPU.
# ---------------------------------------------------------------------------------------------
def _runners(path: Path, has_bf16: bool) -> dict[str, object]:
    """Every runtime of the int8 graph, built by the engine's one factory (with its batch policy)."""
    from rerankrt.engine.backends import create_backend

    ov = {"cache_dir": False}
    out = {"onnxruntime": create_backend(path, "int8", "onnxruntime", threads=common.THREADS),
           "openvino f32": create_backend(path, "int8", "openvino", threads=common.THREADS,
                                          options={**ov, "inference_precision": "f32"})}
    if has_bf16:
        out["openvino bf16"] = create_backend(path, "int8", "openvino", threads=common.THREADS,
                                              options={**ov, "inference_precision": "bf16"})
    return out


def _one_pass(created, ids: list, pad_id: int) -> tuple[np.ndarray, float]:
    """One timed pass through the scoring core (plan → pad → run, the runtime's own path)."""
    from rerankrt.engine.scoring import score_ids

    started = time.perf_counter()
    out = score_ids(created.backend, ids, created.policy, pad_id)[:, 0]
    return out, time.perf_counter() - started


def worker_main(args: argparse.Namespace) -> None:
    from rerankrt.engine.hardware import cpu_info

    plan = json.loads(Path(args.plan).read_text())
    cpu = cpu_info()
    result = {"cpu": cpu.summary(), "label": args.label, "scores": {}, "seconds": {}}
    for job in plan["jobs"]:
        ids = [list(map(int, row)) for row in json.loads(Path(job["ids"]).read_text())]
        configs = {(job["model"], form, runtime): backend
                   for form, path in job["forms"].items()
                   for runtime, backend in _runners(Path(path), cpu.has_bf16).items()}
        rounds = args.rounds if args.timed else 1
        times: dict[tuple, list[float]] = {key: [] for key in configs}
        if args.timed:
            for backend in configs.values():  # warm-up: first-shape compilation
                _one_pass(backend, ids, job["pad_id"])
        for round_ in range(rounds):
            common.say(f"{args.label}: {job['model']} round {round_ + 1}/{rounds}")
            for key, backend in configs.items():
                scores, seconds = _one_pass(backend, ids, job["pad_id"])
                times[key].append(seconds)
                result["scores"]["|".join(key)] = scores.tolist()
        result["seconds"].update({"|".join(key): t for key, t in times.items()})
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Driver: models, forms, reference scores, then the workers.
# ---------------------------------------------------------------------------------------------
def _forms(artifact_dir: Path, pairs_for_calibration, work: Path) -> dict[str, str]:
    import onnx

    from rerankrt.engine.artifact import load_artifact
    from rerankrt.engine.tokenize import PairTokenizer
    from rerankrt.export.passes.embedding_int8 import quantize_embedding_table
    from rerankrt.export.pipeline import _calibration_batches
    from rerankrt.export.quantize import quantize_int8_static

    artifact = load_artifact(artifact_dir)
    tokenizer = PairTokenizer.for_artifact(artifact)
    calib = [(b.input_ids, b.attention_mask) for b in _calibration_batches(tokenizer, pairs_for_calibration)]
    layers = int(artifact.manifest["architecture"]["num_hidden_layers"])
    out = {}
    for name, reduce_range in FORMS.items():
        path = work / f"{artifact_dir.name}-{'7bit' if reduce_range else '8bit'}.onnx"
        quantize_int8_static(artifact.graph("fp32").path, path, layers, calib, reduce_range=reduce_range)
        model = onnx.load(str(path))
        quantize_embedding_table(model)
        onnx.save_model(model, str(path))
        out[name] = str(path)
    return out


def _reference(source_dir: Path, pairs: list[tuple[str, str]], max_length: int) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(source_dir), device="cpu", max_length=max_length)
    return np.asarray(model.predict(pairs, batch_size=16, activation_fn=None, convert_to_numpy=True),
                      np.float64).reshape(-1)


def _spawn(label: str, plan: Path, work: Path, emulate: str | None, timed: bool, rounds: int) -> dict:
    result = work / f"worker-{label}.json"
    command = [sys.executable, __file__, "--worker", "--plan", str(plan), "--result", str(result),
               "--label", label, "--rounds", str(rounds)] + (["--timed"] if timed else [])
    if emulate:
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            raise SystemExit("--emulate needs qemu-user (apt-get install qemu-user)")
        command = [qemu, "-cpu", emulate, str(Path(sys.executable).resolve()), *command[1:]]
    common.say(f"worker {label}: {' '.join(command[:4])} …")
    started = time.perf_counter()
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL if emulate else None)
    out = json.loads(result.read_text())
    out["wall_s"] = time.perf_counter() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--emulate", action="append", default=[],
                        help="qemu-x86_64 CPU model to score on as well (e.g. EPYC-Milan, Haswell); repeatable")
    parser.add_argument("--queries", type=int, default=4, help="distilled 17m: negconstraint queries × --docs")
    parser.add_argument("--docs", type=int, default=25)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--timed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return

    from rerankrt.engine.artifact import load_artifact
    from rerankrt.engine.tokenize import PairTokenizer
    from rerankrt.export import calibration
    from rerankrt.export.parity import top_k_agreement

    work = HERE / "work" / "int8-cpu-classes"
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    queries = rng.sample(common.read_texts(common.NEGCONSTRAINT_DIR / "queries.jsonl"), args.queries)
    docs = rng.sample(common.read_texts(common.NEGCONSTRAINT_DIR / "corpus.jsonl"), args.docs)
    workloads = {
        common.DISTILLED_NAME: ([(q, d) for q in queries for d in docs], common.MAX_LENGTH),
        "17m": (calibration.builtin_pairs(), None),  # the parity gate's own pairs, the model's own max_length
    }
    jobs, references, groups = [], {}, {}
    for name, (pairs, max_length) in workloads.items():
        model = common.prepare_model(name, HERE / "work", None)
        artifact = load_artifact(model.artifact_dir)
        spec = artifact.tokenizer_spec
        max_length = max_length or spec["max_length"]
        tokenizer = PairTokenizer.for_artifact(artifact, max_length)
        ids = tokenizer.encode(pairs)
        ids_file = work / f"{name}-ids.json"
        ids_file.write_text(json.dumps([list(map(int, row)) for row in ids]))
        common.say(f"{name}: building the int8 forms and the sentence-transformers fp32 reference")
        forms = _forms(model.artifact_dir, calibration.builtin_pairs(seed=1), work)
        references[name] = _reference(model.source_dir, pairs, max_length)
        groups[name] = calibration.group_ids(pairs)
        jobs.append({"model": name, "ids": str(ids_file), "pad_id": spec["pad_id"], "forms": forms,
                     "tokens": int(sum(len(t) for t in ids)), "pairs": len(pairs)})
    plan = work / "plan.json"
    plan.write_text(json.dumps({"jobs": jobs}))

    workers = [_spawn("native", plan, work, None, True, args.rounds)]
    workers += [_spawn(f"qemu {model}", plan, work, model, False, 1) for model in args.emulate]

    rows = []
    for worker in workers:
        for key, scores in worker["scores"].items():
            model, form, runtime = key.split("|")
            ref, got = references[model], np.asarray(scores, np.float64)
            rows.append({
                "cpu": worker["label"], "int8_class": worker["cpu"]["int8_class"], "model": model, "form": form,
                "runtime": runtime, "max_rel_delta": float(np.abs(got - ref).max() / (ref.max() - ref.min())),
                "spearman": float(_spearman(ref, got)),
                "top10": top_k_agreement(ref, got, groups[model]),
                "pairs_per_s": (len(got) / statistics.median(worker["seconds"][key])
                                if worker["label"] == "native" else None),
            })
    native = [r for r in rows if r["cpu"] == "native"]
    body = [f"Forms built from the same fp32 graph and calibration batches. Reference: sentence-transformers fp32. "
            f"Distilled 17m: {len(workloads[common.DISTILLED_NAME][0])} negconstraint pairs ({args.queries} queries × "
            f"{args.docs} docs, max_length {common.MAX_LENGTH}); "
            "random-weight 17m: the parity gate's 128 built-in pairs "
            f"(0 … ~1,800 tokens). {common.THREADS} threads; "
            f"speed is the median of {args.rounds} interleaved rounds on the "
            "native CPU only.", "",
            "| CPU (int8 class) | model | int8 form | runtime | max \\|Δ\\|/range | Spearman | top-10 | pairs/s |",
            "|---|---|---|---|---:|---:|---:|---:|"]
    body += [f"| {r['cpu']} ({r['int8_class']}) | {r['model']} | {r['form']} | {r['runtime']} | "
             f"{r['max_rel_delta']:.2e} | {r['spearman']:.5f} | {r['top10']:.3f} | "
             f"{common.fmt(r['pairs_per_s'], '.1f')} |" for r in rows]
    speed = {(r["model"], r["runtime"]): {} for r in native}
    for r in native:
        speed[(r["model"], r["runtime"])][r["form"]] = r["pairs_per_s"]
    body += ["", "Speed ratio 7-bit / 8-bit weights on the native CPU (same run):", ""]
    body += [f"- {model}, {runtime}: {v[list(FORMS)[1]] / v[list(FORMS)[0]]:.3f}×"
             for (model, runtime), v in speed.items() if len(v) == 2]
    body += ["", "Workers: " + "; ".join(f"{w['label']} saw {w['cpu']['int8_class']} "
                                         f"({' '.join(w['cpu']['features'])}), {w['wall_s']:.0f} s" for w in workers)]
    command = "python benchmarks/bench_int8_cpu_classes.py" + "".join(f" --emulate {m}" for m in args.emulate)
    common.write_report(Path(args.out), "int8-cpu-classes", "int8 forms across CPU classes", command,
                    common.run_environment(("openvino",)), rows, body)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).correlation)


if __name__ == "__main__":
    main()
