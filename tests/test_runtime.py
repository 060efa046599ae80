"""Reranker behaviour: order, batching, rank semantics, activations, bad input, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rerankrt.engine import InvalidInputError, Reranker
from rerankrt.engine.batching import BatchPolicy, pad_batch, plan_batches

from conftest import EDGE_PAIRS, realistic_pairs


@pytest.fixture(scope="module")
def reranker(tiny_artifact):
    return Reranker.from_pretrained(tiny_artifact, precision="fp32", max_length=512)


def test_scores_come_back_in_input_order_whatever_the_batching(reranker):
    pairs = realistic_pairs(5, 20) + EDGE_PAIRS
    one_by_one = np.array([reranker.predict(p) for p in pairs])
    for budget, cap, multiple in ((64, 256, 1), (1024, 4, 1), (100000, 256, 1), (2048, 256, 16), (512, 8, 64)):
        policy = BatchPolicy(budget, cap, pad_to_multiple_of=multiple)
        r = Reranker(reranker.artifact, reranker.backend, reranker.tokenizer, policy)
        np.testing.assert_allclose(r.predict(pairs), one_by_one, rtol=0, atol=1e-5)
    perm = np.random.default_rng(0).permutation(len(pairs))
    np.testing.assert_allclose(reranker.predict([pairs[i] for i in perm]), one_by_one[perm], atol=1e-5)


def test_rank_matches_sentence_transformers_semantics(tiny_model, reranker):
    import torch
    from sentence_transformers import CrossEncoder

    query = "history of the river bridge"
    docs = [d for _, d in realistic_pairs(1, 15)]
    ce = CrossEncoder(str(tiny_model), device="cpu", max_length=512)
    theirs = ce.rank(query, docs, top_k=5, return_documents=True, activation_fn=torch.nn.Identity())
    ours = reranker.rank(query, docs, top_k=5, return_documents=True)
    assert [r["corpus_id"] for r in ours] == [r["corpus_id"] for r in theirs]
    assert [r["text"] for r in ours] == [r["text"] for r in theirs]
    np.testing.assert_allclose([r["score"] for r in ours], [r["score"] for r in theirs], atol=1e-4)
    full = reranker.rank(query, docs)
    assert len(full) == len(docs) and set(full[0]) == {"corpus_id", "score"}
    assert all(a["score"] >= b["score"] for a, b in zip(full, full[1:]))
    assert reranker.rank(query, []) == []
    assert reranker.rank(query, docs, top_k=0) == []


def test_single_pair_and_empty_inputs(reranker):
    score = reranker.predict(("query", "document"))
    assert np.ndim(score) == 0
    assert np.isclose(score, reranker.predict([("query", "document")])[0])
    empty = reranker.predict([])
    assert isinstance(empty, np.ndarray) and empty.shape == (0,)
    assert isinstance(reranker.predict([("q", "d")], convert_to_numpy=False), list)


def test_activation_options(reranker):
    pairs = realistic_pairs(1, 5)
    raw = reranker.predict(pairs)
    assert reranker.activation == "identity"  # Ettin: raw logits by default
    np.testing.assert_allclose(reranker.predict(pairs, activation_fn="raw"), raw)
    np.testing.assert_allclose(reranker.predict(pairs, activation_fn="sigmoid"), 1 / (1 + np.exp(-raw)), atol=1e-6)
    np.testing.assert_allclose(reranker.predict(pairs, activation_fn=lambda x: x * 2), raw * 2, atol=1e-6)
    with pytest.raises(ValueError, match="unknown activation"):
        reranker.predict(pairs, activation_fn="softplus")


def test_bad_input_raises_specific_errors(reranker):
    with pytest.raises(TypeError, match="pair 2: document is None"):
        reranker.predict([("q", "d"), ("q", "d"), ("q", None)])
    with pytest.raises(InvalidInputError, match="pair 0 has 1 elements"):
        reranker.predict([("q",)])
    with pytest.raises(TypeError, match="document 1 has type int"):
        reranker.rank("q", ["d", 5])
    with pytest.raises(TypeError, match="query has type NoneType"):
        reranker.rank(None, ["d"])
    with pytest.raises(TypeError):
        reranker.rank("q", "not a list")
    with pytest.raises(ValueError, match="batch_size"):
        reranker.predict([("q", "d")], batch_size=0)
    with pytest.raises(ValueError, match="top_k"):
        reranker.rank("q", ["d"], top_k=-1)


def test_gigantic_document_is_truncated_not_rejected(reranker):
    giant = "lorem ipsum dolor sit amet " * 200_000  # ~5.4 MB of text
    score = reranker.predict([("q", giant)])
    assert np.isfinite(score).all()
    assert len(reranker.tokenizer.encode([("q", giant)])[0]) == 512


def test_max_length_can_only_shorten(tiny_artifact):
    with pytest.raises(ValueError, match="max_length"):
        Reranker.from_pretrained(tiny_artifact, max_length=10**6)
    short = Reranker.from_pretrained(tiny_artifact, max_length=16)
    assert max(len(t) for t in short.tokenizer.encode(realistic_pairs(1, 3))) == 16


def test_one_reranker_is_safe_across_threads(reranker):
    pairs = realistic_pairs(4, 10)
    expected = reranker.predict(pairs)
    results, errors = {}, []

    def work(k):
        try:
            results[k] = reranker.predict(pairs[k:] + pairs[:k])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, got in results.items():
        np.testing.assert_allclose(got, np.r_[expected[k:], expected[:k]], atol=1e-5)


def test_tokenization_chunks_overlap_and_keep_order(reranker, monkeypatch):
    import rerankrt.engine.reranker as module

    pairs = realistic_pairs(3, 20)
    expected = reranker.predict(pairs)
    monkeypatch.setattr(module, "TOKENIZE_CHUNK", 7)
    np.testing.assert_allclose(reranker.predict(pairs, show_progress_bar=True), expected, atol=1e-5)


def test_plan_batches_respects_budgets_and_covers_every_row():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 3000, size=500)
    policy = BatchPolicy(token_budget=2048, max_batch_size=32, attention_budget=1 << 22)
    batches = plan_batches(lengths, policy)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(500))
    for b in batches:
        longest = lengths[b].max()
        assert len(b) <= 32
        assert len(b) == 1 or len(b) * longest <= 2048
        assert len(b) == 1 or len(b) * longest * longest <= 1 << 22
    firsts = [lengths[b].max() for b in batches]
    assert firsts == sorted(firsts, reverse=True)  # longest batches first


def test_pad_batch_pads_to_its_own_longest_row():
    ids = [[1, 2, 3], [4], [5, 6]]
    batch = pad_batch(ids, np.array([2, 1]), pad_id=9)
    assert batch.input_ids.tolist() == [[5, 6], [4, 9]]
    assert batch.attention_mask.tolist() == [[1, 1], [1, 0]]
    assert batch.indices.tolist() == [2, 1]
    rounded = pad_batch(ids, np.array([0, 1]), pad_id=9, multiple=4)
    assert rounded.input_ids.tolist() == [[1, 2, 3, 9], [4, 9, 9, 9]]
    assert rounded.attention_mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
