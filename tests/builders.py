"""Random-weight Ettin-shaped and classic CrossEncoders and a ModernBERT-style tokenizer, for tests and benchmarks.

Why: this workplace (and CI) cannot download models, yet every test must exercise the exact
on-disk format the hub models use. The models are random-weight CrossEncoders *saved by
sentence-transformers itself* (so ``modules.json``, the module folders and configs are the real
thing), in the real Ettin shapes or a tiny one for fast tests. They live beside the tests, not in
``rerankrt.export``: building a test model is no part of the product. Needs torch, transformers
and sentence-transformers (imported inside the builders, so importing this module is cheap);
``benchmarks/common.py`` imports it too.
"""

from __future__ import annotations

import contextlib
import random
import string
import tempfile
from collections.abc import Iterator
from pathlib import Path

# (hidden, layers, heads, intermediate) of the published Ettin encoders.
ETTIN_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (64, 4, 4, 96),
    "17m": (256, 7, 4, 384),
    "32m": (384, 10, 6, 576),
    "68m": (512, 19, 8, 768),
    "150m": (768, 22, 12, 1152),
    "400m": (1024, 28, 16, 2624),
    "1b": (1792, 28, 28, 3840),
}
VOCAB_SIZE = 50368
SPECIAL_TOKENS = {"[UNK]": 50280, "[CLS]": 50281, "[SEP]": 50282, "[PAD]": 50283, "[MASK]": 50284}
_WORDS = ("the of and to in is was for on as with by at from that which this are were be has have an or "
          "river mountain city history science protein cell energy market music language island season "
          "school paper study result model network water light century village player team island "
          "government church species disease treatment patient effect analysis gene structure").split()


def _synthetic_corpus(n_lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) if rng.random() < 0.8 else
                 "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(rng.randint(4, 30))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ", 1984.", " (2020)."]))
    return lines


def build_modernbert_style_tokenizer(path: Path, bpe_vocab: int = 4000, seed: int = 0) -> Path:
    """A byte-level BPE tokenizer laid out like ModernBERT's: the same special ids and templates.

    The BPE part is trained on a synthetic corpus (no data ships with the project); the vocab
    is padded with unreachable filler entries so ``[CLS]``=50281, ``[SEP]``=50282,
    ``[PAD]``=50283 sit exactly where Ettin's are.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    trainer = trainers.BpeTrainer(vocab_size=bpe_vocab, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    base.train_from_iterator(_synthetic_corpus(20000, seed), trainer=trainer)
    import json

    spec = json.loads(base.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    next_id = max(vocab.values()) + 1
    while next_id < min(SPECIAL_TOKENS.values()):
        vocab[f"<|filler_{next_id}|>"] = next_id
        next_id += 1
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    from tokenizers import AddedToken

    for token, token_id in sorted(SPECIAL_TOKENS.items(), key=lambda kv: kv[1]):
        tok.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        assert tok.token_to_id(token) == token_id, (token, tok.token_to_id(token), token_id)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", SPECIAL_TOKENS["[CLS]"]), ("[SEP]", SPECIAL_TOKENS["[SEP]"])])
    path = Path(path)
    tok.save(str(path))
    return path


@contextlib.contextmanager
def _build_dir(seed: int, tokenizer_file: Path | None) -> Iterator[tuple[Path, Path]]:
    """Seed torch; a scratch directory and the tokenizer file to use (built there when none is given)."""
    import torch

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if tokenizer_file is None:
            tokenizer_file = build_modernbert_style_tokenizer(tmp / "built-tokenizer.json", seed=seed)
        yield tmp, Path(tokenizer_file)


def _save_hf_tokenizer(tokenizer_file: Path, max_length: int, directory: Path) -> None:
    """The tokenizer as transformers saves it beside a model, with ModernBERT's special tokens."""
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), cls_token="[CLS]", sep_token="[SEP]",
                            pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                            model_max_length=max_length).save_pretrained(directory)


def make_ettin_fixture(out_dir: Path, size: str = "tiny", tokenizer_file: Path | None = None,
                       max_length: int = 7999, seed: int = 0, initializer_range: float = 0.02,
                       pooling: str = "cls") -> Path:
    """Save a random-weight Ettin-shaped CrossEncoder with sentence-transformers, in its modular format.

    Transformer (ModernBERT) → Pooling(cls) → Dense(H, H, no bias, GELU) → LayerNorm(H) →
    Dense(H, 1) with an Identity activation: the Ettin reranker recipe.
    """
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import LayerNorm, Pooling
    from transformers import ModernBertConfig, ModernBertModel

    hidden, layers, heads, inter = ETTIN_SHAPES[size]
    out_dir = Path(out_dir)
    with _build_dir(seed, tokenizer_file) as (tmp, tokenizer_file):
        config = ModernBertConfig(
            vocab_size=VOCAB_SIZE, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=inter, max_position_embeddings=8192, pad_token_id=50283, bos_token_id=50281,
            eos_token_id=50282, cls_token_id=50281, sep_token_id=50282, initializer_range=initializer_range,
            global_attn_every_n_layers=3, local_attention=128, norm_bias=False, attention_bias=False,
            mlp_bias=False, num_labels=1)
        backbone = ModernBertModel(config)
        backbone.save_pretrained(tmp / "backbone")
        _save_hf_tokenizer(tokenizer_file, max_length, tmp / "backbone")
        transformer = Transformer(str(tmp / "backbone"))
        gen = torch.Generator().manual_seed(seed + 1)
        dense = Dense(hidden, hidden, bias=False, activation_function=torch.nn.GELU())
        dense.linear.weight.data = torch.randn(hidden, hidden, generator=gen) * (1.0 / hidden**0.5)
        norm = LayerNorm(hidden)
        score = Dense(hidden, 1, bias=True, activation_function=torch.nn.Identity(),
                      module_output_name="scores")
        score.linear.weight.data = torch.randn(1, hidden, generator=gen) * (1.0 / hidden**0.5)
        model = CrossEncoder(modules=[transformer, Pooling(hidden, pooling_mode=pooling), dense, norm, score],
                             activation_fn=torch.nn.Identity(), max_length=max_length, device="cpu")
        model.save(str(out_dir))
    return out_dir


def make_classic_fixture(out_dir: Path, tokenizer_file: Path | None = None, kind: str = "bert",
                         max_length: int = 512, seed: int = 0) -> Path:
    """A classic single-module CrossEncoder (``*ForSequenceClassification``), saved by sentence-transformers."""
    from sentence_transformers import CrossEncoder
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        ModernBertConfig,
        ModernBertForSequenceClassification,
    )

    out_dir = Path(out_dir)
    with _build_dir(seed, tokenizer_file) as (tmp, tokenizer_file):
        if kind == "bert":
            config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=128, max_position_embeddings=max_length, num_labels=1,
                                pad_token_id=SPECIAL_TOKENS["[PAD]"])
            model = BertForSequenceClassification(config)
        else:
            config = ModernBertConfig(vocab_size=VOCAB_SIZE, hidden_size=64, num_hidden_layers=4,
                                      num_attention_heads=4, intermediate_size=96, pad_token_id=50283,
                                      bos_token_id=50281, eos_token_id=50282, cls_token_id=50281,
                                      sep_token_id=50282, num_labels=1, classifier_pooling="mean",
                                      max_position_embeddings=8192)
            model = ModernBertForSequenceClassification(config)
        model.save_pretrained(tmp / "hf")
        _save_hf_tokenizer(tokenizer_file, max_length, tmp / "hf")
        CrossEncoder(str(tmp / "hf"), device="cpu", num_labels=1).save(str(out_dir))
    return out_dir
