"""CPU precisions and backends: OpenVINO conformance, bf16, Q/DQ int8 on both backends, auto rules."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from rerankrt.engine import BackendUnavailableError, Reranker
from rerankrt.engine.artifact import load_artifact
from rerankrt.engine.hardware import CpuInfo
from rerankrt.engine.selection import choose_backend, choose_precision

from conftest import DISTILLED, realistic_pairs

ZEN5 = CpuInfo("AMD EPYC (Zen 5)", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}), 2)
ZEN2 = CpuInfo("AMD EPYC (Zen 2)", frozenset({"avx2", "fma"}), 2)
openvino = pytest.importorskip("openvino", reason="openvino not installed")


@pytest.fixture(scope="module")
def cpu_artifact(work, tiny_model):
    """fp32 + bf16 + static int8 (needs OpenVINO at export: bf16 is verified on it)."""
    from rerankrt.export.pipeline import export

    from conftest import random_weight_tolerances

    return export(str(tiny_model), work / "tiny-cpu-artifact", precisions=["fp32", "bf16", "int8"],
                  tolerances=random_weight_tolerances(), log=None)


def _scores(artifact, precision, backend, pairs):
    return Reranker.from_pretrained(artifact, precision=precision, backend=backend, max_length=512).predict(pairs)


def test_every_backend_gives_the_same_fp32_scores(cpu_artifact):
    pairs = realistic_pairs(4, 10)
    ort = _scores(cpu_artifact, "fp32", "onnxruntime", pairs)
    ov = _scores(cpu_artifact, "fp32", "openvino", pairs)
    # strict fp32 on OpenVINO too (it would silently run bf16 on a BF16 CPU otherwise)
    assert np.abs(ort - ov).max() <= 1e-4 * (ort.max() - ort.min())


def test_qdq_int8_loads_and_agrees_in_both_backends(cpu_artifact):
    pairs = realistic_pairs(4, 10)
    ort = _scores(cpu_artifact, "int8", "onnxruntime", pairs)
    ov = _scores(cpu_artifact, "int8", "openvino", pairs)
    fp32 = _scores(cpu_artifact, "fp32", "onnxruntime", pairs)
    score_range = fp32.max() - fp32.min()
    assert np.abs(ort - ov).max() <= 0.1 * score_range
    m = load_artifact(cpu_artifact).manifest
    assert m["graphs"]["int8"]["method"].startswith("onnxruntime.quantize_static")
    assert set(m["parity"]["results"]["int8"]["by_backend"]) == {"onnxruntime", "openvino"}


def test_bf16_shares_the_fp32_file_and_runs_on_openvino_only(cpu_artifact):
    m = load_artifact(cpu_artifact).manifest
    assert m["graphs"]["bf16"]["file"] == m["graphs"]["fp32"]["file"]
    assert m["parity"]["results"]["bf16"]["backend"] == "openvino"
    with pytest.raises(BackendUnavailableError, match="runs on openvino"):
        Reranker.from_pretrained(cpu_artifact, precision="bf16", backend="onnxruntime")


def test_bf16_is_refused_cleanly_on_a_cpu_without_it(cpu_artifact, monkeypatch):
    import rerankrt.engine.backends.openvino as ov_backend

    monkeypatch.setattr(ov_backend, "cpu_info", lambda: ZEN2)
    with pytest.raises(BackendUnavailableError, match="AVX512_BF16 or AMX"):
        Reranker.from_pretrained(cpu_artifact, precision="bf16")


def test_auto_precision_follows_the_cpu(cpu_artifact):
    art = load_artifact(cpu_artifact)
    assert choose_precision(art, "auto", "cpu", cpu=ZEN5, is_installed=lambda b: True) == "bf16"
    assert choose_precision(art, "auto", "cpu", cpu=ZEN2, is_installed=lambda b: True) == "int8"
    assert choose_precision(art, "auto", "cpu", cpu=ZEN5, is_installed=lambda b: b != "openvino") == "int8"
    assert choose_precision(art, "fp32", "cpu", cpu=ZEN5) == "fp32"


def test_auto_precision_skips_precisions_that_failed_the_gate(cpu_artifact, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(cpu_artifact, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["parity"]["results"]["bf16"]["passed"] = False
    m["parity"]["results"]["int8"]["passed"] = False
    (copy / "manifest.json").write_text(json.dumps(m))
    assert choose_precision(load_artifact(copy), "auto", "cpu", cpu=ZEN5, is_installed=lambda b: True) == "fp32"


def test_auto_backend_rule():
    assert choose_backend("bf16", "auto", "cpu", is_installed=lambda b: True) == "openvino"
    assert choose_backend("int8", "auto", "cpu", is_installed=lambda b: True) == "openvino"
    assert choose_backend("int8", "auto", "cpu", is_installed=lambda b: b == "onnxruntime") == "onnxruntime"
    assert choose_backend("fp32", "auto", "cpu", is_installed=lambda b: True) == "onnxruntime"
    with pytest.raises(BackendUnavailableError, match="openvino"):
        choose_backend("bf16", "auto", "cpu", is_installed=lambda b: b == "onnxruntime")


def test_openvino_compile_cache_is_written(cpu_artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("RERANKRT_CACHE", str(tmp_path / "cache"))
    Reranker.from_pretrained(cpu_artifact, precision="fp32", backend="openvino").predict([("q", "d")])
    assert any((tmp_path / "cache" / "openvino").iterdir())


def test_distilled_cpu_precisions_meet_the_fidelity_bar(work):
    """bf16 and int8 on the trained-like distilled 17m: Spearman ≥ 0.995, top-10 ≥ 0.95 vs fp32."""
    if not DISTILLED.is_dir():
        pytest.skip("../shared/models/ettin-17m-distilled not present")
    from rerankrt.export.parity import spearman, top_k_agreement
    from rerankrt.export.pipeline import export

    art = export(str(DISTILLED), work / "distilled-cpu", precisions=["fp32", "bf16", "int8"], log=None)
    pairs = realistic_pairs(10, 30, seed=7)
    groups = [i // 30 for i in range(len(pairs))]
    ref = _scores(art, "fp32", "onnxruntime", pairs)
    for precision, backend in (("bf16", "openvino"), ("int8", "openvino"), ("int8", "onnxruntime")):
        got = _scores(art, precision, backend, pairs)
        assert spearman(ref, got) >= 0.995, (precision, backend)
        assert top_k_agreement(ref, got, groups) >= 0.95, (precision, backend)
