"""The pass contract: what every optimization pass takes and returns.

A pass is ``apply(graph, out_path, context) -> (graph, report)``. ``graph`` is an
``onnx.ModelProto`` or the path of a saved one (onnxruntime's quantizers read and write files;
the other passes rewrite a model in memory); a pass that writes a file writes ``out_path`` and
returns it. ``report`` is a short dict of what the pass did (fused or quantized node counts,
methods, sizes), stored in the manifest's graph entry, the way onnxruntime's transformer
optimizer reports its fused operators. A pass must not know the pipeline, the parity gate or
the artifact layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .matmuls import KEEP_FP32_LAYERS

Graph = onnx.ModelProto | Path


@dataclass(frozen=True)
class PassContext:
    """What passes may need besides the graph: the source's layer count and the int8 calibration batches."""

    num_layers: int = 0  # encoder layers, for the int8 passes' fp32 first/last layers; 0 = not known
    calibration_batches: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # padded (ids, mask)
    # what the int8 passes keep fp32: layers (negative counts from the last) or "N.attn"/"N.mlp" blocks
    keep_fp32_layers: tuple[int | str, ...] = KEEP_FP32_LAYERS


@dataclass(frozen=True)
class Pass:
    name: str
    apply: Callable[[Graph, Path, PassContext], tuple[Graph, dict]]


def load_model(graph: Graph) -> onnx.ModelProto:
    return graph if isinstance(graph, onnx.ModelProto) else onnx.load(str(graph))


def model_file(graph: Graph, pass_name: str) -> Path:
    """The file a file-based pass reads; such a pass comes first, before any in-memory pass."""
    if isinstance(graph, onnx.ModelProto):
        raise TypeError(f"the {pass_name} pass reads its graph from a file; run it before in-memory passes")
    return Path(graph)
