"""Scores of every exported precision against sentence-transformers' own ``CrossEncoder.predict``.

The reference here is sentence-transformers end to end (its tokenization, its batching, its
torch model), not the export stage's internal reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from rerankrt.engine import Reranker
from rerankrt.export.parity import spearman, top_k_agreement

from conftest import EDGE_PAIRS, realistic_pairs


def st_scores(model_dir, pairs, max_length=None):
    import torch
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(model_dir), device="cpu", max_length=max_length)
    return ce.predict(pairs, batch_size=16, activation_fn=torch.nn.Identity(), show_progress_bar=False)


def _check(reference, ours, max_rel, min_spearman=None, groups=None, min_top10=None):
    reference, ours = np.asarray(reference, np.float64), np.asarray(ours, np.float64)
    score_range = reference.max() - reference.min()
    assert score_range > 0
    rel = np.abs(reference - ours).max() / score_range
    assert rel <= max_rel, f"max |Δ|/range {rel:.2e} > {max_rel:.0e}"
    if min_spearman is not None:
        assert spearman(reference, ours) >= min_spearman
    if min_top10 is not None:
        assert top_k_agreement(reference, ours, groups) >= min_top10


def test_tiny_fp32_matches_sentence_transformers_on_mixed_batches(tiny_model, tiny_artifact):
    pairs = realistic_pairs(6, 20) + EDGE_PAIRS
    reference = st_scores(tiny_model, pairs, max_length=1024)
    ours = Reranker.from_pretrained(tiny_artifact, precision="fp32", max_length=1024).predict(pairs)
    _check(reference, ours, max_rel=1e-4, min_spearman=0.9999)


def test_tiny_reduced_precisions_track_the_reference(tiny_model, tiny_artifact):
    pairs = realistic_pairs(6, 20)
    groups = [i // 20 for i in range(len(pairs))]
    reference = st_scores(tiny_model, pairs, max_length=512)
    fp16 = Reranker.from_pretrained(tiny_artifact, precision="fp16", max_length=512).predict(pairs)
    int8 = Reranker.from_pretrained(tiny_artifact, precision="int8", max_length=512).predict(pairs)
    _check(reference, fp16, max_rel=2e-2, min_spearman=0.995)
    _check(reference, int8, max_rel=0.25, min_spearman=0.9, groups=groups, min_top10=0.7)


def test_long_sequences_past_the_sliding_window(tiny_model, tiny_artifact):
    """Lengths from 100 to ~4,100 tokens in one call: sliding window, RoPE and padding at length."""
    words = "river bridge protein island music railway history algorithm lake novel".split()
    rng = np.random.default_rng(0)
    pairs = [("query about the river", " ".join(rng.choice(words, n))) for n in (60, 130, 300, 700, 1500, 4000)]
    reference = st_scores(tiny_model, pairs)
    reranker = Reranker.from_pretrained(tiny_artifact, precision="fp32", token_budget=16384)
    assert reranker.max_length == 7999
    lengths = [len(t) for t in reranker.tokenizer.encode(pairs)]
    assert max(lengths) > 4096 and min(lengths) < 128
    _check(reference, reranker.predict(pairs), max_rel=1e-4)


def test_real_17m_shape_parity(ettin17m_model, ettin17m_artifact):
    pairs = realistic_pairs(4, 25, seed=3) + EDGE_PAIRS[:6]
    reference = st_scores(ettin17m_model, pairs, max_length=512)
    ours = Reranker.from_pretrained(ettin17m_artifact, precision="fp32", max_length=512).predict(pairs)
    _check(reference, ours, max_rel=1e-4, min_spearman=0.9999)


def test_distilled_17m_every_precision(distilled_artifact):
    """Trained-like score spread: the fidelity the parity gate's defaults are set on."""
    from conftest import DISTILLED

    pairs = realistic_pairs(10, 30, seed=5)
    groups = [i // 30 for i in range(len(pairs))]
    reference = st_scores(DISTILLED, pairs, max_length=512)
    for precision, max_rel, min_rho, min_top10 in (("fp32", 1e-4, 0.9999, 1.0), ("fp16", 1e-2, 0.999, 0.95),
                                                    ("int8", 5e-2, 0.995, 0.95)):
        ours = Reranker.from_pretrained(distilled_artifact, precision=precision, max_length=512).predict(pairs)
        _check(reference, ours, max_rel, min_rho, groups, min_top10)


@pytest.mark.parametrize("kind", ["bert", "modernbert"])
def test_classic_sequence_classification_models(work, kind, classic_bert_model, classic_modernbert_model):
    from rerankrt.export.pipeline import export

    model = classic_bert_model if kind == "bert" else classic_modernbert_model
    artifact = export(str(model), work / f"classic-{kind}-artifact", precisions=["fp32"], log=None, overwrite=True)
    pairs = realistic_pairs(3, 10) + EDGE_PAIRS[:4]
    import torch
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(model), device="cpu")
    reranker = Reranker.from_pretrained(artifact)
    raw_reference = ce.predict(pairs, batch_size=8, activation_fn=torch.nn.Identity())
    _check(raw_reference, reranker.predict(pairs, activation_fn="raw"), max_rel=1e-4)
    # the default activation is the CrossEncoder's own: sigmoid for a single-label classic model
    assert reranker.activation == "sigmoid"
    assert np.allclose(ce.predict(pairs, batch_size=8), reranker.predict(pairs), atol=1e-5)
