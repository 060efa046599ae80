"""Backends behind one small interface: run padded ids + mask, return logits.

Why one interface: the batcher, the HTTP server and file scoring never care whether
onnxruntime (CPU/CUDA/TensorRT EP), OpenVINO or a native TensorRT engine runs the graph. Choosing
one is :func:`create_backend`, a table lookup, not ``if`` chains spread over the code.
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import BackendUnavailableError


@runtime_checkable
class Backend(Protocol):
    """Scores one padded batch. Implementations must be safe to call from several threads."""

    name: str
    device: str
    precision: str

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """``int64 [B, S]`` ids and mask → ``float32 [B, num_labels]`` logits."""
        ...


# name → (module, factory); modules are imported only when chosen, so an absent optional
# runtime (openvino, tensorrt) never breaks the others.
_REGISTRY: dict[str, tuple[str, str]] = {
    "onnxruntime": ("rerankrt.engine.backends.ort", "OrtBackend"),
    "openvino": ("rerankrt.engine.backends.openvino", "OpenVinoBackend"),
}


def available_backends() -> list[str]:
    """Backends whose runtime package is installed (found, not imported: openvino is slow to import)."""
    from ..selection import installed

    return [name for name in _REGISTRY if installed(name)]


def backend_class(name: str):
    if name not in _REGISTRY:
        raise BackendUnavailableError(f"unknown backend {name!r}; known: {sorted(_REGISTRY)}")
    module, attr = _REGISTRY[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise BackendUnavailableError(f"backend {name!r} is not installed: {exc}") from exc
