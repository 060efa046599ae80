"""Which graph form onnxruntime runs fastest: rerankrt's native graph vs onnxruntime's own transformer optimizer.

    python benchmarks/bench_ort_graph_forms.py --out benchmarks/results

onnxruntime's ``onnxruntime.transformers.optimizer`` rewrites BERT-like graphs into contrib ops
(Attention / MultiHeadAttention, SkipLayerNormalization, Gelu, RotaryEmbedding). This script runs
it on the artifact's fp32 graph (``model_type="bert"``), reports which fusions it found, checks the
scores, and times both graphs side by side (alternating passes, median) through the same
``Reranker`` batches. Model: the distilled 17m exported by the CPU benchmarks into
``benchmarks/work``; pairs: 3 negconstraint queries × 100 documents, max_length 512, 2 threads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import time
from pathlib import Path

import numpy as np

import common

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()

    from onnxruntime.transformers.optimizer import optimize_model

    from rerankrt.engine import Reranker
    from rerankrt.engine.backends.ort import OrtBackend

    model = common.prepare_model(common.DISTILLED_NAME, HERE / "work", None)
    rng = random.Random(0)
    queries = rng.sample(common.read_texts(common.NEGCONSTRAINT_DIR / "queries.jsonl"), 3)
    docs = rng.sample(common.read_texts(common.NEGCONSTRAINT_DIR / "corpus.jsonl"), 100)
    pairs = [(q, d) for q in queries for d in docs]

    native = Reranker.from_pretrained(model.artifact_dir, precision="fp32", backend="onnxruntime",
                                      threads=common.THREADS, max_length=common.MAX_LENGTH)
    config = native.artifact.manifest["architecture"]
    optimized = optimize_model(str(native.artifact.graph("fp32").path), model_type="bert",
                               num_heads=int(config["num_attention_heads"]), hidden_size=int(config["hidden_size"]))
    fusions = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    optimized_path = HERE / "work" / "ort-optimizer-bert.onnx"
    optimized.save_model_to_file(str(optimized_path))
    forms = {"native (ORT_ENABLE_ALL at load)": native,
             "onnxruntime.transformers.optimizer bert": Reranker(
                 native.artifact, OrtBackend(optimized_path, "fp32", threads=common.THREADS), native.tokenizer,
                 native.policy)}
    reference = native.predict(pairs)
    rates: dict[str, list[float]] = {name: [] for name in forms}
    for reranker in forms.values():  # warm-up
        reranker.predict(pairs[:50])
    for _ in range(args.passes):
        for name, reranker in forms.items():
            started = time.perf_counter()
            reranker.predict(pairs)
            rates[name].append(len(pairs) / (time.perf_counter() - started))
    rows = [{"form": name, "pairs_per_s": statistics.median(r), "passes": r,
             "max_abs_diff_vs_native": float(np.abs(forms[name].predict(pairs) - reference).max())}
            for name, r in rates.items()]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M")
    env = {"hardware": common.hardware_info(), "versions": common.package_versions(),
           "load_average_1m": os.getloadavg()[0]}
    result = {"stamp": stamp, "environment": env, "fusions_found": fusions, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ort-graph-forms-{stamp}.json").write_text(json.dumps(result, indent=1))
    base = rows[0]["pairs_per_s"]
    lines = [f"# onnxruntime graph forms — {stamp}", "", "Command: `python benchmarks/bench_ort_graph_forms.py`", "",
             *common.hardware_lines(env), common.load_line(env), "",
             f"Distilled 17m, {len(pairs)} negconstraint pairs, max_length {common.MAX_LENGTH}, "
             f"{common.THREADS} threads, "
             f"median of {args.passes} alternating passes.", "",
             f"Fusions the optimizer found: {fusions or 'none'} (no Attention/MultiHeadAttention/RotaryEmbedding: "
             "ModernBERT's RoPE and sliding-window mask do not match its BERT attention patterns).", "",
             "| graph | pairs/s | × native | max \\|Δ\\| vs native |", "|---|---:|---:|---:|"]
    lines += [f"| {r['form']} | {r['pairs_per_s']:.1f} | {r['pairs_per_s'] / base:.2f} | "
              f"{r['max_abs_diff_vs_native']:.1e} |" for r in rows]
    (out / f"ort-graph-forms-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
