"""The ``rerankrt`` command end to end (installed entry point)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from rerankrt.engine import Reranker
from rerankrt.engine.backends import onnxruntime_reads_attention_op


def _cli(*args, stdin=None):
    exe = shutil.which("rerankrt")
    cmd = [exe] if exe else [sys.executable, "-m", "rerankrt.engine.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, input=stdin, timeout=600)


def test_export_info_predict_rank(tmp_path, tiny_model):
    out = tmp_path / "art"
    done = _cli("export", tiny_model, "-o", out, "--precision", "fp32,int8", "--max-length", "256",
                "--tolerance", "int8:min_spearman=0.9,min_top10=0.7,max_rel_delta=0.25")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "parity" in done.stdout and "[6/6]" in done.stdout

    info = _cli("info", out)
    assert info.returncode == 0 and "int8" in info.stdout and "features" in info.stdout
    # what auto loads here: int8 leads wherever it passed its gate (the gate's tolerance above is loose)
    assert "auto here    int8 on " in info.stdout
    assert "attention matmul, sliding layers banded" in info.stdout  # the main graphs: every runtime reads them
    if onnxruntime_reads_attention_op():  # the export writes the onnxruntime form where it can verify it
        assert "+ model.int8.attention-op.onnx" in info.stdout and "for onnxruntime (CPU)" in info.stdout
    manifest = json.loads(_cli("info", out, "--json").stdout)["manifest"]
    assert manifest["tokenizer"]["max_length"] == 256

    pairs = [{"query": "river bridge", "document": "The bridge crosses the river."},
             {"query": "river bridge", "document": ""}]
    pred = _cli("predict", out, "--precision", "fp32", stdin="\n".join(json.dumps(p) for p in pairs))
    assert pred.returncode == 0, pred.stderr
    scores = [json.loads(line)["score"] for line in pred.stdout.splitlines()]
    expected = Reranker.from_pretrained(out, precision="fp32").predict([(p["query"], p["document"]) for p in pairs])
    np.testing.assert_allclose(scores, expected, atol=1e-5)

    ranked = _cli("rank", out, "--query", "river bridge", "--doc", "a", "--doc", "the river bridge", "--top-k", "1")
    assert ranked.returncode == 0 and len(ranked.stdout.splitlines()) == 1

    bench = _cli("bench", out, "-n", "40", "--passes", "1")
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)["pairs_per_s"] > 0


def test_cli_errors_are_one_line_not_tracebacks(tmp_path):
    missing = _cli("info", tmp_path / "missing")
    assert missing.returncode == 2 and missing.stderr.startswith("error:") and "Traceback" not in missing.stderr
    bad = _cli("predict", tmp_path, stdin="not json\n")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.parametrize(("value", "layers"), [("none", ()), ("0,-1", (0, -1)), ("3", (3,)), ("-2, 5", (-2, 5)),
                                               ("0.attn,-1", ("0.attn", -1)), ("-1.mlp, 2", ("-1.mlp", 2))])
def test_int8_fp32_layers_parses_to_what_export_receives(value, layers):
    from rerankrt.engine.cli import build_parser
    from rerankrt.export.passes.matmuls import KEEP_FP32_LAYERS

    assert build_parser().parse_args(["export", "model", "-o", "out", "--int8-fp32-layers", value]).int8_fp32_layers \
        == layers
    assert build_parser().parse_args(["export", "model", "-o", "out"]).int8_fp32_layers == KEEP_FP32_LAYERS


@pytest.mark.parametrize("value", ["first", "0;1", "1.5", "0.attention", "0.", "attn"])
def test_int8_fp32_layers_refuses_what_is_not_a_layer_list(value, capsys):
    from rerankrt.engine.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["export", "model", "-o", "out", "--int8-fp32-layers", value])
    assert exc.value.code == 2 and "--int8-fp32-layers" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["auto", "matmul"])
def test_attention_form_reaches_the_export(value, monkeypatch, tmp_path):
    """``rerankrt export --attention FORM`` hands FORM to ``export()`` (default auto)."""
    from rerankrt.engine import cli
    from rerankrt.export import pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "export", lambda *args, **kwargs: seen.update(kwargs))
    assert cli.main(["export", "model", "-o", str(tmp_path / "out"), "--attention", value]) == 0
    assert seen["attention"] == value
    assert cli.build_parser().parse_args(["export", "model", "-o", "out"]).attention == "auto"
