"""Cross-request dynamic batching: the pairs of all waiting requests share length-sorted batches.

Why: one HTTP request rarely fills a batch well (a 1×10 request is ten rows of mixed lengths),
and scoring requests one at a time leaves the CPU idle between them. Like text-embeddings-
inference's queue, every request's token ids go into one FIFO queue; a single worker thread per
model takes a *window* of queued rows (up to ``window_tokens``, requests split across windows
when large), sorts the window by length, cuts it into the same token-budget batches as
:meth:`Reranker.predict` and runs them, handing each request its own logits in its own order the
moment its last row is scored. Planning, padding and running are the scoring core's
(``scoring.iter_batch_logits``, the same steps as ``predict``); this module owns only what is the
server's: windows across requests, cancellation, the bounded queue and its retry hint.

* inference never runs on the event loop: the worker is a thread, the loop only awaits a future;
* the window is large (32 × the batch token budget, 65,536 tokens on CPU): the more rows are
  sorted together, the less padding. Measured at concurrency 16 with 1×100-document requests
  (distilled 17m, OpenVINO bf16, 2 cores): 8 × the budget gave 85% of offline ``predict``
  throughput, 32 × gave 91%, and p50 latency did not grow. A lone request never waits for a
  window to fill: the window is whatever is queued, up to that size;
* a short ``max_wait`` lets requests that arrive together share a window, and is skipped as soon
  as a full batch's worth of tokens is waiting (so it costs nothing under load);
* the queue is bounded in rows: :meth:`submit` raises :class:`QueueFullError` with a retry hint
  computed from the measured token rate, which the server turns into ``429 + Retry-After``;
* a cancelled request (timeout, client gone) loses its rows that have not started yet.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np

from ..backends import Backend
from ..batching import BatchPolicy
from ..errors import RerankrtError
from ..scoring import iter_batch_logits


class QueueFullError(RerankrtError):
    """The queue holds as many rows as allowed; ``retry_after_s`` estimates when there is room."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SchedulerStoppedError(RerankrtError):
    """The scheduler is shutting down and accepts no new work."""


@dataclass(eq=False)
class Job:
    """One request's rows: token ids in, logits out (input order), and a future for the caller."""

    token_ids: list[list[int]]
    logits: np.ndarray
    future: Future = field(default_factory=Future)
    next_row: int = 0  # rows before this one have been taken into a window
    remaining: int = 0  # rows not yet scored
    cancelled: bool = False
    enqueued_at: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        """Drop the rows not yet taken; rows already in a running batch finish and are discarded."""
        self.cancelled = True
        if not self.future.done():
            self.future.cancel()


@dataclass
class SchedulerStats:
    """Callbacks the server's metrics hang on (all optional, all cheap)."""

    on_batch: Callable[[int, int, float], None] | None = None  # rows, padded tokens, seconds
    on_queue_wait: Callable[[float], None] | None = None  # seconds from submit to first row taken
    on_queue_depth: Callable[[int], None] | None = None  # rows waiting


def _settle(future: Future, result: np.ndarray | None = None, error: BaseException | None = None) -> None:
    """Resolve a future unless the caller cancelled it meanwhile (a race the worker must survive)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class BatchScheduler:
    """One worker thread per model; thread-safe :meth:`submit` from any thread."""

    def __init__(self, backend: Backend, num_labels: int, pad_id: int, policy: BatchPolicy, *,
                 max_wait_s: float = 0.002, window_tokens: int | None = None, max_queued_rows: int = 40_000,
                 stats: SchedulerStats | None = None, name: str = "model") -> None:
        self.backend = backend
        self.num_labels = num_labels
        self.pad_id = pad_id
        self.policy = policy
        self.max_wait_s = max_wait_s
        self.window_tokens = window_tokens or 32 * policy.token_budget
        self.max_queued_rows = max_queued_rows
        self.stats = stats or SchedulerStats()
        self.name = name
        self._queue: collections.deque[Job] = collections.deque()
        self._queued_rows = 0
        self._queued_tokens = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._tokens_per_s = 0.0  # moving average of the worker's rate, for Retry-After
        self._thread = threading.Thread(target=self._loop, name=f"rerankrt-batcher-{name}", daemon=True)
        self._thread.start()

    @classmethod
    def for_reranker(cls, reranker, **kwargs) -> BatchScheduler:
        """A scheduler over ``reranker``'s backend, with its batch policy and padding."""
        return cls(reranker.backend, reranker.num_labels, reranker.tokenizer.pad_id, reranker.policy,
                   name=kwargs.pop("name", "model"), **kwargs)

    # -- producer side -------------------------------------------------------------------------
    def submit(self, token_ids: list[list[int]]) -> Job:
        """Queue one request's rows; its ``future`` resolves to ``float32 [n, num_labels]`` logits."""
        job = Job(token_ids, np.empty((len(token_ids), self.num_labels), dtype=np.float32), remaining=len(token_ids))
        if not token_ids:
            job.future.set_result(job.logits)
            return job
        tokens = sum(len(t) for t in token_ids)
        with self._cond:
            if self._stopping:
                raise SchedulerStoppedError("the server is shutting down")
            if self._queued_rows + len(token_ids) > self.max_queued_rows:
                raise QueueFullError(
                    f"the queue of model {self.name!r} is full ({self._queued_rows} pairs waiting, "
                    f"limit {self.max_queued_rows})", self._retry_after(self._queued_tokens + tokens))
            self._queue.append(job)
            self._queued_rows += len(token_ids)
            self._queued_tokens += tokens
            depth = self._queued_rows
            self._cond.notify()
        if self.stats.on_queue_depth:
            self.stats.on_queue_depth(depth)
        return job

    def _retry_after(self, tokens: int) -> int:
        rate = self._tokens_per_s or 20_000.0  # before the first batch: a conservative guess
        return max(1, math.ceil(tokens / rate))

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting work; with ``drain`` finish what is queued, else cancel it."""
        with self._cond:
            self._stopping = True
            if not drain:
                for job in self._queue:
                    job.cancel()
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- worker side ---------------------------------------------------------------------------
    def _take_window(self) -> list[tuple[Job, int]]:
        """Rows of the oldest requests up to ``window_tokens`` (at least one row); lock held."""
        window: list[tuple[Job, int]] = []
        tokens = 0
        now = time.perf_counter()
        while self._queue and tokens < self.window_tokens:
            job = self._queue[0]
            if job.cancelled:
                self._drop(self._queue.popleft())
                continue
            if job.next_row == 0 and self.stats.on_queue_wait:
                self.stats.on_queue_wait(now - job.enqueued_at)
            while job.next_row < len(job.token_ids) and (tokens < self.window_tokens or not window):
                length = len(job.token_ids[job.next_row])
                window.append((job, job.next_row))
                job.next_row += 1
                tokens += length
                self._queued_rows -= 1
                self._queued_tokens -= length
            if job.next_row == len(job.token_ids):
                self._queue.popleft()
        return window

    def _drop(self, job: Job) -> None:
        left = job.token_ids[job.next_row:]
        self._queued_rows -= len(left)
        self._queued_tokens -= sum(len(t) for t in left)
        job.next_row = len(job.token_ids)

    def _wait_for_work(self) -> list[tuple[Job, int]] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None  # stopping and drained
            deadline = time.perf_counter() + self.max_wait_s
            while self._queued_tokens < self.policy.token_budget and not self._stopping:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            window = self._take_window()
            depth = self._queued_rows
        if self.stats.on_queue_depth:
            self.stats.on_queue_depth(depth)
        return window

    def _loop(self) -> None:
        while True:
            window = self._wait_for_work()
            if window is None:
                return
            window = [(job, row) for job, row in window if not job.cancelled]
            if window:
                self._run_window(window)

    def _run_window(self, window: list[tuple[Job, int]]) -> None:
        """Score one window through the scoring core; rows of requests cancelled meanwhile are skipped."""
        rows = [job.token_ids[row] for job, row in window]

        def live(indices: np.ndarray) -> np.ndarray:
            return np.asarray([i for i in indices if not window[i][0].cancelled], dtype=np.int64)

        for result in iter_batch_logits(self.backend, rows, self.policy, self.pad_id, keep=live, catch_errors=True):
            if result.error is not None or result.logits is None:  # fail the requests in this batch, keep serving
                for i in result.indices:
                    _settle(window[i][0].future, error=result.error or RuntimeError("the backend returned nothing"))
                continue
            seconds = result.seconds
            rate = result.padded_tokens / seconds if seconds > 0 else 0.0
            self._tokens_per_s = rate if not self._tokens_per_s else 0.8 * self._tokens_per_s + 0.2 * rate
            if self.stats.on_batch:
                self.stats.on_batch(len(result.indices), result.padded_tokens, seconds)
            for k, i in enumerate(result.indices):
                job, row = window[i]
                job.logits[row] = result.logits[k]
                job.remaining -= 1
                if job.remaining == 0:
                    _settle(job.future, job.logits)
