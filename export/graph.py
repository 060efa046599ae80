"""Build the scoring graph: ModernBERT backbone + pooling + head as one ONNX model.

Inputs ``input_ids`` and ``attention_mask`` (int64, dynamic batch and sequence), output
``logits`` (float32, ``[batch, num_labels]``): the raw score before the CrossEncoder's activation.

Why a hand-built graph for ModernBERT (see ``build_modernbert_graph``): a traced export carries
the tracer's shape bookkeeping, one fused QKV matmul followed by splits, and computes the last
layer for every token although only the CLS row is read. Here:

* Q, K, V and the two GeGLU halves are separate MatMuls (no Split copies);
* the attention scale is folded into the Q weights and RoPE at position 0 is the identity;
* padding and sliding-window masks are built once per batch and shared by all layers;
* with CLS pooling the last layer runs attention and MLP for the CLS row only (exact);
* only standard ONNX ops: attention spelled out in opset-17 ops (``matmul``), which onnxruntime, OpenVINO
  and TensorRT all read, or as opset 23's ``Attention`` and ``RotaryEmbedding`` (``attention-op``, what
  onnxruntime runs fastest on CPUs; see :data:`ATTENTION_FORMS`).

Any other architecture (classic BERT/MiniLM ``*ForSequenceClassification``) goes through
``export_with_torch``, a ``torch.onnx.export`` of the PyTorch reference module itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx

from rerankrt.engine.errors import UnsupportedModelError

from .external_data import EXTERNAL_DATA_FROM_BYTES, ExternalDataWriter, save_model
from .onnx_builder import FLOAT, INT64, OPSET, GraphBuilder
from .source import SourceModel

MASK_VALUE = -30000.0
# "half": cos/sin tables of head_dim/2 on [B,S,h,d] (fewest flops);
# "rotate_half": the reference's own form, q·cos + rotate_half(q)·sin on [B,h,S,d] with full tables,
# sliced and concatenated exactly as PyTorch exports it (open-ended slice, axis -1), which
# OpenVINO's RoPE fusion turns into one RoPE op per projection: on the distilled 17m (Zen 5, one
# run) OpenVINO bf16 went 296 → 311 pairs/s with the layout alone and 405 → 430 once fused; equal
# on onnxruntime. It is the default.
ROPE_FORMS = ("half", "rotate_half")  # large enough to zero a softmax term, small enough for fp16
# How the sliding-window layers attend: "full" computes n×n scores and masks the window afterwards
# (quadratic in every layer); "banded" cuts the sequence into blocks of window/2 queries that attend
# to the 3 × window/2 keys of their own and the two neighbouring blocks (exact: the window's keys
# are inside them, the rest is masked), so those layers cost n × 1.5·window instead of n².
LOCAL_ATTENTION_FORMS = ("full", "banded")
# Up to this many tokens the banded form is one block of the whole batch width (= the n×n form): blocks
# pay for padding to whole blocks and for three key blocks per query block, 1.5x the n×n scores at 128
# tokens. Measured (benchmarks/bench_long.py, distilled 17m, fp32, before this switch, long-20261203-1852):
# blocks were 0.85-0.87x the n×n form at 16 × 128 tokens on both backends, 0.95-1.03x at 8 × 256,
# 1.06-1.16x at 4 × 512.
ONE_BLOCK_UP_TO = 256
# Global layers attend over the whole sequence: one n×n score tensor per head, 1 GB for one 7,999-token row of
# the 17m (4 heads, fp32) and as much again for the masked copy and the softmax. Past
# :data:`CHUNK_QUERIES_FROM` tokens their queries run in :data:`GLOBAL_QUERY_CHUNKS` consecutive chunks (exact:
# each query row's softmax is over all keys either way), so the scores alive at once are n²/chunks per head.
# Up to it one chunk holds every row and the others are empty (no If: one graph for every backend and
# precision pass).
GLOBAL_QUERY_CHUNKS = 16
CHUNK_QUERIES_FROM = 2048
# How attention is written. "matmul": in opset-17 ops on [B,h,S,d] (Q·Kᵀ MatMul, bias Add, Softmax, ·V MatMul,
# RoPE as Slice/Neg/Concat/Mul/Add, transposes in and out of the head layout): every runtime this project
# serves with reads it, TensorRT included; the artifact's main graphs. "attention-op": ONNX opset 23's ``Attention``
# (scores, bias, softmax and context in one node) and ``RotaryEmbedding`` on [B,S,hidden], no head transposes;
# same blocks, chunks and masks, same scores (|Δ| ~1e-6); batches up to the block and chunk thresholds run one
# ``Attention`` on q, k, v as they are, behind an ``If`` (the blocks' copies were a tenth of the fp32 graph's
# time at 180 tokens), which the main graphs cannot use (OpenVINO computed an ``If`` per layer wrong, and does
# so on this form's int8 graph; the fp16 converter wrote invalid graphs). onnxruntime runs it 1.16-1.36x faster,
# OpenVINO 0.85-1.02x (benchmarks/bench_attention_forms.py), so the export writes it beside the main fp32 and
# int8 graphs for onnxruntime on CPUs (pipeline.attention_op_precisions, engine/backends graph_form_for).
# onnxruntime reads it from 1.24 (QuantizeLinear-23; fp32 from 1.23).
ATTENTION_FORMS = ("matmul", "attention-op")
ATTENTION_OP_OPSET = 23


class ModernBertSpec:
    """The few config values the graph depends on, with the older config spellings accepted."""

    def __init__(self, config: dict) -> None:
        self.hidden = int(config["hidden_size"])
        self.layers = int(config["num_hidden_layers"])
        self.heads = int(config["num_attention_heads"])
        self.intermediate = int(config["intermediate_size"])
        self.head_dim = self.hidden // self.heads
        self.eps = float(config.get("norm_eps", 1e-5))
        self.vocab = int(config["vocab_size"])
        self.window_half = int(config.get("local_attention", 128)) // 2
        act = config.get("hidden_activation", "gelu")
        if act not in ("gelu", "gelu_python", "gelu_pytorch_tanh", "gelu_new"):
            raise UnsupportedModelError(f"unsupported ModernBERT hidden_activation {act!r}")
        self.tanh_gelu = act in ("gelu_pytorch_tanh", "gelu_new")
        types = config.get("layer_types")
        if not types:
            every = int(config.get("global_attn_every_n_layers", 3))
            types = ["full_attention" if i % every == 0 else "sliding_attention" for i in range(self.layers)]
        self.layer_types = list(types)
        rope = config.get("rope_parameters") or {}
        self.theta = {
            "full_attention": float((rope.get("full_attention") or {}).get("rope_theta",
                                    config.get("global_rope_theta", 160000.0))),
            "sliding_attention": float((rope.get("sliding_attention") or {}).get("rope_theta",
                                       config.get("local_rope_theta") or config.get("global_rope_theta", 10000.0))),
        }
        for kind in ("full_attention", "sliding_attention"):
            if ((rope.get(kind) or {}).get("rope_type") or "default") != "default":
                raise UnsupportedModelError(f"unsupported rope_type for {kind}: {rope[kind]['rope_type']!r}")
        self.max_positions = int(config.get("max_position_embeddings", 8192))


class _ModernBertGraph:
    """Emits the graph; one method per block, in the order the data flows."""

    def __init__(self, src: SourceModel, cls_only_last_layer: bool, rope_form: str = "rotate_half",
                 external: ExternalDataWriter | None = None, local_attention: str = "banded",
                 global_query_chunks: int = GLOBAL_QUERY_CHUNKS, attention: str = "matmul") -> None:
        if attention not in ATTENTION_FORMS:
            raise ValueError(f"attention must be one of {ATTENTION_FORMS}, got {attention!r}")
        self.attention_op = attention == "attention-op"
        if global_query_chunks < 1:
            raise ValueError(f"global_query_chunks must be ≥ 1, got {global_query_chunks}")
        self.query_chunks = int(global_query_chunks)
        if rope_form not in ROPE_FORMS:
            raise ValueError(f"rope_form must be one of {ROPE_FORMS}, got {rope_form!r}")
        if local_attention not in LOCAL_ATTENTION_FORMS:
            raise ValueError(f"local_attention must be one of {LOCAL_ATTENTION_FORMS}, got {local_attention!r}")
        self.rope_form = rope_form
        self.banded = local_attention == "banded"
        self.src = src
        self.spec = ModernBertSpec(src.config)
        self.w = src.load_backbone_weights()
        self.g = GraphBuilder("rerankrt_modernbert", external, ATTENTION_OP_OPSET if self.attention_op else OPSET)
        self.cls_only = cls_only_last_layer and src.pooling == "cls"

    # -- small helpers -------------------------------------------------------------------
    def tensor(self, name: str) -> np.ndarray:
        try:
            return self.w[name]
        except KeyError as exc:
            raise UnsupportedModelError(f"weights file lacks tensor {name!r}") from exc

    def layer_norm(self, x: str, prefix: str, eps: float | None = None, weight: np.ndarray | None = None,
                   bias: np.ndarray | None = None) -> str:
        """LayerNormalization with the backbone's ``prefix.weight``/``prefix.bias`` (or the arrays given).

        ModernBERT norms have no bias; a zero bias is written so every backend sees the same op form.
        """
        g = self.g
        weight = self.tensor(f"{prefix}.weight") if weight is None else weight
        if bias is None:
            bias = self.w.get(f"{prefix}.bias", np.zeros_like(weight))
        return g.op("LayerNormalization", [x, g.weight(f"{prefix}.weight", weight), g.weight(f"{prefix}.bias", bias)],
                    "ln", axis=-1, epsilon=self.spec.eps if eps is None else eps)

    def linear(self, x: str, name: str, weight: np.ndarray, bias: np.ndarray | None = None) -> str:
        """``x @ weight.T (+ bias)``; the transposed weight is stored so MatMul needs no Transpose."""
        g = self.g
        y = g.op("MatMul", [x, g.weight(f"{name}.weight_t", np.ascontiguousarray(weight.T))], "mm")
        if bias is not None:
            y = g.op("Add", [y, g.weight(f"{name}.bias", bias.astype(np.float32))], "bias")
        return y

    def gelu(self, x: str, tanh: bool = False) -> str:
        g = self.g
        if tanh:
            inner = g.op("Mul", [g.op("Add", [x, g.op("Mul", [g.op("Pow", [x, g.const(3.0, np.float32)]),
                                                             g.const(0.044715, np.float32)])]),
                                 g.const(math.sqrt(2.0 / math.pi), np.float32)])
            t = g.op("Tanh", [inner])
        else:
            t = g.op("Erf", [g.op("Div", [x, g.const(math.sqrt(2.0), np.float32)])])
        return g.op("Mul", [g.op("Mul", [x, g.const(0.5, np.float32)]),
                            g.op("Add", [t, g.const(1.0, np.float32)])], "gelu")

    def activation(self, x: str, name: str) -> str:
        if name == "identity":
            return x
        if name == "gelu":
            return self.gelu(x)
        if name == "tanh":
            return self.g.op("Tanh", [x])
        if name == "relu":
            return self.g.op("Relu", [x])
        if name == "sigmoid":
            return self.g.op("Sigmoid", [x])
        if name == "silu":
            return self.g.op("Mul", [x, self.g.op("Sigmoid", [x])])
        raise UnsupportedModelError(f"unsupported activation {name!r}")

    # -- blocks ----------------------------------------------------------------------------
    def embeddings(self, input_ids: str) -> str:
        table = self.g.weight("embeddings.tok_embeddings.weight", self.tensor("embeddings.tok_embeddings.weight"))
        x = self.g.op("Gather", [table, input_ids], "embed", axis=0)
        return self.layer_norm(x, "embeddings.norm")

    def positions(self, input_ids: str) -> tuple[str, str]:
        """Returns (positions int64 [S], positions float [S])."""
        g = self.g
        seq = g.op("Gather", [g.op("Shape", [input_ids]), g.const(1)], "seq_len", axis=0)
        pos = g.op("Range", [g.const(0), seq, g.const(1)], "positions")
        return pos, g.op("Cast", [pos], "positions_f", to=FLOAT)

    def rope_tables(self, pos_f: str) -> dict[str, tuple[str, str]]:
        """cos/sin per attention kind, computed in fp32 like the reference.

        ``half``: [S, 1, head_dim/2]; ``rotate_half``: [1, 1, S, head_dim] (both halves repeated);
        the attention-op form: [S, head_dim/2], ``RotaryEmbedding``'s cache, read at :attr:`position_ids`.
        """
        g, spec = self.g, self.spec
        tables = {}
        for kind in sorted(set(spec.layer_types)):
            exponent = np.arange(0, spec.head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(spec.head_dim)
            inv_freq = (1.0 / (np.float32(spec.theta[kind]) ** exponent)).astype(np.float32)
            freqs = g.op("Mul", [g.op("Unsqueeze", [pos_f, g.const([1])]), g.const(inv_freq, np.float32)], "freqs")
            if self.rope_form == "half" and not self.attention_op:
                freqs = g.op("Unsqueeze", [freqs, g.const([1])])
            elif not self.attention_op:
                freqs = g.op("Unsqueeze", [g.op("Concat", [freqs, freqs], axis=-1), g.const([0, 1])])
            tables[kind] = (g.op("Cos", [freqs], f"cos_{kind}"), g.op("Sin", [freqs], f"sin_{kind}"))
        return tables

    def band_layout(self, input_ids: str) -> None:
        """Per batch, how the sliding layers cut the sequence: the block, its neighbours, the padding.

        Past :data:`ONE_BLOCK_UP_TO` tokens: blocks of ``window/2`` queries, each with the previous, own and
        next block of keys (the sequence padded to whole blocks, plus one block of keys on each side).
        Up to it: one block of the whole sequence with no neighbours, i.e. the n×n form (1.5x fewer scores
        than blocks at 128 tokens). Decided from the batch's width inside the graph with arithmetic on
        shapes only (no ``If``), so it is one graph of standard ops for every backend and precision pass; the
        attention-op form (onnxruntime only) also puts the block path behind an ``If`` on ``blocked_cond``.
        """
        g, half = self.g, self.spec.window_half
        seq = g.op("Slice", [g.op("Shape", [input_ids]), g.const([1]), g.const([2])], "seq_len_1d")  # [1]
        self.batch_1d = g.op("Slice", [g.op("Shape", [input_ids]), g.const([0]), g.const([1])], "batch_1d")
        self.blocked_cond = g.op("Greater", [seq, g.const([ONE_BLOCK_UP_TO])], "blocked_cond")  # the attention-op If
        blocked = g.op("Cast", [self.blocked_cond], "blocked", to=INT64)  # 1 or 0
        whole = g.op("Sub", [g.const([1]), blocked])
        # block = half when blocked, else the whole sequence; pad the tail to whole blocks only when blocked
        self.block = g.op("Add", [g.op("Mul", [blocked, g.const([half])]), g.op("Mul", [whole, seq])], "block")
        tail = g.op("Mul", [blocked, g.op("Mod", [g.op("Sub", [g.const([half]), g.op("Mod", [seq, g.const([half])])]),
                                                  g.const([half])])], "band_tail")  # (-S) mod half, or 0
        side = g.op("Mul", [blocked, self.block], "band_side")  # keys padded on each side: a block, or none
        self.seq_1d = seq
        if self.attention_op:  # q, k, v as [B, S, hidden]
            self.q_pads = g.op("Concat", [g.const([0, 0, 0, 0]), tail, g.const([0])], "q_pads", axis=0)
            self.kv_pads = g.op("Concat", [g.const([0]), side, g.const([0, 0]), g.op("Add", [tail, side]),
                                           g.const([0])], "kv_pads", axis=0)
        else:  # [B, h, S, d]
            self.q_pads = g.op("Concat", [g.const([0, 0, 0, 0, 0, 0]), tail, g.const([0])], "q_pads", axis=0)
            self.kv_pads = g.op("Concat", [g.const([0, 0]), side, g.const([0, 0, 0]), g.op("Add", [tail, side]),
                                           g.const([0])], "kv_pads", axis=0)
        self.mask_pads = g.op("Concat", [g.const([0]), side, g.const([0]), g.op("Add", [tail, side])],
                              "mask_pads", axis=0)
        n_blocks = g.op("Div", [g.op("Add", [seq, tail]), self.block])  # [1]
        neighbours = g.op("Add", [g.const([1]), g.op("Mul", [blocked, g.const([2])])], "neighbours")  # 3 or 1
        self.band_keys = g.op("Mul", [neighbours, self.block], "band_keys")  # keys per query block
        first = g.op("Unsqueeze", [g.op("Range", [g.const(0), g.op("Squeeze", [n_blocks, g.const([0])]),
                                                  g.const(1)]), g.const([1])])  # [nb, 1]
        offsets = g.op("Unsqueeze", [g.op("Range", [g.const(0), g.op("Squeeze", [neighbours, g.const([0])]),
                                                    g.const(1)]), g.const([0])])  # [1, 3 or 1]
        self.band_index = g.op("Add", [first, offsets], "band_index")  # [nb, 3]: i, i+1, i+2 (or [[0]])
        # the window over (query r of a block, key c of its band): key - query = c - side - r
        r = g.op("Unsqueeze", [g.op("Range", [g.const(0), g.op("Squeeze", [self.block, g.const([0])]), g.const(1)]),
                               g.const([1])])
        c = g.op("Unsqueeze", [g.op("Range", [g.const(0), g.op("Squeeze", [self.band_keys, g.const([0])]),
                                              g.const(1)]), g.const([0])])
        dist = g.op("Abs", [g.op("Sub", [g.op("Sub", [c, side]), r])])
        self.band_window = g.op("Where", [g.op("Greater", [dist, g.const(half)]), g.const(MASK_VALUE, np.float32),
                                          g.const(0.0, np.float32)], "band_window")  # [block, band_keys]

    def query_chunk_layout(self, input_ids: str) -> None:
        """How the global layers cut their query rows: ``Split`` sizes over the rows padded by chunks − 1.

        Past :data:`CHUNK_QUERIES_FROM` tokens: the rows padded by chunks − 1 (so no piece is empty), ``chunks``
        pieces of ⌈S/chunks⌉ rows, the last taking the rest; up to it: no padding, all S rows in the first
        piece and the other pieces empty (zero rows, which both backends accept; a padding row per piece instead
        measured the same within noise at 16 × 128 and 4 × 512 tokens, so short batches carry none). Decided
        from the batch's width with arithmetic on shapes only, as :meth:`band_layout` (the attention-op form
        runs the pieces only past the threshold, behind an ``If``: ``Attention`` refuses zero rows).
        """
        g, n = self.g, self.query_chunks
        seq = g.op("Slice", [g.op("Shape", [input_ids]), g.const([1]), g.const([2])], "chunk_seq_1d")  # [1]
        self.chunked_cond = g.op("Greater", [seq, g.const([CHUNK_QUERIES_FROM])], "chunked_cond")
        split = g.op("Cast", [self.chunked_cond], "chunked", to=INT64)
        whole = g.op("Sub", [g.const([1]), split])
        size = g.op("Div", [g.op("Add", [seq, g.const([n - 1])]), g.const([n])])  # ⌈S/n⌉
        first = g.op("Add", [g.op("Mul", [split, size]), g.op("Mul", [whole, seq])])
        middle = g.op("Mul", [split, size])  # ⌈S/n⌉, or 0
        extra = g.op("Mul", [split, g.const([n - 1])])  # padding rows: n − 1 when chunked, else none
        rest = g.op("Sub", [g.op("Add", [seq, extra]), g.op("Mul", [size, g.const([n - 1])])])
        last = g.op("Mul", [split, rest])
        parts = [first] + [middle] * (n - 2) + [last]
        self.chunk_sizes = g.op("Concat", parts, "query_chunk_sizes", axis=0)  # [n], sums to S (+ n − 1)
        zeros = [0, 0, 0, 0] if self.attention_op else [0, 0, 0, 0, 0, 0]  # q as [B,S,hidden] or [B,h,S,d]
        self.chunk_pads = g.op("Concat", [g.const(zeros), extra, g.const([0])], "q_chunk_pads", axis=0)
        self.chunk_seq = seq

    def chunked_global_attention(self, q: str, k: str, v: str, bias: str) -> str:
        """Softmax(q·kᵀ + bias)·v for q [B,h,S,d], k [B,h,d,S], v [B,h,S,d] and a [B,1,1,S] bias, one query
        chunk at a time (:meth:`query_chunk_layout`); returns [B,h,S,d]."""
        g, n = self.g, self.query_chunks
        padded = g.op("Pad", [q, self.chunk_pads], "q_chunk_pad")
        chunks = g.op("Split", [padded, self.chunk_sizes], "q_chunk", n_out=n, axis=2)
        contexts = []
        for chunk in chunks:
            scores = g.op("Add", [g.op("MatMul", [chunk, k], "chunk_scores"), bias])
            contexts.append(g.op("MatMul", [g.op("Softmax", [scores], "chunk_probs", axis=-1), v]))
        ctx = g.op("Concat", contexts, "chunk_ctx", axis=2)
        return g.op("Slice", [ctx, g.const([0]), self.chunk_seq, g.const([2])], "global_ctx")

    def neighbour_blocks(self, x: str, axis: int, feature: int | None = None) -> str:
        """[..., padded length, ...] → [..., nb, band_keys, ...]: each block with its neighbours' keys.

        ``x`` is padded by the side blocks; it is cut into blocks along ``axis`` and one ``Gather`` with
        :meth:`band_layout`'s indices copies every block's neighbours at once (slices + concat made four
        copies, most of the band's cost at short lengths). ``feature``: the size of the one axis after
        ``axis`` (head_dim for [B,h,S,d], hidden for [B,S,hidden]), None where ``axis`` is the last.
        """
        g = self.g
        tail = [g.const([feature])] if feature else []
        shape = g.op("Concat", [g.const([0] * axis + [-1]), self.block, *tail], axis=0)
        blocks = g.op("Reshape", [x, shape], "blocks")  # [..., nb + 2·side, block, ...]
        gathered = g.op("Gather", [blocks, self.band_index], "band_gather", axis=axis)  # [..., nb, 3, block, ...]
        shape = g.op("Concat", [g.const([0] * (axis + 1)), self.band_keys, *tail], axis=0)
        return g.op("Reshape", [gathered, shape], "band")

    def band_bias(self, mask_f: str) -> str:
        """[B,h·nb,block,band_keys]: padding of the neighbouring keys (and of the rounding) + the window."""
        g = self.g
        padded = g.op("Pad", [mask_f, self.mask_pads], "mask_band_pad")  # zeros outside the sequence
        keys = self.neighbour_blocks(padded, axis=1)  # [B, nb, band_keys]
        pad = g.op("Mul", [g.op("Sub", [keys, g.const(1.0, np.float32)]), g.const(-MASK_VALUE, np.float32)])
        pad = g.op("Unsqueeze", [pad, g.const([1, 3])])  # [B,1,nb,1,band_keys]
        bias = g.op("Add", [pad, self.band_window])  # [B,1,nb,block,band_keys]
        if self.attention_op:  # one bias per block for every head: [B·nb,1,block,band_keys], as Attention's batch
            shape = g.op("Concat", [g.const([-1, 1]), self.block, self.band_keys], axis=0)
            return g.op("Reshape", [bias, shape], "band_bias")
        heads = g.op("Concat", [self.batch_1d, g.const([self.spec.heads, 1, 1, 1])], axis=0)
        bias = g.op("Expand", [bias, heads])  # [B,h,nb,block,band_keys]: once per batch, shared by the layers
        shape = g.op("Concat", [g.const([0, -1]), self.block, self.band_keys], axis=0)
        return g.op("Reshape", [bias, shape], "band_bias")  # [B,h·nb,block,band_keys], as the scores

    def banded_attention(self, q: str, k: str, v: str, bias: str) -> str:
        """Sliding-window attention on [B,h,S,d] q/k/v in blocks; returns the context as [B,h,S,d].

        The blocks join the head axis ([B, h·nb, block, d], a reshape of [B,h,nb,block,d]: no copy), so
        the core is the usual 4-D MatMul → Add → Softmax → MatMul that backends fuse (OpenVINO's attention
        fusion did not take a 5-D form: 0.83x the n×n form at 16 × 128 tokens, long-20261203-1916), and
        no transpose is added around it; the bias is laid out per head once per batch (:meth:`band_bias`).
        """
        g, spec = self.g, self.spec
        h, d = spec.heads, spec.head_dim
        per_head_blocks = g.op("Concat", [g.const([0, -1]), self.block, g.const([d])], axis=0)
        qb = g.op("Reshape", [g.op("Pad", [q, self.q_pads]), per_head_blocks], "q_blocks")  # [B,h·nb,block,d]
        keys_shape = g.op("Concat", [g.const([0, -1]), self.band_keys, g.const([d])], axis=0)
        kb = g.op("Reshape", [self.neighbour_blocks(g.op("Pad", [k, self.kv_pads]), axis=2, feature=d), keys_shape])
        vb = g.op("Reshape", [self.neighbour_blocks(g.op("Pad", [v, self.kv_pads]), axis=2, feature=d), keys_shape])
        scores = g.op("MatMul", [qb, g.op("Transpose", [kb], perm=[0, 1, 3, 2])], "band_scores")
        probs = g.op("Softmax", [g.op("Add", [scores, bias])], "band_probs", axis=-1)  # [B,h·nb,block,keys]
        ctx = g.op("Reshape", [g.op("MatMul", [probs, vb]), g.const([0, h, -1, d])])  # [B,h,Sp,d]
        return g.op("Slice", [ctx, g.const([0]), self.seq_1d, g.const([2])], "band_ctx")  # [B,h,S,d]

    def attention_biases(self, attention_mask: str, pos: str) -> dict[str, str]:
        """Additive biases: padding for global layers, padding + |i-j| > window for sliding ones
        (as blocks for the banded form; as an n×n mask only where a sliding layer attends in full)."""
        g = self.g
        mask_f = g.op("Cast", [attention_mask], "mask_f", to=FLOAT)
        pad = g.op("Mul", [g.op("Sub", [mask_f, g.const(1.0, np.float32)]), g.const(-MASK_VALUE, np.float32)])
        pad = g.op("Unsqueeze", [pad, g.const([1, 2])], "pad_bias")  # [B,1,1,S]
        biases = {"full_attention": pad}
        self.pad_bias = pad
        if self.banded and self.sliding_banded_layers():
            biases["sliding_attention_band"] = self.band_bias(mask_f)
        if not self.banded_everywhere() or self.cls_only:
            biases.update(self.window_biases(pad, pos))
        return biases

    def sliding_banded_layers(self) -> list[int]:
        """The layers computed in the banded form: sliding ones that run every query row."""
        spec = self.spec
        return [i for i, kind in enumerate(spec.layer_types) if kind == "sliding_attention" and self.banded
                and not (self.cls_only and i == spec.layers - 1)]

    def banded_everywhere(self) -> bool:
        sliding = [i for i, kind in enumerate(self.spec.layer_types) if kind == "sliding_attention"]
        return set(sliding) == set(self.sliding_banded_layers())

    def window_biases(self, pad: str, pos: str) -> dict[str, str]:
        """The n×n sliding-window bias (only where a sliding layer attends in full), and the CLS-row
        biases of a CLS-only last layer (row 0 of the window: positions past window/2 masked)."""
        g = self.g
        biases = {}
        if not self.banded_everywhere():
            dist = g.op("Abs", [g.op("Sub", [g.op("Unsqueeze", [pos, g.const([1])]),
                                             g.op("Unsqueeze", [pos, g.const([0])])])])
            far = g.op("Greater", [dist, g.const(self.spec.window_half)])
            window = g.op("Where", [far, g.const(MASK_VALUE, np.float32), g.const(0.0, np.float32)], "window")
            biases["sliding_attention"] = g.op("Add", [pad, window], "local_bias")  # [B,1,S,S]
        if self.cls_only:  # the CLS query row only: [B,1,1,S]
            far0 = g.op("Greater", [pos, g.const(self.spec.window_half)])
            row0 = g.op("Where", [far0, g.const(MASK_VALUE, np.float32), g.const(0.0, np.float32)], "window_row0")
            biases["full_attention_cls"] = pad
            biases["sliding_attention_cls"] = g.op("Add", [pad, row0], "local_bias_cls")
        return biases

    def rope(self, x: str, cos: str, sin: str) -> str:
        """Rotate-half RoPE (same formula as the reference) in the configured form."""
        g, half = self.g, self.spec.head_dim // 2
        if self.attention_op:  # x [B,S,hidden]; rotate-half (interleaved=0) over each head's whole dimension
            return g.op("RotaryEmbedding", [x, cos, sin, self.position_ids], "rope", num_heads=self.spec.heads)
        if self.rope_form == "rotate_half":  # x·cos + cat(−x2, x1)·sin on [B,h,S,d], as PyTorch exports it
            x1 = g.op("Slice", [x, g.const([0]), g.const([half]), g.const([-1])])
            x2 = g.op("Slice", [x, g.const([half]), g.const([np.iinfo(np.int64).max]), g.const([-1])])
            rotated = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
            return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])], "rope")
        x1 = g.op("Slice", [x, g.const([0]), g.const([half]), g.const([3])])
        x2 = g.op("Slice", [x, g.const([half]), g.const([2 * half]), g.const([3])])
        first = g.op("Sub", [g.op("Mul", [x1, cos]), g.op("Mul", [x2, sin])])
        second = g.op("Add", [g.op("Mul", [x2, cos]), g.op("Mul", [x1, sin])])
        return g.op("Concat", [first, second], "rope", axis=3)

    def projections(self, i: int, q_in: str, kv_in: str) -> tuple[str, str, str]:
        """Q (the attention scale folded into its weights), K, V as [B, S, hidden]: three MatMuls, no Split."""
        wqkv = self.tensor(f"layers.{i}.attn.Wqkv.weight")
        bqkv = self.w.get(f"layers.{i}.attn.Wqkv.bias")
        H = self.spec.hidden
        scale = 1.0 / math.sqrt(self.spec.head_dim)

        def proj(part: int, s: float = 1.0) -> str:
            w = wqkv[part * H:(part + 1) * H] * np.float32(s)
            b = None if bqkv is None else bqkv[part * H:(part + 1) * H] * np.float32(s)
            return self.linear(kv_in if part else q_in, f"layers.{i}.attn.W{'qkv'[part]}", w, b)

        return proj(0, scale), proj(1), proj(2)

    def attend(self, q: str, k: str, v: str, bias: str) -> str:
        """ONNX ``Attention`` on [batch, rows, hidden]: softmax(q·kᵀ + bias)·v per head (scale already in q)."""
        heads = self.spec.heads
        return self.g.op("Attention", [q, k, v, bias], "attention", q_num_heads=heads, kv_num_heads=heads, scale=1.0)

    def banded_attention_op(self, q: str, k: str, v: str, bias: str) -> str:
        """The banded sliding window in the attention-op form: blocks become Attention's batch.

        q, k, v are [B,S,hidden]; a block of queries is [B·nb, block, hidden] (a reshape of the padded
        rows: no copy) and its band of keys [B·nb, band_keys, hidden] (one Gather, :meth:`neighbour_blocks`),
        with the [B·nb,1,block,band_keys] bias of :meth:`band_bias`. Returns the context as [B,S,hidden].
        Up to :data:`ONE_BLOCK_UP_TO` tokens (one block, no neighbours: the bias is [B,1,S,S]) an ``If``
        runs ``Attention`` on q, k, v as they are: the block path's Pads, Gathers, Reshapes and Slice would
        copy every tensor for nothing (a tenth of the fp32 graph's time at 180 tokens).
        """
        g, H = self.g, self.spec.hidden

        def blocks() -> str:
            qb = g.op("Reshape", [g.op("Pad", [q, self.q_pads]),
                                  g.op("Concat", [g.const([-1]), self.block, g.const([H])], axis=0)], "q_blocks")
            keys_shape = g.op("Concat", [g.const([-1]), self.band_keys, g.const([H])], axis=0)
            kb = g.op("Reshape", [self.neighbour_blocks(g.op("Pad", [k, self.kv_pads]), axis=1, feature=H),
                                  keys_shape])
            vb = g.op("Reshape", [self.neighbour_blocks(g.op("Pad", [v, self.kv_pads]), axis=1, feature=H),
                                  keys_shape])
            ctx = g.op("Reshape", [self.attend(qb, kb, vb, bias), g.op("Concat", [self.batch_1d, g.const([-1, H])],
                                                                           axis=0)])  # [B, padded S, hidden]
            return g.op("Slice", [ctx, g.const([0]), self.seq_1d, g.const([1])], "band_ctx")

        return g.if_else(self.blocked_cond, blocks, lambda: self.attend(q, k, v, bias), "band_attention")

    def global_attention_op(self, q: str, k: str, v: str) -> str:
        """Global layers in the attention-op form, query rows in :meth:`query_chunk_layout`'s chunks.

        ``Attention`` wants the bias with one row per query (onnxruntime refuses a [B,1,1,S] one), so
        each chunk gets the [B,1,1,S] padding bias expanded to its rows, [B,1,rows,S], right before its
        ``Attention``: one chunk's mask alive at a time, bounded by the chunking as the scores are (masks
        shared by the layers would hold all chunks' rows, an n×n tensor, at once: 256 MB at 7,999 tokens).
        Up to :data:`CHUNK_QUERIES_FROM` tokens an ``If`` runs one ``Attention`` over all rows instead
        (``Attention`` refuses the empty pieces, and the pieces' Pad/Split/Concat/Slice would copy for nothing).
        """
        g, n = self.g, self.query_chunks

        def mask(rows: str) -> str:
            return g.op("Expand", [self.pad_bias, g.op("Concat", [g.const([1, 1]), rows, g.const([1])], axis=0)],
                        "global_mask")

        def whole() -> str:
            return self.attend(q, k, v, g.op("Expand", [self.pad_bias, self.whole_mask_shape], "global_mask"))

        def chunked() -> str:
            chunks = g.op("Split", [g.op("Pad", [q, self.chunk_pads], "q_chunk_pad"), self.chunk_sizes], "q_chunk",
                          n_out=n, axis=1)
            rows = [g.op("Slice", [self.chunk_sizes, g.const([j]), g.const([j + 1])]) for j in range(n)]
            ctx = g.op("Concat", [self.attend(chunk, k, v, mask(r)) for chunk, r in zip(chunks, rows, strict=True)],
                       "chunk_ctx", axis=1)
            return g.op("Slice", [ctx, g.const([0]), self.chunk_seq, g.const([1])], "global_ctx")

        return whole() if n == 1 else g.if_else(self.chunked_cond, chunked, whole, "global_attention")

    def attention_as_op(self, i: int, q_in: str, kv_in: str, bias: str, rope: tuple[str, str] | None) -> str:
        """The attention-op form of :meth:`attention`: everything on [B,S,hidden], no head layout."""
        spec = self.spec
        q, k, v = self.projections(i, q_in, kv_in)
        cos, sin = self.rope_all[spec.layer_types[i]]
        k = self.rope(k, cos, sin)
        if rope is None:  # the CLS row: position 0, RoPE is the identity
            ctx = self.attend(q, k, v, bias)
        else:
            q = self.rope(q, cos, sin)
            if i in self.banded_layers:
                ctx = self.banded_attention_op(q, k, v, bias)
            elif spec.layer_types[i] == "full_attention":
                ctx = self.global_attention_op(q, k, v)
            else:  # a sliding layer in the "full" local form: its [B,1,S,S] bias fits Attention as it is
                ctx = self.attend(q, k, v, bias)
        return self.linear(ctx, f"layers.{i}.attn.Wo", self.tensor(f"layers.{i}.attn.Wo.weight"),
                           self.w.get(f"layers.{i}.attn.Wo.bias"))

    def attention(self, i: int, q_in: str, kv_in: str, bias: str, rope: tuple[str, str] | None) -> str:
        """Multi-head attention. ``rope=None`` means the query is the CLS row (position 0: identity)."""
        if self.attention_op:
            return self.attention_as_op(i, q_in, kv_in, bias, rope)
        g, spec = self.g, self.spec
        H = spec.hidden
        heads_shape = g.const([0, 0, spec.heads, spec.head_dim])
        q, k, v = (g.op("Reshape", [t, heads_shape]) for t in self.projections(i, q_in, kv_in))
        tables = self.rope_all[spec.layer_types[i]]
        if rope is not None and i in self.banded_layers:  # every query row, sliding window: in blocks
            if self.rope_form == "half":
                q = g.op("Transpose", [self.rope(q, *tables)], perm=[0, 2, 1, 3])
                k = g.op("Transpose", [self.rope(k, *tables)], perm=[0, 2, 1, 3])
            else:
                q = self.rope(g.op("Transpose", [q], perm=[0, 2, 1, 3]), *tables)
                k = self.rope(g.op("Transpose", [k], perm=[0, 2, 1, 3]), *tables)
            v = g.op("Transpose", [v], "v", perm=[0, 2, 1, 3])
            ctx = self.banded_attention(q, k, v, bias)
            ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), g.const([0, 0, H])], "ctx")
            return self.linear(ctx, f"layers.{i}.attn.Wo", self.tensor(f"layers.{i}.attn.Wo.weight"),
                               self.w.get(f"layers.{i}.attn.Wo.bias"))
        if self.rope_form == "half":  # rotate on [B,S,h,d], then lay out for the matmuls
            k = g.op("Transpose", [self.rope(k, *tables)], "k", perm=[0, 2, 3, 1])  # [B,h,d,S]
            if rope is not None:
                q = self.rope(q, *tables)
            q = g.op("Transpose", [q], "q", perm=[0, 2, 1, 3])  # [B,h,Sq,d]
        else:  # the reference's order: transpose to [B,h,S,d], rotate, then K^T
            k = g.op("Transpose", [self.rope(g.op("Transpose", [k], perm=[0, 2, 1, 3]), *tables)], "k",
                     perm=[0, 1, 3, 2])
            q = g.op("Transpose", [q], "q", perm=[0, 2, 1, 3])
            if rope is not None:
                q = self.rope(q, *tables)
        v = g.op("Transpose", [v], "v", perm=[0, 2, 1, 3])  # [B,h,S,d]
        if rope is not None and self.query_chunks > 1 and spec.layer_types[i] == "full_attention":
            ctx = g.op("Transpose", [self.chunked_global_attention(q, k, v, bias)], perm=[0, 2, 1, 3])
        else:
            probs = g.op("Softmax", [g.op("Add", [g.op("MatMul", [q, k], "scores"), bias])], "probs", axis=-1)
            ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, g.const([0, 0, H])], "ctx")
        return self.linear(ctx, f"layers.{i}.attn.Wo", self.tensor(f"layers.{i}.attn.Wo.weight"),
                           self.w.get(f"layers.{i}.attn.Wo.bias"))

    def mlp(self, i: int, x: str) -> str:
        spec = self.spec
        wi = self.tensor(f"layers.{i}.mlp.Wi.weight")
        bi = self.w.get(f"layers.{i}.mlp.Wi.bias")
        inter = spec.intermediate
        a = self.linear(x, f"layers.{i}.mlp.Wi_in", wi[:inter], None if bi is None else bi[:inter])
        gate = self.linear(x, f"layers.{i}.mlp.Wi_gate", wi[inter:], None if bi is None else bi[inter:])
        h = self.g.op("Mul", [self.gelu(a, spec.tanh_gelu), gate], "geglu")
        return self.linear(h, f"layers.{i}.mlp.Wo", self.tensor(f"layers.{i}.mlp.Wo.weight"),
                           self.w.get(f"layers.{i}.mlp.Wo.bias"))

    def encoder_layer(self, i: int, x: str, biases: dict[str, str], cls_only: bool) -> str:
        g = self.g
        kind = self.spec.layer_types[i]
        normed = x if i == 0 else self.layer_norm(x, f"layers.{i}.attn_norm")
        if cls_only:
            row0 = (g.const([0]), g.const([1]), g.const([1]))
            x = g.op("Slice", [x, *row0], "cls_row")
            q_in = g.op("Slice", [normed, *row0], "cls_q")
            attn = self.attention(i, q_in, normed, biases[f"{kind}_cls"], rope=None)
        else:
            bias = biases["sliding_attention_band"] if i in self.banded_layers else biases[kind]
            attn = self.attention(i, normed, normed, bias, rope=self.rope_all[kind])
        x = g.op("Add", [x, attn], "resid_attn")
        return g.op("Add", [x, self.mlp(i, self.layer_norm(x, f"layers.{i}.mlp_norm"))], "resid_mlp")

    def pool(self, x: str, attention_mask: str) -> str:
        g = self.g
        if self.src.pooling == "cls":
            if not self.cls_only:
                x = g.op("Slice", [x, g.const([0]), g.const([1]), g.const([1])])
            return g.op("Reshape", [x, g.const([0, self.spec.hidden])], "pooled")
        mask = g.op("Unsqueeze", [g.op("Cast", [attention_mask], to=FLOAT), g.const([2])])
        summed = g.op("ReduceSum", [g.op("Mul", [x, mask]), g.const([1])], keepdims=0)
        count = g.op("ReduceSum", [mask, g.const([1])], keepdims=0)
        return g.op("Div", [summed, g.op("Max", [count, g.const(1e-9, np.float32)])], "pooled")

    def head(self, x: str) -> str:
        for n, layer in enumerate(self.src.head):
            name = f"head.{n}"
            if layer.kind == "dense":
                y = self.activation(self.linear(x, name, layer.weight, layer.bias), layer.activation)
                x = self.g.op("Add", [x, y]) if layer.residual else y
            else:
                bias = layer.bias if layer.bias is not None else np.zeros_like(layer.weight)
                x = self.layer_norm(x, name, eps=layer.eps, weight=layer.weight, bias=bias)
        return x

    def build(self) -> onnx.ModelProto:
        g, spec = self.g, self.spec
        input_ids = g.add_input("input_ids", INT64, ["batch", "sequence"])
        attention_mask = g.add_input("attention_mask", INT64, ["batch", "sequence"])
        x = self.embeddings(input_ids)
        self.banded_layers = set(self.sliding_banded_layers())
        with g.keep_fp32():
            pos, pos_f = self.positions(input_ids)
            self.rope_all = self.rope_tables(pos_f)
            if self.attention_op:  # RotaryEmbedding's [B,S] positions into the [S, head_dim/2] tables
                self.position_ids = g.op("Expand", [g.op("Unsqueeze", [pos, g.const([0])]), g.op("Shape", [input_ids])],
                                         "position_ids")
                seq = g.op("Slice", [g.op("Shape", [input_ids]), g.const([1]), g.const([2])])
                self.whole_mask_shape = g.op("Concat", [g.const([1, 1]), seq, g.const([1])], "whole_mask_shape", axis=0)
            if self.banded_layers:
                self.band_layout(input_ids)
            if self.query_chunks > 1:
                self.query_chunk_layout(input_ids)
            biases = self.attention_biases(attention_mask, pos)
        for i in range(spec.layers):
            x = self.encoder_layer(i, x, biases, cls_only=self.cls_only and i == spec.layers - 1)
        x = self.layer_norm(x, "final_norm")
        logits = self.head(self.pool(x, attention_mask))
        g.add_output(logits, "logits", FLOAT, ["batch", self.src.num_labels])
        return g.build()


def build_modernbert_graph(src: SourceModel, cls_only_last_layer: bool = True,
                           rope_form: str = "rotate_half", external: ExternalDataWriter | None = None,
                           local_attention: str = "banded", global_query_chunks: int = GLOBAL_QUERY_CHUNKS,
                           attention: str = "matmul") -> onnx.ModelProto:
    """The native fast graph for ModernBERT backbones (Ettin modular and classic ModernBERT).

    With ``external`` the weights are appended to its data file as they are made (the returned
    proto only points into it), so a graph of any size is built holding one tensor at a time.
    """
    if src.model_type != "modernbert":
        raise UnsupportedModelError(f"native graph builder handles modernbert, not {src.model_type!r}")
    return _ModernBertGraph(src, cls_only_last_layer, rope_form, external, local_attention,
                            global_query_chunks, attention).build()


def export_with_torch(src: SourceModel, path: Path, opset: int = 17) -> None:
    """Generic path: ``torch.onnx.export`` of the PyTorch reference (classic BERT-like models)."""
    import torch

    from .reference import load_reference

    module = load_reference(src).eval()
    ids = torch.randint(1000, 2000, (2, 16), dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    with torch.no_grad():
        torch.onnx.export(module, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], opset_version=opset, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"},
                                        "logits": {0: "batch"}})


def weights_go_external(src: SourceModel) -> bool:
    """Whether ``build_graph`` writes ``src``'s weights to a ``.data`` file beside the graph (past 1.5 GB fp32)."""
    return src.weight_bytes_fp32() > EXTERNAL_DATA_FROM_BYTES


def build_graph(src: SourceModel, path: Path, external: bool | None = None,
                local_attention: str = "banded", global_query_chunks: int = GLOBAL_QUERY_CHUNKS,
                attention: str = "matmul") -> str:
    """Write the fp32 graph for ``src`` to ``path``; returns the graph form used.

    ``local_attention`` is the form of ModernBERT's sliding-window layers (:data:`LOCAL_ATTENTION_FORMS`),
    ``attention`` how attention itself is written (:data:`ATTENTION_FORMS`); both apply to ModernBERT only.

    The weights go to ``<path>.data`` when their fp32 size passes
    :data:`~.external_data.EXTERNAL_DATA_FROM_BYTES` (decided from the weights file's header,
    before anything is built), or when ``external`` says so.
    """
    if src.model_type == "modernbert":
        if external is None:
            external = weights_go_external(src)
        writer = ExternalDataWriter(path) if external else None
        try:
            model = build_modernbert_graph(src, external=writer, local_attention=local_attention,
                                           global_query_chunks=global_query_chunks, attention=attention)
        finally:
            if writer is not None:
                writer.close()
        save_model(model, path)
        return "native-modernbert"
    export_with_torch(src, path)
    return "torch-onnx"
