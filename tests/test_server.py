"""``rerankrt serve``: a real uvicorn server on an ephemeral loopback port, a real HTTP client.

Scores are checked against ``Reranker.predict`` (itself checked against sentence-transformers in
test_parity.py); overload, timeouts and disconnects use a backend wrapper that only slows the real
backend down, so queueing is deterministic without timing the machine.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="httpx (dev extra) not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")

from live_server import LiveServer, _free_socket  # noqa: E402

from rerankrt.engine import Reranker  # noqa: E402
from rerankrt.engine.backends import BackendBase  # noqa: E402
from rerankrt.engine.batching import BatchPolicy  # noqa: E402
from rerankrt.engine.server import ServerConfig, create_app  # noqa: E402

from conftest import EDGE_PAIRS, realistic_pairs, whole_tokens  # noqa: E402


class SlowBackend(BackendBase):
    """The real backend, slower by ``delay`` per batch, counting the rows it scores."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay, self.rows = inner, delay, 0
        self.name, self.device, self.precision = inner.name, inner.device, inner.precision

    def run(self, input_ids, attention_mask):
        time.sleep(self.delay)
        self.rows += len(input_ids)
        return self.inner.run(input_ids, attention_mask)


@pytest.fixture(scope="module")
def reranker(tiny_artifact) -> Reranker:
    return Reranker.from_pretrained(tiny_artifact, precision="fp32", backend="onnxruntime")


@pytest.fixture(scope="module")
def live(reranker):
    server = LiveServer(create_app({"tiny": reranker}, ServerConfig(max_documents=10_000, max_document_bytes=600_000,
                                                                    max_body_bytes=8 << 20)))
    yield server
    server.close()


def _slow_app(reranker, delay: float, max_batch: int, **config):
    slow = SlowBackend(reranker.backend, delay)
    model = Reranker(reranker.artifact, slow, reranker.tokenizer, BatchPolicy(2048, max_batch))
    return create_app({"slow": model}, ServerConfig(**config)), slow


def _reply_to_head_only(server: LiveServer, headers: bytes) -> tuple[bytes, float]:
    """POST /v1/rerank's head with ``headers`` and no body; the reply and how long it took after the head."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" + headers
                     + b"\r\n")
        started = time.perf_counter()
        return sock.recv(65536), time.perf_counter() - started


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


def _docs(n_queries=1, n_docs=30):
    pairs = realistic_pairs(n_queries, n_docs)
    return pairs[0][0], [d for _, d in pairs] + [d for _, d in EDGE_PAIRS]


# -- the two API shapes ------------------------------------------------------------------------
def test_v1_rerank_matches_predict_in_cohere_shape(live, reranker):
    query, docs = _docs()
    expected = reranker.predict([(query, d) for d in docs])
    r = live.post("/v1/rerank", {"query": query, "documents": docs, "raw_scores": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["id"]
    results = body["results"]
    assert [x["index"] for x in results] == list(np.argsort(-expected, kind="stable"))
    got = np.array([x["relevance_score"] for x in sorted(results, key=lambda x: x["index"])])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    tokens = sum(len(t) for t in reranker.tokenizer.encode([(query, d) for d in docs]))
    assert body["meta"]["tokens"]["input_tokens"] == tokens == body["usage"]["total_tokens"]

    # default: relevance in [0, 1] (sigmoid), same order; top_n; documents as objects, returned whole
    objects = [{"text": d, "id": f"doc-{i}"} for i, d in enumerate(docs)]
    r = live.post("/v1/rerank", {"model": "tiny", "query": query, "documents": objects, "top_n": 5,
                                 "return_documents": True})
    assert r.status_code == 200, r.text
    top = r.json()["results"]
    assert len(top) == 5
    for item in top:
        assert item["relevance_score"] == pytest.approx(_sigmoid(expected[item["index"]]), abs=1e-6)
        assert item["document"] == objects[item["index"]]
    assert [x["index"] for x in top] == [x["index"] for x in results[:5]]


def test_tei_rerank_matches_predict_in_tei_shape(live, reranker):
    query, docs = _docs(n_docs=20)
    expected = reranker.predict([(query, d) for d in docs])
    r = live.post("/rerank", {"query": query, "texts": docs, "raw_scores": True, "return_text": True})
    assert r.status_code == 200, r.text
    ranks = r.json()
    assert [x["index"] for x in ranks] == list(np.argsort(-expected, kind="stable"))
    for x in ranks:
        assert x["score"] == pytest.approx(float(expected[x["index"]]), abs=1e-5)
        assert x["text"] == docs[x["index"]]
    plain = live.post("/rerank", {"query": query, "texts": docs}).json()
    assert "text" not in plain[0]
    assert plain[0]["score"] == pytest.approx(float(_sigmoid(expected.max())), abs=1e-6)


def test_concurrent_requests_each_get_their_own_scores(live, reranker):
    pairs = realistic_pairs(8, 25, seed=3)
    requests = []
    for k in range(24):
        query = pairs[(k % 8) * 25][0] + f" variant {k}"
        docs = [d for _, d in pairs[(k % 8) * 25:(k % 8) * 25 + 5 + k]]
        requests.append((query, docs))
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda qd: live.post("/rerank", {"query": qd[0], "texts": qd[1],
                                                                   "raw_scores": True}), requests))
    for (query, docs), r in zip(requests, responses):
        assert r.status_code == 200, r.text
        expected = reranker.predict([(query, d) for d in docs])
        got = {x["index"]: x["score"] for x in r.json()}
        assert sorted(got) == list(range(len(docs)))
        np.testing.assert_allclose([got[i] for i in range(len(docs))], expected, atol=1e-5)


def test_unicode_huge_strings_and_ten_thousand_documents(live, reranker):
    query = "Ærø café 🙂 — 東京の橋 and עברית"
    huge = "a very long document about bridges and rivers " * 10_000  # ~470 kB: accepted, truncated
    docs = [d for _, d in EDGE_PAIRS] + [huge]
    r = live.post("/rerank", {"query": query, "texts": docs, "raw_scores": True})
    assert r.status_code == 200, r.text
    got = {x["index"]: x["score"] for x in r.json()}
    np.testing.assert_allclose([got[i] for i in range(len(docs))], reranker.predict([(query, d) for d in docs]),
                               atol=1e-5)
    assert live.post("/v1/rerank", {"query": query, "documents": [huge]}).json()["usage"]["truncated_documents"] == 1

    many = [f"document number {i} about topic {i % 37}" for i in range(10_000)]
    r = live.post("/v1/rerank", {"query": "topic 5", "documents": many, "top_n": 10_000, "raw_scores": True})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert sorted(x["index"] for x in results) == list(range(10_000))
    sample = np.random.default_rng(0).choice(10_000, 50, replace=False)
    by_index = {x["index"]: x["relevance_score"] for x in results}
    np.testing.assert_allclose([by_index[int(i)] for i in sample],
                               reranker.predict([("topic 5", many[int(i)]) for i in sample]), atol=1e-5)


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path,body,status,kind", [
    ("/v1/rerank", b"{not json", 400, "invalid_json"),
    ("/v1/rerank", {"query": 5, "documents": ["a"]}, 422, "invalid_request"),
    ("/v1/rerank", {"query": "q", "documents": "just a string"}, 422, "invalid_request"),
    ("/v1/rerank", {"query": "q", "documents": [1, 2]}, 422, "invalid_request"),
    ("/v1/rerank", {"query": "q", "documents": [None]}, 422, "invalid_request"),
    ("/v1/rerank", {"documents": ["a"]}, 422, "invalid_request"),
    ("/v1/rerank", {"query": "q", "documents": []}, 422, "invalid_request"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": -1}, 422, "invalid_request"),
    ("/v1/rerank", {"model": "nope", "query": "q", "documents": ["a"]}, 404, "model_not_found"),
    ("/rerank", {"query": "q", "texts": []}, 422, "invalid_request"),
    ("/rerank", {"query": "q", "texts": ["a"], "raw_scores": "yes"}, 422, "invalid_request"),
    ("/rerank", [1, 2, 3], 422, "invalid_request"),
])
def test_bad_requests_get_specific_json_errors(live, path, body, status, kind):
    if isinstance(body, bytes):
        r = live.client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = live.post(path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == kind and error["message"]
    assert "Traceback" not in r.text


def test_limits_name_the_limit_and_its_value(live):
    r = live.post("/v1/rerank", {"query": "q", "documents": ["d"] * 10_001})
    assert (r.status_code, r.json()["error"]["limit"], r.json()["error"]["value"]) == (413, "max_documents", 10_000)
    r = live.post("/rerank", {"query": "q", "texts": ["é" * 300_001]})  # 600,002 UTF-8 bytes
    assert (r.status_code, r.json()["error"]["limit"], r.json()["error"]["value"]) == (413, "max_document_bytes",
                                                                                        600_000)
    r = live.client.post("/rerank", content=b"x" * (9 << 20), headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["limit"]) == (413, "max_body_bytes")
    long_doc = "word " * 5000
    r = live.post("/rerank", {"query": "q", "texts": ["short", long_doc], "truncate": False})
    assert (r.status_code, r.json()["error"]["limit"]) == (413, "max_length")
    assert "document 1" in r.json()["error"]["message"]
    assert live.post("/rerank", {"query": "q", "texts": ["short", long_doc]}).status_code == 200  # auto-truncate
    assert live.client.get("/health").status_code == 200


# -- operations ----------------------------------------------------------------------------------
def test_health_info_and_metrics(live):
    assert live.client.get("/health").json() == {"status": "ok"}
    info = live.client.get("/info").json()
    assert info["default_model"] == "tiny"
    model = info["models"][0]
    assert model["precision"] == "fp32" and model["backend"] == "onnxruntime" and model["manifest"]["graphs"]
    live.post("/v1/rerank", {"query": "q", "documents": ["a", "b"]})
    text = live.client.get("/metrics").text
    for family in ("rerankrt_requests_total", "rerankrt_request_duration_seconds_bucket", "rerankrt_queue_pairs",
                   "rerankrt_batch_pairs_bucket", "rerankrt_batch_padded_tokens_bucket",
                   "rerankrt_tokenize_seconds_bucket", "rerankrt_inference_seconds_bucket"):
        assert family in text, family
    assert 'rerankrt_requests_total{endpoint="/v1/rerank",status="200"}' in text
    assert 'rerankrt_requests_total{endpoint="/v1/rerank",status="422"}' in text  # from the error tests


def test_api_key_guards_everything_but_health(reranker):
    server = LiveServer(create_app({"m": reranker}, ServerConfig(api_key="s3cret")))
    try:
        body = {"query": "q", "documents": ["a"]}
        assert server.client.get("/health").status_code == 200
        for method, path in (("post", "/v1/rerank"), ("post", "/rerank"), ("get", "/info"), ("get", "/metrics")):
            kwargs = ({"json": body if path == "/v1/rerank" else {"query": "q", "texts": ["a"]}}
                      if method == "post" else {})
            r = getattr(server.client, method)(path, **kwargs)
            assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized", path
            wrong = getattr(server.client, method)(path, headers={"Authorization": "Bearer nope"}, **kwargs)
            assert wrong.status_code == 401
        assert server.post("/v1/rerank", body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert server.post("/v1/rerank", body, headers={"X-API-Key": "s3cret"}).status_code == 200
    finally:
        server.close()


def test_overload_gets_429_and_the_server_recovers(reranker):
    app, slow = _slow_app(reranker, delay=0.05, max_batch=4, max_queued_pairs=60, max_documents=40)
    server = LiveServer(app)
    try:
        query, docs = _docs(n_docs=30)
        body = {"query": query, "documents": docs[:30], "raw_scores": True}
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda _: server.post("/v1/rerank", body), range(16)))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 429} and codes.count(429) >= 8 and codes.count(200) >= 2, codes
        rejected = next(r for r in responses if r.status_code == 429)
        assert int(rejected.headers["retry-after"]) >= 1 and rejected.json()["error"]["type"] == "overloaded"
        expected = reranker.predict([(query, d) for d in docs[:30]])
        for r in responses:
            if r.status_code == 200:
                got = sorted(r.json()["results"], key=lambda x: x["index"])
                np.testing.assert_allclose([x["relevance_score"] for x in got], expected, atol=1e-5)
        assert server.client.get("/health").status_code == 200
        assert server.post("/v1/rerank", body).status_code == 200
        assert 'reason="queue_full"' in server.client.get("/metrics").text
    finally:
        server.close()


def test_timeout_and_disconnect_drop_pending_pairs(reranker):
    app, slow = _slow_app(reranker, delay=0.0, max_batch=2, request_timeout_s=0.35)
    server = LiveServer(app)
    slow.delay = 0.1  # slower only now: at start-up the server measured the fast rate and admits on it
    try:
        docs = [f"document {i}" for i in range(40)]  # 20 batches × 0.1 s ≫ the 0.35 s timeout
        before = slow.rows  # the start-up warm-up and rate measurement ran through the backend too
        r = server.post("/v1/rerank", {"query": "q", "documents": docs})
        assert r.status_code == 504 and r.json()["error"]["limit"] == "request_timeout_s"
        time.sleep(0.5)
        assert slow.rows - before < 20  # the rest was dropped, not scored for nobody
        before = slow.rows
        with pytest.raises(httpx.ReadTimeout):  # a client that gives up and goes away
            httpx.post(server.url + "/v1/rerank", json={"query": "q", "documents": docs}, timeout=0.2)
        time.sleep(0.6)
        assert slow.rows - before < 20
        assert server.post("/v1/rerank", {"query": "q", "documents": docs[:2]}).status_code == 200
    finally:
        server.close()


def test_sigterm_drains_accepted_requests(tiny_artifact, tmp_path):
    sock = _free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "rerankrt.engine.cli", "serve", str(tiny_artifact), "--port", str(port),
           "--precision", "fp32", "--backend", "onnxruntime", "--max-queued-pairs", "100000", "--log-level", "warning",
           # this test is about draining accepted work, not admission: a deadline long enough for all of it
           "--request-timeout", "300", "--drain-grace", "0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()
            time.sleep(0.1)
        docs = [f"document {i} " + "text " * (i % 200) for i in range(1500)]
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(httpx.post, url + "/v1/rerank", json={"query": f"q{k}", "documents": docs},
                                   timeout=120) for k in range(6)]
            deadline = time.time() + 30
            while not re.search(r"^rerankrt_queue_pairs\{[^}]*\} [1-9]", httpx.get(url + "/metrics").text, re.M):
                assert time.time() < deadline, "the requests never queued"
                time.sleep(0.02)
            time.sleep(0.2)  # let the other requests' bodies arrive too
            proc.send_signal(signal.SIGTERM)
            pending_at_signal = sum(not f.done() for f in futures)
            responses = [f.result() for f in futures]
        assert pending_at_signal > 0
        assert [r.status_code for r in responses] == [200] * 6
        assert all(len(r.json()["results"]) == 1500 for r in responses)
        assert proc.wait(60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_several_models_served_by_name(tiny_artifact, reranker):
    from rerankrt.engine.server.main import load_models, parse_model_specs

    assert parse_model_specs(["a=/x/y", "/x/z", "org/model"]) == [("a", "/x/y"), (None, "/x/z"), (None, "org/model")]
    with pytest.raises(ValueError, match="max_queued_pairs"):
        ServerConfig(max_documents=10, max_queued_pairs=5)
    loaded = load_models([str(tiny_artifact), f"short={tiny_artifact}"], precision="fp32", backend="onnxruntime")
    assert list(loaded) == [Path(tiny_artifact).name, "short"]
    with pytest.raises(ValueError, match="named"):
        load_models([f"x={tiny_artifact}", f"x={tiny_artifact}"], precision="fp32")
    models = {"full": reranker, "short": Reranker.from_pretrained(tiny_artifact, precision="fp32",
                                                                  backend="onnxruntime", max_length=16)}
    server = LiveServer(create_app(models))
    try:
        assert [m["name"] for m in server.client.get("/info").json()["models"]] == list(models)
        doc = "a long document " * 20
        default = server.post("/v1/rerank", {"query": "q", "documents": [doc], "raw_scores": True}).json()
        short = server.post("/v1/rerank", {"model": "short", "query": "q", "documents": [doc],
                                           "raw_scores": True}).json()
        assert default["model"] == "full" and short["model"] == "short"
        assert short["usage"]["total_tokens"] == 16 < default["usage"]["total_tokens"]
        assert short["results"][0]["relevance_score"] == pytest.approx(
            float(models["short"].predict(("q", doc))), abs=1e-5)
    finally:
        server.close()


# -- admission, hostile input, probes (issue 14) ---------------------------------------------------
def test_deadline_admission_refuses_at_once_what_the_queue_cannot_finish_in_time(reranker):
    app, slow = _slow_app(reranker, delay=0.1, max_batch=2)
    server = LiveServer(app)
    try:
        docs = [f"document {i} about bridges and rivers " * 3 for i in range(60)]  # 30 batches × 0.1 s ≈ 3 s
        before = slow.rows
        with ThreadPoolExecutor(1) as pool:
            big = pool.submit(server.post, "/v1/rerank", {"query": "q", "documents": docs})
            deadline = time.time() + 10
            while slow.rows == before:  # the big request is being scored
                assert time.time() < deadline
                time.sleep(0.01)
            started = time.perf_counter()
            r = server.post("/v1/rerank", {"query": "q", "documents": docs[:10]}, headers={"X-Request-Timeout": "0.2"})
            refused_in = time.perf_counter() - started
            assert r.status_code == 429 and r.json()["error"]["type"] == "overloaded", r.text
            assert refused_in < 0.15 and 1 <= int(r.headers["retry-after"]) <= 3
            # a body announced far bigger than the time left allows (estimated from its Content-Length and the
            # bytes per token learned from the big request): 429 before any of the body is sent
            reply, seconds = _reply_to_head_only(server, b"x-request-timeout: 20\r\ncontent-length: 4000000\r\n")
            assert reply.startswith(b"HTTP/1.1 429") and seconds < 0.15, reply
            assert b"estimated from the request's 4000000 bytes" in reply and b"retry-after" in reply.lower()
            bad = server.post("/v1/rerank", {"query": "q", "documents": ["a"]}, headers={"X-Request-Timeout": "soon"})
            assert bad.status_code == 400 and "x-request-timeout" in bad.json()["error"]["message"]
            assert big.result(30).status_code == 200
        assert 'reason="deadline"' in server.client.get("/metrics").text
        assert server.post("/v1/rerank", {"query": "q", "documents": docs[:4]},
                           headers={"X-Request-Timeout": "5"}).status_code == 200
    finally:
        server.close()


@pytest.mark.parametrize("method,path,body,status,kind", [
    ("GET", "/nope", None, 404, "not_found"),
    ("GET", "/v1/rerank", None, 405, "method_not_allowed"),
    ("DELETE", "/health", None, 405, "method_not_allowed"),
    ("POST", "/rerank", b'{"query": "q", "texts": [NaN]}', 400, "invalid_json"),
    ("POST", "/rerank", b'{"query": "q", "texts": ["a"]', 400, "invalid_json"),
    ("POST", "/rerank", b"\xff\xfe{}", 400, "invalid_json"),
    ("POST", "/rerank", b"", 400, "invalid_json"),
    ("POST", "/rerank", b'"just a string"', 422, "invalid_request"),
    ("POST", "/v1/rerank", b'{"query": "\\ud800", "documents": ["doc"]}', 400, "invalid_text"),
    ("POST", "/v1/rerank", b'{"query": "q", "documents": [{"text": "a\\udfffb"}], "return_documents": true}',
     400, "invalid_text"),
    ("POST", "/v1/rerank", b'{"query": "q", "documents": [{"text": "a", "t\\ud800": 1}], "return_documents": true}',
     400, "invalid_text"),
    ("POST", "/rerank", b'{"query": "q", "texts": ["\\udc80"], "return_text": true}', 400, "invalid_text"),
    ("POST", "/rerank", b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
])
def test_every_error_is_in_the_documented_shape(live, method, path, body, status, kind):
    r = live.client.request(method, path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["type"] == kind and r.json()["error"]["message"]


def test_a_huge_list_of_wrong_items_is_refused_before_it_is_validated(live):
    body = b'{"query": "q", "documents": [' + b",".join([b"1"] * 500_000) + b"]}"  # ~1 MiB of wrong-typed items
    started = time.perf_counter()
    r = live.client.post("/v1/rerank", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["limit"] == "max_documents"
    assert time.perf_counter() - started < 1.0
    few = live.client.post("/v1/rerank", content=b'{"query": "q", "documents": [1, 2, 3]}',
                           headers={"content-type": "application/json"})
    assert few.status_code == 422 and few.json()["error"]["error_count"] >= 3  # per item and union branch
    assert few.json()["error"]["message"].startswith("documents.0")
    many = live.client.post("/v1/rerank", content=b'{"query": "q", "documents": [' + b",".join([b"1"] * 9000) + b"]}",
                            headers={"content-type": "application/json"})
    assert many.status_code == 422 and len(many.json()["error"]["errors"]) == 10  # the report stays bounded


def test_probes_liveness_and_readiness_while_draining(reranker):
    server = LiveServer(create_app({"m": reranker}))
    try:
        assert [server.client.get(p).status_code for p in ("/live", "/ready", "/health")] == [200, 200, 200]
        server.server.config.app.state.rerankrt.begin_drain()
        assert [server.client.get(p).status_code for p in ("/live", "/ready", "/health")] == [200, 503, 503]
        assert server.client.get("/ready").json()["status"] == "draining"
        assert server.post("/v1/rerank", {"query": "q", "documents": ["a"]}).status_code == 200  # still served
    finally:
        server.close()


def test_auth_is_checked_before_the_body_is_read_and_concurrency_is_capped(reranker):
    server = LiveServer(create_app({"m": reranker}, ServerConfig(api_key="s3cret", max_client_concurrency=1)))
    try:
        port = int(server.url.rsplit(":", 1)[1])
        # announces 60 MiB, sends none of it: the 401 must come without waiting for (or reading) the body
        reply, seconds = _reply_to_head_only(server, b"authorization: Bearer wrong\r\ncontent-length: 62914560\r\n")
        assert reply.startswith(b"HTTP/1.1 401") and seconds < 1.0
        assert b'"unauthorized"' in reply
        key = {"Authorization": "Bearer s3cret"}
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            # a request of this client whose body is still on its way holds the client's one permit
            sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         b"authorization: Bearer s3cret\r\ncontent-length: 100\r\n\r\n{")
            time.sleep(0.2)
            r = server.post("/v1/rerank", {"query": "q", "documents": ["a"]}, headers=key)
            assert r.status_code == 429 and r.json()["error"]["limit"] == "max_client_concurrency"
        time.sleep(0.2)
        assert server.post("/v1/rerank", {"query": "q", "documents": ["a"]}, headers=key).status_code == 200
    finally:
        server.close()


# -- long documents (issue 17): Cohere's max_tokens_per_doc and chunking ------------------------------
def test_max_tokens_per_doc_cuts_each_document_there(live, reranker):
    """Cohere v2's per-document cap: the score of each document is that of its first N tokens, scored
    as a pair of its own (the independent check: the cut made here from the tokenizer, then predict's ids),
    and the response counts the documents it cut."""
    query, docs = _docs(n_docs=12)
    cap = 24
    r = live.post("/v1/rerank", {"query": query, "documents": docs, "raw_scores": True, "max_tokens_per_doc": cap})
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    q = whole_tokens(reranker, query)
    cut = 0
    for i, doc in enumerate(docs):
        d = whole_tokens(reranker, doc)
        cut += len(d) > cap
        ids = [50281, *q, 50282, *d[:min(cap, reranker.max_length - 3 - len(q))], 50282]
        assert got[i] == pytest.approx(float(reranker.logits_for_token_ids([ids])[0, 0]), abs=1e-5)
    assert cut and r.json()["usage"]["truncated_documents"] == cut
    bad = live.post("/v1/rerank", {"query": query, "documents": docs, "max_tokens_per_doc": 0})
    assert bad.status_code == 422 and "max_tokens_per_doc" in bad.text


def test_chunked_documents_through_both_routes_equal_predict(live, reranker):
    pairs = realistic_pairs(1, 8)
    query, docs = pairs[0][0], [" ".join([d] * 3) for _, d in pairs]  # several 48-token windows each
    options = {"strategy": "chunk", "window": 48, "stride": 32, "aggregate": "max"}
    expected = reranker.predict([(query, d) for d in docs], long_documents=options)
    r = live.post("/v1/rerank", {"query": query, "documents": docs, "raw_scores": True, "long_documents": options})
    assert r.status_code == 200, r.text
    got = np.array([x["relevance_score"] for x in sorted(r.json()["results"], key=lambda x: x["index"])])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    r = live.post("/rerank", {"query": query, "texts": docs, "raw_scores": True, "long_documents": options})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose([x["score"] for x in sorted(r.json(), key=lambda x: x["index"])], expected, atol=1e-5)
    for bad in ({"strategy": "summarize"}, {"strategy": "chunk", "window": 8, "stride": 16},
                {"strategy": "chunk", "aggregate": "median"}, {"strategy": "chunk", "overlap": 2}):
        r = live.post("/v1/rerank", {"query": query, "documents": docs, "long_documents": bad})
        assert r.status_code == 422, (bad, r.text)
