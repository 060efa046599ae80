"""IR evaluation for ``rerankrt eval``: qrels, runs, metrics (``ir-measures``), a BM25 first stage (``bm25s``).

Why these libraries: ``ir-measures`` wraps the reference implementations (trec_eval and
friends), so nDCG@10 / MRR@10 / Recall@100 mean exactly what papers and BEIR report; ``bm25s``
is a maintained, fast BM25 for users who have no first-stage run. Both are optional (extra
``[eval]``) and imported only here.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from ..errors import InvalidInputError
from . import trec

DEFAULT_METRICS = ("nDCG@10", "RR@10", "R@100")


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR ``qrels/<split>.tsv`` (header ``query-id corpus-id score``) or TREC qrels (``qid 0 docid rel``)."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        first = fh.readline()
        fh.seek(0)
        if "\t" in first and not first.split("\t")[-1].strip().lstrip("-").isdigit():  # BEIR with a header
            for row in csv.DictReader(fh, delimiter="\t"):
                qrels.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(float(row["score"]))
        else:
            for number, line in enumerate(fh, start=1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 4:
                    raise InvalidInputError(f"{path}:{number}: a qrels line has 4 fields, got {len(parts)}")
                qrels.setdefault(parts[0], {})[parts[2]] = int(float(parts[3]))
    return qrels


def read_run(path: Path) -> dict[str, dict[str, float]]:
    """``qid → {docid: score}`` (the TREC reader of :mod:`.trec`, all candidates)."""
    return {qid: {docid: score for _, docid, score in rows} for qid, rows in trec.read_run(path, None).items()}


def write_run(run: dict[str, dict[str, float]], path: Path, tag: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda kv: -kv[1])
            fh.writelines(f"{qid} Q0 {d} {rank} {s:.6f} {tag}\n" for rank, (d, s) in enumerate(ranked, start=1))


def evaluate(qrels: dict, run: dict, metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Mean of each metric over the queries that have judgments (ir-measures' convention)."""
    import ir_measures

    parsed = [ir_measures.parse_measure(m) for m in metrics]
    judged = {q: docs for q, docs in run.items() if q in qrels}
    values = ir_measures.calc_aggregate(parsed, qrels, judged)
    return {str(m): float(values.get(m, 0.0)) for m in parsed}


def read_beir(directory: Path, split: str = "test", with_title: bool = True):
    """``(corpus {id: text}, queries {id: text}, qrels)`` of a BEIR dataset directory."""
    directory = Path(directory)
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a BEIR dataset: {name} is missing")
    qrels = read_qrels(directory / "qrels" / f"{split}.tsv")
    corpus = trec.read_beir_texts(directory / "corpus.jsonl", None, with_title)
    queries = trec.read_beir_texts(directory / "queries.jsonl", set(qrels), with_title=False)
    return corpus, queries, qrels


def bm25_run(corpus: dict[str, str], queries: dict[str, str], depth: int = 100) -> dict[str, dict[str, float]]:
    """A BM25 first stage with ``bm25s`` (English stopwords, default k1/b)."""
    import bm25s

    doc_ids = list(corpus)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([corpus[d] for d in doc_ids], stopwords="en", show_progress=False),
                    show_progress=False)
    query_ids = list(queries)
    k = min(depth, len(doc_ids))
    results, scores = retriever.retrieve(bm25s.tokenize([queries[q] for q in query_ids], stopwords="en",
                                                        show_progress=False), k=k, show_progress=False)
    return {qid: {doc_ids[int(i)]: float(s) for i, s in zip(results[n], scores[n])}
            for n, qid in enumerate(query_ids)}
