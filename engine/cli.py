"""The ``rerankrt`` command: export, predict, rank, info, bench, score, eval, serve.

Each subcommand parses its flags and calls one library function (the export pipeline, the
Reranker, :mod:`.microbench`, :mod:`.offline`, :mod:`.server`); workflows live there, not here.
Every subcommand imports what it needs when called: export imports ``rerankrt.export`` only
then, so the serving commands work in a runtime-only install (no torch).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys

import numpy as np

from .errors import RerankrtError


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        from rerankrt.export.pipeline import export
    except ImportError as exc:
        print(f"error: the export stage needs the [export] extra (pip install 'rerankrt[export]'): {exc}",
              file=sys.stderr)
        return 2
    tolerances = None
    if args.tolerance:
        from rerankrt.export.parity import DEFAULT_TOLERANCES, Tolerance
        tolerances = {}
        for item in args.tolerance:
            precision, _, values = item.partition(":")
            fields = dict(v.split("=") for v in values.split(","))
            base = DEFAULT_TOLERANCES[precision]
            tolerances[precision] = Tolerance(
                max_rel_delta=float(fields.get("max_rel_delta", base.max_rel_delta)),
                min_spearman=float(fields.get("min_spearman", base.min_spearman)),
                min_top10=float(fields.get("min_top10", base.min_top10)))
    export(args.model, args.output, precisions=[p.strip() for p in args.precision.split(",") if p.strip()],
           revision=args.revision, max_length=args.max_length, calibration_file=args.calibration,
           tolerances=tolerances, allow_parity_failure=args.allow_parity_failure, overwrite=args.overwrite,
           threads=args.threads, int8_method=args.int8_method,
           int8_fp32_layers=args.int8_fp32_layers, gate_pairs=args.gate_pairs,
           local_attention=args.local_attention, global_query_chunks=args.global_query_chunks,
           attention=args.attention, check_memory=not args.no_memory_check)
    return 0


def _load(args: argparse.Namespace):
    from .reranker import Reranker

    return Reranker.from_pretrained(args.artifact, precision=args.precision, threads=args.threads,
                                    max_length=args.max_length, backend=args.backend)


def _read_pairs(lines, source: str) -> list[tuple[str, str]]:
    """JSONL ``{"query": ..., "document": ...}`` lines; a bad line is reported as ``SOURCE line N``."""
    pairs = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append((row["query"], row["document"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise RerankrtError(
                f"{source} line {lineno}: expected {{\"query\": ..., \"document\": ...}} ({exc})") from exc
    return pairs


def _cmd_predict(args: argparse.Namespace) -> int:
    reranker = _load(args)
    if args.doc:
        if args.query is None:
            raise RerankrtError("--doc needs --query")
        pairs = [(args.query, d) for d in args.doc]
    else:
        pairs = _read_pairs(sys.stdin, "stdin")
    scores = reranker.predict(pairs, activation_fn=args.activation, show_progress_bar=args.progress,
                              long_documents=_long_documents(args))
    for (query, doc), score in zip(pairs, np.atleast_1d(scores)):
        print(json.dumps({"query": query, "document": doc, "score": float(score)}, ensure_ascii=False))
    return 0


def _cmd_rank(args: argparse.Namespace) -> int:
    reranker = _load(args)
    results = reranker.rank(args.query, args.doc, top_k=args.top_k, return_documents=True,
                            activation_fn=args.activation, long_documents=_long_documents(args))
    for item in results:
        print(json.dumps(item, ensure_ascii=False))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .artifact import load_artifact
    from .hardware import cpu_info
    from .int8_check import gate_class

    artifact = load_artifact(args.artifact)
    m = artifact.manifest
    if args.json:
        from .tuning import cached_decision

        decision = cached_decision(artifact)
        tuned = None if decision is None else {"config": decision.config.__dict__, "label": decision.config.label,
                                               "seconds": decision.seconds, "table": decision.table}
        print(json.dumps({"manifest": m, "cpu": cpu_info().summary(), "auto_measured": tuned}, indent=2))
        return 0
    arch = m["architecture"]
    print(f"artifact     {artifact.directory}")
    print(f"source       {m.get('source', {}).get('id')} (revision {m.get('source', {}).get('revision')})")
    print(f"model        {arch.get('model_type')} hidden={arch.get('hidden_size')} "
          f"layers={arch.get('num_hidden_layers')} "
          f"heads={arch.get('num_attention_heads')} pooling={arch.get('pooling')}")
    print(f"max_length   {artifact.max_length} (truncation {m['tokenizer']['truncation']}), "
          f"activation {artifact.activation}")
    for precision, info in m["graphs"].items():
        r = m.get("parity", {}).get("results", {}).get(precision)
        fid = (f"max|Δ|={r['max_abs_delta']:.3g} spearman={r['spearman']:.6f} top10={r['top10_agreement']:.3f} "
               f"{'ok' if r['passed'] else 'FAILED'}") if r else "no parity report"
        print(f"graph        {precision:<5} {info['file']:<18} {info.get('size_bytes', 0) / 1e6:8.1f} MB  {fid}")
        if info.get("attention"):  # how the graph writes attention (export --attention), local layers, chunks
            print(f"               attention {info['attention']}, sliding layers {info.get('local_attention')}, "
                  f"global queries in {info.get('global_query_chunks')} chunks past 2,048 tokens")
        for form, sub in info.get("forms", {}).items():  # the same precision in another form (onnxruntime, CPU)
            checked = (r or {}).get("forms", {}).get(form)
            verdict = (f"spearman={checked['spearman']:.6f} top10={checked['top10_agreement']:.3f} "
                       f"{'ok' if checked['passed'] else 'FAILED'}") if checked else "no parity report"
            print(f"               + {sub['file']:<32} {sub.get('size_bytes', 0) / 1e6:6.1f} MB  {form} form, "
                  f"for {sub.get('runs_on', '?')}: {verdict}")
        for data in info.get("data_files", []):  # weights of a graph past 2 GB
            print(f"               + {data['file']:<22} {data.get('size_bytes', 0) / 1e6:8.1f} MB  (external data)")
        for name, sub in (r or {}).get("by_backend", {}).items():
            print(f"               {name:<14} spearman={sub['spearman']:.6f} top10={sub['top10_agreement']:.3f} "
                  f"{'ok' if sub['passed'] else 'failed'}")
    cpu = cpu_info().summary()
    print(f"this CPU     {cpu['model']} ({cpu['logical_cores']} logical cores)")
    print(f"features     {' '.join(cpu['features']) or 'unknown'}")
    print(f"int8 class   this CPU {cpu['int8_class']}; "
          f"the parity gate ran on {gate_class(artifact) or 'an unrecorded class'}")
    print(f"auto here    {_auto_choice(artifact)}")
    _print_tuning(artifact)
    return 0


def _print_tuning(artifact) -> None:
    """The measured ``auto``'s cached decision and table for this machine, if it was measured."""
    from .tuning import cached_decision

    decision = cached_decision(artifact)
    if decision is None:
        print("measured     not yet on this machine: the first auto load (or `rerankrt tune`) measures it")
        return
    print(f"measured here {decision.config.label} (tuned in {decision.seconds:.1f} s; rule's choice marked *)")
    for row in decision.table:
        rate = f"{row['pairs_per_s']:9.1f} pairs/s" if "pairs_per_s" in row else f"  {row.get('skipped', '')}"
        rate += f" ({row.get('passes', 1)} pass(es): far behind, not timed again)" if "raced_out" in row else ""
        print(f"  {'*' if row.get('rule') else ' '} {row['label']:<32}{rate}")


def _auto_choice(artifact) -> str:
    """What ``precision="auto"``, ``backend="auto"`` load on this machine, in words.

    The rule alone answers, except for an int8 gated on another CPU class: then the Reranker is
    loaded, which runs (or reads the cached verdict of) the int8 check and may fall back.
    """
    from .errors import BackendUnavailableError
    from .hardware import cpu_info
    from .int8_check import gate_class
    from .reranker import Reranker
    from .selection import choose_backend, choose_inference_precision, choose_precision
    from .tuning import cached_decision

    decision = cached_decision(artifact)
    if decision is not None:
        return f"{decision.config.label} (measured here, cached)"
    try:
        precision = choose_precision(artifact, "auto", "cpu")
        backend = choose_backend(precision, "auto", "cpu")
    except BackendUnavailableError as exc:
        return f"nothing loadable: {exc}"
    between = choose_inference_precision(artifact, precision, backend)
    check = ""
    if precision == "int8" and gate_class(artifact) != cpu_info().int8_class:
        loaded = Reranker.from_pretrained(artifact.directory, precision="auto", backend="auto", tune=False)
        precision, backend = loaded.precision, loaded.backend.name
        between = getattr(loaded.backend, "inference_precision", None) if precision == "int8" else None
        check = f"; {loaded.int8_check.describe()}" if loaded.int8_check else ""
    return (f"{precision} on {backend}" + (f" ({between} between the int8 matmuls)" if between else "") + check
            + " (the rule: not measured here yet)")


def _cmd_tune(args: argparse.Namespace) -> int:
    """Measure (again) the artifact's faithful configurations here and cache the fastest (``tuning.py``)."""
    from .artifact import load_artifact
    from .backends import ConfigBuilder
    from .tuning import decide

    artifact = load_artifact(args.artifact)
    decision = decide(artifact, ConfigBuilder(artifact, threads=args.threads).checked, threads=args.threads,
                      force=True, progress=lambda line: print(line, file=sys.stderr))
    if decision is None:
        print("nothing to measure: one faithful configuration only, or the cache directory cannot be written "
              "(RERANKRT_CACHE); auto follows the rule", file=sys.stderr)
        return 1
    print(f"auto here: {decision.config.label} (measured in {decision.seconds:.1f} s, cached)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    """Throughput and latency of one artifact on this machine (the peer comparison is benchmarks/)."""
    from .microbench import measure, synthetic_pairs

    if args.pairs:
        with open(args.pairs, encoding="utf-8") as fh:
            pairs = _read_pairs(fh, args.pairs)
    else:
        pairs = synthetic_pairs(args.n)
    print(json.dumps(measure(_load(args), pairs, passes=args.passes), indent=2))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .offline import Fields, ScoreJob, score_file_with_artifact

    job = ScoreJob(Path(args.input), Path(args.output), args.format, args.output_format,
                   Fields(args.query_field, args.document_field, args.documents_field),
                   Path(args.corpus) if args.corpus else None, Path(args.queries) if args.queries else None,
                   args.depth, args.top_k, not args.no_title, args.on_error,
                   Path(args.rejects) if args.rejects else None, args.chunk_pairs)
    summary = score_file_with_artifact(job, args.artifact, precision=args.precision, backend=args.backend,
                                       threads=args.threads, max_length=args.max_length, workers=args.workers,
                                       activation=args.activation, resume=args.resume, overwrite=args.overwrite,
                                       progress=not args.no_progress, long_documents=_long_documents(args))
    print(summary.describe(), file=sys.stderr)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .offline.evaluate import evaluate_beir

    report = evaluate_beir(Path(args.beir), split=args.split, artifact=args.artifact,
                           precisions=args.precision.split(","), backend=args.backend, threads=args.threads,
                           max_length=args.max_length, first_stage=Path(args.first_stage) if args.first_stage else None,
                           depth=args.depth, runs=[Path(r) for r in args.runs or []], metrics=args.metrics.split(","),
                           out_dir=Path(args.out_dir) if args.out_dir else None, with_title=not args.no_title,
                           progress=not args.no_progress, long_documents=_long_documents(args))
    print(report.to_json() if args.json else report.to_markdown())
    return 0


def _long_documents(args: argparse.Namespace):
    """The ``--long-documents`` flags as ``chunking.LongDocuments`` (refused here, before any loading)."""
    from .chunking import LongDocuments

    try:
        return LongDocuments(args.long_documents, args.chunk_tokens, args.chunk_stride, args.chunk_aggregate,
                             args.max_chunks_per_doc)
    except ValueError as exc:
        raise RerankrtError(str(exc)) from None


def long_document_args(q: argparse.ArgumentParser) -> None:
    """What to do with documents longer than max_length (engine/chunking.py), for every scoring command."""
    q.add_argument("--long-documents", choices=["truncate", "chunk"], default="truncate",
                   help="truncate (default, as sentence-transformers) or chunk: score windows of the document "
                        "beside the query and aggregate them")
    q.add_argument("--chunk-tokens", type=int, help="document tokens per window (default: all that fit)")
    q.add_argument("--chunk-stride", type=int, help="tokens between window starts (default: half a window)")
    q.add_argument("--chunk-aggregate", choices=["max", "mean", "first"], default="max")
    q.add_argument("--max-chunks-per-doc", type=int, help="windows scored per document at most")


def _number(text: str, kind: type, what: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _port(text: str) -> int:
    """A TCP port to bind: 1..65535. Why checked here: the socket layer keeps the low 16 bits, so
    70000 silently became 4464; and 0 (any free port) would leave clients not knowing where to go."""
    value = int(_number(text, int, "an integer port"))
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1..65535)")
    return value


def _positive_int(text: str) -> int:
    """A count or limit: 0 or less would refuse everything (or, passed on, fail deep in the server)."""
    value = int(_number(text, int, "an integer"))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _layer_list(text: str) -> tuple[int | str, ...]:
    """``--int8-fp32-layers``: ``none`` or comma-separated layer indices or ``N.attn``/``N.mlp`` blocks (the
    export checks the range; parsed here, not by the export package, which the engine never imports)."""
    if text.strip().lower() in ("none", ""):
        return ()
    out: list[int | str] = []
    for part in (piece.strip() for piece in text.split(",")):
        match = re.fullmatch(r"(-?\d+)(?:\.(attn|mlp))?", part)
        if not match:
            raise argparse.ArgumentTypeError("expected 'none' or comma-separated layer indices or N.attn / N.mlp "
                                             f"blocks, got {text!r}")
        out.append(int(match.group(1)) if match.group(2) is None else f"{int(match.group(1))}.{match.group(2)}")
    return tuple(out)


def _positive_seconds(text: str) -> float:
    """A timeout: 0 would expire everything at once; inf and nan are not deadlines."""
    value = _number(text, float, "a number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative(text: str) -> float:
    """A wait or grace period, where 0 means "none"."""
    value = _number(text, float, "a number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server.config import ServerConfig
        from .server.main import serve
    except ImportError as exc:
        raise RerankrtError(f"serving needs the [serve] extra (pip install 'rerankrt[serve]'): {exc}") from exc
    config = ServerConfig(
        max_documents=args.max_documents, max_document_bytes=args.max_document_bytes,
        max_body_bytes=args.max_body_bytes, request_timeout_s=args.request_timeout,
        auto_truncate=not args.no_auto_truncate, api_key=args.api_key or ServerConfig.api_key_from_env(),
        max_concurrent_requests=args.max_concurrent_requests, max_client_concurrency=args.max_client_concurrency,
        max_queued_pairs=args.max_queued_pairs, tokenize_threads=args.tokenize_threads,
        max_tokenize_waiting=args.max_tokenize_waiting, max_wait_ms=args.max_wait_ms,
        window_tokens=args.window_tokens, header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
        max_connections=args.max_connections, drain_grace_s=args.drain_grace, tracing=args.otel)
    if args.otel:
        from .server.tracing import configure_exporter

        configure_exporter()
    serve(args.artifacts, host=args.host, port=args.port, config=config, log_level=args.log_level,
          precision=args.precision, backend=args.backend, threads=args.threads, max_length=args.max_length,
          token_budget=args.token_budget)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rerankrt", description="Export and run cross-encoder rerankers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export a CrossEncoder (hub id or directory) to a verified artifact")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--precision", default="fp32,int8",
                   help="comma list of fp32, fp16, bf16, int8 (default fp32,int8; bf16 needs openvino)")
    p.add_argument("--local-attention", choices=["banded", "full"], default="banded",
                   help="ModernBERT sliding-window layers: banded (blocks of the window, linear in the length; "
                        "default) or full (n×n scores masked afterwards)")
    p.add_argument("--attention", choices=["auto", "matmul"], default="auto",
                   help="auto (default): besides the graphs every runtime reads (attention as opset-17 matmuls), "
                        "fp32 and int8 also in the attention-op form (ONNX opset 23 Attention and RotaryEmbedding), "
                        "which onnxruntime loads on CPUs (~1.17x faster; needs onnxruntime>=1.24); matmul: one "
                        "form only (a smaller artifact)")
    p.add_argument("--global-query-chunks", type=int, default=16, metavar="N",
                   help="ModernBERT global layers past 2,048 tokens score their queries in N consecutive chunks, "
                        "so one long document's scores take 1/N of the memory (default 16; 1 = all at once)")
    p.add_argument("--int8-method", choices=["static", "dynamic", "symmetric"], default="static",
                   help="static: calibrated Q/DQ, uint8 activations (default, the CPU form); symmetric: int8 "
                   "activations with zero point 0 and the embedding through DequantizeLinear, the form TensorRT "
                   "reads (checked at export); dynamic: onnxruntime quantize_dynamic")
    p.add_argument("--int8-fp32-layers", type=_layer_list, default=("0.attn", -1), metavar="LIST",
                   help="what int8 keeps fp32, comma-separated: encoder layers (negative from the last) or one "
                        "block of a layer, N.attn or N.mlp (default 0.attn,-1: the first layer's attention "
                        "projections and the last layer); 'none' quantizes every layer: a few %% faster, about "
                        "twice the int8 error; the parity gate checks it")
    p.add_argument("--revision")
    p.add_argument("--max-length", type=int)
    p.add_argument("--calibration", help="JSONL (query, document) or TSV pairs for the parity gate")
    p.add_argument("--gate-pairs", type=_positive_int,
                   help="at most this many built-in pairs for the parity gate (default: adapted to the model's "
                        "size, 128 up to the 150m, 10 for the 1b)")
    p.add_argument("--no-memory-check", action="store_true",
                   help="start even when the estimated peak memory exceeds what is available")
    p.add_argument("--tolerance", action="append",
                   help="override a parity tolerance, e.g. int8:min_spearman=0.99,min_top10=0.9")
    p.add_argument("--allow-parity-failure", action="store_true", help="keep precisions that miss their tolerance")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=_cmd_export)

    def runtime_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("artifact")
        q.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | int8 | fp16")
        q.add_argument("--backend", default="auto", help="auto | onnxruntime | openvino")
        q.add_argument("--threads", type=int)
        q.add_argument("--max-length", type=int)

    p = sub.add_parser("predict", help="score pairs: --query Q --doc D ..., or JSONL {query, document} on stdin")
    runtime_args(p)
    long_document_args(p)
    p.add_argument("--query")
    p.add_argument("--doc", action="append")
    p.add_argument("--activation", help="raw | sigmoid (default: the model's own)")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("rank", help="rank documents for one query")
    runtime_args(p)
    long_document_args(p)
    p.add_argument("--query", required=True)
    p.add_argument("--doc", action="append", required=True)
    p.add_argument("--top-k", type=int)
    p.add_argument("--activation")
    p.set_defaults(func=_cmd_rank)

    p = sub.add_parser("info", help="show an artifact's manifest, parity report and this CPU's features")
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("tune", help="measure which configuration auto loads on this machine, and cache it "
                                    "(the first auto load does it by itself)")
    p.add_argument("artifact")
    p.add_argument("--threads", type=int, help="the thread count the loads that read it will use")
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("bench", help="throughput and 1x100 rank latency of an artifact on this machine")
    runtime_args(p)
    p.add_argument("--pairs", help="JSONL file of {query, document}; default: synthetic pairs")
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--passes", type=int, default=3)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("score", help="score a file of pairs (JSONL, CSV/TSV, Parquet, or a TREC run + BEIR files); "
                       "streaming, resumable, rows in input order")
    runtime_args(p)
    long_document_args(p)
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--format", help="input format (default: from the file name): jsonl, csv, tsv, parquet, trec")
    p.add_argument("--output-format", help="default: from the output name")
    p.add_argument("--query-field", default="query")
    p.add_argument("--document-field", default="document")
    p.add_argument("--documents-field", default="documents", help="grouped rows: a list of documents per query")
    p.add_argument("--corpus", help="TREC input: BEIR corpus.jsonl")
    p.add_argument("--queries", help="TREC input: BEIR queries.jsonl")
    p.add_argument("--depth", type=int, default=100, help="TREC input: first-stage candidates per query (default 100)")
    p.add_argument("--top-k", type=int, help="TREC output: keep the best k per query")
    p.add_argument("--no-title", action="store_true", help="TREC input: document text without the BEIR title")
    p.add_argument("--activation", help="raw | sigmoid (default: the model's own)")
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                   help="bad rows: stop with file:line (default) or write them to a rejects file")
    p.add_argument("--rejects", help="rejects file (default OUTPUT.rejects.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--workers", type=int,
                   help="worker processes with one thread each; default: one per core, or a single process "
                   "when --threads is given (2 cores, distilled 17m: 2 processes 692 vs 1×2 threads 657 pairs/s)")
    p.add_argument("--chunk-pairs", type=int, default=8192, help="pairs per checkpointed chunk")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("eval", help="nDCG@10 / MRR@10 / Recall@100 of reranked runs against BEIR qrels, "
                       "vs the first stage (BM25 when no run is given), per precision")
    p.add_argument("--beir", required=True, help="BEIR dataset directory (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--split", default="test")
    p.add_argument("--artifact", help="rerank the first stage with this artifact")
    p.add_argument("--precision", default="fp32", help="comma list, e.g. fp32,int8: one reranked run each")
    p.add_argument("--backend", default="auto")
    long_document_args(p)
    p.add_argument("--threads", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--first-stage", help="TREC run of the first stage (default: BM25 with bm25s)")
    p.add_argument("--depth", type=int, default=100, help="candidates per query to rerank (default 100)")
    p.add_argument("--runs", nargs="*", help="more TREC runs to evaluate alongside")
    p.add_argument("--metrics", default="nDCG@10,RR@10,R@100", help="ir-measures names")
    p.add_argument("--out-dir", help="where runs are written (default ./eval-<dataset>)")
    p.add_argument("--no-title", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_eval)

    from .server.config import API_KEY_ENV, ServerConfig

    d = ServerConfig()
    p = sub.add_parser("serve", help="HTTP server: POST /v2/rerank (Cohere v2), /v1/rerank (Jina), POST /rerank (TEI), "
                       "GET /live /ready /health /info /metrics")
    p.add_argument("artifacts", nargs="+", metavar="[NAME=]ARTIFACT",
                   help="one or more artifacts (directory or hub id); the first is the default model")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=_port, default=8080, help="TCP port, 1..65535 (default %(default)s)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=_positive_int, help="inference threads per model")
    p.add_argument("--max-length", type=_positive_int, help="tokens per pair (default: the artifact's)")
    p.add_argument("--token-budget", type=_positive_int,
                   help="padded tokens per inference batch (default 2048 on CPU)")
    # per request: above each limit the request gets 413, naming the limit
    p.add_argument("--max-documents", type=_positive_int, default=d.max_documents,
                   help="documents per request; more: 413 (default %(default)s)")
    p.add_argument("--max-document-bytes", type=_positive_int, default=d.max_document_bytes,
                   help="UTF-8 bytes per document or query; more: 413 (default %(default)s)")
    p.add_argument("--max-body-bytes", type=_positive_int, default=d.max_body_bytes,
                   help="request body bytes; more: 413 (default %(default)s)")
    p.add_argument("--request-timeout", type=_positive_seconds, default=d.request_timeout_s,
                   help="seconds to score a request, else 504; a request may lower it with X-Request-Timeout "
                   "(default %(default)s)")
    # admission: over each limit the request gets 429 + Retry-After at once
    p.add_argument("--max-concurrent-requests", type=_positive_int, default=d.max_concurrent_requests,
                   help="rerank requests admitted and not yet answered; more: 429 (default %(default)s)")
    p.add_argument("--max-client-concurrency", type=_positive_int, default=d.max_client_concurrency,
                   help="such requests per client (API key, else peer address); more: 429 (default: no limit)")
    p.add_argument("--max-queued-pairs", type=_positive_int, default=d.max_queued_pairs,
                   help="pairs waiting per model; a request that does not fit: 429 (default %(default)s)")
    p.add_argument("--tokenize-threads", type=_positive_int, default=d.tokenize_threads,
                   help="threads parsing and tokenizing requests (default: one per core)")
    p.add_argument("--max-tokenize-waiting", type=_positive_int, default=d.max_tokenize_waiting,
                   help="requests waiting for a tokenize thread; more: 429 (default %(default)s)")
    # batching
    p.add_argument("--max-wait-ms", type=_non_negative, default=d.max_wait_ms,
                   help="how long a lone small request waits for company before running; 0: never "
                   "(default %(default)s)")
    p.add_argument("--window-tokens", type=_positive_int, default=d.window_tokens,
                   help="queued tokens sorted together per scheduling window (default: a multiple of the "
                   "token budget)")
    # connections
    p.add_argument("--header-timeout", type=_positive_seconds, default=d.header_timeout_s,
                   help="seconds to send a request's headers; then the connection is closed (default %(default)s)")
    p.add_argument("--body-timeout", type=_positive_seconds, default=d.body_timeout_s,
                   help="seconds to send a request's body; then 408 (default %(default)s)")
    p.add_argument("--max-connections", type=_positive_int, default=d.max_connections,
                   help="open connections; at the limit the oldest stalled one is closed to admit a new one "
                   "(default: from the open-file limit)")
    p.add_argument("--drain-grace", type=_non_negative, default=d.drain_grace_s,
                   help="seconds after SIGTERM that /ready answers 503 while requests are still served; 0: none "
                   "(default %(default)s)")
    p.add_argument("--no-auto-truncate", action="store_true",
                   help="TEI /rerank without 'truncate': refuse over-long pairs (413) instead of truncating")
    p.add_argument("--api-key", help=f"require this key (Authorization: Bearer KEY); default ${API_KEY_ENV}")
    p.add_argument("--otel", action="store_true",
                   help="OpenTelemetry spans per rerank request (parse, tokenize, queue, inference) sent with the "
                   "OTLP/HTTP exporter (OTEL_EXPORTER_OTLP_* variables); needs the [otel] extra")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=_cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RerankrtError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
