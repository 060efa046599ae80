"""Graphs past protobuf's 2 GB limit: weights in an external-data file beside the graph.

Why a module of its own: a protobuf message cannot be serialized past 2 GB, and not even *asked*
its size (``ModelProto.ByteSize()`` raised ``EncodeError`` on the 1b's 4.1 GB graph, after 16 GB of
peak memory). So the decision is made from the summed tensor sizes, never from the whole proto,
and the fp32 graph of a big model is written with its weights streamed straight into
``<graph>.data`` as the builder makes them (one tensor in memory at a time) instead of being
collected in the proto first. Every later stage (quantizers, fp16 converter, the artifact's
checks) goes through :func:`save_model` and :func:`data_files`, so a graph stored either way is
handled the same. onnxruntime and OpenVINO find ``<graph>.data`` themselves (the location is
relative to the graph file).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper

# Weights above this go to external data: protobuf's hard limit is 2 GiB for the whole message,
# and nodes, names and metadata need some of it.
EXTERNAL_DATA_FROM_BYTES = 1_500_000_000
# Tensors at least this big go to the data file; smaller ones (shape constants) stay inline.
MIN_EXTERNAL_TENSOR_BYTES = 1024
ALIGNMENT = 4096  # offsets page-aligned, so a runtime may map tensors straight from the file


def data_file_name(graph_path: Path) -> str:
    return Path(graph_path).name + ".data"


class ExternalDataWriter:
    """Appends tensors to one data file and returns the initializers that point into it."""

    def __init__(self, graph_path: Path) -> None:
        self.location = data_file_name(graph_path)
        self.path = Path(graph_path).with_name(self.location)
        self._fh: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self.bytes_written = 0

    def tensor(self, name: str, array: np.ndarray) -> TensorProto:
        array = np.ascontiguousarray(array)
        offset = -(-self._fh.tell() // ALIGNMENT) * ALIGNMENT
        self._fh.seek(offset)
        self._fh.write(memoryview(array).cast("B"))
        self.bytes_written += array.nbytes
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                             dims=list(array.shape), data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        return tensor

    def close(self) -> None:
        self._fh.close()


def tensor_bytes(tensor: TensorProto) -> int:
    """Bytes of a tensor's data, inline or external, without serializing anything."""
    if tensor.data_location == TensorProto.EXTERNAL:
        return next((int(e.value) for e in tensor.external_data if e.key == "length"), 0)
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    return count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def inline_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers a plain save would put into the proto itself."""
    return sum(tensor_bytes(t) for t in model.graph.initializer if t.data_location != TensorProto.EXTERNAL)


def save_model(model: onnx.ModelProto, path: Path, external: bool | None = None) -> None:
    """Save ``model`` to ``path``: one self-contained file, or with ``<name>.data`` past the size limit.

    ``external`` forces the choice (tests exercise the external form on small models). A data file
    left by an earlier form of the same graph is removed, so the directory holds what the graph reads.
    """
    path = Path(path)
    stale = path.with_name(data_file_name(path))
    if any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer):
        # already pointing into its data file (the streamed builder wrote it): only the small proto is written
        path.write_bytes(model.SerializeToString())
        return
    if external is None:
        external = inline_bytes(model) > EXTERNAL_DATA_FROM_BYTES
    if external:
        if stale.exists():
            stale.unlink()
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=stale.name, size_threshold=MIN_EXTERNAL_TENSOR_BYTES)
        return
    onnx.save_model(model, str(path))
    if stale.exists():
        stale.unlink()


def data_files(graph_path: Path) -> list[Path]:
    """The external-data files a saved graph reads (empty for a self-contained one)."""
    graph_path = Path(graph_path)
    model = onnx.load(str(graph_path), load_external_data=False)
    names = {e.value for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL
             for e in t.external_data if e.key == "location"}
    return [graph_path.with_name(n) for n in sorted(names)]


def is_external(graph_path: Path) -> bool:
    return bool(data_files(graph_path))
