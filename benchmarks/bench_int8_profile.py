"""Where int8 time goes on this CPU class, and which int8 variants of the graph help (issue 16, item 2).

    python benchmarks/bench_int8_profile.py --out benchmarks/results
    python benchmarks/bench_int8_profile.py --out benchmarks/results --emulate-avx2   # as an AVX2-only CPU

Why: on an AVX2-only CPU (Zen 3) int8 ran only 1.10× fp32 on onnxruntime and OpenVINO int8 ran
slower than its fp32. Three measurements, in one process, on the distilled 17m and 300
negconstraint pairs (max_length 512, 2 threads, the engine's 2,048-token batches):

1. **Matmul peaks**: a [2048×512]·[512×2048] MatMul with constant weights, fp32 and int8
   (``quantize_dynamic``) on onnxruntime: the most int8 can win on the matmuls.
2. **Per-operator profile** (onnxruntime's profiler) of the artifact's fp32 and int8 graphs on the
   workload's batches, grouped: weight matmuls (int8 / fp32), attention matmuls (activation ×
   activation, always fp32), softmax, (de)quantization, and the rest (elementwise and layout).
   What int8 cannot touch bounds what it can gain (Amdahl).
3. **Variants**, built with the exporter's own passes from the artifact's fp32 graph and timed
   interleaved (each round runs one pass of each; median of ``--rounds``), with fidelity against
   the fp32 graph: the artifact's int8 (static QDQ, 7-bit per-channel weights, first and last
   layers fp32), static with every layer int8, static per-tensor, dynamic per-tensor (layers kept
   and every layer); onnxruntime, and the artifact's int8 and fp32 on OpenVINO, whose int8
   matmul kernel the profile names.

With ``--emulate-avx2`` the whole run is re-executed under ``avx2_emulation.py`` (kernels
dispatched as on an AVX2-only CPU); the summary says so.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common

PROFILE_PASSES = 5


def matmul_peaks(threads: int = common.THREADS) -> dict[str, float]:
    """G(FL)OP/s of one fp32 and one int8 (``quantize_dynamic``) MatMul with constant weights on onnxruntime."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    m, k, n = 2048, 512, 2048
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W")
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "mm",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [weights])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), f"{tmp}/fp32.onnx")
        quantize_dynamic(f"{tmp}/fp32.onnx", f"{tmp}/int8.onnx", weight_type=QuantType.QInt8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        x = rng.standard_normal((m, k)).astype(np.float32)
        for name in ("fp32", "int8"):
            session = ort.InferenceSession(f"{tmp}/{name}.onnx", options, providers=["CPUExecutionProvider"])
            times = []
            for _ in range(25):
                started = time.perf_counter()
                session.run(None, {"x": x})
                times.append(time.perf_counter() - started)
            out[name] = 2 * m * k * n / statistics.median(times[5:]) / 1e9
    return out


def _category(op: str, node_inputs: list[str] | None, initializers: set[str]) -> str:
    if node_inputs is None:
        return "not found in the optimized graph"
    if op in ("MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulInteger", "QLinearMatMul"):
        return "weight matmuls, int8"
    if op in ("MatMul", "FusedMatMul", "Gemm"):
        return ("weight matmuls, fp32" if any(name in initializers for name in node_inputs[1:2])
                else "attention matmuls (fp32)")
    if op == "Softmax":
        return "softmax"
    if op in ("Attention", "MultiHeadAttention"):
        return "attention op (scores, bias, softmax, context)"
    if op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
        return "(de)quantization"
    return "elementwise and layout"


def profile(paths: dict[str, Path], batches: list, threads: int = common.THREADS) -> dict[str, dict[str, float]]:
    """Milliseconds per pass over ``batches`` by category for each graph, from onnxruntime's profiler.

    The graphs' passes are interleaved (one pass of each per round), so machine noise hits them
    alike; categories come from the optimized graph each session writes (what the kernels run).
    """
    import onnx
    import onnxruntime as ort

    from rerankrt.export.onnx_builder import all_nodes

    sessions, inputs, initializers = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in paths.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.optimized_model_filepath = f"{tmp}/{name}.onnx"
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             f"{name}.bin")
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])  # writes the optimized graph
            optimized = onnx.load(f"{tmp}/{name}.onnx", load_external_data=False)
            initializers[name] = {t.name for t in optimized.graph.initializer}
            inputs[name] = {node.name: list(node.input) for node in all_nodes(optimized.graph)}  # If branches too
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.enable_profiling = True
            options.profile_file_prefix = f"{tmp}/profile-{name}"
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(PROFILE_PASSES + 1):  # the first pass warms up; its events are dropped below
            for session in sessions.values():
                for batch in batches:
                    session.run(None, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
        events = {name: json.loads(Path(session.end_profiling()).read_text()) for name, session in sessions.items()}
    out = {}
    for name in paths:
        runs = sorted((e for e in events[name] if e.get("name") == "model_run"), key=lambda e: e["ts"])
        warm_up_end = runs[len(batches) - 1]["ts"] + runs[len(batches) - 1]["dur"]  # the first pass's last run
        by_category: dict[str, float] = collections.defaultdict(float)
        for event in events[name]:
            if (event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
                    and event["ts"] > warm_up_end):
                node = event["name"][: -len("_kernel_time")]
                if event["args"]["op_name"] == "If":  # its time is its branch's nodes', which are events of their own
                    continue
                category = _category(event["args"]["op_name"], inputs[name].get(node), initializers[name])
                by_category[category] += event["dur"]
        out[name] = {k: v / 1000 / PROFILE_PASSES for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])}
    return out


def build_variants(artifact, tokenizer, out_dir: Path) -> dict[str, Path]:
    """int8 variants of the artifact's fp32 graph, built by the exporter's own passes."""
    from rerankrt.export.calibration import quantization_batches
    from rerankrt.export.passes.int8_dynamic import quantize_int8_dynamic
    from rerankrt.export.passes.int8_static import quantize_int8_static

    fp32 = artifact.graph("fp32").path
    layers = int(artifact.manifest["architecture"]["num_hidden_layers"])
    calibration = quantization_batches(tokenizer)
    variants = {"static, every layer int8": (quantize_int8_static, {"batches": calibration, "keep_fp32_layers": ()}),
                "static, per-tensor weights": (quantize_int8_static, {"batches": calibration, "per_channel": False}),
                "dynamic per-tensor, default fp32 blocks": (quantize_int8_dynamic, {}),
                "dynamic per-tensor, every layer int8": (quantize_int8_dynamic, {"keep_fp32_layers": ()})}
    out = {}
    for i, (name, (quantize, kwargs)) in enumerate(variants.items()):
        common.say(f"building: {name}")
        out[name] = out_dir / f"variant{i}.onnx"
        quantize(fp32, out[name], layers, **kwargs)
    return out


def main() -> None:
    args = common.graph_bench_args(__doc__, __file__)

    from rerankrt.engine.artifact import load_artifact
    from rerankrt.engine.hardware import cpu_info
    from rerankrt.engine.tokenize import PairTokenizer

    model = common.prepare_model(common.DISTILLED_NAME, args.work.resolve(), None, precisions=("fp32", "int8"))
    artifact = load_artifact(model.artifact_dir)
    tokenizer = PairTokenizer.for_artifact(artifact, common.MAX_LENGTH)
    workload = common.graph_workload(tokenizer)
    ids, batches = workload.ids, workload.batches

    common.say("matmul peaks")
    peaks = matmul_peaks()
    fp32_path, int8_path = artifact.graph("fp32").path, artifact.graph("int8").path
    common.say("profiling the fp32 and int8 graphs")
    profiles = profile({"fp32": fp32_path, "int8": int8_path}, batches[1])

    with tempfile.TemporaryDirectory() as tmp:
        variants = build_variants(artifact, tokenizer, Path(tmp))
        configs = {("fp32 graph", "onnxruntime"): (common.graph_runner(fp32_path, "onnxruntime"), 1),
                   ("artifact int8 (static, default fp32 blocks)", "onnxruntime"):
                       (common.graph_runner(int8_path, "onnxruntime"), 1)}
        configs.update({(name, "onnxruntime"): (common.graph_runner(path, "onnxruntime"), 1)
                        for name, path in variants.items()})
        if importlib.util.find_spec("openvino") is not None:
            configs[("fp32 graph", "openvino f32")] = (common.graph_runner(fp32_path, "openvino", "f32"), 1)
            configs[("artifact int8 (static, default fp32 blocks)", "openvino f32")] = (
                common.graph_runner(int8_path, "openvino", "f32"), 16)
        measured = common.interleaved_graph_rows(configs, workload, args.rounds, ("fp32 graph", "onnxruntime"))

    fp32_speed = measured[("fp32 graph", "onnxruntime")]["pairs_per_s"]
    rows = [{"graph": key[0], "runtime": key[1], "pairs_per_s": row["pairs_per_s"],
             "x_fp32_onnxruntime": row["pairs_per_s"] / fp32_speed,
             **{k: v for k, v in row.items() if k != "pairs_per_s"}} for key, row in measured.items()]
    environment = common.run_environment(("openvino",))
    environment["int8_class"] = cpu_info().int8_class
    record = {"matmul_peaks": peaks, "profiles_ms": profiles, "rows": rows}
    body = _markdown(len(ids), args.rounds, peaks, profiles, rows, sum(len(b.indices) for b in batches[1]))
    suffix = "-avx2-emulated" if environment["hardware"].get("emulation") else ""
    common.write_report(args.out, f"int8-profile{suffix}", "Where int8 time goes, and int8 variants",
                        "python benchmarks/bench_int8_profile.py " + " ".join(sys.argv[1:]), environment,
                        [record], body)


def _markdown(n_pairs: int, rounds: int, peaks: dict, profiles: dict, rows: list[dict],
              rows_profiled: int) -> list[str]:
    lines = [f"Distilled 17m, {n_pairs} negconstraint pairs, max_length {common.MAX_LENGTH}, {common.THREADS} threads, "
             "the engine's 2,048-token batches, one process.", "",
             "## Matmul peaks (onnxruntime, [2048×512]·[512×2048], constant weights)", "",
             f"fp32 **{peaks['fp32']:.0f}** GFLOP/s · int8 **{peaks['int8']:.0f}** GOPS · "
             f"int8/fp32 **{peaks['int8'] / peaks['fp32']:.2f}×**: the most int8 can gain on the weight matmuls.", "",
             f"## Where the time goes (onnxruntime profiler, ms per pass over the {rows_profiled} pairs)", "",
             "| category | fp32 graph ms | % | int8 graph ms | % | fp32 / int8 |", "|---|---:|---:|---:|---:|---:|"]
    totals = {k: sum(v.values()) for k, v in profiles.items()}
    for category in sorted(set(profiles["fp32"]) | set(profiles["int8"]), key=lambda c: -profiles["fp32"].get(c, 0)):
        f, i = profiles["fp32"].get(category, 0.0), profiles["int8"].get(category, 0.0)
        ratio = f"{f / i:.2f}×" if f and i else "—"
        lines.append(f"| {category} | {f:.1f} | {100 * f / totals['fp32']:.0f}% | {i:.1f} | "
                     f"{100 * i / totals['int8']:.0f}% | {ratio} |")
    lines += [f"| **all** | **{totals['fp32']:.1f}** | | **{totals['int8']:.1f}** | | "
              f"**{totals['fp32'] / totals['int8']:.2f}×** |", "",
              "## int8 variants, interleaved "
              f"(median of {rounds} rounds; fidelity vs the fp32 graph on onnxruntime)", "",
              "| graph | runtime | pairs/s | × fp32 onnxruntime | max \\|Δ\\| | Spearman | top-10 |",
              "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['graph']} | {r['runtime']} | {r['pairs_per_s']:.1f} | {r['x_fp32_onnxruntime']:.2f} | "
              f"{r['max_abs_delta']:.4f} | {r['spearman']:.5f} | {r['top10']:.3f} |" for r in rows]
    return lines


if __name__ == "__main__":
    main()
