"""int8 on every CPU class: the CPU class seen by the kernels, 7-bit weights, and the load-time re-check."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from rerankrt.engine import BackendUnavailableError, Reranker
from rerankrt.engine.artifact import load_artifact
from rerankrt.engine.hardware import CpuInfo, cpu_info, reconcile_flags

from conftest import realistic_pairs

ZEN5_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"})


@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx2", "fma"}, "x86-avx2"),  # Zen 2/3, Haswell … Skylake client
    ({"avx2", "fma", "avx512f", "avx512bw"}, "x86-avx512"),  # Skylake-X: AVX-512 without VNNI
    (ZEN5_FLAGS, "x86-vnni"),
    ({"avx2", "fma", "avx_vnni"}, "x86-vnni"),  # Alder Lake: AVX-VNNI without AVX-512
    (ZEN5_FLAGS | {"amx_tile", "amx_int8", "amx_bf16"}, "x86-amx"),
    ({"fp", "asimd"}, "arm64-neon"),
    ({"fp", "asimd", "asimddp"}, "arm64-dotprod"),
    ({"fp", "asimd", "asimddp", "i8mm"}, "arm64-i8mm"),
])
def test_int8_class_names_the_int8_arithmetic(flags, expected):
    assert CpuInfo("cpu", frozenset(flags), 2).int8_class == expected


def test_cpuid_corrects_what_proc_cpuinfo_says():
    # an emulator or masked VM: /proc/cpuinfo lists the host's AVX-512, CPUID (what the kernels see) does not
    masked = reconcile_flags(ZEN5_FLAGS | {"amx_int8"}, {"AVX2": True, "FMA3": True, "AVX512F": False,
                                                          "AVX512BW": False, "AVX512VNNI": False, "AVX512BF16": False})
    assert masked == {"avx2", "fma"}
    assert CpuInfo("cpu", masked, 2).int8_class == "x86-avx2"
    # nothing known from CPUID: /proc/cpuinfo stands
    assert reconcile_flags(ZEN5_FLAGS, {}) == ZEN5_FLAGS
    # and the machine's own answer is consistent with itself
    info = cpu_info()
    assert info.summary()["int8_class"] == info.int8_class


@pytest.mark.parametrize("form", [None, "attention-op"])
def test_int8_weights_fit_the_saturating_u8s8_kernels(ettin17m_artifact, form):
    """Every quantized weight |w| ≤ 64: a u8×s8 pair sum then stays within int16 (2·255·64 = 32,640 ≤ 32,767),
    so CPUs without VNNI (vpmaddubsw) compute exactly what VNNI CPUs compute — in both graph forms."""
    import onnx
    from onnx import numpy_helper

    artifact = load_artifact(ettin17m_artifact)
    if form and form not in artifact.manifest["graphs"]["int8"].get("forms", {}):
        pytest.skip("no attention-op form (an onnxruntime before 1.24 does not write it)")
    graph = artifact.graph("int8", form=form)
    assert graph.path.name == ("model.int8.onnx" if form is None else "model.int8.attention-op.onnx")
    model = onnx.load(str(graph.path))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq_inputs = [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    quantized = [weights[name] for name in dq_inputs if name in weights and weights[name].dtype == np.int8
                 and weights[name].ndim == 2 and "embed" not in name]
    assert len(quantized) >= 10  # the encoder's weight matmuls (the int8 embedding table is not a matmul)
    worst = max(int(np.abs(w.astype(np.int32)).max()) for w in quantized)
    assert worst <= 64
    assert 2 * 255 * worst <= np.iinfo(np.int16).max
    assert graph.info["weight_bits"] == 7
    assert load_artifact(ettin17m_artifact).manifest["parity"]["cpu_class"] == cpu_info().int8_class


def _regated(artifact_dir, dest, cpu_class: str, tolerance: dict | None = None):
    """A copy of the artifact whose manifest says its gate ran on ``cpu_class`` (optionally another tolerance)."""
    shutil.copytree(artifact_dir, dest)
    m = json.loads((dest / "manifest.json").read_text())
    m["parity"]["cpu_class"] = cpu_class
    if tolerance is not None:
        m["parity"]["results"]["int8"]["tolerance"] = tolerance
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANKRT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "int8-checks.json"


def test_int8_gated_here_is_not_rechecked(ettin17m_artifact, cache):
    loaded = Reranker.from_pretrained(ettin17m_artifact, precision="int8", backend="onnxruntime")
    assert loaded.int8_check.status == "gated here"
    assert not cache.exists()


def test_int8_gated_on_another_cpu_class_is_rechecked_once_per_machine(ettin17m_artifact, tmp_path, cache):
    art = _regated(ettin17m_artifact, tmp_path / "art", "x86-some-other-class")
    first = Reranker.from_pretrained(art, precision="int8", backend="onnxruntime")
    assert first.int8_check.status == "passed" and not first.int8_check.cached
    assert first.precision == "int8"
    report = first.int8_check.report
    assert report["spearman"] >= report["tolerance"]["min_spearman"]
    # the check's own numbers agree with an independent comparison of the two graphs on other pairs
    pairs = realistic_pairs(3, 8)
    fp32 = Reranker.from_pretrained(art, precision="fp32").predict(pairs)
    from scipy.stats import spearmanr

    assert spearmanr(fp32, first.predict(pairs)).correlation > 0.9
    second = Reranker.from_pretrained(art, precision="int8", backend="onnxruntime")
    assert second.int8_check.cached and second.int8_check.status == "passed"
    assert "re-checked on this CPU" in second.int8_check.describe()
    # another backend is another check
    if "openvino" in _installed():
        ov = Reranker.from_pretrained(art, precision="int8", backend="openvino")
        assert not ov.int8_check.cached


def _installed():
    from rerankrt.engine.backends import available_backends

    return available_backends()


def test_an_int8_that_fails_here_falls_back_or_is_refused(ettin17m_artifact, tmp_path, cache, caplog):
    # a tolerance no reduced precision can meet stands in for an int8 that this CPU computes wrongly
    impossible = {"max_rel_delta": 0.0, "min_spearman": 1.0, "min_top10": 1.0}
    art = _regated(ettin17m_artifact, tmp_path / "art", "x86-some-other-class", impossible)
    with caplog.at_level(logging.WARNING, logger="rerankrt"):
        auto = Reranker.from_pretrained(art, precision="auto", backend="onnxruntime")
    assert auto.precision == "fp32"
    assert auto.int8_check.status == "failed"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "using fp32 instead" in warnings[0] and "FAILED" in warnings[0]
    with pytest.raises(BackendUnavailableError, match="re-checked on this CPU.*FAILED"):
        Reranker.from_pretrained(art, precision="int8", backend="onnxruntime")
    forced = Reranker.from_pretrained(art, precision="int8", backend="onnxruntime", int8_check=False)
    assert forced.precision == "int8" and forced.int8_check.status == "skipped"


def test_a_corrupt_check_cache_is_redone(ettin17m_artifact, tmp_path, cache):
    art = _regated(ettin17m_artifact, tmp_path / "art", "x86-some-other-class")
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    loaded = Reranker.from_pretrained(art, precision="int8", backend="onnxruntime")
    assert loaded.int8_check.status == "passed" and not loaded.int8_check.cached
    assert json.loads(cache.read_text())  # rewritten whole


def test_older_manifests_without_a_cpu_class_are_rechecked(ettin17m_artifact, tmp_path, cache):
    art = tmp_path / "old"
    shutil.copytree(ettin17m_artifact, art)
    m = json.loads((art / "manifest.json").read_text())
    del m["parity"]["cpu_class"]
    m["export"]["cpu"].pop("int8_class", None)
    (art / "manifest.json").write_text(json.dumps(m))
    loaded = Reranker.from_pretrained(art, precision="int8", backend="onnxruntime")
    assert loaded.int8_check.gate_class is None and loaded.int8_check.status == "passed"


def test_rerankrt_info_says_where_int8_was_gated_and_what_the_check_found(ettin17m_artifact, tmp_path, cache):
    import subprocess
    import sys

    art = _regated(ettin17m_artifact, tmp_path / "art", "x86-some-other-class")
    env = {**__import__("os").environ, "RERANKRT_CACHE": str(cache.parent)}
    done = subprocess.run([sys.executable, "-m", "rerankrt.engine.cli", "info", str(art)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    assert f"this CPU {cpu_info().int8_class}" in done.stdout
    assert "the parity gate ran on x86-some-other-class" in done.stdout
    auto = next(line for line in done.stdout.splitlines() if line.startswith("auto here"))
    assert "re-checked on this CPU" in auto and "passed" in auto
