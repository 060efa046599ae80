"""Measured ``auto``: time the artifact's faithful configurations on this machine once, keep the fastest.

Why: the fixed rule (``selection.py``) was right on the CPU it was measured on and wrong on
another: on an AVX2-only Zen 3 it picked OpenVINO int8, 0.68× the fastest faithful choice there
(onnxruntime int8). Which configuration wins depends on the CPU's int8 and bf16 arithmetic, the
core count, the library versions and the model's size, so on the first ``auto`` load of an
artifact on a machine every candidate is timed on a short built-in workload of several lengths,
and the decision is cached under a key of all of those. Later loads read it (one small JSON
file). The rule stays the fallback: tuning disabled (``tune=False``, ``RERANKRT_TUNE=0``), a
cache directory that cannot be written (so the measurement would be repeated on every start), or
nothing measurable.

Candidates: every precision whose parity gate passed (int8, bf16, fp32; fp16 is for GPUs) on every
installed backend that runs it, and for int8 on OpenVINO both f32 and (on BF16 CPUs, where the gate
passed it) bf16 between the int8 matmuls. An int8 that fails the load-time int8 check on this CPU
class is not a candidate. The token budget is not tuned (the CPU default, 2,048 tokens, is kept).

Where: in a child process (``python -m rerankrt.engine.tuning``) when a load triggers it, so the loading
process keeps none of the candidates' threads or memory (``_measure_in_child``); ``rerankrt tune`` measures
in its own process.

Timing: when all candidates fit in memory at once they are timed interleaved (round robin, a
warm-up round first, then the median of the timed rounds), so a noisy neighbour slows them all
alike; otherwise one after another. A candidate whose best pass is over :data:`RACE_MARGIN` × the
fastest candidate's best pass so far is not timed again (racing: it cannot win, and slow candidates'
passes are the longest); a narrower request whose allowed rows were all raced out times them again.
A time budget (``RERANKRT_TUNE_SECONDS``, default 30 s) stops the tuning: the rule's choice is always
timed first, so it is at worst what the rule gives.
Bigger models time fewer of the pairs (``sized_workload``: ≤ 50 GFLOP per pass, at least 4 pairs), so
the cost grows slower than the model: seconds for the 17m on 2 cores; for the 400m and 1b one pass
takes seconds and the budget ends the tuning early (``rerankrt tune`` with a larger
``RERANKRT_TUNE_SECONDS`` measures every candidate).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .artifact import Artifact
from .builtin_pairs import builtin_pairs
from .cache import cache_root
from .hardware import CpuInfo, cpu_info

log = logging.getLogger("rerankrt")

TUNE_VERSION = 1  # bump when candidates, workload or timing change: cached decisions are then redone
TUNE_QUERIES = 4
TUNE_DOC_SENTENCES = (1, 2, 4, 6, 9, 14, 20)  # ~30 to ~430 tokens: past the 128-token window, several batches
TIMED_ROUNDS = 3  # after one warm-up round
# A candidate whose best timed pass is this much slower than the fastest candidate's best pass is not timed
# again: it cannot be the choice, and slow candidates' passes are the longest (the OpenVINO ones were a third
# of the tuning time on an emulated AVX2-only CPU). The margin is above the noise of one pass: on a shared
# 2-core cloud machine a pass runs in a fast or a ~1.2-1.3x slower mode (bench_cpu_peers' interleaved runs),
# so a candidate dropped on one slow-mode pass is still slower than the leader.
RACE_MARGIN = 1.4
DEFAULT_BUDGET_S = 30.0
CPU_TUNED_PRECISIONS = ("int8", "bf16", "fp32")
PASS_FLOPS = 50e9  # the 17m's whole workload (~40 GFLOP); bigger models time fewer pairs (sized_workload)
MIN_PAIRS = 4
BUDGET_SPENT = "time budget spent"  # a row skipped for time, measured when a narrower request needs it
LOCK_GRACE_S = 60.0  # a process waiting for another's measurement gives up after its budget plus this
CHILD_START_S = 120.0  # a measuring child's own start (imports, loading the first candidate) beyond its budget
# Candidates are loaded side by side (and timed interleaved) when their graphs take at most this
# share of the memory available.
INTERLEAVE_MEMORY_SHARE = 0.25


@dataclass(frozen=True)
class Config:
    """One way to run the artifact on this machine."""

    precision: str
    backend: str
    inference_precision: str | None = None  # OpenVINO int8: "f32" or "bf16" between the int8 matmuls

    @property
    def label(self) -> str:
        between = f" ({self.inference_precision} between)" if self.inference_precision else ""
        return f"{self.precision} on {self.backend}{between}"


@dataclass
class Decision:
    """The measured table and the configuration chosen from it, as cached."""

    config: Config
    table: list[dict] = field(default_factory=list)  # one row per candidate: config, pairs_per_s or why not
    seconds: float = 0.0
    cached: bool = False
    key: str = ""

    def describe(self) -> str:
        how = "cached" if self.cached else f"tuned in {self.seconds:.1f} s"
        best = next((r for r in self.table if r.get("config") == asdict(self.config)), {})
        rate = f", {best['pairs_per_s']:.1f} pairs/s" if best.get("pairs_per_s") else ""
        return f"auto measured on this machine ({how}): {self.config.label}{rate}"


def enabled(requested: bool | None = None) -> bool:
    """``tune`` as passed, else ``RERANKRT_TUNE`` (``0``/``false``/``no``/``off`` disable), else on."""
    if requested is not None:
        return requested
    return os.environ.get("RERANKRT_TUNE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    return cache_root() / "tuning"


def budget_seconds() -> float:
    try:
        return float(os.environ.get("RERANKRT_TUNE_SECONDS", DEFAULT_BUDGET_S))
    except ValueError:
        return DEFAULT_BUDGET_S


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("rerankrt", "onnxruntime", "openvino"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def signature(artifact: Artifact, threads: int | None, cpu: CpuInfo | None = None,
              load: dict | None = None) -> dict:
    """What a decision depends on: another CPU, core count, thread setting, library, graph or load option
    that changes speed (``load``: the token budget, whether int8 is re-checked) is another key."""
    cpu = cpu or cpu_info()
    graphs = {p: g.get("sha256") or g.get("file") for p, g in artifact.manifest.get("graphs", {}).items()}
    graphs.update({f"{p} {form}": f.get("sha256") or f.get("file")  # the forms a backend loads instead
                   for p, g in artifact.manifest.get("graphs", {}).items() for form, f in g.get("forms", {}).items()})
    return {"tune_version": TUNE_VERSION, "cpu_model": cpu.model, "cpu_flags": sorted(cpu.flags),
            "logical_cores": cpu.logical_cores, "threads": threads, "versions": _versions(), "graphs": graphs,
            "load": dict(sorted((load or {}).items()))}


def key_of(signature_: dict) -> str:
    return hashlib.sha256(json.dumps(signature_, sort_keys=True).encode()).hexdigest()[:32]


def read_cached(key: str, directory: Path | None = None) -> Decision | None:
    """The cached decision under ``key``; ``None`` when absent, unreadable or malformed (it is then redone)."""
    path = (directory or cache_dir()) / f"{key}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        decision = Decision(Config(**data["decision"]), list(data["table"]), float(data.get("seconds", 0.0)),
                            cached=True, key=key)
        for row in decision.table:  # every row must name a configuration; a rate, when present, is a number
            Config(**row["config"])
            float(row.get("pairs_per_s", 0.0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return decision


def write_cached(decision: Decision, signature_: dict, directory: Path | None = None) -> bool:
    """Write atomically (a temporary file renamed over the entry): concurrent tuners each leave a whole
    file, the last one wins. ``False`` when the directory cannot be written."""
    directory = directory or cache_dir()
    path = directory / f"{decision.key}.json"
    payload = {"decision": asdict(decision.config), "table": decision.table, "seconds": round(decision.seconds, 3),
               "signature": signature_, "tuned": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = directory / f".{decision.key}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        os.replace(tmp, path)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False


def writable(directory: Path | None = None) -> bool:
    """Whether decisions can be cached: without it, tuning would cost its time on every start."""
    directory = directory or cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".probe.{os.getpid()}.{time.monotonic_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def candidates(artifact: Artifact, precision: str = "auto", backend: str = "auto", cpu: CpuInfo | None = None,
               is_installed: Callable[[str], bool] | None = None, exclude: Sequence[str] = ()) -> list[Config]:
    """Every faithful configuration ``auto`` may choose, the rule's own choice first."""
    from .selection import (
        CPU_BACKENDS,
        OPENVINO_INT8_BF16,
        choose_backend,
        choose_inference_precision,
        choose_precision,
        gate_passed,
        installed,
    )

    cpu = cpu or cpu_info()
    is_installed = is_installed or installed
    precisions = [p for p in CPU_TUNED_PRECISIONS
                  if p in artifact.precisions and p not in exclude and gate_passed(artifact, p)
                  and precision in ("auto", p)
                  and (p != "bf16" or cpu.has_bf16)]  # bf16 refuses to load without AVX512_BF16/AMX
    found: list[Config] = []
    for p in precisions:
        for b in CPU_BACKENDS.get(p, ()):
            if backend not in ("auto", b) or not is_installed(b):
                continue
            if p == "int8" and b == "openvino":
                report = artifact.manifest.get("parity", {}).get("results", {}).get("int8", {})
                bf16_gated = report.get("by_backend", {}).get(OPENVINO_INT8_BF16, {}).get("passed") is True
                found.append(Config(p, b, "f32"))
                if cpu.has_bf16 and bf16_gated:
                    found.append(Config(p, b, "bf16"))
            else:
                found.append(Config(p, b))
    try:
        rule_precision = choose_precision(artifact, precision, "cpu", cpu, is_installed, tuple(exclude))
        rule_backend = choose_backend(rule_precision, backend, "cpu", is_installed, cpu)
        rule = Config(rule_precision, rule_backend,
                      choose_inference_precision(artifact, rule_precision, rule_backend, cpu))
        if rule in found:
            found.remove(rule)
            found.insert(0, rule)
    except Exception:  # noqa: BLE001 - no rule choice among them: the order stays as listed
        pass
    return found


def workload() -> list[tuple[str, str]]:
    """The built-in pairs timed: 4 queries × 7 documents of 1 … 20 sentences (seeded: the same every time)."""
    return builtin_pairs(seed=3, doc_sentences=TUNE_DOC_SENTENCES, n_queries=TUNE_QUERIES)


def flops_per_token(artifact: Artifact) -> float:
    """2 × the weights a token passes through in the encoder (attention 4·H², GeGLU 3·H·I per layer)."""
    arch = artifact.manifest.get("architecture", {})
    hidden, layers = int(arch.get("hidden_size", 0)), int(arch.get("num_hidden_layers", 0))
    inter = int(arch.get("intermediate_size", 4 * hidden))
    return 2.0 * layers * (4 * hidden * hidden + 3 * hidden * inter)


def sized_workload(ids: list[list[int]], artifact: Artifact) -> list[list[int]]:
    """As many of the workload's pairs (in their mixed-length order) as fit :data:`PASS_FLOPS` per pass.

    The 17m's whole workload (~5,000 tokens) is ~40 GFLOP; the 1b would need 240× that, minutes per
    pass on 2 cores, so bigger models time fewer pairs (at least :data:`MIN_PAIRS`).
    """
    per_token = flops_per_token(artifact)
    if per_token <= 0:
        return ids
    kept: list[list[int]] = []
    flops = 0.0
    for row in ids:
        flops += per_token * len(row)
        if flops > PASS_FLOPS and len(kept) >= MIN_PAIRS:
            break
        kept.append(row)
    return kept


def measure(configs: Sequence[Config], build: Callable[[Config], Callable[[], object]], pairs_per_pass: int,
            budget_s: float, interleave: bool, progress: Callable[[str], None] | None = None) -> list[dict]:
    """One row per config: ``pairs_per_s`` (median of the timed rounds) or ``skipped`` saying why.

    ``build(config)`` loads the configuration and returns a function that scores the workload once
    (raising when the configuration cannot run here, e.g. an int8 check that fails).
    """
    started = time.perf_counter()
    rows: list[dict] = [{"config": asdict(c), "label": c.label} for c in configs]
    runners: dict[int, Callable[[], object]] = {}
    times: dict[int, list[float]] = {i: [] for i in range(len(configs))}

    def over_budget() -> bool:
        return time.perf_counter() - started > budget_s

    def load(i: int) -> bool:
        if over_budget() and i > 0:
            rows[i]["skipped"] = BUDGET_SPENT
            return False
        loaded_at = time.perf_counter()
        try:
            runners[i] = build(configs[i])
            runners[i]()  # warm-up: first-call allocations and compilation are not throughput
        except Exception as exc:  # noqa: BLE001 - a configuration that cannot run here is not a candidate
            rows[i]["skipped"] = f"{type(exc).__name__}: {exc}"[:300]
            runners.pop(i, None)
            return False
        rows[i]["load_and_warmup_s"] = round(time.perf_counter() - loaded_at, 3)
        return True

    def raced_out(i: int) -> bool:
        """True (and said in the row) when ``i``'s best pass is :data:`RACE_MARGIN` × behind the leader's."""
        leader = min((min(t) for t in times.values() if t), default=None)
        if not times[i] or leader is None or min(times[i]) <= RACE_MARGIN * leader:
            return False
        rows[i]["raced_out"] = f"over {RACE_MARGIN}x the fastest candidate's pass time: not timed again"
        return True

    def timed(i: int) -> None:
        if i not in runners:
            return
        t0 = time.perf_counter()
        try:
            runners[i]()
        except Exception as exc:  # noqa: BLE001 - fails while timed: not a candidate either
            rows[i]["skipped"] = f"{type(exc).__name__}: {exc}"[:300]
            runners.pop(i)
            times[i].clear()
            return
        times[i].append(time.perf_counter() - t0)

    if interleave:
        live = [i for i in range(len(configs)) if load(i)]
        for _ in range(TIMED_ROUNDS):
            for i in live:
                if times[i] and ((over_budget() and i > 0) or "raced_out" in rows[i] or raced_out(i)):
                    continue
                timed(i)
    else:
        for i in range(len(configs)):
            if not load(i):
                continue
            for _ in range(TIMED_ROUNDS):
                if (times[i] and ((over_budget() and i > 0) or raced_out(i))) or i not in runners:
                    break
                timed(i)
            runners.pop(i, None)  # one candidate's weights in memory at a time
    for i, row in enumerate(rows):
        if times[i]:
            row["pairs_per_s"] = round(pairs_per_pass / statistics.median(times[i]), 3)
            row["passes"] = len(times[i])
        if progress is not None:
            progress(f"  {row['label']:<32} " + (f"{row['pairs_per_s']:8.1f} pairs/s" if "pairs_per_s" in row
                                                  else row.get("skipped", "not run")))
    return rows


def choose(table: list[dict], allowed: Sequence[Config] | None = None) -> Config | None:
    """The fastest measured row (among ``allowed``, when given)."""
    measured = [r for r in table if r.get("pairs_per_s")]
    if allowed is not None:
        wanted = [asdict(c) for c in allowed]
        measured = [r for r in measured if r["config"] in wanted]
    if not measured:
        return None
    return Config(**max(measured, key=lambda r: r["pairs_per_s"])["config"])


def decide(artifact: Artifact, build: Callable[[Config], Any], precision: str = "auto", backend: str = "auto",
           threads: int | None = None, force: bool = False, cpu: CpuInfo | None = None,
           progress: Callable[[str], None] | None = None, load: dict | None = None,
           child: dict | None = None) -> Decision | None:
    """The configuration to load for this request, from the cache or measured now; ``None``: use the rule.

    A full ``auto`` measures every candidate; a narrower request (``precision`` or ``backend`` given)
    reads the same table and measures only the candidates it allows that the table lacks, adding
    them to it. The fastest measured one it allows is chosen. ``build(config)`` returns what the
    scoring core runs: an object with ``backend`` and ``policy`` (``backends.Created``).
    """
    cpu = cpu or cpu_info()
    everything = candidates(artifact, cpu=cpu)
    allowed = candidates(artifact, precision, backend, cpu=cpu)  # the rule's choice for this request first
    if len(allowed) < 2:
        return None  # nothing to choose between: the rule (or the explicit request) decides
    sig = signature(artifact, threads, cpu, load)
    key = key_of(sig)
    if not force:
        cached = _usable(read_cached(key), allowed)
        if cached is not None:
            return cached
    if not writable():
        log.info("rerankrt: the tuning cache %s cannot be written; auto follows the rule", cache_dir())
        return None
    if child is not None:  # measured in a child process; this one only reads what it cached
        _measure_in_child(artifact, precision, backend, threads, load, child)
        measured = _usable(read_cached(key), allowed)
        if measured is not None:
            measured.cached = False  # measured for this load (in its child), not read from an earlier one
        return measured
    with _exclusive(key, wait_s=budget_seconds() + LOCK_GRACE_S) as locked:
        if not locked:
            log.warning("rerankrt: another process has been measuring %s for too long; auto follows the rule",
                        artifact.directory.name)
            return None
        previous = None if force else read_cached(key)
        if previous is not None:
            cached = _usable(previous, allowed)
            if cached is not None:  # measured by another process while this one waited
                return cached
        seen = ([row["config"] for row in previous.table
                 if row.get("skipped") != BUDGET_SPENT and "raced_out" not in row]
                if previous is not None else [])
        to_measure = everything if previous is None else [c for c in allowed if asdict(c) not in seen]
        if not to_measure:
            return None  # every allowed candidate was tried and none could run: the rule decides
        return _measure_and_cache(artifact, build, to_measure, allowed, sig, key, progress,
                                  previous.table if previous is not None else [], everything[0])


def _measure_in_child(artifact: Artifact, precision: str, backend: str, threads: int | None, load: dict | None,
                      builder: dict) -> None:
    """Run :func:`decide` in a fresh interpreter (``python -m rerankrt.engine.tuning``).

    Why: the candidates' sessions leave threads, arenas and heap behind even once released. Measured with
    ``benchmarks/bench_auto_start.py`` (Zen 4, distilled 17m): a process that had tuned in-process then
    scored 0.83× a process that loaded the same configuration directly (182.5 vs 220.4 pairs/s), and its
    peak RSS was 846 vs 240 MiB. A child keeps the serving process as if it had loaded the configuration
    by name. Its failure or timeout leaves the cache without an entry: the caller then follows the rule.
    """
    import subprocess
    import sys

    request = {"artifact": str(artifact.directory), "precision": precision, "backend": backend, "threads": threads,
               "load": load or {}, "builder": builder}
    try:
        subprocess.run([sys.executable, "-m", "rerankrt.engine.tuning", json.dumps(request)], check=True,
                       timeout=budget_seconds() + LOCK_GRACE_S + CHILD_START_S, stdout=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("rerankrt: measuring auto in a child process failed (%s); auto follows the rule", exc)


def _child_main(argv: list[str]) -> int:
    """The child of :func:`_measure_in_child`: measure in-process and cache the decision."""
    from .artifact import load_artifact
    from .backends import ConfigBuilder

    request = json.loads(argv[0])
    artifact = load_artifact(request["artifact"])
    builder = ConfigBuilder(artifact, threads=request["threads"], **request["builder"])
    decide(artifact, builder.checked, request["precision"], request["backend"], request["threads"],
           load=request["load"])
    return 0


def _usable(cached: Decision | None, allowed: list[Config]) -> Decision | None:
    """``cached`` with its choice among ``allowed``, or ``None`` when it measured none of them — or timed
    each of several only once, raced out behind a configuration this request excludes (one pass each is
    too noisy to choose between them: they are timed again)."""
    if cached is None:
        return None
    wanted = [asdict(c) for c in allowed]
    rows = [r for r in cached.table if r.get("pairs_per_s") and r["config"] in wanted]
    if len(rows) > 1 and all("raced_out" in r for r in rows):
        return None
    chosen = choose(cached.table, allowed)
    if chosen is None:
        return None
    cached.config = chosen
    return cached


@contextlib.contextmanager
def _exclusive(key: str, wait_s: float):
    """An advisory lock on the key's entry (POSIX ``flock``), waited for at most ``wait_s``; yields whether
    it is held. Where locking is impossible (no ``fcntl``, a lock file another user owns, NFS without
    locks) it yields True unlocked: two processes then both measure, and the last write wins."""
    try:
        import fcntl

        handle = open(cache_dir() / f".{key}.lock", "a")  # noqa: SIM115 - closed below
    except (ImportError, OSError):
        yield True
        return
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.05)
            except OSError:
                yield True
                return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def cached_decision(artifact: Artifact, threads: int | None = None, cpu: CpuInfo | None = None) -> Decision | None:
    """What a plain ``auto`` load would read from the cache (``rerankrt info``); measures nothing."""
    cpu = cpu or cpu_info()
    decision = read_cached(key_of(signature(artifact, threads, cpu)))
    if decision is not None:
        decision.config = choose(decision.table) or decision.config
    return decision


def _measure_and_cache(artifact: Artifact, build: Callable[[Config], Any], configs: list[Config],
                       allowed: list[Config], sig: dict, key: str, progress: Callable[[str], None] | None,
                       earlier_rows: list[dict], rule: Config) -> Decision:
    from .memory import available_bytes
    from .scoring import score_ids
    from .tokenize import PairTokenizer

    started = time.perf_counter()
    tokenizer = PairTokenizer.for_artifact(artifact, max_length=min(artifact.max_length, 512))
    ids = sized_workload(tokenizer.encode(workload()), artifact)
    available = available_bytes()
    interleave = available is not None and _load_bytes(artifact, configs) <= INTERLEAVE_MEMORY_SHARE * available

    def runner(config: Config) -> Callable[[], object]:
        created = build(config)
        return lambda: score_ids(created.backend, ids, created.policy, tokenizer.pad_id, artifact.num_labels)

    header = (f"rerankrt: measuring {len(configs)} configurations of {artifact.directory.name} on this machine "
              f"once ({len(ids)} built-in pairs, up to {budget_seconds():.0f} s; cached; RERANKRT_TUNE=0 skips it)")
    (progress or log.warning)(header)
    rows = measure(configs, runner, len(ids), budget_seconds(), interleave, progress or log.info)
    for row in rows:
        row["rule"] = row["config"] == asdict(rule)
    redone = [row["config"] for row in rows]
    table = [row for row in earlier_rows if row["config"] not in redone] + rows
    decision = Decision(choose(table, allowed) or allowed[0], table,
                        time.perf_counter() - started, key=key)
    write_cached(decision, sig)
    return decision


def _load_bytes(artifact: Artifact, configs: Sequence[Config]) -> int:
    """What loading every config side by side takes: one graph per config (backends do not share weights)."""
    from .memory import LOAD_BYTES_PER_GRAPH_BYTE, LOAD_OVERHEAD_BYTES, graph_bytes

    total = 0
    for config in configs:
        info = artifact.manifest["graphs"][config.precision]
        size = graph_bytes(artifact.directory / info["file"],
                           [artifact.directory / d["file"] for d in info.get("data_files", [])])
        total += int(LOAD_BYTES_PER_GRAPH_BYTE * size) + LOAD_OVERHEAD_BYTES
    return total


if __name__ == "__main__":
    import sys

    raise SystemExit(_child_main(sys.argv[1:]))
