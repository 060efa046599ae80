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
