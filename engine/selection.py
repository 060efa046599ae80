"""``precision="auto"`` and ``backend="auto"``: the documented rule, in one place.

Measured on the distilled 17m (AMD Zen 5, AVX-512 + VNNI + BF16, 2 threads, 1,000 negconstraint
pairs, one run; ``benchmarks/results/``): OpenVINO bf16 345 pairs/s > OpenVINO int8 (static Q/DQ)
310 > onnxruntime int8 278 > onnxruntime fp32 217 ≈ OpenVINO strict f32 216. Hence, on CPU:

* precision: ``bf16`` when the CPU has AVX512_BF16/AMX and OpenVINO is installed, else ``int8``,
  else ``fp32`` — only among the artifact's precisions that passed its parity gate;
* backend: ``bf16`` → OpenVINO (the only bf16 path); ``int8`` → OpenVINO when installed, else
  onnxruntime; ``fp32``/``fp16`` → onnxruntime (as fast as OpenVINO in fp32, one dependency less).

On CUDA: ``fp16`` then ``fp32``, onnxruntime (CUDA / TensorRT execution providers).
"""

from __future__ import annotations

import importlib.util

from .artifact import Artifact
from .errors import BackendUnavailableError
from .hardware import CpuInfo, cpu_info

CPU_BACKENDS = {"bf16": ("openvino",), "int8": ("openvino", "onnxruntime"), "fp32": ("onnxruntime", "openvino"),
                "fp16": ("onnxruntime",)}
GPU_PRECISION_ORDER = ("fp16", "fp32")


def installed(backend: str) -> bool:
    """Whether the backend's package can be found (without importing it: openvino is slow to import)."""
    try:
        return importlib.util.find_spec(backend) is not None
    except (ImportError, ValueError):  # a broken or deliberately blocked install
        return False


def _passed(artifact: Artifact, precision: str) -> bool:
    report = artifact.manifest.get("parity", {}).get("results", {}).get(precision)
    return report is None or bool(report.get("passed", True))


def choose_precision(artifact: Artifact, requested: str, device: str, cpu: CpuInfo | None = None,
                     is_installed=installed) -> str:
    if requested != "auto":
        if requested not in artifact.precisions:
            raise BackendUnavailableError(
                f"artifact has no {requested!r} graph (available: {artifact.precisions}); "
                f"re-export with --precision {requested}")
        return requested
    usable = [p for p in artifact.precisions if _passed(artifact, p)] or artifact.precisions
    if device.startswith("cuda"):
        order = GPU_PRECISION_ORDER
    else:
        cpu = cpu or cpu_info()
        order = (("bf16",) if cpu.has_bf16 and is_installed("openvino") else ()) + ("int8", "fp32")
    for candidate in order:
        if candidate in usable:
            return candidate
    return usable[0]


def choose_backend(precision: str, requested: str, device: str, is_installed=installed) -> str:
    if device.startswith("cuda"):
        candidates: tuple[str, ...] = ("onnxruntime",)
    else:
        candidates = CPU_BACKENDS.get(precision, ("onnxruntime",))
    if requested != "auto":
        if requested not in candidates:
            raise BackendUnavailableError(
                f"precision {precision!r} on {device} runs on {', '.join(candidates)}, not {requested!r}")
        if not is_installed(requested):
            raise BackendUnavailableError(f"backend {requested!r} is not installed (pip install 'rerankrt[{requested}]')")
        return requested
    for backend in candidates:
        if is_installed(backend):
            return backend
    raise BackendUnavailableError(
        f"precision {precision!r} needs one of {', '.join(candidates)}; install it (e.g. pip install 'rerankrt[openvino]')")
