"""Banded sliding-window attention (issue 17): the blocked form is the reference's maths at every length.

Every check runs in both ways the graph writes attention (``matmul``: opset-17 ops; ``attention-op``:
opset 23's Attention and RotaryEmbedding, issue 16), each against the matmul form's n×n graph.

Two independent checks: against sentence-transformers (PyTorch, transformers' own ModernBERT with its
sliding-window mask) on the distilled 17m at ~512, 2k, 4k and 7,999 tokens, padded together in one
batch and one pair per batch; and against the full n×n form of the same graph builder on lengths
around the block edges (1, 63, 64, 65, 127, 128, 129, 191, 192, 193, 300), where an off-by-one in the
band, the rounding padding or the key masks would show.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import DISTILLED, OPENVINO_READS_OPSET23, SHARED, requires_attention_op

SCIFACT = SHARED / "data" / "scifact" / "abstracts.jsonl"
LONG_TARGETS = (512, 2048, 4096, 7999)


def _ort(model_bytes: bytes):
    import onnxruntime as ort

    from rerankrt.engine.backends import onnxruntime_reads_attention_op

    if b"RotaryEmbedding" in model_bytes and not onnxruntime_reads_attention_op():
        pytest.skip("this onnxruntime predates the attention-op form")

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return lambda ids, mask: session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def _openvino(model_bytes: bytes):
    ov = pytest.importorskip("openvino")
    if b"RotaryEmbedding" in model_bytes and not OPENVINO_READS_OPSET23:
        pytest.skip("this OpenVINO predates opset 23's Attention (2026.3)")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model_bytes), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2})
    return lambda ids, mask: np.asarray(compiled({"input_ids": ids, "attention_mask": mask})[0])


def _padded(lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), max(lengths)), 50283, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(100, 4000, n)
        ids[row, 0], ids[row, n - 1] = 50281, 50282
        mask[row, :n] = 1
    return ids, mask


# batch widths up to ONE_BLOCK_UP_TO (256) run as one block; wider ones in blocks of 64 (window/2)
ONE_BLOCK = [1, 2, 63, 64, 65, 127, 128, 129, 191, 192, 193, 256]
BLOCKS = [1, 64, 65, 129, 257, 319, 320, 321, 383, 384, 385, 600]


ATTENTION_FORMS = ["matmul", "attention-op"]


@pytest.mark.parametrize("attention", ATTENTION_FORMS)
@pytest.mark.parametrize("lengths", [ONE_BLOCK, BLOCKS], ids=["one-block", "blocks"])
@pytest.mark.parametrize("runtime", [_ort, _openvino], ids=["onnxruntime", "openvino"])
def test_banded_equals_full_around_block_edges(tiny_model, runtime, lengths, attention):
    """Same scores as the matmul form's n×n graph for lengths on and beside every block boundary, padded
    together, with the band (and, in the attention-op form, the n×n form too) written either way."""
    from rerankrt.export.graph import ONE_BLOCK_UP_TO, build_modernbert_graph
    from rerankrt.export.source import read_source

    src = read_source(str(tiny_model))
    assert src.config.get("local_attention", 128) == 128 and ONE_BLOCK_UP_TO == 256  # what the lists straddle
    ids, mask = _padded(lengths)
    full = runtime(build_modernbert_graph(src, local_attention="full").SerializeToString())
    banded = runtime(build_modernbert_graph(src, local_attention="banded", attention=attention).SerializeToString())
    expected = full(ids, mask)
    assert np.ptp(expected) > 0
    np.testing.assert_allclose(banded(ids, mask), expected, rtol=0, atol=2e-5)
    if attention != "matmul":
        full_op = runtime(build_modernbert_graph(src, local_attention="full", attention=attention).SerializeToString())
        np.testing.assert_allclose(full_op(ids, mask), expected, rtol=0, atol=2e-5)
    for row, n in enumerate(lengths[:4]):  # alone, unpadded: the rounding padding is the only padding
        np.testing.assert_allclose(banded(ids[row:row + 1, :n], mask[row:row + 1, :n]), expected[row:row + 1],
                                   rtol=0, atol=2e-5)


def test_banded_graph_has_no_n_by_n_tensor_in_sliding_layers(tiny_model):
    """The point of the form: past 256 tokens the sliding layers' attention probabilities are
    [B, h·blocks, 64, 192], never [B,h,S,S]; up to 256 tokens one block of the whole width."""
    import onnx
    import onnxruntime as ort

    from rerankrt.export.graph import ModernBertSpec, build_modernbert_graph
    from rerankrt.export.source import read_source

    src = read_source(str(tiny_model))
    spec = ModernBertSpec(src.config)
    model = build_modernbert_graph(src, local_attention="banded")
    probs = [n.output[0] for n in model.graph.node if n.op_type == "Softmax" and n.output[0].startswith("band_probs")]
    # every sliding layer but a CLS-only last one (its one query row needs no band)
    sliding = [i for i, kind in enumerate(spec.layer_types) if kind == "sliding_attention" and i < spec.layers - 1]
    assert sliding and len(probs) == len(sliding)
    assert not any(re.fullmatch(r"local_bias_\d+", out) for n in model.graph.node for out in n.output)
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in probs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    half = spec.window_half
    for width, expected in ((600, (2, spec.heads * -(-600 // half), half, 3 * half)),
                            (200, (2, spec.heads, 200, 200))):
        ids, mask = _padded([width, width // 2])
        for shape in (out.shape for out in session.run(probs, {"input_ids": ids, "attention_mask": mask})):
            assert shape == expected


# lengths around a patched chunking threshold of 40 tokens: 16 chunks of ⌈S/16⌉ rows past it, one chunk up to it
AROUND_THRESHOLD = [1, 2, 16, 17, 39, 40, 41, 47, 48, 49, 100, 257]


@pytest.mark.parametrize(("attention", "chunks"), [("matmul", 2), ("matmul", 3), ("matmul", 16), ("attention-op", 1),
                                                  ("attention-op", 2), ("attention-op", 3), ("attention-op", 16)])
@pytest.mark.parametrize("runtime", [_ort, _openvino], ids=["onnxruntime", "openvino"])
def test_chunked_global_queries_equal_all_at_once(tiny_model, monkeypatch, runtime, chunks, attention):
    """Global layers past the threshold score their queries chunk by chunk: the same scores as the matmul
    form with all rows at once, for lengths on and beside the threshold and the chunk edges, padded together
    and alone (the attention-op form runs the pieces behind an If, only past the threshold)."""
    from rerankrt.export import graph
    from rerankrt.export.source import read_source

    monkeypatch.setattr(graph, "CHUNK_QUERIES_FROM", 40)
    src = read_source(str(tiny_model))
    ids, mask = _padded(AROUND_THRESHOLD, seed=3)
    whole = runtime(graph.build_modernbert_graph(src, global_query_chunks=1).SerializeToString())
    chunked = runtime(graph.build_modernbert_graph(src, global_query_chunks=chunks,
                                                   attention=attention).SerializeToString())
    expected = whole(ids, mask)
    assert np.ptp(expected) > 0
    np.testing.assert_allclose(chunked(ids, mask), expected, rtol=0, atol=2e-5)
    for row, n in enumerate(AROUND_THRESHOLD):  # alone: the width is the row's own length
        np.testing.assert_allclose(chunked(ids[row:row + 1, :n], mask[row:row + 1, :n]), expected[row:row + 1],
                                   rtol=0, atol=2e-5)


def test_global_layers_hold_a_chunk_of_scores_at_a_time(tiny_model, monkeypatch):
    """The point of the chunks: past the threshold each global layer's probabilities are [B,h,⌈S/n⌉+…,S]
    pieces, never [B,h,S,S]; up to it one piece of S rows (the other pieces empty)."""
    import onnx
    import onnxruntime as ort

    from rerankrt.export import graph
    from rerankrt.export.source import read_source

    monkeypatch.setattr(graph, "CHUNK_QUERIES_FROM", 40)
    src = read_source(str(tiny_model))
    spec = graph.ModernBertSpec(src.config)
    model = graph.build_modernbert_graph(src, global_query_chunks=4)
    probs = [n.output[0] for n in model.graph.node if n.op_type == "Softmax" and n.output[0].startswith("chunk_probs")]
    full_rows = [i for i, kind in enumerate(spec.layer_types) if kind == "full_attention" and i < spec.layers - 1]
    assert full_rows and len(probs) == 4 * len(full_rows)
    whole = [n for n in model.graph.node if n.op_type == "Softmax" and n.output[0].startswith("probs")]
    assert len(whole) == 1  # only the CLS-only last layer attends in one piece (its one query row)
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in probs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for width, rows in ((41, [11, 11, 11, 11]), (100, [25, 25, 25, 28]), (40, [40, 0, 0, 0])):
        ids, mask = _padded([width, width // 2])
        shapes = [out.shape for out in session.run(probs[:4], {"input_ids": ids, "attention_mask": mask})]
        assert shapes == [(2, spec.heads, r, width) for r in rows]


@requires_attention_op
def test_attention_op_form_is_fused_ops_without_head_transposes(tiny_model):
    """What the attention-op form is: opset 23 / IR 11, Attention and RotaryEmbedding for q and k, no Softmax
    and no Transpose anywhere; each sliding and global layer an ``If`` whose short-batch branch is one Attention
    on q, k, v as they are (no Pad, Gather, Split, Concat or Slice copies) and whose long-batch branch is the
    band's blocks or the global layers' query chunks; the band's bias one [B·blocks, 1, 64, 192] tensor past
    256 tokens ([B, 1, S, S] up to it), shared by every head."""
    import collections

    import onnx
    import onnxruntime as ort

    from rerankrt.export import graph
    from rerankrt.export.onnx_builder import all_nodes
    from rerankrt.export.source import read_source

    src = read_source(str(tiny_model))
    spec = graph.ModernBertSpec(src.config)
    model = graph.build_modernbert_graph(src, attention="attention-op", global_query_chunks=4)
    assert model.ir_version == 11 and {o.domain: o.version for o in model.opset_import}[""] == 23
    ops = collections.Counter(n.op_type for n in all_nodes(model.graph))
    assert ops["Softmax"] == ops["Transpose"] == 0
    last = spec.layers - 1  # the CLS-only last layer: one Attention, RoPE on k only
    global_rows = [i for i, kind in enumerate(spec.layer_types) if kind == "full_attention" and i < last]
    sliding_rows = [i for i, kind in enumerate(spec.layer_types) if kind == "sliding_attention" and i < last]
    ifs = [n for n in model.graph.node if n.op_type == "If"]
    band_ifs = [n for n in ifs if n.name.startswith("n_band_attention")]
    global_ifs = [n for n in ifs if n.name.startswith("n_global_attention")]
    assert len(band_ifs) == len(sliding_rows) and len(global_ifs) == len(global_rows)
    assert len(ifs) == len(band_ifs) + len(global_ifs)
    assert ops["Attention"] == (4 + 1) * len(global_rows) + (1 + 1) * len(sliding_rows) + 1
    assert ops["RotaryEmbedding"] == 2 * (spec.layers - 1) + 1
    copies = {"Pad", "Gather", "Split", "Concat", "Slice", "Reshape"}
    for node in ifs:
        branches = {a.name: collections.Counter(n.op_type for n in a.g.node) for a in node.attribute}
        short = branches["else_branch"]  # the condition is "wider than the threshold"
        assert short["Attention"] == 1 and not copies & set(short), short
        long = branches["then_branch"]  # the band's blocks (one Attention over them) or the 4 query chunks
        band = node.name.startswith("n_band_attention")
        assert long["Attention"] == (1 if band else 4) and ("Gather" if band else "Split") in long
    bias = next(out for n in model.graph.node for out in n.output if out.startswith("band_bias"))
    model.graph.output.append(onnx.helper.make_tensor_value_info(bias, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    half = spec.window_half
    for width, expected in ((600, (2 * -(-600 // half), 1, half, 3 * half)), (200, (2, 1, 200, 200))):
        ids, mask = _padded([width, width // 2])
        assert session.run([bias], {"input_ids": ids, "attention_mask": mask})[0].shape == expected


def _long_pairs(tokenizer) -> list[tuple[str, str]]:
    """One query, documents of about 512, 2k, 4k and ≥ 7,999 tokens made of scifact abstracts."""
    if not SCIFACT.is_file():
        pytest.skip("../shared/data/scifact not present")
    abstracts = [json.loads(line)["text"] for line in SCIFACT.open(encoding="utf-8")][:600]
    query = "What is the role of inflammation in insulin resistance?"
    pairs, doc, i = [], "", 0
    for target in LONG_TARGETS:
        while len(tokenizer.encode(doc).ids) < target - 20:
            doc += (" " if doc else "") + abstracts[i]
            i += 1
        pairs.append((query, doc))
    return pairs


@pytest.fixture(scope="module")
def long_reference(distilled_artifact):
    """sentence-transformers' scores of the long pairs, all four padded into one batch, max_length 7,999."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import CrossEncoder
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(DISTILLED / "tokenizer.json"))
    tokenizer.no_truncation()  # the saved file may carry a truncation (and padding) of its own
    tokenizer.no_padding()
    pairs = _long_pairs(tokenizer)
    model = CrossEncoder(str(DISTILLED), device="cpu", max_length=7999)
    return pairs, np.asarray(model.predict(pairs, batch_size=len(pairs)), dtype=np.float32)


@pytest.mark.parametrize(("backend", "attention"), [("onnxruntime", "attention-op"), ("onnxruntime", "matmul"),
                                                  ("openvino", "matmul")])
def test_banded_graph_matches_sentence_transformers_on_long_documents(distilled_artifact, long_reference, monkeypatch,
                                                                     backend, attention):
    """Each graph a runtime loads: onnxruntime on a CPU the attention-op form (and, where it cannot, the main
    matmul graph), OpenVINO the matmul graph."""
    from rerankrt.engine import Reranker
    from rerankrt.engine import backends as backends_module

    if backend == "openvino":
        pytest.importorskip("openvino")
    if attention != "matmul" and not backends_module.onnxruntime_reads_attention_op():
        pytest.skip("this onnxruntime predates the attention-op form")
    if attention == "matmul":  # an onnxruntime older than 1.24 loads the main graph
        monkeypatch.setattr(backends_module, "onnxruntime_reads_attention_op", lambda: False)
    pairs, reference = long_reference
    manifest = json.loads((distilled_artifact / "manifest.json").read_text())
    assert manifest["graphs"]["fp32"]["local_attention"] == "banded"
    reranker = Reranker.from_pretrained(distilled_artifact, precision="fp32", backend=backend, max_length=7999)
    ids = reranker.encode(pairs).token_ids
    lengths = [len(t) for t in ids]  # documents grow an abstract (~300 tokens) at a time
    assert lengths[-1] == 7999 and all(t <= n < t + 600 for t, n in zip(LONG_TARGETS[:3], lengths[:3], strict=True))
    expected_file = manifest["graphs"]["fp32"]["file"] if attention == "matmul" else \
        manifest["graphs"]["fp32"]["forms"]["attention-op"]["file"]
    assert reranker.backend.describe()["file"] == expected_file
    one_per_batch = reranker.predict(pairs)  # the token budget puts each long pair in its own batch
    tolerance = 1e-4 * max(np.ptp(reference), 1.0)
    np.testing.assert_allclose(one_per_batch, reference, rtol=0, atol=tolerance)
    padded = reranker.backend.run(*_batch(ids, reranker.tokenizer.pad_id))[:, 0]  # all four in one batch
    np.testing.assert_allclose(padded, reference, rtol=0, atol=tolerance)


def _batch(token_ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(t) for t in token_ids)
    ids = np.full((len(token_ids), width), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, t in enumerate(token_ids):
        ids[row, :len(t)], mask[row, :len(t)] = t, 1
    return ids, mask


def test_the_gate_checks_fp32_at_long_lengths(distilled_artifact):
    """The export's parity gate scores fp32 at 512 … 7,999 tokens against PyTorch on each backend, records it,
    and its comparison fails a graph whose long scores are off (a shifted reference stands in for one)."""

    from rerankrt.engine.tokenize import PairTokenizer
    from rerankrt.export import calibration, parity

    manifest = json.loads((distilled_artifact / "manifest.json").read_text())
    long = manifest["parity"]["results"]["fp32"]["long_lengths"]
    assert long["lengths"] == [512, 2048, 4096, 7999] and long["passed"] and not long["skipped"]
    assert set(long["by_backend"]) >= {"onnxruntime"}
    assert all(r["max_rel_delta"] <= 1e-4 for r in long["by_backend"].values())

    tokenizer = PairTokenizer(DISTILLED / "tokenizer.json", 7999, 50283, 50281, 50282)
    check = calibration.long_check(tokenizer, flops_per_token=2.6e7, heads=4)
    check = calibration.LongCheck(check.token_ids[:2], [])  # 512 and 2,048 tokens: quick
    graph = distilled_artifact / manifest["graphs"]["fp32"]["file"]
    right, _ = parity.score_graph(graph, "fp32", "onnxruntime", check.token_ids, 50283)
    tolerance = parity.DEFAULT_TOLERANCES["fp32"]
    assert parity.check_long_lengths(graph, check, 50283, right[:, 0], 10.0, tolerance)["passed"]
    assert not parity.check_long_lengths(graph, check, 50283, right[:, 0] + 0.01, 10.0, tolerance)["passed"]


def test_the_long_check_takes_the_lengths_asked_for(tiny_artifact):
    """``export(long_lengths=…)``: the fixtures ask for 512 and 2,048 (conftest), and that is what their gate ran."""
    from rerankrt.engine.artifact import load_artifact
    from rerankrt.engine.tokenize import PairTokenizer
    from rerankrt.export import calibration

    from conftest import FIXTURE_LONG_LENGTHS

    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    assert manifest["parity"]["results"]["fp32"]["long_lengths"]["lengths"] == list(FIXTURE_LONG_LENGTHS)
    tokenizer = PairTokenizer.for_artifact(load_artifact(tiny_artifact))
    assert [len(t) for t in calibration.long_check(tokenizer, 1e6, 4, (300,)).token_ids] == [300]
    assert not calibration.long_check(tokenizer, 1e6, 4, ()).token_ids


@requires_attention_op
def test_the_gate_checks_the_attention_op_forms_on_onnxruntime(distilled_artifact):
    """An export writes fp32 and int8 also in the attention-op form (fp16, for GPUs, only in the main one), and
    the gate verified each against PyTorch on onnxruntime, the runtime that loads them — fp32 at 512 … 7,999
    tokens too (chunked global queries, banded sliding layers)."""
    manifest = json.loads((distilled_artifact / "manifest.json").read_text())
    graphs, results = manifest["graphs"], manifest["parity"]["results"]
    assert {p for p, g in graphs.items() if "forms" in g} == {"fp32", "int8"}
    assert all(g["attention"] == "matmul" for g in graphs.values())
    for precision in ("fp32", "int8"):
        form = graphs[precision]["forms"]["attention-op"]
        assert form["file"] == f"model.{precision}.attention-op.onnx" and len(form["sha256"]) == 64
        report = results[precision]["forms"]["attention-op"]
        assert report["passed"] and report["backend"] == "onnxruntime" and "by_backend" not in report
    long = results["fp32"]["forms"]["attention-op"]["long_lengths"]
    assert long["lengths"] == list(LONG_TARGETS) and long["passed"] and set(long["by_backend"]) == {"onnxruntime"}
    assert results["fp32"]["forms"]["attention-op"]["max_rel_delta"] < 1e-5  # the reference's maths, to rounding
