"""The calibration set the parity gate scores: the built-in pairs, or a user's own file.

The built-in pairs live on the engine side (``rerankrt.engine.builtin_pairs``) because the
runtime's int8 check scores them too; this module adds the loader for a user's pairs, the
tokenized set the gate scores (:func:`load_calibration`), and the padded batches that the
PyTorch reference and int8 static calibration are fed (:func:`padded_batches`). It scores
nothing itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rerankrt.engine import scoring
from rerankrt.engine.batching import Batch, BatchPolicy
from rerankrt.engine.builtin_pairs import DOC_SENTENCES, builtin_pairs, group_ids
from rerankrt.engine.tokenize import PairTokenizer

__all__ = ["GATE_LADDER", "TOKEN_BUDGET", "CalibrationSet", "GateSize", "LongCheck", "builtin_pairs",
           "calibration_batches", "gate_size", "group_ids", "long_check", "LONG_POLICY",
           "load_calibration", "load_pairs_file", "padded_batches", "quantization_batches"]

# A small budget → several batches of mixed lengths, each padded to its own longest row.
TOKEN_BUDGET = 4096
# int8 ranges are calibrated on other documents than the parity gate checks.
QUANTIZATION_SEED = 1


@dataclass(frozen=True)
class CalibrationSet:
    """The pairs the gate scores, their query groups and token ids, and where they came from."""

    pairs: list[tuple[str, str]]
    groups: list[int]
    token_ids: list[list[int]]
    source: str  # "builtin" or the file

    def describe(self) -> dict:
        return {"source": self.source, "pairs": len(self.pairs), "groups": len(set(self.groups))}


# The built-in sets the gate may score, largest first: (queries, document lengths in sentences). Every
# one keeps documents past the 128-token sliding window, and ≥ 10 documents per query (top-10 agreement).
SHORT_DOC_SENTENCES = (0, 1, 2, 3, 5, 8, 12, 16, 25, 35)  # up to ~650 tokens: past the window and 512
GATE_LADDER: tuple[tuple[int, tuple[int, ...]], ...] = (
    (8, DOC_SENTENCES), (4, DOC_SENTENCES), (2, DOC_SENTENCES), (2, SHORT_DOC_SENTENCES), (1, SHORT_DOC_SENTENCES))
# The compute one scoring pass of the gate may take (PyTorch, then each precision: 3-4 passes, plus the
# int8 calibration): 2 x non-embedding parameters x tokens. 6 TFLOP keeps the default 128 pairs for the
# 17m-150m and is ~1 min per pass for the 1b on 2 cores (see README, "Every Ettin size").
GATE_FLOPS_PER_PASS = 6e12


@dataclass(frozen=True)
class GateSize:
    """How many built-in pairs the gate scores for a model of this size, and what a pass costs."""

    queries: int
    doc_sentences: tuple[int, ...]
    tokens: int
    flops_per_pass: float

    @property
    def pairs(self) -> int:
        return self.queries * len(self.doc_sentences)


def gate_size(tokenizer: PairTokenizer, flops_per_token: float, max_pairs: int | None = None,
              seed: int = 0) -> GateSize:
    """The largest built-in set (:data:`GATE_LADDER`) whose pass fits :data:`GATE_FLOPS_PER_PASS`.

    ``flops_per_token`` is 2 x the model's non-embedding parameters. ``max_pairs`` (the CLI's
    ``--gate-pairs``) caps it instead. Why adapt at all: the default 128 pairs (~40k tokens) took
    the 17m seconds but would take the 1b over 10 minutes per pass on 2 cores.
    """
    chosen = None
    for queries, sentences in GATE_LADDER:
        tokens = sum(len(t) for t in tokenizer.encode(builtin_pairs(seed, sentences, queries)))
        chosen = GateSize(queries, sentences, tokens, tokens * flops_per_token)
        fits = chosen.pairs <= max_pairs if max_pairs is not None else chosen.flops_per_pass <= GATE_FLOPS_PER_PASS
        if fits:
            break
    assert chosen is not None
    return chosen


def load_calibration(tokenizer: PairTokenizer, calibration_file: str | Path | None = None,
                     size: GateSize | None = None) -> CalibrationSet:
    """The user's pairs when a file is given, else the built-in ones (``size``: how many), tokenized."""
    if calibration_file:
        pairs = load_pairs_file(Path(calibration_file))
    elif size is not None:
        pairs = builtin_pairs(doc_sentences=size.doc_sentences, n_queries=size.queries)
    else:
        pairs = builtin_pairs()
    return CalibrationSet(pairs, group_ids(pairs), tokenizer.encode(pairs),
                          str(calibration_file) if calibration_file else "builtin")


def padded_batches(token_ids: list[list[int]], pad_id: int) -> list[Batch]:
    """Mixed-length padded batches, in the order the runtime would form them."""
    return scoring.padded_batches(token_ids, BatchPolicy(token_budget=TOKEN_BUDGET), pad_id)


def calibration_batches(tokenizer: PairTokenizer, pairs: list[tuple[str, str]]) -> list[Batch]:
    return padded_batches(tokenizer.encode(pairs), tokenizer.pad_id)


# Calibration batches are small: onnxruntime's MinMax calibrator appends a ReduceMin/ReduceMax pair for
# every MatMul input and output at the end of the graph, so every layer's tensors, the attention scores
# (rows x heads x length²) included, stay alive until the end of each run. With the gate's batches
# (4,096 tokens, up to ~1,800 per row) that was 10 GB for the 68m and 17 GB for the 150m
# (benchmarks/work/runs/sizes-20261203-131503); one row of at most this many tokens per batch bounds it.
QUANTIZATION_MAX_TOKENS = 512
QUANTIZATION_POLICY = BatchPolicy(token_budget=QUANTIZATION_MAX_TOKENS, max_batch_size=8,
                                  attention_budget=QUANTIZATION_MAX_TOKENS ** 2)


def quantization_batches(tokenizer: PairTokenizer, size: GateSize | None = None
                         ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(ids, mask)`` batches that int8 static quantization takes its activation ranges from
    (as many pairs as the gate scores, other documents, cut at :data:`QUANTIZATION_MAX_TOKENS`)."""
    pairs = (builtin_pairs(QUANTIZATION_SEED) if size is None else
             builtin_pairs(QUANTIZATION_SEED, size.doc_sentences, size.queries))
    ids = [t[:QUANTIZATION_MAX_TOKENS - 1] + t[-1:] if len(t) > QUANTIZATION_MAX_TOKENS else t
           for t in tokenizer.encode(pairs)]  # cut keeping the final [SEP]
    return [(b.input_ids, b.attention_mask)
            for b in scoring.padded_batches(ids, QUANTIZATION_POLICY, tokenizer.pad_id)]


def load_pairs_file(path: Path) -> list[tuple[str, str]]:
    """JSONL with ``query`` and ``document`` (or ``text``) fields, or TSV ``query<TAB>document``."""
    path = Path(path)
    pairs = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if path.suffix in (".jsonl", ".json"):
                try:
                    row = json.loads(line)
                    query, document = row["query"], row["document"] if "document" in row else row["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{lineno}: expected a JSON object with query and document "
                                     f"(missing or unreadable: {exc})") from exc
                if not isinstance(query, str) or not isinstance(document, str):
                    raise ValueError(f"{path}:{lineno}: query and document must be strings")
                pairs.append((query, document))
            else:
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 2:
                    raise ValueError(f"{path}:{lineno}: expected 'query<TAB>document'")
                pairs.append((parts[0], parts[1]))
    if not pairs:
        raise ValueError(f"{path} holds no pairs")
    return pairs


# The long-length check (issue 17): fp32 against the reference at these lengths (those the model reads), within
# this compute per pass — the 17m-150m check up to 4,096 tokens or more, the 400m/1b the shorter ones only.
LONG_LENGTHS = (512, 2048, 4096, 7999)
LONG_CHECK_FLOPS = 1.5e12
LONG_SCORES_BYTES = 2 << 30  # one n×n fp32 score tensor of the reference's (eager) global attention, all heads
# Batches of the check: 4,096 + 2,048 tokens share one (the shorter padded, as the runtime pads); 7,999 alone.
LONG_POLICY = BatchPolicy(token_budget=2 * 4096, max_batch_size=2, attention_budget=2 * 4096 * 4096)


@dataclass(frozen=True)
class LongCheck:
    """Pairs of the long lengths the gate checks (batched by :data:`LONG_POLICY`), and those it left out (why)."""

    token_ids: list[list[int]]
    skipped: list[str]

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.token_ids]


def long_check(tokenizer: PairTokenizer, flops_per_token: float, heads: int,
               lengths: tuple[int, ...] = LONG_LENGTHS) -> LongCheck:
    """One built-in query beside a document of built-in text cut to each of ``lengths`` tokens (default
    :data:`LONG_LENGTHS`; those the model reads, within :data:`LONG_CHECK_FLOPS` per pass and
    :data:`LONG_SCORES_BYTES`)."""
    wanted = sorted({min(n, tokenizer.max_length) for n in lengths})
    kept, skipped, cost = [], [], 0.0
    for n in wanted:
        if (cost + n * flops_per_token) > LONG_CHECK_FLOPS and kept:
            skipped.append(f"{n} tokens: over the check's {LONG_CHECK_FLOPS / 1e12:g} TFLOP per pass")
            continue
        if heads * n * n * 4 > LONG_SCORES_BYTES and kept:
            skipped.append(f"{n} tokens: the reference's global-layer scores would take "
                           f"{heads * n * n * 4 / 2**30:.1f} GiB per tensor")
            continue
        cost += n * flops_per_token
        kept.append(n)
    pairs = builtin_pairs(seed=2, doc_sentences=(40,), n_queries=1)
    query = pairs[0][0]
    document = " ".join(d for _, d in builtin_pairs(seed=2, doc_sentences=(40,), n_queries=64))
    document = " ".join([document] * 8)  # ~15k tokens of built-in text; repeated text is as good for numerics
    whole = tokenizer.encode([(query, document)])[0]  # cut at max_length, ends with [SEP]
    ids = [whole[:n - 1] + whole[-1:] for n in kept if n <= len(whole)]
    skipped += [f"{n} tokens: the built-in text is shorter" for n in kept if n > len(whole)]
    return LongCheck(ids, skipped)
