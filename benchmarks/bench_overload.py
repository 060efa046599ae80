"""Overload load test for ``rerankrt serve``: what an operator sees when more traffic arrives than the
server can score, when one client sends huge requests, and when sockets are held open sending nothing.

One command::

    python benchmarks/bench_overload.py --out benchmarks/results [--base REV]

writes ``overload-<stamp>.json`` and ``overload-<stamp>.md`` (hardware, CPU flags and versions
beside the numbers) through ``common.write_report``. With ``--base REV`` every phase runs first
against the server of an older commit (a git worktree under ``benchmarks/work``, put first on
``PYTHONPATH``), then against this tree, so one run shows before and after side by side. Options
that a version's ``serve --help`` does not list are not passed to it; the report says which were
left out.

Why open loop and not only closed loop: a closed-loop client sends its next request only when the
last one has returned, so a slow server slows its own arrivals. The offered load adapts to the
capacity, and overload never shows: latency grows a little and throughput looks fine. Real
traffic does not wait like that (users and upstream services keep arriving). The open-loop
phases draw Poisson arrivals at a fixed multiple of the measured capacity and time every request
from its *scheduled* send time (no coordinated omission). Queue growth, 429s, 504s and goodput
are then what a production server would see. The closed loop is kept for what it is good at:
measuring the sustainable rate the overload is relative to.

Phases, per version (every rate is relative to the sustainable rate that version measured in
this run):

1. sustainable rate: closed loop, 4 clients, 50 documents per request, ``--sustain-duration``
   seconds: pairs/s of 200s, p50/p99 latency (``sustainable_pairs_s``).
2. open loop at ``--factors`` (2× and 4×) that pair rate, Poisson arrivals, 100–200 documents per
   request (uniform), ``--duration`` seconds each: counts by status (200, 429, 504, other 4xx,
   other 5xx, connection errors, client time-outs), goodput (pairs/s of 200s completed within the
   arrival window) and its ratio to sustainable, p50/p99 of 200s, p99 of admitted requests
   (200, 504, 5xx, client time-outs) against the deadline, p99 of 429s, Retry-After values seen.
   Every rerank request carries ``X-Request-Timeout: <--deadline>``; the server is started with
   ``--request-timeout`` the larger of ``--deadline`` and ``--big-deadline`` (older servers ignore
   the header, so for them every request has the long one, as their defaults did).
3. mixed traffic: ``--mixed-clients`` closed-loop clients sending 5–50 documents per request
   alone, then the same while one more client sends ``--big-docs`` (3,000) documents per request:
   the small requests' p99 with the big client vs alone, and the big requests' statuses.
4. stalled connections: a fresh server started with RLIMIT_NOFILE soft = hard = 1024 (systemd's
   default), ``--stalled`` raw TCP sockets that send nothing (``--stalled-half`` of them half a
   request line) held open while ``--stalled-requests`` (56) small requests go out from another
   client, 8 at a time. The same burst without the sockets is the reference. Then the sockets
   are released and the server's recovery is checked.
5. health throughout: a probe GETs /health every 100 ms on a fresh connection (as a kubelet does),
   with a 1 s time-out; p50/p99 and failures per phase.

Between phases the server settles: the ``rerankrt_queue_pairs`` gauge of /metrics back at 0, or
a fixed pause where the gauge is missing. The server scores fp32 on onnxruntime with
``common.THREADS`` threads: the distilled 17m, exported once into ``benchmarks/work`` and reused.
Its stdout and stderr go to ``benchmarks/work/runs/overload-<stamp>/server-*.log``. The load
generator (asyncio + one httpx client with a large connection pool) shares the CPU with the
server; the report records how late the open loop sent its requests (client lag). Pairs are sampled from
../shared/data/negconstraint at run time; no text is written anywhere.

Targets, printed beside each measured value: zero 5xx (504 included); goodput ≥ 90% of sustainable
at 2× and 4×; p99 of admitted ≤ the deadline; p99 of 429 answers ≤ 50 ms; small-request p99 with
the big client ≤ 3× alone; in the stalled phase, the other clients are served.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import numpy as np

import common
from common import say

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
RERANK_PATH = "/v1/rerank"
DEADLINE_HEADER = "X-Request-Timeout"
# Server options only newer servers have: passed only to a version whose `serve --help` lists them.
NEW_SERVER_FLAGS = ("--max-concurrent-requests", "--header-timeout", "--max-connections", "--drain-grace")
REQUIRED_SERVER_FLAGS = ("--port", "--precision", "--backend", "--threads", "--request-timeout")
PHASES = ("sustain", "open", "mixed", "stalled")
KINDS = ("200", "429", "504", "4xx", "5xx", "connection_error", "timeout", "other")
ADMITTED = ("200", "504", "5xx", "timeout")  # got past admission (or never answered)
SUSTAIN_CLIENTS, SUSTAIN_DOCS = 4, 50
OPEN_DOCS = (100, 200)
SMALL_DOCS = (5, 50)
STALLED_CONCURRENCY, STALLED_DOCS = 8, 10
HALF_REQUEST_LINE = b"POST /v1/rer"
HEALTH_INTERVAL_S, HEALTH_TIMEOUT_S = 0.1, 1.0
GOODPUT_GOAL, ADMITTED_429_MS_GOAL, MIXED_RATIO_GOAL = 0.9, 50.0, 3.0
QUEUE_METRIC = re.compile(r"^rerankrt_queued?_pairs(?:\{[^}]*\})?\s+(\S+)", re.MULTILINE)
RUNNING: set[subprocess.Popen] = set()  # killed in main()'s finally, whatever happened


# ---------------------------------------------------------------------------------------------
# Versions under test and their servers.
# ---------------------------------------------------------------------------------------------
@dataclass
class Version:
    label: str  # "this tree" or "base <rev>"
    pythonpath: str | None = None  # the base's rerankrt, ahead of the installed (editable) one
    flags: frozenset[str] = frozenset()  # the options its `serve --help` lists

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", self.label).strip("-")

    def env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        return env


def base_import_path(rev: str) -> str:
    """A worktree at ``rev`` and a folder whose ``rerankrt/`` maps onto its engine/ and export/.

    As in bench_core_ab.py, plus ``rerankrt/__init__.py`` where the revision has engine/_rerankrt/.
    """
    sha = subprocess.run(["git", "rev-parse", "--short", rev], check=True, capture_output=True, text=True,
                         cwd=common.REPO_ROOT).stdout.strip()
    root = WORK / f"overload-base-{sha}"
    tree = root / "tree"
    if not tree.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], check=True, cwd=common.REPO_ROOT)
    package = root / "import" / "rerankrt"
    package.mkdir(parents=True, exist_ok=True)
    for name in ("engine", "export"):
        if not (package / name).exists():
            (package / name).symlink_to(tree / name)
    init = tree / "engine" / "_rerankrt" / "__init__.py"
    if init.is_file() and not (package / "__init__.py").exists():
        (package / "__init__.py").symlink_to(init)
    return str(root / "import")


def detect_flags(version: Version, cwd: Path) -> frozenset[str]:
    """The options of this version's ``rerankrt serve``, read from its ``--help``."""
    out = subprocess.run([sys.executable, "-m", "rerankrt.engine.cli", "serve", "--help"], env=version.env(),
                         capture_output=True, text=True, timeout=180, cwd=cwd)
    if out.returncode != 0:
        raise RuntimeError(f"{version.label}: `serve --help` failed: {out.stderr[-1500:]}")
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out.stdout))


def serve_command(version: Version, artifact: Path, port: int, args: argparse.Namespace
                  ) -> tuple[list[str], list[str]]:
    """``(command, dropped)``: the options this version knows, and those left out because it does not."""
    wanted: list[tuple[str, object]] = [
        ("--port", port), ("--precision", "fp32"), ("--backend", "onnxruntime"), ("--threads", common.THREADS),
        ("--max-length", common.MAX_LENGTH), ("--request-timeout",
                                                 f"{max(args.deadline, args.big_deadline):g}"), ("--log-level", "info"),
        ("--max-concurrent-requests", args.max_concurrent_requests), ("--header-timeout", args.header_timeout),
        ("--max-connections", args.max_connections), ("--drain-grace", args.drain_grace)]
    for extra in args.serve_arg:
        flag, sep, value = extra.partition("=")
        wanted.append((flag, value if sep else True))
    command = [sys.executable, "-m", "rerankrt.engine.cli", "serve", str(artifact)]
    dropped = []
    for flag, value in wanted:
        if value is None:
            continue
        if flag not in version.flags:
            if flag in REQUIRED_SERVER_FLAGS:
                raise RuntimeError(f"{version.label}: `serve` has no {flag}")
            dropped.append(flag)
            continue
        command += [flag] if value is True else [flag, str(value)]
    return command, dropped


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM (the server drains), SIGKILL after ``grace_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    RUNNING.discard(proc)


class Server:
    """One ``rerankrt serve`` process of a version; its output goes to ``log_path``."""

    def __init__(self, version: Version, artifact: Path, args: argparse.Namespace, log_path: Path,
                 nofile: int | None = None) -> None:
        self.version, self.log_path, self.nofile = version, log_path, nofile
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command, self.dropped = serve_command(version, artifact, self.port, args)
        self.proc: subprocess.Popen | None = None

    async def start(self, timeout_s: float = 300.0) -> None:
        preexec = (partial(resource.setrlimit, resource.RLIMIT_NOFILE, (self.nofile, self.nofile))
                   if self.nofile else None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.version.env(), cwd=self.log_path.parent, preexec_fn=preexec)
        RUNNING.add(self.proc)
        deadline = time.perf_counter() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.version.label}: server exited with {self.proc.returncode}: "
                                       f"{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError, OSError):
                    if (await client.get(self.url + "/health")).status_code == 200:
                        return
                await asyncio.sleep(0.25)
        raise RuntimeError(f"{self.version.label}: server not healthy after {timeout_s:.0f} s: {self.log_tail()}")

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


# ---------------------------------------------------------------------------------------------
# Requests and their outcomes.
# ---------------------------------------------------------------------------------------------
class Texts:
    """Queries and documents from negconstraint, drawn at run time."""

    def __init__(self, seed: int) -> None:
        self.queries = common.read_texts(common.NEGCONSTRAINT_DIR / "queries.jsonl")
        self.corpus = common.read_texts(common.NEGCONSTRAINT_DIR / "corpus.jsonl")
        self.rng = random.Random(seed)

    def body(self, docs: int) -> dict:
        documents = (self.rng.sample(self.corpus, docs) if docs <= len(self.corpus)
                     else self.rng.choices(self.corpus, k=docs))
        return {"query": self.rng.choice(self.queries), "documents": documents}

    def sized(self, lo: int, hi: int) -> Callable[[], tuple[dict, int]]:
        def make() -> tuple[dict, int]:
            docs = self.rng.randint(lo, hi)
            return self.body(docs), docs
        return make


@dataclass
class Outcome:
    kind: str  # one of KINDS
    status: int | None
    sent: float  # perf_counter when sent, or when due (open loop)
    done: float
    docs: int
    retry_after: str | None = None
    stage: str | None = None  # for a 429: refused "before body" (front door) or "after body" (parsed first)

    @property
    def latency(self) -> float:
        return self.done - self.sent


def kind_of(status: int) -> str:
    if status in (200, 429, 504):
        return str(status)
    if 400 <= status < 500:
        return "4xx"
    return "5xx" if status >= 500 else "other"


async def send(client: httpx.AsyncClient, url: str, body: dict, docs: int, timeout_s: float,
               headers: dict | None, due: float | None = None) -> Outcome:
    """One POST with a hard total time-out; never raises for what the server or network does."""
    sent = time.perf_counter() if due is None else due
    try:
        response = await asyncio.wait_for(client.post(url, json=body, headers=headers,
                                                      timeout=httpx.Timeout(timeout_s, connect=5.0)), timeout_s)
    except (asyncio.TimeoutError, httpx.TimeoutException):
        return Outcome("timeout", None, sent, time.perf_counter(), docs)
    except (httpx.HTTPError, OSError):
        return Outcome("connection_error", None, sent, time.perf_counter(), docs)
    done = time.perf_counter()
    return Outcome(kind_of(response.status_code), response.status_code, sent, done, docs,
                   response.headers.get("retry-after"), refusal_stage(response))


def refusal_stage(response: httpx.Response) -> str | None:
    """Where a 429 was decided, from its message: before the body was read (the front door's backlog or
    size estimate) or after it was parsed (the estimate from the texts, or the exact check after tokenizing).
    Older servers' messages all count as "after body"."""
    if response.status_code != 429:
        return None
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return "after body"
    return "before body" if "queued ahead" in message or "estimated from the request's" in message else "after body"


def counts(outcomes: list[Outcome]) -> dict:
    by_kind = Counter(o.kind for o in outcomes)
    return {k: by_kind.get(k, 0) for k in KINDS}


def statuses(outcomes: list[Outcome]) -> dict[str, int]:
    return dict(sorted(Counter(str(o.status) for o in outcomes if o.status is not None).items()))


def latency(outcomes: list[Outcome]) -> dict:
    if not outcomes:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = 1e3 * np.array([o.latency for o in outcomes])
    return {"n": len(outcomes), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max())}


async def closed_loop(client: httpx.AsyncClient, url: str, make: Callable[[], tuple[dict, int]], clients: int,
                      duration_s: float, timeout_s: float, headers: dict | None) -> tuple[list[Outcome], float]:
    """``clients`` loops, each sending its next request when the last returned, until ``duration_s``."""
    started = time.perf_counter()
    end = started + duration_s
    outcomes: list[Outcome] = []

    async def loop() -> None:
        while time.perf_counter() < end:
            body, docs = make()
            outcome = await send(client, url, body, docs, timeout_s, headers)
            outcomes.append(outcome)
            if outcome.kind != "200":
                await asyncio.sleep(0.05)  # no hot spin on instant errors

    await asyncio.gather(*(loop() for _ in range(clients)))
    return outcomes, started


# ---------------------------------------------------------------------------------------------
# Health probe and settling.
# ---------------------------------------------------------------------------------------------
@dataclass
class Health:
    """GET /health every 100 ms on a fresh connection; samples are filed under the current ``phase``."""

    phase: str = "startup"
    samples: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)

    async def probe(self, url: str) -> None:
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=HEALTH_TIMEOUT_S) as client:
            tick = time.perf_counter()
            while True:
                started = time.perf_counter()
                try:
                    ok = (await asyncio.wait_for(client.get(url), HEALTH_TIMEOUT_S)).status_code == 200
                except (asyncio.TimeoutError, httpx.HTTPError, OSError):
                    ok = False
                self.samples.setdefault(self.phase, []).append((time.perf_counter() - started, ok))
                tick = max(tick + HEALTH_INTERVAL_S, time.perf_counter())
                await asyncio.sleep(tick - time.perf_counter())

    def summary(self) -> dict:
        out = {}
        for phase, samples in self.samples.items():
            ms = 1e3 * np.array([s for s, ok in samples if ok])  # latency of the answered probes
            out[phase] = {"probes": len(samples), "failures": sum(not ok for _, ok in samples),
                          "p50_ms": float(np.percentile(ms, 50)) if ms.size else None,
                          "p99_ms": float(np.percentile(ms, 99)) if ms.size else None,
                          "max_ms": float(ms.max()) if ms.size else None}
        return out


@contextlib.asynccontextmanager
async def probing(health: Health, url: str):
    task = asyncio.create_task(health.probe(url))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def queued_pairs(client: httpx.AsyncClient, base_url: str) -> float | None:
    """The server's queue gauge (summed over models); None when /metrics has no such gauge."""
    try:
        response = await client.get(base_url + "/metrics", timeout=2.0)
    except (httpx.HTTPError, OSError):
        return None
    values = QUEUE_METRIC.findall(response.text) if response.status_code == 200 else []
    return sum(float(v) for v in values) if values else None


async def settle(client: httpx.AsyncClient, base_url: str, health: Health, args: argparse.Namespace) -> float:
    """Wait for an empty queue (or a fixed pause without the gauge); returns the seconds waited."""
    health.phase = "settle"
    started = time.perf_counter()
    while time.perf_counter() - started < args.settle_max:
        depth = await queued_pairs(client, base_url)
        if depth is None:
            await asyncio.sleep(max(0.0, args.settle_fallback - (time.perf_counter() - started)))
            break
        if depth == 0:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(args.settle_min)
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# Phases.
# ---------------------------------------------------------------------------------------------
@dataclass
class Ctx:
    args: argparse.Namespace
    texts: Texts
    health: Health
    client: httpx.AsyncClient
    base_url: str

    @property
    def url(self) -> str:
        return self.base_url + RERANK_PATH

    @property
    def headers(self) -> dict:
        return {DEADLINE_HEADER: f"{self.args.deadline:g}"}


async def phase_sustain(ctx: Ctx) -> dict:
    outcomes, started = await closed_loop(ctx.client, ctx.url, ctx.texts.sized(SUSTAIN_DOCS, SUSTAIN_DOCS),
                                          SUSTAIN_CLIENTS, ctx.args.sustain_duration, ctx.args.client_timeout,
                                          ctx.headers)
    ok = [o for o in outcomes if o.kind == "200"]
    seconds = max(o.done for o in outcomes) - started
    return {"clients": SUSTAIN_CLIENTS, "docs": SUSTAIN_DOCS, "seconds": seconds, "requests": len(outcomes),
            "counts": counts(outcomes), "statuses": statuses(outcomes),
            "sustainable_pairs_s": sum(o.docs for o in ok) / seconds, "ok": latency(ok)}


async def phase_open(ctx: Ctx, factor: float, sustainable: float) -> dict:
    """Poisson arrivals at ``factor`` × the sustainable pair rate, each timed from when it was due."""
    args = ctx.args
    rate = factor * sustainable / (sum(OPEN_DOCS) / 2)  # requests/s
    rng = random.Random(args.seed * 1000 + int(factor * 100))
    make = ctx.texts.sized(*OPEN_DOCS)
    started = time.perf_counter()
    due_at, tasks, lags, offered = 0.0, [], [], 0
    while True:
        due_at += rng.expovariate(rate)
        if due_at >= args.duration:
            break
        due = started + due_at
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        lags.append(time.perf_counter() - due)
        body, docs = make()
        offered += docs
        tasks.append(asyncio.create_task(send(ctx.client, ctx.url, body, docs, args.client_timeout, ctx.headers,
                                              due=due)))
    outcomes: list[Outcome] = list(await asyncio.gather(*tasks))
    ok = [o for o in outcomes if o.kind == "200"]
    admitted = [o for o in outcomes if o.kind in ADMITTED]
    rejected = [o for o in outcomes if o.kind == "429"]
    last = max((o.done for o in outcomes), default=started + args.duration)
    goodput = sum(o.docs for o in ok if o.done - started <= args.duration) / args.duration
    admitted_lat = latency(admitted)
    return {"factor": factor, "duration_s": args.duration, "offered_requests_s": rate,
            "offered_pairs_s": offered / args.duration, "target_pairs_s": factor * sustainable,
            "requests": len(outcomes), "counts": counts(outcomes), "statuses": statuses(outcomes),
            "goodput_pairs_s": goodput, "goodput_ratio": goodput / sustainable,
            "goodput_all_pairs_s": sum(o.docs for o in ok) / max(args.duration, last - started),
            "tail_after_window_s": max(0.0, last - started - args.duration),
            "ok": latency(ok), "admitted": admitted_lat, "rejected_429": latency(rejected),
            "rejected_429_by_stage": {stage: latency([o for o in rejected if o.stage == stage])
                                      for stage in ("before body", "after body")},
            "retry_after": dict(Counter(o.retry_after for o in rejected if o.retry_after is not None)),
            "deadline_s": args.deadline,
            "admitted_p99_within_deadline": (None if admitted_lat["p99_ms"] is None
                                             else admitted_lat["p99_ms"] <= 1e3 * args.deadline),
            "client_lag_ms": {"p99": 1e3 * float(np.percentile(lags, 99)) if lags else None,
                              "max": 1e3 * max(lags) if lags else None}}


async def phase_mixed(ctx: Ctx, with_big: bool) -> dict:
    args = ctx.args
    small_loop = closed_loop(ctx.client, ctx.url, ctx.texts.sized(*SMALL_DOCS), args.mixed_clients,
                             args.mixed_duration, args.client_timeout, ctx.headers)
    if with_big:
        # a batch client: a long deadline of its own (the server's --request-timeout), so that it is admitted
        # and fairness, not admission, decides how the small requests fare beside it
        big_loop = closed_loop(ctx.client, ctx.url, ctx.texts.sized(args.big_docs, args.big_docs), 1,
                               args.mixed_duration, args.big_deadline + 10, {DEADLINE_HEADER: f"{args.big_deadline:g}"})
        (small, _), (big, _) = await asyncio.gather(small_loop, big_loop)
    else:
        (small, _), big = await small_loop, []
    out = {"clients": args.mixed_clients, "docs": list(SMALL_DOCS), "duration_s": args.mixed_duration,
           "small": {"requests": len(small), "counts": counts(small), "statuses": statuses(small),
                     "ok": latency([o for o in small if o.kind == "200"])}}
    if with_big:
        out["big"] = {"docs": args.big_docs, "requests": len(big), "counts": counts(big), "statuses": statuses(big),
                      "ok": latency([o for o in big if o.kind == "200"]), "all": latency(big)}
    return out


async def burst(url: str, make: Callable[[], tuple[dict, int]], n: int, args: argparse.Namespace,
                headers: dict) -> dict:
    """``n`` small requests from a client of its own, 8 at a time, within ``--stalled-window`` seconds."""
    limits = httpx.Limits(max_connections=STALLED_CONCURRENCY, max_keepalive_connections=STALLED_CONCURRENCY)
    gate = asyncio.Semaphore(STALLED_CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(args.client_timeout, connect=5.0)) as client:
        async def one() -> Outcome:
            async with gate:
                body, docs = make()
                return await send(client, url, body, docs, args.client_timeout, headers)

        started = time.perf_counter()
        tasks = [asyncio.create_task(one()) for _ in range(n)]
        done, pending = await asyncio.wait(tasks, timeout=args.stalled_window)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        seconds = time.perf_counter() - started
    outcomes = [t.result() for t in done]
    ok = [o for o in outcomes if o.kind == "200"]
    result = counts(outcomes)
    result["timeout"] += len(pending)
    return {"requests": n, "served": len(ok), "unfinished_in_window": len(pending), "counts": result,
            "statuses": statuses(outcomes), "seconds": seconds, "ok": latency(ok)}


async def open_stalled(port: int, n: int, half: int) -> tuple[list[socket.socket], int]:
    """``n`` connected sockets that send nothing (the first ``half`` send half a request line); and the failures."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(128)

    async def one(i: int) -> socket.socket | None:
        async with gate:
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            except OSError:
                return None
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 5.0)
                if i < half:
                    sock.send(HALF_REQUEST_LINE)
            except (OSError, asyncio.TimeoutError):
                sock.close()
                return None
            return sock

    opened = await asyncio.gather(*(one(i) for i in range(n)))
    socks = [s for s in opened if s is not None]
    return socks, n - len(socks)


def census(socks: list[socket.socket]) -> dict[str, int]:
    """How many stalled sockets are still open, were answered (e.g. 408) or closed by the server."""
    states: Counter[str] = Counter()
    for sock in socks:
        try:
            states["answered" if sock.recv(1, socket.MSG_PEEK) else "closed"] += 1
        except BlockingIOError:
            states["open"] += 1
        except OSError:
            states["closed"] += 1
    return {k: states.get(k, 0) for k in ("open", "answered", "closed")}


async def phase_stalled(ctx: Ctx, port: int) -> dict:
    args = ctx.args
    make = ctx.texts.sized(STALLED_DOCS, STALLED_DOCS)
    ctx.health.phase = "stalled-reference"
    reference = await burst(ctx.url, make, args.stalled_requests, args, ctx.headers)
    await settle(ctx.client, ctx.base_url, ctx.health, args)
    ctx.health.phase = "stalled"
    socks, failed = await open_stalled(port, args.stalled, args.stalled_half)
    timeline: list[tuple[float, dict]] = []
    try:
        started = time.perf_counter()
        await asyncio.sleep(1.0)  # let the server accept what it can
        timeline.append((1.0, census(socks)))

        async def watch() -> None:
            while True:
                await asyncio.sleep(1.0)
                timeline.append((round(time.perf_counter() - started, 1), census(socks)))

        watcher = asyncio.create_task(watch())
        try:
            during = await burst(ctx.url, make, args.stalled_requests, args, ctx.headers)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        at_release = census(socks)
        held_s = time.perf_counter() - started
    finally:
        for sock in socks:
            sock.close()
    # after the release: how long until a small request is served again
    ctx.health.phase = "stalled-release"
    released = time.perf_counter()
    recovered_s, recovery = None, None
    async with httpx.AsyncClient(timeout=5.0) as client:
        while time.perf_counter() - released < args.settle_max + 10:
            body, docs = make()
            recovery = await send(client, ctx.url, body, docs, 5.0, ctx.headers)
            if recovery.kind == "200":
                recovered_s = time.perf_counter() - released
                break
            await asyncio.sleep(0.5)
    return {"sockets": args.stalled, "half_request_line": args.stalled_half, "connect_failures": failed,
            "server_nofile": args.server_nofile, "held_s": held_s, "reference": reference, "during": during,
            "stalled_at_release": at_release, "stalled_timeline": timeline, "recovered_after_release_s": recovered_s,
            "recovery_status": None if recovery is None else (recovery.status or recovery.kind)}


# ---------------------------------------------------------------------------------------------
# One version: the main server (phases 1-3), then a server with the systemd file limit (phase 4).
# ---------------------------------------------------------------------------------------------
def pool_client(args: argparse.Namespace) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=args.pool, max_keepalive_connections=args.pool)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(args.client_timeout, connect=5.0,
                                                                  pool=args.client_timeout))


async def run_version(version: Version, artifact: Path, args: argparse.Namespace, run_dir: Path) -> dict:
    health = Health()
    texts = Texts(args.seed)
    result: dict = {"version": version.label, "phases": {}, "servers": {}}
    phases = set(args.phases)
    try:
        if phases & {"sustain", "open", "mixed"}:
            server = Server(version, artifact, args, run_dir / f"server-{version.slug}.log")
            result["servers"]["main"] = {"command": server.command, "dropped_flags": server.dropped,
                                         "log": str(server.log_path)}
            try:
                say(f"{version.label}: starting the server ({server.log_path.name})")
                await server.start()
                async with probing(health, server.url + "/health"), pool_client(args) as client:
                    await run_main_phases(Ctx(args, texts, health, client, server.url), result, version.label)
            finally:
                server.stop()
        if "stalled" in phases:
            server = Server(version, artifact, args, run_dir / f"server-{version.slug}-stalled.log",
                            nofile=args.server_nofile)
            result["servers"]["stalled"] = {"command": server.command, "dropped_flags": server.dropped,
                                            "log": str(server.log_path), "nofile": args.server_nofile}
            try:
                say(f"{version.label}: starting the server with RLIMIT_NOFILE {args.server_nofile}")
                await server.start()
                async with probing(health, server.url + "/health"), pool_client(args) as client:
                    ctx = Ctx(args, texts, health, client, server.url)
                    stalled = await phase_stalled(ctx, server.port)
                    result["phases"]["stalled"] = stalled
                    d, r = stalled["during"], stalled["reference"]
                    say(f"  stalled ({args.stalled} sockets): {d['served']}/{d['requests']} served, p99 "
                        f"{fmt_ms(d['ok']['p99_ms'])} (reference {r['served']}/{r['requests']}, p99 "
                        f"{fmt_ms(r['ok']['p99_ms'])}); at release {stalled['stalled_at_release']}")
            finally:
                server.stop()
    except (RuntimeError, OSError) as exc:  # a server that does not start: recorded, the other version still runs
        say(f"{version.label}: {exc}")
        result["error"] = str(exc)
    result["health"] = health.summary()
    return result


async def run_main_phases(ctx: Ctx, result: dict, label: str) -> None:
    args, phases = ctx.args, result["phases"]
    ctx.health.phase = "warm-up"
    for _ in range(3):
        body, docs = ctx.texts.body(SUSTAIN_DOCS), SUSTAIN_DOCS
        await send(ctx.client, ctx.url, body, docs, args.client_timeout, ctx.headers)
    sustainable = args.sustainable
    if "sustain" in args.phases:
        ctx.health.phase = "sustain"
        phases["sustain"] = row = await phase_sustain(ctx)
        sustainable = row["sustainable_pairs_s"]
        say(f"  {label} sustain: {sustainable:.1f} pairs/s, p50 {fmt_ms(row['ok']['p50_ms'])}, "
            f"p99 {fmt_ms(row['ok']['p99_ms'])}, {nonzero(row['counts'], skip='200')}")
    if "open" in args.phases and not sustainable:
        note = (f"open loop skipped: no request was served within the deadline ({args.deadline:g} s) in the "
                "sustain phase (a busy machine? raise --deadline) or pass --sustainable")
        say(f"  {label}: {note}")
        result.setdefault("notes", []).append(note)
    elif "open" in args.phases:
        for factor in args.factors:
            await settle(ctx.client, ctx.base_url, ctx.health, args)
            name = f"open-{factor:g}x"
            ctx.health.phase = name
            phases[name] = row = await phase_open(ctx, factor, sustainable)
            say(f"  {label} {name}: {nonzero(row['counts'])}; goodput {row['goodput_pairs_s']:.1f} pairs/s "
                f"({row['goodput_ratio']:.0%}); p99 200 {fmt_ms(row['ok']['p99_ms'])}, admitted "
                f"{fmt_ms(row['admitted']['p99_ms'])}, 429 {fmt_ms(row['rejected_429']['p99_ms'])}")
    if "mixed" in args.phases:
        for with_big, name in ((False, "mixed-alone"), (True, "mixed-big")):
            await settle(ctx.client, ctx.base_url, ctx.health, args)
            ctx.health.phase = name
            phases[name] = row = await phase_mixed(ctx, with_big)
            say(f"  {label} {name}: small p50 {fmt_ms(row['small']['ok']['p50_ms'])}, p99 "
                f"{fmt_ms(row['small']['ok']['p99_ms'])}, {nonzero(row['small']['counts'], skip='200')}"
                + (f"; big: {nonzero(row['big']['counts'])}" if with_big else ""))
    await settle(ctx.client, ctx.base_url, ctx.health, args)


# ---------------------------------------------------------------------------------------------
# Targets and the report.
# ---------------------------------------------------------------------------------------------
def fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"


def nonzero(by_kind: dict, skip: str = "") -> str:
    parts = [f"{k}: {v}" for k, v in by_kind.items() if v and k != skip]
    return ", ".join(parts) or ("none" if skip else "—")


def targets(v: dict, args: argparse.Namespace) -> list[dict]:
    """``{"target", "value", "met"}`` per target; ``met`` None where this run has nothing to judge."""
    phases, out = v["phases"], []
    loaded = [p for name, p in phases.items() if name.startswith(("open-", "mixed-"))]
    groups = [p for p in loaded if "counts" in p] + [p[part] for p in loaded for part in ("small", "big")
                                                      if part in p]
    if "stalled" in phases:
        groups += [phases["stalled"][k] for k in ("reference", "during")]
    five = sum(g["counts"]["504"] + g["counts"]["5xx"] for g in groups)
    # a request the server never answered (the client gave up) is no better than a 5xx: shown beside it
    unanswered = sum(g["counts"]["timeout"] + g["counts"]["connection_error"] for g in groups)
    if loaded or "stalled" in phases:
        out.append({"target": "zero 5xx (504 included), every request answered",
                    "value": f"{five} × 5xx, {unanswered} unanswered (client time-out or connection error)",
                    "met": five == 0 and unanswered == 0})
    sustainable = phases.get("sustain", {}).get("sustainable_pairs_s", args.sustainable)
    for factor in args.factors:
        p = phases.get(f"open-{factor:g}x")
        if p is None:
            continue
        out.append({"target": f"goodput ≥ {GOODPUT_GOAL:.0%} of sustainable at {factor:g}×",
                    "value": f"{p['goodput_ratio']:.0%} ({p['goodput_pairs_s']:.0f} of {sustainable:.0f} pairs/s)",
                    "met": p["goodput_ratio"] >= GOODPUT_GOAL})
        out.append({"target": f"p99 of admitted ≤ deadline ({args.deadline:g} s) at {factor:g}×",
                    "value": fmt_ms(p["admitted"]["p99_ms"]), "met": p["admitted_p99_within_deadline"]})
        r = p["rejected_429"]
        out.append({"target": f"429 p99 ≤ {ADMITTED_429_MS_GOAL:.0f} ms at {factor:g}×",
                    "value": "no 429" if not r["n"] else f"{fmt_ms(r['p99_ms'])} ({r['n']} × 429)",
                    "met": None if not r["n"] else r["p99_ms"] <= ADMITTED_429_MS_GOAL})
    alone, big = phases.get("mixed-alone"), phases.get("mixed-big")
    if alone and big:
        a, b = alone["small"]["ok"]["p99_ms"], big["small"]["ok"]["p99_ms"]
        ratio = None if not a or b is None else b / a
        # refusing the small requests is not fairness: every one of them must be served too
        refused = big["small"]["requests"] - big["small"]["counts"]["200"]
        big_ok = big["big"]["counts"]["200"]
        out.append({"target": f"small p99 with the big client ≤ {MIXED_RATIO_GOAL:g}× alone, all served",
                    "value": "—" if ratio is None else (f"{ratio:.2f}× ({fmt_ms(b)} vs {fmt_ms(a)}); "
                                                        f"{refused} small not served; {big_ok} big served"),
                    "met": None if ratio is None else ratio <= MIXED_RATIO_GOAL and refused == 0})
    if "stalled" in phases:
        d = phases["stalled"]["during"]
        out.append({"target": "stalled connections: other clients served",
                    "value": f"{d['served']}/{d['requests']} served, p99 {fmt_ms(d['ok']['p99_ms'])}",
                    "met": d["served"] == d["requests"]})
    return out


def big_cells(big: dict | None) -> str:
    if not big:
        return "— | —"
    return f"{big['requests']}: {nonzero(big['counts'])} | {fmt_ms(big['ok']['p50_ms'])}"


def verdict(met: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "n/a"}[met]


def markdown_body(versions: list[dict], args: argparse.Namespace) -> list[str]:
    labels = [v["version"] for v in versions]
    lines = ["## Setup", "",
             f"- model: {common.DISTILLED_NAME}, fp32, onnxruntime, {common.THREADS} threads, max_length "
             f"{common.MAX_LENGTH}; negconstraint pairs sampled at run time (seed {args.seed})",
             f"- deadline {args.deadline:g} s (`--request-timeout` and `{DEADLINE_HEADER}` on every rerank request); "
             f"client time-out {args.client_timeout:g} s per request; connection pool {args.pool}",
             f"- durations: sustain {args.sustain_duration:g} s, open loop {args.duration:g} s per factor "
             f"({', '.join(f'{f:g}×' for f in args.factors)}), mixed {args.mixed_duration:g} s alone + "
             f"{args.mixed_duration:g} s with the big client; stalled: {args.stalled} sockets "
             f"({args.stalled_half} with half a request line), server RLIMIT_NOFILE {args.server_nofile}, "
             f"{args.stalled_requests} requests × {STALLED_DOCS} docs, {STALLED_CONCURRENCY} at a time, "
             f"within {args.stalled_window:g} s"]
    if args.smoke:
        lines.append("- **smoke run** (`--smoke`): phases too short for the numbers to judge the server")
    for v in versions:
        for role, s in v["servers"].items():
            cmd = " ".join(s["command"][1:]).replace(str(common.REPO_ROOT) + "/", "")
            lines.append(f"- {v['version']} ({role}): `python {cmd}`"
                         + (f"; not known to it, left out: {', '.join(s['dropped_flags'])}" if s["dropped_flags"]
                            else ""))
        lines += [f"- {v['version']}: {note}" for note in v.get("notes", [])]
        if v.get("error"):
            lines.append(f"- **{v['version']} failed**: {v['error'][:500]}")
    lines += ["", "## Targets", "", "| target | " + " | ".join(labels) + " |",
              "|---|" + "---|" * len(labels)]
    by_target: dict[str, dict[str, dict]] = {}
    for v in versions:
        for t in v["targets"]:
            by_target.setdefault(t["target"], {})[v["version"]] = t
    for target, cells in by_target.items():
        lines.append(f"| {target} | " + " | ".join(
            f"{cells[label]['value']} — {verdict(cells[label]['met'])}" if label in cells else "—"
            for label in labels) + " |")

    lines += ["", f"## 1. Sustainable rate (closed loop, {SUSTAIN_CLIENTS} clients × {SUSTAIN_DOCS} docs)", "",
              "| version | pairs/s | p50 | p99 | requests | not 200 |", "|---|---:|---:|---:|---:|---|"]
    for v in versions:
        if p := v["phases"].get("sustain"):
            lines.append(f"| {v['version']} | {p['sustainable_pairs_s']:.1f} | {fmt_ms(p['ok']['p50_ms'])} | "
                         f"{fmt_ms(p['ok']['p99_ms'])} | {p['requests']} | {nonzero(p['counts'], skip='200')} |")

    lines += ["", f"## 2. Open loop (Poisson arrivals, {OPEN_DOCS[0]}–{OPEN_DOCS[1]} docs per request)", "",
              "Goodput: pairs/s of 200s completed within the arrival window. Admitted: 200, 504, 5xx and client "
              "time-outs. Latency from the scheduled send time.", "",
              "| version | load | offered pairs/s | requests | 200 | 429 | 504 | other 4xx | 5xx | conn. errors | "
              "time-outs | goodput pairs/s (× sustainable) | p50 / p99 of 200 | p99 admitted | p99 of 429 | "
              "Retry-After | client lag p99 |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for v in versions:
        for factor in args.factors:
            if p := v["phases"].get(f"open-{factor:g}x"):
                c = p["counts"]
                retry = ", ".join(f"{k} s × {n}" for k, n in sorted(p["retry_after"].items())) or "—"
                lines.append(
                    f"| {v['version']} | {factor:g}× | {p['offered_pairs_s']:.0f} | {p['requests']} | {c['200']} | "
                    f"{c['429']} | {c['504']} | {c['4xx']} | {c['5xx']} | {c['connection_error']} | {c['timeout']} | "
                    f"{p['goodput_pairs_s']:.0f} ({p['goodput_ratio']:.2f}×) | {fmt_ms(p['ok']['p50_ms'])} / "
                    f"{fmt_ms(p['ok']['p99_ms'])} | {fmt_ms(p['admitted']['p99_ms'])} | "
                    f"{fmt_ms(p['rejected_429']['p99_ms'])} | {retry} | {fmt_ms(p['client_lag_ms']['p99'])} |")
    stage_rows = [(v["version"], factor, p["rejected_429_by_stage"]) for v in versions for factor in args.factors
                  if (p := v["phases"].get(f"open-{factor:g}x")) and "rejected_429_by_stage" in p]
    if stage_rows:
        lines += ["", "Where the 429s were decided: before the body was read (front door: backlog, or the size "
                  "estimate) or after it was parsed.", "",
                  "| version | load | before body: n, p50 / p99 | after body: n, p50 / p99 |", "|---|---|---|---|"]
        for version, factor, by_stage in stage_rows:
            cells = [f"{r['n']}, {fmt_ms(r['p50_ms'])} / {fmt_ms(r['p99_ms'])}" if r["n"] else "0"
                     for r in (by_stage["before body"], by_stage["after body"])]
            lines.append(f"| {version} | {factor:g}× | {cells[0]} | {cells[1]} |")

    lines += ["", f"## 3. Mixed traffic ({args.mixed_clients} closed-loop clients × {SMALL_DOCS[0]}–{SMALL_DOCS[1]} "
              f"docs, then + 1 client × {args.big_docs} docs)", "",
              "| version | case | small requests | small not 200 | small p50 | small p99 | p99 × alone | "
              "big requests: statuses | big p50 of 200 |", "|---|---|---:|---|---:|---:|---:|---|---:|"]
    for v in versions:
        alone_p99 = v["phases"].get("mixed-alone", {}).get("small", {}).get("ok", {}).get("p99_ms")
        for name in ("mixed-alone", "mixed-big"):
            if p := v["phases"].get(name):
                s, b = p["small"], p.get("big")
                ratio = (f"{s['ok']['p99_ms'] / alone_p99:.2f}×" if alone_p99 and s["ok"]["p99_ms"] is not None
                         else "—")
                lines.append(f"| {v['version']} | {name.removeprefix('mixed-')} | {s['requests']} | "
                             f"{nonzero(s['counts'], skip='200')} | {fmt_ms(s['ok']['p50_ms'])} | "
                             f"{fmt_ms(s['ok']['p99_ms'])} | {ratio} | {big_cells(b)} |")

    lines += ["", "## 4. Stalled connections", "",
              "| version | sockets held (connect failures) | reference: served, p50 / p99 | with stalled sockets: "
              "served, p50 / p99, not served | stalled sockets at release | recovered after release |",
              "|---|---:|---|---|---|---|"]
    for v in versions:
        if p := v["phases"].get("stalled"):
            r, d = p["reference"], p["during"]
            rel = p["stalled_at_release"]
            rec = ("—" if p["recovered_after_release_s"] is None
                   else f"{p['recovered_after_release_s']:.1f} s")
            lines.append(f"| {v['version']} | {p['sockets']} ({p['connect_failures']}) | "
                         f"{r['served']}/{r['requests']}, {fmt_ms(r['ok']['p50_ms'])} / {fmt_ms(r['ok']['p99_ms'])} | "
                         f"{d['served']}/{d['requests']}, "
                         f"{fmt_ms(d['ok']['p50_ms'])} / {fmt_ms(d['ok']['p99_ms'])}, "
                         f"{nonzero(d['counts'], skip='200')} | open {rel['open']}, answered {rel['answered']}, "
                         f"closed {rel['closed']} (held {p['held_s']:.0f} s) | {rec} |")

    lines += ["", f"## 5. Health (GET /health every {HEALTH_INTERVAL_S * 1e3:.0f} ms, fresh connection, "
              f"{HEALTH_TIMEOUT_S:g} s time-out)", "",
              "| version | phase | probes | failures | p50 of 200s | p99 of 200s | max of 200s |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for v in versions:
        for phase, h in v["health"].items():
            lines.append(f"| {v['version']} | {phase} | {h['probes']} | {h['failures']} | {fmt_ms(h['p50_ms'])} | "
                         f"{fmt_ms(h['p99_ms'])} | {fmt_ms(h['max_ms'])} |")
    return lines


def report_rows(versions: list[dict], args: argparse.Namespace) -> list[dict]:
    settings = {k: v for k, v in vars(args).items() if k not in ("out",)}
    rows: list[dict] = [{"phase": "settings", **settings}]
    for v in versions:
        rows.append({"version": v["version"], "phase": "servers", "servers": v["servers"], "error": v.get("error")})
        rows += [{"version": v["version"], "phase": name, **p} for name, p in v["phases"].items()]
        rows.append({"version": v["version"], "phase": "health", "health": v["health"]})
        rows.append({"version": v["version"], "phase": "targets", "targets": v["targets"]})
    return rows


# ---------------------------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------------------------
def raise_own_nofile(needed: int) -> None:
    """The benchmark holds the stalled sockets and the pool: lift its soft file limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        say(f"warning: this process may open only {target} files; the run needs about {needed}")


async def drive(args: argparse.Namespace, run_dir: Path) -> list[dict]:
    model = common.prepare_model(common.DISTILLED_NAME, WORK, None, precisions=("fp32",))
    versions = []
    if args.base:
        versions.append(Version(f"base {args.base}", base_import_path(args.base)))
    versions.append(Version("this tree"))
    results = []
    for version in versions:
        try:
            version.flags = detect_flags(version, run_dir)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            say(str(exc))
            results.append({"version": version.label, "phases": {}, "servers": {}, "health": {}, "error": str(exc)})
            continue
        say(f"{version.label}: newer server options known: "
            f"{', '.join(f for f in NEW_SERVER_FLAGS if f in version.flags) or 'none'}")
        results.append(await run_version(version, model.artifact_dir, args, run_dir))
    for v in results:
        v["targets"] = targets(v, args)
    return results


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--base", help="also run every phase against the server of this commit (before vs after)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny durations, fewer stalled sockets (and a lower server file limit): ~1 minute per "
                             "version; checks the script, not the server")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--sustain-duration", type=float, help="phase 1 seconds (default 30; smoke 5)")
    parser.add_argument("--duration", type=float, help="phase 2 seconds per factor (default 60; smoke 5)")
    parser.add_argument("--factors", default="2,4", help="open-loop loads, × the sustainable pair rate")
    parser.add_argument("--mixed-duration", type=float, help="phase 3 seconds, alone and again with the big "
                        "client (default 60; smoke 5)")
    parser.add_argument("--mixed-clients", type=int, default=4)
    parser.add_argument("--big-docs", type=int, default=3000)
    parser.add_argument("--stalled", type=int, help="stalled sockets (default 1100; smoke 300)")
    parser.add_argument("--stalled-half", type=int, help="of which send half a request line (default 100; smoke 30)")
    parser.add_argument("--stalled-requests", type=int, default=56)
    parser.add_argument("--stalled-window", type=float, help="seconds the stalled burst may take (default 45; "
                        "smoke 15)")
    parser.add_argument("--server-nofile", type=int, help="RLIMIT_NOFILE of the phase-4 server (default 1024, "
                        "systemd's; smoke 256 so that 300 sockets exhaust it)")
    parser.add_argument("--deadline", type=float, default=10.0, help="request deadline in seconds")
    parser.add_argument("--big-deadline", type=float, default=180.0,
                        help="deadline of the mixed phase's 3,000-document requests; the server's --request-timeout "
                             "is the larger of the two (older servers ignore the header and use it for everything)")
    parser.add_argument("--client-timeout", type=float, help="hard time-out per client call (default deadline + 10)")
    parser.add_argument("--pool", type=int, default=2048, help="connections of the load generator's client")
    parser.add_argument("--sustainable", type=float, help="pairs/s to use when the sustain phase is skipped")
    parser.add_argument("--settle-max", type=float, help="most seconds to wait for an empty queue (default 30; "
                        "smoke 5)")
    parser.add_argument("--settle-min", type=float, default=1.0, help="pause after the queue is empty")
    parser.add_argument("--settle-fallback", type=float, default=3.0, help="pause when /metrics has no queue gauge")
    parser.add_argument("--max-concurrent-requests", type=int, help="passed to servers that know it")
    parser.add_argument("--header-timeout", type=float, help="passed to servers that know it")
    parser.add_argument("--max-connections", type=int, help="passed to servers that know it")
    parser.add_argument("--drain-grace", type=float, help="passed to servers that know it")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="--FLAG[=VALUE]",
                        help="more `serve` options, e.g. --serve-arg=--max-queued-pairs=20000 (left out for a "
                             "version that does not know the flag)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    defaults = {  # (full run, smoke)
        "sustain_duration": (30.0, 5.0), "duration": (60.0, 5.0), "mixed_duration": (60.0, 5.0),
        "stalled": (1100, 300), "stalled_half": (100, 30), "stalled_window": (45.0, 15.0),
        "server_nofile": (1024, 256), "settle_max": (30.0, 5.0)}
    for name, (full, smoke) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.client_timeout is None:
        args.client_timeout = args.deadline + 10.0
    args.factors = [float(f) for f in args.factors.split(",")]
    args.phases = [p for p in args.phases.split(",") if p]
    common.refuse_unknown({"phase": (args.phases, list(PHASES))})
    args.stalled_half = min(args.stalled_half, args.stalled)
    return args


def main() -> None:
    args = parse_args(sys.argv[1:])
    raise_own_nofile(args.stalled + args.pool + 256)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = WORK / "runs" / f"overload-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    environment = common.run_environment(("fastapi", "uvicorn", "httpx", "prometheus_client"))
    try:
        versions = asyncio.run(drive(args, run_dir))
    finally:
        for proc in list(RUNNING):  # only the servers this script started
            stop_process(proc, grace_s=5.0)
    body = markdown_body(versions, args)
    body += ["", f"Server logs: `{run_dir.relative_to(common.REPO_ROOT)}/`"]
    common.write_report(args.out, "overload", "Overload load test: rerankrt serve",
                        "python benchmarks/bench_overload.py " + " ".join(sys.argv[1:]), environment,
                        report_rows(versions, args), body)


if __name__ == "__main__":
    main()
