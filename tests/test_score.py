"""``rerankrt score``: every format round-trips with ``predict``'s scores, crashes resume loss-free,
bad rows are never silently dropped, memory stays flat."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rerankrt.engine import Reranker
from rerankrt.engine.errors import RerankrtError
from rerankrt.engine.offline import ChunkScorer, Fields, ScoreJob, score_file

from conftest import EDGE_PAIRS, realistic_pairs


@pytest.fixture(scope="module")
def reranker(tiny_artifact) -> Reranker:
    return Reranker.from_pretrained(tiny_artifact, precision="fp32", backend="onnxruntime")


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, str]]:
    return realistic_pairs(4, 15) + EDGE_PAIRS


def _score(reranker, tmp_path, name_in, name_out, **job_args):
    scorer = ChunkScorer.in_process(reranker)
    try:
        return score_file(ScoreJob(tmp_path / name_in, tmp_path / name_out, **job_args), scorer, progress=False)
    finally:
        scorer.close()


def _cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rerankrt.engine.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=600, **kwargs)


def test_jsonl_pairs_and_grouped_rows_keep_order_and_fields(reranker, pairs, tmp_path):
    rows = [{"id": f"r{i}", "query": q, "document": d, "extra": i} for i, (q, d) in enumerate(pairs)]
    rows.insert(7, {"id": "group", "query": pairs[0][0], "documents": [d for _, d in pairs[:9]]})
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    summary = _score(reranker, tmp_path, "in.jsonl", "out.jsonl", chunk_pairs=16)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["id"] for o in out] == [r["id"] for r in rows]
    assert all(o["extra"] == r["extra"] for o, r in zip(out, rows) if "extra" in r)
    expected = reranker.predict(pairs)
    got = [o["score"] for o in out if "score" in o]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(out[7]["scores"], reranker.predict([(pairs[0][0], d) for _, d in pairs[:9]]), atol=1e-5)
    assert summary.records == len(rows) and summary.pairs == len(pairs) + 9 and summary.rejected_rows == 0
    ids = reranker.tokenizer.encode(pairs)
    assert summary.tokens == sum(map(len, ids)) + sum(map(len, reranker.tokenizer.encode(
        [(pairs[0][0], d) for _, d in pairs[:9]])))
    assert not list(tmp_path.glob("out.jsonl.*"))  # no partial, checkpoint or rejects left behind


@pytest.mark.parametrize("fmt,delimiter", [("csv", ","), ("tsv", "\t")])
def test_csv_and_tsv_round_trip(reranker, pairs, tmp_path, fmt, delimiter):
    path = tmp_path / f"in.{fmt}"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(["pid", "q", "passage"])
        writer.writerows([f"p{i}", q, d] for i, (q, d) in enumerate(pairs))
    _score(reranker, tmp_path, f"in.{fmt}", f"out.{fmt}", fields=Fields(query="q", document="passage"),
           chunk_pairs=10)
    with (tmp_path / f"out.{fmt}").open(newline="", encoding="utf-8") as fh:
        out = list(csv.DictReader(fh, delimiter=delimiter))
    assert [o["pid"] for o in out] == [f"p{i}" for i in range(len(pairs))]
    assert [(o["q"], o["passage"]) for o in out] == pairs  # text survives quoting, tabs and newlines
    np.testing.assert_allclose([float(o["score"]) for o in out], reranker.predict(pairs), atol=1e-5)


def test_parquet_round_trip(reranker, pairs, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(len(pairs))), "query": [q for q, _ in pairs],
                             "document": [d for _, d in pairs]}), tmp_path / "in.parquet", row_group_size=7)
    _score(reranker, tmp_path, "in.parquet", "out.parquet", chunk_pairs=10)
    table = pq.read_table(tmp_path / "out.parquet").to_pydict()
    assert table["id"] == list(range(len(pairs)))
    np.testing.assert_allclose(table["score"], reranker.predict(pairs), atol=1e-5)
    assert not (tmp_path / "out.parquet.parts").exists()


def _beir(tmp_path: Path, n_queries: int = 5, n_docs: int = 12):
    pairs = realistic_pairs(n_queries, n_docs, seed=5)
    queries = sorted({q for q, _ in pairs})
    docs = sorted({d for _, d in pairs})
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": q}) + "\n"
                                                    for i, q in enumerate(queries)))
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": d}) + "\n"
                                                   for i, d in enumerate(docs)))
    rng = np.random.default_rng(0)
    lines = []
    for qi in range(len(queries)):
        for rank, di in enumerate(rng.permutation(len(docs))[:10], start=1):
            lines.append(f"q{qi} Q0 d{di} {rank} {20 - rank}.0 bm25\n")
    (tmp_path / "first.trec").write_text("".join(lines))
    return queries, docs


def test_trec_run_with_beir_files_is_reranked(reranker, tmp_path):
    queries, docs = _beir(tmp_path)
    summary = _score(reranker, tmp_path, "first.trec", "reranked.trec", corpus=tmp_path / "corpus.jsonl",
                     queries=tmp_path / "queries.jsonl", depth=8, top_k=5, chunk_pairs=12)
    run: dict[str, list[tuple[str, float]]] = {}
    for line in (tmp_path / "reranked.trec").read_text().splitlines():
        qid, _, docid, rank, score, tag = line.split()
        run.setdefault(qid, []).append((docid, float(score)))
        assert tag == "rerankrt"
    first = {}
    for line in (tmp_path / "first.trec").read_text().splitlines():
        qid, _, docid, rank, *_ = line.split()
        if int(rank) <= 8:
            first.setdefault(qid, []).append(docid)
    assert list(run) == [f"q{i}" for i in range(len(queries))] and summary.pairs == 8 * len(queries)
    for qid, ranked in run.items():
        query = queries[int(qid[1:])]
        candidates = first[qid]
        expected = reranker.predict([(query, docs[int(d[1:])]) for d in candidates])
        best = [candidates[i] for i in np.argsort(-expected, kind="stable")[:5]]
        assert [d for d, _ in ranked] == best
        np.testing.assert_allclose([s for _, s in ranked], np.sort(expected)[::-1][:5], atol=1e-5)


def test_bad_rows_fail_fast_or_go_to_rejects(reranker, tmp_path):
    good = [{"query": "q", "document": f"d{i}"} for i in range(5)]
    lines = [json.dumps(r) for r in good[:2]] + ['{"query": "q", "document": 7}', "{broken", '{"document": "x"}',
                                                 "", *(json.dumps(r) for r in good[2:])]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RerankrtError, match=r"in\.jsonl:3: field 'document' is int, not text"):
        _score(reranker, tmp_path, "in.jsonl", "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
    summary = _score(reranker, tmp_path, "in.jsonl", "out2.jsonl", on_error="skip")
    assert summary.records == 5 and summary.rejected_rows == 4
    rejects = [json.loads(line) for line in (tmp_path / "out2.jsonl.rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [3, 4, 5, 6]
    assert "malformed JSON" in rejects[1]["reason"] and "missing field 'query'" in rejects[2]["reason"]
    assert rejects[1]["raw"] == "{broken" and rejects[3]["reason"] == "empty line"
    out = [json.loads(line)["document"] for line in (tmp_path / "out2.jsonl").read_text().splitlines()]
    assert out == [r["document"] for r in good]


def test_existing_output_and_stale_checkpoints_are_never_clobbered(reranker, tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"query": "q", "document": "d"}) + "\n")
    (tmp_path / "out.jsonl").write_text("precious\n")
    with pytest.raises(RerankrtError, match="exists; pass --overwrite"):
        _score(reranker, tmp_path, "in.jsonl", "out.jsonl")
    assert (tmp_path / "out.jsonl").read_text() == "precious\n"
    (tmp_path / "new.jsonl.checkpoint.json").write_text(json.dumps({"version": 1, "fingerprint": "x", "input": {}}))
    with pytest.raises(RerankrtError, match="interrupted run"):
        _score(reranker, tmp_path, "in.jsonl", "new.jsonl")
    scorer = ChunkScorer.in_process(reranker)
    with pytest.raises(RerankrtError, match="another input, model or settings"):
        score_file(ScoreJob(tmp_path / "in.jsonl", tmp_path / "new.jsonl"), scorer, resume=True, progress=False)
    scorer.close()
    summary = score_file(ScoreJob(tmp_path / "in.jsonl", tmp_path / "out.jsonl"), ChunkScorer.in_process(reranker),
                         overwrite=True, progress=False)
    assert summary.records == 1 and json.loads((tmp_path / "out.jsonl").read_text())["document"] == "d"


def test_kill_9_mid_file_then_resume_gives_every_row_exactly_once(tiny_artifact, reranker, tmp_path):
    n = 4000
    docs = [f"document {i} " + "about rivers and bridges " * (i % 13) for i in range(n)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": i, "query": "river bridge", "document": d}) + "\n"
                                               for i, d in enumerate(docs)))
    args = ["score", tiny_artifact, tmp_path / "in.jsonl", "-o", tmp_path / "out.jsonl", "--precision", "fp32",
            "--backend", "onnxruntime", "--chunk-pairs", "100", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "rerankrt.engine.cli", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = tmp_path / "out.jsonl.checkpoint.json"
    deadline = time.time() + 300
    while True:
        try:
            if json.loads(checkpoint.read_text())["records_done"] >= 1000:
                break
        except (OSError, json.JSONDecodeError, KeyError):
            pass
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out.jsonl").exists()
    done = json.loads(checkpoint.read_text())["records_done"]
    assert 1000 <= done < n
    refused = _cli(*args)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = _cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after {done:,} rows" in resumed.stderr
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["id"] for o in out] == list(range(n))
    np.testing.assert_allclose([o["score"] for o in out], reranker.predict([("river bridge", d) for d in docs]),
                               atol=1e-5)
    assert not checkpoint.exists() and not (tmp_path / "out.jsonl.partial").exists()


def test_worker_processes_give_the_same_output(tiny_artifact, reranker, pairs, tmp_path):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"query": q, "document": d}) + "\n" for q, d in pairs))
    done = _cli("score", tiny_artifact, tmp_path / "in.jsonl", "-o", tmp_path / "out.jsonl", "--precision", "fp32",
                "--backend", "onnxruntime", "--workers", "2", "--chunk-pairs", "8", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "2 processes × 1 thread" in done.stderr
    got = [json.loads(line)["score"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(got, reranker.predict(pairs), atol=1e-5)


def _peak_rss_of_score(tiny_artifact, path: Path, out: Path) -> float:
    code = (
        "import sys, resource\n"
        "from rerankrt.engine.cli import main\n"
        f"rc = main(['score', {str(tiny_artifact)!r}, {str(path)!r}, '-o', {str(out)!r}, '--precision', 'fp32', "
        "'--backend', 'onnxruntime', '--max-length', '32', '--no-progress', '--workers', '1'])\n"
        "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n"
        "sys.exit(rc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1]) / 1024


_WORDS = "river bridge stone arch built century town water crossing road old new long wide history city".split()


def _write_rows(path: Path, n: int) -> None:
    """Rows of text with a bounded vocabulary, as real text has: a row id per row inside the text would make
    the tokenizer's own word cache grow with the file (tokenizers' behaviour, not the pipeline's)."""
    with path.open("w") as fh:
        for i in range(n):
            doc = f"doc {i % 997} " + " ".join(_WORDS[(i * 7 + k) % len(_WORDS)] for k in range(30))
            fh.write(json.dumps({"id": i, "query": "q", "document": doc}) + "\n")


def test_python_memory_does_not_grow_with_file_size(tiny_artifact, tmp_path):
    """Peak Python heap (tracemalloc) for 100k rows = for 20k: rows are streamed in chunks, never held
    (holding 100k parsed rows would take well over 50 MiB)."""
    import tracemalloc

    reranker = Reranker.from_pretrained(tiny_artifact, precision="fp32", backend="onnxruntime", max_length=32)
    peaks = {}
    for n in (20_000, 100_000):
        _write_rows(tmp_path / f"{n}.jsonl", n)
        scorer = ChunkScorer.in_process(reranker)
        tracemalloc.start()
        try:
            score_file(ScoreJob(tmp_path / f"{n}.jsonl", tmp_path / f"{n}.out.jsonl", chunk_pairs=4096), scorer,
                       progress=False)
            peaks[n] = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
            scorer.close()
    assert sum(1 for _ in (tmp_path / "100000.out.jsonl").open()) == 100_000
    assert peaks[100_000] - peaks[20_000] < 4, peaks


def test_process_memory_stays_bounded_on_200k_rows(tiny_artifact, tmp_path):
    """Peak RSS of the whole CLI on 200k rows vs 20k: only allocator slack, far below the ~200 MiB that
    holding the parsed rows would take."""
    _write_rows(tmp_path / "small.jsonl", 20_000)
    _write_rows(tmp_path / "large.jsonl", 200_000)
    small = _peak_rss_of_score(tiny_artifact, tmp_path / "small.jsonl", tmp_path / "small.out.jsonl")
    large = _peak_rss_of_score(tiny_artifact, tmp_path / "large.jsonl", tmp_path / "large.out.jsonl")
    assert sum(1 for _ in (tmp_path / "large.out.jsonl").open()) == 200_000
    assert large - small < 64, f"peak RSS {small:.0f} → {large:.0f} MiB"
