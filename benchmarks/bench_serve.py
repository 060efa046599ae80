"""HTTP serving under load: ``rerankrt serve`` vs a naive endpoint vs sentence-transformers + FastAPI.

One command::

    python benchmarks/bench_serve.py --out benchmarks/results

Every system runs in its own server process on 127.0.0.1 (2 threads); a bounded, closed-loop
load generator (asyncio + httpx) sends a fixed number of requests, each one negconstraint query ×
100 documents (sampled from ../shared/data at run time), at concurrency 1, 4, 16 and 64, and
records throughput (pairs/s) and p50/p95/p99 latency per level. The same pairs are also scored
offline in a fresh process (``Reranker.predict``, median of 3 passes, and one in-process ``rank``
call per request for the latency baseline). Finally an open-loop overload phase offers 4× the
measured capacity to a rerankrt server with a small queue: accepted requests' latency, 429s and
5xx. Results: ``serve-<stamp>.json`` and a markdown summary with the hardware.

Model: the distilled 17m (``../shared/models/ettin-17m-distilled``), exported once into
``benchmarks/work`` and reused; rerankrt picks its backend and precision with ``auto``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import common
from common import say

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
LEVELS = (1, 4, 16, 64)
DOCS_PER_REQUEST = 100
SMALL_DOCS, SMALL_REQUESTS = 10, 160  # the extra small-request level (1 query × 10 documents, c=16)
OVERLOAD_FACTOR = 4
OVERLOAD_QUEUE_PAIRS = 1000  # the overload server's queue: 10 requests' worth


def requests_for_level(concurrency: int) -> int:
    return max(12, 2 * concurrency)


def build_requests(n: int, seed: int = 0, docs: int = DOCS_PER_REQUEST) -> list[dict]:
    rng = random.Random(seed)
    queries = common.read_texts(common.NEGCONSTRAINT_DIR / "queries.jsonl")
    corpus = common.read_texts(common.NEGCONSTRAINT_DIR / "corpus.jsonl")
    return [{"query": rng.choice(queries), "documents": rng.sample(corpus, docs)} for _ in range(n)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- offline reference (fresh process) ---------------------------------------------------------
def offline_main(args: argparse.Namespace) -> None:
    from rerankrt.engine import Reranker

    requests = json.loads(Path(args.requests).read_text())
    reranker = Reranker.from_pretrained(args.artifact, threads=common.THREADS, max_length=common.MAX_LENGTH)
    pairs = [(r["query"], d) for r in requests for d in r["documents"]]
    reranker.predict(pairs[:200])
    passes = common.pass_seconds(lambda: reranker.predict(pairs))
    rank_ms = []
    for r in requests[:12]:
        started = time.perf_counter()
        reranker.rank(r["query"], r["documents"])
        rank_ms.append(1000 * (time.perf_counter() - started))
    out = {"pairs": len(pairs), "pairs_per_s": len(pairs) / statistics.median(passes),
           "pass_s": passes, "rank_ms": rank_ms, "rank_p50_ms": float(np.percentile(rank_ms, 50)),
           "rank_p99_ms": float(np.percentile(rank_ms, 99)), "backend": reranker.backend.name,
           "precision": reranker.precision}
    Path(args.result).write_text(json.dumps(out))


# -- servers -------------------------------------------------------------------------------------
SERVE_ARGS: list[str] = []  # extra `rerankrt serve` options (--serve-args)


def start_server(system: str, artifact: Path, model_dir: Path, port: int, queue_pairs: int | None = None):
    if system == "rerankrt":
        cmd = [sys.executable, "-m", "rerankrt.engine.cli", "serve", str(artifact), "--port", str(port),
               "--threads", str(common.THREADS), "--max-length", str(common.MAX_LENGTH), "--log-level", "warning",
               *SERVE_ARGS]
        if queue_pairs:
            cmd += ["--max-queued-pairs", str(queue_pairs), "--max-documents", str(min(queue_pairs, 10_000))]
    else:
        source = artifact if system == "naive" else model_dir
        cmd = [sys.executable, str(HERE / "serve_baselines.py"), system, str(source), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx

    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{system} server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{system} server did not become healthy")


def server_peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- load ----------------------------------------------------------------------------------------
async def closed_loop(url: str, requests: list[dict], concurrency: int, count_header: str | None = None) -> dict:
    """``concurrency`` clients, each sending its next request as soon as the last one returned.

    ``count_header``: also count the 200s by that response header's value (``by_header``: counts, largest
    first), e.g. which Ray Serve replica answered."""
    import httpx

    todo = iter(requests)
    latencies, statuses, pairs = [], [], 0
    by_header: dict[str, int] = {}

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal pairs
        for body in todo:
            started = time.perf_counter()
            response = await client.post(url, json=body)
            latencies.append(time.perf_counter() - started)
            statuses.append(response.status_code)
            pairs += len(body["documents"]) if response.status_code == 200 else 0
            if count_header and response.status_code == 200:
                value = response.headers.get(count_header, "-")
                by_header[value] = by_header.get(value, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ok = [lat for lat, s in zip(latencies, statuses) if s == 200]
    return {"concurrency": concurrency, "requests": len(requests), "docs_per_request": len(requests[0]["documents"]),
            "ok": len(ok), "errors": {str(s): statuses.count(s) for s in set(statuses) if s != 200},
            "seconds": elapsed, "pairs_per_s": pairs / elapsed, **percentiles(ok),
            **({"by_header": sorted(by_header.values(), reverse=True)} if count_header else {})}


async def open_loop(url: str, requests: list[dict], rate: float) -> dict:
    """Requests sent at a fixed ``rate`` per second whatever the server does (overload)."""
    import httpx

    results: list[tuple[int, float]] = []

    async def one(client: httpx.AsyncClient, body: dict) -> None:
        started = time.perf_counter()
        try:
            status = (await client.post(url, json=body)).status_code
        except httpx.HTTPError:
            status = -1
        results.append((status, time.perf_counter() - started))

    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        tasks = []
        for k, body in enumerate(requests):
            await asyncio.sleep(max(0.0, started + k / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(client, body)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    accepted = [lat for s, lat in results if s == 200]
    statuses = [s for s, _ in results]
    return {"offered_rate_per_s": rate, "requests": len(requests), "accepted": len(accepted),
            "rejected_429": statuses.count(429), "server_errors_5xx": sum(1 for s in statuses if s >= 500),
            "transport_errors": statuses.count(-1), "seconds": elapsed,
            "accepted_pairs_per_s": DOCS_PER_REQUEST * len(accepted) / elapsed, **percentiles(accepted)}


def percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    ms = 1000 * np.asarray(latencies)
    return {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 95, 99)}


def measure_system(system: str, artifact: Path, model_dir: Path, levels: list[int], requests: list[dict]) -> dict:
    port = free_port()
    say(f"{system}: starting on port {port}")
    proc = start_server(system, artifact, model_dir, port)
    url = f"http://127.0.0.1:{port}/v1/rerank"
    try:
        asyncio.run(closed_loop(url, requests[:2], 1))  # warm-up
        rows = []
        for level in levels:
            row = asyncio.run(closed_loop(url, requests[:requests_for_level(level)], level))
            say(f"  {system} c={level}: {row['pairs_per_s']:.1f} pairs/s, p50 {row['p50_ms']:.0f} ms, "
                f"p99 {row['p99_ms']:.0f} ms, errors {row['errors']}")
            rows.append(row)
        if system in ("rerankrt", "naive"):  # where cross-request batching matters: many small requests
            small = build_requests(SMALL_REQUESTS, seed=2, docs=SMALL_DOCS)
            row = asyncio.run(closed_loop(url, small, 16))
            say(f"  {system} c=16 × {SMALL_DOCS} docs: {row['pairs_per_s']:.1f} pairs/s, p50 {row['p50_ms']:.0f} ms, "
                f"p99 {row['p99_ms']:.0f} ms, errors {row['errors']}")
            rows.append(row)
        return {"system": system, "levels": rows, "server_peak_rss_mib": server_peak_rss_mib(proc.pid)}
    finally:
        stop_server(proc)


def measure_overload(artifact: Path, model_dir: Path, capacity_req_s: float, requests: list[dict]) -> dict:
    port = free_port()
    proc = start_server("rerankrt", artifact, model_dir, port, queue_pairs=OVERLOAD_QUEUE_PAIRS)
    try:
        rate = OVERLOAD_FACTOR * capacity_req_s
        result = asyncio.run(open_loop(f"http://127.0.0.1:{port}/v1/rerank", requests, rate))
        import httpx

        result["healthy_after"] = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        result["queue_pairs"] = OVERLOAD_QUEUE_PAIRS
        return result
    finally:
        stop_server(proc)


# -- report --------------------------------------------------------------------------------------
def targets(report: dict) -> list[dict]:
    by = {s["system"]: {row["concurrency"]: row for row in s["levels"] if row["docs_per_request"] == DOCS_PER_REQUEST}
          for s in report["systems"]}
    offline = report["offline"]
    out = []
    if 16 in by.get("rerankrt", {}):
        ours = by["rerankrt"][16]["pairs_per_s"]
        out.append({"target": "c=16 throughput ≥ 85% of offline predict", "value": ours / offline["pairs_per_s"],
                    "goal": 0.85, "detail": f"{ours:.1f} vs {offline['pairs_per_s']:.1f} pairs/s"})
        if 16 in by.get("st", {}):
            st = by["st"][16]["pairs_per_s"]
            out.append({"target": "c=16 throughput ≥ 1.5× sentence-transformers + FastAPI", "value": ours / st,
                        "goal": 1.5, "detail": f"{ours:.1f} vs {st:.1f} pairs/s"})
    if 1 in by.get("rerankrt", {}):
        p99 = by["rerankrt"][1]["p99_ms"]
        out.append({"target": "c=1 p99 ≤ 1.3× one in-process rank call", "value": p99 / offline["rank_p99_ms"],
                    "goal": 1.3, "lower_is_better": True,
                    "detail": f"{p99:.0f} ms vs rank p99 {offline['rank_p99_ms']:.0f} ms "
                              f"(p50 {offline['rank_p50_ms']:.0f})"})
    if report.get("overload"):
        o = report["overload"]
        out.append({"target": "4× overload: zero 5xx, the rest 429, healthy after",
                    "value": float(o["server_errors_5xx"] + o["transport_errors"] == 0 and o["healthy_after"]
                                   and o["accepted"] + o["rejected_429"] == o["requests"]),
                    "goal": 1.0, "detail": f"{o['accepted']} accepted, {o['rejected_429']} × 429, "
                    f"{o['server_errors_5xx']} × 5xx; accepted p99 {fmt_ms(o['p99_ms'])}"})
    for t in out:
        t["met"] = t["value"] <= t["goal"] if t.get("lower_is_better") else t["value"] >= t["goal"]
    return out


def fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"


def markdown(report: dict, command: str) -> str:
    env = report["environment"]
    lines = [f"# Serving benchmark — {report['stamp']}", "", f"Command: `{command}`", "", "## Hardware", "",
             *common.hardware_lines(env), common.load_line(env), "- versions: " + ", ".join(
                 f"{k} {v}" for k, v in env["versions"].items()), "",
             "## Setup", "",
             f"- model: distilled 17m, max_length {common.MAX_LENGTH}; every request = 1 negconstraint query × "
             f"{DOCS_PER_REQUEST} documents; closed loop, requests per level = max(12, 2 × concurrency)",
             f"- offline reference (fresh process, {report['offline']['backend']} {report['offline']['precision']}): "
             f"predict {report['offline']['pairs_per_s']:.1f} pairs/s on the c=16 pairs (median of 3); one "
             f"in-process rank call p50 {report['offline']['rank_p50_ms']:.0f} ms, p99 "
             f"{report['offline']['rank_p99_ms']:.0f} ms",
             "- `rerankrt`: `rerankrt serve` (cross-request batching); `naive`: the same engine in an `async def` "
             "endpoint, one request at a time; `st`: sentence-transformers CrossEncoder in a plain `def` FastAPI "
             "endpoint", "",
             "## Closed loop", "",
             "| system | concurrency | requests × docs | pairs/s | p50 | p95 | p99 | errors | server peak RSS |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for s in report["systems"]:
        for row in s["levels"]:
            rss = s.get("server_peak_rss_mib")
            lines.append(f"| {s['system']} | {row['concurrency']} | {row['requests']} × {row['docs_per_request']} | "
                         f"{row['pairs_per_s']:.1f} | "
                         f"{fmt_ms(row['p50_ms'])} | {fmt_ms(row['p95_ms'])} | {fmt_ms(row['p99_ms'])} | "
                         f"{row['errors'] or '—'} | {'—' if rss is None else f'{rss:.0f} MiB'} |")
    if report.get("overload"):
        o = report["overload"]
        lines += ["", "## Overload (open loop)", "",
                  f"rerankrt serve with `--max-queued-pairs {o['queue_pairs']}`; {o['requests']} requests offered at "
                  f"{o['offered_rate_per_s']:.1f}/s ({OVERLOAD_FACTOR}× the c=16 capacity): {o['accepted']} accepted "
                  f"(p50 {fmt_ms(o['p50_ms'])}, p99 {fmt_ms(o['p99_ms'])}), {o['rejected_429']} × 429 with "
                  f"Retry-After, {o['server_errors_5xx']} × 5xx, {o['transport_errors']} transport errors; "
                  f"healthy afterwards: {o['healthy_after']}."]
    lines += ["", "## Targets (this run)", "", "| target | result | goal | |", "|---|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['value']:.2f} — {t['detail']} | {t['goal']} | "
                     f"{'**met**' if t['met'] else '**missed**'} |")
    return "\n".join(lines) + "\n"


def driver_main(args: argparse.Namespace) -> None:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M")
    run_dir = WORK / "runs" / f"serve-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import openvino  # noqa: F401

        precisions = ("fp32", "bf16", "int8")
    except ImportError:
        precisions = ("fp32", "int8")
    model = common.prepare_model(common.DISTILLED_NAME, WORK, None, precisions=precisions)
    levels = [int(x) for x in args.levels.split(",")]
    requests = build_requests(max(requests_for_level(c) for c in levels) + 64)
    requests_file = run_dir / "requests.json"
    requests_file.write_text(json.dumps(requests[:requests_for_level(16)]))
    environment = common.run_environment(("fastapi", "uvicorn", "openvino"), auto_artifacts=(model.artifact_dir,))

    say("offline reference")
    result_file = run_dir / "offline.json"
    subprocess.run([sys.executable, __file__, "--offline", "--artifact", str(model.artifact_dir), "--requests",
                    str(requests_file), "--result", str(result_file)], check=True)
    offline = json.loads(result_file.read_text())
    say(f"  offline predict {offline['pairs_per_s']:.1f} pairs/s, rank p50 {offline['rank_p50_ms']:.0f} ms")

    systems = []
    for system in args.systems.split(","):
        systems.append(measure_system(system, model.artifact_dir, model.source_dir, levels, requests))
    report = {"stamp": stamp, "environment": environment, "offline": offline, "systems": systems}
    ours = next((s for s in systems if s["system"] == "rerankrt"), None)
    if ours and not args.no_overload:
        best = max(row["pairs_per_s"] for row in ours["levels"] if row["docs_per_request"] == DOCS_PER_REQUEST)
        say("overload")
        report["overload"] = measure_overload(model.artifact_dir, model.source_dir, best / DOCS_PER_REQUEST,
                                              build_requests(args.overload_requests, seed=1))
        say(f"  {report['overload']}")
    report["targets"] = targets(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"serve-{stamp}.json").write_text(json.dumps(report, indent=1))
    summary = markdown(report, "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:]))
    (out / f"serve-{stamp}.md").write_text(summary)
    (out / "LATEST-serve.md").write_text(summary)
    print(summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--systems", default="rerankrt,naive,st")
    parser.add_argument("--overload-requests", type=int, default=120)
    parser.add_argument("--no-overload", action="store_true")
    parser.add_argument("--serve-args", default="",
                        help="extra options for `rerankrt serve`, e.g. '--window-tokens 65536'")
    parser.add_argument("--offline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", help=argparse.SUPPRESS)
    parser.add_argument("--requests", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    SERVE_ARGS.extend(args.serve_args.split())
    if args.offline:
        offline_main(args)
    else:
        driver_main(args)


if __name__ == "__main__":
    main()
