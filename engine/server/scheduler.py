"""Cross-request dynamic batching with deadline-aware admission and fair windows.

Why: one HTTP request rarely fills a batch well, and scoring requests one at a time leaves the CPU
idle between them. Like text-embeddings-inference's queue, every request's token ids go into one
queue; a single worker thread per model takes a *window* of queued rows, sorts it by length, cuts
it into the scoring core's token-budget batches (``scoring.iter_batch_logits``, the same steps as
``predict``) and runs them, handing each request its own logits in its own order the moment its
last row is scored. This module owns only what is the server's:

* **admission in work, not in rows** (Triton's queue policy: reject at enqueue). A request is
  admitted only if the queued work ahead of it plus its own, in tokens at the worker's measured
  token rate, can finish before its deadline; otherwise :class:`QueueFullError` with an honest
  ``retry_after_s`` (when the queue will have drained enough for it), which the server turns into
  ``429 + Retry-After`` in microseconds instead of a ``504`` after a minute of wasted compute.
  The jobs it would overtake must still make their deadlines too. ``max_queued_rows`` stays as a
  hard cap beside it. A request that alone needs more than its deadline is refused
  (:class:`TooMuchWorkError`, the server's 413) instead of computed and dropped.
* **time-outs while queued**: a job whose deadline has passed, or whose remaining work cannot
  finish by it even at twice the measured rate, is dropped before any of its remaining rows run
  (``DeadlineExceededError``), so overload does not burn CPU on answers nobody will read.
* **fairness**: each window is filled from the jobs in order of *least slack* (deadline minus
  remaining work, at the measured rate): a 5-document request with a 10 s deadline goes before a
  3,000-document request with a distant one (a batch client), which takes the capacity the small
  ones leave and rises as its slack shrinks. Windows are small (4 × the batch token budget by
  default, a fraction of a second) because that is the granularity at which a new request can
  overtake: each job's rows are sorted by length once at submit and taken in that order, so even a
  small window of one job is well sorted (little padding), and rows of several jobs of similar
  length still meet in a batch.
* inference never runs on the event loop: the worker is a thread, the loop only awaits a future;
* a short ``max_wait`` lets requests that arrive together share a window, skipped as soon as a
  full batch's worth of tokens is waiting (so it costs nothing under load);
* a cancelled request (timeout, client gone) loses its rows that have not started yet.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np

from ..backends import Backend
from ..batching import BatchPolicy
from ..errors import RerankrtError
from ..scoring import iter_batch_logits

# Admit a request only if the work ahead plus its own fits this fraction of the time to its deadline:
# the rate is a moving average and windows are served fairly, not strictly in order, so keep a margin.
ADMIT_FRACTION = 0.8
# The checks on estimated tokens (before parsing and before tokenizing) admit up to a smaller share, so
# a request they let through is rarely refused by the exact check after tokenizing: a 429 decided that
# late costs the parse and the tokenization on a CPU the backend saturates (measured up to 170 ms).
ESTIMATE_ADMIT_FRACTION = 0.75
RECENT_WINDOWS = 16  # the windows whose rates admission looks back on (see admission_tokens_per_s)


class QueueFullError(RerankrtError):
    """Admitting this request would miss its deadline or pass the queue cap; retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int, reason: str = "queue_full") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason  # "queue_full" (the row cap) or "deadline" (the queued work would miss it)


class TooMuchWorkError(RerankrtError):
    """The request alone needs more time than its deadline allows, at the measured rate (retrying cannot help)."""

    def __init__(self, message: str, needed_s: float) -> None:
        super().__init__(message)
        self.needed_s = needed_s


class SchedulerStoppedError(RerankrtError):
    """The scheduler is shutting down and accepts no new work."""


class DeadlineExceededError(RerankrtError):
    """A request's deadline passed (or could no longer be met) before its remaining rows ran."""


@dataclass(eq=False)
class Job:
    """One request's rows: token ids in, logits out (input order), and a future for the caller.

    Rows are taken in ``order`` (longest first, the scoring core's order), so the rows of one job
    taken into a window are always of similar length.
    """

    token_ids: list[list[int]]
    logits: np.ndarray
    deadline: float = math.inf  # time.perf_counter() by which the answer is needed
    future: Future = field(default_factory=Future)
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    next_row: int = 0  # positions of ``order`` before this one have been taken into a window
    remaining: int = 0  # rows not yet scored
    untaken_tokens: int = 0  # tokens of rows not yet taken into a window
    cancelled: bool = False
    enqueued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None  # when a row was first taken into a window (queue wait, trace spans)

    def cancel(self) -> None:
        """Drop the rows not yet taken; rows already in a running batch finish and are discarded."""
        self.cancelled = True
        if not self.future.done():
            self.future.cancel()

    @property
    def fully_taken(self) -> bool:
        return self.next_row >= len(self.token_ids)


@dataclass(eq=False)
class Reservation:
    """Room held in the schedule for a request admitted on its *estimated* tokens while it is tokenized.

    Why: tokenizing takes tens of milliseconds (over 100 ms on a saturated CPU); without a
    reservation, requests admitted meanwhile take the room, and the exact check at :meth:`submit`
    then refuses the first one, a 429 that cost its parse and its tokenization. Admission sees a
    reservation as a queued job of that many tokens (the worker does not); :meth:`submit` consumes
    it, and :meth:`release` (idempotent) frees it when the request fails before that.
    """

    untaken_tokens: int
    deadline: float
    enqueued_at: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # read like a Job's by admission
    scheduler: BatchScheduler | None = None

    def release(self) -> None:
        if self.scheduler is not None:
            self.scheduler._release(self)


@dataclass
class SchedulerStats:
    """Callbacks the server's metrics hang on (all optional, all cheap)."""

    on_batch: Callable[[int, int, float], None] | None = None  # rows, padded tokens, seconds
    on_queue_wait: Callable[[float], None] | None = None  # seconds from submit to first row taken
    on_queue_depth: Callable[[int], None] | None = None  # rows waiting
    on_expired: Callable[[int], None] | None = None  # rows dropped because their deadline passed


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
                 tokens_per_s: float | None = None, stats: SchedulerStats | None = None,
                 name: str = "model") -> None:
        self.backend = backend
        self.num_labels = num_labels
        self.pad_id = pad_id
        self.policy = policy
        self.max_wait_s = max_wait_s
        self.window_tokens = window_tokens or 4 * policy.token_budget
        self.max_queued_rows = max_queued_rows
        self.stats = stats or SchedulerStats()
        self.name = name
        self._jobs: list[Job] = []  # jobs with rows not yet taken, in arrival order
        self._queued_rows = 0
        self._queued_tokens = 0
        self._running_tokens = 0  # tokens of the window being run, not yet scored
        self._reservations: list[Reservation] = []  # admitted on an estimate, being tokenized
        self._reserved_tokens = 0
        self._cond = threading.Condition()
        self._stopping = False
        # real (unpadded) tokens per second of the worker: a moving average, seeded by a measurement
        # at start-up when the caller has one (the server's warm-up), else a conservative guess
        self._tokens_per_s = float(tokens_per_s) if tokens_per_s else 0.0
        self._window_rates: deque[float] = deque(maxlen=RECENT_WINDOWS)  # each window's own rate
        self._thread = threading.Thread(target=self._loop, name=f"rerankrt-batcher-{name}", daemon=True)
        self._thread.start()

    @classmethod
    def for_reranker(cls, reranker, **kwargs) -> BatchScheduler:
        """A scheduler over ``reranker``'s backend, with its batch policy and padding."""
        return cls(reranker.backend, reranker.num_labels, reranker.tokenizer.pad_id, reranker.policy,
                   name=kwargs.pop("name", "model"), **kwargs)

    # -- estimates -----------------------------------------------------------------------------
    @property
    def tokens_per_s(self) -> float:
        """The worker's measured rate in real tokens per second (20,000 before anything was measured)."""
        return self._tokens_per_s or 20_000.0

    @property
    def admission_tokens_per_s(self) -> float:
        """The rate admission plans with: the moving average, or the slowest recent quarter of windows if lower.

        Why not the average alone: on a shared or throttled CPU the rate dips for seconds at a time, and
        requests admitted at the average then finish past their deadlines (504): 1-7 of them per phase at
        2x-4x the sustainable load in this project's overload runs. Planning with the lower quartile of the
        last :data:`RECENT_WINDOWS` windows admits what still fits when such a dip comes back.
        """
        rates = sorted(self._window_rates)
        if len(rates) < 4:
            return self.tokens_per_s
        return min(self.tokens_per_s, rates[len(rates) // 4])

    @property
    def alive(self) -> bool:
        """Whether the batching thread runs (a health check replaces a replica whose thread died)."""
        return self._thread.is_alive()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def backlog_s(self) -> float:
        """Seconds of work ahead of a request submitted now (queued plus the running window)."""
        return (self._queued_tokens + self._running_tokens) / self.tokens_per_s

    # -- producer side -------------------------------------------------------------------------
    def submit(self, token_ids: list[list[int]], deadline: float = math.inf,
               reservation: Reservation | None = None) -> Job:
        """Queue one request's rows; its ``future`` resolves to ``float32 [n, num_labels]`` logits.

        ``deadline`` is a ``time.perf_counter()`` value. Raises :class:`QueueFullError` when the
        work ahead plus this request's own cannot finish by then (or the row cap is reached). With
        the ``reservation`` :meth:`check_admission` made for it, the request takes that room: it is
        checked again only where its exact tokens exceed the reserved ones.
        """
        lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
        tokens = int(lengths.sum())
        job = Job(token_ids, np.empty((len(token_ids), self.num_labels), dtype=np.float32), deadline=deadline,
                  order=np.argsort(-lengths, kind="stable"), remaining=len(token_ids), untaken_tokens=tokens)
        if not token_ids:
            job.future.set_result(job.logits)
            return job
        with self._cond:
            if reservation is not None:
                self._release_locked(reservation)
            if self._stopping:
                raise SchedulerStoppedError("the server is shutting down")
            self._admit_tokens(job.remaining, tokens, job.deadline, exact=True,
                               reserved=reservation.untaken_tokens if reservation is not None else 0)
            self._jobs.append(job)
            self._queued_rows += len(token_ids)
            self._queued_tokens += tokens
            depth = self._queued_rows
            self._cond.notify()
        if self.stats.on_queue_depth:
            self.stats.on_queue_depth(depth)
        return job

    def check_admission(self, tokens: int, deadline: float, reserve: bool = False) -> Reservation | None:
        """Raise :class:`QueueFullError` now if ``tokens`` (an estimate, before tokenizing) could not be admitted.

        The server calls this right after parsing, with tokens estimated from the texts' length, so a
        request that will be refused is refused before it is tokenized (milliseconds); with ``reserve``
        the room is held (:class:`Reservation`) until :meth:`submit` takes it or it is released.
        """
        with self._cond:
            self._admit_tokens(0, tokens, deadline, exact=False)
            if not reserve:
                return None
            reservation = Reservation(tokens, deadline, scheduler=self)
            self._reservations.append(reservation)
            self._reserved_tokens += tokens
            return reservation

    def _release(self, reservation: Reservation) -> None:
        with self._cond:
            self._release_locked(reservation)

    def _release_locked(self, reservation: Reservation) -> None:
        if reservation.scheduler is self:
            reservation.scheduler = None
            self._reservations.remove(reservation)
            self._reserved_tokens -= reservation.untaken_tokens

    def _admit_tokens(self, rows: int, tokens: int, deadline: float, exact: bool, reserved: int = 0) -> None:
        """Refuse (lock held) unless ``rows`` fit the row cap and the schedule stays feasible with ``tokens``.

        Feasible: the new job, placed by its priority (:meth:`_key`), finishes within
        :data:`ADMIT_FRACTION` (:data:`ESTIMATE_ADMIT_FRACTION` when ``tokens`` is an estimate) of the
        time to its deadline given the work that runs before it; and every queued job it would overtake
        still finishes with the new work added before it, keeping the same reserve of its own budget
        (1 − that fraction of its deadline) for the rate's noise (measured:
        overtakers allowed up to the full deadline left admitted requests finishing at 9.7–10 s of 10 s,
        and 1–2 of them past it, at 2× and 4× the sustainable rate). Checking only the newcomer let small
        requests overtake admitted ones until those missed their deadlines: 18 × 504 at 4× in one run.
        """
        rate = self.admission_tokens_per_s
        fraction = ADMIT_FRACTION if exact else ESTIMATE_ADMIT_FRACTION
        if self._queued_rows + rows > self.max_queued_rows:
            ahead = self._queued_tokens + self._running_tokens
            raise QueueFullError(
                f"the queue of model {self.name!r} is full ({self._queued_rows} pairs waiting, limit "
                f"{self.max_queued_rows})", max(1, math.ceil((ahead + tokens - self._room_tokens()) / rate)))
        if deadline == math.inf or tokens <= reserved:
            return  # no deadline, or within the room its reservation was admitted for
        now = time.perf_counter()
        if exact and tokens / rate > deadline - now:
            # alone it would still miss its deadline: refused now (413) instead of computed and dropped (504),
            # and it cannot hold the queue for longer than its own deadline either
            raise TooMuchWorkError(
                f"this request needs ~{tokens / rate:.1f} s of compute ({tokens} tokens at the measured "
                f"{rate:,.0f} tokens/s), more than its deadline of {max(deadline - now, 0):.1f} s; send fewer "
                "documents, or a longer deadline (X-Request-Timeout, up to the server's --request-timeout)",
                tokens / rate)
        if self._queued_tokens + self._running_tokens + self._reserved_tokens == 0:
            return
        key = (deadline - tokens / rate, tokens / rate)
        ahead = self._running_tokens
        later: list[Job | Reservation] = []
        pending: list[Job | Reservation] = [*(j for j in self._jobs if not j.cancelled), *self._reservations]
        for job in sorted(pending, key=lambda j: self._key(j, rate)):
            if self._key(job, rate) <= key:
                ahead += job.untaken_tokens
            else:
                later.append(job)
        needed_s = (ahead + tokens) / rate
        left_s = fraction * (deadline - now)
        if needed_s > left_s:
            # it fits once the work ahead has drained by the excess; at least a second (HTTP's unit)
            retry = max(1, math.ceil(min(needed_s - left_s, ahead / rate)))
            raise QueueFullError(
                f"model {self.name!r} is overloaded: {ahead} tokens would run before this request's {tokens} "
                f"(~{needed_s:.1f} s at the measured {rate:,.0f} tokens/s), more than its deadline allows "
                f"({max(left_s, 0):.1f} s)", retry, reason="deadline")
        finish = ahead + tokens
        for job in later:  # the jobs this one overtakes must still make their deadlines, with their reserve
            finish += job.untaken_tokens
            reserve = (1 - fraction) * (job.deadline - job.enqueued_at)
            if finish / rate > job.deadline - now - reserve:
                raise QueueFullError(
                    f"model {self.name!r} is overloaded: this request would delay requests already admitted "
                    f"past their deadlines ({finish} tokens at the measured {rate:,.0f} tokens/s)",
                    max(1, math.ceil(tokens / rate)), reason="deadline")

    def _room_tokens(self) -> int:
        """Tokens that may be queued under the row cap, for the retry hint (average row length)."""
        rows = max(self._queued_rows, 1)
        return int(self._queued_tokens / rows * self.max_queued_rows)

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting work; with ``drain`` finish what is queued, else cancel it."""
        with self._cond:
            self._stopping = True
            if not drain:
                for job in self._jobs:
                    job.cancel()
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- worker side ---------------------------------------------------------------------------
    def _take_window(self) -> list[tuple[Job, int]]:
        """Rows for the next window (lock held): dead jobs dropped, the rest least slack first."""
        now = time.perf_counter()
        rate = self.tokens_per_s
        live: list[Job] = []
        for job in self._jobs:
            if job.cancelled:
                self._drop(job)
            elif now >= job.deadline or job.untaken_tokens / (2 * rate) > job.deadline - now:
                self._drop(job)
                self._expire(job, "passed (or could no longer be met) while it was queued")
            else:
                live.append(job)
        live.sort(key=lambda j: self._key(j, rate))
        window: list[tuple[Job, int]] = []
        tokens = 0
        for job in live:
            if tokens >= self.window_tokens:
                break
            while not job.fully_taken and (tokens < self.window_tokens or not window):
                row = int(job.order[job.next_row])
                length = len(job.token_ids[row])
                window.append((job, row))
                job.next_row += 1
                job.untaken_tokens -= length
                tokens += length
                self._queued_rows -= 1
                self._queued_tokens -= length
        for job, _ in window:
            if job.started_at is None:
                job.started_at = now
                if self.stats.on_queue_wait:
                    self.stats.on_queue_wait(now - job.enqueued_at)
        self._jobs = [job for job in self._jobs if not job.fully_taken]
        self._running_tokens = tokens
        return window

    def min_wait_s(self) -> float:
        """Seconds of work that would run before *any* request submitted now: the running window and the
        queued jobs already out of slack (their deadline minus their remaining work is past), which even
        a request with no work of its own would not overtake. The front door refuses before reading a
        body when this exceeds the request's deadline."""
        with self._cond:
            rate, now = self.tokens_per_s, time.perf_counter()
            urgent = sum(j.untaken_tokens for j in self._jobs if not j.cancelled and self._key(j, rate)[0] <= now)
            return (self._running_tokens + urgent) / rate

    @staticmethod
    def _key(job: Job | Reservation, rate: float) -> tuple[float, float]:
        """Priority of a job (lower first): its deadline minus its remaining work, i.e. least slack first.

        Why this order: a 5-document request with a 10 s deadline goes before a 3,000-document request
        with a distant deadline (a batch client), which takes the capacity the small ones leave and rises
        as its slack shrinks, so it never starves; among requests with the same deadline budget it is
        close to arrival order, the order admission assumed. The key of a waiting job does not change
        with time, so the order is stable and admission can check it (:meth:`_admit_tokens`).
        """
        remaining_s = job.untaken_tokens / rate
        return (job.deadline - remaining_s, remaining_s)  # ties (e.g. no deadlines): shortest remaining first

    def _expire(self, job: Job, when: str) -> None:
        """Fail ``job`` with :class:`DeadlineExceededError`; its rows still queued or in later batches are skipped."""
        if self.stats.on_expired:
            self.stats.on_expired(job.remaining)
        job.cancelled = True
        _settle(job.future, error=DeadlineExceededError(
            f"the request's deadline {when}; its {job.remaining} pending pairs were dropped unscored"))

    def _drop(self, job: Job) -> None:
        """Forget ``job``'s untaken rows (lock held)."""
        left = len(job.token_ids) - job.next_row
        self._queued_rows -= left
        self._queued_tokens -= job.untaken_tokens
        job.untaken_tokens = 0
        job.next_row = len(job.token_ids)

    def _wait_for_work(self) -> list[tuple[Job, int]] | None:
        with self._cond:
            self._running_tokens = 0
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if not self._jobs:
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
        """Score one window through the scoring core; rows of requests cancelled or expired meanwhile are skipped."""
        rows = [job.token_ids[row] for job, row in window]

        def live(indices: np.ndarray) -> np.ndarray:
            now = time.perf_counter()
            kept = []
            for i in indices:
                job = window[i][0]
                if not job.cancelled and now >= job.deadline:  # too late for an answer: skip the rest
                    self._expire(job, "passed while its pairs were being scored")
                if not job.cancelled:
                    kept.append(i)
            return np.asarray(kept, dtype=np.int64)

        started = time.perf_counter()
        scored_tokens = 0
        for result in iter_batch_logits(self.backend, rows, self.policy, self.pad_id, keep=live, catch_errors=True):
            real_tokens = sum(len(rows[i]) for i in result.indices)
            with self._cond:
                self._running_tokens = max(0, self._running_tokens - real_tokens)
            if result.error is not None or result.logits is None:  # fail the requests in this batch, keep serving
                for i in result.indices:
                    _settle(window[i][0].future, error=result.error or RuntimeError("the backend returned nothing"))
                continue
            scored_tokens += real_tokens
            seconds = result.seconds
            if self.stats.on_batch:
                self.stats.on_batch(len(result.indices), result.padded_tokens, seconds)
            for k, i in enumerate(result.indices):
                job, row = window[i]
                job.logits[row] = result.logits[k]
                job.remaining -= 1
                if job.remaining == 0:
                    _settle(job.future, job.logits)
        # The rate admission relies on, per window and by the wall clock: backend time alone missed the
        # padding, scattering and GIL waits between batches (measured ~10% optimistic under load, and
        # admitted requests then finished just past their deadline).
        elapsed = time.perf_counter() - started
        if scored_tokens and elapsed > 0:
            rate = scored_tokens / elapsed
            with self._cond:  # admission sorts the recent rates under this lock; a deque appended meanwhile raises
                self._window_rates.append(rate)
                self._tokens_per_s = rate if not self._tokens_per_s else 0.7 * self._tokens_per_s + 0.3 * rate
