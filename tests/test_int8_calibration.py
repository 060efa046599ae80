"""Static int8's activation ranges, computed with the weights loaded once (``passes/minmax_ranges.py``),
held to onnxruntime's own calibrator: the same tensors, the same ranges, and the same int8 graph.

The independent implementation here is onnxruntime's ``MinMaxCalibrater`` / ``quantize_static``
with a data reader (what the export ran before); nothing is compared to values copied from the
code under test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from rerankrt.engine.artifact import graph_file_name
from rerankrt.engine.tokenize import PairTokenizer
from rerankrt.export import calibration
from rerankrt.export.passes import minmax_ranges
from rerankrt.export.passes.int8_static import OP_TYPE, _BatchReader, _feeds, quantize_int8_static

pytestmark = pytest.mark.skipif(not minmax_ranges.cache_supported(),
                                reason="this onnxruntime's quantize_static takes no calibration cache")


@pytest.fixture(scope="module")
def batches(tiny_artifact) -> list[tuple]:
    tokenizer = PairTokenizer(tiny_artifact / "tokenizer.json", 512, 50283, 50281, 50282)
    made = calibration.quantization_batches(tokenizer)
    assert len(made) >= 3 and len({ids.shape[1] for ids, _ in made}) > 1  # several widths, padded rows
    return made


def _onnxruntime_ranges(model_path: Path, batches, tmp_path: Path) -> dict[str, tuple[float, float]]:
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(model_path, [OP_TYPE], augmented_model_path=str(tmp_path / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax)
    calibrator.collect_data(_BatchReader(batches))
    return {name: (float(np.asarray(td.range_value[0]).item()), float(np.asarray(td.range_value[1]).item()))
            for name, td in calibrator.compute_data().data.items()}


def test_ranges_equal_onnxruntime_calibrator(tiny_artifact, batches, tmp_path):
    fp32 = tiny_artifact / graph_file_name("fp32")
    expected = _onnxruntime_ranges(fp32, batches, tmp_path)
    got = minmax_ranges.minmax_ranges(fp32, _feeds(batches), (OP_TYPE,))
    got = _floats(got)
    assert set(got) == set(expected) and len(got) > 20
    assert got == expected  # same session kind, same reductions: bit for bit
    assert any(lo < 0 < hi for lo, hi in got.values())  # real activations, not a constant


def test_int8_graph_equals_the_one_onnxruntime_calibrates(tiny_artifact, batches, tmp_path):
    """The quantized graph (scales, zero points, int8 weights, nodes) is the one the library's own path gives."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32 = tiny_artifact / graph_file_name("fp32")
    ours = tmp_path / "ours.onnx"
    report = quantize_int8_static(fp32, ours, 2, batches)
    assert "minmax_ranges" in report["calibrator"]
    nodes = _selected(fp32)
    theirs = tmp_path / "theirs.onnx"
    quantize_static(str(fp32), str(theirs), _BatchReader(batches), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    reduce_range=True, nodes_to_quantize=nodes, op_types_to_quantize=[OP_TYPE],
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True,
                                   "OpTypesToExcludeOutputQuantization": [OP_TYPE]})
    a, b = onnx.load(str(ours)), onnx.load(str(theirs))
    assert [(n.op_type, list(n.input), list(n.output)) for n in a.graph.node] == \
           [(n.op_type, list(n.input), list(n.output)) for n in b.graph.node]
    inits_a = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    inits_b = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert set(inits_a) == set(inits_b)
    for name, value in inits_b.items():
        np.testing.assert_array_equal(inits_a[name], value, err_msg=name)
    assert sum(n.op_type == "QuantizeLinear" for n in a.graph.node) > 0


def _selected(fp32: Path) -> list[str]:
    from rerankrt.export.passes.matmuls import select_nodes

    return select_nodes(onnx.load(str(fp32), load_external_data=False), 2)


def test_external_graph_calibrates_in_place_and_leaves_nothing_behind(tiny_artifact, batches, tmp_path):
    """A graph with external data: the augmented copy resolves the same data file, and is removed."""
    from rerankrt.export.external_data import is_external, save_model

    inline = tiny_artifact / graph_file_name("fp32")
    folder = tmp_path / "external"
    folder.mkdir()
    external = folder / inline.name
    save_model(onnx.load(str(inline)), external, external=True)
    assert is_external(external)
    before = sorted(p.name for p in folder.iterdir())
    ranges = minmax_ranges.minmax_ranges(external, _feeds(batches), (OP_TYPE,))
    assert sorted(p.name for p in folder.iterdir()) == before
    reference = minmax_ranges.minmax_ranges(inline, _feeds(batches), (OP_TYPE,))
    assert _floats(ranges) == _floats(reference)


def _floats(tensors_data) -> dict[str, tuple[float, float]]:
    return {name: (float(td.range_value[0].item()), float(td.range_value[1].item()))
            for name, td in tensors_data.data.items()}


def test_no_batches_is_an_error(tiny_artifact):
    with pytest.raises(ValueError, match="at least one calibration batch"):
        minmax_ranges.minmax_ranges(tiny_artifact / graph_file_name("fp32"), [], (OP_TYPE,))


def test_export_reports_the_calibrator(tiny_artifact):
    import json

    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    assert "minmax_ranges" in json.dumps(manifest["graphs"]["int8"])
