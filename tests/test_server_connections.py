"""Connection-level defences of ``rerankrt serve`` (engine/server/connections.py, main.py), against a real
server process and raw sockets: stalled sockets cannot lock real clients out, a slow head is cut off,
malformed HTTP is answered in JSON, and SIGTERM drains (probes 503, requests still served) before exiting 0.

Each test starts its own server process because each needs different connection settings (and one a
low open-file limit); a process is the only honest way to test signals and descriptor exhaustion.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx", reason="httpx (dev extra) not installed")
pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")

RERANK = {"query": "q", "documents": ["a", "b"]}
FLAGS = {"header_timeout_s": "--header-timeout", "max_connections": "--max-connections",
         "drain_grace_s": "--drain-grace"}
# Used while the CLI lacks the flags above: the same serve() the CLI calls, with a ServerConfig.
SCRIPT = """
import json, sys
from rerankrt.engine.server.config import ServerConfig
from rerankrt.engine.server.main import serve
serve([sys.argv[1]], port=int(sys.argv[2]), config=ServerConfig(**json.loads(sys.argv[3])), log_level="warning",
      precision="fp32", backend="onnxruntime")
"""


def _cli_has_flags() -> bool:
    from rerankrt.engine.cli import build_parser

    serve = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    return all(flag in serve._option_string_actions for flag in FLAGS.values())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``rerankrt serve`` in a subprocess on a free loopback port, ready (GET /health is 200) on return."""

    def __init__(self, artifact: Path, log: Path, nofile: int | None = None, **config) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if _cli_has_flags():
            cmd = [sys.executable, "-m", "rerankrt.engine.cli", "serve", str(artifact), "--port", str(self.port),
                   "--precision", "fp32", "--backend", "onnxruntime", "--log-level", "warning"]
            for key, value in config.items():
                cmd += [FLAGS[key], str(value)]
        else:
            cmd = [sys.executable, "-c", SCRIPT, str(artifact), str(self.port), json.dumps(config)]

        def low_limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.log = log
        self.proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log.open("wb"),
                                     stderr=subprocess.STDOUT, preexec_fn=low_limit if nofile else None)
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise AssertionError(f"the server did not start:\n{self.output()}")
            time.sleep(0.1)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _read_response(sock: socket.socket, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body, read off a raw socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server has closed this socket (EOF or reset), without waiting; unread data is skipped."""
    sock.setblocking(False)
    try:
        while chunk := sock.recv(65536):
            del chunk
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_stalled_sockets_do_not_lock_out_clients(tiny_artifact, tmp_path):
    # The operator's failure at a smaller scale: an open-file limit of 256 (their 1,024) and 300 sockets
    # that connect and stall (their 1,100). Without a cap below the limit, accept() hits EMFILE and nobody
    # gets in; with it (default: 256 - 64 = 192), each newcomer evicts the longest-stalled socket.
    server = Server(tiny_artifact, tmp_path / "server.log", nofile=256)
    stalled: list[socket.socket] = []
    try:
        for i in range(300):
            sock = server.connect()
            if i % 2:
                sock.sendall(b"GET /hea")  # half a request line; the other half send nothing at all
            stalled.append(sock)
        time.sleep(0.5)  # let the server accept (and evict) all of them

        def request(i: int) -> httpx.Response:
            if i % 2:
                return httpx.get(server.url + "/health", timeout=10)
            return httpx.post(server.url + "/v1/rerank", json=RERANK, timeout=10)

        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(request, range(20)))
        elapsed = time.perf_counter() - started
        assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses if r.status_code != 200]
        assert elapsed < 10, f"20 requests took {elapsed:.1f} s next to 300 stalled sockets"
        closed = [sock for sock in stalled if _closed_by_peer(sock)]
        # 300 stalled + 20 real connections into 192 slots: at least 300 - 192 stalled ones were evicted,
        # oldest first, so the most recent ones are still open.
        assert len(closed) >= 300 - 192, len(closed)
        assert not _closed_by_peer(stalled[-1])
        print(f"20 requests in {elapsed:.2f} s with 300 stalled sockets; {len(closed)} stalled evicted")
        assert "Too many open files" not in server.output()
    finally:
        for sock in stalled:
            sock.close()
        server.close()


def test_evicted_half_request_gets_json_408(tiny_artifact, tmp_path):
    # max_connections set explicitly: the oldest stalled connection that had sent part of a head is
    # told why it was closed (an idle one is closed silently).
    server = Server(tiny_artifact, tmp_path / "server.log", max_connections=3, drain_grace_s=0)
    try:
        partial = server.connect()
        partial.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.2)
        others = [server.connect() for _ in range(3)]
        status, headers, body = _read_response(partial)
        assert status == 408 and headers["connection"] == "close"
        assert json.loads(body)["error"]["type"] == "too_many_connections"
        assert httpx.post(server.url + "/v1/rerank", json=RERANK, timeout=10).status_code == 200
        for sock in others:
            sock.close()
    finally:
        server.close()


@pytest.fixture(scope="module")
def short_timeout_server(tiny_artifact, tmp_path_factory):
    server = Server(tiny_artifact, tmp_path_factory.mktemp("short") / "server.log", header_timeout_s=1,
                    drain_grace_s=0)
    yield server
    server.close()


def test_slow_request_head_is_cut_off(short_timeout_server):
    server = short_timeout_server
    # slowloris: one byte every 0.2 s would keep uvicorn's keep-alive timer from ever firing
    sock = server.connect()
    started = time.perf_counter()
    for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 100:
        if select.select([sock], [], [], 0.2)[0]:
            break
        sock.sendall(bytes([byte]))
    status, headers, body = _read_response(sock)
    elapsed = time.perf_counter() - started
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body)["error"]["type"] == "header_timeout"
    assert 0.9 < elapsed < 2.5, elapsed
    assert sock.recv(1) == b""

    # a socket that sends nothing is closed silently, as is a keep-alive one idle after its response
    silent, kept = server.connect(), server.connect()
    kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _read_response(kept)[0] == 200
    started = time.perf_counter()
    silent.settimeout(3)
    kept.settimeout(3)
    assert silent.recv(1) == b"" and kept.recv(1) == b""
    assert time.perf_counter() - started < 2
    # and a prompt client on a keep-alive connection is not affected
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert [client.post("/v1/rerank", json=RERANK).status_code for _ in range(3)] == [200] * 3


@pytest.mark.parametrize("garbage", [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                                     b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"])
def test_malformed_http_gets_json_400(short_timeout_server, garbage):
    sock = short_timeout_server.connect()
    sock.sendall(garbage)
    status, headers, body = _read_response(sock)
    assert status == 400 and headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["type"] == "bad_http_request" and error["message"]
    assert sock.recv(1) == b""


def test_sigterm_drains_with_grace(tiny_artifact, tmp_path):
    server = Server(tiny_artifact, tmp_path / "server.log", drain_grace_s=2)
    try:
        probe = "/ready" if httpx.get(server.url + "/ready", timeout=5).status_code == 200 else "/health"
        signalled = time.perf_counter()
        server.proc.send_signal(signal.SIGTERM)
        probes = []
        while time.perf_counter() - signalled < 1.2:
            probes.append(httpx.get(server.url + probe, timeout=5).status_code)  # a new connection each time
            time.sleep(0.05)
        posted = httpx.post(server.url + "/v1/rerank", json=RERANK, timeout=5)
        during_grace = time.perf_counter() - signalled
        assert posted.status_code == 200 and len(posted.json()["results"]) == 2
        assert during_grace < 2, "the POST was not sent during the grace"
        assert server.proc.wait(30) == 0, server.output()
        assert time.perf_counter() - signalled >= 1.9, "exited before the drain grace was over"
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/health", timeout=2)
        if 503 not in probes:
            pytest.skip(f"{probe} never answered 503 during the grace: ServerState.begin_drain is not there yet")
        assert probes[-1] == 503 and set(probes) <= {200, 503}
    finally:
        server.close()


async def _hello(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("impl", ["h11", "httptools"])
def test_both_http_implementations(impl):
    # The same guarantees with either parser uvicorn may pick (httptools when installed, else h11), on a
    # trivial app in-process: the phase tracking differs per parser, so pipelining and keep-alive are
    # checked here too, and the counters the metrics will read.
    import uvicorn

    from rerankrt.engine.server.connections import ConnectionGuard, protocol_class

    if impl == "httptools":
        pytest.importorskip("httptools")
    guard = ConnectionGuard(header_timeout_s=0.5, max_connections=4)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(_hello, port=port, http=protocol_class(guard, impl), ws="none",
                                           lifespan="off", log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        connect = lambda: socket.create_connection(("127.0.0.1", port), timeout=5)  # noqa: E731
        # pipelined: two requests in one write, two answers, then the idle connection is closed silently
        sock = connect()
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):  # both answers, then EOF: closed once idle for the head timeout
            data += chunk
        assert data.count(b"HTTP/1.1 200 OK\r\n") == 2 and data.endswith(b"\r\n\r\nok")
        # malformed → JSON 400
        sock = connect()
        sock.sendall(b"GARBAGE\r\n\r\n")
        status, _, body = _read_response(sock)
        assert status == 400 and json.loads(body)["error"]["type"] == "bad_http_request"
        # an endless head: 431 (httptools, over 64 KiB) or 400 (h11 refuses past 16 KiB itself)
        sock = connect()
        sock.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000)
        assert _read_response(sock)[0] == (431 if impl == "httptools" else 400)
        # cap 4: 4 stalled, then a real request evicts the oldest (a partial head: told 408) and is served
        stalled = [connect() for _ in range(4)]
        stalled[0].sendall(b"GET / HT")
        time.sleep(0.1)
        sock = connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(sock)[0] == 200
        assert _read_response(stalled[0])[0] == 408
        # a slow head → 408 after 0.5 s
        started = time.perf_counter()
        stalled[1].sendall(b"GET / HTTP/1.1\r\n")
        assert _read_response(stalled[1])[0] == 408
        assert time.perf_counter() - started < 1.5
        deadline = time.time() + 2
        while guard.open_connections and time.time() < deadline:  # the others time out, idle or stalled
            time.sleep(0.05)
        assert guard.open_connections == 0 and guard.waiting_connections == 0, "a connection left in the books"
        assert guard.stats["evicted"] == 1 and guard.stats["refused"] == 0
        assert guard.stats["bad_request"] + guard.stats["head_too_large"] == 2
        assert guard.stats["header_timeout"] == 1  # the slow head; the rest were idle
        assert guard.stats["idle_timeout"] >= 4
    finally:
        server.should_exit = True
        thread.join(10)
