"""The int8 form TensorRT reads vs the CPU int8 form, on both CPU backends: speed, fidelity, conformance.

    python benchmarks/bench_int8_tensorrt_form.py --out benchmarks/results

Backs issue 19's choice of which int8 file an artifact carries. Both graphs are written by the
exporter itself (``rerankrt export``, parity gate included) from the same source model and the same
calibration batches:

* ``int8-static`` (the default, the CPU form): uint8 activations with zero points, 7-bit per-channel
  weights, the embedding table as ``Gather(int8) → Cast → Mul``;
* ``int8-symmetric`` (``--int8-method symmetric``, TensorRT's form): int8 activations with zero point 0,
  8-bit per-channel weights, the embedding through ``DequantizeLinear``.

Each is checked against TensorRT's ONNX rules (``export/tensorrt_rules.py``) and timed on
onnxruntime and OpenVINO (f32, and bf16 between the int8 matmuls where the CPU has it) on the
distilled 17m, 300 negconstraint pairs (3 queries × 100 documents, max_length 512, 2 threads), all
configurations in one process, **interleaved** (each round runs one pass of each), median of the
rounds. Fidelity is against the fp32 graph on OpenVINO in strict f32 (max |Δ|/range, Spearman, mean
per-query top-10 overlap), beside the parity gate's own verdict against PyTorch from each export.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import numpy as np

import common

HERE = Path(__file__).resolve().parent
RECIPES = ("static", "symmetric")
GATE_KEYS = ("passed", "max_rel_delta", "spearman", "top10_agreement")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="2 rounds, 60 pairs: checks the script")
    args = parser.parse_args()
    rounds, n_docs = (2, 20) if args.smoke else (args.rounds, 100)


    from rerankrt.engine.artifact import load_artifact
    from rerankrt.engine.hardware import cpu_info
    from rerankrt.engine.tokenize import PairTokenizer
    from rerankrt.export import tensorrt_rules
    from rerankrt.export.pipeline import export

    model = common.prepare_model(common.DISTILLED_NAME, HERE / "work", None, precisions=("fp32", "int8"))
    artifact = load_artifact(model.artifact_dir)
    artifacts = {}
    for method in RECIPES:
        target = HERE / "work" / "artifacts" / f"{common.DISTILLED_NAME}-int8-{method}"
        manifest = target / "manifest.json"
        if not manifest.is_file() or "tensorrt" not in json.loads(manifest.read_text())["graphs"]["int8"]:
            common.say(f"exporting {common.DISTILLED_NAME} with --int8-method {method}")
            export(str(model.source_dir), target, precisions=["fp32", "int8"], int8_method=method,
                   allow_parity_failure=True, overwrite=True, log=None)
        artifacts[method] = load_artifact(target)
    spec = artifact.tokenizer_spec
    tokenizer = PairTokenizer.for_artifact(artifact, common.MAX_LENGTH)
    rng = random.Random(0)
    queries = rng.sample(common.read_texts(common.NEGCONSTRAINT_DIR / "queries.jsonl"), 3)
    docs = rng.sample(common.read_texts(common.NEGCONSTRAINT_DIR / "corpus.jsonl"), n_docs)
    ids = tokenizer.encode([(q, d) for q in queries for d in docs])
    groups = [i // n_docs for i in range(len(ids))]
    by_multiple = common.batches_by_multiple(ids, spec["pad_id"])

    def openvino(path: Path, hint: str):
        return common.graph_runner(path, "openvino", hint)

    def onnxruntime(path: Path):
        return common.graph_runner(path, "onnxruntime")

    def one_pass(run, multiple: int) -> tuple[np.ndarray, float]:
        return common.scored_pass(run, by_multiple[multiple], len(ids))

    fp32_path = artifacts["static"].graph("fp32").path
    has_bf16 = cpu_info().has_bf16
    forms = {m: (a.graph("int8").path, a.manifest["graphs"]["int8"]) for m, a in artifacts.items()}
    gate = {f"int8-{m}": a.manifest["parity"]["results"]["int8"] for m, a in artifacts.items()}
    gate["fp32"] = artifacts["static"].manifest["parity"]["results"]["fp32"]
    configs = {("fp32", "openvino", "f32"): (openvino(fp32_path, "f32"), 1),
               ("fp32", "onnxruntime", "f32"): (onnxruntime(fp32_path), 1)}
    for method, (path, _) in forms.items():
        configs[(f"int8-{method}", "openvino", "f32")] = (openvino(path, "f32"), 16)
        if has_bf16:
            configs[(f"int8-{method}", "openvino", "bf16")] = (openvino(path, "bf16"), 16)
        configs[(f"int8-{method}", "onnxruntime", "f32")] = (onnxruntime(path), 1)
    reference, _ = one_pass(*configs[("fp32", "openvino", "f32")])
    for run, multiple in configs.values():  # warm-up: first-shape compilation
        one_pass(run, multiple)
    times: dict[tuple, list[float]] = {key: [] for key in configs}
    scores: dict[tuple, np.ndarray] = {}
    for round_ in range(rounds):
        common.say(f"round {round_ + 1}/{rounds}")
        for key, (run, multiple) in configs.items():
            scores[key], seconds = one_pass(run, multiple)
            times[key].append(seconds)
    sizes = {f"int8-{m}": p.stat().st_size for m, (p, _) in forms.items()}
    conformance = {f"int8-{m}": e["tensorrt"] for m, (_, e) in forms.items()}
    conformance["fp32"] = tensorrt_rules.check_graph(fp32_path).report()

    rows = []
    for key in configs:
        form, runtime, between = key
        agree = common.agreement(reference, scores[key], groups)
        rows.append({"form": form, "runtime": runtime, "between_int8_matmuls": between,
                     "pairs_per_s": len(ids) / statistics.median(times[key]),
                     "pass_times_s": [round(t, 4) for t in times[key]],
                     "max_rel_delta": agree["max_rel_delta"], "spearman": agree["spearman"],
                     "top10": agree["top10_agreement"],
                     "file_mb": (sizes.get(form) or fp32_path.stat().st_size) / 1e6,
                     "tensorrt_conformant": conformance[form]["tensorrt_conformant"],
                     "gate": {k: gate[form].get(k) for k in GATE_KEYS}})
    speed = {(r["form"], r["runtime"], r["between_int8_matmuls"]): r["pairs_per_s"] for r in rows}
    body = [f"Distilled 17m, {len(ids)} negconstraint pairs, max_length {common.MAX_LENGTH}, {common.THREADS} threads, "
            f"one process, configurations interleaved; median of {rounds} rounds. Fidelity vs the fp32 graph "
            "(OpenVINO, strict f32).", "",
            "| graph | runtime | between int8 matmuls | pairs/s | × int8-static | file MB | max \\|Δ\\|/range "
            "| Spearman | top-10 | TensorRT rules |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    gate_lines = ["", "The parity gate of each export (against PyTorch, the calibration pairs; worst backend):", "",
                  "| graph | passed | max \\|Δ\\|/range | Spearman | top-10 |", "|---|---|---:|---:|---:|"]
    gate_lines += [f"| {form} | {g.get('passed')} | {_num(g.get('max_rel_delta'), '.1e')} | "
                   f"{_num(g.get('spearman'), '.5f')} | {_num(g.get('top10_agreement'), '.3f')} |"
                   for form, g in gate.items()]
    for r in rows:
        base = speed.get(("int8-static", r["runtime"], r["between_int8_matmuls"]))
        ratio = f"{r['pairs_per_s'] / base:.2f}×" if base and r["form"] != "fp32" else "—"
        body.append(f"| {r['form']} | {r['runtime']} | {r['between_int8_matmuls']} | {r['pairs_per_s']:.1f} | {ratio} "
                    f"| {r['file_mb']:.1f} | {r['max_rel_delta']:.1e} | {r['spearman']:.5f} | {r['top10']:.3f} "
                    f"| {'conformant' if r['tensorrt_conformant'] else 'not conformant'} |")
    body += gate_lines
    body += ["", "TensorRT conformance (`export/tensorrt_rules.py`):", ""]
    body += [f"- {form}: {tensorrt_rules.summarize(report)}" for form, report in conformance.items()]
    out = Path(args.out) if not args.smoke else HERE / "work" / "smoke-results"
    common.write_report(out, "int8-tensorrt-form", "int8: the TensorRT form vs the CPU form",
                        "python benchmarks/bench_int8_tensorrt_form.py" + (" --smoke" if args.smoke else ""),
                        common.run_environment(("openvino",)), rows, body)


def _num(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "—"


if __name__ == "__main__":
    main()
