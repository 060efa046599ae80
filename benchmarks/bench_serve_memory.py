"""The server's memory around one 7,999-token pair (issue 17, item 3).

Starts ``rerankrt serve`` on the distilled 17m (default export: banded sliding layers) in its own process,
warms it with short requests, then sends one request whose document fills the model's 7,999 tokens, then
short traffic again. It reads the server process's ``VmRSS`` before, after the long request and after the
short traffic, and its ``VmHWM`` (peak) — for ``auto`` and for fp32 on onnxruntime (the backend whose global
layers hold n×n scores).

    python benchmarks/bench_serve_memory.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

import common

WORK = common.REPO_ROOT / "benchmarks" / "work"
CONFIGS = {"auto": [], "fp32-onnxruntime": ["--precision", "fp32", "--backend", "onnxruntime"]}


def status_mib(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(name: str, extra: list[str], artifact: Path, long_doc: str, short_docs: list[str]) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rerankrt.engine.cli", "serve", str(artifact), "--port", str(port),
                             "--threads", str(common.THREADS), *extra], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
        deadline = time.time() + 300
        while True:
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{name}: the server did not start")
            time.sleep(0.2)
        short = {"query": "gene expression in cancer", "documents": short_docs}
        for _ in range(5):
            assert client.post("/v1/rerank", json=short).status_code == 200
        before = status_mib(proc.pid, "VmRSS")
        started = time.perf_counter()
        reply = client.post("/v1/rerank", json={"query": "gene expression in cancer", "documents": [long_doc]})
        long_s = time.perf_counter() - started
        assert reply.status_code == 200, reply.text
        tokens = reply.json()["usage"]["total_tokens"]
        after_long = status_mib(proc.pid, "VmRSS")
        for _ in range(20):
            assert client.post("/v1/rerank", json=short).status_code == 200
        after_traffic = status_mib(proc.pid, "VmRSS")
        peak = status_mib(proc.pid, "VmHWM")
        info = client.get("/info").json()["models"][0]
        return {"config": name, "loaded": f"{info['precision']} on {info['backend']}", "long_tokens": tokens,
                "long_request_s": long_s, "rss_before_mib": before, "rss_after_long_mib": after_long,
                "rss_after_traffic_mib": after_traffic, "peak_rss_mib": peak}
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=common.REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    model = common.prepare_model(common.DISTILLED_NAME, WORK, None)  # re-exported when its graph form is stale
    texts = common.read_texts(common.SCIFACT_FILE)
    long_doc = " ".join(texts[:60])  # far past 7,999 tokens: cut to the model's length (truncate)
    short_docs = texts[100:130]
    environment = common.run_environment(("fastapi", "uvicorn", "openvino"), auto_artifacts=(model.artifact_dir,))
    rows = []
    for name, extra in CONFIGS.items():
        row = measure(name, extra, model.artifact_dir, long_doc, short_docs)
        common.say(f"{name}: {row}")
        rows.append(row)
    body = ["`rerankrt serve` on the distilled 17m (banded export), 2 threads: 5 warm-up requests of 30 short "
            "documents, then one request with a document cut to the model's 7,999 tokens, then 20 short requests. "
            "RSS of the server process (MiB).", "",
            "| configuration | loaded | tokens | long request | RSS before | after the long request | "
            "after short traffic | peak (VmHWM) | after traffic − before |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    body += [f"| {r['config']} | {r['loaded']} | {r['long_tokens']:,} | {r['long_request_s']:.2f} s | "
             f"{r['rss_before_mib']:,.0f} | {r['rss_after_long_mib']:,.0f} | {r['rss_after_traffic_mib']:,.0f} | "
             f"{r['peak_rss_mib']:,.0f} | {r['rss_after_traffic_mib'] - r['rss_before_mib']:+,.0f} |" for r in rows]
    body += ["", "Target (issue 17): the server's RSS returns within 200 MB of its pre-request level."]
    common.write_report(args.out, "serve-memory", "Server memory around one 7,999-token pair",
                        "python benchmarks/bench_serve_memory.py " + " ".join(sys.argv[1:]), environment, rows, body)


if __name__ == "__main__":
    main()
