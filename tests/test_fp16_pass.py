"""The fp16 graph: positions, RoPE angles and masks really stay fp32, and every converter version's output loads.

Found on the GPU device (onnxruntime 1.30): the converter there wrote two identically named Casts for
``Concat(freqs, freqs)`` and onnxruntime refused the file; and every converter version sent the tensors
between two kept-fp32 nodes through fp16 (position 2,049 became 2,048).
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from rerankrt.export.passes import fp16


def _fp16_graph(artifact) -> onnx.ModelProto:
    return onnx.load(str(artifact / "model.fp16.onnx"))


def _fp16_casts_upstream(model: onnx.ModelProto, op_types: tuple[str, ...]) -> list[str]:
    """Names of Casts to fp16 anywhere on the way into nodes of ``op_types``."""
    producer = {out: node for node in model.graph.node for out in node.output}
    stack = [name for node in model.graph.node if node.op_type in op_types for name in node.input]
    seen, found = set(), []
    while stack:
        name = stack.pop()
        if name in seen or name not in producer:
            continue
        seen.add(name)
        node = producer[name]
        if node.op_type == "Cast" and helper.get_node_attr_value(node, "to") == TensorProto.FLOAT16:
            found.append(node.name)
        stack.extend(node.input)
    return found


def test_rope_angles_never_pass_through_fp16(tiny_artifact):
    model = _fp16_graph(tiny_artifact)
    assert any(node.op_type == "Cos" for node in model.graph.node)
    assert _fp16_casts_upstream(model, ("Cos", "Sin")) == []


def test_every_node_and_tensor_name_is_unique(tiny_artifact):
    model = _fp16_graph(tiny_artifact)
    names = collections.Counter(node.name for node in model.graph.node)
    outputs = collections.Counter(out for node in model.graph.node for out in node.output)
    assert [name for name, n in names.items() if n > 1] == []
    assert [name for name, n in outputs.items() if n > 1] == []


def _pre_132_converter_output() -> onnx.ModelProto:
    """What onnxruntime 1.30's converter wrote for ``y = Concat(x, x)`` with Concat kept fp32: one Cast per use."""
    cast_back = [helper.make_node("Cast", ["x16"], ["x16_cast_to_fp32"], to=TensorProto.FLOAT,
                                  name="x16_cast_to_fp32_node") for _ in range(2)]
    nodes = [helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16, name="to_fp16"),
             helper.make_node("Concat", ["x16_cast_to_fp32", "x16_cast_to_fp32"], ["y"], axis=0, name="concat"),
             *cast_back]
    graph = helper.make_graph(nodes, "dup", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_identical_casts_older_converters_write_are_merged():
    model = _pre_132_converter_output()
    with pytest.raises(Exception, match="same node name"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert fp16.drop_duplicate_nodes(model) == 1
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([1.0, 2049.0], dtype=np.float32)
    expected = np.concatenate([x, x]).astype(np.float16).astype(np.float32)  # still through fp16: no kept producer
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], expected)


def test_a_round_trip_after_a_kept_fp32_node_is_bypassed():
    model = _pre_132_converter_output()
    fp16.drop_duplicate_nodes(model)
    model.graph.node.insert(0, helper.make_node("Identity", ["x"], ["x_kept"], name="kept"))
    model.graph.node[1].input[0] = "x_kept"  # the Cast to fp16 now reads a kept-fp32 node's output
    assert fp16.drop_fp16_round_trips(model, {"kept"}) == 1
    assert [node.op_type for node in model.graph.node] == ["Identity", "Concat"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([1.0, 2049.0], dtype=np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], np.concatenate([x, x]))  # 2,049 exact
