"""Which weight MatMuls the int8 passes quantize: shared by ``int8_static`` and ``int8_dynamic``.

Activation×activation MatMuls (attention scores and context) are never candidates, and the
layers the parity gate is most sensitive to (the first and last encoder layers, and the head)
stay fp32, as the feasibility study found. This module only chooses; it changes no graph.
"""

from __future__ import annotations

import re

import onnx

KEEP_FP32_LAYERS = (0, -1)


def weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    weights = {init.name for init in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in weights]


def fp32_layers(num_layers: int, keep_fp32_layers: tuple[int, ...] = KEEP_FP32_LAYERS) -> list[int]:
    """The encoder layers kept fp32, as non-negative indices (none when the layers are not known)."""
    return sorted({k % num_layers for k in keep_fp32_layers}) if num_layers else []


def select_nodes(model: onnx.ModelProto, num_layers: int, keep_fp32_layers: tuple[int, ...] = KEEP_FP32_LAYERS,
                 keep_head: bool = True) -> list[str]:
    """Names of weight MatMuls to quantize, skipping the protected layers and the head."""
    protected = set(fp32_layers(num_layers, keep_fp32_layers))
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
