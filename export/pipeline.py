"""``export()``: the recipe, top to bottom.

    read source → build the fp32 graph → reduced precisions (passes) → score calibration pairs
    with the PyTorch reference and every precision → parity gate → write the artifact (atomically)

Each stage is a function in its own module (``source``, ``graph``, ``passes``, ``calibration``,
``reference``, ``parity``, ``artifact_writer``); this file checks the request, calls them in
order and says what it is doing. It must not build, quantize, score or write anything itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from rerankrt.engine import memory
from rerankrt.engine.artifact import PRECISIONS, graph_file_name
from rerankrt.engine.backends import ATTENTION_OP_FORM, onnxruntime_reads_attention_op
from rerankrt.engine.errors import UnsupportedModelError
from rerankrt.engine.hardware import cpu_info
from rerankrt.engine.selection import installed
from rerankrt.engine.tokenize import PairTokenizer

from . import artifact_writer, calibration, parity, tensorrt_rules
from .graph import GLOBAL_QUERY_CHUNKS, LOCAL_ATTENTION_FORMS, build_graph, weights_go_external
from .passes import PassContext, write_precision
from .passes.matmuls import KEEP_FP32_LAYERS, parse_fp32_entry
from .source import SourceModel, read_source

EXPORT_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
INT8_METHODS = ("static", "dynamic", "symmetric")
ATTENTION_CHOICES = ("auto", "matmul")

logger = logging.getLogger("rerankrt.export")

# Peak resident memory of an export per byte of fp32 weights, and a fixed part (torch, onnxruntime, the
# gate's activations): measured peaks (README, "Every Ettin size") 16.3-16.4 GB for the 1b (4.1 GB of weights:
# onnxruntime's int8 quantizer holds them three times), 2.3-3.9 GB for the 17m/32m.
EXPORT_BYTES_PER_WEIGHT_BYTE = 4.0
EXPORT_OVERHEAD_BYTES = 3 << 30
# What a gate pass sustains on this kind of machine (2 cores), for the time printed up front only: the 68m's
# gate (35,544 tokens x 84 MFLOP, 6 passes) took 213 s on a 2-core Zen 4: ~84 GFLOP/s.
GATE_FLOPS_PER_S = 80e9

_calibration_batches = calibration.calibration_batches  # benchmarks import it from here


def export(model: str, output_dir: str | Path, precisions: tuple[str, ...] | list[str] = ("fp32", "int8"),
           revision: str | None = None, max_length: int | None = None,
           calibration_file: str | Path | None = None,
           tolerances: dict[str, parity.Tolerance] | None = None, allow_parity_failure: bool = False,
           overwrite: bool = False, threads: int | None = None, int8_method: str = "static",
           gate_pairs: int | None = None, check_memory: bool = True, local_attention: str = "banded",
           global_query_chunks: int = GLOBAL_QUERY_CHUNKS, long_lengths: tuple[int, ...] = calibration.LONG_LENGTHS,
           int8_fp32_layers: tuple[int | str, ...] = KEEP_FP32_LAYERS, attention: str = "auto",
           log: Callable[[str], None] | None = print) -> Path:
    """Export ``model`` (hub id or directory) to a verified artifact in ``output_dir``.

    Raises :class:`ParityError` (and writes nothing) when a precision misses its tolerance,
    unless ``allow_parity_failure`` is set; the report is then kept in the manifest.
    Progress goes to the ``rerankrt.export`` logger and, unless ``log`` is None, to ``log``.
    ``gate_pairs`` caps the built-in pairs the gate scores (by default they adapt to the model's size:
    :func:`calibration.gate_size`). ``check_memory`` refuses, before anything starts, an export the
    machine's available memory cannot hold (:data:`EXPORT_BYTES_PER_WEIGHT_BYTE`). ``local_attention``:
    how ModernBERT's sliding-window layers attend, ``banded`` (blocks, linear in the length) or ``full``
    (n×n scores masked afterwards, the form before banded existed). ``global_query_chunks``: past
    2,048 tokens the global layers score their queries in this many consecutive chunks (1: all at once,
    the form before; peak RSS of one 7,999-token pair of the distilled 17m on onnxruntime 2.3 GB → 0.42 GB
    with 16: benchmarks/results/long-20261204-0625). ``long_lengths``: the token
    lengths fp32 is also checked at (one long pair each; ``()`` for none — the check's reference at
    7,999 tokens is most of a small model's export time), listed in the manifest when checked.
    ``int8_fp32_layers``: what int8 keeps fp32 — encoder layers (negative indices count from the last) or one
    block of a layer, ``"N.attn"`` (its Q/K/V/output projections) or ``"N.mlp"``; ``()`` quantizes every layer.
    By default the first layer's attention and the last layer, what the gate is most sensitive to: on the
    distilled 17m every layer int8 doubles the max |Δ| (0.039 → 0.088), and it is the first layer's attention
    projections that do it (their input is the embeddings' LayerNorm); its MLP int8 leaves the error as it was
    and runs the int8 graph 1.06-1.08× faster (issue 16; the whole first layer fp32 was the default before).
    ``attention``: ``auto`` also writes the attention-op form of fp32 and int8 for onnxruntime on CPUs
    (:func:`attention_op_precisions`); ``matmul`` writes the one (matmul) form only.
    """
    precisions = _check_request(precisions, int8_method)
    if local_attention not in LOCAL_ATTENTION_FORMS:
        raise ValueError(f"local_attention must be one of {LOCAL_ATTENTION_FORMS}, got {local_attention!r}")
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {ATTENTION_CHOICES}, got {attention!r}")
    output_dir = Path(output_dir)
    artifact_writer.refuse_overwrite(output_dir, overwrite)
    say, started = _reporter(log), time.perf_counter()

    say(f"[1/6] reading {model}")
    src = _limit_length(read_source(model, revision), max_length, model)
    _check_fp32_layers(tuple(int8_fp32_layers), _encoder_layers(src), "int8" in precisions)
    weight_bytes = src.weight_bytes_fp32()
    if check_memory:
        memory.require(EXPORT_OVERHEAD_BYTES + int(EXPORT_BYTES_PER_WEIGHT_BYTE * weight_bytes),
                       f"exporting {model} ({weight_bytes / 4 / 1e6:,.0f} M parameters)",
                       "export on a machine with more memory (the artifact then runs on smaller ones), or pass "
                       "check_memory=False / --no-memory-check to try anyway")
    tok_spec = artifact_writer.tokenizer_spec(src)
    tokenizer = PairTokenizer(src.directory / "tokenizer.json", src.max_length, tok_spec["pad_id"],
                              tok_spec["cls_id"], tok_spec["sep_id"], tok_spec["vocab_size"] or None)
    size = calibration.gate_size(tokenizer, _flops_per_token(src, weight_bytes), gate_pairs)
    calib = calibration.load_calibration(tokenizer, calibration_file, size)
    tokens = sum(len(t) for t in calib.token_ids)
    per_pass = tokens * _flops_per_token(src, weight_bytes) / GATE_FLOPS_PER_S
    passes = 1 + sum(len(parity.planned_runs(p)) for p in precisions)  # PyTorch, then every backend run
    say(f"[2/6] parity gate: {len(calib.pairs)} calibration pairs ({tokens:,} tokens), {passes} passes (the PyTorch "
        f"reference, then {', '.join(precisions)} on each backend): about {per_pass * passes:,.0f} s on 2 cores"
        + ("" if calibration_file or gate_pairs else f" (pairs chosen for {weight_bytes / 4e6:,.0f} M "
           "parameters; --gate-pairs sets them)") + "; scoring the PyTorch reference first")
    gate_started = time.perf_counter()
    from .reference import DESCRIPTION, score_reference  # torch: imported only once a model is exported

    # First, so the torch model is gone before any graph is built or loaded: at the end (as before) the
    # 1b's export peaked at 14.4 GB with it loaded on top of what quantization had left in the heap.
    heads = int(src.config.get("num_attention_heads", 1))
    long = calibration.long_check(tokenizer, _flops_per_token(src, weight_bytes), heads, tuple(long_lengths))
    scored = score_reference(src, calib.token_ids + long.token_ids, tokenizer.pad_id)[:, 0]
    reference, long_reference = scored[:len(calib.token_ids)], scored[len(calib.token_ids):]
    gate_s = time.perf_counter() - gate_started
    _release_memory()
    with artifact_writer.staging_dir(output_dir) as staging:
        say(f"[3/6] building the fp32 graph ({src.model_type}, {src.layout} layout, pooling={src.pooling})")
        fp32_path = staging / graph_file_name("fp32")
        graph_form = build_graph(src, fp32_path, local_attention=local_attention,
                                 global_query_chunks=global_query_chunks)
        form: dict = {"graph_form": graph_form}
        if graph_form == "native-modernbert":
            form["local_attention"] = local_attention
            form["global_query_chunks"] = global_query_chunks
            form["attention"] = "matmul"
        graphs = {"fp32": {"file": fp32_path.name, **form,
                           "tensorrt": tensorrt_rules.check_graph(fp32_path).report()}}
        context = PassContext(_encoder_layers(src), calibration.quantization_batches(tokenizer, size),
                              keep_fp32_layers=tuple(int8_fp32_layers))
        for precision in precisions[1:]:
            say(f"[4/6] writing the {precision} graph")
            graphs[precision] = {**form,
                                 **write_precision(precision, fp32_path, context, int8_method)}
            if "tensorrt" in graphs[precision]:
                say(f"      {precision}: {tensorrt_rules.summarize(graphs[precision]['tensorrt'])}")
            if precision == "int8" and int8_method == "symmetric" and \
                    not graphs[precision]["tensorrt"]["tensorrt_conformant"]:
                raise UnsupportedModelError(  # the form exists for TensorRT: a graph it cannot read is a bug
                    "the symmetric int8 graph breaks TensorRT's ONNX rules: "
                    f"{tensorrt_rules.summarize(graphs[precision]['tensorrt'])}")
            _release_memory()
        op_precisions, why_not = attention_op_precisions(attention, precisions, int8_method, graph_form,
                                                         weights_go_external(src))
        if op_precisions:
            say(f"[4/6] writing the attention-op form of {', '.join(op_precisions)} (what onnxruntime loads on CPUs)")
            op_fp32 = staging / form_file_name("fp32", ATTENTION_OP_FORM)
            build_graph(src, op_fp32, local_attention=local_attention, global_query_chunks=global_query_chunks,
                        attention=ATTENTION_OP_FORM)
            for precision in op_precisions:
                entry = ({"file": op_fp32.name} if precision == "fp32" else
                         write_precision(precision, op_fp32, context, int8_method,
                                         out_name=form_file_name(precision, ATTENTION_OP_FORM)))
                graphs[precision]["forms"] = {ATTENTION_OP_FORM: {"file": entry["file"],
                                                                  "runs_on": "onnxruntime (CPU)"}}
                _release_memory()
        elif why_not:
            say(f"      no attention-op form: {why_not}")

        say(f"[5/6] parity: scoring the calibration pairs with {', '.join(precisions)}")
        gate_started = time.perf_counter()
        tolerances = {**parity.DEFAULT_TOLERANCES, **(tolerances or {})}
        reports = {p: parity.check_precision(p, staging / graphs[p]["file"], calib.token_ids, tokenizer.pad_id,
                                             reference, calib.groups, tolerances[p], src.num_labels, threads)
                   for p in precisions}
        if long.token_ids:  # fp32 at long lengths too: the banded sliding layers, padding within a batch
            checked = parity.check_long_lengths(staging / graphs["fp32"]["file"], long, tokenizer.pad_id,
                                                long_reference, reports["fp32"]["reference_range"],
                                                tolerances["fp32"], src.num_labels, threads)
            reports["fp32"]["long_lengths"] = checked
            if not checked["passed"]:
                reports["fp32"]["passed"] = False
                reports["fp32"].setdefault("failures", []).append(
                    f"long lengths {checked['lengths']}: max |Δ|/range over the fp32 tolerance")
        for precision in op_precisions:  # the onnxruntime-only forms: checked on onnxruntime, long lengths too
            path = staging / graphs[precision]["forms"][ATTENTION_OP_FORM]["file"]
            checked_form = parity.check_precision(precision, path, calib.token_ids, tokenizer.pad_id, reference,
                                                  calib.groups, tolerances[precision], src.num_labels, threads,
                                                  devices=("cpu",), cpu_backends=("onnxruntime",))
            if precision == "fp32" and long.token_ids:
                checked_form["long_lengths"] = parity.check_long_lengths(
                    path, long, tokenizer.pad_id, long_reference, reports["fp32"]["reference_range"],
                    tolerances["fp32"], src.num_labels, threads, cpu_backends=("onnxruntime",))
                if not checked_form["long_lengths"]["passed"]:
                    checked_form["passed"] = False
                    checked_form.setdefault("failures", []).append("long lengths: over the fp32 tolerance")
            reports[precision].setdefault("forms", {})[ATTENTION_OP_FORM] = checked_form
        say(parity.format_report(reports))
        for line in drop_failed_forms(graphs, reports, staging):
            say(f"      {line}")
        say(f"      the gate took {gate_s + time.perf_counter() - gate_started:,.0f} s")
        parity.enforce(reports, allow_parity_failure)

        say("[6/6] writing the artifact")
        artifact_writer.write_artifact(staging, output_dir, src, tok_spec, graphs, reports,
                                       {**calib.describe(), "reference": DESCRIPTION}, allow_parity_failure,
                                       time.perf_counter() - started)
    say(f"wrote {output_dir} in {time.perf_counter() - started:.1f} s")
    return output_dir


def drop_failed_forms(graphs: dict, reports: dict, staging: Path) -> list[str]:
    """Remove every extra graph form that failed its gate (file and manifest entry); what was dropped, as lines.

    A form is an optional faster copy of a precision for one runtime: one that misses its tolerance must not be
    loaded (not even with ``--allow-parity-failure``, which keeps failing *precisions*), and must not fail an
    export whose main graphs passed — that runtime then loads the main graph. Its report stays, marked dropped.
    """
    dropped = []
    for precision, report in reports.items():
        for form, checked in report.get("forms", {}).items():
            if checked["passed"] or form not in graphs[precision].get("forms", {}):
                continue
            (staging / graphs[precision]["forms"].pop(form)["file"]).unlink(missing_ok=True)
            if not graphs[precision]["forms"]:
                del graphs[precision]["forms"]
            checked["dropped"] = True
            dropped.append(f"{precision} {form} form dropped (failed its gate: {'; '.join(checked['failures'])}); "
                           "onnxruntime loads the main graph")
    return dropped


def form_file_name(precision: str, form: str) -> str:
    return f"model.{precision}.{form}.onnx"


def attention_op_precisions(attention: str, precisions: list[str], int8_method: str, graph_form: str,
                            external: bool) -> tuple[list[str], str]:
    """The precisions that also get an attention-op graph, and why none do when none do.

    The main graphs stay in the matmul form every runtime reads (OpenVINO runs it faster, TensorRT reads only it,
    the GPU paths were measured on it); onnxruntime on CPUs loads the attention-op form, 1.16-1.36x faster
    (``engine/backends/__init__.py``). So: fp32 and the CPU int8 forms (static, dynamic; the symmetric one is
    TensorRT's), for ModernBERT graphs whose weights are inline (a second copy of a graph past 1.5 GB — the
    400m, 1b — is left out), when the onnxruntime here can run and so verify them.
    """
    if attention == "matmul":
        return [], ""
    if graph_form != "native-modernbert":
        return [], "only rerankrt's ModernBERT graph has the form"
    if external:
        return [], "the weights are past 1.5 GB: one form only (matmul), not a second copy"
    if not onnxruntime_reads_attention_op():
        return [], "this onnxruntime is older than 1.24 and could not verify it"
    import onnx

    if onnx.defs.onnx_opset_version() < 23:
        return [], f"this onnx ({onnx.__version__}) predates opset 23"
    return [p for p in precisions if p == "fp32" or (p == "int8" and int8_method != "symmetric")], ""


def _check_request(precisions: tuple[str, ...] | list[str], int8_method: str) -> list[str]:
    """The precisions to write, fp32 first; refuses at once what the export could not write or verify."""
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
    return precisions


def _reporter(log: Callable[[str], None] | None) -> Callable[[str], None]:
    def say(message: str) -> None:
        logger.info(message)
        if log is not None:
            log(message)

    return say


def _limit_length(src: SourceModel, max_length: int | None, model: str) -> SourceModel:
    if max_length is not None:
        if not 0 < max_length <= src.max_length:
            raise ValueError(f"max_length must be in 1..{src.max_length} for {model}, got {max_length}")
        src.max_length = max_length
    return src


def _release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc keeps it otherwise), between the big stages."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _flops_per_token(src: SourceModel, weight_bytes: int) -> float:
    """2 × the parameters a token passes through (all but the embedding table, which is a lookup)."""
    embedding = int(src.config.get("vocab_size", 0)) * int(src.config.get("hidden_size", 0))
    return 2.0 * max(weight_bytes // 4 - embedding, 1)


def _check_fp32_layers(layers: tuple[int | str, ...], num_layers: int, int8: bool) -> None:
    """Refuse, before anything is built, fp32 layers the model does not have (an index would wrap silently)
    and entries that are neither a layer nor a layer's ``attn``/``mlp`` block."""
    if not int8 or layers == KEEP_FP32_LAYERS:
        return
    indices = [parse_fp32_entry(entry)[0] for entry in layers]  # ValueError on a malformed entry
    if not num_layers:  # a graph whose layers rerankrt does not know: it quantizes every weight matmul anyway
        if not layers:
            return
        raise ValueError("int8_fp32_layers needs a model whose layers rerankrt's graph knows (ModernBERT)")
    wrong = [entry for entry, k in zip(layers, indices, strict=True) if not -num_layers <= k < num_layers]
    if wrong:
        raise ValueError(f"int8_fp32_layers {wrong} out of range: the model has {num_layers} layers "
                         f"(0…{num_layers - 1}, or -1…-{num_layers} from the last)")


def _encoder_layers(src: SourceModel) -> int:
    """Layer count for the int8 passes' fp32 first/last layers; known for rerankrt's ModernBERT graph only."""
    return int(src.config.get("num_hidden_layers", 0)) if src.model_type == "modernbert" else 0
