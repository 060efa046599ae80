"""``rerankrt eval``: a BEIR dataset → first stage → reranked runs per precision → one table of metrics.

Why a module of its own: the workflow (read the dataset, take or build a first stage, rerank it
with :func:`~.runner.score_file` once per precision, evaluate every run against the same qrels)
is a library call, not command-line code; the CLI parses flags and prints the report. The IR
pieces it composes (qrels, runs, metrics, BM25) are in :mod:`.ireval`; reranking goes through
file scoring like any other run, so it never re-implements batching or scoring.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..chunking import LongDocuments, describe
from ..errors import RerankrtError
from . import ireval
from .runner import ScoreJob, score_file
from .scoring import ChunkScorer


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass
class EvalReport:
    """One row of metrics per system (first stage, extra runs, one reranked run per precision)."""

    dataset: str
    judged_queries: int
    documents: int
    out_dir: Path
    metrics: list[str]
    rows: list[tuple[str, dict[str, float]]]

    def to_json(self) -> str:
        return json.dumps([{"system": name, **values} for name, values in self.rows], indent=1)

    def to_markdown(self) -> str:
        lines = [f"{self.dataset} ({self.judged_queries} judged queries, {self.documents:,} documents), "
                 f"runs in {self.out_dir}/",
                 "| system | " + " | ".join(self.metrics) + " |",
                 "|---|" + "---:|" * len(self.metrics)]
        lines += [f"| {name} | " + " | ".join(f"{values[m]:.4f}" for m in self.metrics) + " |"
                  for name, values in self.rows]
        return "\n".join(lines)


def evaluate_beir(beir: Path, *, split: str = "test", artifact: str | None = None,
                  precisions: Sequence[str] = ("fp32",), backend: str = "auto", threads: int | None = None,
                  max_length: int | None = None, first_stage: Path | None = None, depth: int = 100,
                  runs: Sequence[Path] = (), metrics: Sequence[str] = ireval.DEFAULT_METRICS,
                  out_dir: Path | None = None, with_title: bool = True, progress: bool = True,
                  log: Callable[[str], None] = _to_stderr, long_documents: LongDocuments | None = None
                  ) -> EvalReport:
    """Evaluate the first stage (``first_stage``, else BM25 to ``depth``), each of ``runs`` and, with
    ``artifact``, the first stage reranked at each of ``precisions``; runs are written to ``out_dir``
    (default ``./eval-<dataset>``)."""
    try:
        import ir_measures  # noqa: F401
    except ImportError as exc:
        raise RerankrtError(f"evaluation needs the [eval] extra (pip install 'rerankrt[eval]'): {exc}") from exc
    beir = Path(beir)
    out_dir = Path(out_dir or f"eval-{beir.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = ireval.read_beir(beir, split, with_title=with_title)
    metrics = list(metrics)
    first_path = out_dir / "first-stage.trec"
    if first_stage:
        first = ireval.read_run(Path(first_stage))
        first = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[:depth]) for q, d in first.items() if q in qrels}
        label = f"first stage ({Path(first_stage).name})"
    else:
        first = ireval.bm25_run(corpus, queries, depth)
        label = "first stage (BM25, bm25s)"
    ireval.write_run(first, first_path, "first-stage")
    rows = [(label, ireval.evaluate(qrels, first, metrics))]
    for run_file in runs:
        rows.append((Path(run_file).name, ireval.evaluate(qrels, ireval.read_run(Path(run_file)), metrics)))
    if artifact:
        from ..reranker import Reranker

        for precision in precisions:
            reranker = Reranker.from_pretrained(artifact, precision=precision, backend=backend, threads=threads,
                                                max_length=max_length)
            out = out_dir / f"reranked-{precision}.trec"
            scorer = ChunkScorer.in_process(reranker, long_documents=long_documents)
            try:
                summary = score_file(ScoreJob(first_path, out, corpus=beir / "corpus.jsonl",
                                              queries=beir / "queries.jsonl", depth=depth, with_title=with_title),
                                     scorer, overwrite=True, progress=progress)
            finally:
                scorer.close()
            how = "" if long_documents is None or not long_documents.chunked else f", {describe(long_documents)}"
            rows.append((f"rerankrt {precision} ({reranker.backend.name}, top {depth}{how})",
                         ireval.evaluate(qrels, ireval.read_run(out), metrics)))
            log(f"  {precision}: {summary.describe()}")
    return EvalReport(beir.name, len(queries), len(corpus), out_dir, metrics, rows)
