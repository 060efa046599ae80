"""The AVX2 emulation of the benchmarks (benchmarks/avx2_emulation.py) really hides AVX-512 state.

Why: issue 16's AVX2-only measurements run on AVX-512 machines through it; if the patch missed an
``XGETBV`` or broke the code around it, every emulated number would silently be AVX-512's. The
test compiles a program that reads XCR0 the way the dispatchers do and runs it before and after.
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

EMULATION = Path(__file__).resolve().parent.parent / "benchmarks" / "avx2_emulation.py"

PROGRAM = r"""
#include <stdio.h>
#include <stdint.h>
static uint64_t xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
int main(void) {
    printf("%llx\n", (unsigned long long)xcr0());
    return 0;
}
"""

pytestmark = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not all(shutil.which(t) for t in ("cc", "objdump", "readelf")),
    reason="needs an x86-64 machine with a C compiler and binutils")


def _module():
    spec = importlib.util.spec_from_file_location("avx2_emulation", EMULATION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _xcr0(binary: Path) -> int:
    return int(subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout, 16)


def test_patched_xgetbv_reports_avx_without_avx512_state(tmp_path: Path) -> None:
    emulation = _module()
    (tmp_path / "xcr0.c").write_text(PROGRAM)
    native = tmp_path / "xcr0"
    subprocess.run(["cc", "-O1", "-o", str(native), str(tmp_path / "xcr0.c")], check=True)
    before = _xcr0(native)
    assert before & 0x6 == 0x6, "this CPU/OS has no AVX state at all"

    patched = tmp_path / "xcr0-avx2"
    offsets = emulation.patch_library(native, patched)
    assert len(offsets) == 1  # the one XGETBV the program has, found by the disassembler
    after = _xcr0(patched)
    assert after & 0x7 == 0x7  # x87, SSE and AVX state still reported: AVX2 code paths stay on
    assert after & 0xE0 == 0  # opmask/ZMM state gone: no dispatcher may pick AVX-512 code
    assert native.read_bytes() != patched.read_bytes() and _xcr0(native) == before  # the original is untouched


def test_a_file_without_xgetbv_is_left_alone(tmp_path: Path) -> None:
    emulation = _module()
    (tmp_path / "plain.c").write_text("int main(void) { return 0; }\n")
    binary = tmp_path / "plain"
    subprocess.run(["cc", "-O1", "-o", str(binary), str(tmp_path / "plain.c")], check=True)
    assert emulation.patch_library(binary, tmp_path / "copy") == []
    assert not (tmp_path / "copy").exists()


ZERO_EXTENDED = r"""
#include <stdio.h>
#include <stdint.h>
int main(void) {
    uint32_t lo, hi;
    __asm__ volatile("mov $0xffffffff, %%eax\n\txgetbv\n\tmov %%eax, %%eax" : "=a"(lo), "=d"(hi) : "c"(0));
    printf("%x\n", lo);
    return 0;
}
"""


def test_xgetbv_followed_by_mov_eax_eax_leaves_no_stale_bits(tmp_path: Path) -> None:
    """Where compilers zero-extend the result (``mov eax, eax``) the patch writes the whole ``mov eax, 7``:
    no leftover register bits (e.g. AMX's state bits 17-18) survive into the XCR0 value."""
    emulation = _module()
    (tmp_path / "zx.c").write_text(ZERO_EXTENDED)
    native = tmp_path / "zx"
    subprocess.run(["cc", "-O1", "-o", str(native), str(tmp_path / "zx.c")], check=True)
    patched = tmp_path / "zx-avx2"
    assert len(emulation.patch_library(native, patched)) == 1
    assert _xcr0(patched) == 0x7  # the eax preloaded with all ones would show through a 3-byte patch
