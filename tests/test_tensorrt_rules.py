"""TensorRT's ONNX rules, checked statically at export (``export/tensorrt_rules.py``): hand-built graphs
that break one rule each, the CPU int8 form (which breaks them), and the symmetric form TensorRT reads —
conformant, and as faithful to the fp32 graph as the gate asks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rerankrt.export.tensorrt_rules import check_graph, summarize


def _model(nodes, inits, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _float(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _qdq_matmul(zero_dtype, zero_value: int) -> onnx.ModelProto:
    """x → Q → DQ → MatMul(W as int8 → DQ): the pattern onnxruntime's quantizer writes."""
    np_dtype = np.uint8 if zero_dtype == TensorProto.UINT8 else np.int8
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(zero_value, np_dtype), "x_zero"),
             numpy_helper.from_array(np.ones((4, 3), np.int8), "w_q"),
             numpy_helper.from_array(np.full(3, 0.1, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(3, np.int8), "w_zero")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], "q"),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"], "dq"),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], "dq_w", axis=1),
             helper.make_node("MatMul", ["xd", "w"], ["y"], "matmul")]
    return _model(nodes, inits, [_float("x", [2, 4])], [_float("y", [2, 3])])


def test_symmetric_int8_qdq_is_conformant():
    result = check_graph(_qdq_matmul(TensorProto.INT8, 0))
    assert result.ok, result.violations
    assert result.qdq_pairs == 2


def test_uint8_activations_with_a_zero_point_break_two_rules():
    result = check_graph(_qdq_matmul(TensorProto.UINT8, 128))
    rules = {v["rule"] for v in result.violations}
    assert rules == {"uint8_quantization", "nonzero_zero_point"}
    assert {v["node"] for v in result.violations} == {"q", "dq"}
    assert "not TensorRT-conformant" in summarize(result.report())


def test_an_int8_table_read_by_gather_is_int8_outside_qdq():
    """The CPU form's embedding: Gather(int8 table) → Cast → Mul — refused; DequantizeLinear → Gather passes."""
    table = numpy_helper.from_array(np.ones((10, 4), np.int8), "table_q")
    scale = numpy_helper.from_array(np.full((10, 1), 0.1, np.float32), "row_scale")
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [2])
    gather_form = _model(
        [helper.make_node("Gather", ["table_q", "ids"], ["rows"], "gather_int8", axis=0),
         helper.make_node("Cast", ["rows"], ["rows_f"], "cast", to=TensorProto.FLOAT),
         helper.make_node("Gather", ["row_scale", "ids"], ["s"], "gather_scale", axis=0),
         helper.make_node("Mul", ["rows_f", "s"], ["emb"], "mul")],
        [table, scale], [ids], [_float("emb", [2, 4])])
    result = check_graph(gather_form)
    assert [(v["rule"], v["node"]) for v in result.violations] == [("int8_outside_qdq", "gather_int8")]

    flat = numpy_helper.from_array(np.full(10, 0.1, np.float32), "row_scale")
    zero = numpy_helper.from_array(np.zeros(10, np.int8), "zero")
    dq_form = _model(
        [helper.make_node("DequantizeLinear", ["table_q", "row_scale", "zero"], ["table"], "dq", axis=0),
         helper.make_node("Gather", ["table", "ids"], ["emb"], "gather", axis=0)],
        [table, flat, zero], [ids], [_float("emb", [2, 4])])
    assert check_graph(dq_form).ok


def test_unsupported_and_custom_ops_are_named():
    nodes = [helper.make_node("Einsum", ["x", "x"], ["y"], "einsum", equation="ij,ij->ij"),
             helper.make_node("Gelu", ["y"], ["z"], "fused_gelu", domain="com.microsoft")]
    model = _model(nodes, [], [_float("x", [2, 2])], [_float("z", [2, 2])])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    result = check_graph(model)
    assert {(v["rule"], v["node"]) for v in result.violations} == {("unsupported_op", "einsum"),
                                                                     ("custom_domain", "fused_gelu")}


def test_the_cpu_int8_form_fails_and_the_symmetric_form_passes_faithfully(distilled_artifact, tmp_path):
    """On the distilled 17m: the artifact's int8 graph (uint8 activations, Gather→Cast embedding) breaks
    the rules and its manifest says so; the symmetric recipe's graph, written from the same fp32 graph,
    is conformant and ranks like the fp32 graph (the gate's bar: Spearman ≥ 0.995, top-10 ≥ 0.95)."""
    import onnxruntime as ort
    from scipy.stats import spearmanr

    from rerankrt.engine.artifact import load_artifact
    from rerankrt.engine.scoring import padded_batches
    from rerankrt.engine.tokenize import PairTokenizer
    from rerankrt.export import calibration
    from rerankrt.export.passes import PassContext, write_precision

    from conftest import realistic_pairs

    manifest = json.loads((distilled_artifact / "manifest.json").read_text())
    cpu_form = manifest["graphs"]["int8"]["tensorrt"]
    assert not cpu_form["tensorrt_conformant"]
    assert {"uint8_quantization", "nonzero_zero_point", "int8_outside_qdq"} <= set(cpu_form["violations_by_rule"])
    assert manifest["graphs"]["fp32"]["tensorrt"]["tensorrt_conformant"]

    artifact = load_artifact(distilled_artifact)
    fp32 = artifact.graph("fp32").path
    shutil.copy(fp32, tmp_path / fp32.name)
    tokenizer = PairTokenizer.for_artifact(artifact, 512)
    layers = int(manifest["architecture"]["num_hidden_layers"])
    entry = write_precision("int8", tmp_path / fp32.name,
                            PassContext(layers, calibration.quantization_batches(tokenizer)), "symmetric")
    assert entry["tensorrt"]["tensorrt_conformant"], summarize(entry["tensorrt"])
    assert entry["activation_type"].startswith("int8") and entry["weight_bits"] == 8
    symmetric = tmp_path / entry["file"]
    assert check_graph(symmetric).ok

    pairs = realistic_pairs(4, 30)
    ids = tokenizer.encode(pairs)

    def scores(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = np.empty(len(ids), np.float32)
        for batch in padded_batches(ids, artifact_policy(), tokenizer.pad_id):
            out[batch.indices] = session.run(None, {"input_ids": batch.input_ids,
                                                    "attention_mask": batch.attention_mask})[0][:, 0]
        return out

    reference, candidate = scores(fp32), scores(symmetric)
    assert spearmanr(reference, candidate).correlation >= 0.995
    overlap = [len(set(np.argsort(-reference[30 * q:30 * (q + 1)])[:10])
                   & set(np.argsort(-candidate[30 * q:30 * (q + 1)])[:10])) / 10 for q in range(4)]
    assert np.mean(overlap) >= 0.95, overlap  # the gate's top-10 bar


def artifact_policy():
    from rerankrt.engine.batching import BatchPolicy

    return BatchPolicy(token_budget=4096, max_batch_size=64)
