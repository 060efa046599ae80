"""Worker processes (file scoring, the server's body parsing) die with their parent, however it died.

A worker blocks on its call queue and would otherwise outlive a ``kill -9``-ed parent for as long
as the machine runs (seen: 12+ minutes, 244 MB). The parent here is a real process building the
pool through ``ChunkScorer.processes``, so the test covers the code path ``rerankrt score`` uses.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; kill -9")

PARENT = """
import os, sys, time
from rerankrt.engine.offline.scoring import ChunkScorer

scorer = ChunkScorer.processes(sys.argv[1], 2, {"precision": "fp32", "threads": 1})
# two chunks: the pool spawns one worker per submit, so both workers exist; one has scored
results = list(scorer.map([(0, [("river", "a bridge over the river")]), (1, [("q", "d")])]))
assert len(results) == 2
print(" ".join(str(pid) for pid in scorer._executor._processes), flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie has exited (init reaps it when it gets to it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "?")
    return state not in ("Z", "X")


def _is_worker(pid: int) -> bool:
    try:
        return b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False


def _kill_9_and_wait(parent: subprocess.Popen, pids: list[int], within_s: float = 5.0) -> list[int]:
    """``kill -9`` ``parent``, then the ``pids`` still alive after ``within_s`` seconds."""
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + within_s
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


def _read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline() if ready else ""


def test_workers_exit_soon_after_parent_is_killed(tiny_artifact):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tiny_artifact)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        line = _read_line(parent, timeout_s=20)
        if not line:
            parent.kill()
            pytest.fail(f"parent printed no worker PIDs; stderr:\n{parent.communicate(timeout=10)[1]}")
        pids = [int(pid) for pid in line.split()]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)

        survivors = _kill_9_and_wait(parent, pids)
        assert not survivors, "workers outlived their kill -9-ed parent by 5 s"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=10)
        for pid in pids:  # a failed run must not leak workers into the rest of the session
            if _alive(pid) and _is_worker(pid):
                os.kill(pid, signal.SIGKILL)
        parent.stdout.close()
        parent.stderr.close()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def test_server_body_parsing_workers_exit_after_kill_9(tiny_artifact):
    """``rerankrt serve`` parses big bodies in worker processes; a kill -9 of the server leaves none behind."""
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "rerankrt.engine.cli", "serve", str(tiny_artifact), "--port",
                               str(port), "--precision", "fp32", "--backend", "onnxruntime", "--log-level", "warning"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        # 10,000 commas: past what is parsed on the event loop, so it goes through a worker process
        big = {"query": "q", "documents": ["a, document " * 100] * 100}
        assert httpx.post(f"http://127.0.0.1:{port}/v1/rerank", json=big, timeout=60).status_code == 200
        workers = [pid for pid in _children(server.pid) if _is_worker(pid)]
        assert workers, "no body-parsing worker process found"
        survivors = _kill_9_and_wait(server, workers)
        assert not survivors, "parsing workers outlived the kill -9-ed server by 5 s"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
        for pid in workers:
            if _alive(pid) and _is_worker(pid):
                os.kill(pid, signal.SIGKILL)
