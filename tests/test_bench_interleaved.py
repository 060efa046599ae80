"""The benchmarks' interleaved workers (benchmarks/common.py: ScorerSession, serve_interleaved, InterleavedWorker).

Why: issue 16's targets are judged from ``bench_cpu_peers.py --interleaved``, whose ratios are only
sound if the driver really times one system at a time, in turn, and reads every worker's replies
intact even when a library prints to stdout. The workers here are tiny scripts with a known speed
(a sleep per pair), not rerankrt: what is checked is the harness, against the speeds it was given.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

WORKER = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, {benchmarks!r})
import common

channel = common.reply_channel()
print("a library printing to stdout")  # after reply_channel(): must land on stderr, not among the replies
argv = [a for a in sys.argv[2:] if a != "--interleaved"]  # after "worker"
opts = dict(zip(argv[::2], argv[1::2]))
per_pair_s, fail_after = float(opts["--per-pair-s"]), int(opts["--fail-after"])
intervals = []

def predict(pairs, batch_size):
    started = time.time()
    if len(intervals) >= fail_after:
        common.write_worker_output(Path(opts["--out-prefix"]), {{"error": "RuntimeError: broke on purpose"}}, None)
        raise RuntimeError("worker broke on purpose")
    print("noise while scoring")
    time.sleep(per_pair_s * len(pairs))
    intervals.append((started, time.time()))
    return [float(len(q) + len(d)) for q, d in pairs]

def rank(query, docs, batch_size):
    return predict([(query, d) for d in docs], batch_size)

pairs = [("q%d" % g, "d" * (i + 1)) for g in range(2) for i in range(5)]
groups = [g for g in range(2) for _ in range(5)]
session = common.ScorerSession(predict, rank, pairs, groups, float(opts["--spawn-time"]))
try:
    common.serve_interleaved(session, channel, {{"cold_start_s": session.first_score - float(opts["--spawn-time"])}})
except RuntimeError:
    sys.exit(1)
result = {{**session.result(), "intervals": intervals, "scores": session.scores.tolist()}}
common.write_worker_output(Path(opts["--out-prefix"]), result, None)
"""


@pytest.fixture()
def worker_script(tmp_path: Path) -> Path:
    script = tmp_path / "fake_worker.py"
    script.write_text(WORKER.format(benchmarks=str(BENCHMARKS)), encoding="utf-8")
    return script


@pytest.fixture()
def common_module():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import common

        yield common
    finally:
        sys.path.remove(str(BENCHMARKS))


def _start(common_module, script: Path, tmp_path: Path, name: str, per_pair_s: float, fail_after: int = 10**6):
    return common_module.InterleavedWorker(script, ["--per-pair-s", str(per_pair_s), "--fail-after", str(fail_after)],
                                           tmp_path / name)


def test_workers_take_turns_and_report_their_own_speed(common_module, worker_script: Path, tmp_path: Path) -> None:
    fast = _start(common_module, worker_script, tmp_path, "fast", 0.002)
    slow = _start(common_module, worker_script, tmp_path, "slow", 0.015)
    try:
        assert fast.ready["ready"] and fast.ready["cold_start_s"] > 0
        seconds: dict[str, list[float]] = {"fast": [], "slow": []}
        for _ in range(3):
            for name, worker in (("fast", fast), ("slow", slow)):
                seconds[name].append(worker.ask("pass")["seconds"])
        latencies = fast.ask("latency 4")["latencies_ms"]
        assert len(slow.ask("latency 1")["latencies_ms"]) == 1
        results = {"fast": fast.finish(), "slow": slow.finish()}
    finally:
        fast.kill()
        slow.kill()

    # each pass scores the 10 pairs: the sleep alone is 20 ms / 150 ms
    assert all(0.02 <= s < 0.13 for s in seconds["fast"]) and all(0.15 <= s < 1.0 for s in seconds["slow"])
    assert min(seconds["slow"]) > max(seconds["fast"])
    assert len(latencies) == 4 and all(lat >= 10 for lat in latencies)  # 5 docs × 2 ms each
    for name in ("fast", "slow"):
        result = results[name]
        assert result["pass_times_s"] == pytest.approx(seconds[name], abs=1e-4)
        assert result["pairs_per_s"] == pytest.approx(10 / sorted(seconds[name])[1], rel=1e-3)
        assert result["scores"] == [float(2 + i + 1) for _ in range(2) for i in range(5)]
    assert results["fast"]["rank_latency_ms"]["calls"] == 4

    # never two workers scoring at once (ask() waits for the reply, which comes after the pass): the timed
    # passes (after 2 start-up calls, before the rank calls) alternate
    timed = sorted([(start, end, name) for name in ("fast", "slow")
                    for start, end in results[name]["intervals"][2:5]])
    assert [name for _, _, name in timed] == ["fast", "slow"] * 3
    assert all(earlier[1] <= later[0] for earlier, later in zip(timed, timed[1:]))


def test_a_worker_that_dies_raises_instead_of_hanging(common_module, worker_script: Path, tmp_path: Path) -> None:
    # start-up makes 2 predict calls (one pair, the warm-up pass); the first timed pass fails
    worker = _start(common_module, worker_script, tmp_path, "broken", 0.001, fail_after=2)
    try:
        started = time.monotonic()
        with pytest.raises(subprocess.CalledProcessError):
            worker.ask("pass")
        assert time.monotonic() - started < 30
    finally:
        worker.kill()
    # what the driver reports for the row (bench_cpu_peers._worker_error reads it)
    assert json.loads((tmp_path / "broken.json").read_text())["error"] == "RuntimeError: broke on purpose"
