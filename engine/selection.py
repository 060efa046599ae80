"""``precision="auto"`` and ``backend="auto"`` when nothing was measured here: the documented rule.

``auto`` is measured on each machine first (``tuning.py``: the faithful configurations timed once,
the fastest cached); this rule is what it falls back to (tuning disabled or impossible) and the
order it times candidates in. It follows measurements on two CPU families:

* **VNNI CPUs** (Zen 4/5, Ice Lake and later: AVX512-VNNI or AVX-VNNI). Distilled 17m, AMD Zen 5,
  2 threads, 300 negconstraint pairs, interleaved in one process
  (``benchmarks/results/int8-forms-20261124-1140.md``): OpenVINO int8 (bf16 between its int8
  matmuls) 548 pairs/s > OpenVINO bf16 426 > OpenVINO int8 with f32 between 401 > onnxruntime int8
  358 > OpenVINO strict f32 248 ≈ onnxruntime fp32 233, all within the parity gate.
* **CPUs without VNNI** (AVX2-only x86 such as Zen 2/3 and Haswell–Skylake client parts; AVX-512
  without VNNI): int8 u8×s8 products go through 16-bit pair sums (``vpmaddubsw``) and OpenVINO's
  int8 path gains nothing. Distilled 17m, AMD Zen 3, 600 negconstraint pairs, 2 threads, median of
  3 (issue 16): onnxruntime int8 91.1 pairs/s > onnxruntime fp32 82.7 > OpenVINO strict f32 75.3 >
  OpenVINO int8 62.4. So int8 runs on onnxruntime there. A Zen 4 dispatching as an AVX2-only CPU
  (``benchmarks/avx2_emulation.py``, cpu-peers-20261204-1416) gives the same order for int8: onnxruntime
  int8 96.0 > OpenVINO strict f32 79.3 > OpenVINO int8 72.1; OpenVINO's int8 matmuls there run
  oneDNN's ``jit_gemm_I8`` (kernel named in run 1457; int8 peak 185 GOPS in 1416, below its fp32 201
  GFLOP/s), not the VNNI ``brgemm`` kernels.

Hence, on CPU:

* precision: ``int8``, then ``bf16`` when the CPU has AVX512_BF16/AMX and OpenVINO is installed,
  then ``fp32`` — only among the artifact's precisions that passed its parity gate.
* int8 on OpenVINO runs bf16 between its int8 matmuls when the CPU has AVX512_BF16/AMX *and* the
  artifact's parity gate passed that form (``openvino+bf16`` in its int8 report), else f32.
* backend: ``bf16`` → OpenVINO (the only bf16 path); ``int8`` → OpenVINO on VNNI CPUs when
  installed, onnxruntime otherwise; ``fp32``/``fp16`` → onnxruntime (as fast as OpenVINO in fp32,
  one dependency less).

On CUDA: ``fp16`` then ``fp32``, onnxruntime (CUDA / TensorRT execution providers).
"""

from __future__ import annotations

import importlib.util

from .artifact import Artifact
from .errors import BackendUnavailableError
from .hardware import CpuInfo, cpu_info

CPU_BACKENDS = {"bf16": ("openvino",), "int8": ("openvino", "onnxruntime"), "fp32": ("onnxruntime", "openvino"),
                "fp16": ("onnxruntime",)}
INT8_BACKENDS_WITHOUT_VNNI = ("onnxruntime", "openvino")
GPU_PRECISION_ORDER = ("fp16", "fp32")


def installed(backend: str) -> bool:
    """Whether the backend's package can be found (without importing it: openvino is slow to import)."""
    try:
        return importlib.util.find_spec(backend) is not None
    except (ImportError, ValueError):  # a broken or deliberately blocked install
        return False


def gate_passed(artifact: Artifact, precision: str) -> bool:
    """Whether the precision passed the artifact's parity gate (an older manifest without a report: yes)."""
    report = artifact.manifest.get("parity", {}).get("results", {}).get(precision)
    return report is None or bool(report.get("passed", True))


def choose_precision(artifact: Artifact, requested: str, device: str, cpu: CpuInfo | None = None,
                     is_installed=installed, exclude: tuple[str, ...] = ()) -> str:
    """The precision to load; ``exclude`` drops precisions ``auto`` must not pick (an int8 that failed here)."""
    if requested != "auto":
        if requested not in artifact.precisions:
            raise BackendUnavailableError(
                f"artifact has no {requested!r} graph (available: {artifact.precisions}); "
                f"re-export with --precision {requested}")
        return requested
    available = [p for p in artifact.precisions if p not in exclude] or ["fp32"]
    usable = [p for p in available if gate_passed(artifact, p)] or available
    order: tuple[str, ...]
    if device.startswith("cuda"):
        order = GPU_PRECISION_ORDER
    else:
        cpu = cpu or cpu_info()
        order = ("int8",) + (("bf16",) if cpu.has_bf16 and is_installed("openvino") else ()) + ("fp32",)
    for candidate in order:
        if candidate in usable:
            return candidate
    return usable[0]


def cpu_backends(precision: str, cpu: CpuInfo | None = None) -> tuple[str, ...]:
    """The CPU backends that run ``precision``, the rule's preference first (see the module docstring)."""
    candidates = CPU_BACKENDS.get(precision, ("onnxruntime",))
    if precision == "int8" and not (cpu or cpu_info()).has_vnni:
        candidates = INT8_BACKENDS_WITHOUT_VNNI
    return candidates


def choose_backend(precision: str, requested: str, device: str, is_installed=installed,
                   cpu: CpuInfo | None = None) -> str:
    if device.startswith("cuda"):
        candidates: tuple[str, ...] = ("onnxruntime",)
    else:
        candidates = cpu_backends(precision, cpu)
    if requested != "auto":
        if requested not in candidates:
            raise BackendUnavailableError(
                f"precision {precision!r} on {device} runs on {', '.join(candidates)}, not {requested!r}")
        if not is_installed(requested):
            raise BackendUnavailableError(
                f"backend {requested!r} is not installed (pip install 'rerankrt[{requested}]')")
        return requested
    for backend in candidates:
        if is_installed(backend):
            return backend
    raise BackendUnavailableError(
        f"precision {precision!r} needs one of {', '.join(candidates)}; "
        "install it (e.g. pip install 'rerankrt[openvino]')")


OPENVINO_INT8_BF16 = "openvino+bf16"  # the int8 parity report's entry for int8 with bf16 elsewhere


def choose_inference_precision(artifact: Artifact, precision: str, backend: str,
                               cpu: CpuInfo | None = None) -> str | None:
    """OpenVINO's precision between the int8 matmuls (``None``: the backend's own default)."""
    if precision != "int8" or backend != "openvino":
        return None
    cpu = cpu or cpu_info()
    report = artifact.manifest.get("parity", {}).get("results", {}).get("int8", {})
    gated = report.get("by_backend", {}).get(OPENVINO_INT8_BF16, {}).get("passed") is True
    return "bf16" if cpu.has_bf16 and gated else "f32"
