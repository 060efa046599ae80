"""int8 token-embedding pass: the embedding table stored int8 with one fp32 scale per row.

Why: the token embedding (vocab 50,368 × hidden) is most of a small model's weights — 51.6 MB
of the 17m's 67 MB — and onnxruntime's quantizer leaves it fp32 (it quantizes MatMuls only).
Kept fp32, the int8 artifact was 59 MB, and OpenVINO holding that table made rerankrt's int8 use
more memory than an NNCF int8 model (which compresses embeddings). Stored int8 per row it is a
quarter of the size.

The form is plain ONNX that every backend runs as is, with no folding back to fp32:
``Gather(int8 table, ids) → Cast(float) → Mul(Gather(row scales, ids))``. Only the rows a batch
uses are widened. ``DequantizeLinear(table) → Gather`` would be the textbook Q/DQ form, but a
runtime may constant-fold the dequantized table back to fp32 (losing the memory) or dequantize
the whole table on every call (losing time).

Symmetric per-row scales (max |row| / 127) bound the error of each element by half a step of its
own row; the embedding LayerNorm that follows is insensitive to it, and the parity gate checks
the result like any other precision.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .base import Graph, PassContext, load_model

IDS_INPUT = "input_ids"


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(int8 table, fp32 scale per row [V, 1])`` with ``table ≈ q * scale``."""
    scale = np.abs(table).max(axis=1, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
    return quantized, scale


def find_embedding_table(model: onnx.ModelProto, ids_input: str = IDS_INPUT) -> tuple[str | None, str]:
    """``(initializer name, "")`` of the token-embedding table, or ``(None, why not)``.

    The table is the initializer that a ``Gather(axis=0)`` indexes with the graph's token ids
    (rerankrt's ModernBERT builder and ``torch.onnx.export`` of BERT-like models both do that).
    A table that anything else also reads (tied weights) is left alone.
    """
    inits = {init.name for init in model.graph.initializer}
    tables = {n.input[0] for n in model.graph.node
              if n.op_type == "Gather" and len(n.input) == 2 and n.input[1] == ids_input and n.input[0] in inits
              and next((a.i for a in n.attribute if a.name == "axis"), 0) == 0}
    if len(tables) != 1:
        return None, f"{len(tables)} Gather(axis=0) nodes index an initializer with {ids_input!r}"
    table = tables.pop()
    other = [n.name or n.op_type for n in model.graph.node if table in n.input and n.op_type != "Gather"]
    if other:
        return None, f"{table} is also read by {other[0]}"
    return table, ""


def quantize_embedding_table(model: onnx.ModelProto, ids_input: str = IDS_INPUT, form: str = "gather") -> dict:
    """Rewrite ``model`` in place; returns what changed (or why nothing did), for the manifest.

    ``form="gather"``: ``Gather(int8) → Cast → Mul(row scales)`` (the CPU form, module docstring);
    ``form="dequantize"``: ``DequantizeLinear(int8 table, row scales, zero point 0, axis=0) → Gather``, the
    only int8 form TensorRT reads (8-bit data only through DequantizeLinear).
    """
    if form not in ("gather", "dequantize"):
        raise ValueError(f"embedding form must be 'gather' or 'dequantize', got {form!r}")
    graph = model.graph
    table_name, why_not = find_embedding_table(model, ids_input)
    if table_name is None:
        return {"embedding": f"fp32 ({why_not})"}
    inits = {init.name: init for init in graph.initializer}
    users = [(i, n) for i, n in enumerate(graph.node) if table_name in n.input]
    table = numpy_helper.to_array(inits[table_name]).astype(np.float32)
    quantized, scale = quantize_rows(table)
    q_name, s_name = f"{table_name}.int8", f"{table_name}.row_scale"
    graph.initializer.remove(inits[table_name])
    if form == "dequantize":
        zero_name = f"{table_name}.zero_point"
        graph.initializer.extend([numpy_helper.from_array(quantized, q_name),
                                  numpy_helper.from_array(scale.reshape(-1), s_name),
                                  numpy_helper.from_array(np.zeros(len(scale), dtype=np.int8), zero_name)])
        first = min(i for i, _ in users)
        graph.node.insert(first, helper.make_node("DequantizeLinear", [q_name, s_name, zero_name], [table_name],
                                                  f"{table_name}.dequantize", axis=0))
        error = np.abs(quantized.astype(np.float32) * scale - table)
        return {"embedding": "int8, symmetric per-row scales (DequantizeLinear → Gather)",
                "embedding_bytes": {"before": int(table.nbytes), "after": int(quantized.nbytes + scale.nbytes)},
                "embedding_max_abs_error": float(error.max())}
    graph.initializer.extend([numpy_helper.from_array(quantized, q_name), numpy_helper.from_array(scale, s_name)])

    for index, node in reversed(users):  # reversed: inserting keeps earlier indices valid
        ids, out, base = node.input[1], node.output[0], node.name or "embed"
        replacement = [
            helper.make_node("Gather", [q_name, ids], [f"{base}.rows_int8"], f"{base}.gather_int8", axis=0),
            helper.make_node("Gather", [s_name, ids], [f"{base}.row_scales"], f"{base}.gather_scale", axis=0),
            helper.make_node("Cast", [f"{base}.rows_int8"], [f"{base}.rows_f32"], f"{base}.cast",
                             to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [f"{base}.rows_f32", f"{base}.row_scales"], [out], f"{base}.dequantize"),
        ]
        del graph.node[index]
        for offset, new in enumerate(replacement):
            graph.node.insert(index + offset, new)

    error = np.abs(quantized.astype(np.float32) * scale - table)
    return {"embedding": "int8, symmetric per-row scales (Gather → Cast → Mul)",
            "embedding_bytes": {"before": int(table.nbytes), "after": int(quantized.nbytes + scale.nbytes)},
            "embedding_max_abs_error": float(error.max())}


def apply(graph: Graph, out_path: Path, context: PassContext) -> tuple[onnx.ModelProto, dict]:
    model = load_model(graph)
    return model, quantize_embedding_table(model)


def apply_dequantize(graph: Graph, out_path: Path, context: PassContext) -> tuple[onnx.ModelProto, dict]:
    model = load_model(graph)
    return model, quantize_embedding_table(model, form="dequantize")
