"""Serve rerankers on Ray Serve: replicas of the ``rerankrt serve`` app behind Ray's HTTP proxy (extra ``[ray-serve]``).

Each replica builds the plain server's app (:func:`~rerankrt.engine.server.app.create_app`) around
the Rerankers it loaded, and Ray Serve's FastAPI ingress runs it: the Cohere ``/v2/rerank``, Jina
``/v1/rerank`` and TEI ``/rerank`` routes, the probes, ``/info`` and ``/metrics``, the front door (auth, body limits,
permits, deadlines) and the per-model :class:`~rerankrt.engine.server.scheduler.BatchScheduler`
(cross-request token-budget batching, 429 + ``Retry-After`` admission, 504 past the deadline) are
the same code as ``rerankrt serve``. Ray Serve adds replicas, placement, autoscaling and restarts.
Every response carries ``x-rerankrt-replica`` (the Serve replica id) so a client can see which
replica answered.

    from ray import serve
    from rerankrt.engine.integrations.ray_serve import build_app

    serve.run(build_app({"ettin": "/models/ettin-17m"}, num_replicas=2, threads=2, precision="int8"))
    # POST http://127.0.0.1:8000/v1/rerank  {"model": "ettin", "query": …, "documents": […]}

or, with no Python, the application builder (``key=value`` arguments; one config file for KubeRay)::

    serve run rerankrt.engine.integrations.ray_serve:app_builder models=/models/ettin-17m \\
        num_replicas=2 threads=2 precision=int8 max_documents=1000

Several models in one deployment: ``build_app({"a": PATH_A, "b": PATH_B})`` or ``models=a=PATH_A,b=PATH_B``;
the body's ``model`` field picks one (the first is the default), as in ``rerankrt serve``. Every replica
loads every model; the artifact directories must be readable on every node (shared storage, the
image, or a hub id each replica downloads).

Lifecycle (checked in ray 2.60's source, ``serve/api.py`` and ``serve/_private/replica.py``): the
deployment is ``@serve.ingress()`` *late-bound*: the replica's constructor loads the models, then
``__serve_build_asgi_app__`` returns the app, and Serve runs its ASGI lifespan (uvicorn's
``LifespanOn``), which warms the models and starts the schedulers before the replica counts as
started; the replica's ``__del__`` runs the lifespan's shutdown, which finishes every queued pair.
``check_health`` fails a replica whose batching thread died, so Serve replaces it.

What differs from ``rerankrt serve`` (each point checked in ray 2.60's source or measured by
``tests/test_ray_serve.py`` / ``benchmarks/bench_ray_serve.py``; none assumed):

- **Connections are Ray's.** Clients talk to Serve's proxy, a plain ``uvicorn.Server`` with
  ``lifespan="off"`` and none of :mod:`rerankrt.engine.server.connections`: no request-head timeout
  (a socket that sends half a request line is never closed: uvicorn arms its keep-alive timer only
  after a response, and cancels it on any byte), no connection cap below the open-file limit, no
  JSON for malformed HTTP, keep-alive 90 s (``http_options.keep_alive_timeout_s``) instead of 5 s.
  ``header_timeout_s``, ``max_connections`` and ``drain_grace_s`` of :class:`ServerConfig` do nothing
  here. Measured by the benchmark's stalled-socket probe (smoke run, 2-core machine): 8 sockets that
  sent half a request head, checked 5 s later: ``rerankrt serve --header-timeout 2`` had closed 8,
  Serve's proxy 0. Put something that times out request heads in front (an ingress controller,
  HAProxy's ``timeout http-request``).
- **The deadline starts at the replica.** ``X-Request-Timeout`` / ``request_timeout_s`` is counted
  from the moment the request reaches the replica's front door. Time in Serve's proxy queue (when
  every replica already holds ``max_ongoing_requests``) is not counted, and that queue is unbounded
  unless ``max_queued_requests`` is set. So ``max_ongoing_requests`` defaults here to
  ``max_concurrent_requests`` (512), not Serve's 5: requests go straight to a replica and its own
  admission answers 429 with ``Retry-After`` as the plain server does. Past a bounded proxy queue
  Serve refuses with its ``backpressure_config``, set here to 429 + ``Retry-After: 1`` (Serve's
  default is 503); checked with one replica, ``max_ongoing_requests=1``, ``max_queued_requests=1`` and
  6 concurrent requests: 5 got ``429``, ``Retry-After: 1``, a ``text/plain`` body ("Request dropped
  due to backpressure …"), not the ``{"error": …}`` JSON, and no ``x-rerankrt-replica``. Serve's
  own ``x-request-timeout-seconds`` (proxy-side, answered 408) is a different header.
- **Admission is per replica.** Each replica has its own permits (``max_concurrent_requests``,
  ``max_client_concurrency``: so N replicas admit N times as much per client), its own queue
  (``max_queued_pairs``) and its own token-rate estimate. Serve's router picks a replica by its count
  of ongoing requests (power of two choices), not by queued tokens, and a 429 from one replica is
  returned to the client, not retried on another. The client address the per-client limit sees is the
  one Serve's proxy saw (the ASGI scope is forwarded as is).
- **Metrics are per replica.** ``GET /metrics`` through the proxy returns the registry of whichever
  replica the router picked (the ``x-rerankrt-replica`` header says which); ``tests/test_ray_serve.py``
  sums the request counters over both replicas to get the total. Scrape each replica, or use Ray's
  metrics (``ray_serve_*``, exported by every node's metrics agent) for cluster totals. Likewise
  ``/info`` and ``/ready`` answer for one replica; Serve's proxy has its own ``/-/healthz``.
- **Shutdown is Serve's.** A stopping replica is first removed from routing, ongoing requests get
  ``graceful_shutdown_timeout_s`` (set here to ``request_timeout_s + 5`` as ``rerankrt serve`` does),
  then the lifespan shutdown drains the queues. There is no SIGTERM drain grace with ``/ready`` = 503.
- **Threads are per replica.** ``threads`` (intra-op, per model) defaults to the replica's
  ``num_cpus``, and ``tokenize_threads`` to the same, not to the node's cores. Give replicas × threads
  = cores. ``precision="auto"`` would time the configurations in every replica at start (seconds each,
  all at once): pin ``precision``/``backend``, or run ``rerankrt tune --threads T`` once on the node.
- **Ray's own processes cost memory and start-up.** Same smoke run, tiny model: ``rerankrt serve`` was
  ready 3 s after spawn at ~300 MiB RSS; a local Ray instance with one replica 19 s and ~1.7 GiB for
  the process tree (GCS, raylet, controller, proxy, replica), with two replicas 25 s and ~2.3 GiB.
  Throughput on the distilled 17m at replicas × threads = cores: ``benchmarks/bench_ray_serve.py``.
- **A route prefix** other than ``/`` works: the replica strips it (Serve keeps the full path and sets
  ``root_path``; the front door matches paths exactly).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ray import serve

from ..server.app import create_app
from ..server.config import ServerConfig
from ..server.main import load_named_models, parse_model_specs

log = logging.getLogger("rerankrt.server")

REPLICA_HEADER = b"x-rerankrt-replica"
DEFAULT_NAME = "rerankrt"
# A request refused by Serve's proxy queue (max_queued_requests) gets what a replica's admission answers.
DEFAULT_BACKPRESSURE = {"status_code": 429, "retry_after_s": 1}

# What a replica passes to Reranker.from_pretrained, and how a builder argument (a string from
# `serve run key=value`, or a YAML value from a config file) becomes one.
RERANKER_OPTIONS: dict[str, type] = {
    "precision": str, "backend": str, "threads": int, "max_length": int, "token_budget": int, "device": str,
    "max_batch_size": int, "revision": str, "verify": bool, "int8_check": bool, "tune": bool}


class ReplicaMiddleware:
    """Pure ASGI, outermost: tags every response with the replica's id, and strips a Serve route prefix.

    Serve forwards ``/prefix/v1/rerank`` with ``root_path="/prefix"``; the front door matches paths
    exactly, so the replica hands the app the path below the prefix.
    """

    def __init__(self, app, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER, replica.encode("latin-1", "replace"))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root, path = scope.get("root_path", ""), scope.get("path", "")
        if root and path.startswith(root + "/"):
            scope = dict(scope, path=path[len(root):], root_path="")

        async def send_tagged(message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []), self.header])
            await send(message)

        await self.app(scope, receive, send_tagged)


def replica_id() -> str:
    """This Serve replica's id (``app#deployment#tag``), or ``local`` outside Serve."""
    try:
        context = serve.get_replica_context()
    except Exception:  # noqa: BLE001 - not in a replica (a direct test of the class)
        return "local"
    return f"{context.app_name}#{context.deployment}#{context.replica_tag}"


@serve.deployment(name=DEFAULT_NAME)
@serve.ingress()
class RerankrtDeployment:
    """One replica: the Rerankers, then the ``rerankrt serve`` app around them (Serve runs its lifespan)."""

    def __init__(self, models: Sequence[tuple[str | None, str]], reranker_options: Mapping[str, Any],
                 server_config: ServerConfig) -> None:
        if server_config.api_key is None and ServerConfig.api_key_from_env():
            # the key comes from the replica's environment (runtime_env env_vars, a Kubernetes secret),
            # never through the application's arguments
            server_config = dataclasses.replace(server_config, api_key=ServerConfig.api_key_from_env())
        if server_config.tracing:  # each replica is its own process: its spans need their own exporter
            from ..server.tracing import configure_exporter

            configure_exporter()
        self.replica = replica_id()
        self.models = load_named_models(models, **reranker_options)
        self.config = server_config
        self.server_app: Any = None  # not `app`: Serve's ASGI wrapper, a base class here, has that property
        log.info("replica %s: %s", self.replica, ", ".join(self.models))

    def __serve_build_asgi_app__(self):
        app = create_app(self.models, self.config)
        app.add_middleware(ReplicaMiddleware, replica=self.replica)
        self.server_app = app
        return app

    def check_health(self) -> None:
        """Called by Serve every ``health_check_period_s``: a replica whose batching thread died is replaced."""
        state = getattr(getattr(self.server_app, "state", None), "rerankrt", None)
        if state is None or state.draining:
            return
        for name, scheduler in state.schedulers.items():
            if not scheduler.alive:
                raise RuntimeError(f"the batching thread of model {name!r} has stopped")


def _model_specs(models: Mapping[str, str] | str | Sequence[str]) -> list[tuple[str | None, str]]:
    """A name → artifact mapping, one ``[NAME=]ARTIFACT`` string (commas separate several), or a list of them."""
    specs: list[tuple[str | None, str]]
    if isinstance(models, Mapping):
        specs = [(str(name), str(path)) for name, path in models.items()]
    else:
        items = models.split(",") if isinstance(models, str) else [str(m) for m in models]
        specs = parse_model_specs([m.strip() for m in items if m.strip()])
    if not specs:
        raise ValueError("no model given")
    names = [name for name, _ in specs if name]
    if len(names) != len(set(names)):
        raise ValueError(f"model names must be unique, got {names}")
    return specs


def build_app(models: Mapping[str, str] | str | Sequence[str], *, name: str = DEFAULT_NAME,
              num_replicas: int | str | None = 1, autoscaling_config: Mapping[str, Any] | None = None,
              ray_actor_options: Mapping[str, Any] | None = None, threads: int | None = None,
              precision: str = "auto", backend: str = "auto", max_length: int | None = None,
              reranker_options: Mapping[str, Any] | None = None,
              server_config: ServerConfig | Mapping[str, Any] | None = None,
              max_ongoing_requests: int | None = None, max_queued_requests: int = -1,
              backpressure_config: Mapping[str, Any] | None = None,
              graceful_shutdown_timeout_s: float | None = None,
              health_check_period_s: float | None = None) -> serve.Application:
    """A Serve application of ``RerankrtDeployment`` replicas serving ``models``; pass it to ``serve.run``.

    ``models``: name → artifact directory or hub id (the first is the default model), or ``[NAME=]ARTIFACT``
    strings as ``rerankrt serve`` takes them. ``num_replicas``: a fixed count; or ``autoscaling_config``
    (Serve's: ``min_replicas``, ``max_replicas``, ``target_ongoing_requests``, …), which sets
    ``num_replicas="auto"``. ``ray_actor_options``: per replica; ``num_cpus`` defaults to ``threads``
    (itself 1 when neither is given), and a replica with ``num_gpus`` runs its models on ``cuda``.
    ``precision``/``backend``/``max_length``/``reranker_options``: as ``Reranker.from_pretrained``.
    ``server_config``: the plain server's limits (a :class:`ServerConfig` or its fields), per replica;
    ``tokenize_threads`` defaults to ``threads``. ``max_ongoing_requests``: what Serve's router sends one
    replica at once (default ``max_concurrent_requests``, so admission is the replica's);
    ``max_queued_requests``: the proxy's queue beyond that (-1: unbounded); past it Serve answers
    ``backpressure_config`` (default here 429 with ``Retry-After: 1``, as the replicas refuse; Serve's own is 503).
    """
    actor = dict(ray_actor_options or {})
    if threads is None:
        threads = max(1, int(actor.get("num_cpus", 1)))
    actor.setdefault("num_cpus", threads)
    options: dict[str, Any] = {"precision": precision, "backend": backend, "threads": threads,
                               "max_length": max_length}
    if actor.get("num_gpus"):
        options["device"] = "cuda"
    options.update(reranker_options or {})
    unknown = set(options) - set(RERANKER_OPTIONS)
    if unknown:
        raise ValueError(f"unknown reranker options {sorted(unknown)}; known: {sorted(RERANKER_OPTIONS)}")
    if isinstance(server_config, ServerConfig):
        config = server_config
    else:
        fields = dict(server_config or {})
        fields.setdefault("tokenize_threads", threads)
        config = ServerConfig(**fields)
    deployment: dict[str, Any] = {
        "name": name, "ray_actor_options": actor, "max_queued_requests": max_queued_requests,
        "backpressure_config": dict(backpressure_config or DEFAULT_BACKPRESSURE),
        "max_ongoing_requests": max_ongoing_requests or config.max_concurrent_requests,
        "graceful_shutdown_timeout_s": (graceful_shutdown_timeout_s if graceful_shutdown_timeout_s is not None
                                        else config.request_timeout_s + 5)}
    if autoscaling_config is not None:
        deployment["autoscaling_config"] = dict(autoscaling_config)
        deployment["num_replicas"] = "auto"
    elif num_replicas is not None:
        deployment["num_replicas"] = num_replicas
    if health_check_period_s is not None:
        deployment["health_check_period_s"] = health_check_period_s
    # the decorators turn the class into a serve.Deployment; mypy sees the class
    return RerankrtDeployment.options(**deployment).bind(  # type: ignore[attr-defined]
        _model_specs(models), options, config)


# -- `serve run module:app_builder key=value …` and KubeRay's `import_path` + `args` ----------------
def _coerce(value: Any, kind: Any, key: str) -> Any:
    """A builder argument as ``kind``: ``serve run`` passes strings; a config file passes YAML values."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if type(None) in kinds and text.lower() in ("", "none", "null"):
        return None
    try:
        if bool in kinds:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if int in kinds:
            return int(text)
        if float in kinds:
            return float(text)
        if dict in kinds:
            return json.loads(text)
    except ValueError:
        raise ValueError(f"{key}={value!r}: expected {' or '.join(k.__name__ for k in kinds)}") from None
    return text


def _config_kinds() -> dict[str, tuple[type, ...]]:
    """ServerConfig's fields and their types, read from the dataclass (so a new limit is a builder argument too)."""
    names = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None)}
    out = {}
    for f in dataclasses.fields(ServerConfig):
        spelled = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out[f.name] = tuple(names[p.strip()] for p in spelled.split("|") if p.strip() in names) or (str,)
    return out


BUILDER_ARGS: dict[str, Any] = {
    "models": str, "model": str, "name": str, "num_replicas": str, "autoscaling_config": dict,
    "min_replicas": int, "max_replicas": int, "target_ongoing_requests": float, "ray_actor_options": dict,
    "num_cpus": float, "num_gpus": float, "max_ongoing_requests": int, "max_queued_requests": int,
    "backpressure_config": dict, "graceful_shutdown_timeout_s": float, "health_check_period_s": float}


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Ray Serve application builder: ``serve run rerankrt.engine.integrations.ray_serve:app_builder models=PATH …``.

    Arguments (strings on the command line, typed values in a config file's ``args``): ``models``
    (or ``model``): ``[NAME=]ARTIFACT`` with commas between several, or in a config file a list or a
    name → artifact mapping; ``num_replicas`` (a count or ``auto``); ``min_replicas``/``max_replicas``/
    ``target_ongoing_requests`` or a whole ``autoscaling_config`` (JSON on the command line);
    ``num_cpus``/``num_gpus`` per replica (or ``ray_actor_options``); ``max_ongoing_requests``,
    ``max_queued_requests``, ``graceful_shutdown_timeout_s``, ``health_check_period_s``, ``name``; the
    Reranker options (``precision``, ``backend``, ``threads``, ``max_length``, ``token_budget``, …); and
    every :class:`ServerConfig` field by name (``max_documents=1000``, ``request_timeout_s=10``, …).
    ``api_key`` is refused here: give the replicas ``RERANKRT_API_KEY`` in their environment.
    """
    if "api_key" in args:
        raise ValueError("pass the API key in the replicas' environment (RERANKRT_API_KEY), not as an argument: "
                         "arguments are stored in Serve's config and shown by `serve status`")
    config_kinds = {k: v for k, v in _config_kinds().items() if k != "api_key"}
    known = {**BUILDER_ARGS, **RERANKER_OPTIONS, **config_kinds}
    unknown = set(args) - set(known)
    if unknown:
        raise ValueError(f"unknown arguments {sorted(unknown)}; known: {sorted(known)}")
    values = {key: _coerce(value, known[key], key) for key, value in args.items()}
    models = values.pop("models", None) or values.pop("model", None)
    values.pop("model", None)
    if not models:
        raise ValueError("models=[NAME=]ARTIFACT[,…] is required")
    autoscaling = dict(values.pop("autoscaling_config", None) or {})
    for key in ("min_replicas", "max_replicas", "target_ongoing_requests"):
        if key in values:
            autoscaling[key] = values.pop(key)
    actor = dict(values.pop("ray_actor_options", None) or {})
    for key in ("num_cpus", "num_gpus"):
        if key in values:
            actor[key] = values.pop(key)
    replicas = values.pop("num_replicas", None)
    if replicas is not None and replicas != "auto":
        replicas = _coerce(replicas, int, "num_replicas")
    reranker = {key: values.pop(key) for key in list(values) if key in RERANKER_OPTIONS}
    server = {key: values.pop(key) for key in list(values) if key in config_kinds}
    return build_app(models, num_replicas=replicas if replicas is not None else 1,
                     autoscaling_config=autoscaling or None, ray_actor_options=actor,
                     threads=reranker.pop("threads", None), precision=reranker.pop("precision", "auto"),
                     backend=reranker.pop("backend", "auto"), max_length=reranker.pop("max_length", None),
                     reranker_options=reranker, server_config=server, **values)
