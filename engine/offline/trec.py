"""The IR layout: a TREC run (first-stage candidates) + BEIR ``corpus.jsonl`` / ``queries.jsonl``.

One record per query: its candidates in first-stage rank order (the top ``depth``), their texts
looked up in the corpus. Only the documents the run names are kept in memory, so a
multi-million-document corpus costs one streaming pass and the run's candidates, not the corpus.
The output is a TREC run again, each query's candidates ordered by the reranker's score.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from ..errors import InvalidInputError
from .records import Record, RowError


def read_run(path: Path, depth: int | None = None) -> OrderedDict[str, list[tuple[int, str, float]]]:
    """``qid → [(line, docid, first-stage score)]`` in first-stage rank order, queries in file order."""
    run: OrderedDict[str, list[tuple[int, str, float, int]]] = OrderedDict()
    with open(path, encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            parts = text.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise InvalidInputError(f"{path}:{number}: a TREC run line has 6 fields (qid Q0 docid rank score tag), "
                                        f"got {len(parts)}")
            qid, _, docid, rank, score, _ = parts
            try:
                run.setdefault(qid, []).append((number, docid, float(score), int(rank)))
            except ValueError as exc:
                raise InvalidInputError(f"{path}:{number}: rank and score must be numbers ({exc})") from None
    out: OrderedDict[str, list[tuple[int, str, float]]] = OrderedDict()
    for qid, rows in run.items():
        rows.sort(key=lambda r: (-r[2], r[3]))
        out[qid] = [(line, docid, score) for line, docid, score, _ in rows[:depth]]
    return out


def read_beir_texts(path: Path, wanted: set[str] | None, with_title: bool) -> dict[str, str]:
    """``_id → text`` from a BEIR jsonl file (title + text for the corpus), only for ``wanted`` ids."""
    texts: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = str(row["_id"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InvalidInputError(f"{path}:{number}: not a BEIR row with an _id ({exc})") from None
            if wanted is not None and key not in wanted:
                continue
            text = row.get("text") or ""
            title = row.get("title") or ""
            texts[key] = f"{title} {text}".strip() if with_title and title else text
    return texts


def read_trec(run_path: Path, corpus: Path, queries: Path, depth: int | None = 100,
              with_title: bool = True) -> Iterator[Record | RowError]:
    """One record per query of the run; a query or document missing from the BEIR files is a row error."""
    run = read_run(run_path, depth)
    docs = read_beir_texts(corpus, {d for rows in run.values() for _, d, _ in rows}, with_title)
    query_texts = read_beir_texts(queries, set(run), with_title=False)
    for qid, rows in run.items():
        first_line = rows[0][0]
        raw = f"query {qid} ({len(rows)} candidates)"
        if qid not in query_texts:
            yield RowError(first_line, f"query {qid!r} is not in {queries}", raw)
            continue
        missing = [d for _, d, _ in rows if d not in docs]
        if missing:
            yield RowError(first_line, f"{len(missing)} documents of query {qid!r} are not in {corpus} "
                                       f"(first: {missing[0]!r})", raw)
            continue
        yield Record(first_line, {"qid": qid}, query_texts[qid], [docs[d] for _, d, _ in rows], grouped=True,
                     meta={"qid": qid, "docids": [d for _, d, _ in rows]})


def format_run_lines(qid: str, docids: list[str], scores, tag: str = "rerankrt", top_k: int | None = None) -> str:
    order = sorted(range(len(docids)), key=lambda i: -float(scores[i]))[:top_k]
    return "".join(f"{qid} Q0 {docids[i]} {rank} {float(scores[i]):.6f} {tag}\n" for rank, i in enumerate(order, 1))
