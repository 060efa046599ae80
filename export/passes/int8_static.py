"""Static int8 pass (the default), with onnxruntime's quantization tools: calibrated Q/DQ.

Weights int8 per channel (symmetric, 7-bit by default: ``reduce_range``), activations uint8
with ranges from the calibration batches (MinMax); the MatMuls with weight initializers are
quantized, except those ``matmuls.select_nodes`` keeps fp32. One file that onnxruntime,
OpenVINO and TensorRT all read.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx

from ..external_data import is_external
from . import minmax_ranges
from .base import Graph, PassContext, model_file
from .matmuls import KEEP_FP32_LAYERS, fp32_layers, select_nodes

OP_TYPE = "MatMul"
logger = logging.getLogger("rerankrt.export")


def _feeds(batches: list[tuple]) -> list[dict]:
    return [{"input_ids": ids, "attention_mask": mask} for ids, mask in batches]


class _BatchReader:
    """Feeds calibration batches to onnxruntime's static quantization calibrator."""

    def __init__(self, batches: list[tuple]) -> None:
        self._iter = iter(_feeds(batches))

    def get_next(self):
        return next(self._iter, None)


def quantize_int8_static(fp32_path: Path, out_path: Path, num_layers: int, batches: list[tuple],
                         keep_fp32_layers: tuple[int | str, ...] = KEEP_FP32_LAYERS, per_channel: bool = True,
                         reduce_range: bool = True, symmetric_activations: bool = False) -> dict:
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

    model = onnx.load(str(fp32_path), load_external_data=False)  # the node list only: no weights needed
    nodes = select_nodes(model, num_layers, keep_fp32_layers)
    del model
    # A graph past 2 GB (weights in external data) is read and written that way. The activation
    # ranges are computed first with the weights loaded once (``minmax_ranges``) and handed over as
    # onnxruntime's calibration cache, so its calibrator (three more copies of the weights) never runs.
    large = is_external(fp32_path)
    options = dict(quant_format=QuantFormat.QDQ, use_external_data_format=large,
                   activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
                   weight_type=QuantType.QInt8, per_channel=per_channel,
                   reduce_range=reduce_range, nodes_to_quantize=nodes, op_types_to_quantize=[OP_TYPE],
                   calibrate_method=CalibrationMethod.MinMax,
                   extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True,
                                  "ActivationSymmetric": symmetric_activations,
                                  "OpTypesToExcludeOutputQuantization": [OP_TYPE]})
    ranges = None
    if minmax_ranges.cache_supported():
        try:
            ranges = minmax_ranges.minmax_ranges(fp32_path, _feeds(batches), (OP_TYPE,))
        except (OSError, RuntimeError) as exc:  # e.g. a read-only directory for the augmented graph
            logger.warning("rerankrt: own calibration failed (%s); using onnxruntime's calibrator (more memory)",
                           exc)
    if ranges is not None:
        with tempfile.TemporaryDirectory(prefix="rerankrt-calibration-") as tmp:
            cache = minmax_ranges.write_cache(ranges, Path(tmp) / "ranges.json")
            quantize_static(str(fp32_path), str(out_path), None, calibration_cache_path=str(cache), **options)
        calibrator = "rerankrt minmax_ranges (one session), via quantize_static's calibration cache"
    else:  # an onnxruntime without calibration caches: its own calibrator (more memory, same ranges)
        quantize_static(str(fp32_path), str(out_path), _BatchReader(batches), **options)
        calibrator = "onnxruntime MinMaxCalibrater"
    return {"method": "onnxruntime.quantize_static (QDQ, MinMax calibration)", "weight_type": "int8",
            "activation_type": "int8, symmetric (zero point 0)" if symmetric_activations else "uint8",
            "per_channel": per_channel,
            "weight_bits": 7 if reduce_range else 8, "quantized_matmuls": len(nodes),
            "quantized_tensors": "MatMul inputs (outputs stay float)",
            "calibration_batches": len(batches), "calibrator": calibrator,
            "fp32_layers": fp32_layers(num_layers, keep_fp32_layers), "head": "fp32"}


def apply(graph: Graph, out_path: Path, context: PassContext) -> tuple[Path, dict]:
    return out_path, quantize_int8_static(model_file(graph, "int8_static"), out_path, context.num_layers,
                                          context.calibration_batches, context.keep_fp32_layers)


def apply_symmetric(graph: Graph, out_path: Path, context: PassContext) -> tuple[Path, dict]:
    """The TensorRT form: activations int8 with zero point 0 too (TensorRT's Q/DQ rule), 8-bit weights.

    Why 8-bit weights here (not the CPU form's 7-bit ``reduce_range``): the 7-bit range exists for
    x86 u8×s8 kernels without VNNI, whose 16-bit intermediate sums would overflow; a GPU's int8
    tensor cores have no such limit, and the full range halves the weights' rounding error.
    """
    return out_path, quantize_int8_static(model_file(graph, "int8_symmetric"), out_path, context.num_layers,
                                          context.calibration_batches, context.keep_fp32_layers,
                                          reduce_range=False,
                                          symmetric_activations=True)
