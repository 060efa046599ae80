"""int8 quantization with onnxruntime's quantization tools.

Dynamic int8 (weights int8 per tensor, activations quantized per batch at run time): the
MatMuls with weight initializers are quantized; activation×activation MatMuls (attention
scores and context) stay fp32, and so do the layers the parity gate is most sensitive to (the
first and last encoder layers and the head), as the feasibility study found.

Per-tensor, not per-channel, weight scales: onnxruntime fuses per-tensor dynamic quantization
into ``DynamicQuantizeMatMul`` (MLAS int8 kernels, VNNI where present); per-channel falls back
to ``MatMulInteger`` + rescaling, which measured 2.3× *slower* than fp32 on 17m (Zen 5, 2
threads), while per-tensor ran 1.14× faster with Spearman 0.99998 on the distilled 17m.
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
                          keep_fp32_layers: tuple[int, ...] = (0, -1), per_channel: bool = False) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32_path))
    nodes = select_nodes(model, num_layers, keep_fp32_layers)
    quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8, per_channel=per_channel,
                     nodes_to_quantize=nodes, op_types_to_quantize=["MatMul"],
                     extra_options={"MatMulConstBOnly": True})
    return {"method": "onnxruntime.quantize_dynamic", "weight_type": "int8", "per_channel": per_channel,
            "quantized_matmuls": len(nodes), "fp32_layers": [k % num_layers for k in keep_fp32_layers] if num_layers else [],
            "head": "fp32"}


class _BatchReader:
    """Feeds calibration batches to onnxruntime's static quantization calibrator."""

    def __init__(self, batches: list[tuple]) -> None:
        self._iter = iter([{"input_ids": ids, "attention_mask": mask} for ids, mask in batches])

    def get_next(self):
        return next(self._iter, None)


def quantize_int8_static(fp32_path: Path, out_path: Path, num_layers: int, batches: list[tuple],
                         keep_fp32_layers: tuple[int, ...] = (0, -1), per_channel: bool = True,
                         reduce_range: bool = True) -> dict:
    """Calibrated static int8 in the Q/DQ format: one file onnxruntime, OpenVINO and TensorRT all read.

    Activation ranges come from the calibration batches (MinMax); weights are int8 per channel
    (symmetric), activations uint8 (onnxruntime's U8S8 kernels use VNNI where present).

    Only MatMul *inputs* are quantized, not their outputs (``OpTypesToExcludeOutputQuantization``).
    By default the quantizer also re-quantizes every MatMul's output, which no consumer here
    needs (residual adds, GeGLU and RoPE run in float): OpenVINO then kept those tensors in u8 and
    ran the GeGLU and RoPE as unfused elementwise chains (zero-point Subtract and Convert nodes,
    a quarter of the time). Measured on the distilled 17m, interleaved, same process (Zen 5, 2
    threads, 300 negconstraint pairs, ``benchmarks/bench_int8_forms.py``, ``results/int8-forms-20261124-1140.md``):
    OpenVINO 363 → 401 pairs/s (f32 between the int8 matmuls) and 448 → 548 (bf16), onnxruntime
    315 → 358, max |Δ|/range 3.8e-3 → 3.0e-3.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32_path))
    nodes = select_nodes(model, num_layers, keep_fp32_layers)
    quantize_static(str(fp32_path), str(out_path), _BatchReader(batches), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                    reduce_range=reduce_range, nodes_to_quantize=nodes, op_types_to_quantize=["MatMul"],
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True,
                                   "OpTypesToExcludeOutputQuantization": ["MatMul"]})
    return {"method": "onnxruntime.quantize_static (QDQ, MinMax calibration)", "weight_type": "int8",
            "activation_type": "uint8", "per_channel": per_channel,
            "weight_bits": 7 if reduce_range else 8, "quantized_matmuls": len(nodes),
            "quantized_tensors": "MatMul inputs (outputs stay float)",
            "calibration_batches": len(batches),
            "fp32_layers": [k % num_layers for k in keep_fp32_layers] if num_layers else [], "head": "fp32"}
