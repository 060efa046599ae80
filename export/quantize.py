"""int8 quantization with onnxruntime's quantization tools.

Dynamic int8 (weights int8 per channel, activations quantized per batch at run time): the
MatMuls with weight initializers are quantized; activation×activation MatMuls (attention
scores and context) stay fp32, and so do the layers the parity gate is most sensitive to (the
first and last encoder layers and the head), as the feasibility study found.
"""

from __future__ import annotations

import re
from pathlib import Path

import onnx


def weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    weights = {init.name for init in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in weights]


def select_nodes(model: onnx.ModelProto, num_layers: int, keep_fp32_layers: tuple[int, ...] = (0, -1),
                 keep_head: bool = True) -> list[str]:
    """Names of weight MatMuls to quantize, skipping the protected layers and the head."""
    protected = {k % num_layers for k in keep_fp32_layers} if num_layers else set()
    chosen = []
    for node in weight_matmuls(model):
        weight = node.input[1]
        match = re.match(r"layers\.(\d+)\.", weight)
        if match and int(match.group(1)) in protected:
            continue
        if keep_head and weight.startswith("head."):
            continue
        chosen.append(node.name)
    return chosen


def quantize_int8_dynamic(fp32_path: Path, out_path: Path, num_layers: int,
                          keep_fp32_layers: tuple[int, ...] = (0, -1), per_channel: bool = True) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32_path))
    nodes = select_nodes(model, num_layers, keep_fp32_layers)
    quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8, per_channel=per_channel,
                     nodes_to_quantize=nodes, op_types_to_quantize=["MatMul"],
                     extra_options={"MatMulConstBOnly": True})
    return {"method": "onnxruntime.quantize_dynamic", "weight_type": "int8", "per_channel": per_channel,
            "quantized_matmuls": len(nodes), "fp32_layers": [k % num_layers for k in keep_fp32_layers] if num_layers else [],
            "head": "fp32"}
