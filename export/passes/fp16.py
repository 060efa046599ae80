"""fp16 pass: weights and matmuls in fp16 for GPU execution providers; positions stay fp32.

Why a pass over onnxruntime's ``float16`` converter instead of a second builder: the converter
is maintained with ORT's kernels in mind (it keeps I/O types and inserts the casts). We only
tell it which nodes must stay fp32: the position / RoPE-angle / mask sub-graph the builder
tagged (fp16 cannot represent positions beyond 2,048 exactly), plus ops listed below.

Three things the converter does not do for us, found on the GPU device (onnxruntime 1.30):

* It treats every kept-fp32 node as an island: each output is cast to fp16 and cast back to fp32
  before the next kept node. Positions, RoPE angles and masks therefore went through fp16
  between two fp32 nodes (2,049 became 2,048). :func:`drop_fp16_round_trips` wires the fp32
  tensor straight through, so the tagged sub-graph really stays fp32.
* Before 1.32 it adds one identically named Cast per *use* (``Concat(freqs, freqs)`` got two nodes
  called ``freqs_cast_to_fp32_node`` writing one tensor), which onnxruntime refuses to load.
  :func:`drop_duplicate_nodes` keeps one of each.
* It infers types by serializing the whole model, which fails past protobuf's 2 GB (the 1b's fp32
  graph is 4.1 GB). :func:`typed_model` infers them from the file instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnx import TensorProto
from onnx.external_data_helper import load_external_data_for_model

from .base import Graph, PassContext

FP32_OPS = ["Range", "Cos", "Sin"]
METHOD = "onnxruntime.transformers.float16 (positions, RoPE angles and masks kept fp32)"


def tagged_fp32_nodes(model: onnx.ModelProto) -> list[str]:
    for prop in model.metadata_props:
        if prop.key == "rerankrt.fp32_nodes":
            return [n for n in prop.value.split(",") if n]
    return []


def typed_model(graph: Graph) -> onnx.ModelProto:
    """The graph with every intermediate tensor's type recorded (the converter decides by them).

    A file is typed by ``infer_shapes_path``, which never serializes the weights, and its external
    data is loaded afterwards from the graph's own folder.
    """
    if isinstance(graph, onnx.ModelProto):
        return onnx.shape_inference.infer_shapes(graph)
    path = Path(graph)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".typed-") as tmp:
        typed_path = Path(tmp) / path.name
        onnx.shape_inference.infer_shapes_path(str(path), str(typed_path))
        model = onnx.load(str(typed_path), load_external_data=False)
    load_external_data_for_model(model, str(path.parent))
    return model


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((attr.i for attr in node.attribute if attr.name == "to"), None)


def drop_fp16_round_trips(model: onnx.ModelProto, fp32_producers: set[str]) -> int:
    """Bypass ``Cast(fp16) -> Cast(fp32)`` pairs the converter put on an fp32 tensor; returns how many.

    Only a Cast to fp16 whose input comes from a node kept fp32 (``fp32_producers``) qualifies: that
    input is a float32 tensor, so handing it to the fp32 consumers directly changes no type.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    to_fp16 = {node.output[0]: node.input[0] for node in graph.node
               if _cast_to(node) == TensorProto.FLOAT16 and node.input[0] in producer
               and producer[node.input[0]].name in fp32_producers}
    bypass = {node.output[0]: to_fp16[node.input[0]] for node in graph.node
              if _cast_to(node) == TensorProto.FLOAT and node.input[0] in to_fp16}
    if not bypass:
        return 0
    kept = [node for node in graph.node
            if not (_cast_to(node) == TensorProto.FLOAT and node.output[0] in bypass)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in bypass:
                node.input[i] = bypass[name]
    used = {name for node in kept for name in node.input} | {out.name for out in graph.output}
    kept = [node for node in kept if not (_cast_to(node) == TensorProto.FLOAT16 and node.output[0] in to_fp16
                                          and node.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(kept)
    live = {out for node in kept for out in node.output}
    infos = [info for info in graph.value_info if info.name in live]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return len(bypass)


def drop_duplicate_nodes(model: onnx.ModelProto) -> int:
    """Keep one of each set of identical nodes (same op, inputs, outputs and attributes); name the rest apart."""
    seen: set[bytes] = set()
    names: set[str] = set()
    kept: list[onnx.NodeProto] = []
    for node in model.graph.node:
        key = node.SerializeToString(deterministic=True)
        if key in seen:
            continue
        seen.add(key)
        if node.name in names:
            node.name = f"{node.name}_{len(kept)}"
        names.add(node.name)
        kept.append(node)
    dropped = len(model.graph.node) - len(kept)
    if dropped:
        del model.graph.node[:]
        model.graph.node.extend(kept)
    infos, info_names = [], set()
    for info in model.graph.value_info:
        if info.name not in info_names:
            info_names.add(info.name)
            infos.append(info)
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos)
    return dropped


def convert_to_fp16(graph: Graph) -> tuple[onnx.ModelProto, dict]:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = typed_model(graph)
    tagged = tagged_fp32_nodes(model)
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True,
                                         op_block_list=FP32_OPS, node_block_list=tagged)
    duplicates = drop_duplicate_nodes(converted)
    fp32_producers = set(tagged) | {node.name for node in converted.graph.node if node.op_type in FP32_OPS}
    round_trips = drop_fp16_round_trips(converted, fp32_producers)
    return converted, {"fp32_nodes": len(tagged), "fp16_round_trips_removed": round_trips,
                       "duplicate_nodes_removed": duplicates}


def apply(graph: Graph, out_path: Path, context: PassContext) -> tuple[onnx.ModelProto, dict]:
    model, report = convert_to_fp16(graph)
    return model, {"method": METHOD, **report, "fp32_ops": list(FP32_OPS)}
