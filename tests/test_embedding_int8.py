"""The int8 token-embedding pass: exact rewrite semantics, the artifacts that use it, and when it stands aside."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rerankrt.engine.artifact import load_artifact
from rerankrt.export.passes.embedding_int8 import (
    find_embedding_table,
    quantize_embedding_table,
    quantize_rows,
)


def _embedding_graph(table: np.ndarray, tied: bool = False) -> onnx.ModelProto:
    """input_ids → Gather(table) → LayerNorm-free output; ``tied`` also reads the table in a MatMul."""
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["embedded"], "embed", axis=0)]
    outputs = [helper.make_tensor_value_info("embedded", TensorProto.FLOAT, ["batch", "seq", None])]
    if tied:
        nodes.append(helper.make_node("MatMul", ["embedded", "table_t"], ["logits"], "lm_head"))
        nodes.insert(0, helper.make_node("Transpose", ["table"], ["table_t"], "tie"))
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", None]))
    graph = helper.make_graph(nodes, "embedding", [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                                                   ["batch", "seq"])],
                              outputs, [numpy_helper.from_array(table, "table")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["embedded"], {"input_ids": ids})[0]


def test_rows_round_trip_within_half_a_step_of_their_own_scale():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(300, 16)).astype(np.float32) * rng.uniform(0.01, 5, size=(300, 1)).astype(np.float32)
    table[7] = 0.0  # an all-zero row (e.g. [PAD]) must survive without a zero scale
    quantized, scale = quantize_rows(table)
    assert quantized.dtype == np.int8 and scale.shape == (300, 1) and np.all(scale > 0)
    error = np.abs(quantized.astype(np.float32) * scale - table)
    assert np.all(error <= scale / 2 + 1e-7)
    assert np.all(quantized[7] == 0)


def test_rewritten_graph_gathers_the_dequantized_rows():
    rng = np.random.default_rng(1)
    table = rng.normal(scale=0.5, size=(1000, 32)).astype(np.float32)
    model = _embedding_graph(table)
    ids = rng.integers(0, 1000, size=(3, 17), dtype=np.int64)
    before = _run(model, ids)
    np.testing.assert_array_equal(before, table[ids])

    report = quantize_embedding_table(model)
    onnx.checker.check_model(model)
    kinds = {init.name: init.data_type for init in model.graph.initializer}
    assert TensorProto.FLOAT not in [kinds[n] for n in kinds if n.endswith(".int8")]
    assert "table" not in kinds, "the fp32 table must be gone, or nothing is saved"
    assert report["embedding_bytes"]["after"] < report["embedding_bytes"]["before"] / 3.5

    quantized, scale = quantize_rows(table)
    after = _run(model, ids)
    np.testing.assert_allclose(after, (quantized.astype(np.float32) * scale)[ids], rtol=0, atol=1e-6)
    assert np.abs(after - before).max() <= report["embedding_max_abs_error"] + 1e-7


def test_rewritten_graph_runs_the_same_in_openvino(tmp_path):
    ov = pytest.importorskip("openvino")
    rng = np.random.default_rng(2)
    model = _embedding_graph(rng.normal(size=(500, 24)).astype(np.float32))
    quantize_embedding_table(model)
    ids = rng.integers(0, 500, size=(2, 9), dtype=np.int64)
    onnx.save_model(model, str(tmp_path / "embedding.onnx"))
    compiled = ov.Core().compile_model(str(tmp_path / "embedding.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled({"input_ids": ids})["embedded"], _run(model, ids), rtol=0, atol=1e-6)


def test_a_tied_table_is_left_fp32_with_the_reason():
    model = _embedding_graph(np.ones((50, 8), np.float32), tied=True)
    assert find_embedding_table(model)[0] is None
    report = quantize_embedding_table(model)
    assert report["embedding"].startswith("fp32") and "tie" in report["embedding"]
    assert {init.name for init in model.graph.initializer} == {"table"}


def test_int8_artifacts_store_the_embedding_int8(ettin17m_artifact):
    artifact = load_artifact(ettin17m_artifact)
    info = artifact.manifest["graphs"]["int8"]
    assert info["embedding"].startswith("int8")
    model = onnx.load(str(ettin17m_artifact / info["file"]), load_external_data=False)
    types = {init.name: init.data_type for init in model.graph.initializer}
    assert types["embeddings.tok_embeddings.weight.int8"] == TensorProto.INT8
    assert "embeddings.tok_embeddings.weight" not in types
    # the 17m table is 50,368 × 256: 51.6 MB fp32, 12.9 MB int8
    fp32_bytes = (ettin17m_artifact / artifact.manifest["graphs"]["fp32"]["file"]).stat().st_size
    assert (ettin17m_artifact / info["file"]).stat().st_size < 0.4 * fp32_bytes
