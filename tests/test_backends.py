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


@pytest.mark.parametrize("name", available_backends())
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_every_backend_honours_the_contract(tiny_artifact, name, precision):
    """One conformance test all backends pass (backends/base.py): what the scoring core relies on."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from rerankrt.engine.backends import create_backend

    created = create_backend(tiny_artifact / f"model.{precision}.onnx", precision=precision, backend=name, threads=1)
    backend = created.backend
    assert isinstance(backend, Backend) and backend.name == name and backend.precision == precision
    assert isinstance(backend.pad_multiple, int) and backend.pad_multiple >= 1
    assert created.policy.pad_to_multiple_of == backend.pad_multiple
    assert isinstance(backend.overlaps_batches, bool)
    assert backend.inference_precision is None or isinstance(backend.inference_precision, str)
    info = backend.describe()
    assert {"backend", "device", "precision", "inference_precision", "pad_multiple", "overlaps_batches"} <= set(info)
    rng = np.random.default_rng(0)
    batches = []
    for rows, width in ((1, 5), (3, 17), (2, 64)):
        ids = rng.integers(5, 1000, size=(rows, width)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[-1, width // 2:] = 0  # a padded row
        ids[mask == 0] = 0
        batches.append((ids, mask))
    singles = [backend.run(i, m) for i, m in batches]
    for (ids, _), out in zip(batches, singles):
        assert out.dtype == np.float32 and out.shape == (len(ids), 1) and np.isfinite(out).all()
    for one, many in zip(singles, backend.run_many(batches)):
        np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-5)
    with ThreadPoolExecutor(4) as pool:  # thread-safe: concurrent callers get the same answers
        again = list(pool.map(lambda b: backend.run(*b), batches * 3))
    for k, out in enumerate(again):
        np.testing.assert_allclose(out, singles[k % 3], rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError):
        create_backend(tiny_artifact / f"model.{precision}.onnx", precision=precision, backend=name,
                       options={"no_such_option": 1})


@pytest.mark.parametrize(("opset", "hinted"), [(17, False), (23, True)])
def test_a_graph_a_runtime_cannot_read_gets_the_fix_named(tmp_path, opset, hinted):
    """When a load fails, an opset-23 graph (the attention-op form) is named as the likely cause, with the
    runtime versions that read it and the re-export that avoids it; an opset-17 graph gets no such hint."""
    import onnx
    from onnx import TensorProto, helper

    from rerankrt.engine.backends.base import load_failure_hint

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    hint = load_failure_hint(path, "openvino", "2026.2.1")
    if hinted:
        assert "openvino >= 2026.3" in hint and "2026.2.1" in hint and "--attention matmul" in hint
    else:
        assert hint == ""
    assert load_failure_hint(tmp_path / "missing.onnx", "onnxruntime", "1.23.2") == ""  # best effort, never raises
