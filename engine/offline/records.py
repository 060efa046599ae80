"""Input files → records (one input row each, with its line number), streamed.

Why records and not pairs: output rows mirror input rows. A pair row (``query`` + ``document``)
gets a ``score``; a grouped row (``query`` + a list of ``documents``) gets a list of ``scores``;
a TREC run is grouped per query. Every record remembers where it came from (file, line) so a
bad row is reported precisely, and its parsed fields so the output can repeat them.

Formats: JSONL, CSV/TSV (``csv`` module), Parquet (``pyarrow``, read in record batches), and
TREC run + BEIR ``corpus.jsonl``/``queries.jsonl`` (see :mod:`.trec`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidInputError

FORMATS = ("jsonl", "csv", "tsv", "parquet", "trec")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv",
             ".parquet": "parquet", ".pq": "parquet", ".trec": "trec", ".run": "trec"}


def detect_format(path: Path, given: str | None = None) -> str:
    if given:
        if given not in FORMATS:
            raise ValueError(f"unknown format {given!r}; use one of {', '.join(FORMATS)}")
        return given
    for suffix in reversed(Path(path).suffixes):
        if suffix.lower() in _SUFFIXES:
            return _SUFFIXES[suffix.lower()]
    raise ValueError(f"cannot tell the format of {path} from its name; pass --format ({', '.join(FORMATS)})")


@dataclass(frozen=True)
class Fields:
    """Column names (configurable: ``--query-field`` …); every other column, ids included, is carried through."""

    query: str = "query"
    document: str = "document"
    documents: str = "documents"  # grouped rows: a list of documents


@dataclass
class Record:
    """One input row: where it is, what it says, and its (query, document) pairs."""

    line: int
    row: dict
    query: str
    documents: list[str]
    grouped: bool = False
    meta: dict = field(default_factory=dict)  # e.g. TREC query id and document ids


@dataclass
class RowError:
    """A row that cannot be scored, and why; written to the rejects file with ``--on-error skip``."""

    line: int
    reason: str
    raw: str

    def describe(self, path: Path) -> str:
        return f"{path}:{self.line}: {self.reason}"


class BadRowError(InvalidInputError):
    def __init__(self, path: Path, error: RowError) -> None:
        super().__init__(error.describe(path) + " (use --on-error skip to write such rows to a rejects file)")
        self.path, self.line, self.reason = path, error.line, error.reason


def to_record(line: int, row: object, fields: Fields, raw: str) -> Record | RowError:
    """Validate one parsed row; never coerce a non-string into text."""
    if not isinstance(row, dict):
        return RowError(line, f"expected an object with {fields.query!r} and {fields.document!r}, "
                              f"got {type(row).__name__}", raw)
    query = row.get(fields.query)
    if query is None:
        return RowError(line, f"missing field {fields.query!r}", raw)
    if not isinstance(query, str):
        return RowError(line, f"field {fields.query!r} is {type(query).__name__}, not text", raw)
    if fields.document in row and row[fields.document] is not None:
        doc = row[fields.document]
        if not isinstance(doc, str):
            return RowError(line, f"field {fields.document!r} is {type(doc).__name__}, not text", raw)
        return Record(line, row, query, [doc])
    docs = row.get(fields.documents)
    if docs is None:
        return RowError(line, f"missing field {fields.document!r} (or a list in {fields.documents!r})", raw)
    if hasattr(docs, "tolist"):  # numpy / arrow lists
        docs = docs.tolist()
    if not isinstance(docs, list):
        return RowError(line, f"field {fields.documents!r} is {type(docs).__name__}, not a list of texts", raw)
    for i, doc in enumerate(docs):
        if not isinstance(doc, str):
            return RowError(line, f"{fields.documents}[{i}] is {type(doc).__name__}, not text", raw)
    return Record(line, row, query, list(docs), grouped=True)


def read_jsonl(path: Path, fields: Fields) -> Iterator[Record | RowError]:
    with open(path, encoding="utf-8", errors="strict", newline="") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                yield RowError(number, "empty line", text)
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                yield RowError(number, f"malformed JSON: {exc.msg} at column {exc.colno}", text.rstrip("\r\n"))
                continue
            yield to_record(number, row, fields, text.rstrip("\r\n"))


def read_delimited(path: Path, fields: Fields, delimiter: str) -> Iterator[Record | RowError]:
    """CSV/TSV with a header row; line numbers count the header as line 1."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        if reader.fieldnames is None:
            return
        for row in reader:
            line = reader.line_num
            if None in row:  # more cells than header columns
                yield RowError(line, f"{len(row) - 1 + len(row[None])} cells for {len(reader.fieldnames)} columns",
                               delimiter.join(str(v) for v in row.values()))
                continue
            raw = delimiter.join("" if v is None else v for v in row.values())
            if any(v is None for v in row.values()):
                missing = [k for k, v in row.items() if v is None]
                yield RowError(line, f"missing cells for {missing}", raw)
                continue
            yield to_record(line, row, fields, raw)


def delimited_header(path: Path, delimiter: str) -> list[str]:
    with open(path, encoding="utf-8", newline="") as fh:
        return next(csv.reader(fh, delimiter=delimiter), [])


def read_parquet(path: Path, fields: Fields, batch_rows: int = 4096) -> Iterator[Record | RowError]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            number += 1
            yield to_record(number, row, fields, json.dumps(row, ensure_ascii=False, default=str))


def count_rows(path: Path, fmt: str) -> int | None:
    """Rows in the input, for the progress bar's ETA (a fast newline count; Parquet's metadata)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if fmt in ("jsonl", "csv", "tsv"):
        lines = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                lines += chunk.count(b"\n")
        return max(0, lines - (1 if fmt != "jsonl" else 0))  # csv newlines inside quotes make this an estimate
    return None
