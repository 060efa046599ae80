"""``rerankrt eval``: BM25 first stage, reranked runs per precision, metrics from ir-measures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ir_measures", reason="the [eval] extra is not installed")
pytest.importorskip("bm25s", reason="the [eval] extra is not installed")

from rerankrt.engine import Reranker  # noqa: E402
from rerankrt.engine.offline import ireval  # noqa: E402

TOPICS = ["bridge", "river", "castle", "harbour", "forest", "glacier"]


def _beir(directory: Path) -> Path:
    directory.mkdir()
    (directory / "qrels").mkdir()
    docs, qrels = [], []
    for t, topic in enumerate(TOPICS):
        for k in range(6):
            docs.append({"_id": f"d{t}-{k}", "title": f"{topic} notes" if k % 2 else "",
                         "text": f"A {topic} described in note {k}. " + "Other words follow here. " * k})
            if k < 2:
                qrels.append(f"q{t}\td{t}-{k}\t{2 - k}")
    (directory / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (directory / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{t}", "text": f"history of the {topic}"})
                                                     + "\n" for t, topic in enumerate(TOPICS)))
    (directory / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    return directory


def _ndcg10(ranked: list[str], relevance: dict[str, int]) -> float:
    """trec_eval's ndcg_cut.10: linear gains."""
    dcg = sum(relevance.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sorted(relevance.values(), reverse=True)
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal[:10]))
    return dcg / idcg


def test_eval_reranks_bm25_per_precision_and_reports_metrics(tiny_artifact, tmp_path):
    beir = _beir(tmp_path / "toy")
    out = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "rerankrt.engine.cli", "eval", "--beir", str(beir), "--artifact",
                           str(tiny_artifact), "--precision", "fp32,int8", "--backend", "onnxruntime", "--depth", "20",
                           "--out-dir", str(out), "--json", "--no-progress"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    rows = {r["system"].split(" (")[0]: r for r in json.loads(done.stdout)}
    assert set(rows) == {"first stage", "rerankrt fp32", "rerankrt int8"}
    qrels = ireval.read_qrels(beir / "qrels" / "test.tsv")
    corpus, queries, _ = ireval.read_beir(beir)
    first = ireval.read_run(out / "first-stage.trec")
    assert all(len(docs) == 20 for docs in first.values())
    # BM25 finds the topic's documents: the query word is in them and nowhere else
    assert rows["first stage"]["nDCG@10"] > 0.5
    reranker = Reranker.from_pretrained(tiny_artifact, precision="fp32", backend="onnxruntime")
    expected = []
    for qid, candidates in first.items():
        ids = list(candidates)
        scores = reranker.predict([(queries[qid], corpus[d]) for d in ids])
        ranked = [ids[i] for i in np.argsort(-scores, kind="stable")]
        expected.append(_ndcg10(ranked, qrels[qid]))
    assert rows["rerankrt fp32"]["nDCG@10"] == pytest.approx(float(np.mean(expected)), abs=1e-4)
    assert rows["rerankrt fp32"]["R@100"] == pytest.approx(rows["first stage"]["R@100"])  # same candidates
    for row in rows.values():
        assert 0 <= row["RR@10"] <= 1


def test_qrels_and_runs_read_both_layouts(tmp_path):
    (tmp_path / "trec.qrels").write_text("q1 0 d1 1\nq1 0 d2 0\nq2 0 d3 2\n")
    assert ireval.read_qrels(tmp_path / "trec.qrels") == {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    (tmp_path / "run.trec").write_text("q1 Q0 d2 1 3.5 x\nq1 Q0 d1 2 1.0 x\n")
    run = ireval.read_run(tmp_path / "run.trec")
    assert run == {"q1": {"d2": 3.5, "d1": 1.0}}
    assert ireval.evaluate({"q1": {"d1": 1}}, run, ["RR@10"]) == {"RR@10": 0.5}
