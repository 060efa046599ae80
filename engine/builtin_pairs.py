"""Built-in (query, document) pairs: what the export's parity gate and the load-time int8 check score.

Why built in: both must run anywhere, offline, with no data package. The pairs are grouped by
query (so top-10 agreement is meaningful) and span the lengths that break exports: empty
documents, short ones, and documents well past the 128-token sliding window and 512 tokens,
mixed in one padded batch. The text is generated here from a few sentences of our own.
"""

from __future__ import annotations

import random

_SENTENCES = [
    "The river rises in the northern hills and flows south through three market towns.",
    "Its lower valley was settled by farmers in the twelfth century.",
    "A stone bridge built in 1821 still carries the main road across the water.",
    "The town hall houses a small museum of local history and a public library.",
    "Researchers measured protein levels in blood samples from two hundred patients.",
    "The treatment group showed a significant reduction in inflammation after six weeks.",
    "No adverse effects were reported during the follow-up period.",
    "The enzyme binds the substrate at two sites and changes shape when activated.",
    "Mutations in this gene are linked to a rare inherited disorder of the liver.",
    "The composer wrote four symphonies and a large body of chamber music.",
    "Her second opera premiered in Vienna and was revived many times.",
    "The team won the national championship in its third season.",
    "The island has a mild climate, with dry summers and wet winters.",
    "Most of the population speaks two languages at home.",
    "The railway line was closed in 1965 and converted into a cycling path.",
    "The algorithm sorts the input by length before grouping it into batches.",
    "Solar panels on the roof supply most of the building's electricity.",
    "Migratory birds stop at the lake every spring on their way north.",
    "The novel follows a young engineer who returns to her home village.",
    "Critics praised the film for its photography but not for its script.",
    "Ölçüm sonuçları tabloda gösterilmiştir; 数据见表二。 Les résultats sont résumés ci-dessous 🙂.",
]
_QUERIES = [
    "when was the stone bridge over the river built",
    "effect of the treatment on inflammation in patients",
    "which gene mutation causes the liver disorder",
    "how many symphonies did the composer write",
    "climate of the island in summer and winter",
    "what happened to the old railway line",
    "length sorted batching algorithm",
    "birds migrating north stop at a lake",
]
# Document lengths in sentences: empty, short, around the 128-token window, past 512 tokens.
DOC_SENTENCES = (0, 1, 2, 3, 5, 8, 12, 16, 25, 40, 60, 2, 4, 7, 10, 90)


def builtin_pairs(seed: int = 0, doc_sentences: tuple[int, ...] = DOC_SENTENCES,
                  n_queries: int | None = None) -> list[tuple[str, str]]:
    """By default 128 pairs: 8 queries × 16 documents of 0 … ~90 sentences (≈0 … 1,800 tokens).

    ``doc_sentences`` sets the documents' lengths in sentences, ``n_queries`` how many queries.
    """
    rng = random.Random(seed)
    pairs = []
    for query in _QUERIES[:n_queries]:
        for n in doc_sentences:
            pairs.append((query, " ".join(rng.choice(_SENTENCES) for _ in range(n))))
    return pairs


def group_ids(pairs: list[tuple[str, str]]) -> list[int]:
    """Query group of each pair (pairs sharing a query are ranked together for top-10 agreement)."""
    ids: dict[str, int] = {}
    return [ids.setdefault(q, len(ids)) for q, _ in pairs]
