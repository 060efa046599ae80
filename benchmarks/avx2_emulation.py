"""Run a benchmark as an AVX2-only x86 CPU would, on a machine with AVX-512.

Why: issue 16 asks for fast int8 on AVX2-only CPUs (Zen 2/3, Haswell–Skylake clients), most of the
CPUs in service, while this project's sessions draw AVX-512 machines (Zen 4/5) nearly every time.
Waiting for the right draw leaves the work undone; measuring AVX-512 kernels says nothing about AVX2.

How: every x86 kernel dispatcher in the serving stack asks the OS, through the ``XGETBV``
instruction, whether it saves the AVX-512 registers, and uses no AVX-512 code when it does not
(that code would fault on such an OS): onnxruntime's MLAS and ``CPUIDInfo``, OpenVINO's oneDNN
(Xbyak) and MLAS, numpy (which rerankrt's ``hardware.cpu_info`` asks) and its OpenBLAS. Copies of these
libraries with every ``XGETBV`` replaced by ``mov al, 7; nop`` (x87, SSE and AVX state: what an OS
without AVX-512 reports) therefore pick the kernels an AVX2-only CPU gets — MLAS's AVX2 u8×s8 GEMM
(``vpmaddubsw``), oneDNN's AVX2 paths — and run them natively. The timings are real timings of the
AVX2 code, on this machine's cores, caches and clock: a proxy for an AVX2-only CPU, not a Zen 3.
torch (only the reference here) is capped by its own switches (``ATEN_CPU_CAPABILITY=avx2``,
``ONEDNN_MAX_CPU_ISA=AVX2``). The copies live under ``<work>/avx2-emulation/`` (symlinks except the
patched libraries) and are put first on ``PYTHONPATH``; the installed packages are never touched.

Validation: ``python benchmarks/avx2_emulation.py --check`` shows what each library sees and the
int8/fp32 matmul ratio with and without the patch; the benchmarks' summaries say that a run was
emulated. Compare the emulated ratios with issue 16's Zen 3 table before trusting a conclusion.

    python benchmarks/bench_cpu_peers.py --emulate-avx2 --models 17m-distilled --no-distilled ...
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

MARKER = "RERANKRT_BENCH_EMULATED_CPU"  # set in an emulated process; its value describes the emulation
PACKAGES = ("numpy", "onnxruntime", "openvino")
XGETBV = b"\x0f\x01\xd0"
NO_AVX512_XCR0 = b"\xb0\x07\x90"  # mov al, 7 (x87|SSE|AVX, no opmask/ZMM state); nop
MOV_EAX_EAX = b"\x89\xc0"  # what compilers emit after XGETBV to zero-extend the low half
XCR0_AVX_ONLY = b"\xb8\x07\x00\x00\x00"  # mov eax, 7: XGETBV + mov eax,eax rewritten, no stale upper bits
DESCRIPTION = "AVX2-only dispatch (XGETBV reports no AVX-512 state) on this CPU"


def _load_segments(path: Path) -> list[tuple[int, int, int]]:
    """(file offset, virtual address, size) of each LOAD segment, from ``readelf``."""
    out = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True, check=True).stdout
    segments = []
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["LOAD"]:
            segments.append((int(parts[1], 16), int(parts[2], 16), int(parts[4], 16)))
    return segments


def xgetbv_offsets(path: Path) -> list[int]:
    """File offsets of every ``XGETBV`` instruction ``objdump`` decodes in ``path``.

    A byte search alone would also hit the three bytes inside other instructions or data; the
    disassembler finds the instructions, and each is checked to hold exactly those bytes.
    """
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True,
                             check=True).stdout
    addresses = [int(m.group(1), 16) for m in re.finditer(r"^\s*([0-9a-f]+):\s+xgetbv\s*$", listing, re.M)]
    segments, data = _load_segments(path), path.read_bytes()
    offsets = []
    for address in addresses:
        offset = next(off + address - vaddr for off, vaddr, size in segments if vaddr <= address < vaddr + size)
        if data[offset:offset + 3] != XGETBV:
            raise RuntimeError(f"{path}: no XGETBV at file offset {offset:#x} (address {address:#x})")
        offsets.append(offset)
    return offsets


def patch_library(source: Path, dest: Path) -> list[int]:
    """Write ``source`` to ``dest`` with every ``XGETBV`` reporting no AVX-512 state; returns their offsets.

    ``mov al, 7`` sets the low byte of the XCR0 value the code goes on to test (bits 0–2: x87, SSE,
    AVX) and clears bits 5–7 (opmask, ZMM state), the ones every AVX-512 check requires; the upper
    bits keep what the register held (AMX's bits 17–18 are why :func:`build` refuses AMX hosts). Where
    the compiler follows XGETBV with ``mov eax, eax`` the five bytes become ``mov eax, 7``: no stale
    bits at all. Writes nothing and returns [] when ``source`` has no such instruction.
    """
    offsets = xgetbv_offsets(source)
    if offsets:
        data = bytearray(source.read_bytes())
        for offset in offsets:
            if data[offset + 3:offset + 5] == MOV_EAX_EAX:
                data[offset:offset + 5] = XCR0_AVX_ONLY
            else:
                data[offset:offset + 3] = NO_AVX512_XCR0
        dest.write_bytes(bytes(data))
        dest.chmod(0o755)
    return offsets


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{name} is not installed")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def _package_roots() -> list[Path]:
    """The installed packages and their auditwheel ``<name>.libs`` folders (numpy's OpenBLAS dispatches too)."""
    roots = []
    for name in PACKAGES:
        root = _package_dir(name)
        roots += [root] + [d for d in (root.parent / f"{name}.libs",) if d.is_dir()]
    return roots


def _fingerprint() -> str:
    """Which installed files (where, which versions) and which patch the copies were made with."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for root in _package_roots():
        h.update(str(root).encode())
        for path in sorted(root.rglob("*.so*")):
            h.update(f"{path.relative_to(root)}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def build(work: Path, log=print) -> Path:
    """The overlay directory (to put first on ``PYTHONPATH``), built once per set of installed packages."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and " amx_" in cpuinfo.read_text(encoding="utf-8", errors="replace"):
        raise RuntimeError("this host has AMX: a patched XGETBV may leave its state bits set, so the emulation "
                           "would not be AVX2-only; run it on an AVX-512 host without AMX")
    fingerprint = _fingerprint()
    overlay = work / "avx2-emulation" / fingerprint
    manifest = overlay / "patched.json"
    if manifest.is_file():
        return overlay
    log(f"building the AVX2 emulation overlay in {overlay} (objdump over {', '.join(PACKAGES)}; about a minute)")
    staging = overlay.with_name(f"{fingerprint}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    patched: dict[str, list[int]] = {}
    for root in _package_roots():  # auditwheel's <name>.libs are found via $ORIGIN/.., so they are copied too
        shutil.copytree(root, staging / root.name, symlinks=False, copy_function=os.symlink,
                        ignore=shutil.ignore_patterns("__pycache__"))
        for link in sorted((staging / root.name).rglob("*.so*")):
            source = Path(os.readlink(link))
            if XGETBV not in source.read_bytes():
                continue
            link.unlink()
            offsets = patch_library(source, link)
            if offsets:
                patched[str(link.relative_to(staging))] = offsets
            else:
                link.symlink_to(source)
    for name in PACKAGES:  # a dispatcher left unpatched would silently keep its AVX-512 kernels
        if not any(key.startswith(f"{name}/") for key in patched):
            raise RuntimeError(f"found no XGETBV in {name}: cannot emulate an AVX2-only CPU with this build")
    (staging / "patched.json").write_text(json.dumps({"description": DESCRIPTION, "patched": patched}, indent=1))
    shutil.rmtree(overlay, ignore_errors=True)
    staging.rename(overlay)
    log("patched " + ", ".join(f"{k} ({len(v)})" for k, v in patched.items()))
    return overlay


def environment(overlay: Path) -> dict[str, str]:
    """The environment of an emulated process (its children inherit it)."""
    path = os.pathsep.join(p for p in (str(overlay), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, MARKER: DESCRIPTION, "ATEN_CPU_CAPABILITY": "avx2",
            "ONEDNN_MAX_CPU_ISA": "AVX2"}


def emulated() -> str | None:
    """The emulation this process runs under, or None."""
    return os.environ.get(MARKER) or None


def reexec_emulated(work: Path, argv: list[str]) -> None:
    """Replace this process by the same command under the emulation; in the emulated process, check it took."""
    if emulated():
        from numpy._core._multiarray_umath import __cpu_features__ as features  # type: ignore[attr-defined]

        if features.get("AVX512F") or not Path(__import__("onnxruntime").__file__).is_relative_to(work):
            raise RuntimeError("the AVX2 emulation did not take: numpy still reports AVX-512 or onnxruntime was "
                               "imported from outside the overlay")
        return
    overlay = build(work)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *argv], environment(overlay))


def _probe() -> dict:
    """What the libraries of this process see, and onnxruntime's int8 vs fp32 matmul speed."""
    import onnxruntime as ort
    from bench_int8_profile import matmul_peaks  # the same matmul the profile benchmark reports
    from numpy._core._multiarray_umath import __cpu_features__ as features  # type: ignore[attr-defined]

    from rerankrt.engine.hardware import cpu_info

    info = {"numpy AVX512F": features.get("AVX512F"), "numpy AVX2": features.get("AVX2"),
            "rerankrt int8 class": cpu_info().int8_class, "onnxruntime": ort.__file__}
    info.update({f"onnxruntime {name} GOPS": round(gops) for name, gops in matmul_peaks().items()})
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work")
    parser.add_argument("--check", action="store_true", help="probe the libraries natively and emulated")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(_probe()))
        return
    overlay = build(args.work)
    print(f"overlay: {overlay}")
    if args.check:
        command = [sys.executable, __file__, "--probe"]
        native = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        emulated_ = json.loads(subprocess.run(command, capture_output=True, text=True, check=True,
                                              env=environment(overlay)).stdout)
        for key in native:
            print(f"{key:28s} native: {native[key]!s:12.60s} emulated: {emulated_[key]!s:.60s}")


if __name__ == "__main__":
    main()
