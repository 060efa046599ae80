"""int8 graph forms, side by side: which Q/DQ layout and which precision between the int8 matmuls run fastest.

    python benchmarks/bench_int8_forms.py --out benchmarks/results

Backs three choices of the exporter and the OpenVINO backend, on the distilled 17m (trained-like
scores) and 300 negconstraint pairs (3 queries × 100 docs, max_length 512, 2 threads):

* ``outputs-quantized`` (onnxruntime ``quantize_static`` defaults: every quantized MatMul's output
  re-quantized) vs ``inputs-only`` (``OpTypesToExcludeOutputQuantization=["MatMul"]``, what the
  exporter writes);
* the token-embedding table fp32 vs int8 per row (``export/passes/embedding_int8.py``);
* on OpenVINO, f32 vs bf16 between the int8 matmuls (bf16 only on CPUs with AVX512_BF16/AMX),
  against the artifact's fp32 graph in strict f32 and in bf16.

All forms are built from the same fp32 graph with the same calibration batches, loaded in one
process, and timed **interleaved**: each round runs one pass of every configuration, so machine
noise hits them alike; pairs/s is the median over rounds. Fidelity is against the fp32 graph.
Peak memory is not measured here (one process); ``bench_cpu_peers.py`` measures it per system.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from pathlib import Path

import numpy as np

import common

HERE = Path(__file__).resolve().parent


def build_forms(fp32_path: Path, num_layers: int, calibration_batches: list, out_dir: Path) -> dict[str, Path]:
    """The int8 variants of one fp32 graph; names say what differs."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from rerankrt.export.passes.embedding_int8 import quantize_embedding_table
    from rerankrt.export.quantize import _BatchReader, select_nodes

    nodes = select_nodes(onnx.load(str(fp32_path)), num_layers)
    forms = {}
    for name, outputs_quantized in (("outputs-quantized", True), ("inputs-only", False)):
        path = out_dir / f"{name}.onnx"
        extra = {"MatMulConstBOnly": True, "WeightSymmetric": True}
        if not outputs_quantized:
            extra["OpTypesToExcludeOutputQuantization"] = ["MatMul"]
        quantize_static(str(fp32_path), str(path), _BatchReader(calibration_batches), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        nodes_to_quantize=nodes, op_types_to_quantize=["MatMul"],
                        calibrate_method=CalibrationMethod.MinMax, extra_options=extra)
        forms[f"{name}, fp32 embedding"] = path
        model = onnx.load(str(path))
        quantize_embedding_table(model)
        embedded = out_dir / f"{name}-int8-embedding.onnx"
        onnx.save_model(model, str(embedded))
        forms[f"{name}, int8 embedding"] = embedded
    return forms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from scipy.stats import spearmanr

    from rerankrt.engine.artifact import load_artifact
    from rerankrt.engine.hardware import cpu_info
    from rerankrt.engine.tokenize import PairTokenizer
    from rerankrt.export import calibration
    from rerankrt.export.pipeline import _calibration_batches

    model = common.prepare_model(common.DISTILLED_NAME, HERE / "work", None, precisions=("fp32", "int8"))
    artifact = load_artifact(model.artifact_dir)
    spec = artifact.tokenizer_spec
    tokenizer = PairTokenizer.for_artifact(artifact, common.MAX_LENGTH)
    rng = random.Random(0)
    queries = rng.sample(common.read_texts(common.NEGCONSTRAINT_DIR / "queries.jsonl"), 3)
    docs = rng.sample(common.read_texts(common.NEGCONSTRAINT_DIR / "corpus.jsonl"), 100)
    ids = tokenizer.encode([(q, d) for q in queries for d in docs])
    by_multiple = common.batches_by_multiple(ids, spec["pad_id"])

    def openvino(path: Path, hint: str):
        return common.graph_runner(path, "openvino", hint)

    def onnxruntime(path: Path):
        return common.graph_runner(path, "onnxruntime")

    def one_pass(run, multiple: int) -> tuple[np.ndarray, float]:
        return common.scored_pass(run, by_multiple[multiple], len(ids))

    fp32_path = artifact.graph("fp32").path
    has_bf16 = cpu_info().has_bf16
    with tempfile.TemporaryDirectory() as tmp:
        calib = [(b.input_ids, b.attention_mask)
                 for b in _calibration_batches(tokenizer, calibration.builtin_pairs(seed=1))]
        common.say("building the int8 forms")
        forms = build_forms(fp32_path, int(artifact.manifest["architecture"]["num_hidden_layers"]), calib, Path(tmp))
        configs = {("fp32 graph", "openvino", "f32"): (openvino(fp32_path, "f32"), 1)}
        if has_bf16:
            configs[("fp32 graph", "openvino", "bf16")] = (openvino(fp32_path, "bf16"), 1)
        configs[("fp32 graph", "onnxruntime", "f32")] = (onnxruntime(fp32_path), 1)
        for name, path in forms.items():
            configs[(name, "openvino", "f32")] = (openvino(path, "f32"), 16)  # the backend's int8 buckets
            if has_bf16:
                configs[(name, "openvino", "bf16")] = (openvino(path, "bf16"), 16)
            configs[(name, "onnxruntime", "f32")] = (onnxruntime(path), 1)
        sizes = {name: path.stat().st_size for name, path in forms.items()}
        reference, _ = one_pass(*configs[("fp32 graph", "openvino", "f32")])
        times: dict[tuple, list[float]] = {key: [] for key in configs}
        scores: dict[tuple, np.ndarray] = {}
        for run, multiple in configs.values():  # warm-up: first-shape compilation
            one_pass(run, multiple)
        for round_ in range(args.rounds):
            common.say(f"round {round_ + 1}/{args.rounds}")
            for key, (run, multiple) in configs.items():
                scores[key], seconds = one_pass(run, multiple)
                times[key].append(seconds)

    score_range = float(reference.max() - reference.min())
    rows = []
    for key in configs:
        form, runtime, between = key
        got = scores[key]
        rows.append({"form": form, "runtime": runtime, "between_int8_matmuls": between,
                     "pairs_per_s": len(ids) / statistics.median(times[key]),
                     "pass_times_s": [round(t, 4) for t in times[key]],
                     "max_rel_delta": float(np.abs(got - reference).max() / score_range),
                     "spearman": float(spearmanr(got, reference).correlation),
                     "file_mb": sizes[form] / 1e6 if form in sizes else fp32_path.stat().st_size / 1e6})
    body = [f"Distilled 17m, {len(ids)} negconstraint pairs, max_length {common.MAX_LENGTH}, {common.THREADS} threads, "
            f"one process, configurations interleaved; median of {args.rounds} rounds. Fidelity vs the fp32 graph "
            "(OpenVINO, strict f32).", "",
            "| graph | runtime | between int8 matmuls | pairs/s | file MB | max \\|Δ\\|/range | Spearman |",
            "|---|---|---|---:|---:|---:|---:|"]
    body += [f"| {r['form']} | {r['runtime']} | {r['between_int8_matmuls']} | {r['pairs_per_s']:.1f} | "
             f"{r['file_mb']:.1f} | {r['max_rel_delta']:.1e} | {r['spearman']:.5f} |" for r in rows]
    common.write_report(Path(args.out), "int8-forms", "int8 graph forms", "python benchmarks/bench_int8_forms.py",
                    common.run_environment(("openvino",)), rows, body)

if __name__ == "__main__":
    main()
