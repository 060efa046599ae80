"""CPU precisions and backends: OpenVINO conformance, bf16, Q/DQ int8 on both backends, auto rules."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from rerankrt.engine import BackendUnavailableError, Reranker
from rerankrt.engine.artifact import load_artifact
from rerankrt.engine.hardware import CpuInfo, cpu_info
from rerankrt.engine.selection import choose_backend, choose_precision

from conftest import DISTILLED, FIXTURE_LONG_LENGTHS, realistic_pairs

ZEN5 = CpuInfo("AMD EPYC (Zen 5)", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}), 2)
ZEN2 = CpuInfo("AMD EPYC (Zen 2)", frozenset({"avx2", "fma"}), 2)
openvino = pytest.importorskip("openvino", reason="openvino not installed")
HAS_BF16 = cpu_info().has_bf16
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="the export verifies bf16 only on a CPU with AVX512_BF16 or "
                                                     f"AMX; this one ({cpu_info().int8_class}) has neither")


@pytest.fixture(scope="module")
def cpu_artifact(work, tiny_model):
    """fp32 + static int8, and bf16 where this CPU can verify it (OpenVINO at export)."""
    from rerankrt.export.pipeline import export

    from conftest import random_weight_tolerances

    precisions = ["fp32", "bf16", "int8"] if HAS_BF16 else ["fp32", "int8"]
    return export(str(tiny_model), work / "tiny-cpu-artifact", precisions=precisions,
                  tolerances=random_weight_tolerances(), long_lengths=FIXTURE_LONG_LENGTHS, log=None)


@pytest.fixture
def bf16_artifact(cpu_artifact, tmp_path):
    """``cpu_artifact`` with a bf16 entry: the export's own on a BF16 CPU; elsewhere one written here
    the way the export writes it (the fp32 file, OpenVINO, gate passed), so that the load-time rules
    for bf16 are tested on every CPU."""
    if HAS_BF16:
        return cpu_artifact
    copy = tmp_path / "with-bf16"
    shutil.copytree(cpu_artifact, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["graphs"]["bf16"] = {**m["graphs"]["fp32"], "backends": ["openvino"], "inference_precision": "bf16"}
    m["parity"]["results"]["bf16"] = {**m["parity"]["results"]["fp32"], "backend": "openvino", "passed": True}
    (copy / "manifest.json").write_text(json.dumps(m))
    return copy


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
    # the same graph in the same precision on both (OpenVINO's default on BF16 CPUs, bf16 between
    # the int8 matmuls, is checked for fidelity on the distilled model below)
    ov = Reranker.from_pretrained(cpu_artifact, precision="int8", backend="openvino", max_length=512,
                                  backend_options={"inference_precision": "f32"}).predict(pairs)
    fp32 = _scores(cpu_artifact, "fp32", "onnxruntime", pairs)
    score_range = fp32.max() - fp32.min()
    assert np.abs(ort - ov).max() <= 0.1 * score_range
    m = load_artifact(cpu_artifact).manifest
    assert m["graphs"]["int8"]["method"].startswith("onnxruntime.quantize_static")
    assert {"onnxruntime", "openvino"} <= set(m["parity"]["results"]["int8"]["by_backend"])


@needs_bf16
def test_bf16_shares_the_fp32_file_and_runs_on_openvino_only(cpu_artifact):
    m = load_artifact(cpu_artifact).manifest
    assert m["graphs"]["bf16"]["file"] == m["graphs"]["fp32"]["file"]
    assert m["parity"]["results"]["bf16"]["backend"] == "openvino"
    with pytest.raises(BackendUnavailableError, match="runs on openvino"):
        Reranker.from_pretrained(cpu_artifact, precision="bf16", backend="onnxruntime")


def test_bf16_is_refused_cleanly_on_a_cpu_without_it(bf16_artifact, monkeypatch):
    import rerankrt.engine.backends.openvino as ov_backend

    monkeypatch.setattr(ov_backend, "cpu_info", lambda: ZEN2)
    with pytest.raises(BackendUnavailableError, match="AVX512_BF16 or AMX"):
        Reranker.from_pretrained(bf16_artifact, precision="bf16")


def test_bf16_export_is_refused_before_any_work_on_a_cpu_without_it(tiny_model, tmp_path, monkeypatch):
    from rerankrt.export import pipeline

    monkeypatch.setattr(pipeline, "cpu_info", lambda: ZEN2)
    monkeypatch.setattr(pipeline, "read_source", lambda *a: pytest.fail("the export started working"))
    with pytest.raises(ValueError, match="AVX512_BF16 or AMX.*cannot verify"):
        pipeline.export(str(tiny_model), tmp_path / "out", precisions=["fp32", "bf16"], log=None)
    assert not (tmp_path / "out").exists()


def test_auto_precision_follows_the_cpu(bf16_artifact, tmp_path):
    art = load_artifact(bf16_artifact)
    assert choose_precision(art, "auto", "cpu", cpu=ZEN5, is_installed=lambda b: True) == "int8"
    assert choose_precision(art, "auto", "cpu", cpu=ZEN2, is_installed=lambda b: True) == "int8"
    assert choose_precision(art, "auto", "cpu", cpu=ZEN5, is_installed=lambda b: b != "openvino") == "int8"
    assert choose_precision(art, "fp32", "cpu", cpu=ZEN5) == "fp32"
    # without a usable int8 graph: bf16 where the CPU and OpenVINO allow it, else fp32
    copy = tmp_path / "no-int8"
    shutil.copytree(bf16_artifact, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["parity"]["results"]["int8"]["passed"] = False
    (copy / "manifest.json").write_text(json.dumps(m))
    art = load_artifact(copy)
    assert choose_precision(art, "auto", "cpu", cpu=ZEN5, is_installed=lambda b: True) == "bf16"
    assert choose_precision(art, "auto", "cpu", cpu=ZEN2, is_installed=lambda b: True) == "fp32"
    assert choose_precision(art, "auto", "cpu", cpu=ZEN5, is_installed=lambda b: b != "openvino") == "fp32"


def test_openvino_int8_runs_bf16_between_its_matmuls_only_where_gated_and_supported(cpu_artifact, monkeypatch,
                                                                                     tmp_path):
    from rerankrt.engine import selection as selection_module
    from rerankrt.engine.backends import openvino as ov_backend
    from rerankrt.engine.hardware import cpu_info
    from rerankrt.engine.selection import OPENVINO_INT8_BF16, choose_inference_precision

    art = load_artifact(cpu_artifact)
    by_backend = art.manifest["parity"]["results"]["int8"]["by_backend"]
    assert by_backend["openvino"]["inference_precision"] == "f32"
    # the export checks the bf16 form wherever it can run it, and records the verdict either way
    assert (OPENVINO_INT8_BF16 in by_backend) == cpu_info().has_bf16
    gated = by_backend.get(OPENVINO_INT8_BF16, {}).get("passed") is True
    assert choose_inference_precision(art, "int8", "openvino", cpu=ZEN5) == ("bf16" if gated else "f32")
    assert choose_inference_precision(art, "int8", "openvino", cpu=ZEN2) == "f32"
    assert choose_inference_precision(art, "int8", "onnxruntime", cpu=ZEN5) is None
    assert choose_inference_precision(art, "fp32", "openvino", cpu=ZEN5) is None

    # an artifact whose bf16 form passed (or failed) is run accordingly on a BF16 CPU
    copy = tmp_path / "gated"
    shutil.copytree(cpu_artifact, copy)
    m = json.loads((copy / "manifest.json").read_text())
    entry = {"max_abs_delta": 0.0, "max_rel_delta": 0.0, "spearman": 1.0, "top10_agreement": 1.0, "passed": True}
    m["parity"]["results"]["int8"]["by_backend"][OPENVINO_INT8_BF16] = entry
    (copy / "manifest.json").write_text(json.dumps(m))
    assert choose_inference_precision(load_artifact(copy), "int8", "openvino", cpu=ZEN5) == "bf16"
    entry["passed"] = False
    (copy / "manifest.json").write_text(json.dumps(m))
    assert choose_inference_precision(load_artifact(copy), "int8", "openvino", cpu=ZEN5) == "f32"

    loaded = Reranker.from_pretrained(cpu_artifact, precision="int8", backend="openvino")
    expected = "bf16" if cpu_info().has_bf16 and gated else "f32"
    assert loaded.backend.inference_precision == expected
    assert loaded.backend.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == expected
    forced = Reranker.from_pretrained(cpu_artifact, precision="int8", backend="openvino",
                                      backend_options={"inference_precision": "f32"})
    assert forced.backend.inference_precision == "f32"

    # refused cleanly where it cannot run or does not apply
    monkeypatch.setattr(ov_backend, "cpu_info", lambda: ZEN2)
    monkeypatch.setattr(selection_module, "choose_inference_precision",  # create_backend reads it from there
                        lambda *a, **k: choose_inference_precision(*a, cpu=ZEN2))
    assert Reranker.from_pretrained(cpu_artifact, precision="int8", backend="openvino").backend \
        .inference_precision == "f32"
    with pytest.raises(BackendUnavailableError, match="AVX512_BF16 or AMX"):
        Reranker.from_pretrained(cpu_artifact, precision="int8", backend="openvino",
                                 backend_options={"inference_precision": "bf16"})
    with pytest.raises(ValueError, match="applies to int8"):
        Reranker.from_pretrained(cpu_artifact, precision="fp32", backend="openvino",
                                 backend_options={"inference_precision": "bf16"})


def test_auto_precision_skips_precisions_that_failed_the_gate(bf16_artifact, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(bf16_artifact, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["parity"]["results"]["bf16"]["passed"] = False
    m["parity"]["results"]["int8"]["passed"] = False
    (copy / "manifest.json").write_text(json.dumps(m))
    assert choose_precision(load_artifact(copy), "auto", "cpu", cpu=ZEN5, is_installed=lambda b: True) == "fp32"


def test_auto_backend_rule():
    everything = dict(is_installed=lambda b: True)
    assert choose_backend("bf16", "auto", "cpu", cpu=ZEN5, **everything) == "openvino"
    # int8: OpenVINO on VNNI CPUs (Zen 5: 548 vs 358 pairs/s), onnxruntime without VNNI (Zen 3: 91.1 vs 62.4)
    assert choose_backend("int8", "auto", "cpu", cpu=ZEN5, **everything) == "openvino"
    assert choose_backend("int8", "auto", "cpu", cpu=ZEN2, **everything) == "onnxruntime"
    assert choose_backend("int8", "auto", "cpu", cpu=ZEN2, is_installed=lambda b: b == "openvino") == "openvino"
    assert choose_backend("int8", "auto", "cpu", cpu=ZEN5, is_installed=lambda b: b == "onnxruntime") == "onnxruntime"
    assert choose_backend("int8", "openvino", "cpu", cpu=ZEN2, **everything) == "openvino"  # asked for: given
    assert choose_backend("fp32", "auto", "cpu", cpu=ZEN5, **everything) == "onnxruntime"
    assert choose_backend("fp32", "auto", "cpu", cpu=ZEN2, **everything) == "onnxruntime"
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

    precisions = ["fp32", "bf16", "int8"] if HAS_BF16 else ["fp32", "int8"]
    # fp32 at 4,096 and 7,999 tokens is the gate's in distilled_artifact's export; this one is about bf16/int8
    art = export(str(DISTILLED), work / "distilled-cpu", precisions=precisions, long_lengths=FIXTURE_LONG_LENGTHS,
                 log=None)
    pairs = realistic_pairs(10, 30, seed=7)
    groups = [i // 30 for i in range(len(pairs))]
    ref = _scores(art, "fp32", "onnxruntime", pairs)
    if HAS_BF16:  # int8 with bf16 between its matmuls passes the gate on a trained-like model
        assert load_artifact(art).manifest["parity"]["results"]["int8"]["by_backend"]["openvino+bf16"]["passed"]
    int8_f32 = {"inference_precision": "f32"}
    runs = [("int8", "openvino", {}), ("int8", "openvino", int8_f32), ("int8", "onnxruntime", {})]
    for precision, backend, options in [("bf16", "openvino", {})] * HAS_BF16 + runs:
        got = Reranker.from_pretrained(art, precision=precision, backend=backend, max_length=512,
                                       backend_options=options).predict(pairs)
        assert spearman(ref, got) >= 0.995, (precision, backend, options)
        assert top_k_agreement(ref, got, groups) >= 0.95, (precision, backend, options)
