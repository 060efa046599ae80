"""The load-time int8 check: is this artifact's int8 graph faithful on *this* CPU?

Why: int8 results depend on the CPU's int8 arithmetic (``hardware.CpuInfo.int8_class``): x86
CPUs without VNNI add u8×s8 pairs in saturating 16-bit lanes, VNNI/AMX/ARM dot products do not.
The export's parity gate ran on one class and the manifest says which
(``parity.cpu_class``); an artifact gated on a VNNI build machine may be served on AVX2-only
CPUs. When the classes differ (or an older manifest does not say), the runtime scores a small
built-in set with the int8 graph on the chosen backend and with the fp32 graph on onnxruntime
(fp32 matches PyTorch within 1e-4, the fp32 gate), and holds the result to the tolerance the
int8 gate used. The verdict is cached per machine (int8 graph sha256, backend, inference
precision, CPU class), so it costs its time once: well under a second on the 17m, the fp32
graph's time on 32 short pairs in general.

What it must not do: import the export package or torch, or run when the gate's class is this
machine's (the gate already answered for it).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import agreement
from .artifact import Artifact
from .batching import BatchPolicy
from .builtin_pairs import builtin_pairs, group_ids
from .cache import cache_root
from .hardware import cpu_info
from .scoring import score_ids
from .tokenize import PairTokenizer

log = logging.getLogger("rerankrt")

# 4 queries × 8 documents of 0 … 16 sentences (up to ~350 tokens: past the 128-token window, in
# bounded time), drawn with another seed than the gate's pairs
CHECK_QUERIES = 4
CHECK_DOC_SENTENCES = (0, 1, 2, 3, 5, 8, 12, 16)
CHECK_VERSION = 1  # bump when the check's pairs or metrics change: cached verdicts are then redone
# What the gate used before manifests recorded tolerances (export/parity.py's int8 default).
FALLBACK_TOLERANCE = agreement.Tolerance(max_rel_delta=5e-2, min_spearman=0.995, min_top10=0.95)


@dataclass(frozen=True)
class Int8Check:
    """What ``rerankrt info`` and the load log say about int8 on this machine."""

    status: str  # "gated here" | "passed" | "failed" | "skipped"
    gate_class: str | None  # the CPU class the export's gate ran on (None: not recorded)
    cpu_class: str  # this machine's
    cached: bool = False
    seconds: float = 0.0
    report: dict | None = None

    @property
    def usable(self) -> bool:
        return self.status != "failed"

    def describe(self) -> str:
        gate = self.gate_class or "an unrecorded CPU class"
        if self.status == "gated here":
            return f"int8 parity gated on this CPU class ({self.cpu_class})"
        if self.status == "skipped":
            return f"int8 gated on {gate}, this CPU is {self.cpu_class}: not re-checked (int8_check=False)"
        r = self.report or {}
        numbers = (f"max |Δ|/range {r.get('max_rel_delta', float('nan')):.2e}, "
                   f"Spearman {r.get('spearman', float('nan')):.5f}, "
                   f"top-10 {r.get('top10_agreement', float('nan')):.2f}")
        how = "cached" if self.cached else f"{self.seconds:.1f} s"
        verdict = "passed" if self.status == "passed" else "FAILED (" + "; ".join(r.get("failures", [])) + ")"
        return f"int8 gated on {gate}, re-checked on this CPU ({self.cpu_class}, {how}): {verdict}; {numbers}"


def gate_class(artifact: Artifact) -> str | None:
    """The CPU class the artifact's parity gate ran on, if the manifest records it."""
    parity = artifact.manifest.get("parity", {})
    return parity.get("cpu_class") or artifact.manifest.get("export", {}).get("cpu", {}).get("int8_class")


def check_pairs() -> list[tuple[str, str]]:
    return builtin_pairs(seed=2, doc_sentences=CHECK_DOC_SENTENCES, n_queries=CHECK_QUERIES)


def _cache_file() -> Path:
    return cache_root() / "int8-checks.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # absent, unreadable or corrupted: the check is simply redone
        return {}


def _write_cache(path: Path, key: str, value: dict) -> None:
    """Merge one verdict in, atomically; a read-only home costs the check's time again, nothing else."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = value
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def _tolerance(artifact: Artifact) -> agreement.Tolerance:
    recorded = artifact.manifest.get("parity", {}).get("results", {}).get("int8", {}).get("tolerance")
    if isinstance(recorded, dict):
        try:
            return agreement.Tolerance(**recorded)
        except TypeError:
            pass
    return FALLBACK_TOLERANCE


def check_int8(artifact: Artifact, backend, policy: BatchPolicy, threads: int | None = None,
               enabled: bool = True) -> Int8Check:
    """Re-check ``backend`` (already built on the int8 graph) where the gate never ran on this CPU class.

    Both graphs are scored through the scoring core with ``policy`` (the int8 backend's own).
    """
    here = cpu_info().int8_class
    gated = gate_class(artifact)
    if gated == here:
        return Int8Check("gated here", gated, here)
    if not enabled:
        return Int8Check("skipped", gated, here)
    from .backends import backend_class, graph_form_for  # the reference runs on onnxruntime in strict fp32

    running = Path(getattr(backend, "model_path", "") or "").name  # the file the backend runs: main graph or a form
    forms = artifact.manifest["graphs"]["int8"].get("forms", {})
    graph = artifact.graph("int8", verify=False, form=next((f for f, e in forms.items() if e["file"] == running), None))
    key = "|".join([f"v{CHECK_VERSION}", graph.sha256 or str(graph.path), backend.name,
                    str(getattr(backend, "inference_precision", "") or ""), here])
    cache = _cache_file()
    cached = _read_cache(cache).get(key)
    if isinstance(cached, dict) and cached.get("status") in ("passed", "failed"):
        return Int8Check(cached["status"], gated, here, cached=True, report=cached.get("report"))

    started = time.perf_counter()
    tokenizer = PairTokenizer.for_artifact(artifact)
    pairs = check_pairs()
    ids = tokenizer.encode(pairs)
    reference_graph = artifact.graph("fp32", verify=False, form=graph_form_for("onnxruntime", "cpu"))
    reference_backend = backend_class("onnxruntime")(reference_graph.path, precision="fp32", threads=threads)
    reference = score_ids(reference_backend, ids, policy, tokenizer.pad_id, artifact.num_labels)[:, 0]
    candidate = score_ids(backend, ids, policy, tokenizer.pad_id, artifact.num_labels)[:, 0]
    del reference_backend
    report = agreement.compare(reference, candidate, group_ids(pairs), _tolerance(artifact))
    status = "passed" if report["passed"] else "failed"
    seconds = time.perf_counter() - started
    _write_cache(cache, key, {"status": status, "report": report, "seconds": round(seconds, 3),
                              "checked": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return Int8Check(status, gated, here, seconds=seconds, report=report)
