"""Graphs stored with external data (the form of every graph past protobuf's 2 GB, e.g. the 1b's), end to end.

The 1b itself is exported in ``test_every_size.py`` (slow); here the tiny fixture is forced into the
external form at every stage, so CI checks the same code paths in seconds: the streamed builder,
both int8 quantizers, the fp16 converter and the embedding pass on external graphs, the artifact's
listing and checking of data files, and both backends loading them, against sentence-transformers.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from rerankrt.engine import Reranker
from rerankrt.engine.errors import ArtifactError, InsufficientMemoryError

from conftest import FIXTURE_LONG_LENGTHS, random_weight_tolerances, realistic_pairs


@pytest.fixture(scope="module")
def external_artifact(tmp_path_factory, tiny_model):
    import rerankrt.export.external_data as external_data
    import rerankrt.export.graph as graph
    from rerankrt.export.pipeline import export

    patch = pytest.MonkeyPatch()
    patch.setattr(graph, "EXTERNAL_DATA_FROM_BYTES", 0)  # the builder streams its weights out
    patch.setattr(external_data, "EXTERNAL_DATA_FROM_BYTES", 0)  # and every later stage saves that way
    try:
        return export(str(tiny_model), tmp_path_factory.mktemp("ext") / "artifact",
                      precisions=["fp32", "fp16", "int8"], tolerances=random_weight_tolerances(),
                      long_lengths=FIXTURE_LONG_LENGTHS, log=None)
    finally:
        patch.undo()


def test_every_graph_lists_and_ships_its_data_file(external_artifact):
    manifest = json.loads((external_artifact / "manifest.json").read_text())
    for precision, info in manifest["graphs"].items():
        data = info["data_files"]
        assert [d["file"] for d in data] == [info["file"] + ".data"], precision
        path = external_artifact / data[0]["file"]
        assert path.stat().st_size == data[0]["size_bytes"] > 0
        # the graph file itself holds no weights: it is small next to its data
        assert (external_artifact / info["file"]).stat().st_size < path.stat().st_size
    listed = {f for info in manifest["graphs"].values() for f in [info["file"], info["data_files"][0]["file"]]}
    on_disk = {p.name for p in external_artifact.iterdir()} - {"manifest.json", "tokenizer.json"}
    assert on_disk == listed  # no stale or temporary files shipped


def test_external_graphs_score_like_sentence_transformers(external_artifact, tiny_model, tiny_artifact):
    from sentence_transformers import CrossEncoder

    pairs = realistic_pairs(2, 8)
    reference = CrossEncoder(str(tiny_model), device="cpu").predict(pairs, activation_fn=None, batch_size=16)
    span = float(np.ptp(reference))
    fp32 = Reranker.from_pretrained(external_artifact, precision="fp32", backend="onnxruntime")
    assert np.abs(fp32.predict(pairs, activation_fn=None) - reference).max() <= 1e-4 * span
    inline = Reranker.from_pretrained(tiny_artifact, precision="int8", backend="onnxruntime")
    external = Reranker.from_pretrained(external_artifact, precision="int8", backend="onnxruntime")
    # the same quantization on the same weights, stored the other way: the same scores
    np.testing.assert_allclose(external.predict(pairs, activation_fn=None), inline.predict(pairs, activation_fn=None),
                               rtol=0, atol=1e-3 * span)


def test_openvino_loads_external_graphs(external_artifact, tiny_model):
    pytest.importorskip("openvino")
    pairs = realistic_pairs(1, 6)
    ort = Reranker.from_pretrained(external_artifact, precision="fp32", backend="onnxruntime")
    ov = Reranker.from_pretrained(external_artifact, precision="fp32", backend="openvino")
    reference = ort.predict(pairs, activation_fn=None)
    assert np.abs(ov.predict(pairs, activation_fn=None) - reference).max() <= 1e-3 * float(np.ptp(reference))


@pytest.mark.parametrize("damage,match", [
    ("missing", "external data file missing"),
    ("truncated", "truncated or was replaced"),
    ("altered", "does not match its sha256"),
])
def test_a_damaged_data_file_is_refused_like_a_graph(external_artifact, tmp_path, damage, match):
    broken = tmp_path / "broken"
    shutil.copytree(external_artifact, broken)
    data = broken / "model.fp32.onnx.data"
    if damage == "missing":
        data.unlink()
    elif damage == "truncated":
        data.write_bytes(data.read_bytes()[:-4096])
    else:
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=match):
        Reranker.from_pretrained(broken, precision="fp32", backend="onnxruntime")


def test_a_load_or_export_that_cannot_fit_is_refused_before_it_starts(monkeypatch, tmp_path, tiny_model,
                                                                      tiny_artifact):
    import rerankrt.engine.memory as memory
    from rerankrt.export.pipeline import export

    monkeypatch.setattr(memory, "available_bytes", lambda: 50 << 20)  # a 50 MiB machine
    with pytest.raises(InsufficientMemoryError, match="GiB available") as info:
        Reranker.from_pretrained(tiny_artifact, precision="fp32", backend="onnxruntime")
    assert info.value.needed_bytes > info.value.available_bytes == 50 << 20
    with pytest.raises(InsufficientMemoryError, match="exporting"):
        export(str(tiny_model), tmp_path / "out", precisions=["fp32"], long_lengths=FIXTURE_LONG_LENGTHS, log=None)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_gate_scores_fewer_pairs_for_bigger_models(tiny_artifact):
    from rerankrt.engine.tokenize import PairTokenizer
    from rerankrt.export.calibration import GATE_FLOPS_PER_PASS, GATE_LADDER, gate_size

    spec = json.loads((tiny_artifact / "manifest.json").read_text())["tokenizer"]
    tokenizer = PairTokenizer(tiny_artifact / "tokenizer.json", 7999, spec["pad_id"], spec["cls_id"], spec["sep_id"])
    small = gate_size(tokenizer, 2 * 4e6)  # the 17m: ~4 M parameters besides the embedding table
    big = gate_size(tokenizer, 2 * 0.94e9)  # the 1b
    assert small.pairs == 128
    smallest = GATE_LADDER[-1]
    assert big.pairs < small.pairs and big.pairs >= 10
    # within the budget, or the smallest set when even that exceeds it (the floor: never fewer pairs)
    assert big.flops_per_pass <= GATE_FLOPS_PER_PASS or (big.queries, big.doc_sentences) == smallest
    assert max(big.doc_sentences) >= 25  # still past the 128-token window and 512 tokens
    assert gate_size(tokenizer, 2 * 4e6, max_pairs=32).pairs <= 32
