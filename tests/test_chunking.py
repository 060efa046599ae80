"""Long-document strategies (issue 17): ``chunk`` windows against an independent re-implementation.

The expected windows are built here from the tokenizer file directly (query and document tokenized
alone, ``[CLS] q [SEP] d[s:s+W] [SEP]`` for s = 0, S, 2S, … until a window reaches the end), each
scored as its own one-pair call; the aggregate must equal what ``predict(long_documents=...)`` returns
through the shared batches. On the distilled 17m (trained-like scores), with a short ``max_length``
so ordinary abstracts need several windows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DISTILLED, SHARED

SCIFACT = SHARED / "data" / "scifact" / "abstracts.jsonl"
MAX_LENGTH = 96


@pytest.fixture(scope="module")
def reranker(distilled_artifact):
    from rerankrt.engine import Reranker

    return Reranker.from_pretrained(distilled_artifact, precision="fp32", backend="onnxruntime",
                                    max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def hf_tokenizer():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(DISTILLED / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


@pytest.fixture(scope="module")
def pairs():
    if not SCIFACT.is_file():
        pytest.skip("../shared/data/scifact not present")
    texts = [json.loads(line)["text"] for line in SCIFACT.open(encoding="utf-8")][:6]
    return [("How do cells respond to DNA damage?", t) for t in texts] + [("short query", "a short document")]


def expected_windows(tok, query: str, doc: str, window: int | None = None, stride: int | None = None,
                     limit: int | None = None) -> list[list[int]]:
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    q = tok.encode(query, add_special_tokens=False).ids
    d = tok.encode(doc, add_special_tokens=False).ids
    width = MAX_LENGTH - 3 - len(q) if window is None else min(window, MAX_LENGTH - 3 - len(q))
    step = stride or width // 2
    out, start = [], 0
    while True:
        out.append([cls, *q, sep, *d[start:start + width], sep])
        if start + width >= len(d) or (limit is not None and len(out) == limit):
            return out
        start += step


def one_by_one(reranker, windows: list[list[int]]) -> np.ndarray:
    return np.array([reranker.logits_for_token_ids([w])[0, 0] for w in windows])


def test_pair_ids_are_the_parts_joined(reranker, pairs, hf_tokenizer):
    """What makes one window equal to truncate: the pair encoding is [CLS] q [SEP] d [SEP] of the parts."""
    short = [(q, d[:120]) for q, d in pairs]
    for (q, d), ids in zip(short, reranker.encode(short).token_ids, strict=True):
        windows = expected_windows(hf_tokenizer, q, d)
        if len(windows) == 1:
            assert ids == windows[0]


def test_one_window_equals_truncate(reranker, pairs):
    short = [(q, d[:150]) for q, d in pairs]
    fits = [p for p, ids in zip(short, reranker.encode(short).token_ids, strict=True) if len(ids) < MAX_LENGTH]
    assert len(fits) >= 2
    np.testing.assert_array_equal(reranker.predict(fits, long_documents="chunk"), reranker.predict(fits))


@pytest.mark.parametrize("aggregate", ["max", "mean", "first"])
def test_aggregate_equals_each_window_scored_alone(reranker, pairs, hf_tokenizer, aggregate):
    got = reranker.predict(pairs, long_documents={"strategy": "chunk", "aggregate": aggregate})
    reduce = {"max": np.max, "mean": np.mean, "first": lambda v: v[0]}[aggregate]
    expected = np.array([reduce(one_by_one(reranker, expected_windows(hf_tokenizer, q, d))) for q, d in pairs])
    assert sum(len(expected_windows(hf_tokenizer, q, d)) > 2 for q, d in pairs) >= 3  # really chunked
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_window_stride_and_max_chunks(reranker, pairs, hf_tokenizer):
    options = {"strategy": "chunk", "window": 40, "stride": 30, "max_chunks_per_doc": 3}
    got = reranker.predict(pairs, long_documents=options)
    expected = [one_by_one(reranker, expected_windows(hf_tokenizer, q, d, 40, 30, 3)).max() for q, d in pairs]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_rank_reports_the_best_window(reranker, pairs, hf_tokenizer):
    query, docs = pairs[0][0], [d for _, d in pairs]
    ranked = reranker.rank(query, docs, long_documents="chunk", return_documents=True)
    assert [r["corpus_id"] for r in ranked] == list(np.argsort(-reranker.predict(
        [(query, d) for d in docs], long_documents="chunk"), kind="stable"))
    for item in ranked:
        windows = expected_windows(hf_tokenizer, query, item["text"])
        scores = one_by_one(reranker, windows)
        chunk = item["chunk"]
        assert chunk["chunks"] == len(windows) and chunk["chunk_index"] == int(np.argmax(scores))
        start, end = chunk["char_span"]
        passage = item["text"][start:end]  # the characters of the best window's document tokens
        q_len = len(hf_tokenizer.encode(query, add_special_tokens=False).ids)
        doc_tokens = windows[chunk["chunk_index"]][q_len + 2:-1]
        assert passage and hf_tokenizer.decode(doc_tokens).strip() == passage.strip()


def test_a_20k_token_document_is_ordinary_windows(reranker, hf_tokenizer):
    if not SCIFACT.is_file():
        pytest.skip("../shared/data/scifact not present")
    texts = [json.loads(line)["text"] for line in SCIFACT.open(encoding="utf-8")]
    doc, n = "", 0
    while n < 20_000:
        doc += " " + texts[len(doc) % len(texts)]
        n = len(hf_tokenizer.encode(doc, add_special_tokens=False).ids)
    query = "gene expression"
    ranked = reranker.rank(query, [doc], long_documents="chunk")
    windows = expected_windows(hf_tokenizer, query, doc)
    assert ranked[0]["chunk"]["chunks"] == len(windows) > 20_000 / MAX_LENGTH
    assert max(len(w) for w in windows) <= MAX_LENGTH


@pytest.mark.parametrize("bad", ["summarize", {"strategy": "chunk", "aggregate": "median"},
                                 {"strategy": "chunk", "window": 0}, {"strategy": "chunk", "window": 10, "stride": 20},
                                 {"strategy": "chunk", "overlap": 3}, 5])
def test_bad_options_are_refused_before_any_work(reranker, bad):
    with pytest.raises((ValueError, TypeError)):
        reranker.predict([("q", "d")], long_documents=bad)


def test_the_command_line_chunks_files_and_rankings(distilled_artifact, pairs, tmp_path):
    """``rerankrt score`` and ``rank`` with --long-documents chunk give predict's chunked scores; bad flags get
    a one-line error."""
    import shutil
    import subprocess
    import sys

    from rerankrt.engine import Reranker

    exe = shutil.which("rerankrt")
    cli = [exe] if exe else [sys.executable, "-m", "rerankrt.engine.cli"]
    flags = ["--max-length", str(MAX_LENGTH), "--precision", "fp32", "--backend", "onnxruntime",
             "--long-documents", "chunk", "--chunk-tokens", "40", "--chunk-stride", "30", "--chunk-aggregate", "mean"]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps({"query": q, "document": d}) + "\n" for q, d in pairs))
    out = tmp_path / "scored.jsonl"
    done = subprocess.run([*cli, "score", str(distilled_artifact), str(source), "-o", str(out), "--threads", "2",
                           "--no-progress", *flags], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    got = [json.loads(line)["score"] for line in out.read_text().splitlines()]
    reranker = Reranker.from_pretrained(distilled_artifact, precision="fp32", backend="onnxruntime",
                                        max_length=MAX_LENGTH)
    options = {"strategy": "chunk", "window": 40, "stride": 30, "aggregate": "mean"}
    np.testing.assert_allclose(got, reranker.predict(pairs, long_documents=options), atol=1e-5)

    ranked = subprocess.run([*cli, "rank", str(distilled_artifact), "--query", pairs[0][0], "--doc", pairs[0][1],
                             "--doc", pairs[1][1], *flags], capture_output=True, text=True, timeout=600)
    assert ranked.returncode == 0, ranked.stderr
    assert all("chunk" in json.loads(line) for line in ranked.stdout.splitlines())

    bad = subprocess.run([*cli, "rank", str(distilled_artifact), "--query", "q", "--doc", "d", "--long-documents",
                          "chunk", "--chunk-tokens", "8", "--chunk-stride", "16"], capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode != 0 and "stride" in bad.stderr and "Traceback" not in bad.stderr
