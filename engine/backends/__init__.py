"""Backends behind one contract (``base.py``), created by one function: :func:`create_backend`.

Why one function: the Reranker, the export's parity gate and the benchmarks all need "this graph,
this precision, on this runtime, with its batch policy"; choosing (``selection.py``), building,
sizing the batches and the load-time int8 check happen here once, not in each caller.
Adding a backend is one file (a :class:`BackendBase` subclass) and one line in ``_REGISTRY``.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..artifact import Artifact
from ..batching import BatchPolicy
from ..errors import BackendUnavailableError
from .base import Backend, BackendBase

if TYPE_CHECKING:
    from ..int8_check import Int8Check

__all__ = ["Backend", "BackendBase", "Created", "available_backends", "backend_class", "batch_policy",
           "create_backend"]

log = logging.getLogger("rerankrt")

# name → (module, class); modules are imported only when chosen, so an absent optional runtime
# (openvino) never breaks the others.
_REGISTRY: dict[str, tuple[str, str]] = {
    "onnxruntime": ("rerankrt.engine.backends.ort", "OrtBackend"),
    "openvino": ("rerankrt.engine.backends.openvino", "OpenVinoBackend"),
}
CPU_TOKEN_BUDGET = 2048  # small batches win on CPU (cache-resident activations)
GPU_TOKEN_BUDGET = 16384


def available_backends() -> list[str]:
    """Backends whose runtime package is installed (found, not imported: openvino is slow to import)."""
    from ..selection import installed

    return [name for name in _REGISTRY if installed(name)]


def backend_class(name: str) -> type:
    if name not in _REGISTRY:
        raise BackendUnavailableError(f"unknown backend {name!r}; known: {sorted(_REGISTRY)}")
    module, attr = _REGISTRY[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise BackendUnavailableError(f"backend {name!r} is not installed: {exc}") from exc


def batch_policy(backend: Backend, token_budget: int | None = None, max_batch_size: int = 256) -> BatchPolicy:
    """The batch limits that suit ``backend``: its device's token budget and its declared width multiple."""
    default = GPU_TOKEN_BUDGET if backend.device.startswith("cuda") else CPU_TOKEN_BUDGET
    return BatchPolicy(token_budget or default, max_batch_size, pad_to_multiple_of=int(backend.pad_multiple))


@dataclass
class Created:
    """A backend ready to score, its batch policy, and the int8 check's verdict where one applied."""

    backend: Backend
    policy: BatchPolicy
    int8_check: Int8Check | None = None


def create_backend(source: Artifact | Path, precision: str = "auto", backend: str = "auto", device: str = "cpu",
                   providers: list[str] | None = None, threads: int | None = None, token_budget: int | None = None,
                   max_batch_size: int = 256, options: dict | None = None, verify: bool = True,
                   int8_check: bool = True) -> Created:
    """Build the backend for an artifact (precision and backend may be ``auto``) or for one graph file.

    For an :class:`Artifact`, ``auto`` follows ``selection.py``; int8 on a CPU class the
    artifact's gate never ran on is re-checked (``int8_check.py``) and, if it fails, ``auto`` falls
    back to the next faithful precision with one warning while an explicit ``int8`` raises.
    For a graph file (the export's parity gate, benchmarks) ``precision`` and ``backend`` are
    explicit and nothing is checked.
    """
    if not isinstance(source, Artifact):
        if precision == "auto" or backend == "auto":
            raise ValueError("a graph file needs an explicit precision and backend")
        built = backend_class(backend)(Path(source), precision=precision, device=device, providers=providers,
                                       threads=threads, **(options or {}))
        return Created(built, batch_policy(built, token_budget, max_batch_size))

    from .. import memory
    from ..int8_check import check_int8
    from ..selection import choose_backend, choose_inference_precision, choose_precision

    artifact = source

    def build(precision_: str) -> Created:
        name = choose_backend(precision_, backend, device)
        opts = dict(options or {})
        between = choose_inference_precision(artifact, precision_, name)
        if between is not None:
            opts.setdefault("inference_precision", between)
        graph = artifact.graph(precision_, verify=verify)
        if device == "cpu":  # refused with a clear error, not killed by the kernel halfway through loading
            memory.check_load(graph.path, [artifact.directory / d["file"] for d in graph.info.get("data_files", [])])
        built = backend_class(name)(graph.path, precision=precision_, device=device, providers=providers,
                                    threads=threads, **opts)
        return Created(built, batch_policy(built, token_budget, max_batch_size))

    chosen = choose_precision(artifact, precision, device)
    created = build(chosen)
    if chosen == "int8" and not device.startswith("cuda"):
        verdict = check_int8(artifact, created.backend, created.policy, threads=threads, enabled=int8_check)
        if not verdict.usable:
            if precision != "auto":
                raise BackendUnavailableError(
                    f"{verdict.describe()}. Load precision='fp32' (or 'auto', which falls back by itself), "
                    "or int8_check=False to run int8 anyway")
            fallback = choose_precision(artifact, "auto", device, exclude=("int8",))
            log.warning("rerankrt: %s; using %s instead", verdict.describe(), fallback)
            del created
            created = build(fallback)
        created.int8_check = verdict
    described = created.backend.describe()
    log.info("rerankrt: %s → %s on %s%s%s", Path(artifact.directory).name, described["precision"],
             described["backend"],
             f" ({described['inference_precision']} between the int8 matmuls)"
             if described["precision"] == "int8" and described.get("inference_precision") else "",
             f"; {created.int8_check.describe()}" if created.int8_check is not None else "")
    return created
