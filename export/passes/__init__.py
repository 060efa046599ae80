"""Graph transformations applied after the fp32 graph is built, one module per concern.

:data:`RECIPES` says which passes, in which order, make each reduced precision's graph from the
fp32 one; :func:`write_precision` runs them and returns the precision's manifest entry. Every
pass follows ``base.py``'s contract and reports what it did; the entry keeps those reports in
order under ``passes`` and, merged, as its top-level fields (``method``, ``weight_bits``, …,
which the runtime and people read). A new pass is one module and one line in a recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from rerankrt.engine.artifact import graph_file_name

from .. import tensorrt_rules
from ..external_data import save_model
from . import embedding_int8, fp16, int8_dynamic, int8_static
from .base import Pass, PassContext

__all__ = ["RECIPES", "SHARED_FP32", "Pass", "PassContext", "Recipe", "recipe_name", "write_precision"]


@dataclass(frozen=True)
class Recipe:
    passes: tuple[Pass, ...]
    intended_for: str


_EMBEDDING_INT8 = Pass("embedding_int8", embedding_int8.apply)
_INT8_TARGET = "CPU (onnxruntime or OpenVINO)"

RECIPES: dict[str, Recipe] = {
    "fp16": Recipe((Pass("fp16", fp16.apply),), "GPU execution providers"),
    "int8-static": Recipe((Pass("int8_static", int8_static.apply), _EMBEDDING_INT8), _INT8_TARGET),
    "int8-dynamic": Recipe((Pass("int8_dynamic", int8_dynamic.apply), _EMBEDDING_INT8), _INT8_TARGET),
    # TensorRT's form (tensorrt_rules.py): symmetric int8 activations, 8-bit per-channel weights, the embedding
    # through DequantizeLinear; onnxruntime and OpenVINO run it too (their speed: bench_int8_tensorrt_form.py)
    "int8-symmetric": Recipe((Pass("int8_symmetric", int8_static.apply_symmetric),
                              Pass("embedding_int8_dequantize", embedding_int8.apply_dequantize)),
                             "TensorRT (explicit Q/DQ); also onnxruntime and OpenVINO"),
}

# Precisions without a file of their own: OpenVINO runs the fp32 graph with a bf16 inference-precision hint.
SHARED_FP32: dict[str, dict] = {
    "bf16": {"backends": ["openvino"], "inference_precision": "bf16", "intended_for": "CPUs with AVX512_BF16 or AMX"},
}


def recipe_name(precision: str, int8_method: str = "static") -> str:
    return f"int8-{int8_method}" if precision == "int8" else precision


def write_precision(precision: str, fp32_path: Path, context: PassContext, int8_method: str = "static",
                    out_name: str | None = None) -> dict:
    """Write the graph of one precision next to the fp32 one (as ``out_name``, default ``model.<precision>.onnx``);
    returns its manifest entry."""
    if precision in SHARED_FP32:
        return {"file": fp32_path.name, **SHARED_FP32[precision]}
    recipe = RECIPES.get(recipe_name(precision, int8_method))
    if recipe is None:
        raise ValueError(f"unknown precision {precision!r}")
    out_path = fp32_path.parent / (out_name or graph_file_name(precision))
    graph, reports = fp32_path, []
    for step in recipe.passes:
        graph, report = step.apply(graph, out_path, context)
        reports.append({"pass": step.name, **report})
    if isinstance(graph, onnx.ModelProto):
        save_model(graph, out_path)
    elif Path(graph) != out_path:
        raise ValueError(f"the {precision} recipe ended on {graph}, not {out_path}")
    entry = {"file": out_path.name}
    for report in reports:  # later passes' fields on top
        entry.update({key: value for key, value in report.items() if key != "pass"})
    return {**entry, "intended_for": recipe.intended_for, "passes": reports,
            "tensorrt": tensorrt_rules.check_graph(out_path).report()}
