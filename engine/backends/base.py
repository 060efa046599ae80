"""The backend contract: what every runtime (onnxruntime, OpenVINO, …) offers the scoring core.

Why written down: the scoring core, the server and the export's parity gate call backends
without knowing which one runs; what a backend can do (overlap batches, wants padded widths
rounded or put in buckets, which precision runs between quantized ops) is *declared* here, the way
text-embeddings-inference's ``Backend`` trait declares it, not discovered with ``getattr``.

A backend is constructed as ``Backend(model_path, precision, device="cpu", providers=None,
threads=None, **options)``; options it does not know raise ``TypeError``. Implementations
subclass :class:`BackendBase` for the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    """Scores padded batches. Implementations must be safe to call from several threads."""

    name: str  # registry name: "onnxruntime", "openvino"
    device: str  # "cpu", "cuda", "cuda:1"
    precision: str  # the artifact precision whose graph it runs
    pad_multiple: int  # round padded widths up to this (shape-compiling backends); 1 = no rounding
    width_buckets: tuple[int, ...]  # pad widths up to the smallest of these that holds them (GPU); () = none
    inference_precision: str | None  # what runs between quantized ops (OpenVINO "f32"/"bf16"); None = the graph's
    overlaps_batches: bool  # run_many runs several batches at once (worth padding them all first)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """``int64 [B, S]`` ids and mask → ``float32 [B, num_labels]`` logits."""
        ...

    def run_many(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Every batch's logits, in batch order."""
        ...

    def describe(self) -> dict[str, Any]:
        """What runs, for logs, ``/info`` and benchmark records."""
        ...


class BackendBase:
    """Defaults of the contract: no rounding, no overlap, ``run_many`` as a loop over ``run``."""

    name = "base"
    device = "cpu"
    precision = "fp32"
    pad_multiple = 1
    width_buckets: tuple[int, ...] = ()
    inference_precision: str | None = None
    overlaps_batches = False
    model_path: Path | None = None

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def run_many(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return [self.run(input_ids, attention_mask) for input_ids, attention_mask in batches]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "inference_precision": self.inference_precision, "pad_multiple": self.pad_multiple,
                "width_buckets": list(self.width_buckets), "overlaps_batches": self.overlaps_batches,
                "file": self.model_path.name if self.model_path is not None else None}


# What reading opset 23's Attention / RotaryEmbedding (export form "attention-op") takes of each runtime.
OPSET_23_NEEDS = {"onnxruntime": "onnxruntime >= 1.24", "openvino": "openvino >= 2026.3"}


def load_failure_hint(model_path: Path, runtime: str, version: str) -> str:
    """Why a graph may not load here, when its opset says so: appended to the load error.

    An attention-op artifact (ONNX opset 23) fails on older runtimes with "could not find an
    implementation" / "does not support the following ONNX operations"; the hint names the fix
    instead of leaving the user with the runtime's message alone. Empty when the opset is not the cause.
    """
    try:
        import onnx

        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - the hint is best effort; the load error itself is reported anyway
        return ""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 23:
        return ""
    return (f" — this graph is ONNX opset {opset} (Attention, RotaryEmbedding: the export's attention-op form), "
            f"which needs {OPSET_23_NEEDS.get(runtime, runtime)} (installed: {version}); upgrade it, or re-export "
            "the model with --attention matmul")
