"""Long-document strategies evaluated, not only timed (issue 17, item 4).

A long-document set built from the shared data at run time: negconstraint queries and their BM25 top
candidates, each candidate passage placed at a random depth inside unrelated text (scifact abstracts) so the
documents are 1k–6k tokens long and the passage may sit anywhere. The same reranker (distilled 17m, ``auto``)
then scores the same candidates three ways:

* ``truncate 512``: ``max_length=512`` (what most rerankers do: the passage is lost when it sits deeper);
* ``truncate 7,999``: the whole document in one pass (Ettin's full context, banded sliding layers);
* ``chunk 512/256 max``: ``max_length=512`` windows with a stride of half a window, the best window's score.

nDCG@10 (ir-measures) and pairs/s per strategy, same run. The distilled model is a weak ranker: the table
says what it shows on this set, nothing more.

    python benchmarks/bench_long_eval.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import common

WORK = common.REPO_ROOT / "benchmarks" / "work"


def build_set(n_queries: int, depth: int, seed: int) -> tuple[dict, dict, dict[str, dict[str, str]]]:
    """qrels, queries and, per query, its candidates' long documents (passage at a random depth)."""
    from rerankrt.engine.offline import ireval

    corpus, queries, qrels = ireval.read_beir(common.NEGCONSTRAINT_DIR, "test", with_title=False)
    rng = random.Random(seed)
    chosen = rng.sample(sorted(q for q in qrels if q in queries), min(n_queries, len(qrels)))
    queries = {q: queries[q] for q in chosen}
    qrels = {q: qrels[q] for q in chosen}
    first = ireval.bm25_run(corpus, queries, depth)
    filler = common.read_texts(common.SCIFACT_FILE)
    docs: dict[str, dict[str, str]] = {}
    for q, ranked in first.items():
        docs[q] = {}
        for doc_id in ranked:
            target_chars = rng.randint(1024, 6144) * 4  # ~4 characters per token in these texts
            parts: list[str] = []
            while sum(len(p) for p in parts) < target_chars:
                parts.append(filler[rng.randrange(len(filler))])
            parts.insert(rng.randint(0, len(parts)), corpus[doc_id])  # the passage, anywhere
            docs[q][doc_id] = " ".join(parts)
    return qrels, queries, docs


def score(strategy: str, artifact: Path, queries: dict, docs: dict) -> tuple[dict, dict]:
    """The reranked run and its cost for one strategy (a fresh Reranker each, same process)."""
    from rerankrt.engine import Reranker

    max_length, long_documents = {"truncate-512": (512, None), "truncate-7999": (7999, None),
                                  "chunk-512-256-max": (512, {"strategy": "chunk", "aggregate": "max"})}[strategy]
    reranker = Reranker.from_pretrained(artifact, max_length=max_length, threads=common.THREADS)
    run, pairs, tokens, truncated = {}, 0, 0, 0
    started = time.perf_counter()
    for q, candidates in docs.items():
        ids = list(candidates)
        scores = reranker.predict([(queries[q], candidates[d]) for d in ids], long_documents=long_documents)
        run[q] = {d: float(s) for d, s in zip(ids, scores)}
        pairs += len(ids)
    seconds = time.perf_counter() - started
    if long_documents is None:  # counted after the clock stops: not part of what a strategy costs
        for q, candidates in docs.items():
            encoded = reranker.encode([(queries[q], text) for text in candidates.values()])
            tokens += encoded.tokens
            truncated += int(encoded.truncated.sum())
    return run, {"strategy": strategy, "pairs": pairs, "seconds": seconds, "pairs_per_s": pairs / seconds,
                 "configuration": f"{reranker.precision} on {reranker.backend.name}", "max_length": max_length,
                 "tokens_scored": tokens or None, "truncated_pairs": truncated if long_documents is None else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--depth", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=common.REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    from rerankrt.engine.offline import ireval

    model = common.prepare_model(common.DISTILLED_NAME, WORK, None)
    qrels, queries, docs = build_set(args.queries, args.depth, args.seed)
    lengths = sorted(len(d) for c in docs.values() for d in c.values())
    common.say(f"{len(queries)} queries × {args.depth} candidates, documents of {lengths[0]:,}–{lengths[-1]:,} "
               "characters")
    environment = common.run_environment(("openvino", "ir_measures"), auto_artifacts=(model.artifact_dir,))
    rows = []
    for strategy in ("truncate-512", "truncate-7999", "chunk-512-256-max"):
        run, row = score(strategy, model.artifact_dir, queries, docs)
        row.update(ireval.evaluate(qrels, run, ["nDCG@10", "RR@10"]))
        common.say(f"{strategy}: nDCG@10 {row['nDCG@10']:.4f}, {row['pairs_per_s']:.1f} pairs/s "
                   f"({row['configuration']})")
        rows.append(row)
    body = [f"{len(queries)} negconstraint queries (seed {args.seed}) × their BM25 top {args.depth}; each candidate "
            "passage placed at a random depth inside scifact abstracts, documents of ~1k–6k tokens "
            f"({lengths[0]:,}–{lengths[-1]:,} characters). Distilled 17m, `auto` precision/backend, "
            f"{common.THREADS} threads, one run.", "",
            "| strategy | nDCG@10 | RR@10 | pairs/s | configuration | truncated pairs |",
            "|---|---:|---:|---:|---|---:|"]
    body += [f"| {r['strategy']} | {r['nDCG@10']:.4f} | {r['RR@10']:.4f} | {r['pairs_per_s']:.1f} | "
             f"{r['configuration']} | {common.fmt(r['truncated_pairs'], 'd')} |" for r in rows]
    body += ["", "The distilled 17m is a weak ranker; the set is synthetic (a passage inside unrelated text). "
             "Read it as: does a strategy see the passage wherever it sits, and at what cost."]
    common.write_report(args.out, "long-eval", "Long documents: truncate vs chunk, evaluated",
                        "python benchmarks/bench_long_eval.py " + " ".join(sys.argv[1:]), environment, rows, body)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
