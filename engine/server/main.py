"""``rerankrt serve``: load the artifacts (failing fast, before binding), then run uvicorn.

Models are loaded in the foreground so a broken artifact is a clear error and a non-zero exit,
not a server that answers 503 forever. uvicorn owns the sockets and signals: on ``SIGTERM`` or
``SIGINT`` it stops accepting, lets in-flight requests finish (bounded by
``graceful_timeout_s``), and then the app's shutdown drains the batching queues.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Sequence

from ..reranker import Reranker
from .app import create_app, model_name
from .config import ServerConfig


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
    models: dict[str, Reranker] = {}
    for name, path in parse_model_specs(specs):
        reranker = Reranker.from_pretrained(path, **reranker_options)
        name = name or model_name(reranker)
        if name in models:
            raise ValueError(f"two models are named {name!r}; name them explicitly: NAME=PATH")
        models[name] = reranker
    return models


def serve(specs: Sequence[str], host: str = "127.0.0.1", port: int = 8080, config: ServerConfig | None = None,
          graceful_timeout_s: float | None = None, log_level: str = "info", **reranker_options) -> None:
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config or ServerConfig()
    models = load_models(specs, **reranker_options)
    app = create_app(models, config)
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False, workers=1,
        timeout_graceful_shutdown=math.ceil(graceful_timeout_s if graceful_timeout_s is not None
                                            else config.request_timeout_s + 5)))

    def after_drain(signum: int, frame) -> None:
        # uvicorn handles SIGTERM/SIGINT itself (graceful drain), then re-raises the signal with
        # the previous handler restored: that is this one, and a drained server exits with 0.
        if server.should_exit:
            return
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, after_drain)
    server.run()
