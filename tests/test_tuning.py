"""Measured ``auto`` (``engine/tuning.py``): it picks what is faster here, caches it under the right key,
and survives concurrent, corrupt and read-only caches.

Speeds are controlled with a test backend that takes a set time per token (a real backend the
scoring core runs, not a mock of the decision); the end-to-end test loads a real artifact.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest

from rerankrt.engine import Reranker, tuning
from rerankrt.engine.artifact import Artifact, load_artifact
from rerankrt.engine.backends import BackendBase, Created
from rerankrt.engine.batching import BatchPolicy
from rerankrt.engine.hardware import CpuInfo

ZEN5 = CpuInfo("Zen 5", frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}), 2)
ZEN3 = CpuInfo("Zen 3", frozenset({"avx2", "fma"}), 2)


class PacedBackend(BackendBase):
    """Scores with a set cost per token (sleeping), so which configuration is faster is known."""

    def __init__(self, seconds_per_token: float, precision: str) -> None:
        self.seconds_per_token = seconds_per_token
        self.precision = precision
        self.calls = 0

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self.calls += 1
        time.sleep(self.seconds_per_token * int(attention_mask.sum()))
        return attention_mask.sum(axis=1, keepdims=True).astype(np.float32)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANKRT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RERANKRT_TUNE", "1")
    return tmp_path / "cache" / "tuning"


@pytest.fixture(scope="module")
def artifact(tiny_artifact):
    return load_artifact(tiny_artifact)


def rule_label(artifact) -> str:
    from rerankrt.engine.selection import choose_inference_precision

    return tuning.Config("int8", "openvino", choose_inference_precision(artifact, "int8", "openvino", cpu=ZEN5)).label


def paced_builder(speeds: dict[tuple[str, str], float], built: list | None = None):
    """``build(config)`` for ``tuning.decide``: each (precision, backend) at its set seconds per token."""

    def build(config: tuning.Config) -> Created:
        if built is not None:
            built.append(config)
        cost = speeds.get((config.precision, config.backend))
        if cost is None:
            raise RuntimeError(f"{config.label} cannot run here")
        return Created(PacedBackend(cost, config.precision), BatchPolicy(2048, 256))

    return build


def test_candidates_are_the_gated_configurations_with_the_rule_first(artifact):
    found = tuning.candidates(artifact, cpu=ZEN5, is_installed=lambda b: True)
    labels = [c.label for c in found]
    assert labels[0] == rule_label(artifact)  # the rule on a VNNI CPU: int8 on OpenVINO
    assert {"int8 on onnxruntime", "fp32 on onnxruntime", "fp32 on openvino"} <= set(labels)
    assert not any(c.precision == "fp16" for c in found)  # GPUs' precision, never faster on a CPU
    without_vnni = tuning.candidates(artifact, cpu=ZEN3, is_installed=lambda b: True)
    assert without_vnni[0].label == "int8 on onnxruntime"  # the corrected rule on AVX2-only CPUs
    # a CPU without BF16: neither bf16 graphs nor bf16 between OpenVINO's int8 matmuls (bf16 refuses to load there)
    assert set(without_vnni) == {c for c in found if "bf16" not in (c.precision, c.inference_precision)}
    ort_only = tuning.candidates(artifact, cpu=ZEN5, is_installed=lambda b: b == "onnxruntime")
    assert {c.backend for c in ort_only} == {"onnxruntime"}


def test_picks_the_faster_configuration_and_caches_it(artifact, cache):
    slow, fast = 20e-6, 4e-6
    speeds = {("int8", "openvino"): slow, ("int8", "onnxruntime"): slow, ("fp32", "onnxruntime"): fast,
              ("fp32", "openvino"): slow}
    built: list = []
    decision = tuning.decide(artifact, paced_builder(speeds, built), cpu=ZEN5)
    assert decision is not None and not decision.cached
    assert decision.config == tuning.Config("fp32", "onnxruntime")
    rates = {row["label"]: row["pairs_per_s"] for row in decision.table}
    assert rates["fp32 on onnxruntime"] > 3 * rates["int8 on openvino (f32 between)"]  # 5x faster by construction
    assert [r["rule"] for r in decision.table].index(True) == 0
    assert len(list(cache.glob("*.json"))) == 1

    # the next load reads it: nothing is built or timed
    built.clear()
    again = tuning.decide(artifact, paced_builder(speeds, built), cpu=ZEN5)
    assert again.cached and again.config == decision.config and built == []
    # a request that rules the winner out gets the fastest of what it allows: the int8 rows were raced out
    # (timed once each, 5x behind), so it times them properly once, then reads the same table
    only_int8 = tuning.decide(artifact, paced_builder(speeds, built), precision="int8", cpu=ZEN5)
    assert only_int8.config.precision == "int8" and {c.precision for c in built} == {"int8"}
    built.clear()
    again_int8 = tuning.decide(artifact, paced_builder(speeds, built), precision="int8", cpu=ZEN5)
    assert again_int8.cached and again_int8.config == only_int8.config and built == []
    assert tuning.decide(artifact, paced_builder(speeds, built), cpu=ZEN5).config == decision.config and built == []


class FakeClock:
    """``time`` for tuning.measure: runners advance it by their set cost, so pass times are exact."""

    now = 0.0

    @classmethod
    def perf_counter(cls) -> float:
        return cls.now


@pytest.mark.parametrize("interleave", [True, False])
def test_a_candidate_far_behind_is_not_timed_again(interleave, monkeypatch):
    """Racing: a best pass over RACE_MARGIN x the leader's ends a candidate's timing (it cannot win), while
    candidates within the margin get every round; the choice is unchanged."""
    monkeypatch.setattr(tuning, "time", FakeClock)
    seconds = {"slow first": 5.0, "leader": 1.0, "close": 0.99 * tuning.RACE_MARGIN, "far": 3.0}
    configs = [tuning.Config(p, "onnxruntime", label_) for p, label_ in
               zip(("int8", "fp32", "bf16", "fp16"), seconds)]
    calls = {c.inference_precision: 0 for c in configs}

    def build(config: tuning.Config):
        def run() -> None:
            calls[config.inference_precision] += 1
            FakeClock.now += seconds[config.inference_precision]
        return run

    rows = {r["config"]["inference_precision"]: r for r in
            tuning.measure(configs, build, pairs_per_pass=10, budget_s=600.0, interleave=interleave)}
    assert rows["leader"]["passes"] == rows["close"]["passes"] == tuning.TIMED_ROUNDS
    assert "raced_out" not in rows["leader"] and "raced_out" not in rows["close"]
    assert rows["far"]["passes"] == 1 and "raced_out" in rows["far"]
    # timed sequentially, the first candidate has no leader to lose to yet: all its rounds
    assert rows["slow first"]["passes"] == (1 if interleave else tuning.TIMED_ROUNDS)
    assert calls["far"] == 2  # the warm-up and the one timed pass
    assert tuning.choose(list(rows.values())).inference_precision == "leader"


def test_a_configuration_that_cannot_run_is_skipped_not_chosen(artifact, cache):
    speeds = {("int8", "onnxruntime"): 1e-6, ("fp32", "onnxruntime"): 8e-6}  # OpenVINO "fails" to load
    decision = tuning.decide(artifact, paced_builder(speeds), cpu=ZEN5)
    assert decision.config == tuning.Config("int8", "onnxruntime")
    skipped = {r["label"]: r["skipped"] for r in decision.table if "skipped" in r}
    assert "cannot run here" in skipped[rule_label(artifact)]


def test_the_key_changes_with_the_cpu_the_threads_and_the_graphs(artifact, tmp_path, cache):
    base = tuning.signature(artifact, None, ZEN5)
    assert tuning.key_of(base) == tuning.key_of(tuning.signature(artifact, None, ZEN5))
    assert tuning.key_of(base) != tuning.key_of(tuning.signature(artifact, None, ZEN3))
    assert tuning.key_of(base) != tuning.key_of(tuning.signature(artifact, 1, ZEN5))
    manifest = json.loads(json.dumps(artifact.manifest))
    manifest["graphs"]["int8"]["sha256"] = "0" * 64  # another int8 graph
    other = Artifact(artifact.directory, manifest)
    assert tuning.key_of(base) != tuning.key_of(tuning.signature(other, None, ZEN5))

    speeds = {("int8", "onnxruntime"): 1e-6, ("fp32", "onnxruntime"): 8e-6}
    tuning.decide(artifact, paced_builder(speeds), cpu=ZEN5)
    built: list = []
    tuning.decide(artifact, paced_builder(speeds, built), cpu=ZEN3)  # another CPU: measured again
    assert built
    built.clear()
    tuning.decide(other, paced_builder(speeds, built), cpu=ZEN5)  # another graph: measured again
    assert built


def test_a_corrupt_entry_is_ignored_and_rewritten(artifact, cache):
    speeds = {("int8", "onnxruntime"): 1e-6, ("fp32", "onnxruntime"): 8e-6}
    first = tuning.decide(artifact, paced_builder(speeds), cpu=ZEN5)
    entry = cache / f"{first.key}.json"
    for garbage in (b"{not json", b"[]", b'{"decision": {"precision": 1}}', b"\xff\xfe"):
        entry.write_bytes(garbage)
        built: list = []
        redone = tuning.decide(artifact, paced_builder(speeds, built), cpu=ZEN5)
        assert built and not redone.cached and redone.config == first.config
        assert json.loads(entry.read_text())["decision"]["precision"] == "int8"


def test_concurrent_loads_measure_once_and_leave_a_whole_entry(artifact, cache):
    speeds = {("int8", "onnxruntime"): 1e-6, ("fp32", "onnxruntime"): 8e-6}
    built: list = []
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(tuning.decide(artifact, paced_builder(speeds, built),
                                                                            cpu=ZEN5)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len({r.config for r in results}) == 1
    assert sum(not r.cached for r in results) == 1  # one measured, three waited and read its entry
    assert len(built) == len(tuning.candidates(artifact, cpu=ZEN5))
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == [f"{results[0].key}.json"]

    # many writers at once: the entry is always one whole file
    decision = results[0]
    sig = tuning.signature(artifact, None, ZEN5)
    writers = [threading.Thread(target=tuning.write_cached, args=(decision, sig)) for _ in range(16)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    assert tuning.read_cached(decision.key).config == decision.config
    assert not [p for p in cache.iterdir() if p.suffix == ".tmp"]


def test_read_only_cache_falls_back_to_the_rule(artifact, tmp_path, monkeypatch):
    if os.geteuid() == 0:  # root writes anywhere: make the cache path unusable instead (a file, not a directory)
        blocker = tmp_path / "cache"
        blocker.write_text("")
        monkeypatch.setenv("RERANKRT_CACHE", str(blocker))
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        monkeypatch.setenv("RERANKRT_CACHE", str(ro))
    built: list = []
    assert tuning.decide(artifact, paced_builder({("int8", "onnxruntime"): 1e-6}, built), cpu=ZEN5) is None
    assert built == []  # nothing measured that could not be kept


def test_disabled_means_the_rule(monkeypatch):
    monkeypatch.setenv("RERANKRT_TUNE", "0")
    assert not tuning.enabled()
    assert tuning.enabled(True)
    monkeypatch.setenv("RERANKRT_TUNE", "1")
    assert tuning.enabled() and not tuning.enabled(False)


def test_the_time_budget_keeps_the_rule_choice_measured(artifact, cache, monkeypatch):
    monkeypatch.setattr(tuning, "budget_seconds", lambda: 0.0)
    speeds = {("int8", "openvino"): 2e-6, ("int8", "onnxruntime"): 1e-6, ("fp32", "onnxruntime"): 1e-6,
              ("fp32", "openvino"): 1e-6}
    decision = tuning.decide(artifact, paced_builder(speeds), cpu=ZEN5)
    measured = [r for r in decision.table if "pairs_per_s" in r]
    assert [r["label"] for r in measured] == [rule_label(artifact)]  # the rule's, always
    assert all(r["skipped"] == "time budget spent" for r in decision.table if "pairs_per_s" not in r)


def test_auto_load_measures_once_then_reads_the_cache(tiny_artifact, cache, capsys):
    from rerankrt.engine.cli import main

    started = time.perf_counter()
    first = Reranker.from_pretrained(tiny_artifact)
    took = time.perf_counter() - started
    assert first.tuning is not None and not first.tuning.cached
    measured = [r for r in first.tuning.table if "pairs_per_s" in r]
    assert len(measured) >= 3
    best = max(measured, key=lambda r: r["pairs_per_s"])
    assert (first.precision, first.backend.name) == (best["config"]["precision"], best["config"]["backend"])
    started = time.perf_counter()
    second = Reranker.from_pretrained(tiny_artifact)
    assert second.tuning.cached and second.tuning.config == first.tuning.config
    assert time.perf_counter() - started < took
    pairs = [("q", "a short document"), ("another query", "a longer document " * 20)]
    np.testing.assert_allclose(second.predict(pairs), first.predict(pairs), rtol=0, atol=1e-6)

    assert main(["info", str(tiny_artifact)]) == 0
    out = capsys.readouterr().out
    assert "measured here" in out and best["label"] in out


def test_bigger_models_time_fewer_pairs():
    from pathlib import Path

    def shaped(hidden, layers, inter):
        return Artifact(Path("/nonexistent"), {"architecture": {"hidden_size": hidden, "num_hidden_layers": layers,
                                                                 "intermediate_size": inter}, "graphs": {}})

    small, large = shaped(256, 7, 384), shaped(1792, 28, 3840)  # the 17m's and the 1b's encoder shapes
    # 2 x (4 H^2 + 3 H I) x layers, counted by hand: 17m 7.8 MFLOP/token, 1b 1.87 GFLOP/token
    assert tuning.flops_per_token(small) == 2 * 7 * (4 * 256 ** 2 + 3 * 256 * 384)
    assert 1.8e9 < tuning.flops_per_token(large) < 1.9e9
    ids = [[0] * n for n in (40, 80, 120, 200, 300, 430) * 4]  # 4,680 tokens
    assert tuning.sized_workload(ids, small) == ids  # the 17m times everything (~37 GFLOP)
    few = tuning.sized_workload(ids, large)
    assert len(few) == tuning.MIN_PAIRS and few == ids[:tuning.MIN_PAIRS]


def test_a_narrower_request_measures_only_what_the_table_lacks(artifact, cache, monkeypatch):
    speeds = {("int8", "openvino"): 2e-6, ("int8", "onnxruntime"): 1e-6, ("fp32", "onnxruntime"): 3e-6,
              ("fp32", "openvino"): 1e-6}
    monkeypatch.setattr(tuning, "budget_seconds", lambda: 0.0)
    tuning.decide(artifact, paced_builder(speeds), cpu=ZEN5)  # only the rule's choice fits the budget
    monkeypatch.setattr(tuning, "budget_seconds", lambda: 60.0)
    built: list = []
    fp32 = tuning.decide(artifact, paced_builder(speeds, built), precision="fp32", cpu=ZEN5)
    assert {c.precision for c in built} == {"fp32"}  # the int8 rows were not measured again
    assert fp32.config == tuning.Config("fp32", "openvino")
    table = tuning.read_cached(fp32.key).table
    assert len(table) == len(tuning.candidates(artifact, cpu=ZEN5))  # merged, one row per configuration
    built.clear()
    assert tuning.decide(artifact, paced_builder(speeds, built), precision="fp32", cpu=ZEN5).cached
    assert built == []  # and not again on the next load


def test_a_narrower_request_times_again_what_was_raced_out(artifact, cache):
    """Rows raced out behind a configuration the request excludes were timed once each: too noisy to choose
    between, so the narrower request times them properly (and the table keeps the result)."""
    speeds = {("int8", "openvino"): 1e-5, ("int8", "onnxruntime"): 1e-5, ("fp32", "onnxruntime"): 3e-5,
              ("fp32", "openvino"): 3.3e-5}
    full = tuning.decide(artifact, paced_builder(speeds), cpu=ZEN5)
    assert {r["label"] for r in full.table if "raced_out" in r} == {"fp32 on onnxruntime", "fp32 on openvino"}
    built: list = []
    fp32 = tuning.decide(artifact, paced_builder(speeds, built), precision="fp32", cpu=ZEN5)
    assert sorted(c.backend for c in built) == ["onnxruntime", "openvino"] and not fp32.cached
    assert fp32.config == tuning.Config("fp32", "onnxruntime")
    rows = {r["label"]: r for r in tuning.read_cached(fp32.key).table}
    assert rows["fp32 on onnxruntime"]["passes"] == tuning.TIMED_ROUNDS and "raced_out" not in rows[
        "fp32 on onnxruntime"]
    assert "raced_out" in rows["int8 on onnxruntime"] or rows["int8 on onnxruntime"]["passes"] >= 1  # kept
    built.clear()
    assert tuning.decide(artifact, paced_builder(speeds, built), precision="fp32", cpu=ZEN5).cached and built == []


def test_measuring_never_stops_a_load(tiny_artifact, cache, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise PermissionError("lock file owned by another user")

    monkeypatch.setattr(tuning, "decide", broken)
    loaded = Reranker.from_pretrained(tiny_artifact)
    assert loaded.tuning is None and loaded.precision in ("int8", "fp32")
    assert "auto follows the rule" in caplog.text


def test_backend_options_mean_the_rule(tiny_artifact, cache, monkeypatch):
    """Options are for one backend (another would refuse them): such a load is not measured."""
    monkeypatch.setattr(tuning, "decide", lambda *a, **k: pytest.fail("measured a load with backend options"))
    loaded = Reranker.from_pretrained(tiny_artifact, precision="int8", backend="auto",
                                      backend_options={"inference_precision": "f32"})
    assert loaded.tuning is None
