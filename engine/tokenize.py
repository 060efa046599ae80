"""Pairs → token ids, identical to what sentence-transformers feeds the model.

Why explicit settings: a saved ``tokenizer.json`` may carry the padding and truncation it was
saved with (the Ettin files carry ``BatchLongest`` padding and a 512 truncation while the model
reads 7,999 tokens). We clear padding (the batcher pads per batch) and set ``longest_first``
truncation to the artifact's ``max_length``, which is what ``CrossEncoder`` does through
transformers' fast tokenizer; the Rust ``encode_batch`` does the work on all cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import ArtifactError, InvalidInputError, InvalidInputTypeError

Pair = tuple[str, str]


def _check_text(value: object, index: int, side: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        raise InvalidInputTypeError(f"pair {index}: {side} is None; expected a string", index)
    raise InvalidInputTypeError(f"pair {index}: {side} has type {type(value).__name__}; expected a string", index)


def is_single_pair(inputs: object) -> bool:
    """``("query", "doc")`` is one pair (as in ``CrossEncoder.predict``), not two one-char pairs."""
    return isinstance(inputs, (list, tuple)) and len(inputs) == 2 and all(isinstance(x, str) for x in inputs)


def normalize_pairs(pairs: object) -> list[Pair]:
    """Validate and return a list of ``(query, document)`` string tuples; errors name the index."""
    if isinstance(pairs, (str, bytes)) or pairs is None:
        raise InvalidInputTypeError(f"pairs must be a sequence of (query, document) pairs, got {type(pairs).__name__}")
    if isinstance(pairs, np.ndarray):
        pairs = pairs.tolist()
    if not isinstance(pairs, Sequence):
        try:
            pairs = list(pairs)  # type: ignore[call-overload]  # generators, pandas columns, ...; TypeError below
        except TypeError as exc:
            raise InvalidInputTypeError(f"pairs must be iterable, got {type(pairs).__name__}") from exc
    out: list[Pair] = []
    pair: object
    for i, pair in enumerate(pairs):  # type: ignore[arg-type]  # a Sequence by now
        if isinstance(pair, (str, bytes)) or not isinstance(pair, (Sequence, np.ndarray)):
            raise InvalidInputTypeError(
                f"pair {i} has type {type(pair).__name__}; expected a (query, document) pair of strings", i)
        if len(pair) != 2:
            raise InvalidInputError(f"pair {i} has {len(pair)} elements; expected exactly 2 (query, document)", i)
        out.append((_check_text(pair[0], i, "query"), _check_text(pair[1], i, "document")))
    return out


class PairTokenizer:
    """Tokenizes pairs as ``[CLS] q [SEP] d [SEP]`` with ``longest_first`` truncation."""

    def __init__(self, tokenizer_file: Path, max_length: int, pad_id: int, cls_id: int | None = None,
                 sep_id: int | None = None, model_vocab_size: int | None = None) -> None:
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # noqa: BLE001 - the Rust error says little; name the file
            raise ArtifactError(f"cannot read tokenizer {tokenizer_file}: {exc}", str(tokenizer_file)) from exc
        specials = tok.post_processor.num_special_tokens_to_add(True) if tok.post_processor else 0
        if max_length <= specials:
            raise ValueError(f"max_length {max_length} leaves no room for text next to {specials} special tokens")
        tok.no_padding()
        tok.enable_truncation(max_length, stride=0, strategy="longest_first", direction="right")
        for name, expected in (("[CLS]", cls_id), ("[SEP]", sep_id), ("[PAD]", pad_id)):
            found = tok.token_to_id(name)
            if expected is not None and found is not None and found != expected:
                raise ArtifactError(f"tokenizer {tokenizer_file} maps {name} to {found}, the graph expects {expected}: "
                                    "tokenizer and model do not belong together", str(tokenizer_file))
        vocab = tok.get_vocab_size(with_added_tokens=True)
        if model_vocab_size is not None and vocab > model_vocab_size:
            raise ArtifactError(f"tokenizer {tokenizer_file} has {vocab} tokens but the graph's embedding has "
                                f"{model_vocab_size} rows: tokenizer and model do not belong together",
                                str(tokenizer_file))
        self._tok = tok
        self._encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
        self._whole: Tokenizer | None = None  # untruncated, for documents cut into windows (parts())
        self._left: Tokenizer | None = None  # truncating from the left (TEI's truncation_direction)
        self._template: tuple[list[int], list[int], list[int]] | None = None
        self.max_length = max_length
        self.pad_id = pad_id

    @classmethod
    def for_artifact(cls, artifact, max_length: int | None = None) -> PairTokenizer:
        """The artifact's tokenizer with its manifest's special ids and vocabulary; ``max_length`` may shorten."""
        spec = artifact.tokenizer_spec
        return cls(artifact.tokenizer_path, max_length or artifact.max_length, spec["pad_id"], spec["cls_id"],
                   spec["sep_id"], artifact.manifest["architecture"].get("vocab_size"))

    def encode(self, pairs: list[Pair]) -> list[list[int]]:
        """Token ids per pair (no padding), truncated to ``max_length``."""
        if not pairs:
            return []
        return [enc.ids for enc in self._encode(pairs, add_special_tokens=True)]

    def parts(self, pairs: list[Pair]) -> tuple[list[list[int]], list[list[int]], list[list[tuple[int, int]]]]:
        """Query ids, whole document ids (no special tokens, no truncation) and each document token's
        character span: what ``chunking.make_windows`` cuts. A pair's ``encode`` is
        ``[CLS] q [SEP] d [SEP]`` of exactly these ids when it fits, so one window equals ``truncate``."""
        if not pairs:
            return [], [], []
        if self._whole is None:
            from tokenizers import Tokenizer

            whole = Tokenizer.from_str(self._tok.to_str())
            whole.no_truncation()
            whole.no_padding()
            self._whole = whole
        encode = getattr(self._whole, "encode_batch_fast", self._whole.encode_batch)
        queries = [enc.ids for enc in encode([q for q, _ in pairs], add_special_tokens=False)]
        docs = self._whole.encode_batch([d for _, d in pairs], add_special_tokens=False)  # offsets needed
        return queries, [enc.ids for enc in docs], [enc.offsets for enc in docs]

    def _left_encoder(self):
        if self._left is None:
            from tokenizers import Tokenizer

            left = Tokenizer.from_str(self._tok.to_str())
            left.no_padding()
            left.enable_truncation(self.max_length, stride=0, strategy="longest_first", direction="left")
            self._left = left
        return getattr(self._left, "encode_batch_fast", self._left.encode_batch)

    @property
    def pair_template(self) -> tuple[list[int], list[int], list[int]]:
        """The special tokens around a pair's parts: before the query, between, after the document
        (``[CLS]``, ``[SEP]``, ``[SEP]`` for ModernBERT/BERT; ``<s>``, ``</s></s>``, ``</s>`` for RoBERTa-likes),
        read from the tokenizer's own post-processor, so windows are built the way it builds pairs."""
        if self._template is None:
            q = self._tok.encode("query", add_special_tokens=False).ids
            d = self._tok.encode("document", add_special_tokens=False).ids
            both = self._tok.encode("query", "document", add_special_tokens=True).ids
            i = next(i for i in range(len(both)) if both[i:i + len(q)] == q)
            j = next(j for j in range(i + len(q), len(both)) if both[j:j + len(d)] == d)
            self._template = (both[:i], both[i + len(q):j], both[j + len(d):])
        return self._template

    def encode_with_truncation(self, pairs: list[Pair], direction: str = "right"
                               ) -> tuple[list[list[int]], np.ndarray]:
        """Token ids and, per pair, whether truncation cut it (for limits, usage and summaries).

        ``direction="left"`` cuts the start of the text instead of its end (still ``longest_first``:
        the longer of query and document loses tokens first), as text-embeddings-inference does for
        ``truncation_direction: "left"`` — it keeps the end of a document, where a chat history or a
        log has its latest part.
        """
        if not pairs:
            return [], np.zeros(0, dtype=bool)
        encode = self._encode
        if direction == "left":
            encode = self._left_encoder()
        elif direction != "right":
            raise ValueError(f"truncation direction must be 'right' or 'left', got {direction!r}")
        encodings = encode(pairs, add_special_tokens=True)
        truncated = np.fromiter((len(enc.overflowing) > 0 for enc in encodings), dtype=bool, count=len(encodings))
        return [enc.ids for enc in encodings], truncated
