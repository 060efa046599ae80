"""The server's cross-request scheduler without HTTP: windows, ordering, cancellation, the bounded queue."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from rerankrt.engine.backends import BackendBase
from rerankrt.engine.batching import BatchPolicy
from rerankrt.engine.server.scheduler import BatchScheduler, QueueFullError, SchedulerStoppedError

PAD = 0


class RecordingBackend(BackendBase):
    """Logit = sum of a row's ids; records every row it runs; can be held at a gate."""

    name = "recording"

    def __init__(self) -> None:
        self.rows_seen: list[tuple[int, ...]] = []
        self.batches = 0
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def run(self, input_ids, attention_mask):
        self.gate.wait(5)
        with self.lock:
            self.batches += 1
            for ids, mask in zip(input_ids, attention_mask):
                self.rows_seen.append(tuple(int(i) for i in ids[mask == 1]))
        return (input_ids * attention_mask).sum(axis=1, keepdims=True).astype(np.float32)


def _scheduler(backend, **kw) -> BatchScheduler:
    return BatchScheduler(backend, 1, PAD, BatchPolicy(token_budget=64, max_batch_size=4), **kw)


def test_requests_share_windows_and_each_gets_its_own_order():
    backend = RecordingBackend()
    backend.gate.clear()  # hold the worker so that all requests queue up and share one window
    sched = _scheduler(backend, max_wait_s=0.05)
    try:
        rng = np.random.default_rng(0)
        requests = [[list(rng.integers(1, 50, size=int(rng.integers(1, 20)))) for _ in range(n)] for n in (3, 7, 1, 5)]
        jobs = [sched.submit(r) for r in requests]
        backend.gate.set()
        for job, rows in zip(jobs, requests):
            np.testing.assert_array_equal(job.future.result(5)[:, 0], [sum(r) for r in rows])
        # rows of different requests met in batches: fewer batches than requests' own batches would need
        assert backend.batches < sum(len(r) for r in requests)
    finally:
        sched.stop()


def test_a_cancelled_request_loses_its_rows_that_have_not_started():
    backend = RecordingBackend()
    backend.gate.clear()
    sched = _scheduler(backend, window_tokens=8)  # tiny windows: the second request waits in the queue
    try:
        first = sched.submit([[1] * 8])
        time.sleep(0.05)  # the worker has taken the first window and waits at the gate
        second = sched.submit([[7] * 3, [7] * 4])
        second.cancel()
        backend.gate.set()
        assert first.future.result(5)[0, 0] == 8
        time.sleep(0.1)
        assert all(7 not in row for row in backend.rows_seen)
        assert second.future.cancelled()
        assert sched.queued_rows == 0
    finally:
        sched.stop()


def test_a_full_queue_is_refused_at_submit_with_a_retry_hint():
    backend = RecordingBackend()
    backend.gate.clear()
    sched = _scheduler(backend, max_queued_rows=4, window_tokens=2)
    try:
        sched.submit([[1, 1]])
        time.sleep(0.05)  # taken into the (blocked) worker's window
        sched.submit([[2]] * 4)
        with pytest.raises(QueueFullError, match="full") as info:
            sched.submit([[3]])
        assert info.value.retry_after_s >= 1
    finally:
        backend.gate.set()
        sched.stop()


def test_stop_drains_what_is_queued_then_refuses_new_work():
    backend = RecordingBackend()
    sched = _scheduler(backend)
    jobs = [sched.submit([[i + 1] * 3]) for i in range(10)]
    sched.stop(drain=True, timeout=5)
    assert [float(j.future.result(0)[0, 0]) for j in jobs] == [3.0 * (i + 1) for i in range(10)]
    with pytest.raises(SchedulerStoppedError):
        sched.submit([[1]])


def test_a_failing_batch_fails_only_its_requests():
    class Flaky(RecordingBackend):
        def run(self, input_ids, attention_mask):
            if (input_ids == 13).any():
                raise RuntimeError("bad batch")
            return super().run(input_ids, attention_mask)

    sched = BatchScheduler(Flaky(), 1, PAD, BatchPolicy(token_budget=4, max_batch_size=1))
    try:
        bad, good = sched.submit([[13, 13]]), sched.submit([[2, 2]])
        with pytest.raises(RuntimeError, match="bad batch"):
            bad.future.result(5)
        assert good.future.result(5)[0, 0] == 4
    finally:
        sched.stop()


class TimedBackend(RecordingBackend):
    """Takes ``seconds_per_token`` × the batch's real tokens: a backend whose rate the scheduler can learn."""

    def __init__(self, seconds_per_token: float) -> None:
        super().__init__()
        self.seconds_per_token = seconds_per_token
        self.finished: list[int] = []  # first id of each row, in the order rows were computed

    def run(self, input_ids, attention_mask):
        time.sleep(float(attention_mask.sum()) * self.seconds_per_token)
        with self.lock:
            self.finished.extend(int(r[0]) for r in input_ids)
        return super().run(input_ids, attention_mask)


def test_admission_refuses_at_submit_what_cannot_finish_by_its_deadline():
    backend = TimedBackend(0.001)  # 1,000 tokens/s
    sched = _scheduler(backend, tokens_per_s=1000.0, window_tokens=64)
    try:
        # 1,000 tokens ≈ 1 s, due in 1.15 s: little slack, so it runs before anything with more slack
        first = sched.submit([[1] * 50] * 20, deadline=time.perf_counter() + 1.15)
        started = time.perf_counter()
        with pytest.raises(QueueFullError, match="overloaded") as info:
            sched.submit([[2] * 50] * 4, deadline=time.perf_counter() + 0.5)  # needs > 1 s, has 0.5 s
        assert time.perf_counter() - started < 0.05  # refused at once, not after waiting
        assert info.value.reason == "deadline" and 1 <= info.value.retry_after_s <= 2
        ok = sched.submit([[3] * 50] * 2, deadline=time.perf_counter() + 10)  # plenty of time: admitted
        first.future.exception(10)  # done, in time or dropped at its deadline: either way it is not this test's
        assert ok.future.result(10)[0, 0] == 150
        assert 2 not in backend.finished  # the refused request cost nothing
        # a small request is not refused for a big one that it would overtake (fairness-aware admission)
        big = sched.submit([[4] * 50] * 200, deadline=time.perf_counter() + 60)  # 10,000 tokens ≈ 10 s
        time.sleep(0.1)
        small = sched.submit([[5] * 50] * 2, deadline=time.perf_counter() + 1.0)
        assert small.future.result(5)[0, 0] == 250 and not big.future.done()
        big.cancel()
    finally:
        sched.stop()


def test_queued_work_past_its_deadline_is_dropped_before_it_runs():
    backend = TimedBackend(0.0)
    backend.gate.clear()
    sched = _scheduler(backend, window_tokens=8)
    try:
        blocker = sched.submit([[1] * 8])
        time.sleep(0.05)  # the worker holds the blocker's window at the gate
        late = sched.submit([[5] * 8] * 3, deadline=time.perf_counter() + 0.1)
        time.sleep(0.2)
        backend.gate.set()
        blocker.future.result(5)
        from rerankrt.engine.server.scheduler import DeadlineExceededError

        with pytest.raises(DeadlineExceededError):
            late.future.result(5)
        assert 5 not in backend.finished and sched.queued_rows == 0
    finally:
        sched.stop()


def test_a_small_request_overtakes_a_big_one_queued_before_it():
    backend = TimedBackend(0.0005)
    sched = _scheduler(backend, tokens_per_s=2000.0, window_tokens=64)
    try:
        big = sched.submit([[1] * 16] * 200)  # 3,200 tokens ≈ 1.6 s, 50 windows
        time.sleep(0.1)
        small_started = time.perf_counter()
        small = sched.submit([[2] * 16] * 2)
        small.future.result(5)
        small_latency = time.perf_counter() - small_started
        assert not big.future.done()  # FIFO would have made the small one wait for all of the big one
        assert small_latency < 0.3, small_latency
        big.future.result(10)
        np.testing.assert_array_equal(big.future.result(0)[:, 0], [16] * 200)
    finally:
        sched.stop()


def test_admission_keeps_admitted_requests_within_their_deadlines():
    from rerankrt.engine.server.scheduler import TooMuchWorkError

    backend = TimedBackend(0.001)  # 1,000 tokens/s
    sched = _scheduler(backend, tokens_per_s=1000.0, window_tokens=64)
    try:
        now = time.perf_counter()
        admitted = sched.submit([[1] * 50] * 80, deadline=now + 4.6)  # 4,000 tokens ≈ 4 s: 0.6 s of slack
        # 1,000 tokens due in 1.5 s: less slack, so it would run first, and could make its own deadline, but
        # the admitted request would then finish at ~5 s, past its 4.6 s: refused
        with pytest.raises(QueueFullError, match="already admitted"):
            sched.submit([[2] * 50] * 20, deadline=time.perf_counter() + 1.5)
        with pytest.raises(TooMuchWorkError, match="more than its deadline"):  # alone it needs ~5 s of 3 s
            sched.submit([[3] * 50] * 100, deadline=time.perf_counter() + 3)
        assert admitted.future.result(10).shape == (80, 1)
        assert 2 not in backend.finished and 3 not in backend.finished
    finally:
        sched.stop()


def test_a_reservation_holds_room_while_its_request_is_tokenized():
    backend = TimedBackend(0.001)  # 1,000 tokens/s
    sched = _scheduler(backend, tokens_per_s=1000.0, window_tokens=64)
    try:
        deadline = time.perf_counter() + 2.0
        held = sched.check_admission(1000, deadline, reserve=True)  # ~1 s of its 2 s: admitted, room held
        with pytest.raises(QueueFullError, match="overloaded"):  # alone it would fit; behind the held room not
            sched.check_admission(1000, deadline)
        assert sched.check_admission(1000, time.perf_counter() + 5) is None  # a later deadline still fits
        job = sched.submit([[1] * 50] * 20, deadline=deadline, reservation=held)  # takes the room it held
        sched.check_admission(10, time.perf_counter() + 5)
        assert job.future.result(5).shape == (20, 1)
        freed = sched.check_admission(1000, time.perf_counter() + 2.0, reserve=True)
        freed.release()
        freed.release()  # idempotent
        sched.check_admission(1000, time.perf_counter() + 2.0)  # the released room is free again
    finally:
        sched.stop()


class PacedBackend(BackendBase):
    """Scores at a set pace (seconds per real token), changeable while it serves: a CPU that slows down."""

    name = "paced"

    def __init__(self, seconds_per_token: float) -> None:
        self.seconds_per_token = seconds_per_token

    def run(self, input_ids, attention_mask):
        time.sleep(float(attention_mask.sum()) * self.seconds_per_token)
        return np.zeros((len(input_ids), 1), dtype=np.float32)


def test_admission_plans_with_the_slow_windows_after_the_cpu_slows_down():
    """After a dip the moving average still promises most of the old rate; admission plans with the slow
    windows' rate instead, so a request that fits only at the old rate is refused (429) rather than
    admitted and timed out (504)."""
    backend = PacedBackend(1e-4)  # ~10,000 tokens/s
    sched = _scheduler(backend, window_tokens=64)
    try:
        for _ in range(6):
            sched.submit([[1] * 32] * 2).future.result(5)
        backend.seconds_per_token = 1e-3  # the CPU slows to ~1,000 tokens/s
        started = time.perf_counter()
        for _ in range(4):
            sched.submit([[1] * 32] * 2).future.result(5)
        slow = 4 * 64 / (time.perf_counter() - started)  # measured here, not read from the scheduler
        assert sched.tokens_per_s > 2 * slow  # the moving average has not caught up
        assert sched.admission_tokens_per_s < 1.5 * slow
        # 1,000 tokens behind 256 with less slack (deadline 0.6 s): ~0.4 s at the moving average, ~1.26 s at
        # the slow rate, more than 0.8 (ADMIT_FRACTION) of a 1.4 s deadline; alone (1.0 s) it would fit, so
        # this is a 429, not a 413
        blocker = sched.submit([[1] * 32] * 8, deadline=time.perf_counter() + 0.6)
        with pytest.raises(QueueFullError) as refused:
            sched.submit([[1] * 25] * 40, deadline=time.perf_counter() + 1.4)
        assert refused.value.reason == "deadline"
        blocker.future.result(5)
    finally:
        sched.stop()
