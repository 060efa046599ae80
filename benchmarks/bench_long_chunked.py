"""A 20k-token document chunked (issue 17): bounded memory, and the time its windows cost as ordinary rows.

One process per system (its peak RSS is what the document cost): the distilled 17m, a ~20,000-token document
of scifact text beside one query, ``long_documents={"strategy": "chunk", "window": 512, "stride": 256}``:

* ``chunked``: ``Reranker.predict`` on the one pair (tokenize, cut into windows, batch, score, aggregate);
* ``windows as rows``: the same windows' token ids given straight to the scoring core (``score_ids``), the
  cost of scoring them as that many independent 512-token pairs;
* ``truncate 7,999``: the same pair cut to the model's 7,999 tokens, one row (the whole-document alternative).

Median of ``--passes`` (7) interleaved calls of the three after a warm-up; ratios compare rows of this run only.

    python benchmarks/bench_long_chunked.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common

WORK = common.REPO_ROOT / "benchmarks" / "work"
SYSTEMS = {"ort-fp32": {"precision": "fp32", "backend": "onnxruntime"}, "auto": {}}
DOC_TOKENS = 20_000
QUERY = "gene expression changes in tumour cells"
CHUNK = {"strategy": "chunk", "window": 512, "stride": 256}


def long_document(tokenizer, tokens: int) -> str:
    """Scifact passages joined until the text tokenizes to at least ``tokens`` tokens."""
    texts = [json.loads(line)["text"] for line in common.SCIFACT_FILE.open(encoding="utf-8")]
    doc, i = "", 0
    while len(tokenizer.encode(doc, add_special_tokens=False).ids) < tokens:
        doc += " ".join(texts[i:i + 20]) + " "
        i += 20
    return doc


def worker(system: str, artifact: Path, passes: int) -> dict:
    from tokenizers import Tokenizer

    from rerankrt.engine import Reranker
    from rerankrt.engine.chunking import as_long_documents, windows_for
    from rerankrt.engine.scoring import score_ids

    raw = Tokenizer.from_file(str(common.TOKENIZER_FILE))
    raw.no_padding()
    raw.no_truncation()
    doc = long_document(raw, DOC_TOKENS)
    doc_tokens = len(raw.encode(doc, add_special_tokens=False).ids)
    reranker = Reranker.from_pretrained(artifact, threads=common.THREADS, **SYSTEMS[system])
    pair = [(QUERY, doc)]
    windows = windows_for(reranker.tokenizer, pair, as_long_documents(CHUNK))
    reranker.predict([(QUERY, "warm-up")])
    rss_before = common.peak_rss_mib()

    def chunked() -> object:
        return reranker.predict(pair, long_documents=CHUNK)

    def as_rows() -> object:
        return score_ids(reranker.backend, windows.token_ids, reranker.policy, reranker.tokenizer.pad_id)

    def truncated() -> object:
        return reranker.predict(pair)

    chunked()  # warm-up of the window shapes
    result = {"system": system, "described": reranker.backend.describe(), "doc_tokens": doc_tokens,
              "windows": len(windows.token_ids), "window_tokens": sum(len(w) for w in windows.token_ids),
              "peak_rss_after_load_mib": rss_before}
    seconds: dict[str, list[float]] = {"chunked": [], "windows_as_rows": [], "truncate_7999": []}
    for _ in range(passes):  # interleaved: a slow spell of a shared machine hits every form alike
        for name, fn in (("chunked", chunked), ("windows_as_rows", as_rows), ("truncate_7999", truncated)):
            seconds[name] += common.pass_seconds(fn, 1)
    for name, values in seconds.items():
        result[f"{name}_s"] = statistics.median(values)
        result[f"{name}_all_s"] = values
    result["peak_rss_mib"] = common.peak_rss_mib()
    chunk_score = float(reranker.predict(pair, long_documents=CHUNK)[0])
    rows_max = float(score_ids(reranker.backend, windows.token_ids, reranker.policy, reranker.tokenizer.pad_id).max())
    result["chunk_score"], result["max_of_windows"] = chunk_score, rows_max
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=common.REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--worker", choices=sorted(SYSTEMS))
    parser.add_argument("--artifact", type=Path)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.artifact, args.passes)))
        return 0
    model = common.prepare_model(common.DISTILLED_NAME, WORK, None, precisions=("fp32", "int8"))
    rows = []
    for system in SYSTEMS:
        started = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--worker", system, "--artifact", str(model.artifact_dir),
                              "--passes", str(args.passes)], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["wall_s"] = time.perf_counter() - started
        rows.append(row)
        common.say(f"{system}: chunked {row['chunked_s']:.2f} s, windows as rows {row['windows_as_rows_s']:.2f} s, "
                   f"peak RSS {row['peak_rss_mib']:.0f} MiB")
    body = [f"Distilled 17m, one query beside a {rows[0]['doc_tokens']:,}-token document (scifact text), "
            f"chunk 512/256 max: {rows[0]['windows']} windows, {rows[0]['window_tokens']:,} tokens. "
            "Median seconds per call; peak RSS of the whole process.", "",
            "| system | loaded as | chunked | windows as rows | chunked / rows | truncate 7,999 "
            "| peak RSS after load | peak RSS | chunk score = max of windows |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        d = r["described"]
        body.append(f"| {r['system']} | {d.get('backend')} {d.get('precision')} | {r['chunked_s']:.2f} s | "
                    f"{r['windows_as_rows_s']:.2f} s | {r['chunked_s'] / r['windows_as_rows_s']:.2f}× | "
                    f"{r['truncate_7999_s']:.2f} s | {r['peak_rss_after_load_mib']:.0f} MiB | "
                    f"{r['peak_rss_mib']:.0f} MiB | {r['chunk_score'] == r['max_of_windows']} |")
    body += ["", "Targets (issue 17): chunked ≤ 1.1× its windows scored as rows (the tokenizing and cutting cost "
             "little); peak RSS ≤ 1 GB."]
    for r in rows:
        ratio = r["chunked_s"] / r["windows_as_rows_s"]
        body.append(f"- {r['system']}: {ratio:.2f}× ({'met' if ratio <= 1.1 else 'NOT met'}), "
                    f"{r['peak_rss_mib']:.0f} MiB ({'met' if r['peak_rss_mib'] <= 1024 else 'NOT met'})")
    common.write_report(args.out, "long-chunked", "A 20k-token document, chunked",
                        "python benchmarks/bench_long_chunked.py --out benchmarks/results",
                        common.run_environment(auto_artifacts=(model.artifact_dir,)), rows, body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
