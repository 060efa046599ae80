"""What this CPU can do fast: the features that decide which precision and backend win.

Why: the same artifact runs 4–8× faster in bf16/int8 on a CPU with AVX512_BF16/VNNI than on one
without; ``precision="auto"`` and every benchmark record depend on knowing which it is.
Linux reads ``/proc/cpuinfo``; elsewhere the feature set is empty and fp32 is chosen.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache

_INTERESTING = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
                "amx_bf16", "amx_int8", "amx_tile", "neon", "asimd", "sve")


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

    def summary(self) -> dict:
        return {"model": self.model, "logical_cores": self.logical_cores,
                "features": sorted(f for f in self.flags if f in _INTERESTING),
                "vnni": self.has_vnni, "bf16": self.has_bf16, "avx512": self.has_avx512}


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset()
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
