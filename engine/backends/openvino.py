"""OpenVINO backend (CPU): the same artifact's ONNX files, compiled by OpenVINO.

Why: on recent x86 CPUs OpenVINO runs bf16 (AVX512_BF16 / AMX) and int8 (VNNI) matmuls far
faster than fp32, and compiles Q/DQ int8 graphs natively. Three things matter:

* **strict fp32**: OpenVINO silently runs an fp32 graph in bf16 on CPUs that have it; rerankrt's
  ``fp32`` sets ``INFERENCE_PRECISION_HINT=f32`` so it really is fp32. ``bf16`` asks for bf16
  explicitly and is refused on CPUs without AVX512_BF16/AMX;
* **int8 may run bf16 between its int8 matmuls**: the Q/DQ graph quantizes the weight matmuls
  only; attention, softmax, GeGLU, norms and the layers kept out of quantization run at the
  ``inference_precision``: ``f32`` by default here, ``bf16`` on request (CPUs with AVX512_BF16/AMX
  only), which is what OpenVINO itself does with int8 models on such CPUs. Measured on the
  distilled 17m (Zen 5, 2 threads, interleaved in one process, ``benchmarks/bench_int8_forms.py``,
  ``results/int8-forms-20261124-1140.md``): int8 with f32 between 401 pairs/s, with bf16
  between 548, bf16 alone 426; Spearman to the fp32 graph 0.99997 either way.
  ``Reranker.from_pretrained`` asks for bf16 only where the artifact's parity gate passed that
  form (``selection.choose_inference_precision``). :attr:`inference_precision` says which one
  runs;
* **compile cache**: ``CACHE_DIR`` keeps the compiled blob on disk so the second start is fast;
* **infer requests**: one compiled model, an ``InferRequest`` per calling thread (a request is
  not re-entrant), so concurrent ``predict`` calls are safe; with the ``THROUGHPUT`` hint
  ``run_many`` feeds all batches of a call through an ``AsyncInferQueue`` so that OpenVINO's
  streams run several batches at once, and with one request (``LATENCY``) runs them in turn on
  it: every infer request holds its own intermediate buffers;
* **hint**: ``LATENCY`` by default. With rerankrt's graph (fused RoPE, CLS-only last layer) the
  ``THROUGHPUT`` hint gains little and costs memory (``benchmarks/bench_ov_hints.py``, distilled
  17m, 2 threads): bf16 375 vs 365 pairs/s at 346 vs 291 MiB peak RSS, fp32 225 vs 228 pairs/s at
  397 vs 310 MiB. ``backend_options={"performance_hint": "THROUGHPUT"}`` brings the streams back;
* **shape buckets for int8**: OpenVINO compiles and caches kernels per input shape, and its int8
  kernels are large: with every batch width distinct, the int8 17m peaked at 663 MiB and ran 269
  pairs/s; widths rounded to a multiple of 16 gave 410 MiB and 318 pairs/s (same script; fp32/bf16
  gain nothing, so they are not rounded). Hence :attr:`pad_multiple`, which the batcher honours;
* **CPU pinning** is turned off when a backend uses fewer threads than the machine has cores:
  OpenVINO pins its threads to the first cores, so two single-thread processes (``rerankrt score
  --workers 2``, two Ray actors) stacked on one core. Measured (2 cores, distilled 17m bf16, two
  processes × 1 thread at once): 176 + 176 pairs/s pinned, 353 + 343 unpinned.

``openvino`` is optional (extra ``[openvino]``); this module is imported only when chosen.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import openvino as ov

from ..cache import cache_root
from ..errors import ArtifactError, BackendUnavailableError
from ..hardware import cpu_info, physical_cores
from .base import BackendBase, load_failure_hint

_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32", "fp16": "f32"}
_INFERENCE_PRECISIONS = ("f32", "bf16")
_PAD_MULTIPLE = {"int8": 16}  # batch widths rounded up to this (see the module docstring)


def default_cache_dir() -> Path:
    return cache_root() / "openvino"


class OpenVinoBackend(BackendBase):
    name = "openvino"

    def __init__(self, model_path: Path, precision: str, device: str = "cpu", providers: list[str] | None = None,
                 threads: int | None = None, performance_hint: str = "LATENCY",
                 cache_dir: Path | str | bool | None = None, runtime_cache_capacity: int | None = None,
                 inference_precision: str | None = None) -> None:
        if device != "cpu":
            raise BackendUnavailableError(f"the openvino backend runs on the CPU only, not {device!r}")
        if precision == "bf16" and not cpu_info().has_bf16:
            raise BackendUnavailableError(
                "bf16 needs a CPU with AVX512_BF16 or AMX; this one has neither "
                f"({cpu_info().model}): use fp32 or int8")
        self.precision = precision
        self.inference_precision = self._inference_precision(precision, inference_precision)
        self.device = device
        self.model_path = Path(model_path)
        self.pad_multiple = _PAD_MULTIPLE.get(precision, 1)
        core = ov.Core()
        if cache_dir is not False:  # False: no compile cache
            cache = Path(cache_dir) if isinstance(cache_dir, (str, Path)) else default_cache_dir()
            try:
                cache.mkdir(parents=True, exist_ok=True)
                core.set_property({"CACHE_DIR": str(cache)})
            except OSError:
                pass  # a read-only home only costs start-up time
        threads = int(threads or physical_cores())
        config = {
            "INFERENCE_PRECISION_HINT": self.inference_precision,
            "PERFORMANCE_HINT": performance_hint,
            "INFERENCE_NUM_THREADS": threads,
        }
        if threads < physical_cores():  # see "CPU pinning" in the module docstring
            config["ENABLE_CPU_PINNING"] = False
        if runtime_cache_capacity is not None:  # kernels kept per input shape (dynamic shapes)
            config["CPU_RUNTIME_CACHE_CAPACITY"] = int(runtime_cache_capacity)
        try:
            self.compiled = core.compile_model(str(model_path), "CPU", config)
        except Exception as exc:  # noqa: BLE001 - name the file
            raise ArtifactError(f"openvino cannot compile {model_path}: {_gist(str(exc))}"
                                + load_failure_hint(model_path, "openvino", ov.__version__),
                                str(model_path)) from exc
        names = {name for port in self.compiled.inputs for name in port.get_names()}
        if not {"input_ids", "attention_mask"} <= names:
            raise ArtifactError(f"{model_path} has inputs {sorted(names)}; expected input_ids and attention_mask",
                                str(model_path))
        self._local = threading.local()
        self.performance_hint = performance_hint
        # several infer requests (THROUGHPUT streams) run batches at once: worth padding them all first
        self.overlaps_batches = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) > 1

    def describe(self) -> dict:
        return {**super().describe(), "performance_hint": self.performance_hint}

    @staticmethod
    def _inference_precision(precision: str, requested: str | None) -> str:
        """OpenVINO's precision for everything the graph does not fix itself (see the module docstring)."""
        if requested is None:
            return _PRECISION_HINT.get(precision, "f32")
        if requested not in _INFERENCE_PRECISIONS:
            raise ValueError(f"inference_precision must be one of {_INFERENCE_PRECISIONS}, got {requested!r}")
        if precision in ("fp32", "bf16") and requested != _PRECISION_HINT[precision]:
            raise ValueError(f"precision {precision!r} fixes the inference precision to "
                             f"{_PRECISION_HINT[precision]!r}; inference_precision applies to int8")
        if requested == "bf16" and not cpu_info().has_bf16:
            raise BackendUnavailableError(
                f"inference_precision 'bf16' needs a CPU with AVX512_BF16 or AMX; this one has neither "
                f"({cpu_info().model})")
        return requested

    def _queue(self) -> ov.AsyncInferQueue:
        queue = getattr(self._local, "queue", None)
        if queue is None:
            queue = self._local.queue = ov.AsyncInferQueue(self.compiled)
        return queue

    def run_many(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Run every batch; results in batch order.

        With several infer requests (the THROUGHPUT hint's streams) batches go through the async
        queue so that streams run in parallel. With one (LATENCY, the default) they run one after
        another on it: the async queue then overlaps nothing and cost memory (68m fp32, 300
        pairs: peak RSS 857 vs 726 MiB through ``run``).
        """
        queue = self._queue()
        if len(queue) == 1:
            return [self.run(input_ids, attention_mask) for input_ids, attention_mask in batches]
        results: dict[int, np.ndarray] = {}

        def done(request: ov.InferRequest, userdata: tuple[int, int]) -> None:
            index, rows = userdata
            results[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32).reshape(rows, -1)

        queue.set_callback(done)
        for index, (input_ids, attention_mask) in enumerate(batches):
            queue.start_async({"input_ids": input_ids, "attention_mask": attention_mask},
                              userdata=(index, len(input_ids)))
        queue.wait_all()
        return [results[i] for i in range(len(batches))]

    def _request(self) -> ov.InferRequest:
        """The queue's first request: every request holds its own intermediate buffers."""
        return self._queue()[0]

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        result = self._request().infer({"input_ids": input_ids, "attention_mask": attention_mask})
        out = next(iter(result.values()))
        return np.array(out, dtype=np.float32).reshape(len(input_ids), -1)


def _gist(message: str) -> str:
    """The informative line of an OpenVINO error: its first lines are only where it was raised
    ("Exception from src/inference/...", "Check 'false' failed at ...")."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (useful or lines or [message])[0]
