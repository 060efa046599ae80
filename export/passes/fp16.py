"""fp16 pass: weights and matmuls in fp16 for GPU execution providers; positions stay fp32.

Why a pass over onnxruntime's ``float16`` converter instead of a second builder: the converter
is maintained with ORT's kernels in mind (it keeps I/O types and inserts the casts). We only
tell it which nodes must stay fp32: the position / RoPE-angle / mask sub-graph the builder
tagged (fp16 cannot represent positions beyond 2,048 exactly), plus ops listed below.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from .base import Graph, PassContext, load_model

FP32_OPS = ["Range", "Cos", "Sin"]
METHOD = "onnxruntime.transformers.float16 (positions, RoPE angles and masks kept fp32)"


def tagged_fp32_nodes(model: onnx.ModelProto) -> list[str]:
    for prop in model.metadata_props:
        if prop.key == "rerankrt.fp32_nodes":
            return [n for n in prop.value.split(",") if n]
    return []


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, op_block_list=FP32_OPS,
                                    node_block_list=tagged_fp32_nodes(model))


def apply(graph: Graph, out_path: Path, context: PassContext) -> tuple[onnx.ModelProto, dict]:
    model = load_model(graph)
    kept = tagged_fp32_nodes(model)
    return convert_to_fp16(model), {"method": METHOD, "fp32_nodes": len(kept), "fp32_ops": list(FP32_OPS)}
