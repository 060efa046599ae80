"""The CUDA execution provider on real artifacts (``python -m pytest -m gpu``).

Every test here is marked ``gpu`` and skips — it never errors — where onnxruntime has no usable
``CUDAExecutionProvider``: a CPU build (CI, this project's machines) or a GPU build that cannot load
its CUDA libraries or find a GPU. ``benchmarks/gpu/kit.py`` runs them on a device machine with
onnxruntime-gpu carried there (``benchmarks/gpu/README.md``). Each test runs on the tiny random-weight
artifact (always built) and on the distilled 17m (``distilled_artifact``; ``RERANKRT_DISTILLED`` points
the suite at a copy of the model where ``../shared`` is absent, as on the device).

Tolerances: fp16 on CUDA is held to the fp16 tolerance the artifact's own parity gate used on the CPU
(recorded in its manifest: the default ``max |Δ|/range ≤ 1e-2, Spearman ≥ 0.999, top-10 ≥ 0.95`` for the
distilled model, the suite's random-weight ones for the tiny model). IO binding and CUDA graphs change
where tensors live and how kernels are launched, not the arithmetic, so their scores are held to the plain
CUDA run ten times tighter than fp16's tolerance.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from conftest import DISTILLED, realistic_pairs

CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
# The CUDA EP by name: onnxruntime-gpu also lists the TensorRT EP, whose libraries a machine may lack
# (the device machine has none); test_default_cuda_load_starts_a_gpu_provider checks the load without names.
CUDA_PROVIDERS = [CUDA, "CPUExecutionProvider"]


@cache
def cuda_unusable() -> str | None:
    """Why the CUDA execution provider cannot run here, or None when a session really got it."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return f"onnxruntime is not importable: {exc}"
    available = ort.get_available_providers()
    if CUDA not in available:
        return (f"onnxruntime {ort.__version__} has no {CUDA} (available: {available}); "
                "install onnxruntime-gpu (benchmarks/gpu/README.md)")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "cuda_probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=[CUDA, "CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any failure to create the session means: skip
        return f"a {CUDA} session failed: {str(exc).splitlines()[0]}"
    if session.get_providers()[0] != CUDA:  # onnxruntime falls back to the CPU when the EP cannot load
        return (f"{CUDA} is compiled in but did not load (no GPU, driver or CUDA/cuDNN libraries?); the session "
                f"got {session.get_providers()}")
    return None


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(cuda_unusable() is not None, reason=cuda_unusable() or "")]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    artifact: Path
    source: Path  # the CrossEncoder the artifact was exported from (the PyTorch reference)


@pytest.fixture(params=["tiny", "distilled"])
def case(request) -> Case:
    if request.param == "tiny":
        return Case("tiny", request.getfixturevalue("tiny_artifact"), request.getfixturevalue("tiny_model"))
    return Case("distilled", request.getfixturevalue("distilled_artifact"), DISTILLED)


def fp16_tolerance(artifact_dir: Path):
    """The fp16 tolerance the artifact's parity gate used on the CPU (from its manifest)."""
    from rerankrt.engine.agreement import Tolerance
    from rerankrt.engine.artifact import load_artifact

    return Tolerance(**load_artifact(artifact_dir).manifest["parity"]["results"]["fp16"]["tolerance"])


def cuda_reranker(artifact_dir: Path, options: dict | None = None):
    from rerankrt.engine import Reranker

    return Reranker.from_pretrained(artifact_dir, precision="fp16", backend="onnxruntime", device="cuda",
                                    providers=CUDA_PROVIDERS, backend_options=options)


def pairs_and_groups() -> tuple[list[tuple[str, str]], list[int]]:
    n_docs = 12
    pairs = realistic_pairs(n_queries=6, n_docs=n_docs)
    return pairs, [i // n_docs for i in range(len(pairs))]


def test_cuda_ep_loads_the_artifact(case):
    reranker = cuda_reranker(case.artifact)
    described = reranker.backend.describe()
    assert described["providers"][0] == CUDA, described
    assert reranker.precision == "fp16"
    scores = reranker.predict([("when was the bridge built", "The bridge opened in 1821."),
                               ("when was the bridge built", "Cats sleep a lot.")])
    assert scores.shape == (2,) and np.isfinite(scores).all()


def test_fp16_on_cuda_matches_fp32_on_cpu(case):
    from rerankrt.engine import Reranker
    from rerankrt.engine.agreement import compare

    pairs, groups = pairs_and_groups()
    cpu = Reranker.from_pretrained(case.artifact, precision="fp32", backend="onnxruntime", device="cpu").predict(pairs)
    gpu = cuda_reranker(case.artifact).predict(pairs)
    report = compare(cpu, gpu, groups, fp16_tolerance(case.artifact))
    assert report["passed"], report


def test_cuda_graph_is_refused_with_the_reason(case):
    """onnxruntime captures a CUDA graph only when every node runs on the CUDA EP; it keeps these graphs' shape
    arithmetic on the CPU (measured on an H200: gpu-20261204-1138), so ``cuda_graph`` is refused at load,
    with what to use instead, never run half-captured."""
    from rerankrt.engine.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="graph capture needs every node on the CUDA EP"):
        cuda_reranker(case.artifact, {"io_binding": True, "cuda_graph": True})


@pytest.mark.parametrize("options", [{"io_binding": False, "cuda_graph": False}, {"io_binding": True}],
                         ids=["plain-explicit", "io_binding"])
def test_io_binding_gives_the_plain_scores(case, options):
    """Same scores as a run without options, on the first call and on later ones (reused bindings)."""
    from rerankrt.engine.agreement import Tolerance, compare

    pairs, groups = pairs_and_groups()
    plain_reranker = cuda_reranker(case.artifact)
    plain = plain_reranker.predict(pairs)
    reranker = cuda_reranker(case.artifact, options)
    first, second, third = (reranker.predict(pairs) for _ in range(3))
    fp16 = fp16_tolerance(case.artifact)
    tight = Tolerance(max_rel_delta=fp16.max_rel_delta / 10, min_spearman=1 - (1 - fp16.min_spearman) / 10,
                      min_top10=1.0)
    for label, scores in (("first call", first), ("second call", second), ("third call", third)):
        report = compare(plain, scores, groups, tight)
        assert report["passed"], (label, options, report)
    # other batch shapes once graphs for the first ones exist: against the plain run of the same shapes
    report = compare(plain_reranker.predict(pairs[:5]), reranker.predict(pairs[:5]), groups[:5], tight)
    assert report["passed"], ("five pairs after the full set", options, report)


def test_fp16_parity_gate_on_the_device(case):
    """The export's gate, with the fp16 graph on CUDA: the built-in pairs, the PyTorch fp32 reference, the
    gate's batches and the tolerance the CPU gate used."""
    from rerankrt.engine.agreement import compare
    from rerankrt.engine.artifact import load_artifact
    from rerankrt.engine.backends import create_backend
    from rerankrt.engine.scoring import score_ids
    from rerankrt.engine.tokenize import PairTokenizer
    from rerankrt.export.calibration import load_calibration
    from rerankrt.export.reference import score_reference
    from rerankrt.export.source import read_source

    artifact = load_artifact(case.artifact)
    tokenizer = PairTokenizer.for_artifact(artifact, None)
    calib = load_calibration(tokenizer)
    reference = score_reference(read_source(str(case.source)), calib.token_ids, tokenizer.pad_id)[:, 0]
    created = create_backend(artifact, "fp16", "onnxruntime", device="cuda", providers=CUDA_PROVIDERS)
    assert created.backend.describe()["providers"][0] == CUDA
    logits = score_ids(created.backend, calib.token_ids, created.policy, tokenizer.pad_id, 1)[:, 0]  # GPU batches
    report = compare(reference, logits, calib.groups, fp16_tolerance(case.artifact))
    cpu_gate = artifact.manifest["parity"]["results"]["fp16"]
    print(f"\n{case.name} fp16 gate: CUDA max|Δ|/range {report['max_rel_delta']:.2e}, Spearman "
          f"{report['spearman']:.6f}, top-10 {report['top10_agreement']:.3f}; CPU (export) "
          f"{cpu_gate['max_rel_delta']:.2e}, {cpu_gate['spearman']:.6f}, {cpu_gate['top10_agreement']:.3f}")
    assert report["passed"], report


def test_the_export_gate_checked_fp16_on_the_device(case):
    """The artifact was exported here, where onnxruntime lists the CUDA EP: its gate also scored fp16 on
    ``cuda`` (export/parity.py) and its manifest says so, with the providers that ran."""
    from rerankrt.engine.artifact import load_artifact

    recorded = load_artifact(case.artifact).manifest["parity"]["results"]["fp16"]
    assert "cuda" in recorded.get("devices", []), {k: recorded.get(k) for k in ("devices", "skipped_devices")}
    on_cuda = [r for r in recorded.get("by_backend", {}).values() if r.get("device") == "cuda"]
    assert on_cuda and all(r["passed"] and r["providers"][0] in (CUDA, TENSORRT) for r in on_cuda), on_cuda


def test_default_cuda_load_starts_a_gpu_provider(case):
    """``device="cuda"`` without provider names: the backend's own choice (TensorRT first where onnxruntime
    lists it) must end in a session on a GPU provider, not fail because TensorRT's libraries are absent."""
    from rerankrt.engine import Reranker

    reranker = Reranker.from_pretrained(case.artifact, precision="fp16", backend="onnxruntime", device="cuda")
    described = reranker.backend.describe()
    assert described["providers"][0] in (TENSORRT, CUDA), described
    assert np.isfinite(reranker.predict([("q", "a document"), ("q", "another")])).all()
