"""fp16 fidelity at long inputs: the fp16 pass against onnxruntime's converter used alone.

The converter keeps the nodes it is told to keep in fp32, but sends every tensor *between* two of them
through fp16 and back (``Cast(fp16) → Cast(fp32)``). For ModernBERT those are the positions, the RoPE
angles and the masks: fp16 holds integers exactly only up to 2,048, so past it the angles drift. The
fp16 pass (``export/passes/fp16.py``) removes those round trips. This measures what that is worth:

* ``converter``: ``convert_float_to_float16`` with the pass's block lists, nothing else (the graph before);
* ``fp16-pass``: the pass as the export runs it.

Both on onnxruntime's CPU EP (its fp16 kernels; a GPU run is the device kit's job), on the distilled
17m, one pair per call at several lengths (4 queries × 3 scifact passages cut to the length). The
numbers are ``|fp16 − fp32|`` of the same pair on the fp32 graph.

    python benchmarks/bench_fp16_long.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import common

WORK = common.REPO_ROOT / "benchmarks" / "work"
LENGTHS = (512, 2048, 4096, 7999)
QUERIES = ("what causes inflammation", "gene expression in cancer cells", "vaccine efficacy in children",
           "protein folding")


def long_pairs(tokenizer, length: int, words: list[str]) -> list[list[int]]:
    """Token ids of 12 pairs exactly ``length`` tokens long (real text, truncated; the last token [SEP])."""
    rows = []
    for qi, query in enumerate(QUERIES):
        for offset in range(3):
            start = (qi * 3 + offset) * 3000
            ids = tokenizer.encode(query, " ".join(words[start:start + 8000])).ids[:length - 1]
            ids.append(tokenizer.token_to_id("[SEP]"))
            if len(ids) != length:
                raise SystemExit(f"not enough text for {length} tokens")
            rows.append(ids)
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=common.REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from tokenizers import Tokenizer

    from rerankrt.export.passes import fp16

    model = common.prepare_model(common.DISTILLED_NAME, WORK, None, precisions=("fp32",))
    fp32_path = model.artifact_dir / "model.fp32.onnx"
    fp32 = onnx.load(str(fp32_path))
    converter = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True, op_block_list=fp16.FP32_OPS,
                                         node_block_list=fp16.tagged_fp32_nodes(fp32))
    passed, report = fp16.convert_to_fp16(fp32_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = common.THREADS
    sessions = {name: ort.InferenceSession(graph.SerializeToString(), sess_options=options,
                                           providers=["CPUExecutionProvider"])
                for name, graph in (("fp32", fp32), ("converter", converter), ("fp16-pass", passed))}

    tokenizer = Tokenizer.from_file(str(common.TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    words = " ".join(json.loads(line)["text"] for line in common.SCIFACT_FILE.open(encoding="utf-8")).split()
    rows = []
    for length in LENGTHS:
        pairs = long_pairs(tokenizer, length, words)
        scores = {}
        for name, session in sessions.items():
            out = []
            for ids in pairs:
                batch = np.array([ids], dtype=np.int64)
                out.append(float(np.ravel(session.run(None, {"input_ids": batch,
                                                             "attention_mask": np.ones_like(batch)})[0])[0]))
            scores[name] = np.array(out)
        row = {"tokens": length, "pairs": len(pairs),
               "fp32_range": float(np.ptp(scores["fp32"])),
               **{f"max_abs_delta_{name}": float(np.abs(scores[name] - scores["fp32"]).max())
                  for name in ("converter", "fp16-pass")}}
        rows.append(row)
        common.say(f"{length} tokens: converter {row['max_abs_delta_converter']:.4f}, "
                   f"fp16 pass {row['max_abs_delta_fp16-pass']:.4f}")
    body = ["fp16 against fp32 on the same pairs, onnxruntime CPU EP, distilled 17m, one pair per call.", "",
            f"fp16 pass report: {report}", "",
            "| tokens | pairs | fp32 score range | max \\|Δ\\| converter alone | max \\|Δ\\| fp16 pass | ratio |",
            "|---:|---:|---:|---:|---:|---:|"]
    body += [f"| {r['tokens']:,} | {r['pairs']} | {r['fp32_range']:.2f} | {r['max_abs_delta_converter']:.4f} | "
             f"{r['max_abs_delta_fp16-pass']:.4f} | "
             f"{r['max_abs_delta_converter'] / max(r['max_abs_delta_fp16-pass'], 1e-9):.0f}× |" for r in rows]
    common.write_report(args.out, "fp16-long", "fp16 at long inputs: positions kept fp32",
                        "python benchmarks/bench_fp16_long.py --out benchmarks/results",
                        common.run_environment(("onnx",)), rows, body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
