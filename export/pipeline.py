"""``export()``: the recipe, top to bottom.

    load source → build graph → reduced precisions → score calibration pairs with the PyTorch
    reference and every precision → parity gate → write the artifact (atomically)

Each stage is a function in its own module; this file only calls them in order and records
what they did in the manifest.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx

from rerankrt.engine.artifact import (
    FORMAT_NAME,
    MANIFEST_NAME,
    PRECISIONS,
    SCHEMA_VERSION,
    TOKENIZER_NAME,
    graph_file_name,
    sha256_file,
    validate_manifest,
)
from rerankrt.engine.backends import backend_class
from rerankrt.engine.batching import BatchPolicy, pad_batch, plan_batches
from rerankrt.engine.errors import ArtifactError
from rerankrt.engine.hardware import cpu_info
from rerankrt.engine.selection import CPU_BACKENDS, OPENVINO_INT8_BF16, installed
from rerankrt.engine.tokenize import PairTokenizer

from . import calibration, parity
from .graph import build_graph, save_model
from .passes.embedding_int8 import quantize_embedding_table
from .passes.fp16 import convert_to_fp16
from .quantize import quantize_int8_dynamic, quantize_int8_static
from .source import SourceModel, read_source

EXPORT_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
INT8_METHODS = ("static", "dynamic")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("rerankrt", "torch", "transformers", "onnx", "onnxruntime", "tokenizers", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _say(log: Callable[[str], None] | None, message: str) -> None:
    if log is not None:
        log(message)


def _calibration_batches(tokenizer: PairTokenizer, pairs: list[tuple[str, str]]):
    """Mixed-length padded batches, in the order the runtime would form them."""
    ids = tokenizer.encode(pairs)
    lengths = np.array([len(t) for t in ids])
    # small budget → several batches, each padded to its own longest row
    return [pad_batch(ids, idx, tokenizer.pad_id) for idx in plan_batches(lengths, BatchPolicy(token_budget=4096))]


def _score_batches(run, batches, n: int) -> np.ndarray:
    out = None
    for batch in batches:
        logits = np.asarray(run(batch.input_ids, batch.attention_mask), dtype=np.float32)
        if out is None:
            out = np.empty((n, logits.shape[1]), np.float32)
        out[batch.indices] = logits
    return out


def _write_graph(src: SourceModel, precision: str, staging: Path, fp32_path: Path, int8_method: str,
                 calibration_batches: list) -> dict:
    """Write the graph of one precision next to the fp32 one; returns its manifest details."""
    if precision == "bf16":
        # no file of its own: OpenVINO runs the fp32 graph with a bf16 inference-precision hint
        return {"file": fp32_path.name, "backends": ["openvino"], "inference_precision": "bf16",
                "intended_for": "CPUs with AVX512_BF16 or AMX"}
    path = staging / graph_file_name(precision)
    if precision == "fp16":
        save_model(convert_to_fp16(onnx.load(str(fp32_path))), path)
        details = {"method": "onnxruntime.transformers.float16 (positions, RoPE angles and masks kept fp32)",
                   "intended_for": "GPU execution providers"}
    elif precision == "int8":
        layers = int(src.config.get("num_hidden_layers", 0)) if src.model_type == "modernbert" else 0
        if int8_method == "static":
            details = quantize_int8_static(fp32_path, path, layers, calibration_batches)
        else:
            details = quantize_int8_dynamic(fp32_path, path, layers)
        graph = onnx.load(str(path))
        details.update(quantize_embedding_table(graph))
        save_model(graph, path)
        details["intended_for"] = "CPU (onnxruntime or OpenVINO)"
    else:
        raise ValueError(f"unknown precision {precision!r}")
    return {"file": path.name, **details}


def _check_parity(precision: str, path: Path, batches, n: int, reference: np.ndarray, groups: list[int],
                  tolerance: parity.Tolerance, threads: int | None) -> dict:
    """Compare one precision on every installed backend that may run it; all must pass."""
    backends = [b for b in CPU_BACKENDS[precision] if installed(b)]
    if not backends:
        raise ValueError(f"cannot verify {precision}: it needs {' or '.join(CPU_BACKENDS[precision])} installed "
                         f"(pip install 'rerankrt[openvino]')")
    runs = [(name, name, {}) for name in backends]
    optional = set()
    if precision == "int8" and "openvino" in backends and cpu_info().has_bf16:
        # int8 with bf16 between its matmuls: faster on BF16 CPUs, used there only if it passes
        # here; failing it keeps int8 (f32 elsewhere), so it does not fail the export
        runs.append((OPENVINO_INT8_BF16, "openvino", {"inference_precision": "bf16"}))
        optional.add(OPENVINO_INT8_BF16)
    reports = {}
    for label, name, options in runs:
        backend = backend_class(name)(path, precision=precision, threads=threads, **options)
        scores = _score_batches(backend.run, batches, n)
        reports[label] = parity.compare(reference, scores[:, 0], groups, tolerance)
        if hasattr(backend, "inference_precision"):
            reports[label]["inference_precision"] = backend.inference_precision
    primary = dict(reports[backends[0]])
    primary["backend"] = backends[0]
    if len(reports) > 1:
        primary["by_backend"] = {name: {k: r[k] for k in ("max_abs_delta", "max_rel_delta", "spearman",
                                                          "top10_agreement", "passed", "inference_precision")
                                        if k in r}
                                 for name, r in reports.items()}
        failed = [name for name, r in reports.items() if not r["passed"] and name not in optional]
        if failed:
            primary["passed"] = False
            primary["failures"] = [f"{name}: {'; '.join(reports[name]['failures'])}" for name in failed]
    return primary


def _prepare_output(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise ArtifactError(f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it",
                            str(output_dir))


def _commit(staging: Path, output_dir: Path) -> None:
    """Replace ``output_dir`` with ``staging`` so a reader never sees a half-written artifact."""
    backup = None
    if output_dir.exists():
        backup = output_dir.with_name(output_dir.name + f".old-{os.getpid()}")
        output_dir.rename(backup)
    staging.rename(output_dir)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def export(model: str, output_dir: str | Path, precisions: tuple[str, ...] | list[str] = ("fp32", "int8"),
           revision: str | None = None, max_length: int | None = None,
           calibration_file: str | Path | None = None,
           tolerances: dict[str, parity.Tolerance] | None = None, allow_parity_failure: bool = False,
           overwrite: bool = False, threads: int | None = None, int8_method: str = "static",
           log: Callable[[str], None] | None = print) -> Path:
    """Export ``model`` (hub id or directory) to a verified artifact in ``output_dir``.

    Raises :class:`ParityError` (and writes nothing) when a precision misses its tolerance,
    unless ``allow_parity_failure`` is set; the report is then kept in the manifest.
    """
    precisions = list(dict.fromkeys(["fp32", *precisions]))  # fp32 is the base of every other precision
    unknown = [p for p in precisions if p not in EXPORT_PRECISIONS]
    if unknown:
        raise ValueError(f"unsupported precision(s) {unknown}; choose from {EXPORT_PRECISIONS} "
                         f"(the artifact format also knows {PRECISIONS})")
    if int8_method not in INT8_METHODS:
        raise ValueError(f"int8_method must be one of {INT8_METHODS}, got {int8_method!r}")
    if "bf16" in precisions and not installed("openvino"):
        raise ValueError("the bf16 precision runs on OpenVINO: pip install 'rerankrt[openvino]' to export it")
    if "bf16" in precisions and not cpu_info().has_bf16:
        # the gate verifies every precision it writes, and bf16 runs only on such CPUs
        raise ValueError(f"bf16 runs only on CPUs with AVX512_BF16 or AMX and this one ({cpu_info().model}, "
                         f"{cpu_info().int8_class}) has neither, so the export cannot verify it: export bf16 on "
                         "such a machine, or leave it out (fp32 and int8 run everywhere)")
    output_dir = Path(output_dir)
    _prepare_output(output_dir, overwrite)
    started = time.perf_counter()

    _say(log, f"[1/5] reading {model}")
    src = read_source(model, revision)
    if max_length is not None:
        if not 0 < max_length <= src.max_length:
            raise ValueError(f"max_length must be in 1..{src.max_length} for {model}, got {max_length}")
        src.max_length = max_length

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.staging-", dir=output_dir.parent))
    try:
        _say(log, f"[2/5] building the fp32 graph ({src.model_type}, {src.layout} layout, pooling={src.pooling})")
        fp32_path = staging / graph_file_name("fp32")
        graph_form = build_graph(src, fp32_path)
        tok_spec = _copy_tokenizer(src, staging)
        tokenizer = PairTokenizer(staging / TOKENIZER_NAME, src.max_length, tok_spec["pad_id"], tok_spec["cls_id"],
                                  tok_spec["sep_id"], tok_spec["vocab_size"] or None)
        # int8 ranges are calibrated on other documents than the parity gate checks
        quant_batches = [(b.input_ids, b.attention_mask)
                         for b in _calibration_batches(tokenizer, calibration.builtin_pairs(seed=1))]
        graphs = {"fp32": {"file": fp32_path.name, "graph_form": graph_form}}
        for precision in precisions[1:]:
            _say(log, f"[3/5] writing the {precision} graph")
            graphs[precision] = {"graph_form": graph_form,
                                 **_write_graph(src, precision, staging, fp32_path, int8_method, quant_batches)}

        pairs = (calibration.load_pairs_file(Path(calibration_file)) if calibration_file
                 else calibration.builtin_pairs())
        groups = calibration.group_ids(pairs)
        batches = _calibration_batches(tokenizer, pairs)
        _say(log, f"[4/5] parity: scoring {len(pairs)} calibration pairs with the PyTorch reference and "
                  f"{', '.join(precisions)}")
        from .reference import load_reference, reference_logits

        reference = reference_logits(load_reference(src), [(b.input_ids, b.attention_mask) for b in batches])
        ordered_ref = np.empty_like(reference)
        ordered_ref[np.concatenate([b.indices for b in batches])] = reference
        tolerances = {**parity.DEFAULT_TOLERANCES, **(tolerances or {})}
        reports = {precision: _check_parity(precision, staging / graphs[precision]["file"], batches, len(pairs),
                                            ordered_ref[:, 0], groups, tolerances[precision], threads)
                   for precision in precisions}
        _say(log, parity.format_report(reports))
        parity.enforce(reports, allow_parity_failure)

        _say(log, "[5/5] writing the artifact")
        for info in graphs.values():
            path = staging / info["file"]  # bf16 shares the fp32 file
            info.update({"sha256": sha256_file(path), "size_bytes": path.stat().st_size,
                         "inputs": ["input_ids", "attention_mask"], "output": "logits"})
        manifest = _manifest(src, tok_spec, graphs, reports, {
            "source": str(calibration_file) if calibration_file else "builtin", "pairs": len(pairs),
            "groups": len(set(groups)), "reference": "PyTorch fp32 (transformers eager attention + head)"},
            allow_parity_failure, time.perf_counter() - started)
        validate_manifest(manifest, staging / MANIFEST_NAME)
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _commit(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _say(log, f"wrote {output_dir} in {time.perf_counter() - started:.1f} s")
    return output_dir


def _special_id(src: SourceModel, which: str) -> int:
    from tokenizers import Tokenizer

    value = src.config.get(f"{which}_token_id")
    if isinstance(value, int):
        return value
    tok = Tokenizer.from_file(str(src.directory / "tokenizer.json"))
    for name in {"pad": ("[PAD]", "<pad>"), "cls": ("[CLS]", "<s>"), "sep": ("[SEP]", "</s>")}[which]:
        found = tok.token_to_id(name)
        if found is not None:
            return int(found)
    return 0


def _architecture(src: SourceModel) -> dict:
    cfg = src.config
    return {
        "model_type": src.model_type,
        "architectures": cfg.get("architectures"),
        "hidden_size": cfg.get("hidden_size"),
        "num_hidden_layers": cfg.get("num_hidden_layers"),
        "num_attention_heads": cfg.get("num_attention_heads"),
        "intermediate_size": cfg.get("intermediate_size"),
        "vocab_size": cfg.get("vocab_size"),
        "max_position_embeddings": cfg.get("max_position_embeddings"),
        "pooling": src.pooling,
        "head": [{"kind": h.kind, "shape": list(h.weight.shape), "activation": h.activation} for h in src.head],
        "num_labels": src.num_labels,
    }


def _copy_tokenizer(src: SourceModel, staging: Path) -> dict:
    """Copy ``tokenizer.json`` into the artifact; returns the manifest's tokenizer spec."""
    shutil.copyfile(src.directory / "tokenizer.json", staging / TOKENIZER_NAME)
    return {
        "file": TOKENIZER_NAME, "sha256": sha256_file(staging / TOKENIZER_NAME), "max_length": src.max_length,
        "truncation": "longest_first", "pad_id": _special_id(src, "pad"), "cls_id": _special_id(src, "cls"),
        "sep_id": _special_id(src, "sep"), "vocab_size": int(src.config.get("vocab_size", 0)),
    }


def _manifest(src: SourceModel, tok_spec: dict, graphs: dict, reports: dict, calibration_info: dict,
              allowed_failures: bool, seconds: float) -> dict:
    """Everything the runtime needs, and everything a person needs to trust it (see engine/artifact.py)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "format": FORMAT_NAME,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"id": src.source_id, "revision": src.revision, "layout": src.layout,
                   "files_sha256": src.file_hashes},
        "architecture": _architecture(src),
        "tokenizer": tok_spec,
        "activation": src.activation,
        "graphs": graphs,
        # the CPU class decides int8 arithmetic; the runtime re-checks int8 on any other (engine/int8_check.py)
        "parity": {"calibration": calibration_info, "results": reports, "allowed_failures": allowed_failures,
                   "cpu_class": cpu_info().int8_class},
        "export": {"versions": _versions(), "cpu": cpu_info().summary(), "seconds": round(seconds, 2)},
    }
