"""OpenTelemetry spans for a rerank request: parse → tokenize → queue → inference (extra ``[otel]``).

Why spans and not only metrics: a p99 outlier in ``/metrics`` says *that* a request was slow; a
trace says where its time went (waiting for a tokenize thread, behind other requests in the queue,
or in the backend) and joins the caller's trace through the ``traceparent`` header.

Off by default, and then free: nothing from ``opentelemetry`` is imported, and the request path pays
one attribute check per step (:data:`NO_TRACING`). The scheduler runs many requests in one batch
on its own thread, so "queue" and "inference" are not spans opened there: the scheduler stamps
each job when its first rows enter a batch (``Job.started_at``) and the request's spans are written
after the fact with those times (OpenTelemetry accepts explicit start and end times).

Where spans go: the global tracer provider when one is configured (``opentelemetry-instrument``,
or the application embedding the server), else :func:`configure_exporter` installs the SDK with the
OTLP/HTTP exporter, configured by the standard ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_SERVICE_NAME``
environment variables.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

OTEL_EXTRA = 'pip install "rerankrt[otel]"'


def _clock_offset_ns() -> int:
    """Epoch nanoseconds minus ``time.perf_counter()`` nanoseconds: read once per request, so its spans'
    times (OpenTelemetry's are epoch nanoseconds) are consistent with each other to the nanosecond."""
    return time.time_ns() - int(time.perf_counter() * 1e9)


class RequestTrace:
    """The spans of one request; every method is a no-op on :data:`NO_TRACING`'s instances."""

    def __init__(self, tracer: Any = None, root: Any = None) -> None:
        self._tracer, self.root = tracer, root
        self._offset_ns = _clock_offset_ns() if tracer is not None else 0

    @contextmanager
    def step(self, name: str, **attributes: Any) -> Iterator[None]:
        """A child span around a step that runs in this thread (or is awaited from it)."""
        if self._tracer is None:
            yield
            return
        from opentelemetry import trace

        with self._tracer.start_as_current_span(name, context=trace.set_span_in_context(self.root),
                                                attributes=attributes):
            yield

    def interval(self, name: str, start: float, end: float, **attributes: Any) -> None:
        """A child span of ``[start, end]`` (``perf_counter`` values) measured elsewhere (the scheduler thread)."""
        if self._tracer is None:
            return
        from opentelemetry import trace

        span = self._tracer.start_span(name, context=trace.set_span_in_context(self.root),
                                       start_time=self._offset_ns + int(start * 1e9), attributes=attributes)
        span.end(end_time=self._offset_ns + int(end * 1e9))

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def set(self, **attributes: Any) -> None:
        if self.root is not None:
            self.root.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def error(self, status: int, kind: str) -> None:
        if self.root is not None:
            from opentelemetry.trace import Status, StatusCode

            self.root.set_attributes({"http.response.status_code": status, "error.type": kind})
            if status >= 500:
                self.root.set_status(Status(StatusCode.ERROR, kind))


class Tracing:
    """Makes a :class:`RequestTrace` per request: real spans when enabled, a shared no-op otherwise."""

    def __init__(self, enabled: bool = False, tracer_provider: Any = None) -> None:
        self.enabled = enabled
        self._tracer = None
        if enabled:
            try:
                from opentelemetry import trace
            except ImportError as exc:
                raise ImportError(f"tracing needs OpenTelemetry: {OTEL_EXTRA}") from exc
            self._tracer = trace.get_tracer("rerankrt.server", tracer_provider=tracer_provider)

    @contextmanager
    def request(self, headers: Mapping[str, str], **attributes: Any) -> Iterator[RequestTrace]:
        """The request's ``rerank`` span: a child of the HTTP server span when FastAPI's native telemetry
        made one (FastAPI ≥ 0.16x, :func:`fastapi_telemetry`), else of the caller's ``traceparent``."""
        if self._tracer is None:
            yield _NO_TRACE
            return
        from opentelemetry import propagate, trace

        current = trace.get_current_span()
        parent = None if current.get_span_context().is_valid else propagate.extract(dict(headers))
        with self._tracer.start_as_current_span("rerank", context=parent, attributes=attributes,
                                                record_exception=False, set_status_on_exception=False) as root:
            yield RequestTrace(self._tracer, root)


def fastapi_telemetry(enabled: bool, tracer_provider: Any = None) -> dict[str, Any]:
    """``FastAPI(**this)``: its native OpenTelemetry (newer FastAPI) on with rerankrt's tracing, else off.

    Why off explicitly: native telemetry follows the *global* providers, so an application that embeds
    the server and configures OpenTelemetry for itself would otherwise get HTTP spans and metrics from
    every request of a server told not to trace. On, it gives the HTTP server span (``traceparent``,
    status code, route) that rerankrt's spans hang under. An older FastAPI has no such option."""
    import inspect

    from fastapi import FastAPI

    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    if not enabled:
        return {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
    return {"telemetry": {"tracer_provider": tracer_provider, "tracing": True, "metrics": False, "logs": False,
                          "operation_spans": False}}


def configure_exporter(service_name: str = "rerankrt") -> None:
    """Install the SDK's tracer provider with the OTLP/HTTP exporter, unless the process already has one."""
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ImportError(f"--otel needs the OpenTelemetry SDK and OTLP exporter: {OTEL_EXTRA}") from exc
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return  # configured by opentelemetry-instrument or the embedding application
    provider = TracerProvider(resource=Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


_NO_TRACE = RequestTrace()
NO_TRACING = Tracing(False)
