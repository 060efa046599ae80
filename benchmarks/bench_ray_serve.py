"""Ray Serve replicas vs ``rerankrt serve`` on the same machine, same requests, same run (issue 18, item 3).

One command::

    python benchmarks/bench_ray_serve.py --out benchmarks/results

Systems, one at a time on 127.0.0.1, each in its own process tree: ``rerankrt serve`` (one process,
``--threads`` = cores), and for each ``--replicas`` count R a local Ray instance (``ray.init(num_cpus=
cores)``) running ``rerankrt.engine.integrations.ray_serve.build_app`` with R replicas of cores / R
threads (replicas × threads = cores) behind Serve's HTTP proxy. Every system loads the same graph: the
configuration ``auto`` picks here at cores threads (or ``--precision``/``--backend``), ``max_length``
512. A closed-loop load generator (asyncio + httpx, in this process) sends the same requests to each,
one negconstraint query × 50 documents (sampled from ../shared/data at run time), at each
concurrency level, and records pairs/s, p50/p95/p99 latency, errors and which replica answered
(the ``x-rerankrt-replica`` header). Also per system: seconds from spawn to ready, the process tree's
RSS after the load, and a stalled-socket probe (``--stalled`` sockets each send half a request head;
how many the server has closed ``--header-timeout`` + 3 s later, and whether a real request still
succeeds), the connection-level difference the Ray Serve module's docstring describes.

Results: ``ray-serve-<stamp>.json`` and ``.md`` (with the hardware) in ``--out``. ``--smoke`` checks the
script in a few seconds per system (tiny random-weight model, fp32, 10 documents, short levels) and
writes into ``benchmarks/work/smoke-results`` unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench_serve import build_requests, closed_loop, fmt_ms, free_port

import common
from common import say

REPLICA_HEADER = "x-rerankrt-replica"  # the Serve replica that answered (integrations/ray_serve.py)

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
DOCS_PER_REQUEST = 50
LEVELS = (1, 4, 16, 32)


def requests_for_level(concurrency: int, smoke: bool) -> int:
    return 6 if smoke else max(16, 3 * concurrency)


# -- the Ray side: a worker process that owns a local Ray instance and one Serve application -------
def ray_worker_main(args: argparse.Namespace) -> None:
    import ray
    from ray import serve

    from rerankrt.engine.integrations.ray_serve import build_app

    def stop(signum, frame) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(build_app({"model": args.artifact}, num_replicas=args.replicas, threads=args.threads,
                            precision=args.precision, backend=args.backend, max_length=args.max_length),
                  name="rerankrt", route_prefix="/")
        Path(args.ready_file).write_text("ready")
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        ray.shutdown()


# -- servers -------------------------------------------------------------------------------------
class System:
    def __init__(self, name: str, replicas: int | None, threads: int) -> None:
        self.name, self.replicas, self.threads = name, replicas, threads
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.ready_s: float | None = None

    def start(self, artifact: Path, setup: dict, run_dir: Path) -> None:
        started = time.time()
        if self.replicas is None:
            cmd = [sys.executable, "-m", "rerankrt.engine.cli", "serve", str(artifact), "--port", str(self.port),
                   "--threads", str(self.threads), "--max-length", str(setup["max_length"]), "--precision",
                   setup["precision"], "--backend", setup["backend"], "--header-timeout",
                   str(setup["header_timeout_s"]), "--log-level", "warning"]
            ready_file = None
        else:
            ready_file = run_dir / f"{self.name}.ready"
            ready_file.unlink(missing_ok=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--ray-worker", "--artifact", str(artifact),
                   "--replicas", str(self.replicas), "--threads", str(self.threads), "--cpus", str(setup["cores"]),
                   "--port", str(self.port), "--precision", setup["precision"], "--backend", setup["backend"],
                   "--max-length", str(setup["max_length"]), "--ready-file", str(ready_file)]
        log = (run_dir / f"{self.name}.log").open("wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        import httpx

        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {run_dir / (self.name + '.log')}")
            if ready_file is None or ready_file.exists():
                try:
                    if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200:
                        self.ready_s = time.time() - started
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready")

    def tree_rss_mib(self) -> float | None:
        """Resident memory of the server's process tree (Ray: GCS, raylet, controller, proxy, replicas, …)."""
        try:
            import psutil
        except ImportError:
            return None
        if self.proc is None:
            return None
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):  # a process that ended meanwhile
                total += p.memory_info().rss
        return total / 2**20

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session this script started for it
            self.proc.wait()


# -- load ----------------------------------------------------------------------------------------
def stalled_probe(system: System, sockets: int, wait_s: float) -> dict:
    """``sockets`` connections that send half a request head and stall: how many the server closed after ``wait_s``."""
    import httpx

    opened = []
    for _ in range(sockets):
        sock = socket.create_connection(("127.0.0.1", system.port), timeout=5)
        sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: applic")
        opened.append(sock)
    time.sleep(wait_s)
    closed = 0
    for sock in opened:
        sock.setblocking(False)
        try:
            sock.recv(65536)  # b"" (closed) or an error response: the server gave up on it
            closed += 1
        except BlockingIOError:
            pass  # still open, still waiting for the rest of the head
        except OSError:
            closed += 1  # reset
        finally:
            sock.close()
    try:
        after = httpx.post(f"{system.url}/v1/rerank", json={"query": "q", "documents": ["a", "b"]}, timeout=30)
        status = after.status_code
    except httpx.HTTPError:
        status = -1
    return {"stalled_sockets": sockets, "waited_s": wait_s, "closed_by_server": closed,
            "real_request_after": status}


def measure(system: System, artifact: Path, setup: dict, levels: list[int], requests: list[dict],
            run_dir: Path) -> dict:
    say(f"{system.name}: starting (port {system.port})")
    system.start(artifact, setup, run_dir)
    say(f"  ready in {system.ready_s:.1f} s")
    try:
        warm = requests[:2 * (system.replicas or 1)]
        asyncio.run(closed_loop(f"{system.url}/v1/rerank", warm, len(warm), REPLICA_HEADER))
        rows = []
        for level in levels:
            batch = requests[:requests_for_level(level, setup["smoke"])]
            row = asyncio.run(closed_loop(f"{system.url}/v1/rerank", batch, level, REPLICA_HEADER))
            say(f"  c={level}: {row['pairs_per_s']:.1f} pairs/s, p50 {fmt_ms(row['p50_ms'])}, p99 "
                f"{fmt_ms(row['p99_ms'])}, errors {row['errors'] or '-'}, by replica {row['by_header']}")
            rows.append(row)
        rss = system.tree_rss_mib()
        probe = None
        if setup["stalled"]:
            probe = stalled_probe(system, setup["stalled"], setup["header_timeout_s"] + 3)
            say(f"  stalled sockets: {probe['closed_by_server']}/{probe['stalled_sockets']} closed by the server after "
                f"{probe['waited_s']:g} s; a real request after: {probe['real_request_after']}")
        return {"system": system.name, "replicas": system.replicas, "threads_per_replica": system.threads,
                "ready_s": system.ready_s, "tree_rss_mib": rss, "levels": rows, "stalled_probe": probe}
    finally:
        system.stop()


# -- report --------------------------------------------------------------------------------------
def describe(s: dict) -> str:
    threads = f"{s['threads_per_replica']} thread{'s' if s['threads_per_replica'] > 1 else ''}"
    if s["replicas"] is None:
        return f"1 process × {threads}"
    return f"{s['replicas']} replica{'s' if s['replicas'] > 1 else ''} × {threads}"


def markdown(report: dict, command: str) -> str:
    env, setup = report["environment"], report["setup"]
    lines = [f"# Ray Serve vs rerankrt serve — {report['stamp']}", "", f"Command: `{command}`", ""]
    if setup["smoke"]:
        lines += ["- **smoke run** (`--smoke`): tiny random-weight model, short levels; the numbers only check the "
                  "script", ""]
    lines += ["## Hardware", "", *common.hardware_lines(env)[:1],
              f"- threads here: replicas × threads = {setup['cores']} cores for every system (the line above is "
              "common.py's default for the other benchmarks)", *common.hardware_lines(env)[1:],
              common.load_line(env), "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()), "",
              "## Setup", "",
              f"- model: {setup['model']}, {setup['precision']} on {setup['backend']}"
              + (f" ({setup['inference_precision']} between the int8 matmuls)" if setup["inference_precision"] else "")
              + f" for every system ({setup['precision_source']}), max_length {setup['max_length']}",
              f"- every request: 1 negconstraint query × {setup['docs_per_request']} documents to `/v1/rerank`; closed "
              f"loop, the same requests for every system; requests per level: {setup['requests_per_level']}",
              "- `rerankrt serve`: one process, uvicorn + the connection guard; `ray-serve-R`: a local Ray instance "
              f"(`ray.init(num_cpus={setup['cores']})`), Serve's HTTP proxy, R replicas of the same app "
              "(`integrations/ray_serve.py`), `max_ongoing_requests` 512; the load generator runs in the driver on "
              "the same cores",
              "", "## Closed loop", "",
              "| system | layout | concurrency | requests × docs | pairs/s | p50 | p95 | p99 | errors | by replica |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for s in report["systems"]:
        for row in s["levels"]:
            lines.append(f"| {s['system']} | {describe(s)} | {row['concurrency']} | {row['requests']} × "
                         f"{row['docs_per_request']} | {row['pairs_per_s']:.1f} | {fmt_ms(row['p50_ms'])} | "
                         f"{fmt_ms(row['p95_ms'])} | {fmt_ms(row['p99_ms'])} | {row['errors'] or '—'} | "
                         f"{'/'.join(map(str, row['by_header'])) if s['replicas'] else '—'} |")
    lines += ["", "## Start-up, memory, stalled connections", "",
              "| system | spawn → ready | RSS of the process tree after the load | stalled sockets closed by the "
              "server | a real request after |", "|---|---:|---:|---|---:|"]
    for s in report["systems"]:
        p = s["stalled_probe"]
        rss = s["tree_rss_mib"]
        lines.append(f"| {s['system']} | {s['ready_s']:.1f} s | {'—' if rss is None else f'{rss:,.0f} MiB'} | "
                     + (f"{p['closed_by_server']} of {p['stalled_sockets']} after {p['waited_s']:g} s"
                        f" | {p['real_request_after']} |" if p else "— | — |"))
    if setup["stalled"]:
        lines += ["", f"Stalled sockets send `POST /v1/rerank HTTP/1.1` and part of the headers, then nothing; "
                  f"`rerankrt serve` ran with `--header-timeout {setup['header_timeout_s']:g}`. Serve's proxy has no "
                  "request-head timeout (see the module docstring of `integrations/ray_serve.py`)."]
    return "\n".join(lines) + "\n"


def resolve_configuration(args: argparse.Namespace, artifact: Path, cores: int) -> tuple[str, str, str]:
    """``(precision, backend, how)``: the flags, or what ``auto`` loads here at ``cores`` threads, for every system."""
    if args.precision != "auto" and args.backend != "auto":
        return args.precision, args.backend, "given"
    record = common.auto_record(artifact, threads=cores)
    if "config" in record:
        config = record["config"]
        precision, backend = config["precision"], config["backend"]
    elif "choice" in record:
        precision, backend = record["choice"].split(" on ")[:2]
    else:
        raise SystemExit(f"could not tell what auto loads: {record}; pass --precision and --backend")
    precision = precision if args.precision == "auto" else args.precision
    backend = backend.split(" ")[0] if args.backend == "auto" else args.backend
    return precision, backend, f"auto's choice here at {cores} threads: {record.get('choice')}"


def driver_main(args: argparse.Namespace) -> None:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M")
    run_dir = WORK / "runs" / f"ray-serve-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cores = args.cores or os.cpu_count() or 1
    replica_counts = [int(x) for x in args.replicas.split(",") if x]
    for r in replica_counts:
        if r < 1 or cores % r:
            raise SystemExit(f"--replicas {r}: replicas × threads must equal the {cores} cores")
    if args.smoke:
        model = common.prepare_model("tiny", WORK, None)
        args.precision = args.precision if args.precision != "auto" else "fp32"
        args.backend = args.backend if args.backend != "auto" else "onnxruntime"
    else:
        model = common.prepare_model(common.DISTILLED_NAME, WORK, None)
    precision, backend, how = resolve_configuration(args, model.artifact_dir, cores)
    from rerankrt.engine.artifact import load_artifact
    from rerankrt.engine.selection import choose_inference_precision

    between = choose_inference_precision(load_artifact(model.artifact_dir), precision, backend)
    levels = [int(x) for x in (args.levels or ("1,4" if args.smoke else ",".join(map(str, LEVELS)))).split(",")]
    docs = 10 if args.smoke else DOCS_PER_REQUEST
    requests = build_requests(max(requests_for_level(c, args.smoke) for c in levels), docs=docs)
    stalled = args.stalled if args.stalled is not None else (8 if args.smoke else 32)
    header_timeout = args.header_timeout if args.header_timeout is not None else (2.0 if args.smoke else 10.0)
    setup = {"model": model.name, "precision": precision, "backend": backend, "precision_source": how,
             "inference_precision": between, "max_length": common.MAX_LENGTH, "cores": cores,
             "docs_per_request": docs, "smoke": args.smoke,
             "requests_per_level": "6" if args.smoke else "max(16, 3 × concurrency)", "stalled": stalled,
             "header_timeout_s": header_timeout, "levels": levels}
    environment = common.run_environment(("ray", "fastapi", "uvicorn", "openvino"),
                                         auto_artifacts=() if args.smoke else (model.artifact_dir,))
    say(f"{model.name}: {precision} on {backend} ({how}); {cores} cores; levels {levels}")

    systems = [System("rerankrt-serve", None, cores)]
    systems += [System(f"ray-serve-{r}", r, cores // r) for r in replica_counts]
    results = [measure(s, model.artifact_dir, setup, levels, requests, run_dir) for s in systems]
    report = {"stamp": stamp, "environment": environment, "setup": setup, "systems": results}
    out = Path(args.out) if args.out else (WORK / "smoke-results" if args.smoke else HERE / "results")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ray-serve-{stamp}.json").write_text(json.dumps(report, indent=1))
    summary = markdown(report, "python benchmarks/bench_ray_serve.py " + " ".join(sys.argv[1:]))
    (out / f"ray-serve-{stamp}.md").write_text(summary)
    say(f"wrote {out / f'ray-serve-{stamp}.json'} and .md")
    print(summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="results folder (default benchmarks/results; "
                        "smoke: benchmarks/work/smoke-results)")
    parser.add_argument("--levels", help=f"closed-loop concurrencies (default {','.join(map(str, LEVELS))}; smoke 1,4)")
    parser.add_argument("--replicas", default="1,2", help="Ray Serve replica counts to measure (default 1,2)")
    parser.add_argument("--cores", type=int, help="cores to split between replicas (default os.cpu_count())")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--stalled", type=int, help="stalled sockets per system (default 32; smoke 8; 0: no probe)")
    parser.add_argument("--header-timeout", type=float, help="rerankrt serve's --header-timeout (default 10; smoke 2)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds per system: checks the script")
    parser.add_argument("--ray-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpus", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--max-length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ray_worker:
        args.replicas = int(args.replicas)
        ray_worker_main(args)
    else:
        driver_main(args)


if __name__ == "__main__":
    main()
