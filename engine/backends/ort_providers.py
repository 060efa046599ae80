"""onnxruntime's execution providers and their options, built in one place: :func:`provider_plan`.

Why one place: the CUDA and TensorRT providers take string options whose right values follow from
the device, the artifact's precision, the GPU batch policy and rerankrt's cache directory; the
backend, its ``describe()`` (benchmark records) and the tests read the same plan, so what a session
was asked for is never rebuilt by hand elsewhere.

Where the names come from (onnxruntime's source, ``onnxruntime/core/providers/``):
``cuda/cuda_execution_provider_info.cc`` (``device_id``, ``arena_extend_strategy``,
``cudnn_conv_algo_search``, ``do_copy_in_default_stream``, ``enable_cuda_graph``) and
``tensorrt/tensorrt_execution_provider_info.cc`` (``trt_fp16_enable``, ``trt_engine_cache_enable`` /
``_path``, ``trt_timing_cache_enable`` / ``_path``, ``trt_max_workspace_size``,
``trt_profile_min_shapes`` / ``_opt_`` / ``_max_``). The profile strings follow ``ParseProfileShapes``
in ``tensorrt/tensorrt_execution_provider_utils.h``: ``name:AxB`` items joined by commas, an input
name repeated once per profile (``input_ids:1x1,attention_mask:1x1,input_ids:1x65,...`` is two
profiles).

A caveat on several profiles: onnxruntime's TensorRT EP parses, builds and caches them all, but
releases before microsoft/onnxruntime PR #31624 ("Support multiple optimization profiles", open in
2026-08) keep the execution context on profile 0 at run time, so there a batch outside the first
bucket fails. So the per-bucket profiles are opt-in (``backend_options={"trt_profiles": True}``, for
releases with that PR); by default the shapes are left to the EP (one profile it widens, rebuilding and
caching the engine, as batches grow), which runs on every release.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from ..batching import BatchPolicy
from ..errors import BackendUnavailableError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
INPUT_NAMES = ("input_ids", "attention_mask")
# A ceiling on the scratch memory a TensorRT tactic may use when the engine is built, not an allocation
# (a context allocates what its chosen tactics need). Tactics needing more than the ceiling are never
# considered, and the 1 GiB older onnxruntime releases default to can leave a fused attention layer at
# 4k-8k widths without its fast implementation. (onnxruntime 1.18 read this option as a 32-bit int and
# fell back to 1 GiB, with a warning, past 2 GiB: issue #21001.)
TRT_WORKSPACE_BYTES = 4 << 30

ProviderPlan = list[tuple[str, dict[str, str]]]


def probe_model() -> bytes:
    """A one-node graph every onnxruntime this project supports loads: IR version 8, opset 17, as the exports.

    (``helper.make_model`` writes the newest IR version the installed onnx knows, 14 with onnx 1.23, and
    onnxruntime 1.30 refuses that file: the probe then blamed the GPU on the H200, gpu-20261204-1146.)
    """
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@functools.lru_cache(maxsize=1)
def cuda_unusable_reason() -> str | None:
    """None when a CUDA EP session really starts here; else why not, in one line.

    Why a probe and not ``get_available_providers()``: that lists what the onnxruntime build *has*.
    A GPU build on a machine whose device is hidden (``CUDA_VISIBLE_DEVICES=""``, as the device kit's
    background exports run) or absent lists the CUDA EP all the same, and a session that asks for it
    then fails to load. One tiny session says which.
    """
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe_model(), sess_options=options, providers=[CUDA, CPU])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types; the reason is the message
        first_line = str(exc).splitlines()[0]  # onnxruntime puts the source location first, the cause last
        cause = first_line if len(first_line) < 300 else "…" + first_line[-300:]
        return f"the CUDAExecutionProvider cannot start here: {cause}"
    if CUDA not in session.get_providers():
        return "the CUDAExecutionProvider cannot start here (no driver or no visible device): onnxruntime fell back"
    return None


def device_id(device: str) -> int:
    """``"cuda"`` → 0, ``"cuda:1"`` → 1 (``"cpu"`` → 0: the CPU allocator's id)."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not index:
        return 0
    if kind != "cuda" or not index.isdigit():
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return int(index)


def graph_cache_key(model_path: Path) -> str:
    """A directory name unique to this graph's content: TensorRT's engine cache must never hand one model's
    engine to another.

    onnxruntime names cached engines by a hash of the graph's structure (node and input names), not of
    its weights, so two models of one architecture exported to the same file name would collide in one
    directory. The manifest beside an artifact's graph records its sha256 (and its external data's):
    those name the directory without reading gigabytes. A graph without a manifest (the export's
    staging files) is named by its path, size and modification time instead.
    """
    path = Path(model_path)
    manifest = path.parent / "manifest.json"
    digest = hashlib.sha256()
    try:
        graphs = json.loads(manifest.read_text(encoding="utf-8")).get("graphs", {})
        entry = next(g for g in graphs.values() if g.get("file") == path.name and g.get("sha256"))
        digest.update(entry["sha256"].encode())
        for data in entry.get("data_files", []):
            digest.update(str(data.get("sha256", data.get("file"))).encode())
    except (OSError, ValueError, StopIteration, AttributeError):
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{path.stem}-{digest.hexdigest()[:16]}"


def trt_profile_shapes(policy: BatchPolicy, inputs: tuple[str, ...] = INPUT_NAMES) -> dict[str, str]:
    """TensorRT optimization profiles from the GPU batch policy: one per width bucket.

    Profile *k* takes widths from just past the previous bucket up to bucket *k*, and 1 row up to the
    rows the policy plans at that bucket (the most it ever sends at that width): kernels are tuned
    (``opt``) for the full batch at the bucket's width, the shape nearly every batch has once widths
    are bucketed. One profile over every width would have to hold the most rows at the longest width,
    memory TensorRT sizes its activations for and no batch ever needs.
    """
    if not policy.width_buckets:
        raise ValueError("TensorRT profiles are derived from width buckets; the policy has none")
    mins, opts, maxs = [], [], []
    lower = 1
    for width in sorted(set(policy.width_buckets)):
        rows = policy.rows_for_length(width)
        for name in inputs:
            mins.append(f"{name}:1x{lower}")
            opts.append(f"{name}:{rows}x{width}")
            maxs.append(f"{name}:{rows}x{width}")
        lower = width + 1
    return {"trt_profile_min_shapes": ",".join(mins), "trt_profile_opt_shapes": ",".join(opts),
            "trt_profile_max_shapes": ",".join(maxs)}


def cuda_options(device: str, cuda_graph: bool = False) -> dict[str, str]:
    """The CUDA EP's options, each for a reason:

    * ``device_id``: the GPU ``device`` names (``cuda:1`` → 1);
    * ``arena_extend_strategy=kSameAsRequested``: the default (``kNextPowerOfTwo``) grows the arena by
      doubling chunks, so one burst of 8k-token batches could hold up to twice the memory it used for
      the life of the process; this grows it by what is asked;
    * ``cudnn_conv_algo_search=DEFAULT``: the default ``EXHAUSTIVE`` benchmarks every cuDNN algorithm for
      each new input shape of a convolution; a reranker has none worth it, and a search per new batch
      shape would land in serving latency;
    * ``do_copy_in_default_stream=1``: host/device copies run on the compute stream, ordered with the
      kernels that read them (onnxruntime documents the separate-stream setting as racy);
    * ``enable_cuda_graph=1`` only when CUDA graphs are asked for: capture needs every node on this EP
      and inputs at fixed addresses (IO binding); a session that cannot meet that fails to load.
    """
    options = {"device_id": str(device_id(device)), "arena_extend_strategy": "kSameAsRequested",
               "cudnn_conv_algo_search": "DEFAULT", "do_copy_in_default_stream": "1"}
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    return options


def trt_cache_dir(root: Path, model_path: Path) -> Path:
    """Where TensorRT keeps this graph's engines and timing cache: ``<root>/<graph>-<content hash>``."""
    return Path(root) / graph_cache_key(model_path)


def tensorrt_options(device: str, precision: str, policy: BatchPolicy | None, cache_dir: Path | None,
                     profiles: bool = False) -> dict[str, str]:
    """The TensorRT EP's options, each for a reason:

    * ``trt_fp16_enable`` for the fp16 artifact only: it lets TensorRT pick fp16 kernels for the layers
      the fp16 graph kept in fp32 too, which the fp16 parity gate on the device checks; an fp32 graph
      stays fp32 and an int8 (Q/DQ) graph runs its own explicit quantization;
    * ``trt_engine_cache_*`` and ``trt_timing_cache_*`` under rerankrt's cache directory, one directory
      per graph content (:func:`graph_cache_key`): building engines takes minutes, a restart should not;
    * ``trt_max_workspace_size``: :data:`TRT_WORKSPACE_BYTES`;
    * ``trt_profile_*_shapes`` from the batch policy (:func:`trt_profile_shapes`), only with ``profiles``
      (off by default): explicit profiles are built once, instead of the EP rebuilding its engine each
      time a batch is larger than every one before it, but see the module docstring: several profiles
      run only on releases that switch profiles at run time.
    """
    options = {"device_id": str(device_id(device)), "trt_fp16_enable": "1" if precision == "fp16" else "0",
               "trt_max_workspace_size": str(TRT_WORKSPACE_BYTES)}
    if cache_dir is not None:
        options.update({"trt_engine_cache_enable": "1", "trt_engine_cache_path": str(Path(cache_dir) / "engines"),
                        "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(Path(cache_dir) / "timing")})
    if profiles and policy is not None and policy.width_buckets:
        options.update(trt_profile_shapes(policy))
    return options


def provider_plan(providers: list[str], device: str, precision: str, policy: BatchPolicy | None,
                  cache_dir: Path | None, cuda_graph: bool = False, trt_profiles: bool = False) -> ProviderPlan:
    """``[(provider, options)]`` for ``InferenceSession(providers=[names], provider_options=[dicts])``.

    ``providers`` are the names :func:`~rerankrt.engine.backends.ort.choose_providers` chose; ``policy``
    the GPU batch policy (TensorRT's profiles), ``cache_dir`` this graph's TensorRT cache directory
    (None: no engine cache). CUDA graphs are refused, with the reason, where they cannot run: off a CUDA
    device, without the CUDA EP, or with TensorRT in the session (the CUDA EP captures a graph only when
    it runs every node; TensorRT's own graphs take no per-shape graph ids in every release).
    """
    if cuda_graph:
        if not device.startswith("cuda"):
            raise BackendUnavailableError(f"cuda_graph needs device='cuda' (or 'cuda:N'), not {device!r}: CUDA "
                                          "graphs replay work captured on a GPU")
        if CUDA not in providers:
            raise BackendUnavailableError(f"cuda_graph needs the {CUDA} in the session (providers: {providers})")
        if TENSORRT in providers:
            raise BackendUnavailableError(f"cuda_graph runs on the {CUDA} alone: with the {TENSORRT} in the "
                                          "session the CUDA EP does not run every node and cannot capture; "
                                          f"pass providers=['{CUDA}', '{CPU}'] or leave providers unset")
    plan: ProviderPlan = []
    for name in providers:
        if name == CUDA:
            plan.append((name, cuda_options(device, cuda_graph)))
        elif name == TENSORRT:
            plan.append((name, tensorrt_options(device, precision, policy, cache_dir, trt_profiles)))
        else:
            plan.append((name, {}))
    return plan
