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
from rerankrt.engine.builtin_pairs import builtin_pairs, group_ids
from rerankrt.engine.tokenize import PairTokenizer

__all__ = ["TOKEN_BUDGET", "CalibrationSet", "builtin_pairs", "calibration_batches", "group_ids",
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


def load_calibration(tokenizer: PairTokenizer, calibration_file: str | Path | None = None) -> CalibrationSet:
    """The user's pairs when a file is given, else the built-in ones, tokenized for the artifact."""
    pairs = load_pairs_file(Path(calibration_file)) if calibration_file else builtin_pairs()
    return CalibrationSet(pairs, group_ids(pairs), tokenizer.encode(pairs),
                          str(calibration_file) if calibration_file else "builtin")


def padded_batches(token_ids: list[list[int]], pad_id: int) -> list[Batch]:
    """Mixed-length padded batches, in the order the runtime would form them."""
    return scoring.padded_batches(token_ids, BatchPolicy(token_budget=TOKEN_BUDGET), pad_id)


def calibration_batches(tokenizer: PairTokenizer, pairs: list[tuple[str, str]]) -> list[Batch]:
    return padded_batches(tokenizer.encode(pairs), tokenizer.pad_id)


def quantization_batches(tokenizer: PairTokenizer) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(ids, mask)`` batches that int8 static quantization takes its activation ranges from."""
    return [(b.input_ids, b.attention_mask)
            for b in calibration_batches(tokenizer, builtin_pairs(seed=QUANTIZATION_SEED))]


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
