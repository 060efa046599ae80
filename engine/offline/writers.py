"""Output writers: the input's format plus scores, written to a side file and renamed into place.

Every writer appends to ``<output>.partial`` (Parquet: numbered part files in ``<output>.parts/``)
and reports a *position* after each chunk (bytes, or parts written) that the checkpoint records
once the data is on disk (``fsync``). Resuming truncates the side file back to the recorded
position, so a chunk half-written at the moment of a crash is written again exactly once.
:meth:`finalize` turns the side file into the output with one atomic ``os.replace``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from .records import Record
from .trec import format_run_lines

SCORE_FIELD = "score"  # grouped rows get "scores"


def _score_value(scores: np.ndarray, grouped: bool):
    values = scores.tolist()
    return values if grouped else values[0]


class TextWriter:
    """JSONL / CSV / TSV / TREC lines appended to ``<output>.partial``."""

    def __init__(self, output: Path, fmt: str, position: int = 0, header: list[str] | None = None,
                 top_k: int | None = None) -> None:
        self.output, self.fmt, self.top_k = Path(output), fmt, top_k
        self.partial = self.output.with_name(self.output.name + ".partial")
        mode = "r+b" if position and self.partial.exists() else "wb"
        self._fh = open(self.partial, mode)  # noqa: SIM115 - closed in close()/finalize()
        self._fh.truncate(position)
        self._fh.seek(position)
        self._columns: list[str] | None = None
        if fmt in ("csv", "tsv"):
            self._columns = [*header, *([SCORE_FIELD] if SCORE_FIELD not in header else [])] if header else None
            if position == 0 and self._columns:
                self._write_text(self._delimited([dict(zip(self._columns, self._columns))]))

    def _delimited(self, rows: list[dict]) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self._columns or [], delimiter="\t" if self.fmt == "tsv" else ",",
                                lineterminator="\n", extrasaction="ignore")
        writer.writerows(rows)
        return buffer.getvalue()

    def _write_text(self, text: str) -> None:
        self._fh.write(text.encode("utf-8"))

    def write(self, records: list[Record], scores: list[np.ndarray]) -> None:
        if self.fmt == "trec":
            self._write_text("".join(format_run_lines(r.meta["qid"], r.meta["docids"], s, top_k=self.top_k)
                                     for r, s in zip(records, scores)))
        elif self.fmt == "jsonl":
            self._write_text("".join(json.dumps({**r.row, SCORE_FIELD + ("s" if r.grouped else ""):
                                                 _score_value(s, r.grouped)}, ensure_ascii=False) + "\n"
                                     for r, s in zip(records, scores)))
        else:
            self._write_text(self._delimited([{**r.row, SCORE_FIELD: repr(float(s[0]))}
                                              for r, s in zip(records, scores)]))

    def commit(self) -> int:
        """Flush and fsync; the position a resume may start from."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return self._fh.tell()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def finalize(self) -> None:
        self.commit()
        self.close()
        os.replace(self.partial, self.output)


class ParquetWriter:
    """Parquet: one part file per chunk (a crash can only lose a part that was never committed),
    merged into one file at the end, one row group per part so memory stays flat."""

    def __init__(self, output: Path, position: int = 0) -> None:
        self.output = Path(output)
        self.parts = self.output.with_name(self.output.name + ".parts")
        if position == 0:
            shutil.rmtree(self.parts, ignore_errors=True)
        self.parts.mkdir(parents=True, exist_ok=True)
        for stale in self.parts.glob("part-*.parquet"):  # parts after the checkpoint
            if int(stale.stem.split("-")[1]) >= position:
                stale.unlink()
        self.count = position

    def write(self, records: list[Record], scores: list[np.ndarray]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [{**r.row, SCORE_FIELD + ("s" if r.grouped else ""): _score_value(s, r.grouped)}
                for r, s in zip(records, scores)]
        if not rows:
            return
        path = self.parts / f"part-{self.count:06d}.parquet"
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, path)
        self.count += 1

    def commit(self) -> int:
        return self.count

    def close(self) -> None:
        pass

    def finalize(self) -> None:
        import pyarrow.parquet as pq

        partial = self.output.with_name(self.output.name + ".partial")
        parts = sorted(self.parts.glob("part-*.parquet"))
        writer = None
        try:
            for part in parts:
                table = pq.read_table(part)
                if writer is None:
                    writer = pq.ParquetWriter(partial, table.schema)
                writer.write_table(table.cast(writer.schema) if table.schema != writer.schema else table)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:  # no rows at all: an empty file with just the score column
            import pyarrow as pa

            pq.write_table(pa.table({SCORE_FIELD: pa.array([], pa.float32())}), partial)
        os.replace(partial, self.output)
        shutil.rmtree(self.parts, ignore_errors=True)


class RejectsWriter:
    """Rows refused with ``--on-error skip``: JSONL of file line, reason and the raw row."""

    def __init__(self, path: Path, position: int = 0) -> None:
        self.writer = TextWriter(path, "rejects", position)
        self.count = 0

    def write(self, line: int, reason: str, raw: str) -> None:
        self.writer._write_text(json.dumps({"line": line, "reason": reason, "raw": raw}, ensure_ascii=False) + "\n")
        self.count += 1

    def commit(self) -> int:
        return self.writer.commit()

    def finalize(self) -> None:
        self.writer.finalize()

    def discard(self) -> None:
        """No row was rejected: leave no empty rejects file behind."""
        self.writer.close()
        self.writer.partial.unlink(missing_ok=True)


def make_writer(fmt: str, output: Path, position: int, header: list[str] | None, top_k: int | None):
    if fmt == "parquet":
        return ParquetWriter(output, position)
    return TextWriter(output, fmt, position, header=header, top_k=top_k)
