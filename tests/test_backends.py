"""Backend selection and hardware detection (CPU now; GPU providers chosen when present)."""

from __future__ import annotations

import pytest

from rerankrt.engine import BackendUnavailableError
from rerankrt.engine.backends import Backend, available_backends, backend_class
from rerankrt.engine.backends import ort as ort_backend
from rerankrt.engine.hardware import cpu_info, parse_cpuinfo

ZEN5 = "processor\t: 0\nmodel name\t: AMD EPYC 9R45\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni avx512_bf16\n"
ZEN2 = "processor\t: 0\nmodel name\t: AMD EPYC 7R32\nflags\t\t: fpu sse avx2 fma\n"


def test_parse_cpuinfo_reads_model_and_features():
    model, flags = parse_cpuinfo(ZEN5)
    assert model == "AMD EPYC 9R45" and {"avx512_vnni", "avx512_bf16", "avx2"} <= flags
    from rerankrt.engine.hardware import CpuInfo

    new, old = CpuInfo(model, flags, 2), CpuInfo(*parse_cpuinfo(ZEN2), 2)
    assert new.has_vnni and new.has_bf16 and new.has_avx512
    assert not (old.has_vnni or old.has_bf16 or old.has_avx512)
    assert "avx512_bf16" in new.summary()["features"]
    assert cpu_info().logical_cores >= 1


def test_cpu_is_the_default_provider():
    assert ort_backend.choose_providers(None, "cpu") == ["CPUExecutionProvider"]


def test_cuda_prefers_tensorrt_then_cuda_then_cpu(monkeypatch):
    monkeypatch.setattr(ort_backend.ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert ort_backend.choose_providers(None, "cuda:0") == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cuda_without_a_gpu_build_is_refused_clearly(monkeypatch):
    monkeypatch.setattr(ort_backend.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match="rerankrt\\[gpu\\]"):
        ort_backend.choose_providers(None, "cuda:0")
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        ort_backend.choose_providers(["CUDAExecutionProvider"], "cpu")


def test_backend_registry(tiny_artifact):
    assert "onnxruntime" in available_backends()
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        backend_class("nope")
    backend = backend_class("onnxruntime")(tiny_artifact / "model.fp32.onnx", precision="fp32", threads=1)
    assert isinstance(backend, Backend) and backend.device == "cpu"
