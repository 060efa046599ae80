"""The onnxruntime CUDA path, checked on the CPU EP: IO binding, CUDA-graph row padding, the provider
options builder, GPU width buckets, and the fp16 gate's device record.

What needs a GPU (a CUDA session, TensorRT, a captured graph) cannot run here; everything around it does:
IO binding runs on the CPU EP when asked, the provider options are plain data, and the graph path's
padding and bookkeeping run on the CPU EP (which ignores ``gpu_graph_id``). Scores are compared with the
plain ``session.run`` path on the distilled 17m (a trained model's spread; the tiny random fixture only
where ../shared is absent).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from rerankrt.engine import BackendUnavailableError, Reranker
from rerankrt.engine.backends import GPU_WIDTH_BUCKETS, BackendBase, create_backend, ort_providers
from rerankrt.engine.backends import ort as ort_backend
from rerankrt.engine.batching import BatchPolicy, pad_batch, plan_batches

from conftest import DISTILLED, realistic_pairs

CUDA, TRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"


@pytest.fixture(scope="module")
def artifact(request) -> Path:
    """The distilled 17m when ../shared has it, else the tiny random fixture."""
    return request.getfixturevalue("distilled_artifact" if DISTILLED.is_dir() else "tiny_artifact")


@pytest.fixture(scope="module")
def fp32(artifact) -> Path:
    return artifact / "model.fp32.onnx"


@pytest.fixture(scope="module")
def plain(fp32):
    return create_backend(fp32, precision="fp32", backend="onnxruntime", threads=1).backend


def _batch(rng, rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ids, the last row half padding (masked), as the scoring core pads them."""
    ids = rng.integers(5, 1000, size=(rows, width)).astype(np.int64)
    mask = np.ones_like(ids)
    if rows > 1:
        mask[-1, max(width // 2, 1):] = 0
    ids[mask == 0] = 0
    return ids, mask


def _manifest(artifact: Path) -> dict:
    import json

    return json.loads((artifact / "manifest.json").read_text())


def _session_run(backend, ids, mask) -> np.ndarray:
    """Logits straight from ``session.run``: the reference, independent of the backend's own paths."""
    out = backend.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    return np.asarray(out, dtype=np.float32).reshape(len(ids), -1)


# -- IO binding on the CPU EP ------------------------------------------------------------------------------------

def test_io_binding_scores_equal_session_run_in_input_order(artifact):
    pairs = realistic_pairs(4, 15, seed=11)
    plain = Reranker.from_pretrained(artifact, precision="fp32", backend="onnxruntime", threads=1, token_budget=512)
    bound = Reranker.from_pretrained(artifact, precision="fp32", backend="onnxruntime", threads=1, token_budget=512,
                                     backend_options={"io_binding": True})
    assert bound.backend.describe()["io_binding"] is True and plain.backend.describe()["io_binding"] is False
    assert bound.backend.describe()["cuda_graph"] is False
    reference = plain.predict(pairs)
    np.testing.assert_allclose(bound.predict(pairs), reference, rtol=0, atol=1e-6)
    shapes = bound.backend._bindings.shapes()
    assert len({w for _, w in shapes}) >= 3 and len({r for r, _ in shapes}) >= 2  # several batch shapes ran
    order = np.random.default_rng(3).permutation(len(pairs))  # input order, not planning order
    np.testing.assert_allclose(bound.predict([pairs[i] for i in order]), reference[order], rtol=0, atol=1e-6)


def test_io_binding_reuses_buffers_for_a_repeated_shape(fp32, plain):
    backend = ort_backend.OrtBackend(fp32, "fp32", threads=1, io_binding=True)
    rng = np.random.default_rng(0)
    first, second = _batch(rng, 3, 17), _batch(rng, 3, 17)
    first_out = backend.run(*first)
    np.testing.assert_allclose(first_out, _session_run(plain, *first), rtol=0, atol=1e-6)
    entry = backend._bindings.peek((3, 17))
    values, staging, output = list(entry.inputs), list(entry.staging), entry.output
    pointers = [v.data_ptr() for v in values] + [output.data_ptr()]
    out = backend.run(*second)  # other ids, same shape: the same buffers, refreshed
    np.testing.assert_allclose(out, _session_run(plain, *second), rtol=0, atol=1e-6)
    assert not np.allclose(out, first_out)  # not a stale result
    # and the first result is a copy, not a view of the output buffer the second run wrote
    np.testing.assert_allclose(first_out, _session_run(plain, *first), rtol=0, atol=1e-6)
    again = backend._bindings.peek((3, 17))
    assert again is entry and backend._bindings.shapes() == [(3, 17)]
    assert all(a is b for a, b in zip(again.inputs, values)) and again.output is output
    assert all(a is b for a, b in zip(again.staging, staging))
    assert [v.data_ptr() for v in again.inputs] + [again.output.data_ptr()] == pointers
    np.testing.assert_array_equal(again.staging[0], second[0])  # the staging array holds the last batch


def test_io_binding_keeps_at_most_the_lru_bound_of_shapes(fp32, plain):
    backend = ort_backend.OrtBackend(fp32, "fp32", threads=1, io_binding=True)
    bound = ort_backend.BINDING_CACHE_SIZE
    rng = np.random.default_rng(1)
    widths = list(range(4, 4 + bound + 8))
    for width in widths:
        backend.run(*_batch(rng, 1, width))
    assert backend._bindings.shapes() == [(1, w) for w in widths[-bound:]]  # the most recent, oldest dropped
    backend.run(*_batch(rng, 1, widths[-bound]))  # touched: now the most recent
    assert backend._bindings.shapes()[-1] == (1, widths[-bound])
    dropped = _batch(rng, 1, widths[0])  # an evicted shape binds again, with right scores
    np.testing.assert_allclose(backend.run(*dropped), _session_run(plain, *dropped), rtol=0, atol=1e-6)
    # widths[-bound] was touched, so the least recent of the rest (widths[-bound + 1]) made room
    assert len(backend._bindings.shapes()) == bound and backend._bindings.shapes()[0] == (1, widths[-bound + 2])
    assert (1, widths[-bound + 1]) not in backend._bindings.shapes()


def test_io_binding_concurrent_predict_from_4_threads(artifact):
    pairs = realistic_pairs(4, 12, seed=7)
    plain = Reranker.from_pretrained(artifact, precision="fp32", backend="onnxruntime", threads=1, token_budget=256)
    bound = Reranker.from_pretrained(artifact, precision="fp32", backend="onnxruntime", threads=1, token_budget=256,
                                     backend_options={"io_binding": True})
    reference = plain.predict(pairs)
    # overlapping subsets, so threads run the same shapes at once (a shape's buffers are taken in turn)
    subsets = [list(range(k, len(pairs), 3)) for k in range(3)] + [list(range(len(pairs)))]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda idx: (idx, bound.predict([pairs[i] for i in idx])), subsets * 4))
    for idx, scores in results:
        np.testing.assert_allclose(scores, reference[idx], rtol=0, atol=1e-6)


def _int32_graph(source: Path, target: Path) -> Path:
    """``source`` with both inputs declared INT32 and a Cast to INT64 right after each."""
    import onnx

    model = onnx.load(str(source))
    graph = model.graph
    casts = []
    for value in graph.input:
        if value.name not in ("input_ids", "attention_mask"):
            continue
        value.type.tensor_type.elem_type = onnx.TensorProto.INT32
        wide = f"{value.name}_as_int64"
        for node in graph.node:
            node.input[:] = [wide if name == value.name else name for name in node.input]
        casts.append(onnx.helper.make_node("Cast", [value.name], [wide], to=onnx.TensorProto.INT64,
                                           name=f"cast_{value.name}"))
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # stays topologically sorted: the casts read graph inputs only
    onnx.save(model, str(target))
    return target


def test_int32_inputs_bind_int32_buffers(fp32, plain, tmp_path):
    import onnxruntime as ort

    graph = _int32_graph(fp32, tmp_path / "model.int32.onnx")
    types = [i.type for i in ort.InferenceSession(str(graph), providers=[CPU]).get_inputs()]
    assert types == ["tensor(int32)", "tensor(int32)"]
    backend = ort_backend.OrtBackend(graph, "fp32", threads=1, io_binding=True)
    rng = np.random.default_rng(2)
    for rows, width in ((1, 5), (4, 33), (4, 33), (2, 70)):
        ids, mask = _batch(rng, rows, width)  # int64, as the scoring core pads them
        np.testing.assert_allclose(backend.run(ids, mask), _session_run(plain, ids, mask), rtol=0, atol=1e-6)
        entry = backend._bindings.peek((rows, width))
        assert [s.dtype for s in entry.staging] == [np.int32, np.int32]
        assert [v.data_type() for v in entry.inputs] == ["tensor(int32)", "tensor(int32)"]
    # the plain path converts too
    plain32 = ort_backend.OrtBackend(graph, "fp32", threads=1)
    ids, mask = _batch(rng, 3, 20)
    np.testing.assert_allclose(plain32.run(ids, mask), _session_run(plain, ids, mask), rtol=0, atol=1e-6)


# -- CUDA graphs: the row padding and per-shape bookkeeping, on the CPU EP ---------------------------------------

def test_row_bucket_and_pad_rows():
    assert [ort_backend.row_bucket(n) for n in (1, 2, 3, 4, 5, 9, 256, 257)] == [1, 2, 4, 4, 8, 16, 256, 512]
    ids = np.arange(12, dtype=np.int64).reshape(3, 4)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=np.int64)
    padded_ids, padded_mask = ort_backend.pad_rows(ids, mask, 4)
    np.testing.assert_array_equal(padded_ids, np.vstack([ids, ids[:1]]))
    np.testing.assert_array_equal(padded_mask, np.vstack([mask, mask[:1]]))
    same = ort_backend.pad_rows(ids, mask, 3)
    assert same[0] is ids and same[1] is mask
    with pytest.raises(ValueError):
        ort_backend.pad_rows(ids, mask, 2)


def test_padded_rows_score_like_the_batch_through_io_binding(fp32, plain):
    backend = ort_backend.OrtBackend(fp32, "fp32", threads=1, io_binding=True)
    rng = np.random.default_rng(4)
    for rows, width in ((3, 16), (5, 40), (1, 9)):
        ids, mask = _batch(rng, rows, width)
        bucket = ort_backend.row_bucket(rows)
        out = backend.run(*ort_backend.pad_rows(ids, mask, bucket))
        assert out.shape == (bucket, 1)
        np.testing.assert_allclose(out[:rows], _session_run(plain, ids, mask), rtol=0, atol=1e-6)


def test_graph_path_bookkeeping_on_the_cpu_ep(fp32, plain, monkeypatch):
    """The cuda_graph run path with the CPU EP standing in for CUDA (it ignores gpu_graph_id): one graph id and
    one buffer set per (rows bucket, width bucket), uncaptured past the buckets, every run on one thread."""
    backend = ort_backend.OrtBackend(fp32, "fp32", threads=1, io_binding=True, width_buckets=(16, 32))
    monkeypatch.setattr(backend, "cuda_graph", True)
    threads = set()
    run_entry = backend._run_entry

    def recording(entry, ids, mask):
        threads.add(threading.current_thread().name)
        return run_entry(entry, ids, mask)

    monkeypatch.setattr(backend, "_run_entry", recording)
    rng = np.random.default_rng(5)
    batches = [_batch(rng, r, w) for r, w in ((3, 16), (4, 16), (5, 32), (2, 40), (1, 16), (3, 16))]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda b: backend.run(*b), batches * 2))
    for k, out in enumerate(outs):
        ids, mask = batches[k % len(batches)]
        assert out.shape == (len(ids), 1)
        np.testing.assert_allclose(out, _session_run(plain, ids, mask), rtol=0, atol=1e-6)
    assert set(backend._graphs) == {(4, 16), (8, 32), (1, 16)}
    ids = sorted(g.graph_id for g in backend._graphs.values())
    assert ids == [1, 2, 3]  # from 1: onnxruntime keeps 0 for itself
    for graph in backend._graphs.values():
        assert graph.run_options.get_run_config_entry("gpu_graph_id") == str(graph.graph_id)
        assert graph.staging[0].shape == graph.shape
    uncaptured = backend._bindings.peek((2, 40))
    assert uncaptured is not None and uncaptured.run_options.get_run_config_entry("gpu_graph_id") == "-1"
    assert len(threads) == 1 and next(iter(threads)).startswith("rerankrt-cuda-graph")


def test_cuda_graph_is_refused_where_it_cannot_run(artifact, fp32):
    with pytest.raises(BackendUnavailableError, match="device='cuda'"):
        Reranker.from_pretrained(artifact, precision="fp32", backend="onnxruntime",
                                 backend_options={"io_binding": True, "cuda_graph": True})
    with pytest.raises(ValueError, match="io_binding"):
        ort_backend.OrtBackend(fp32, "fp32", io_binding=False, cuda_graph=True)
    policy = BatchPolicy(16384, 256, width_buckets=GPU_WIDTH_BUCKETS)
    with pytest.raises(BackendUnavailableError, match=TRT):
        ort_providers.provider_plan([TRT, CUDA, CPU], "cuda", "fp16", policy, None, cuda_graph=True)
    with pytest.raises(BackendUnavailableError, match=CUDA):
        ort_providers.provider_plan([CPU], "cuda", "fp16", policy, None, cuda_graph=True)
    with pytest.raises(BackendUnavailableError, match="device='cuda'"):
        ort_providers.provider_plan([CUDA, CPU], "cpu", "fp16", policy, None, cuda_graph=True)


# -- the provider options builder --------------------------------------------------------------------------------

def _options(plan, name):
    return dict(plan)[name]


def test_cuda_provider_options():
    policy = BatchPolicy(16384, 256, width_buckets=GPU_WIDTH_BUCKETS)
    plan = ort_providers.provider_plan([CUDA, CPU], "cuda:1", "fp16", policy, None)
    assert [name for name, _ in plan] == [CUDA, CPU] and _options(plan, CPU) == {}
    cuda = _options(plan, CUDA)
    assert cuda == {"device_id": "1", "arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "DEFAULT",
                    "do_copy_in_default_stream": "1"}
    assert all(isinstance(v, str) for v in cuda.values())  # onnxruntime's provider options are strings
    graphs = _options(ort_providers.provider_plan([CUDA, CPU], "cuda", "fp16", policy, None, cuda_graph=True), CUDA)
    assert graphs["device_id"] == "0" and graphs["enable_cuda_graph"] == "1"
    assert ort_providers.device_id("cuda:3") == 3 and ort_providers.device_id("cpu") == 0
    for bad in ("gpu", "cuda:x", "cpu:1"):
        with pytest.raises(ValueError):
            ort_providers.device_id(bad)


def _parse_profiles(text: str) -> dict[str, list[tuple[int, int]]]:
    """``name:AxB,...`` → shapes per input in order, as onnxruntime's ParseProfileShapes reads them."""
    shapes: dict[str, list[tuple[int, int]]] = {}
    for item in text.split(","):
        name, shape = item.split(":")
        rows, width = (int(v) for v in shape.split("x"))
        shapes.setdefault(name, []).append((rows, width))
    return shapes


def test_tensorrt_profiles_cover_every_bucket_at_the_policys_rows(tmp_path):
    buckets = GPU_WIDTH_BUCKETS
    policy = BatchPolicy(16384, 256, width_buckets=buckets)
    trt = _options(ort_providers.provider_plan([TRT, CUDA, CPU], "cuda:1", "fp16", policy, tmp_path / "g",
                                               trt_profiles=True), TRT)
    assert trt["device_id"] == "1"
    mins, opts, maxs = (_parse_profiles(trt[f"trt_profile_{k}_shapes"]) for k in ("min", "opt", "max"))
    assert set(mins) == set(opts) == set(maxs) == {"input_ids", "attention_mask"}
    assert mins["input_ids"] == mins["attention_mask"] and maxs["input_ids"] == maxs["attention_mask"]
    profiles = list(zip(mins["input_ids"], opts["input_ids"], maxs["input_ids"]))
    assert len(profiles) == len(buckets)
    for lo, opt, hi in profiles:
        assert lo[0] <= opt[0] <= hi[0] and lo[1] <= opt[1] <= hi[1]
    for width in buckets:
        # the rows the default GPU policy sends at this width, computed here from its budgets
        rows = max(1, min(256, 16384 // width, (1 << 23) // (width * width)))
        assert any(lo[1] <= width <= hi[1] and hi[0] >= rows and lo[0] <= 1 for lo, _, hi in profiles), width
    covered = set()
    for lo, _, hi in profiles:
        covered |= set(range(lo[1], hi[1] + 1))
    assert covered == set(range(1, max(buckets) + 1))  # every width up to the largest bucket has a profile
    # every batch the policy plans and pads fits the profile of its width
    lengths = np.random.default_rng(6).integers(2, max(buckets), size=400)
    token_ids = [[1] * int(n) for n in lengths]
    for indices in plan_batches(lengths, policy):
        batch = pad_batch(token_ids, indices, 0, policy.pad_to_multiple_of, policy.width_buckets)
        rows, width = batch.input_ids.shape
        assert width in buckets
        assert any(lo[1] <= width <= hi[1] and lo[0] <= rows <= hi[0] for lo, _, hi in profiles), (rows, width)
    off = _options(ort_providers.provider_plan([TRT, CPU], "cuda", "fp16", policy, None), TRT)
    assert not any(k.startswith("trt_profile") for k in off)  # off by default: profile 0 only before ORT #31624


def test_tensorrt_precision_and_cache_paths(tmp_path, fp32):
    policy = BatchPolicy(16384, 256, width_buckets=GPU_WIDTH_BUCKETS)
    root = tmp_path / "cache" / "tensorrt"
    graph_dir = ort_providers.trt_cache_dir(root, fp32)
    assert graph_dir.parent == root
    plans = {p: _options(ort_providers.provider_plan([TRT, CUDA, CPU], "cuda", p, policy, graph_dir), TRT)
             for p in ("fp16", "fp32", "int8")}
    assert {p: o["trt_fp16_enable"] for p, o in plans.items()} == {"fp16": "1", "fp32": "0", "int8": "0"}
    trt = plans["fp16"]
    assert trt["trt_engine_cache_enable"] == "1" and trt["trt_timing_cache_enable"] == "1"
    for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
        assert Path(trt[key]).resolve().is_relative_to(root.resolve())
    assert int(trt["trt_max_workspace_size"]) > 0
    uncached = _options(ort_providers.provider_plan([TRT, CPU], "cuda", "fp16", policy, None), TRT)
    assert not any(k.startswith(("trt_engine_cache", "trt_timing_cache")) for k in uncached)


def test_graph_cache_key_follows_the_graph_content(fp32, tmp_path):
    """An artifact's graph is keyed by its manifest sha256; another graph (or another file) gets another key."""
    import json

    manifest = json.loads((fp32.parent / "manifest.json").read_text())
    sha = manifest["graphs"]["fp32"]["sha256"]
    key = ort_providers.graph_cache_key(fp32)
    assert key.startswith("model.fp32-") and key == ort_providers.graph_cache_key(fp32)
    assert key != ort_providers.graph_cache_key(fp32.parent / "model.fp16.onnx")
    copy = tmp_path / "model.fp32.onnx"  # the same name without a manifest: keyed by the file itself
    copy.write_bytes(b"not the artifact's graph")
    assert ort_providers.graph_cache_key(copy) != key
    (tmp_path / "manifest.json").write_text(json.dumps({"graphs": {"fp32": {"file": copy.name, "sha256": sha}}}))
    assert ort_providers.graph_cache_key(copy) == key  # the same content (by its recorded sha): the same engines


# -- GPU width buckets -------------------------------------------------------------------------------------------

def test_width_buckets_pad_to_the_smallest_bucket_that_holds_the_batch():
    policy = BatchPolicy(token_budget=1024, width_buckets=(64, 128, 256), pad_to_multiple_of=16)
    assert [policy.padded_width(w) for w in (1, 63, 64, 65, 128, 129, 256, 257, 300)] == \
        [64, 64, 64, 128, 128, 256, 256, 272, 304]  # past the largest bucket: the multiple, as before
    assert BatchPolicy(pad_to_multiple_of=16).padded_width(65) == 80  # no buckets: today's rounding
    assert BatchPolicy().padded_width(65) == 65
    # planning uses the bucketed width: 65 tokens run as 128
    assert policy.rows_for_length(65) == 1024 // 128 and BatchPolicy(1024).rows_for_length(65) == 1024 // 65
    rows = [[7] * 70, [7] * 3]
    batch = pad_batch(rows, np.array([0, 1]), 0, 16, (64, 128, 256))
    assert batch.input_ids.shape == (2, 128)
    np.testing.assert_array_equal(batch.attention_mask.sum(axis=1), [70, 3])
    assert (batch.input_ids[batch.attention_mask == 0] == 0).all()


def test_width_buckets_through_the_backend_contract_leave_scores_unchanged(artifact, monkeypatch):
    assert BackendBase.width_buckets == ()
    pairs = realistic_pairs(4, 15, seed=9)
    plain = Reranker.from_pretrained(artifact, precision="fp32", backend="onnxruntime", threads=1)
    assert plain.policy.width_buckets == () and plain.backend.width_buckets == ()  # the CPU keeps exact widths
    buckets = (32, 64, 128, 256, 512)
    bucketed = Reranker.from_pretrained(artifact, precision="fp32", backend="onnxruntime", threads=1,
                                        backend_options={"width_buckets": list(buckets)})
    assert bucketed.backend.width_buckets == buckets and bucketed.policy.width_buckets == buckets
    assert bucketed.backend.describe()["width_buckets"] == list(buckets)
    widths = []
    run = bucketed.backend.run

    def recording(ids, mask):
        widths.append(ids.shape[1])
        return run(ids, mask)

    monkeypatch.setattr(bucketed.backend, "run", recording)
    lengths = [len(t) for t in bucketed.tokenizer.encode(pairs)]
    scores = bucketed.predict(pairs)
    assert widths and all(w in buckets or w > max(buckets) for w in widths)
    assert set(widths) - set(lengths)  # padding happened: widths that no pair has
    np.testing.assert_allclose(scores, plain.predict(pairs), rtol=0, atol=1e-5)


def test_gpu_buckets_reach_the_gpu_policy_through_the_contract():
    """What a CUDA backend declares becomes its batch policy (``batch_policy``), without a GPU."""
    from rerankrt.engine.backends import GPU_TOKEN_BUDGET, batch_policy

    class Declared(BackendBase):
        device = "cuda:0"
        width_buckets = GPU_WIDTH_BUCKETS

    policy = batch_policy(Declared())
    assert policy.token_budget == GPU_TOKEN_BUDGET and policy.width_buckets == GPU_WIDTH_BUCKETS
    assert tuple(sorted(GPU_WIDTH_BUCKETS)) == GPU_WIDTH_BUCKETS and max(GPU_WIDTH_BUCKETS) >= 8000


def test_a_gpu_session_that_falls_back_to_the_cpu_is_refused(fp32, monkeypatch):
    """onnxruntime runs on the CPU, with a warning, when its CUDA EP cannot start; device='cuda' says so."""
    monkeypatch.setattr(ort_backend.ort, "get_available_providers", lambda: [CUDA, CPU])
    with pytest.raises(BackendUnavailableError, match="could not start"):
        ort_backend.OrtBackend(fp32, "fp32", device="cuda", threads=1)


# -- the fp16 gate's device record -------------------------------------------------------------------------------

def _gate_inputs(artifact):
    reranker = Reranker.from_pretrained(artifact, precision="fp32", backend="onnxruntime", threads=1)
    pairs = realistic_pairs(3, 20, seed=13)
    token_ids = reranker.tokenizer.encode(pairs)
    reference = reranker.predict(pairs).astype(np.float64)  # fp32 on the CPU: the reference for fp16 here
    return token_ids, reranker.tokenizer.pad_id, reference, [i // 20 for i in range(len(pairs))]


def test_fp16_gate_records_the_cpu_ep_only_here(artifact):
    import onnxruntime

    from rerankrt.export import parity

    if CUDA in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA EP: the gate checks fp16 on the GPU too")
    assert parity.device_checks("fp16")[0] == ("cpu",) and "cuda" in parity.device_checks("fp16")[1]
    assert parity.device_checks("fp32") == (("cpu",), {})
    token_ids, pad_id, reference, groups = _gate_inputs(artifact)
    report = parity.check_precision("fp16", artifact / "model.fp16.onnx", token_ids, pad_id, reference, groups,
                                    parity.DEFAULT_TOLERANCES["fp16"])
    assert report["passed"] and report["device"] == "cpu" and report["devices"] == ["cpu"]
    assert report["providers"] == [CPU]
    assert "CUDAExecutionProvider" in report["skipped_devices"]["cuda"]
    assert "not checked on cuda" in parity.format_report({"fp16": report})
    # the export's own record (the artifact fixture's gate ran the same code)
    recorded = _manifest(artifact)["parity"]["results"]["fp16"]
    assert recorded["devices"] == ["cpu"] and recorded["providers"] == [CPU] and "cuda" in recorded["skipped_devices"]


def test_fp16_gate_skips_cuda_that_onnxruntime_lists_but_cannot_start(artifact, monkeypatch):
    """onnxruntime-gpu on a machine whose GPU cannot start (absent, or hidden by ``CUDA_VISIBLE_DEVICES=""`` as
    the device kit's background exports run): listing the provider is not enough, a probe session decides, and
    the record says the device was not checked instead of failing the export or passing CPU numbers off as
    CUDA's. (On the H200 the listed-but-hidden CUDA EP failed every background export: gpu-20261204-1138.)"""
    import onnxruntime

    from rerankrt.engine.backends import ort_providers
    from rerankrt.export import parity

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    ort_providers.cuda_unusable_reason.cache_clear()
    try:
        checked, skipped = parity.device_checks("fp16")
        assert checked == ("cpu",) and "cannot start" in skipped["cuda"]
        assert all(device == "cpu" for _, _, _, device in parity.planned_runs("fp16"))
        token_ids, pad_id, reference, groups = _gate_inputs(artifact)
        report = parity.check_precision("fp16", artifact / "model.fp16.onnx", token_ids, pad_id, reference, groups,
                                        parity.DEFAULT_TOLERANCES["fp16"])
        assert report["passed"] and report["devices"] == ["cpu"] and report["providers"] == [CPU]
        assert "cannot start" in report["skipped_devices"]["cuda"]
        # asked for anyway, the device's session falls back and is recorded as not run, never as passed
        assert parity.planned_runs("fp16", ("cpu", "cuda"))[-1] == ("onnxruntime@cuda", "onnxruntime", {}, "cuda")
        report = parity.check_precision("fp16", artifact / "model.fp16.onnx", token_ids, pad_id, reference, groups,
                                        parity.DEFAULT_TOLERANCES["fp16"], devices=("cpu", "cuda"))
        assert report["passed"] and report["devices"] == ["cpu"] and report["providers"] == [CPU]
        assert report["skipped_devices"]["cuda"].startswith("could not run on cuda")
    finally:
        ort_providers.cuda_unusable_reason.cache_clear()


def test_the_cuda_probe_graph_loads_on_every_supported_onnxruntime():
    """The probe deciding whether the CUDA EP starts must itself load on the oldest onnxruntime kept (its IR
    version is the exports'): with onnx's default (IR 14) onnxruntime 1.30 refused it and the probe blamed the
    GPU (gpu-20261204-1146)."""
    import onnx
    import onnxruntime

    from rerankrt.engine.backends.ort_providers import probe_model

    model = onnx.load_from_string(probe_model())
    assert model.ir_version == 8
    session = onnxruntime.InferenceSession(probe_model(), providers=[CPU])
    x = np.array([1.5], dtype=np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x)
