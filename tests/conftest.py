"""Fixtures built at test time: no network, no dependency on ../shared (used only when present).

Models are random-weight CrossEncoders saved by sentence-transformers itself, so the on-disk
format is the real one. They are built once per session and exported once per session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
# ``auto`` follows the documented rule in the suite (deterministic, no seconds of timing per artifact);
# test_tuning.py turns the measured auto on where it tests it.
os.environ.setdefault("RERANKRT_TUNE", "0")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# RERANKRT_DISTILLED: a copy of the model where ../shared is absent (the GPU kit on a device machine)
DISTILLED = Path(os.environ.get("RERANKRT_DISTILLED") or SHARED / "models" / "ettin-17m-distilled")
SHARED_TOKENIZER = SHARED / "data" / "modernbert-tokenizer.json"

# Random weights squeeze scores and exaggerate reduced-precision error (see export/parity.py);
# these are the tolerances the tests hold random-weight fixtures to. fp32 keeps its default.
RANDOM_WEIGHT_TOLERANCES = {
    "fp16": dict(max_rel_delta=5e-2, min_spearman=0.99, min_top10=0.8),
    "bf16": dict(max_rel_delta=0.25, min_spearman=0.95, min_top10=0.8),
    "int8": dict(max_rel_delta=0.25, min_spearman=0.9, min_top10=0.7),
}


def random_weight_tolerances():
    from rerankrt.export.parity import Tolerance

    return {k: Tolerance(**v) for k, v in RANDOM_WEIGHT_TOLERANCES.items()}


# The random-weight fixtures' gate checks fp32 at 512 and 2,048 tokens (banded blocks, padding in a batch);
# 4,096 and 7,999 are checked where they mean something: the distilled 17m's export (``distilled_artifact``,
# every default length) and test_banded_attention against sentence-transformers. Measured: the random 17m
# fixture's export took 200 s with every length, 100 s with these two (most of the difference is the 7,999-token
# PyTorch reference).
FIXTURE_LONG_LENGTHS = (512, 2048)


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rerankrt")


@pytest.fixture(scope="session")
def local_tokenizer(work) -> Path:
    from builders import build_modernbert_style_tokenizer

    return build_modernbert_style_tokenizer(work / "modernbert-style-tokenizer.json")


@pytest.fixture(scope="session")
def tiny_model(work, local_tokenizer) -> Path:
    from builders import make_ettin_fixture

    # a wider init than the default 0.02 spreads the random scores, so ordering bugs show
    return make_ettin_fixture(work / "ettin-tiny", "tiny", tokenizer_file=local_tokenizer, initializer_range=0.1)


@pytest.fixture(scope="session")
def tiny_artifact(work, tiny_model) -> Path:
    from rerankrt.export.pipeline import export

    return export(str(tiny_model), work / "ettin-tiny-artifact", precisions=["fp32", "fp16", "int8"],
                  long_lengths=FIXTURE_LONG_LENGTHS,
                  tolerances=random_weight_tolerances(), log=None)


@pytest.fixture(scope="session")
def ettin17m_model(work, local_tokenizer) -> Path:
    from builders import make_ettin_fixture

    return make_ettin_fixture(work / "ettin-17m", "17m", tokenizer_file=local_tokenizer)


@pytest.fixture(scope="session")
def ettin17m_artifact(work, ettin17m_model) -> Path:
    from rerankrt.export.pipeline import export

    return export(str(ettin17m_model), work / "ettin-17m-artifact", precisions=["fp32", "int8"],
                  long_lengths=FIXTURE_LONG_LENGTHS,
                  tolerances=random_weight_tolerances(), log=None)


@pytest.fixture(scope="session")
def distilled_artifact(work) -> Path:
    """The distilled 17m (trained-like score spread) with the default tolerances, when ../shared has it."""
    if not DISTILLED.is_dir():
        pytest.skip("../shared/models/ettin-17m-distilled not present")
    from rerankrt.export.pipeline import export

    return export(str(DISTILLED), work / "distilled-artifact", precisions=["fp32", "fp16", "int8"], log=None)


@pytest.fixture(scope="session")
def classic_bert_model(work, local_tokenizer) -> Path:
    from builders import make_classic_fixture

    return make_classic_fixture(work / "classic-bert", tokenizer_file=local_tokenizer, kind="bert")


@pytest.fixture(scope="session")
def classic_modernbert_model(work, local_tokenizer) -> Path:
    from builders import make_classic_fixture

    return make_classic_fixture(work / "classic-modernbert", tokenizer_file=local_tokenizer, kind="modernbert")


def whole_tokens(reranker, text: str) -> list[int]:
    """``text``'s token ids with the reranker's own tokenizer, untruncated and without special tokens:
    what the truncation and window tests cut by hand, independently of the code under test."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(reranker.artifact.tokenizer_path))
    tok.no_truncation()
    tok.no_padding()
    return tok.encode(text, add_special_tokens=False).ids


def realistic_pairs(n_queries: int = 6, n_docs: int = 12, seed: int = 0) -> list[tuple[str, str]]:
    """Mixed-length pairs: from ../shared/data when present, else generated text."""
    import json
    import random

    rng = random.Random(seed)
    corpus = SHARED / "data" / "negconstraint" / "corpus.jsonl"
    queries = SHARED / "data" / "negconstraint" / "queries.jsonl"
    if corpus.is_file() and queries.is_file():
        docs = [json.loads(line)["text"] for line in corpus.open(encoding="utf-8")]
        qs = [json.loads(line)["text"] for line in queries.open(encoding="utf-8")]
        docs = rng.sample(docs, n_docs)
        qs = rng.sample(qs, n_queries)
    else:
        from rerankrt.export.calibration import builtin_pairs

        base = builtin_pairs(seed)
        qs = sorted({q for q, _ in base})[:n_queries]
        docs = [d for _, d in base][:n_docs]
    return [(q, d) for q in qs for d in docs]


EDGE_PAIRS = [
    ("", ""),
    ("", "a document with an empty query"),
    ("a query with an empty document", ""),
    ("   ", "\t\n  whitespace only query  "),
    ("emoji 🙂🚀", "Documents with emoji 🎉🎉 and accents: café, naïve, Ærø."),
    ("中文查询", "这是一个中文文档，包含一些常见的汉字和标点符号。日本語のテキストも少し。한국어도."),
    ("long query " * 400, "short doc"),
    ("short query", "word " * 10000),
    ("q " * 3000, "d " * 3000),
    ("RTL", "مرحبا بالعالم — שלום עולם"),
    ("control\x00chars", "zero\u200bwidth\u00a0nbsp"),
]


def _openvino_reads_opset23() -> bool:
    try:
        import openvino
    except ImportError:
        return False
    numbers = [int(part) for part in openvino.__version__.split("-")[0].split(".")[:2] if part.isdigit()]
    return tuple(numbers) >= (2026, 3)


def _onnxruntime_reads_attention_op() -> bool:
    from rerankrt.engine.backends import onnxruntime_reads_attention_op

    return onnxruntime_reads_attention_op()


# the attention-op graph form (ONNX opset 23): onnxruntime >= 1.24 writes/loads it; OpenVINO reads it from 2026.3
requires_attention_op = pytest.mark.skipif(not _onnxruntime_reads_attention_op(),
                                           reason="onnxruntime < 1.24 neither writes nor loads the attention-op form")
OPENVINO_READS_OPSET23 = _openvino_reads_opset23()
