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
    from ..tuning import Decision

__all__ = ["ATTENTION_OP_FORM", "Backend", "BackendBase", "ConfigBuilder", "Created", "available_backends",
           "backend_class", "batch_policy", "create_backend", "graph_form_for", "onnxruntime_reads_attention_op"]

log = logging.getLogger("rerankrt")

# name → (module, class); modules are imported only when chosen, so an absent optional runtime
# (openvino) never breaks the others.
_REGISTRY: dict[str, tuple[str, str]] = {
    "onnxruntime": ("rerankrt.engine.backends.ort", "OrtBackend"),
    "openvino": ("rerankrt.engine.backends.openvino", "OpenVinoBackend"),
}
# A precision's graph may come in a second form (``graphs.<precision>.forms`` in the manifest): "attention-op",
# attention written as ONNX opset 23's Attention and RotaryEmbedding (export/graph.py, ATTENTION_FORMS). onnxruntime
# runs it faster on CPUs — 1.17-1.18x the matmul form in fp32 and int8, natively (VNNI) and as an AVX2-only CPU
# (benchmarks/results/attention-forms-*) — while OpenVINO runs it slower (0.85-0.90x: its frontend decomposes
# Attention into layout ops its attention fusion misses) and the GPU/TensorRT paths were measured on the matmul
# form. So onnxruntime on a CPU loads the attention-op form where the artifact has one; everything else the
# main graph. onnxruntime reads opset 23's QuantizeLinear from 1.24 (fp32 from 1.23): older ones keep the main graph.
ATTENTION_OP_FORM = "attention-op"
ORT_READS_ATTENTION_OP = (1, 24)
CPU_TOKEN_BUDGET = 2048  # small batches win on CPU (cache-resident activations)
GPU_TOKEN_BUDGET = 16384
# Batch widths on a GPU (``OrtBackend`` on CUDA declares them): a few fixed shapes, so that TensorRT builds
# one optimization profile per bucket and one CUDA graph is captured per shape. Doubling buckets cost at
# most 2x the padded tokens of exact widths past the first bucket (a width lands in one under twice its size).
GPU_WIDTH_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
GPU_MAX_BATCH_SIZE = 256  # the default max_batch_size of a load: the rows TensorRT's profiles are built for


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
    """The batch limits that suit ``backend``: its device's token budget, its declared width multiple and buckets."""
    default = GPU_TOKEN_BUDGET if backend.device.startswith("cuda") else CPU_TOKEN_BUDGET
    return BatchPolicy(token_budget or default, max_batch_size, pad_to_multiple_of=int(backend.pad_multiple),
                       width_buckets=tuple(int(w) for w in backend.width_buckets))


@dataclass
class Created:
    """A backend ready to score, its batch policy, and the int8 check's verdict where one applied."""

    backend: Backend
    policy: BatchPolicy
    int8_check: Int8Check | None = None
    tuning: Decision | None = None  # the measured auto's table and choice, when auto was measured


def _non_default_load(token_budget: int | None, max_batch_size: int, int8_check: bool) -> dict:
    """The load options that change what tuning measures, when not the defaults (a plain load's key is the
    one ``rerankrt info`` and ``rerankrt tune`` use)."""
    given = {"token_budget": token_budget, "max_batch_size": max_batch_size, "int8_check": int8_check}
    defaults = {"token_budget": None, "max_batch_size": 256, "int8_check": True}
    return {k: v for k, v in given.items() if v != defaults[k]}


@dataclass
class ConfigBuilder:
    """Builds one configuration (precision, backend, inference precision) of an artifact with the load's options.

    Shared by the load itself and by the measured ``auto`` (``tuning.py``), which times candidates
    built exactly as the chosen one will be.
    """

    artifact: Artifact
    device: str = "cpu"
    providers: list[str] | None = None
    threads: int | None = None
    token_budget: int | None = None
    max_batch_size: int = 256
    options: dict | None = None
    verify: bool = True
    int8_check: bool = True
    failed_int8: Int8Check | None = None  # set by ``checked`` when an int8 candidate failed its check here

    def build(self, config, candidate: bool = False) -> Created:
        from .. import memory

        opts = dict(self.options or {})
        if candidate and config.backend == "openvino":
            opts.setdefault("cache_dir", False)  # a blob per candidate (GBs for the big sizes) is never read
        if config.inference_precision is not None:
            opts.setdefault("inference_precision", config.inference_precision)
        graph = self.artifact.graph(config.precision, verify=self.verify,
                                    form=graph_form_for(config.backend, self.device, self.providers))
        if self.device == "cpu":  # refused with a clear error, not killed by the kernel halfway through loading
            memory.check_load(graph.path,
                              [self.artifact.directory / d["file"] for d in graph.info.get("data_files", [])])
        built = backend_class(config.backend)(graph.path, precision=config.precision, device=self.device,
                                              providers=self.providers, threads=self.threads, **opts)
        return Created(built, batch_policy(built, self.token_budget, self.max_batch_size))

    def checked(self, config) -> Created:
        """``build`` for tuning: int8 re-checked on this CPU class (a failed check raises, so tuning skips
        it, and is kept in :attr:`failed_int8`); OpenVINO writes no compile blob for a candidate."""
        from ..int8_check import check_int8

        created = self.build(config, candidate=True)
        if config.precision == "int8" and not self.device.startswith("cuda"):
            verdict = check_int8(self.artifact, created.backend, created.policy, threads=self.threads,
                                 enabled=self.int8_check)
            if not verdict.usable:
                self.failed_int8 = verdict
                raise BackendUnavailableError(verdict.describe())
            created.int8_check = verdict
        return created


def onnxruntime_reads_attention_op() -> bool:
    """Whether the installed onnxruntime runs the attention-op graphs (fp32 and int8)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    numbers = [int(part) for part in ort.__version__.split(".")[:2] if part.isdigit()]
    return tuple(numbers) >= ORT_READS_ATTENTION_OP


def graph_form_for(backend: str, device: str, providers: list[str] | None = None) -> str | None:
    """The graph form ``backend`` on ``device`` loads when the artifact has it (None: the main graph).

    Only onnxruntime's own CPU provider was measured on the attention-op form: explicit other providers
    (OpenVINO EP, DNNL, XNNPACK …) get the main graph, which every runtime reads.
    """
    cpu_ep = providers is None or list(providers) == ["CPUExecutionProvider"]
    if backend == "onnxruntime" and device == "cpu" and cpu_ep and onnxruntime_reads_attention_op():
        return ATTENTION_OP_FORM
    return None


def create_backend(source: Artifact | Path, precision: str = "auto", backend: str = "auto", device: str = "cpu",
                   providers: list[str] | None = None, threads: int | None = None, token_budget: int | None = None,
                   max_batch_size: int = 256, options: dict | None = None, verify: bool = True,
                   int8_check: bool = True, tune: bool | None = None) -> Created:
    """Build the backend for an artifact (precision and backend may be ``auto``) or for one graph file.

    For an :class:`Artifact` on a CPU, ``auto`` is measured (``tuning.py``: the faithful
    configurations timed once on this machine, the fastest cached) unless ``tune`` is False (or
    ``RERANKRT_TUNE=0``); otherwise, or where nothing can be measured, it follows ``selection.py``.
    int8 on a CPU class the artifact's gate never ran on is re-checked (``int8_check.py``) and, if it
    fails, ``auto`` falls back to the next faithful precision with one warning while an explicit
    ``int8`` raises. For a graph file (the export's parity gate, benchmarks) ``precision`` and
    ``backend`` are explicit and nothing is checked.
    """
    if not isinstance(source, Artifact):
        if precision == "auto" or backend == "auto":
            raise ValueError("a graph file needs an explicit precision and backend")
        built = backend_class(backend)(Path(source), precision=precision, device=device, providers=providers,
                                       threads=threads, **(options or {}))
        return Created(built, batch_policy(built, token_budget, max_batch_size))

    from .. import tuning
    from ..int8_check import check_int8
    from ..selection import choose_backend, choose_inference_precision, choose_precision

    artifact = source
    builder = ConfigBuilder(artifact, device, providers, threads, token_budget, max_batch_size, options, verify,
                            int8_check)
    build = builder.build

    def by_rule(precision_: str) -> tuning.Config:
        name = choose_backend(precision_, backend, device)
        return tuning.Config(precision_, name, choose_inference_precision(artifact, precision_, name))

    decision = None
    # Measured only for plain loads: backend options or providers apply to one backend (another would refuse
    # them), so with them the rule decides.
    if (device == "cpu" and "auto" in (precision, backend) and tuning.enabled(tune) and not options
            and not providers):
        try:
            decision = tuning.decide(artifact, builder.checked, precision, backend, threads,
                                     load=_non_default_load(token_budget, max_batch_size, int8_check),
                                     child={"token_budget": token_budget, "max_batch_size": max_batch_size,
                                            "int8_check": int8_check, "verify": verify})
        except Exception as exc:  # noqa: BLE001 - measuring is an optimisation: never a reason not to load
            log.warning("rerankrt: measuring auto failed (%s: %s); auto follows the rule", type(exc).__name__, exc)
            decision = None
    if decision is not None and builder.failed_int8 is not None:  # as the rule path says it, once per load
        log.warning("rerankrt: %s; using %s instead", builder.failed_int8.describe(), decision.config.label)
    elif decision is not None and decision.cached and any(
            r["config"].get("precision") == "int8" and "int8 gated on" in r.get("skipped", "")
            for r in decision.table):
        log.warning("rerankrt: int8 failed its check on this CPU when auto was measured; using %s",
                    decision.config.label)
    chosen = decision.config if decision is not None else by_rule(choose_precision(artifact, precision, device))
    created = build(chosen)
    if builder.failed_int8 is not None:
        created.int8_check = builder.failed_int8
    if chosen.precision == "int8" and not device.startswith("cuda"):
        verdict = check_int8(artifact, created.backend, created.policy, threads=threads, enabled=int8_check)
        if not verdict.usable:
            if precision != "auto":
                raise BackendUnavailableError(
                    f"{verdict.describe()}. Load precision='fp32' (or 'auto', which falls back by itself), "
                    "or int8_check=False to run int8 anyway")
            fallback = choose_precision(artifact, "auto", device, exclude=("int8",))
            log.warning("rerankrt: %s; using %s instead", verdict.describe(), fallback)
            del created
            created = build(by_rule(fallback))
            decision = None  # what loaded is the rule's fallback, not the measured choice
        created.int8_check = verdict
    created.tuning = decision
    described = created.backend.describe()
    log.info("rerankrt: %s → %s on %s%s%s%s", Path(artifact.directory).name, described["precision"],
             described["backend"],
             f" ({described['inference_precision']} between the int8 matmuls)"
             if described["precision"] == "int8" and described.get("inference_precision") else "",
             f"; {created.int8_check.describe()}" if created.int8_check is not None else "",
             f"; {decision.describe()}" if decision is not None else "")
    return created
