"""Activation ranges for static int8 (MinMax), computed with the weights in memory once.

Why not onnxruntime's own calibrator: ``quantize_static`` loads the model, then its
``MinMaxCalibrater`` loads it again, clones it to add the ReduceMin/ReduceMax outputs, saves that
and opens an inference session on it: four copies of the weights at once. For the 1b (4.1 GB of
fp32 weights) that was the export's peak, ~16 GB, on a 24 GB machine.

Here the graph is read *without* its weights (``load_external_data=False``), the Reduce outputs
are added to that small proto, and it is saved next to the original so its initializers still
point at the same external data file: the session is the only copy of the weights. The ranges
are then handed to ``quantize_static`` through its calibration cache (``calibration_cache_path``,
onnxruntime's own JSON format), which skips its calibrator. Which tensors are calibrated and how
their ranges are folded follows ``MinMaxCalibrater`` (inputs and outputs of the op types
quantized, float types only, global min and max over all batches); the test holds the resulting
int8 graph equal to the one onnxruntime's calibrator produces.
"""

from __future__ import annotations

import inspect
import itertools
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16}


def cache_supported() -> bool:
    """Whether this onnxruntime's ``quantize_static`` takes precomputed ranges (``calibration_cache_path``)."""
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def tensors_to_calibrate(model: onnx.ModelProto, op_types: Sequence[str]) -> list[str]:
    """Float inputs and outputs of ``op_types`` nodes that are not initializers (``MinMaxCalibrater``'s choice).

    ``model`` must carry inferred shapes (value_info): a tensor without a known type is skipped, as
    onnxruntime skips it.
    """
    graph = model.graph
    value_infos = {vi.name: vi for vi in itertools.chain(graph.value_info, graph.output, graph.input)}
    initializers = {init.name for init in graph.initializer}
    chosen: dict[str, None] = {}
    for node in graph.node:
        if node.op_type not in op_types:
            continue
        for name in itertools.chain(node.input, node.output):
            vi = value_infos.get(name)
            if (vi is not None and vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in FLOAT_TYPES
                    and name not in initializers):
                chosen[name] = None
    return list(chosen)


def _augment(model: onnx.ModelProto, tensors: Sequence[str], types: dict[str, int]) -> list[str]:
    """Add a ReduceMin and a ReduceMax graph output per tensor (in place, in the tensor's own float type);
    returns their names, in pairs."""
    outputs = []
    for name in tensors:
        for op in ("ReduceMin", "ReduceMax"):
            out = f"{name}_{op}_{uuid.uuid4().hex[:8]}"
            model.graph.node.append(helper.make_node(op, [name], [out], keepdims=0))
            model.graph.output.append(helper.make_tensor_value_info(out, types[name], []))
            outputs.append(out)
    return outputs


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    return {vi.name: vi.type.tensor_type.elem_type for vi in itertools.chain(graph.value_info, graph.output,
                                                                              graph.input)}


def minmax_ranges(model_path: Path, batches: Iterable[dict[str, np.ndarray]],
                  op_types: Sequence[str] = ("MatMul",), providers: Sequence[str] = ("CPUExecutionProvider",)):
    """onnxruntime ``TensorsData`` (MinMax) of every tensor ``MinMaxCalibrater`` would calibrate.

    One session on the augmented graph, the weights read by it alone; per batch only two scalars
    per tensor are kept (the running min and max), never the activations.
    """
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    model_path = Path(model_path)
    model = onnx.load(str(model_path), load_external_data=False)
    model = onnx.shape_inference.infer_shapes(model)  # dims and types only: the weights are not needed
    for out in model.graph.output:
        if out.type.tensor_type.elem_type not in FLOAT_TYPES:
            raise ValueError(f"{model_path.name}: output {out.name} is not a float tensor")
    tensors = tensors_to_calibrate(model, op_types)
    types = _elem_types(model)
    reduce_outputs = _augment(model, tensors, types)
    # Next to the original, so initializers stored as external data resolve to the same file.
    augmented = model_path.with_name(f".{model_path.stem}.calibration-{uuid.uuid4().hex[:8]}.onnx")
    try:
        onnx.save(model, str(augmented))
        del model
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as onnxruntime's calibrator
        session = ort.InferenceSession(str(augmented), options, providers=list(providers))
        lowest = np.full(len(tensors), np.inf, dtype=np.float32)
        highest = np.full(len(tensors), -np.inf, dtype=np.float32)
        seen = 0
        for feed in batches:
            values = np.asarray([np.float32(v) for v in session.run(reduce_outputs, feed)], dtype=np.float32)
            lowest = np.fmin(lowest, values[0::2])
            highest = np.fmax(highest, values[1::2])
            seen += 1
        del session
    finally:
        augmented.unlink(missing_ok=True)
    if not seen:
        raise ValueError("static int8 needs at least one calibration batch")
    # each range in its tensor's own type, as onnxruntime's calibrator returns it
    dtype = {name: np.float16 if types[name] == TensorProto.FLOAT16 else np.float32 for name in tensors}
    return TensorsData(CalibrationMethod.MinMax,
                       {name: (np.array([lo], dtype=dtype[name]), np.array([hi], dtype=dtype[name]))
                        for name, lo, hi in zip(tensors, lowest, highest, strict=True)})


def write_cache(tensors_data, path: Path) -> Path:
    """onnxruntime's calibration cache file (its own writer), for ``quantize_static(calibration_cache_path=...)``."""
    from onnxruntime.quantization.calibrate import save_tensors_data

    save_tensors_data(tensors_data, path)
    return path
