"""``auto`` precision/backend rules with faked CPUs and installed sets: no OpenVINO, no model files needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from rerankrt.engine.artifact import Artifact
from rerankrt.engine.errors import BackendUnavailableError
from rerankrt.engine.hardware import CpuInfo
from rerankrt.engine.selection import (
    OPENVINO_INT8_BF16,
    choose_backend,
    choose_inference_precision,
    choose_precision,
)

ZEN5 = CpuInfo("Zen 5", frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}), 2)
ZEN3 = CpuInfo("Zen 3", frozenset({"avx2", "fma"}), 2)
EVERYTHING = lambda backend: True  # noqa: E731
ORT_ONLY = lambda backend: backend == "onnxruntime"  # noqa: E731


def _artifact(precisions: dict[str, bool], bf16_between: bool | None = None) -> Artifact:
    """A manifest-only artifact: ``precision → passed its gate``."""
    results = {p: {"passed": ok} for p, ok in precisions.items()}
    if bf16_between is not None:
        results["int8"]["by_backend"] = {OPENVINO_INT8_BF16: {"passed": bf16_between}}
    manifest = {"graphs": {p: {"file": f"model.{p}.onnx"} for p in precisions}, "parity": {"results": results}}
    return Artifact(Path("/nonexistent"), manifest)


@pytest.mark.parametrize(("cpu", "installed", "expected"), [
    (ZEN5, EVERYTHING, "int8"), (ZEN3, EVERYTHING, "int8"), (ZEN5, ORT_ONLY, "int8"), (ZEN3, ORT_ONLY, "int8")])
def test_int8_leads_wherever_it_passed(cpu, installed, expected):
    art = _artifact({"fp32": True, "bf16": True, "int8": True})
    assert choose_precision(art, "auto", "cpu", cpu=cpu, is_installed=installed) == expected


def test_without_int8_bf16_needs_the_cpu_and_openvino():
    art = _artifact({"fp32": True, "bf16": True, "int8": False})
    assert choose_precision(art, "auto", "cpu", cpu=ZEN5, is_installed=EVERYTHING) == "bf16"
    assert choose_precision(art, "auto", "cpu", cpu=ZEN3, is_installed=EVERYTHING) == "fp32"
    assert choose_precision(art, "auto", "cpu", cpu=ZEN5, is_installed=ORT_ONLY) == "fp32"
    # an int8 that failed on this machine is excluded by the caller
    art = _artifact({"fp32": True, "int8": True})
    assert choose_precision(art, "auto", "cpu", cpu=ZEN3, exclude=("int8",)) == "fp32"


def test_gpu_prefers_fp16_and_explicit_requests_are_checked():
    art = _artifact({"fp32": True, "fp16": True, "int8": True})
    assert choose_precision(art, "auto", "cuda:0") == "fp16"
    with pytest.raises(BackendUnavailableError, match="no 'bf16' graph"):
        choose_precision(art, "bf16", "cpu")


def test_backend_rule_and_its_refusals():
    assert choose_backend("int8", "auto", "cpu", is_installed=EVERYTHING, cpu=ZEN5) == "openvino"
    assert choose_backend("int8", "auto", "cpu", is_installed=EVERYTHING, cpu=ZEN3) == "onnxruntime"
    assert choose_backend("int8", "auto", "cpu", is_installed=ORT_ONLY, cpu=ZEN5) == "onnxruntime"
    assert choose_backend("fp32", "auto", "cpu", is_installed=EVERYTHING) == "onnxruntime"
    assert choose_backend("fp16", "auto", "cuda", is_installed=EVERYTHING) == "onnxruntime"
    with pytest.raises(BackendUnavailableError, match="openvino"):
        choose_backend("bf16", "auto", "cpu", is_installed=ORT_ONLY)
    with pytest.raises(BackendUnavailableError, match="not installed"):
        choose_backend("int8", "openvino", "cpu", is_installed=ORT_ONLY)


@pytest.mark.parametrize(("cpu", "gated", "expected"), [
    (ZEN5, True, "bf16"), (ZEN5, False, "f32"), (ZEN5, None, "f32"), (ZEN3, True, "f32")])
def test_openvino_int8_runs_bf16_between_its_matmuls_only_where_gated_and_supported(cpu, gated, expected):
    art = _artifact({"fp32": True, "int8": True}, bf16_between=gated)
    assert choose_inference_precision(art, "int8", "openvino", cpu=cpu) == expected
    assert choose_inference_precision(art, "int8", "onnxruntime", cpu=cpu) is None
    assert choose_inference_precision(art, "fp32", "openvino", cpu=cpu) is None
