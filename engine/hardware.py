"""What this CPU can do fast: the features that decide which precision and backend win.

Why: the same artifact runs 4–8× faster in bf16/int8 on a CPU with AVX512_BF16/VNNI than on one
without; ``precision="auto"`` and every benchmark record depend on knowing which it is. int8
*results* depend on it too: without VNNI, x86 int8 kernels sum pairs of u8×s8 products in
saturating 16-bit lanes (``vpmaddubsw``), with VNNI they do not; :attr:`CpuInfo.int8_class` names
that arithmetic so an artifact can say which class its int8 parity gate ran on.

The features are what ``/proc/cpuinfo`` lists, corrected by what CPUID tells this very process
(numpy's dispatcher reads CPUID): the kernels of onnxruntime and OpenVINO dispatch on CPUID, and
under an emulator or a restricted VM ``/proc/cpuinfo`` describes the host, not the CPU the code
sees. Elsewhere than Linux the feature set is CPUID's alone.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache

_INTERESTING = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
                "amx_bf16", "amx_int8", "amx_tile", "neon", "asimd", "asimddp", "i8mm", "sve")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]
    logical_cores: int

    @property
    def has_vnni(self) -> bool:
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    @property
    def has_bf16(self) -> bool:
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def has_avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def int8_class(self) -> str:
        """The int8 arithmetic the CPU's kernels use; int8 scores can differ between classes.

        ``x86-avx2`` and ``x86-avx512`` multiply u8×s8 into saturating 16-bit pair sums;
        ``x86-vnni`` (AVX512-VNNI or AVX-VNNI) and ``x86-amx`` accumulate in 32 bits; ARM's dot
        product (``arm64-dotprod``, ``arm64-i8mm``) also accumulates in 32 bits.
        """
        f = self.flags
        if {"neon", "asimd"} & f:
            return "arm64-i8mm" if "i8mm" in f else "arm64-dotprod" if "asimddp" in f else "arm64-neon"
        if "amx_int8" in f:
            return "x86-amx"
        if self.has_vnni:
            return "x86-vnni"
        if "avx512bw" in f:
            return "x86-avx512"
        if "avx2" in f:
            return "x86-avx2"
        return "x86-sse" if f else "unknown"

    def summary(self) -> dict:
        return {"model": self.model, "logical_cores": self.logical_cores,
                "features": sorted(f for f in self.flags if f in _INTERESTING),
                "vnni": self.has_vnni, "bf16": self.has_bf16, "avx512": self.has_avx512,
                "int8_class": self.int8_class}


# numpy's CPUID feature name → the /proc/cpuinfo flag it stands for
_CPUID_TO_FLAG = {"AVX2": "avx2", "FMA3": "fma", "AVX512F": "avx512f", "AVX512BW": "avx512bw",
                  "AVX512VL": "avx512vl", "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16",
                  "ASIMD": "asimd", "ASIMDDP": "asimddp"}


def cpuid_features() -> dict[str, bool]:
    """CPU features as CPUID reports them to this process (numpy's dispatcher table); {} if unknown."""
    import importlib

    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # numpy 2, numpy 1
        try:
            return dict(importlib.import_module(module).__cpu_features__)
        except (ImportError, AttributeError):
            continue
    return {}


def reconcile_flags(flags: frozenset[str], cpuid: dict[str, bool]) -> frozenset[str]:
    """``/proc/cpuinfo`` flags, corrected by CPUID where it knows the feature.

    A feature CPUID denies is dropped (and without AVX-512 no AVX-512 or AMX flag survives: an
    emulated or masked CPU); one CPUID reports is added.
    """
    out = set(flags)
    for key, flag in _CPUID_TO_FLAG.items():
        if key in cpuid:
            (out.add if cpuid[key] else out.discard)(flag)
    if cpuid.get("AVX512F") is False:
        out = {f for f in out if not f.startswith(("avx512", "amx"))}
    return frozenset(out)


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and model in ("", platform.machine(), platform.processor()):
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return model, flags


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    text = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        pass
    model, flags = parse_cpuinfo(text)
    flags = reconcile_flags(flags, cpuid_features())
    return CpuInfo(model=model, flags=flags, logical_cores=os.cpu_count() or 1)


def physical_cores() -> int:
    """Physical cores (hyperthreads do not help matmul-bound inference); falls back to logical CPUs."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return os.cpu_count() or 1
    cores, socket = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            socket = value.strip()
        elif key == "core id":
            cores.add((socket, value.strip()))
    return len(cores) or os.cpu_count() or 1
