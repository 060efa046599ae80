"""A tiny helper for writing ONNX graphs by hand with readable code.

Why hand-written graphs at all: the exporter emits the exact graph we want for ModernBERT
(separate Q/K/V and GeGLU matmuls, the last layer computed for the CLS row only, masks built once
and shared), instead of whatever a tracer happens to produce. This helper only removes the
naming and bookkeeping noise of ``onnx.helper``; it knows nothing about transformers.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .external_data import MIN_EXTERNAL_TENSOR_BYTES, ExternalDataWriter

OPSET = 17  # LayerNormalization is in the default domain from 17; widely read by ORT, OpenVINO, TensorRT.
# The IR version each default-domain opset needs (onnx's table): 17 → 8, 23 (Attention, RotaryEmbedding) → 11.
# Written explicitly: ``helper.make_model`` writes the newest the installed onnx knows, which older runtimes refuse.
IR_VERSION = {17: 8, 23: 11}
MS_DOMAIN = "com.microsoft"


class GraphBuilder:
    """Accumulates nodes and initializers; ``op`` returns the output name so calls compose."""

    def __init__(self, name: str, external: ExternalDataWriter | None = None, opset: int = OPSET) -> None:
        if opset not in IR_VERSION:
            raise ValueError(f"opset must be one of {sorted(IR_VERSION)}, got {opset}")
        self.name = name
        self.opset = opset
        self.external = external  # big weights go straight to this data file (graphs past 2 GB)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._counter = itertools.count()
        self._constants: dict[tuple, str] = {}
        self.uses_ms_domain = False
        # Nodes that must stay fp32 in reduced-precision graphs (positions, RoPE angles, masks):
        # fp16 cannot represent positions past 2048 exactly.
        self.fp32_nodes: set[str] = set()
        self._fp32_scope = False

    @contextlib.contextmanager
    def keep_fp32(self):
        """Nodes created inside this block are listed in the ``fp32_nodes`` metadata."""
        self._fp32_scope = True
        try:
            yield
        finally:
            self._fp32_scope = False

    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._counter)}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, n_out: int = 1,
           domain: str = "", **attrs) -> str | list[str]:
        outs = [self.fresh(hint or op_type.lower()) for _ in range(n_out)]
        node_name = self.fresh(f"n_{hint or op_type}")
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=node_name, domain=domain or None, **attrs))
        if self._fp32_scope:
            self.fp32_nodes.add(node_name)
        if domain == MS_DOMAIN:
            self.uses_ms_domain = True
        return outs[0] if n_out == 1 else outs

    def if_else(self, cond: str, then_branch: Callable[[], str], else_branch: Callable[[], str], hint: str,
                elem_type: int = TensorProto.FLOAT) -> str:
        """An ``If`` on ``cond`` (one bool): each branch's nodes are what its function emits, as a subgraph.

        Why: a graph decided "with arithmetic on shapes only" runs the general path's copies (Pad, Gather,
        Split, Concat, Slice) even when they do nothing; an ``If`` runs only the branch the batch needs.
        Branch bodies read outer values (and constants, which stay initializers of the main graph) freely.
        """
        branches = []
        for label, body in (("then", then_branch), ("else", else_branch)):
            outer, self.nodes = self.nodes, []
            try:
                result = body()
                if not any(result in node.output for node in self.nodes):  # an outer value: subgraphs must produce
                    result = self.op("Identity", [result], f"{hint}_{label}")
                output = helper.make_tensor_value_info(result, elem_type, None)
                branches.append(helper.make_graph(self.nodes, self.fresh(f"{hint}_{label}"), [], [output]))
            finally:
                self.nodes = outer
        return self.op("If", [cond], hint, then_branch=branches[0], else_branch=branches[1])

    def weight(self, name: str, array: np.ndarray) -> str:
        """Register a named initializer (weights keep recognisable names for quantization exclusions)."""
        array = np.ascontiguousarray(array)
        if self.external is not None and array.nbytes >= MIN_EXTERNAL_TENSOR_BYTES:
            self.initializers.append(self.external.tensor(name, array))
        else:
            self.initializers.append(numpy_helper.from_array(array, name=name))
        return name

    def const(self, value, dtype=np.int64) -> str:
        """A small shared constant (shape vectors, axes, scalars), deduplicated by value."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes(), self._fp32_scope)  # fp32-scope constants are never shared
        if key not in self._constants:
            self._constants[key] = self.weight(self.fresh("const"), arr)
        return self._constants[key]

    def add_input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def add_output(self, source: str, name: str, elem_type: int, shape: list) -> None:
        self.nodes.append(helper.make_node("Identity", [source], [name], name=self.fresh("n_output")))
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def build(self, producer: str = "rerankrt") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", self.opset)]
        if self.uses_ms_domain:
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name=producer)
        model.ir_version = IR_VERSION[self.opset]
        if self.fp32_nodes:
            helper.set_model_props(model, {"rerankrt.fp32_nodes": ",".join(sorted(self.fp32_nodes))})
        return model


def all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes of ``graph`` and, recursively, of its subgraphs (the branches :meth:`GraphBuilder.if_else` writes)."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            if attribute.g.node:
                nodes += all_nodes(attribute.g)
    return nodes


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
