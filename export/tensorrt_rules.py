"""Static check of an ONNX graph against TensorRT's documented ONNX rules, before any TensorRT sees it.

Why static: TensorRT cannot be installed where artifacts are built (its ``-libs`` wheels on the
reachable index are stubs), and a file that "should" work on TensorRT but is refused by its parser on
the serving machine is the worst time to find out. The rules checked are the ones that decide whether
an *int8* graph can be read at all (onnx-tensorrt's operator support matrix and TensorRT's
"Working with Quantized Types" guide, TensorRT 10.x; TensorRT 11 removed the implicit-precision
flags, so int8 must be explicit Q/DQ in the file):

* **Q/DQ zero points are 0** (symmetric quantization): TensorRT refuses ``QuantizeLinear`` /
  ``DequantizeLinear`` with a non-zero zero point.
* **8-bit tensors are INT8 and live only between Q/DQ**: UINT8 is accepted only at network inputs and
  outputs; an int8/uint8 initializer or tensor may be read only by ``DequantizeLinear`` (a ``Gather``
  on an int8 table followed by ``Cast`` is "int8 outside Q/DQ" and is refused).
* **Scales are float and positive**, and a ``QuantizeLinear`` output feeds a ``DequantizeLinear``.
* **Operators** are in the parser's supported set (:data:`SUPPORTED_OPS`, the ops this project's
  graphs use that onnx-tensorrt lists as supported) and no tensor is DOUBLE.

What it does not prove: that TensorRT picks int8 kernels for every Q/DQ pair, or any speed. It is a
conformance gate; the device run (issue 19, item 3) is the proof. Each violation names the node.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

# onnx-tensorrt's operator support matrix (TensorRT 10.x) intersected with what ONNX exporters of
# encoder models emit; an op outside it is reported (not assumed unsupported by TensorRT in general).
SUPPORTED_OPS = frozenset({
    "Abs", "Add", "And", "ArgMax", "Cast", "Ceil", "Clip", "Concat", "Constant", "ConstantOfShape", "Cos",
    "CumSum", "DequantizeLinear", "Div", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather",
    "GatherElements", "Gelu", "Gemm", "Greater", "GreaterOrEqual", "Identity", "LayerNormalization", "Less",
    "LessOrEqual", "Log", "MatMul", "Max", "Min", "Mod", "Mul", "Neg", "Not", "Or", "Pad", "Pow", "QuantizeLinear",
    "Range", "Reciprocal", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum", "Relu", "Reshape", "Shape",
    "Sigmoid", "Sign", "Sin", "Slice", "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Tile",
    "TopK", "Transpose", "Trilu", "Unsqueeze", "Where", "Xor",
})
EIGHT_BIT = (TensorProto.INT8, TensorProto.UINT8)


@dataclass
class Conformance:
    """The result: ``ok`` and, when not, each violation (kind, node, detail) — recorded in the manifest."""

    violations: list[dict] = field(default_factory=list)
    qdq_pairs: int = 0
    ops: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, kind: str, node: str, detail: str) -> None:
        self.violations.append({"rule": kind, "node": node, "detail": detail})

    def report(self, limit: int = 20) -> dict:
        kinds = Counter(v["rule"] for v in self.violations)
        return {"tensorrt_conformant": self.ok, "rules": "onnx-tensorrt operator matrix + explicit Q/DQ (TensorRT 10)",
                "qdq_pairs": self.qdq_pairs, "violations": len(self.violations),
                "violations_by_rule": dict(kinds), "examples": self.violations[:limit]}

    def summary(self) -> str:
        return summarize(self.report())


def summarize(report: dict) -> str:
    """One line from a :meth:`Conformance.report` (as kept in the manifest)."""
    if report["tensorrt_conformant"]:
        return f"TensorRT-conformant ({report['qdq_pairs']} Q/DQ pairs)"
    kinds = ", ".join(f"{k} ×{n}" for k, n in sorted(report["violations_by_rule"].items(), key=lambda kv: -kv[1]))
    first = report["examples"][0]
    return f"not TensorRT-conformant: {kinds}; first: {first['rule']} at {first['node']}: {first['detail']}"


def check_graph(model: onnx.ModelProto | str | Path) -> Conformance:
    """Walk ``model`` (weights need not be loaded) and list every rule it breaks."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    graph = model.graph
    result = Conformance()
    inits = {i.name: i for i in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
    producers = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    io = {v.name for v in graph.input} | {v.name for v in graph.output}
    result.ops = dict(Counter(n.op_type for n in graph.node))

    def label(node: onnx.NodeProto) -> str:
        return node.name or f"{node.op_type}->{node.output[0] if node.output else '?'}"

    def value_of(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name]) if not _external(inits[name]) else None
        node = constants.get(name)
        if node is not None:
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is not None:
                return numpy_helper.to_array(attr.t)
        return None

    def dtype_of(name: str) -> int | None:
        if name in inits:
            return inits[name].data_type
        node = constants.get(name)
        if node is not None:
            attr = next((a for a in node.attribute if a.name == "value"), None)
            return attr.t.data_type if attr is not None else None
        return None

    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            result.add("custom_domain", label(node), f"{node.domain}::{node.op_type} is not a standard ONNX op")
        elif node.op_type not in SUPPORTED_OPS:
            result.add("unsupported_op", label(node), f"{node.op_type} is not in onnx-tensorrt's supported set")
        if node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if to == TensorProto.DOUBLE:
                result.add("double", label(node), "casts to DOUBLE, which TensorRT does not support")
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            _check_qdq(node, label(node), value_of, dtype_of, result)
            if node.op_type == "QuantizeLinear":
                readers = consumers.get(node.output[0], [])
                if not readers or any(r.op_type != "DequantizeLinear" for r in readers):
                    result.add("q_without_dq", label(node), "a QuantizeLinear output must feed DequantizeLinear")
            else:
                source = producers.get(node.input[0])
                if source is not None and source.op_type != "QuantizeLinear" and node.input[0] not in inits:
                    result.add("dq_of_computed_tensor", label(node), f"dequantizes {node.input[0]}, produced by "
                               f"{source.op_type} (int8 must come from an initializer or a QuantizeLinear)")

    # 8-bit initializers and Constants may only be read by Q/DQ (as data or zero point)
    for name in list(inits) + list(constants):
        dtype = dtype_of(name)
        if dtype not in EIGHT_BIT:
            continue
        for reader in consumers.get(name, []):
            if reader.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                kind = "uint8" if dtype == TensorProto.UINT8 else "int8"
                result.add("int8_outside_qdq", label(reader),
                           f"{reader.op_type} reads the {kind} tensor {name} (8-bit data must go through "
                           "DequantizeLinear)")
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        elem = value.type.tensor_type.elem_type
        if elem == TensorProto.DOUBLE:
            result.add("double", value.name, "a DOUBLE tensor")
        if elem == TensorProto.UINT8 and value.name not in io:
            result.add("uint8_tensor", value.name, "UINT8 is accepted only at network inputs and outputs")
    result.qdq_pairs = sum(1 for n in graph.node if n.op_type == "DequantizeLinear")
    return result


def _check_qdq(node: onnx.NodeProto, where: str, value_of, dtype_of, result: Conformance) -> None:
    scale = value_of(node.input[1]) if len(node.input) > 1 else None
    if scale is not None and (not np.issubdtype(scale.dtype, np.floating) or not np.all(scale > 0)):
        result.add("bad_scale", where, f"scale {node.input[1]} must be float and > 0")
    if len(node.input) < 3 or not node.input[2]:
        if node.op_type == "QuantizeLinear":  # no zero point: output type uint8 by the ONNX default
            to = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
            if to in (0, TensorProto.UINT8):
                result.add("uint8_quantization", where, "QuantizeLinear without a zero point quantizes to UINT8")
        return
    zero_type = dtype_of(node.input[2])
    if zero_type == TensorProto.UINT8:
        result.add("uint8_quantization", where, f"zero point {node.input[2]} is UINT8 (TensorRT: INT8 only)")
    zero = value_of(node.input[2])
    if zero is not None and np.any(zero != 0):
        result.add("nonzero_zero_point", where, f"zero point {node.input[2]} is not 0 (TensorRT: symmetric only)")


def _external(init: onnx.TensorProto) -> bool:
    return init.data_location == TensorProto.EXTERNAL
