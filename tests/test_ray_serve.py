"""``rerankrt.engine.integrations.ray_serve`` on a local Ray Serve: two replicas of the tiny artifact behind
Serve's HTTP proxy, real HTTP clients.

Scores are checked against ``Reranker.rank``/``predict`` in this process (the independent path); errors
against the plain ``rerankrt serve`` app with the same limits.
"""

from __future__ import annotations

import asyncio
import re
import socket

import numpy as np
import pytest

serve = pytest.importorskip("ray.serve", reason="the [ray-serve] extra is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (dev extra) not installed")

import ray  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from rerankrt.engine import Reranker  # noqa: E402
from rerankrt.engine.integrations.ray_serve import ReplicaMiddleware, app_builder, build_app  # noqa: E402
from rerankrt.engine.server import ServerConfig, create_app  # noqa: E402

from conftest import EDGE_PAIRS, realistic_pairs  # noqa: E402

OPTIONS = dict(precision="fp32", backend="onnxruntime", threads=1)
LIMITS = dict(max_documents=40, request_timeout_s=60.0)  # the same limits on both servers
REPLICA = "x-rerankrt-replica"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def reranker(tiny_artifact) -> Reranker:
    return Reranker.from_pretrained(tiny_artifact, **OPTIONS)


@pytest.fixture(scope="module")
def serve_url(tiny_artifact):
    """Two replicas (1 CPU, 1 thread each), each serving the artifact under two names."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app({"tiny": str(tiny_artifact), "tiny-b": str(tiny_artifact)}, num_replicas=2, **OPTIONS,
                        server_config=LIMITS)
        serve.run(app, name="rerankrt", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def plain(reranker):
    """The plain server's app with the same models and limits (lifespan run by the TestClient)."""
    with TestClient(create_app({"tiny": reranker, "tiny-b": reranker}, ServerConfig(**LIMITS))) as client:
        yield client


def _requests(n: int) -> list[tuple[str, dict, str, list[str]]]:
    """``(path, body, query, documents)``: both APIs, both model names, 6 to 19 documents, edge cases among them."""
    pairs = realistic_pairs(6, 16)
    queries = list(dict.fromkeys(q for q, _ in pairs))
    # the edge cases but the 3,000- and 10,000-word documents (seconds each on one thread; test_server.py has them)
    docs = list(dict.fromkeys(d for _, d in pairs)) + [d for _, d in EDGE_PAIRS if len(d) < 1000]
    out = []
    for i in range(n):
        query = queries[i % len(queries)] if i % 5 else EDGE_PAIRS[i % len(EDGE_PAIRS)][0]
        chosen = [docs[(3 * i + k) % len(docs)] for k in range(6 + i % 14)]
        if i % 2:
            out.append(("/rerank", {"query": query, "texts": chosen, "raw_scores": True}, query, chosen))
        else:
            out.append(("/v1/rerank", {"model": ["tiny", "tiny-b"][i // 2 % 2], "query": query,
                                       "documents": chosen, "raw_scores": True}, query, chosen))
    return out


async def _post_all(url: str, requests: list[tuple[str, dict, str, list[str]]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        return await asyncio.gather(*(client.post(path, json=body) for path, body, _, _ in requests))


def test_concurrent_requests_on_two_replicas_equal_rank_and_predict(serve_url, reranker):
    assert httpx.get(f"{serve_url}/ready", timeout=30).status_code == 200  # the lifespan ran: models warm
    requests = _requests(24)
    responses = asyncio.run(_post_all(serve_url, requests))
    replicas = set()
    for (path, body, query, docs), r in zip(requests, responses):
        assert r.status_code == 200, r.text
        replicas.add(r.headers[REPLICA])
        items = r.json() if path == "/rerank" else r.json()["results"]
        key = "score" if path == "/rerank" else "relevance_score"
        if path == "/v1/rerank":
            assert r.json()["model"] == body["model"]
        got = {item["index"]: item[key] for item in items}
        assert sorted(got) == list(range(len(docs)))
        expected = reranker.predict([(query, d) for d in docs])
        np.testing.assert_allclose([got[i] for i in range(len(docs))], expected, rtol=0, atol=1e-5)
        ranked = {x["corpus_id"]: x["score"] for x in reranker.rank(query, docs)}
        np.testing.assert_allclose([got[i] for i in range(len(docs))], [ranked[i] for i in range(len(docs))],
                                   rtol=0, atol=1e-5)
        order = [expected[item["index"]] for item in items]  # best first, up to ties within the tolerance
        assert all(a >= b - 1e-5 for a, b in zip(order, order[1:]))
    assert len(replicas) == 2, replicas

    # the rerank APIs' default: relevance in [0, 1] = sigmoid(logit)
    query, docs = requests[0][2], requests[0][3]
    r = httpx.post(f"{serve_url}/v1/rerank", json={"query": query, "documents": docs, "top_n": 3}, timeout=60)
    assert r.status_code == 200 and r.json()["model"] == "tiny"
    logits = reranker.predict([(query, d) for d in docs])
    assert [x["index"] for x in r.json()["results"]] == list(np.argsort(-logits, kind="stable")[:3])
    for x in r.json()["results"]:
        assert x["relevance_score"] == pytest.approx(1 / (1 + np.exp(-float(logits[x["index"]]))), abs=1e-6)


BAD = [  # (method, path, body or raw bytes, headers)
    ("POST", "/v1/rerank", {"documents": ["a"]}, None),  # no query: 422
    ("POST", "/rerank", {"query": "q", "texts": []}, None),  # 422
    ("POST", "/v1/rerank", {"model": "nope", "query": "q", "documents": ["a"]}, None),  # 404 model_not_found
    ("POST", "/v1/rerank", {"query": "q", "documents": ["d"] * 41}, None),  # 413 max_documents (40 here)
    ("POST", "/v1/rerank", b"query=q", {"content-type": "application/x-www-form-urlencoded"}),  # 415
    ("GET", "/v1/rerank", None, None),  # 405
    ("GET", "/nothing/here", None, None),  # 404
]


@pytest.mark.parametrize("method, path, body, headers", BAD)
def test_bad_requests_get_the_plain_servers_4xx(serve_url, plain, method, path, body, headers):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    ours = httpx.request(method, serve_url + path, headers=headers, timeout=60, **kwargs)
    theirs = plain.request(method, path, headers=headers, **kwargs)
    assert 400 <= theirs.status_code < 500
    assert ours.status_code == theirs.status_code, ours.text
    assert ours.json()["error"] == theirs.json()["error"]
    assert ours.headers[REPLICA]  # the front door's refusals come from a replica too


def _metrics_of_each_replica(url: str) -> dict[str, str]:
    """``/metrics`` of every replica: the proxy routes each GET to one of them."""
    seen: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(60):
            r = client.get("/metrics")
            assert r.status_code == 200
            seen[r.headers[REPLICA]] = r.text
            if len(seen) == 2:
                break
    assert len(seen) == 2, "the proxy sent 60 GETs to one replica"
    return seen


def _ok_count(text: str) -> float:
    found = re.search(r'^rerankrt_requests_total\{endpoint="/rerank",status="200"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_metrics_are_per_replica_and_add_up(serve_url):
    before = {k: _ok_count(v) for k, v in _metrics_of_each_replica(serve_url).items()}
    requests = [r for r in _requests(16) if r[0] == "/rerank"]
    assert all(r.status_code == 200 for r in asyncio.run(_post_all(serve_url, requests)))
    after = {k: _ok_count(v) for k, v in _metrics_of_each_replica(serve_url).items()}
    assert set(after) == set(before)
    assert sum(after.values()) - sum(before.values()) == len(requests)


def test_app_builder_reads_serve_run_arguments(tiny_artifact):
    app = app_builder({"models": f"a={tiny_artifact},b={tiny_artifact}", "num_replicas": "3", "threads": "2",
                       "precision": "fp32", "max_documents": "100", "request_timeout_s": "5",
                       "auto_truncate": "false", "max_client_concurrency": "none"})
    deployment = app._bound_deployment
    assert deployment.num_replicas == 3
    assert deployment.ray_actor_options["num_cpus"] == 2
    models, options, config = deployment.init_args
    assert models == [("a", str(tiny_artifact)), ("b", str(tiny_artifact))]
    assert options["threads"] == 2 and options["precision"] == "fp32"
    assert config == ServerConfig(max_documents=100, request_timeout_s=5.0, auto_truncate=False, tokenize_threads=2)
    assert deployment.max_ongoing_requests == config.max_concurrent_requests
    assert deployment._deployment_config.backpressure_config.status_code == 429  # as a replica's refusal
    assert deployment._deployment_config.graceful_shutdown_timeout_s == 5.0 + 5  # request_timeout_s + 5
    scaled = app_builder({"models": str(tiny_artifact), "min_replicas": "1", "max_replicas": "4",
                          "target_ongoing_requests": "8"})._bound_deployment
    assert scaled._deployment_config.autoscaling_config.max_replicas == 4
    for bad in ({"models": str(tiny_artifact), "no_such_option": "1"}, {"models": str(tiny_artifact), "api_key": "k"},
                {"models": str(tiny_artifact), "threads": "many"}, {}):
        with pytest.raises(ValueError):
            app_builder(bad)


def test_replica_middleware_strips_a_route_prefix_and_tags_responses():
    seen = {}

    async def inner(scope, receive, send):
        seen.update(path=scope["path"], root_path=scope["root_path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"a", b"1")]})
        await send({"type": "http.response.body", "body": b""})

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/rr/v1/rerank", "root_path": "/rr", "headers": []}
    asyncio.run(ReplicaMiddleware(inner, "app#rerankrt#abc")(scope, None, send))
    assert seen == {"path": "/v1/rerank", "root_path": ""}
    assert sent[0]["headers"] == [(b"a", b"1"), (b"x-rerankrt-replica", b"app#rerankrt#abc")]
