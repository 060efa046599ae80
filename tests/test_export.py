"""Export stage: supported layouts, refusal of the rest, the parity gate, and safe writing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from rerankrt.engine import ModelDownloadError, ParityError, UnsupportedModelError
from rerankrt.export.parity import Tolerance
from rerankrt.export.pipeline import export
from rerankrt.export.source import read_source

from conftest import FIXTURE_LONG_LENGTHS


def test_source_reads_the_modular_ettin_layout(tiny_model):
    src = read_source(str(tiny_model))
    assert src.layout == "modular" and src.pooling == "cls" and src.activation == "identity"
    assert [h.kind for h in src.head] == ["dense", "layernorm", "dense"]
    assert src.head[0].activation == "gelu" and src.head[0].bias is None
    assert src.max_length == 7999 and src.num_labels == 1
    assert "model.safetensors" in src.file_hashes


def test_manifest_records_what_the_runtime_needs(tiny_artifact):
    m = json.loads((tiny_artifact / "manifest.json").read_text())
    assert m["tokenizer"]["max_length"] == 7999
    assert m["tokenizer"]["truncation"] == "longest_first"
    assert (m["tokenizer"]["pad_id"], m["tokenizer"]["cls_id"], m["tokenizer"]["sep_id"]) == (50283, 50281, 50282)
    assert m["activation"] == "identity"
    assert set(m["graphs"]) == {"fp32", "fp16", "int8"}
    for precision, report in m["parity"]["results"].items():
        assert {"max_abs_delta", "spearman", "top10_agreement", "passed"} <= set(report), precision
    assert m["parity"]["results"]["fp32"]["max_rel_delta"] < 1e-4
    assert "torch" in m["export"]["versions"] and "features" in m["export"]["cpu"]
    assert m["source"]["files_sha256"]["model.safetensors"]


def test_graph_inputs_outputs_and_dynamic_axes(tiny_artifact):
    model = onnx.load(str(tiny_artifact / "model.fp32.onnx"))
    inputs = {i.name: i for i in model.graph.input}
    assert set(inputs) == {"input_ids", "attention_mask"}
    for i in inputs.values():
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT64
        dims = [d.dim_param for d in i.type.tensor_type.shape.dim]
        assert dims == ["batch", "sequence"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert {o.domain for o in model.graph.node} <= {"", "ai.onnx"}  # standard ops only


def test_unsupported_module_is_named(tmp_path, tiny_model):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    modules = json.loads((broken / "modules.json").read_text())
    modules[2]["type"] = "sentence_transformers.models.Normalize"
    (broken / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedModelError, match="Normalize"):
        read_source(str(broken))


def test_non_crossencoder_directory_is_refused(tmp_path, tiny_model):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    (plain / "modules.json").unlink()
    with pytest.raises(UnsupportedModelError, match="neither a modular CrossEncoder"):
        read_source(str(plain))


def test_missing_tokenizer_in_source(tmp_path, tiny_model):
    src = tmp_path / "notok"
    shutil.copytree(tiny_model, src)
    (src / "tokenizer.json").unlink()
    with pytest.raises(UnsupportedModelError, match="tokenizer.json"):
        read_source(str(src))


def test_hub_download_failure_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelDownloadError, match="cross-encoder/ettin-reranker-17m-v1.*local directory"):
        export("cross-encoder/ettin-reranker-17m-v1", tmp_path / "out", log=None)
    with pytest.raises(ModelDownloadError, match="no such directory"):
        export("no/such/thing/here", tmp_path / "out", log=None)
    assert not (tmp_path / "out").exists()


def test_parity_failure_writes_nothing_and_reports(tmp_path, tiny_model):
    impossible = {"int8": Tolerance(max_rel_delta=1e-9, min_spearman=1.0, min_top10=1.0)}
    out = tmp_path / "art"
    with pytest.raises(ParityError, match="int8") as info:
        export(str(tiny_model), out, precisions=["fp32", "int8"], tolerances=impossible,
               long_lengths=FIXTURE_LONG_LENGTHS, log=None)
    assert not info.value.report["int8"]["passed"] and info.value.report["fp32"]["passed"]
    assert not out.exists()
    assert not list(tmp_path.glob(".art.staging-*"))  # no staging debris
    export(str(tiny_model), out, precisions=["fp32", "int8"], tolerances=impossible, allow_parity_failure=True,
           long_lengths=FIXTURE_LONG_LENGTHS, log=None)
    m = json.loads((out / "manifest.json").read_text())
    assert m["parity"]["allowed_failures"] and not m["parity"]["results"]["int8"]["passed"]


def test_existing_output_is_never_lost(tmp_path, tiny_model):
    out = tmp_path / "art"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(Exception, match="overwrite"):
        export(str(tiny_model), out, precisions=["fp32"], long_lengths=FIXTURE_LONG_LENGTHS, log=None)
    assert (out / "precious.txt").read_text() == "keep me"
    # a failing overwrite leaves the old directory as it was
    with pytest.raises(ParityError):
        export(str(tiny_model), out, precisions=["fp32"], overwrite=True, long_lengths=FIXTURE_LONG_LENGTHS, log=None,
               tolerances={"fp32": Tolerance(max_rel_delta=0.0, min_spearman=1.1, min_top10=1.0)})
    assert (out / "precious.txt").read_text() == "keep me"


def test_user_calibration_file(tmp_path, tiny_model):
    cal = tmp_path / "cal.jsonl"
    cal.write_text("\n".join(json.dumps({"query": f"q{i % 3}", "document": "river " * (5 + 40 * i)})
                             for i in range(12)) + "\n")
    out = export(str(tiny_model), tmp_path / "art", precisions=["fp32"], calibration_file=cal,
                 long_lengths=FIXTURE_LONG_LENGTHS, log=None)
    m = json.loads((out / "manifest.json").read_text())
    assert m["parity"]["calibration"]["pairs"] == 12 and m["parity"]["calibration"]["groups"] == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        export(str(tiny_model), tmp_path / "art2", precisions=["fp32"], calibration_file=bad,
               long_lengths=FIXTURE_LONG_LENGTHS, log=None)


def test_mean_pooling_modular_model(tmp_path, local_tokenizer):
    from sentence_transformers import CrossEncoder

    from rerankrt.engine import Reranker

    from builders import make_ettin_fixture

    model = make_ettin_fixture(tmp_path / "mean", "tiny", tokenizer_file=local_tokenizer, pooling="mean",
                               initializer_range=0.1, max_length=256)
    art = export(str(model), tmp_path / "mean-art", precisions=["fp32"], long_lengths=FIXTURE_LONG_LENGTHS, log=None)
    pairs = [("a query", "river " * n) for n in (1, 10, 100, 400)]
    ref = CrossEncoder(str(model), device="cpu").predict(pairs)
    ours = Reranker.from_pretrained(art).predict(pairs)
    assert np.abs(ref - ours).max() <= 1e-4 * (ref.max() - ref.min())


def test_both_rope_forms_give_the_same_scores(tmp_path, tiny_model):
    """The rotate_half form (default, fused by OpenVINO) and the half-table form are the same maths."""
    import onnxruntime as ort

    from rerankrt.export.graph import ROPE_FORMS, build_modernbert_graph, save_model

    src = read_source(str(tiny_model))
    rng = np.random.default_rng(0)
    lengths = [5, 60, 140, 300]
    ids = np.full((len(lengths), max(lengths)), 50283, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(100, 4000, n)
        mask[row, :n] = 1
    outs = []
    for form in ROPE_FORMS:
        path = tmp_path / f"{form}.onnx"
        save_model(build_modernbert_graph(src, rope_form=form), path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs.append(session.run(None, {"input_ids": ids, "attention_mask": mask})[0])
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-5)
    assert np.ptp(outs[0]) > 0


def _int8_weight_blocks(graph_path) -> set[tuple[int, str]]:
    """(layer, block) of every int8 weight in a graph: DequantizeLinear nodes reading a ``layers.N.attn|mlp.``
    initializer."""
    import re

    model = onnx.load(str(graph_path), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    return {(int(m.group(1)), m.group(2)) for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in weights
            for m in [re.match(r"layers\.(\d+)\.(attn|mlp)\.", n.input[0])] if m}


def test_fp32_entries_are_layers_or_blocks_and_a_layer_absorbs_its_blocks():
    """Entries are normalised so the manifest names the same kept weights one way."""
    from rerankrt.export.passes.matmuls import fp32_layers, parse_fp32_entry

    assert fp32_layers(7, ("0.attn", -1)) == ["0.attn", 6]
    assert fp32_layers(7, (0, "0.attn", "-1.mlp", "6.attn", "5.attn")) == [0, "5.attn", 6]
    assert fp32_layers(7, ("-1.mlp",)) == ["6.mlp"]  # one block alone stays a block
    assert fp32_layers(7, ("0.attn", "0.mlp")) == [0]  # both blocks are the whole layer: one way to say it
    assert fp32_layers(7, ()) == [] and fp32_layers(0, ("0.attn",)) == []  # layers unknown: nothing to keep
    for bad in ("0.ffn", "first", "1.5", "", True):
        with pytest.raises(ValueError):
            parse_fp32_entry(bad)


def test_int8_fp32_layers_chooses_which_layers_stay_fp32(tmp_path, tiny_model, tiny_artifact):
    """Whole layers or one block of a layer stay fp32; by default the first layer's attention projections and
    the last layer (the first layer's MLP is int8)."""
    from conftest import random_weight_tolerances

    layers = int(read_source(str(tiny_model)).config["num_hidden_layers"])
    for wrong, message in (((0, layers), "out of range"), ((f"{layers}.mlp",), "out of range"),
                           (("0.ffn",), "attn")):  # refused before anything is built
        with pytest.raises(ValueError, match=message):
            export(str(tiny_model), tmp_path / "bad", precisions=["fp32", "int8"], int8_fp32_layers=wrong, log=None)
    assert not (tmp_path / "bad").exists()

    out = export(str(tiny_model), tmp_path / "every", precisions=["fp32", "int8"], int8_fp32_layers=(),
                 long_lengths=FIXTURE_LONG_LENGTHS, tolerances=random_weight_tolerances(), allow_parity_failure=True,
                 log=None)
    every = json.loads((out / "manifest.json").read_text())["graphs"]["int8"]
    default = json.loads((tiny_artifact / "manifest.json").read_text())["graphs"]["int8"]
    assert every["fp32_layers"] == [] and default["fp32_layers"] == ["0.attn", layers - 1]
    blocks = {(layer, block) for layer in range(layers) for block in ("attn", "mlp")}
    assert _int8_weight_blocks(out / every["file"]) == blocks
    kept_by_default = {(0, "attn"), (layers - 1, "attn"), (layers - 1, "mlp")}
    assert _int8_weight_blocks(tiny_artifact / default["file"]) == blocks - kept_by_default
    for form in default.get("forms", {}).values():  # the attention-op int8 graph: the same blocks
        assert _int8_weight_blocks(tiny_artifact / form["file"]) == blocks - kept_by_default
    assert every["quantized_matmuls"] > default["quantized_matmuls"]


@pytest.mark.parametrize(("attention", "precisions", "method", "external", "expected"), [
    ("auto", ["fp32"], "static", False, ["fp32"]),
    ("auto", ["fp32", "fp16", "int8"], "static", False, ["fp32", "int8"]),
    ("auto", ["fp32", "int8"], "dynamic", False, ["fp32", "int8"]),
    ("auto", ["fp32", "bf16", "int8"], "symmetric", False, ["fp32"]),  # symmetric int8 is TensorRT's form
    ("auto", ["fp32", "int8"], "static", True, []),  # weights past 1.5 GB: no second copy
    ("matmul", ["fp32", "int8"], "static", False, [])])
def test_which_precisions_get_the_attention_op_form(attention, precisions, method, external, expected, monkeypatch):
    """fp32 and the CPU int8 forms get the onnxruntime form beside the main graphs; TensorRT's int8, fp16 and
    bf16 (GPU, OpenVINO) do not, nor big models, nor anything when asked for the matmul form only."""
    from rerankrt.export import pipeline
    from rerankrt.export.pipeline import attention_op_precisions

    monkeypatch.setattr(pipeline, "onnxruntime_reads_attention_op", lambda: True)  # the rule, not this install
    got, why = attention_op_precisions(attention, precisions, method, "native-modernbert", external)
    assert got == expected and (bool(why) == (external and attention == "auto"))
    assert attention_op_precisions(attention, precisions, method, "torch-onnx", external)[0] == []


def test_an_onnxruntime_that_cannot_run_the_form_does_not_get_it_written(monkeypatch):
    from rerankrt.export import pipeline

    monkeypatch.setattr(pipeline, "onnxruntime_reads_attention_op", lambda: False)
    got, why = pipeline.attention_op_precisions("auto", ["fp32", "int8"], "static", "native-modernbert", False)
    assert got == [] and "1.24" in why


def test_unknown_attention_choice_is_refused_up_front(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="attention must be one of"):
        export(str(tiny_model), tmp_path / "out", attention="flash", log=None)
    assert not (tmp_path / "out").exists()


def test_a_form_that_fails_its_gate_is_dropped_not_loaded_and_not_fatal(tmp_path):
    """An extra form is optional: failing its gate removes it (file and entry; its report says dropped), keeps the
    main graph and does not fail the export — even --allow-parity-failure does not keep it."""
    from rerankrt.export import parity
    from rerankrt.export.pipeline import drop_failed_forms

    for name in ("model.fp32.attention-op.onnx", "model.int8.attention-op.onnx"):
        (tmp_path / name).write_bytes(b"graph")
    graphs = {"fp32": {"file": "model.fp32.onnx", "forms": {"attention-op": {"file": "model.fp32.attention-op.onnx"}}},
              "int8": {"file": "model.int8.onnx", "forms": {"attention-op": {"file": "model.int8.attention-op.onnx"}}}}
    ok = {"passed": True, "failures": [], "max_abs_delta": 0.0, "max_rel_delta": 0.0, "spearman": 1.0,
          "top10_agreement": 1.0}
    bad = {**ok, "passed": False, "failures": ["spearman 0.9 < 0.995"], "spearman": 0.9}
    reports = {"fp32": {**ok, "forms": {"attention-op": dict(ok)}}, "int8": {**ok, "forms": {"attention-op": bad}}}
    lines = drop_failed_forms(graphs, reports, tmp_path)
    assert len(lines) == 1 and "int8 attention-op form dropped" in lines[0] and "spearman" in lines[0]
    assert "forms" not in graphs["int8"] and graphs["fp32"]["forms"]["attention-op"]
    assert not (tmp_path / "model.int8.attention-op.onnx").exists()
    assert (tmp_path / "model.fp32.attention-op.onnx").exists()
    assert reports["int8"]["forms"]["attention-op"]["dropped"]
    parity.enforce(reports)  # the main graphs passed: no ParityError
    assert "form dropped" in parity.format_report(reports)
