"""OpenTelemetry tracing of rerank requests (``server/tracing.py``): the spans a request makes, their
nesting and times, the caller's trace joined through ``traceparent``; and nothing at all when off."""

from __future__ import annotations

import subprocess
import sys

import pytest

httpx = pytest.importorskip("httpx", reason="httpx (dev extra) not installed")
pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")
pytest.importorskip("opentelemetry.sdk", reason="the [otel] extra is not installed")

from live_server import LiveServer  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from rerankrt.engine import Reranker  # noqa: E402
from rerankrt.engine.server import ServerConfig, create_app  # noqa: E402

from conftest import realistic_pairs  # noqa: E402


@pytest.fixture(scope="module")
def traced(tiny_artifact):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reranker = Reranker.from_pretrained(tiny_artifact, precision="fp32", backend="onnxruntime")
    server = LiveServer(create_app({"tiny": reranker}, ServerConfig(tracing=True), tracer_provider=provider))
    yield server, exporter
    server.close()


def test_a_request_is_one_trace_of_parse_tokenize_queue_inference(traced):
    server, exporter = traced
    exporter.clear()
    pairs = realistic_pairs(1, 12)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = server.post("/v2/rerank", {"model": "tiny", "query": pairs[0][0], "documents": [d for _, d in pairs]},
                    headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert r.status_code == 200, r.text
    finished = exporter.get_finished_spans()
    spans = {s.name: s for s in finished}
    assert {"rerank", "parse", "tokenize", "queue", "inference"} <= set(spans)
    root = spans["rerank"]
    assert {format(s.context.trace_id, "032x") for s in finished} == {trace_id}  # joined the caller's trace
    by_id = {s.context.span_id: s for s in finished}
    up = root  # up the parents (through FastAPI's HTTP server span where it makes one) to the caller's span
    while up.parent is not None and up.parent.span_id in by_id:
        up = by_id[up.parent.span_id]
    assert up.parent is not None and format(up.parent.span_id, "016x") == "00f067aa0ba902b7"
    for name in ("parse", "tokenize", "queue", "inference"):
        span = spans[name]
        assert span.parent.span_id == root.context.span_id, name
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time, name
    # the steps happen in this order, one after the other
    assert spans["parse"].end_time <= spans["tokenize"].start_time
    assert spans["tokenize"].end_time <= spans["queue"].start_time + 1_000_000  # within 1 ms (clock mapping)
    assert spans["queue"].end_time == spans["inference"].start_time
    assert root.attributes["rerankrt.documents"] == 12 and root.attributes["rerankrt.tokens"] > 12


def test_a_refused_request_is_traced_with_its_error(traced):
    server, exporter = traced
    exporter.clear()
    r = server.post("/rerank", {"query": "q", "texts": []})
    assert r.status_code == 422
    (root,) = [s for s in exporter.get_finished_spans() if s.name == "rerank"]
    assert root.attributes["http.response.status_code"] == 422
    assert root.attributes["error.type"] == "invalid_request"


def test_tracing_off_records_nothing_even_under_a_configured_provider(tiny_artifact):
    """Off (the default), an application that configured OpenTelemetry for itself gets no span from the
    server: neither rerankrt's nor the HTTP spans of FastAPI's native telemetry (newer FastAPI)."""
    code = f"""
import sys, httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
from rerankrt.engine import Reranker
from rerankrt.engine.server import create_app
app = create_app({{"tiny": Reranker.from_pretrained({str(tiny_artifact)!r}, precision="fp32", backend="onnxruntime")}})
async def main():
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.post("/rerank", json={{"query": "q", "texts": ["a", "b"]}})
            assert r.status_code == 200, r.text
import asyncio; asyncio.run(main())
spans = [s.name for s in exporter.get_finished_spans()]
assert not spans, spans
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
