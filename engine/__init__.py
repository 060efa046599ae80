"""rerankrt.engine — serve time: score (query, document) pairs from an exported artifact.

Needs only onnxruntime, tokenizers and numpy; never torch, transformers, sentence-transformers
or the export package.
"""

from .errors import (
    ArtifactError,
    BackendUnavailableError,
    InvalidInputError,
    InvalidInputTypeError,
    ModelDownloadError,
    ParityError,
    RerankrtError,
    UnsupportedModelError,
)
from .reranker import Reranker

__all__ = [
    "Reranker",
    "RerankrtError",
    "InvalidInputError",
    "InvalidInputTypeError",
    "ArtifactError",
    "UnsupportedModelError",
    "BackendUnavailableError",
    "ParityError",
    "ModelDownloadError",
]
