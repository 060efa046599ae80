"""rerankrt.engine.server — HTTP serving (extra ``[serve]``): Cohere/Jina and TEI rerank APIs over
cross-request dynamic batching.

Nothing is imported eagerly: the CLI reads :mod:`.config` (no dependencies) to build its parser
in a runtime-only install; FastAPI and uvicorn are imported only when serving starts.
"""

from __future__ import annotations

import importlib

_LAZY = {"create_app": ".app", "ServerConfig": ".config", "BatchScheduler": ".scheduler",
         "QueueFullError": ".scheduler", "serve": ".main"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(name)
