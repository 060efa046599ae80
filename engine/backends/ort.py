"""onnxruntime backend: CPU now, CUDA / TensorRT execution providers when onnxruntime-gpu is there.

One ``InferenceSession`` per Reranker; ``InferenceSession.run`` is thread-safe, so concurrent
``predict`` calls share it. On a GPU:

* **provider options** come from one place, :func:`~.ort_providers.provider_plan` (why each is set is
  written there);
* **IO binding** (``io_binding``; on by default for CUDA devices, off on the CPU, where ``session.run``
  on numpy arrays copies nothing anyway, but it runs there too when asked): per batch shape the
  backend keeps the inputs' and the output's ``OrtValue`` on the device, with host staging arrays in the
  dtypes the graph declares (int32 inputs are filled from the int64 batches), refreshes them in place
  (``OrtValue.update_inplace``: the device addresses never move) and runs
  ``run_with_iobinding``. The shapes kept are an LRU of :data:`BINDING_CACHE_SIZE`, so memory is
  bounded whatever widths come. **Thread safety**: one lock per shape entry, not per-thread caches: a
  server's threads would multiply the buffers (and the LRU bound) by their number, and CUDA graphs need
  exactly one set of buffers per captured shape. Concurrent runs of different shapes proceed in
  parallel; runs of one shape take turns on its buffers;
* **CUDA graphs** (``cuda_graph``; CUDA EP and IO binding only): rows are padded up to a power of two by
  repeating row 0 (:func:`pad_rows`; the extra outputs are dropped), widths come bucketed from the batch
  policy, and each distinct (rows, width) gets its own ``gpu_graph_id`` and its own buffers, kept for
  the session's life (at most ``log2(max rows) + 1`` × buckets of them) because a captured graph replays
  into those addresses. Widths past the largest bucket run uncaptured (``gpu_graph_id=-1``). Every run
  of a graph session happens on one worker thread, whichever thread calls ``run``: the CUDA EP keeps
  its captured graphs in a per-thread context, so captures from a server's many threads would repeat
  each graph (and its memory) once per thread, and CUDA graph objects are not thread-safe (NVIDIA's
  driver API documentation). Per-shape graph ids need onnxruntime 1.18 (``gpu_graph_id``, PR #19636),
  the oldest rerankrt accepts.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..batching import BatchPolicy
from ..cache import cache_root
from ..errors import ArtifactError, BackendUnavailableError
from ..hardware import physical_cores
from .base import BackendBase, load_failure_hint
from .ort_providers import CUDA, TENSORRT, device_id, provider_plan, trt_cache_dir

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


SHRINK_ARENA_FROM_WIDTH = 1024  # tokens per row from which a run returns its arena memory afterwards
BINDING_CACHE_SIZE = 32  # batch shapes whose bound buffers IO binding keeps (least recently used dropped)
_INPUT_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
_OUTPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


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


def default_trt_cache_dir() -> Path:
    return cache_root() / "tensorrt"


def row_bucket(rows: int) -> int:
    """The power of two at or above ``rows``: the row counts a CUDA-graph session captures."""
    return 1 << max(int(rows) - 1, 0).bit_length()


def pad_rows(input_ids: np.ndarray, attention_mask: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch with row 0 repeated up to ``rows`` rows (a real row, so the padding runs the same kernels as
    the batch; rows are scored independently, so the first ``len(input_ids)`` outputs do not change)."""
    extra = int(rows) - len(input_ids)
    if extra < 0:
        raise ValueError(f"cannot pad {len(input_ids)} rows down to {rows}")
    if extra == 0:
        return input_ids, attention_mask
    return (np.concatenate([input_ids, np.repeat(input_ids[:1], extra, axis=0)]),
            np.concatenate([attention_mask, np.repeat(attention_mask[:1], extra, axis=0)]))


@dataclass
class BoundShape:
    """One batch shape's IO binding: device buffers, host staging arrays, the run options, and its lock."""

    shape: tuple[int, int]
    binding: Any  # onnxruntime.IOBinding
    inputs: list[Any]  # OrtValue per graph input, in INPUT order
    staging: list[np.ndarray]  # host arrays in the graph's input dtypes, reused run after run
    output: Any  # the bound output OrtValue (None: onnxruntime allocates it per run)
    run_options: Any = None  # onnxruntime.RunOptions (gpu_graph_id, arena shrinkage) or None
    graph_id: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class BindingCache:
    """Bound shapes, least recently used dropped past ``capacity`` (a dropped entry still in use by a run
    stays alive until that run ends: the run holds it)."""

    def __init__(self, capacity: int = BINDING_CACHE_SIZE) -> None:
        self.capacity = int(capacity)
        self._entries: OrderedDict[tuple[int, int], BoundShape] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, shape: tuple[int, int], make: Callable[[tuple[int, int]], BoundShape]) -> BoundShape:
        with self._lock:
            entry = self._entries.get(shape)
            if entry is None:
                entry = self._entries[shape] = make(shape)
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(shape)
            return entry

    def shapes(self) -> list[tuple[int, int]]:
        """Cached shapes, least recently used first."""
        with self._lock:
            return list(self._entries)

    def peek(self, shape: tuple[int, int]) -> BoundShape | None:
        with self._lock:
            return self._entries.get(shape)


class OrtBackend(BackendBase):
    """onnxruntime: one session; no batch overlap (intra-op threads already use every core)."""

    name = "onnxruntime"

    def __init__(self, model_path: Path, precision: str, device: str = "cpu", providers: list[str] | None = None,
                 threads: int | None = None, io_binding: bool | None = None, cuda_graph: bool = False,
                 width_buckets: tuple[int, ...] | list[int] | None = None,
                 cache_dir: Path | str | bool | None = None, trt_profiles: bool = False) -> None:
        from . import GPU_MAX_BATCH_SIZE, GPU_TOKEN_BUDGET, GPU_WIDTH_BUCKETS

        self.precision = precision
        self.device = device
        self.model_path = Path(model_path)
        self._device_id = device_id(device)
        on_gpu = device.startswith("cuda")
        if cuda_graph and io_binding is False:
            raise ValueError("cuda_graph needs io_binding: a captured graph replays into fixed device buffers")
        self.io_binding = bool(on_gpu if io_binding is None else io_binding) or bool(cuda_graph)
        self.cuda_graph = bool(cuda_graph)
        self.width_buckets = tuple(sorted({int(w) for w in (
            (GPU_WIDTH_BUCKETS if on_gpu else ()) if width_buckets is None else width_buckets)}))
        if any(w < 1 for w in self.width_buckets):
            raise ValueError(f"width_buckets must be positive, got {self.width_buckets}")
        if self.cuda_graph and not hasattr(ort.OrtValue, "update_inplace"):
            raise BackendUnavailableError(f"cuda_graph needs OrtValue.update_inplace (onnxruntime {ort.__version__} "
                                          "has none): a captured graph reads its inputs at fixed addresses")

        names = choose_providers(providers, device)
        if self.cuda_graph and providers is None and TENSORRT in names:
            names = [n for n in names if n != TENSORRT]  # see provider_plan: the CUDA EP captures alone
        trt_dir: Path | None = None
        if TENSORRT in names and cache_dir is not False:
            trt_dir = trt_cache_dir(Path(cache_dir) if isinstance(cache_dir, (str, Path)) else default_trt_cache_dir(),
                                    self.model_path)
            for sub in ("engines", "timing"):
                try:
                    (trt_dir / sub).mkdir(parents=True, exist_ok=True)
                except OSError:
                    trt_dir = None  # a read-only cache only costs engine builds
                    break
        # The rows TensorRT's profiles allow per bucket: the default GPU load's policy (a load with a larger
        # token_budget or max_batch_size sends more rows than they hold; trt_profiles=False then).
        gpu_policy = BatchPolicy(GPU_TOKEN_BUDGET, GPU_MAX_BATCH_SIZE, width_buckets=self.width_buckets)
        self.provider_plan = provider_plan(names, device, precision, gpu_policy, trt_dir, self.cuda_graph,
                                           trt_profiles)
        self.providers = [name for name, _ in self.provider_plan]

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=self.providers,
                                                provider_options=[opts for _, opts in self.provider_plan])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types; name the file
            if self.cuda_graph and "graph capture" in str(exc):
                # measured on an H200 (benchmarks/results/gpu-20261204-1138): onnxruntime places the graph's
                # shape arithmetic (Shape, Gather and Range on sizes) on the CPU, and it captures a CUDA graph
                # only when every node runs on the CUDA EP
                raise BackendUnavailableError(
                    f"onnxruntime refused cuda_graph for {model_path.name}: graph capture needs every node on the "
                    "CUDA EP, and onnxruntime keeps this graph's shape computations on the CPU; use io_binding "
                    "without cuda_graph") from exc
            raise ArtifactError(f"onnxruntime cannot load {model_path}: {str(exc).splitlines()[0]}"
                                + load_failure_hint(model_path, "onnxruntime", ort.__version__),
                                str(model_path)) from exc
        asked_gpu = [p for p in self.providers if p in (TENSORRT, CUDA)]
        if asked_gpu and not set(self.session.get_providers()) & {TENSORRT, CUDA}:
            # onnxruntime falls back to the CPU, with a warning, when its GPU providers cannot start (no
            # driver, no device): a load that asked for a GPU says so instead of running on the CPU unnoticed
            raise BackendUnavailableError(f"device {device!r}: onnxruntime could not start {asked_gpu} "
                                          f"(the session runs on {self.session.get_providers()}); check the GPU, "
                                          "its driver and the CUDA/TensorRT libraries onnxruntime-gpu needs")
        inputs = {i.name: i for i in self.session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= set(inputs):
            raise ArtifactError(f"{model_path} has inputs {sorted(inputs)}; expected input_ids and attention_mask",
                                str(model_path))
        output = self.session.get_outputs()[0]
        self._output = output.name
        self._input_dtypes = [_INPUT_DTYPES.get(inputs[n].type) for n in ("input_ids", "attention_mask")]
        if self.io_binding and None in self._input_dtypes:
            raise ArtifactError(f"{model_path}: IO binding takes int64 or int32 inputs, the graph declares "
                                f"{[inputs[n].type for n in ('input_ids', 'attention_mask')]}", str(model_path))
        self._output_dtype = _OUTPUT_DTYPES.get(output.type, np.float32)
        last = output.shape[-1] if output.shape else None
        self._labels = last if isinstance(last, int) and last > 0 else None
        if self.cuda_graph and self._labels is None:
            raise ArtifactError(f"{model_path}: cuda_graph needs the output's last dimension fixed, got {output.shape}",
                                str(model_path))
        self._value_device = "cuda" if on_gpu else "cpu"
        self._inplace = hasattr(ort.OrtValue, "update_inplace")
        self._bindings = BindingCache(BINDING_CACHE_SIZE)
        self._graphs: dict[tuple[int, int], BoundShape] = {}
        self._graph_worker: ThreadPoolExecutor | None = None  # the one thread a CUDA-graph session runs on
        self._worker_lock = threading.Lock()
        self._shrink = ort.RunOptions()
        arenas = ["cpu:0"] + ([f"gpu:{self._device_id}"] if on_gpu else [])
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", ";".join(arenas))

    def describe(self) -> dict:
        try:  # what the session runs with, defaults included (a provider that failed to load is absent)
            in_effect = self.session.get_provider_options()
        except Exception:  # noqa: BLE001 - older builds: what was asked for
            in_effect = dict(self.provider_plan)
        return {**super().describe(), "providers": self.session.get_providers(), "provider_options": in_effect,
                "io_binding": self.io_binding, "cuda_graph": self.cuda_graph}

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if self.cuda_graph:
            return self._run_graph(input_ids, attention_mask)
        if self.io_binding:
            return self._run_bound(input_ids, attention_mask)
        # A wide batch (long documents: attention grows with width²) grows ORT's memory arena to its
        # peak, and the arena never gives it back: one 4k-token pair of the 17m left +1.1 GB resident
        # for the life of the process. Shrinking the arena after such a run returns it (measured: back
        # to the pre-burst RSS); small batches keep the arena as is, where it saves allocations.
        options = self._shrink if input_ids.shape[1] >= SHRINK_ARENA_FROM_WIDTH else None
        ids_type, mask_type = self._input_dtypes
        feed = {"input_ids": input_ids if ids_type in (None, input_ids.dtype) else input_ids.astype(ids_type),
                "attention_mask": attention_mask if mask_type in (None, attention_mask.dtype)
                else attention_mask.astype(mask_type)}
        out = self.session.run([self._output], feed, options)[0]
        return np.asarray(out, dtype=np.float32).reshape(len(input_ids), -1)

    # -- IO binding -------------------------------------------------------------------------------------------

    def _bind(self, shape: tuple[int, int], graph_id: int | None = None) -> BoundShape:
        """A new binding for ``shape``: device buffers for the inputs and the output, host staging arrays."""
        binding = self.session.io_binding()
        values, staging = [], []
        for name, dtype in zip(("input_ids", "attention_mask"), self._input_dtypes):
            staging.append(np.zeros(shape, dtype=dtype))
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, self._value_device, self._device_id)
            binding.bind_ortvalue_input(name, value)
            values.append(value)
        output = None
        if self._labels is not None:
            output = ort.OrtValue.ortvalue_from_shape_and_type([shape[0], self._labels], self._output_dtype,
                                                               self._value_device, self._device_id)
            binding.bind_ortvalue_output(self._output, output)
        else:  # a graph whose label count is symbolic: onnxruntime allocates the output on the device
            binding.bind_output(self._output, self._value_device, self._device_id)
        run_options = None
        if self.cuda_graph:
            run_options = ort.RunOptions()
            # ids from 1: onnxruntime reserves 0 for its own default capture; -1 runs without capturing
            run_options.add_run_config_entry("gpu_graph_id", str(-1 if graph_id is None else graph_id))
        elif shape[1] >= SHRINK_ARENA_FROM_WIDTH:  # as in ``run``; never with graphs, which replay into the arena
            run_options = self._shrink
        return BoundShape(shape, binding, values, staging, output, run_options, graph_id)

    def _run_entry(self, entry: BoundShape, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Fill ``entry``'s buffers with the batch, run, and return a copy of the logits (the caller holds the
        entry's lock, or runs on the graph worker)."""
        for k, (name, source) in enumerate(zip(("input_ids", "attention_mask"), (input_ids, attention_mask))):
            np.copyto(entry.staging[k], source, casting="unsafe")  # the graph's dtype (int64 → int32 where declared)
            if self._inplace:
                entry.inputs[k].update_inplace(entry.staging[k])
            else:  # onnxruntime without update_inplace: a new OrtValue per run (never with cuda_graph)
                entry.inputs[k] = ort.OrtValue.ortvalue_from_numpy(entry.staging[k], self._value_device,
                                                                   self._device_id)
                entry.binding.bind_ortvalue_input(name, entry.inputs[k])
        self.session.run_with_iobinding(entry.binding, entry.run_options)
        output = entry.output if entry.output is not None else entry.binding.get_outputs()[0]
        # a copy: on the CPU ``numpy()`` is a view of the bound buffer, which the next run overwrites
        return np.array(output.numpy(), dtype=np.float32).reshape(entry.shape[0], -1)

    def _run_bound(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        rows, width = input_ids.shape
        entry = self._bindings.get((int(rows), int(width)), self._bind)
        with entry.lock:
            return self._run_entry(entry, input_ids, attention_mask)

    def _run_graph(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with self._worker_lock:
            if self._graph_worker is None:
                self._graph_worker = ThreadPoolExecutor(1, thread_name_prefix="rerankrt-cuda-graph")
        return self._graph_worker.submit(self._run_graph_here, input_ids, attention_mask).result()

    def _run_graph_here(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """On the graph worker: rows padded to their power of two, one graph id per (rows, bucketed width)."""
        rows, width = input_ids.shape
        if width not in self.width_buckets:  # past the buckets: an uncaptured run (gpu_graph_id -1)
            return self._run_entry(self._bindings.get((int(rows), int(width)), self._bind), input_ids, attention_mask)
        shape = (row_bucket(rows), int(width))
        graph = self._graphs.get(shape)
        if graph is None:
            graph = self._graphs[shape] = self._bind(shape, graph_id=len(self._graphs) + 1)
        ids, mask = pad_rows(input_ids, attention_mask, shape[0])
        return self._run_entry(graph, ids, mask)[:rows]
