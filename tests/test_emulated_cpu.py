"""int8 on a real AVX2-only CPU, emulated: qemu-user (TCG) implements AVX2/FMA but no AVX-512 or VNNI.

Why: the machines this project runs on change CPU between sessions, and int8 arithmetic differs
between CPU classes (``hardware.CpuInfo.int8_class``). The kernels dispatch on CPUID, which the
emulator answers as a Haswell would, so this runs the very AVX2 code paths (``vpmaddubsw``)
whatever CPU the suite is on. Skipped where ``qemu-x86_64`` is absent (``apt-get install qemu-user``).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

from rerankrt.engine import Reranker
from rerankrt.engine.hardware import cpu_info

from conftest import realistic_pairs

QEMU = shutil.which("qemu-x86_64")
pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64" or QEMU is None,
    reason="needs qemu-user on x86_64 (apt-get install qemu-user) to emulate an AVX2-only CPU")

SCRIPT = """
import json, sys
from rerankrt.engine import Reranker
from rerankrt.engine.hardware import cpu_info
artifact, pairs_file = sys.argv[1:3]
pairs = [tuple(p) for p in json.load(open(pairs_file))]
loaded = Reranker.from_pretrained(artifact, precision="int8", backend="onnxruntime", max_length=512, threads=1)
print(json.dumps({"int8_class": cpu_info().int8_class, "check": loaded.int8_check.status,
                  "scores": loaded.predict(pairs).tolist()}))
"""


def test_int8_on_an_emulated_avx2_cpu_scores_like_this_cpu(tiny_artifact, tmp_path):
    pairs = realistic_pairs(2, 6)
    pairs_file = tmp_path / "pairs.json"
    pairs_file.write_text(json.dumps(pairs))
    env = {**os.environ, "RERANKRT_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([QEMU, "-cpu", "Haswell", os.path.realpath(sys.executable), "-c", SCRIPT,
                           str(tiny_artifact), str(pairs_file)], capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["int8_class"] == "x86-avx2"  # CPUID as the kernels see it, not the host's /proc/cpuinfo
    # gated here (another class, unless this CPU is AVX2-only too): re-checked there, and faithful
    assert out["check"] == ("gated here" if cpu_info().int8_class == "x86-avx2" else "passed")
    native = Reranker.from_pretrained(tiny_artifact, precision="int8", backend="onnxruntime", max_length=512,
                                      threads=1).predict(pairs)
    fp32 = Reranker.from_pretrained(tiny_artifact, precision="fp32", max_length=512).predict(pairs)
    emulated = np.asarray(out["scores"])
    # 7-bit weights: u8×s8 pair sums never saturate, so the integer matmuls agree exactly across classes;
    # only float kernels (norms, softmax) round differently, far below the int8 error itself
    assert np.abs(emulated - native).max() <= 1e-2 * (fp32.max() - fp32.min())
