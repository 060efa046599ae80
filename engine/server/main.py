"""``rerankrt serve``: load the artifacts (failing fast, before binding), then run uvicorn.

Models are loaded in the foreground so a broken artifact is a clear error and a non-zero exit,
not a server that answers 503 forever. uvicorn owns the sockets; :mod:`.connections` supplies its
HTTP protocol (a request-head timeout, a connection cap below the open-file limit, JSON for
malformed HTTP). On the first ``SIGTERM`` or ``SIGINT`` the server starts *draining*: ``/ready``
and ``/health`` answer 503 so a load balancer stops sending new traffic, while the listener stays
open and every request is still served for ``drain_grace_s``. Then uvicorn's graceful shutdown
runs: it stops accepting, lets in-flight requests finish (bounded by ``graceful_timeout_s``), and
the app's shutdown drains the batching queues. A second signal skips the rest of the grace.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable, Sequence
from types import FrameType

import uvicorn

from ..reranker import Reranker
from .app import create_app, model_name
from .config import ServerConfig
from .connections import ConnectionGuard, default_max_connections, protocol_class, raise_open_file_limit

log = logging.getLogger("rerankrt.server")

# uvicorn closes a keep-alive connection after this long without a byte. Short: an idle connection
# holds a descriptor and a slot under the connection cap. (The head timeout bounds a connection that
# trickles bytes; this one bounds a silent one sooner.)
KEEP_ALIVE_S = 5


def parse_model_specs(specs: Sequence[str]) -> list[tuple[str | None, str]]:
    """``NAME=PATH`` or ``PATH`` → ``(name or None, path)``; names must be unique."""
    out: list[tuple[str | None, str]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and name and "/" not in name and path:
            out.append((name, path))
        else:
            out.append((None, spec))
    return out


def load_models(specs: Sequence[str], **reranker_options) -> dict[str, Reranker]:
    """``[NAME=]ARTIFACT`` strings → name → Reranker (``load_named_models``)."""
    return load_named_models(parse_model_specs(specs), **reranker_options)


def load_named_models(named: Sequence[tuple[str | None, str]], **reranker_options) -> dict[str, Reranker]:
    """``(name or None, artifact)`` → name → Reranker; an unnamed model takes its hub id or directory name."""
    models: dict[str, Reranker] = {}
    for name, path in named:
        reranker = Reranker.from_pretrained(path, **reranker_options)
        name = name or model_name(reranker)
        if name in models:
            raise ValueError(f"two models are named {name!r}; name them explicitly: NAME=PATH")
        models[name] = reranker
    return models


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain grace between the first signal and the shutdown.

    uvicorn closes its listener the moment a signal arrives, so a load balancer probing ``/ready``
    never sees a 503: it learns the server is gone from refused connections, after it has already
    routed requests there. Here the first signal only starts the grace (``begin_drain`` flips the
    probes to 503 and the loop keeps serving); once the grace is over, uvicorn's own shutdown runs
    unchanged. The signal handling itself stays uvicorn's (``capture_signals`` restores the
    previous handlers and re-raises the captured signals afterwards), so only ``handle_exit`` and
    ``on_tick`` are overridden.
    """

    def __init__(self, config: uvicorn.Config, drain_grace_s: float,
                 begin_drain: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.drain_grace_s = drain_grace_s
        self.begin_drain = begin_drain
        self.drain_started: float | None = None  # time.monotonic() of the first signal
        self._drain_announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        start_grace = self.started and self.drain_started is None and not self.should_exit
        super().handle_exit(sig, frame)  # records the signal (re-raised after shutdown) and sets should_exit
        if start_grace and self.drain_grace_s > 0:
            # Runs in the main thread between bytecodes, so main_loop cannot see the flag set above;
            # begin_drain itself runs from on_tick, on the loop, not inside a signal handler.
            self.should_exit = False
            self.drain_started = time.monotonic()
        # A second signal during the grace: super() has set should_exit and the shutdown starts at
        # the next tick. A signal before startup completed (nothing to drain): straight to shutdown.

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and not self.should_exit:
            if not self._drain_announced:
                self._drain_announced = True
                log.info("signal received: serving on for %g s of drain grace, then shutting down", self.drain_grace_s)
                if self.begin_drain is not None:
                    try:
                        self.begin_drain()
                    except Exception:  # noqa: BLE001 - a failed probe flip must not stop the shutdown
                        log.exception("begin_drain failed")
            if time.monotonic() - self.drain_started >= self.drain_grace_s:
                self.should_exit = True
        return await super().on_tick(counter)


def connection_guard(config: ServerConfig) -> ConnectionGuard:
    """The guard for ``config``; a cap left unset is derived from the open-file limit, raised first."""
    soft, hard = raise_open_file_limit()
    cap = config.max_connections or default_max_connections(soft)
    source = "set" if config.max_connections else f"from RLIMIT_NOFILE soft {soft}, hard {hard}"
    log.info("connections: at most %d open (%s); request head timeout %g s; keep-alive %d s",
             cap, source, config.header_timeout_s, KEEP_ALIVE_S)
    return ConnectionGuard(config.header_timeout_s, cap)


def serve(specs: Sequence[str], host: str = "127.0.0.1", port: int = 8080, config: ServerConfig | None = None,
          graceful_timeout_s: float | None = None, log_level: str = "info", **reranker_options) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config or ServerConfig()
    guard = connection_guard(config)  # before loading: model files count against the raised limit too
    models = load_models(specs, **reranker_options)
    app = create_app(models, config)
    app.state.connection_guard = guard
    state = app.state.rerankrt
    guard.on_event = lambda event: state.metrics.connections.labels(event).inc()
    server = DrainingServer(uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False, workers=1,
        http=protocol_class(guard), ws="none", timeout_keep_alive=KEEP_ALIVE_S,
        # not limit_concurrency: it answers real requests 503 and never closes a stalled socket
        timeout_graceful_shutdown=math.ceil(graceful_timeout_s if graceful_timeout_s is not None
                                            else config.request_timeout_s + 5)),
        drain_grace_s=config.drain_grace_s, begin_drain=getattr(state, "begin_drain", None))

    def after_drain(signum: int, frame) -> None:
        # uvicorn handles SIGTERM/SIGINT itself (drain grace, then graceful shutdown), then re-raises
        # the signal with the previous handler restored: that is this one, and a drained server exits 0.
        if server.should_exit:
            return
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, after_drain)
    server.run()
