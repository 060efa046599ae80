"""Token ids must equal what sentence-transformers feeds the model, for every kind of text."""

from __future__ import annotations

import random

import numpy as np
import pytest

from rerankrt.engine.errors import InvalidInputError, InvalidInputTypeError
from rerankrt.engine.tokenize import PairTokenizer, is_single_pair, normalize_pairs

from conftest import EDGE_PAIRS, SHARED_TOKENIZER, realistic_pairs


def _st_ids(model_dir, pairs, max_length):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(model_dir), device="cpu", max_length=max_length)
    out = []
    for start in range(0, len(pairs), 256):
        features = ce.preprocess(pairs[start:start + 256])
        ids, mask = features["input_ids"].numpy(), features["attention_mask"].numpy()
        out.extend(row[m.astype(bool)].tolist() for row, m in zip(ids, mask))
    return out


def _many_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    base = realistic_pairs(8, 40, seed) + EDGE_PAIRS
    alphabet = "abcdefghij klmnop 0123 ,.;!? éü 中文 🙂 \t\n"
    pairs = list(base)
    while len(pairs) < n:
        q, d = rng.choice(base)
        noise = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        pairs.append((q[: rng.randint(0, len(q))] + noise, noise + d[rng.randint(0, max(len(d) - 1, 0)):]))
    return pairs


@pytest.mark.parametrize("max_length", [32, 512, 7999])
def test_token_ids_equal_sentence_transformers(tiny_model, max_length):
    pairs = _many_pairs(1500)
    tok = PairTokenizer(tiny_model / "tokenizer.json", max_length, pad_id=50283, cls_id=50281, sep_id=50282)
    ours = tok.encode(pairs)
    theirs = _st_ids(tiny_model, pairs, max_length)
    assert len(ours) == len(theirs)
    mismatches = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert not mismatches, f"first mismatch at pair {mismatches[0]}: {pairs[mismatches[0]]!r}"
    assert max(len(t) for t in ours) == min(max_length, max(len(t) for t in theirs))
    assert all(t[0] == 50281 and t[-1] == 50282 for t in ours)


def test_token_ids_equal_with_real_vocabulary(work, tiny_model):
    """The shared ModernBERT-compatible tokenizer (real 50k BPE), when present."""
    if not SHARED_TOKENIZER.is_file():
        pytest.skip("../shared/data/modernbert-tokenizer.json not present")
    import shutil

    model = work / "tiny-real-vocab"
    if not model.exists():
        shutil.copytree(tiny_model, model)
        shutil.copyfile(SHARED_TOKENIZER, model / "tokenizer.json")
    pairs = _many_pairs(1000, seed=1)
    tok = PairTokenizer(model / "tokenizer.json", 512, pad_id=50283)
    assert tok.encode(pairs) == _st_ids(model, pairs, 512)


def test_saved_padding_and_truncation_settings_are_overridden(work, tiny_model):
    """A tokenizer.json saved with padding and a 16-token truncation must not leak into encoding."""
    from tokenizers import Tokenizer

    poisoned = work / "poisoned-tokenizer.json"
    t = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    t.enable_padding(pad_id=50283, pad_token="[PAD]", length=300)
    t.enable_truncation(16)
    t.save(str(poisoned))
    tok = PairTokenizer(poisoned, 200, pad_id=50283)
    ids = tok.encode([("short", "word " * 500), ("a", "b")])
    assert len(ids[0]) == 200
    assert len(ids[1]) < 10 and 50283 not in ids[1]




def test_normalize_pairs_errors_name_the_index():
    with pytest.raises(InvalidInputTypeError, match="pair 1: document is None"):
        normalize_pairs([("q", "d"), ("q", None)])
    with pytest.raises(InvalidInputTypeError, match="pair 0: query has type int"):
        normalize_pairs([(3, "d")])
    with pytest.raises(InvalidInputError, match="pair 2 has 3 elements"):
        normalize_pairs([("q", "d"), ("q", "d"), ("q", "d", "e")])
    with pytest.raises(InvalidInputTypeError, match="pair 0 has type str"):
        normalize_pairs(["qd", "ab", "c"])
    with pytest.raises(InvalidInputTypeError):
        normalize_pairs(None)
    with pytest.raises(TypeError):  # also a TypeError for callers that expect one
        normalize_pairs([(b"bytes", "d")])
    assert normalize_pairs([]) == []
    assert normalize_pairs(np.array([["q", "d"]])) == [("q", "d")]
    assert normalize_pairs(iter([["q", "d"]])) == [("q", "d")]
    assert is_single_pair(("q", "d")) and not is_single_pair([("q", "d")])
