"""Error types shared by the runtime and the export stage.

Why one module: callers (a service, the CLI, the HTTP front-end) need to tell *kinds* of failure
apart without parsing messages: bad user input, a broken artifact, a model we cannot handle, a
backend that is not available. Every error carries the index, file or limit that caused it.
"""

from __future__ import annotations


class RerankrtError(Exception):
    """Base class of every error rerankrt raises on purpose."""


class InvalidInputError(RerankrtError, ValueError):
    """A pair, query or document is not usable (wrong type, None, ...). Names the offending index."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class InvalidInputTypeError(InvalidInputError, TypeError):
    """An input item has the wrong Python type (also a ``TypeError`` for callers that expect one)."""


class ArtifactError(RerankrtError):
    """An artifact directory is missing files, corrupted, or from an incompatible schema."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class UnsupportedModelError(RerankrtError):
    """The source model uses a module or architecture the exporter cannot translate."""


class BackendUnavailableError(RerankrtError):
    """The requested backend, execution provider or precision cannot run on this machine."""


class ParityError(RerankrtError):
    """An exported precision disagrees with the PyTorch reference beyond its tolerance."""

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class ModelDownloadError(RerankrtError):
    """A hub id could not be resolved to local files (offline, not found, no access)."""


class RemoteError(RerankrtError):
    """A rerankrt server could not score a request for a reason other than its input (``RerankClient``).

    Unreachable or timed out (``status`` None), 401 wrong key, 404 unknown model, 429 overloaded
    (``retry_after`` seconds), 5xx. Input the server refuses (400/413/422) is an :class:`InvalidInputError`
    instead, as it is in process, so a caller handles bad input the same way whichever side scores it.
    """

    def __init__(self, message: str, status: int | None = None, kind: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.retry_after = status, kind, retry_after


class InsufficientMemoryError(RerankrtError, MemoryError):
    """An export or a load would not fit in this machine's available memory (said before it starts)."""

    def __init__(self, message: str, needed_bytes: int, available_bytes: int) -> None:
        super().__init__(message)
        self.needed_bytes, self.available_bytes = needed_bytes, available_bytes
