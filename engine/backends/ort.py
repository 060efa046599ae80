"""onnxruntime backend: CPU now, CUDA / TensorRT execution providers when onnxruntime-gpu is there.

One ``InferenceSession`` per Reranker; ``InferenceSession.run`` is thread-safe, so concurrent
``predict`` calls share it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import ArtifactError, BackendUnavailableError
from ..hardware import physical_cores
from .base import BackendBase

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


SHRINK_ARENA_FROM_WIDTH = 1024  # tokens per row from which a run returns its arena memory afterwards


def choose_providers(requested: list[str] | None, device: str = "cpu") -> list[str]:
    """Providers in order of preference among those this onnxruntime build has."""
    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise BackendUnavailableError(f"execution providers {missing} are not available in this onnxruntime "
                                          f"build (available: {available}); for CUDA install rerankrt[gpu]")
        return list(requested)
    if device.startswith("cuda"):
        gpu = [p for p in PROVIDER_PREFERENCE[:2] if p in available]
        if not gpu:
            raise BackendUnavailableError(f"device {device!r} requested but onnxruntime has no GPU provider "
                                          f"(available: {available}); install rerankrt[gpu]")
        return gpu + ["CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtBackend(BackendBase):
    """onnxruntime: one session; no batch overlap (intra-op threads already use every core)."""

    name = "onnxruntime"

    def __init__(self, model_path: Path, precision: str, device: str = "cpu", providers: list[str] | None = None,
                 threads: int | None = None) -> None:
        self.precision = precision
        self.device = device
        self.model_path = Path(model_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.providers = choose_providers(providers, device)
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=self.providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types; name the file
            raise ArtifactError(f"onnxruntime cannot load {model_path}: {str(exc).splitlines()[0]}",
                                str(model_path)) from exc
        names = {i.name for i in self.session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= names:
            raise ArtifactError(f"{model_path} has inputs {sorted(names)}; expected input_ids and attention_mask",
                                str(model_path))
        self._output = self.session.get_outputs()[0].name
        self._shrink = ort.RunOptions()
        arenas = ["cpu:0"] + (["gpu:0"] if device != "cpu" else [])
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", ";".join(arenas))

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.session.get_providers()}

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        # A wide batch (long documents: attention grows with width²) grows ORT's memory arena to its
        # peak, and the arena never gives it back: one 4k-token pair of the 17m left +1.1 GB resident
        # for the life of the process. Shrinking the arena after such a run returns it (measured: back
        # to the pre-burst RSS); small batches keep the arena as is, where it saves allocations.
        options = self._shrink if input_ids.shape[1] >= SHRINK_ARENA_FROM_WIDTH else None
        out = self.session.run([self._output], {"input_ids": input_ids, "attention_mask": attention_mask},
                               options)[0]
        return np.asarray(out, dtype=np.float32).reshape(len(input_ids), -1)
