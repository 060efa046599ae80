"""``score_file``: stream an input file through a reranker into an output file, resumably.

Top to bottom: records (streamed, validated) → chunks of about ``chunk_pairs`` pairs (a record is
never split) → scorer (pipelined) → writer (side file) → checkpoint → … → atomic rename.

Loss-free by construction: the checkpoint (``<output>.checkpoint.json``, replaced atomically) is
written only after the chunk's output is on disk, and records how many input records are done and
the side files' committed positions. After a crash or ``kill -9``, ``resume=True`` truncates the
side files to those positions and skips that many records, so every input row appears in the
output exactly once. An existing output is never replaced unless ``overwrite=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..chunking import LongDocuments
from ..errors import RerankrtError
from .records import (
    BadRowError,
    Fields,
    Record,
    RowError,
    count_rows,
    delimited_header,
    detect_format,
    read_delimited,
    read_jsonl,
    read_parquet,
)
from .scoring import ChunkScorer
from .trec import read_trec
from .writers import RejectsWriter, make_writer

CHECKPOINT_VERSION = 1


@dataclass
class ScoreJob:
    """What to score and how; ``fingerprint()`` ties a checkpoint to it."""

    input: Path
    output: Path
    input_format: str | None = None
    output_format: str | None = None
    fields: Fields = field(default_factory=Fields)
    corpus: Path | None = None  # TREC input: BEIR corpus.jsonl
    queries: Path | None = None  # TREC input: BEIR queries.jsonl
    depth: int | None = 100  # TREC input: candidates per query
    top_k: int | None = None  # TREC output: keep the best k per query
    with_title: bool = True
    on_error: str = "fail"  # "fail" | "skip"
    rejects: Path | None = None
    chunk_pairs: int = 8192
    model_id: str = ""  # artifact + precision + max_length: scores from another model must not be mixed in

    def fingerprint(self) -> str:
        data = {k: str(v) for k, v in asdict(self).items() if k not in ("chunk_pairs", "on_error", "rejects")}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Summary:
    records: int = 0
    pairs: int = 0
    tokens: int = 0
    truncated_pairs: int = 0
    rejected_rows: int = 0
    seconds: float = 0.0
    resumed_records: int = 0
    output: str = ""
    rejects: str | None = None
    scorer: str = ""

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        text = (f"{self.records:,} rows, {self.pairs:,} pairs, {self.tokens:,} tokens, {self.truncated_pairs:,} "
                f"truncated pairs, {self.rejected_rows:,} rejected rows in {self.seconds:.1f} s "
                f"({self.pairs_per_s:,.1f} pairs/s; {self.scorer}) → {self.output}")
        if self.resumed_records:
            text += f" (resumed after {self.resumed_records:,} rows)"
        if self.rejects:
            text += f"; rejects: {self.rejects}"
        return text


class Checkpoint:
    def __init__(self, output: Path) -> None:
        self.path = output.with_name(output.name + ".checkpoint.json")

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RerankrtError(f"checkpoint {self.path} is unreadable ({exc}); delete it and use --overwrite "
                                "to start over") from None
        if data.get("version") != CHECKPOINT_VERSION:
            raise RerankrtError(f"checkpoint {self.path} has version {data.get('version')}, expected "
                                f"{CHECKPOINT_VERSION}")
        return data

    def save(self, data: dict) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"version": CHECKPOINT_VERSION, **data}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _input_identity(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_records(job: ScoreJob, fmt: str) -> Iterator[Record | RowError]:
    if fmt == "jsonl":
        return read_jsonl(job.input, job.fields)
    if fmt in ("csv", "tsv"):
        return read_delimited(job.input, job.fields, "\t" if fmt == "tsv" else ",")
    if fmt == "parquet":
        return read_parquet(job.input, job.fields)
    if job.corpus is None or job.queries is None:
        raise ValueError("a TREC run needs the BEIR corpus.jsonl and queries.jsonl (--corpus, --queries)")
    return read_trec(job.input, job.corpus, job.queries, job.depth, job.with_title)


def _chunks(items: Iterator[Record | RowError], chunk_pairs: int) -> Iterator[list[Record | RowError]]:
    chunk: list[Record | RowError] = []
    pairs = 0
    for item in items:
        chunk.append(item)
        pairs += len(item.documents) if isinstance(item, Record) else 0
        if pairs >= chunk_pairs:
            yield chunk
            chunk, pairs = [], 0
    if chunk:
        yield chunk


def score_file(job: ScoreJob, scorer: ChunkScorer, resume: bool = False, overwrite: bool = False,
               progress: bool = True) -> Summary:
    """Score ``job.input`` into ``job.output``; see the module docstring for the guarantees."""
    started = time.perf_counter()
    in_fmt = detect_format(job.input, job.input_format)
    out_fmt = job.output_format or ("trec" if in_fmt == "trec" else detect_format(job.output, None))
    if in_fmt == "trec" and out_fmt != "trec":
        raise ValueError("a TREC run input is written as a TREC run (use an output name ending in .trec or .run)")
    if out_fmt == "trec" and in_fmt != "trec":
        raise ValueError("TREC run output needs a TREC run input (with --corpus and --queries)")
    if out_fmt in ("csv", "tsv") and in_fmt not in ("csv", "tsv"):
        raise ValueError(f"{in_fmt} input cannot be written as {out_fmt}; use the input's format or jsonl/parquet")
    if job.on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {job.on_error!r}")
    if not job.input.is_file():
        raise FileNotFoundError(f"input {job.input} does not exist")
    output = job.output
    checkpoint = Checkpoint(output)
    state = checkpoint.load()
    if state is not None and not resume and not overwrite:
        raise RerankrtError(f"{checkpoint.path} is left from an interrupted run: pass --resume to continue it, "
                            "or --overwrite to start over")
    if state is not None and resume:
        if state["fingerprint"] != job.fingerprint() or state["input"] != _input_identity(job.input):
            raise RerankrtError(f"{checkpoint.path} belongs to another input, model or settings: it cannot be "
                                "resumed with these; use --overwrite to start over")
    else:
        state = None
        if output.exists() and not overwrite:
            raise RerankrtError(f"{output} exists; pass --overwrite to replace it")
    rejects_path = job.rejects or output.with_name(output.name + ".rejects.jsonl")

    done = state["records_done"] if state else 0
    summary = Summary(**state["summary"]) if state else Summary()
    summary.resumed_records = done
    summary.output, summary.scorer = str(output), scorer.describe
    header = delimited_header(job.input, "\t" if in_fmt == "tsv" else ",") if in_fmt in ("csv", "tsv") else None
    writer = make_writer(out_fmt, output, state["output_pos"] if state else 0, header, job.top_k)
    rejects = RejectsWriter(rejects_path, state["rejects_pos"] if state else 0) if job.on_error == "skip" else None
    if rejects is not None and state:
        rejects.count = summary.rejected_rows

    items = read_records(job, in_fmt)
    for _ in range(done):  # already in the output
        next(items, None)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=count_rows(job.input, in_fmt) if in_fmt != "trec" else None, initial=done, unit="row",
                   desc="Scoring", dynamic_ncols=True, smoothing=0.05)

    def tagged() -> Iterator[tuple[list, list[tuple[str, str]]]]:
        for chunk in _chunks(items, job.chunk_pairs):
            for item in chunk:
                if isinstance(item, RowError) and rejects is None:
                    raise BadRowError(job.input, item)
            pairs = [(r.query, d) for r in chunk if isinstance(r, Record) for d in r.documents]
            yield chunk, pairs

    base_seconds = summary.seconds
    try:
        for chunk, result in scorer.map(tagged()):
            records = [r for r in chunk if isinstance(r, Record)]
            per_record, start = [], 0
            for record in records:
                per_record.append(result.scores[start:start + len(record.documents)])
                start += len(record.documents)
            writer.write(records, per_record)
            for item in chunk:
                if isinstance(item, RowError) and rejects is not None:  # without rejects, tagged() raised
                    rejects.write(item.line, item.reason, item.raw)
            done += len(chunk)
            summary.records += len(records)
            summary.pairs += start
            summary.tokens += result.tokens
            summary.truncated_pairs += result.truncated
            summary.rejected_rows = rejects.count if rejects else 0
            summary.seconds = base_seconds + time.perf_counter() - started
            position = writer.commit()
            rejects_pos = rejects.commit() if rejects else 0
            checkpoint.save({"fingerprint": job.fingerprint(), "input": _input_identity(job.input),
                             "records_done": done, "output_pos": position, "rejects_pos": rejects_pos,
                             "summary": asdict(summary)})
            if bar is not None:
                bar.update(len(chunk))
                bar.set_postfix(pairs_per_s=f"{summary.pairs_per_s:,.0f}", refresh=False)
    except BaseException:
        writer.close()  # the side files and checkpoint stay, for --resume
        raise
    finally:
        if bar is not None:
            bar.close()
    writer.finalize()
    if rejects is not None:
        if rejects.count:
            rejects.finalize()
            summary.rejects = str(rejects_path)
        else:
            rejects.discard()
    checkpoint.remove()
    summary.seconds = base_seconds + time.perf_counter() - started
    return summary


def score_file_with_artifact(job: ScoreJob, artifact: str, *, precision: str = "auto", backend: str = "auto",
                             threads: int | None = None, max_length: int | None = None, workers: int | None = None,
                             activation: str | None = None, resume: bool = False, overwrite: bool = False,
                             progress: bool = True, long_documents: LongDocuments | None = None) -> Summary:
    """:func:`score_file` with the scorer built for ``artifact`` (a directory or hub id).

    ``workers`` processes of one thread each, or this process with ``threads``; by default one
    process per physical core, or this process alone when ``threads`` is given (measured:
    benchmarks/bench_score.py). The job's ``model_id`` is set here, so a checkpoint is never
    resumed with another model, precision or length.
    """
    from ..artifact import load_artifact
    from ..hardware import physical_cores
    from ..hub import resolve_model_dir
    from ..reranker import Reranker
    from ..selection import choose_precision

    options: dict[str, Any] = {"precision": precision, "backend": backend, "max_length": max_length}
    # which model and precision will score, without loading it here (worker processes load their own)
    loaded = load_artifact(resolve_model_dir(artifact)[0])
    chosen = choose_precision(loaded, precision, "cpu")
    model_id = f"{loaded.directory}:{chosen}:{max_length or loaded.max_length}"
    if long_documents is not None and long_documents.chunked:  # chunked scores must not be mixed with truncated ones
        model_id += f":{long_documents}"
    job = replace(job, model_id=model_id)
    if workers is None:
        workers = 1 if threads else physical_cores()
    if workers > 1:
        scorer = ChunkScorer.processes(artifact, workers, {**options, "threads": 1}, activation, long_documents)
    else:
        scorer = ChunkScorer.in_process(Reranker.from_pretrained(artifact, threads=threads, **options), activation,
                                        long_documents)
    try:
        return score_file(job, scorer, resume=resume, overwrite=overwrite, progress=progress)
    finally:
        scorer.close()
