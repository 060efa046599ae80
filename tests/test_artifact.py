"""Broken artifacts fail with specific errors that name the file."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from rerankrt.engine import ArtifactError, BackendUnavailableError, ModelDownloadError, Reranker
from rerankrt.engine.artifact import SCHEMA_VERSION, load_artifact
from rerankrt.engine.backends import onnxruntime_reads_attention_op

from conftest import requires_attention_op


@pytest.fixture()
def copy(tiny_artifact, tmp_path):
    target = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, target)
    return target


def _edit_manifest(path, **changes):
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))
    return m


def test_valid_artifact_lists_its_precisions(tiny_artifact):
    art = load_artifact(tiny_artifact)
    assert art.precisions == ["fp32", "fp16", "int8"]
    assert art.manifest["schema_version"] == SCHEMA_VERSION
    for precision in art.precisions:
        assert art.manifest["parity"]["results"][precision]["passed"]
        assert art.graph(precision).path.is_file()


def test_missing_directory_and_manifest(tmp_path, tiny_model):
    with pytest.raises(ModelDownloadError, match="no such directory"):
        Reranker.from_pretrained(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="export it"):
        Reranker.from_pretrained(tiny_model)  # a source model, not an artifact


def test_corrupted_manifest(copy):
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(copy)


def test_manifest_from_a_newer_schema(copy):
    _edit_manifest(copy, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(ArtifactError, match="upgrade rerankrt"):
        load_artifact(copy)


def test_manifest_missing_a_field(copy):
    m = json.loads((copy / "manifest.json").read_text())
    del m["tokenizer"]["pad_id"]
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="pad_id"):
        load_artifact(copy)


# (file, backend that reads it): onnxruntime on a CPU loads a precision's attention-op form, OpenVINO the main graph
READERS = [("model.{p}.attention-op.onnx", "onnxruntime"), ("model.{p}.onnx", "openvino")]


def _backend_or_skip(name: str) -> str:
    if name == "openvino":
        pytest.importorskip("openvino")
    elif not onnxruntime_reads_attention_op():
        pytest.skip("this onnxruntime predates the attention-op form")
    return name


@pytest.mark.parametrize(("file", "backend"), READERS)
def test_missing_graph_file(copy, file, backend):
    backend = _backend_or_skip(backend)
    (copy / file.format(p="int8")).unlink()
    with pytest.raises(ArtifactError, match="graph file missing"):
        Reranker.from_pretrained(copy, precision="int8", backend=_backend_or_skip(backend))
    Reranker.from_pretrained(copy, precision="fp32", backend=backend)  # the others still load


@pytest.mark.parametrize(("file", "backend"), READERS)
def test_corrupted_graph_file(copy, file, backend):
    backend = _backend_or_skip(backend)
    path = copy / file.format(p="fp32")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte inside the weights
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        Reranker.from_pretrained(copy, precision="fp32", backend=_backend_or_skip(backend))
    path.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(ArtifactError, match="truncated"):
        Reranker.from_pretrained(copy, precision="fp32", backend=backend)


@requires_attention_op
def test_each_runtime_loads_the_form_it_runs_fastest(tiny_artifact, monkeypatch):
    """onnxruntime on a CPU: the attention-op form where the precision has one (fp32, int8), else the main graph
    (fp16), or where this onnxruntime cannot run opset 23; OpenVINO: the main graph. Both forms score alike."""
    import numpy as np

    from rerankrt.engine import backends

    def loaded(precision: str, backend: str) -> Reranker:
        return Reranker.from_pretrained(tiny_artifact, precision=precision, backend=backend)

    pairs = [("river bridge", "The bridge crosses the river."), ("river bridge", "A cat sleeps."), ("q", "")]
    form = {p: loaded(p, "onnxruntime") for p in ("fp32", "int8")}
    assert {p: r.backend.describe()["file"] for p, r in form.items()} == \
        {"fp32": "model.fp32.attention-op.onnx", "int8": "model.int8.attention-op.onnx"}
    assert loaded("fp16", "onnxruntime").backend.describe()["file"] == "model.fp16.onnx"
    monkeypatch.setattr(backends, "onnxruntime_reads_attention_op", lambda: False)  # an onnxruntime before 1.24
    main = loaded("fp32", "onnxruntime")
    assert main.backend.describe()["file"] == "model.fp32.onnx"
    np.testing.assert_allclose(form["fp32"].predict(pairs), main.predict(pairs), rtol=0, atol=1e-5)
    if importlib.util.find_spec("openvino"):
        monkeypatch.undo()
        assert loaded("int8", "openvino").backend.describe()["file"] == "model.int8.onnx"
    # explicit execution providers other than onnxruntime's own CPU one get the main graph every runtime reads
    assert backends.graph_form_for("onnxruntime", "cpu", ["CPUExecutionProvider"]) == "attention-op"
    assert backends.graph_form_for("onnxruntime", "cpu", ["OpenVINOExecutionProvider", "CPUExecutionProvider"]) is None
    assert backends.graph_form_for("onnxruntime", "cuda") is None and backends.graph_form_for("openvino", "cpu") is None


@pytest.mark.parametrize("entry", [
    {"file": "../elsewhere.onnx", "sha256": "0" * 64, "size_bytes": 1},  # outside the artifact
    {"file": "model.int8.attention-op.onnx"},  # no size and hash: it would be checked against the main graph's
    {"file": "model.int8.attention-op.onnx", "sha256": "0" * 64, "size_bytes": 1,
     "data_files": [{"file": "../outside.bin"}]},  # forms carry no external data
    "model.int8.attention-op.onnx"])
def test_malformed_forms_in_the_manifest_are_refused(copy, entry):
    graphs = json.loads((copy / "manifest.json").read_text())["graphs"]
    graphs["int8"]["forms"] = {"attention-op": entry}
    _edit_manifest(copy, graphs=graphs)
    with pytest.raises(ArtifactError, match="malformed forms"):
        load_artifact(copy)


def test_garbage_graph_is_refused_by_onnxruntime(copy):
    path = copy / "model.fp32.onnx"
    path.write_bytes(b"\x00garbage" * 100)
    _edit_manifest(copy, graphs={**json.loads((copy / "manifest.json").read_text())["graphs"],
                                 "fp32": {"file": "model.fp32.onnx"}})
    with pytest.raises(ArtifactError, match="onnxruntime cannot load"):
        Reranker.from_pretrained(copy, precision="fp32")


def test_missing_or_corrupted_tokenizer(copy):
    tok = copy / "tokenizer.json"
    tok.write_text("{}")
    with pytest.raises(ArtifactError, match="tokenizer"):
        Reranker.from_pretrained(copy)
    tok.unlink()
    with pytest.raises(ArtifactError, match="tokenizer file missing"):
        Reranker.from_pretrained(copy)


def test_tokenizer_that_does_not_fit_the_graph(copy):
    m = json.loads((copy / "manifest.json").read_text())
    m["architecture"]["vocab_size"] = 1000
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="do not belong together"):
        Reranker.from_pretrained(copy)
    m["architecture"]["vocab_size"] = 50368
    m["tokenizer"]["cls_id"] = 7
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"maps \[CLS\] to 50281"):
        Reranker.from_pretrained(copy)


def test_unknown_precision_request(tiny_artifact):
    with pytest.raises(BackendUnavailableError, match="no 'bf16' graph"):
        Reranker.from_pretrained(tiny_artifact, precision="bf16")
