"""LangChain: rerankrt as a document compressor and as a cross encoder (extra ``rerankrt[langchain]``).

Two doors, because LangChain has two places a reranker goes:

* :class:`RerankrtRerank` is a ``BaseDocumentCompressor`` (``langchain_core.documents.compressor``),
  what ``ContextualCompressionRetriever`` wraps around a retriever, like LangChain's ``CohereRerank``:
  the documents come back best first, at most ``top_n``, each a copy with its metadata kept and the
  score added as ``metadata["relevance_score"]``.
* :class:`RerankrtCrossEncoder` implements ``BaseCrossEncoder.score`` (``langchain_core.cross_encoders``
  since langchain-core 1.2.19; ``langchain_classic``/``langchain_community`` re-export that class) for
  LangChain's own ``CrossEncoderReranker`` compressor, which sorts by those scores itself.

Both score in process (a :class:`~rerankrt.engine.Reranker`, or ``model=`` an artifact directory or hub
id) or on a ``rerankrt serve`` (a :class:`~rerankrt.engine.client.RerankClient`, or ``url=``), through
the same calls, so one argument moves a chain onto a shared server. Scores are ranked on raw logits
either way; ``activation="sigmoid"`` (the default) reports them in [0, 1] like Cohere's and the
server's ``relevance_score``, so a threshold on ``relevance_score`` carries over from ``CohereRerank``.

Bad input raises what ``Reranker.predict`` raises (``InvalidInputTypeError`` naming the index for a
document whose ``page_content`` is not a string, or a query that is not one); LangChain defines no
exception of its own for it.

    from langchain_classic.retrievers import ContextualCompressionRetriever
    from rerankrt.engine.integrations.langchain import RerankrtRerank

    retriever = ContextualCompressionRetriever(
        base_compressor=RerankrtRerank(model="/models/ettin-17m", top_n=5), base_retriever=base)
"""

from __future__ import annotations

import abc
import importlib
import os
from collections.abc import Sequence
from typing import Any, Literal

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('rerankrt.engine.integrations.langchain needs langchain-core: pip install "rerankrt[langchain]"'
                      ) from exc
from pydantic import ConfigDict, Field, SecretStr, model_validator

from ..client import arank_raw, connect_or_load, predict_raw, rank_raw, relevance
from ..tokenize import Pair

__all__ = ["RerankrtCrossEncoder", "RerankrtRerank"]


class _CrossEncoderInterface(abc.ABC):
    """``BaseCrossEncoder``'s interface, for a langchain-core older than 1.2.19 with neither
    langchain-classic nor langchain-community installed (then no LangChain class expects one)."""

    @abc.abstractmethod
    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """Scores of ``(query, document)`` pairs, higher = more relevant."""


def _cross_encoder_base() -> type:
    """The ``BaseCrossEncoder`` class ``CrossEncoderReranker`` checks its ``model`` against.

    Why a search: it moved into langchain-core in 1.2.19; before, langchain-classic (and
    langchain-community) defined it. Subclassing the real class (not duck typing) is what lets
    ``CrossEncoderReranker(model=...)``'s pydantic check accept ours.
    """
    for module in ("langchain_core.cross_encoders", "langchain_classic.retrievers.document_compressors.cross_encoder",
                   "langchain_community.cross_encoders"):
        try:
            return importlib.import_module(module).BaseCrossEncoder
        except (ImportError, AttributeError):
            continue
    return _CrossEncoderInterface


_BaseCrossEncoder: Any = _cross_encoder_base()


def _scorer(reranker: Any, model: str | os.PathLike | None, url: str | None, api_key: str | None,
            options: dict[str, Any]) -> Any:
    if reranker is not None:
        if model is not None or url is not None or options:
            raise ValueError("give either reranker= (a Reranker or RerankClient) or model=/url=, not both")
        if not hasattr(reranker, "rank"):
            raise TypeError(f"reranker must be a rerankrt Reranker or RerankClient, got {type(reranker).__name__}")
        return reranker
    return connect_or_load(model, url=url, api_key=api_key, **options)


class RerankrtCrossEncoder(_BaseCrossEncoder):
    """LangChain ``BaseCrossEncoder`` on rerankrt: ``score`` returns raw logits, in input order.

    For ``CrossEncoderReranker(model=RerankrtCrossEncoder(...), top_n=...)``, which sorts documents by
    these scores (raw logits keep the order exact: no saturation into ties).
    """

    def __init__(self, reranker: Any = None, *, model: str | os.PathLike | None = None, url: str | None = None,
                 api_key: str | None = None, **reranker_options: Any) -> None:
        """``reranker``: a ``Reranker`` or ``RerankClient``; else ``model`` (an artifact directory or hub
        id, loaded with ``reranker_options``) or ``url`` (a server; ``model`` then names the served model)."""
        self.reranker = _scorer(reranker, model, url, api_key, reranker_options)

    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """Raw logits of ``(query, document)`` pairs in input order (``Reranker.predict``'s checks and errors)."""
        pairs: Sequence[Pair] = text_pairs
        return [float(s) for s in predict_raw(self.reranker, pairs)]


class RerankrtRerank(BaseDocumentCompressor):
    """Rerank retrieved documents with rerankrt: best first, at most ``top_n``, score in metadata.

    ``reranker``: a ``Reranker`` (in process) or ``RerankClient`` (remote); or ``model`` (artifact
    directory or hub id, loaded with ``reranker_options`` such as ``precision``, ``backend``,
    ``max_length``) or ``url`` (a rerankrt server; ``model`` then names the served model and
    ``api_key`` defaults to ``RERANKRT_API_KEY``). ``top_n=None`` keeps every document.
    ``activation``: ``"sigmoid"`` reports ``relevance_score`` in [0, 1] (the server's and Cohere's
    scale); ``"raw"`` the logit. The order is the same either way.
    """

    reranker: Any = None
    model: str | None = None
    url: str | None = None
    api_key: SecretStr | None = None
    top_n: int | None = Field(default=3, ge=0)
    activation: Literal["sigmoid", "raw"] = "sigmoid"
    reranker_options: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    @model_validator(mode="after")
    def _connect(self) -> RerankrtRerank:
        """Load the model or open the client now: a wrong path or URL fails where the chain is built."""
        key = self.api_key.get_secret_value() if self.api_key is not None else None
        self.reranker = _scorer(self.reranker, self.model, self.url, key, self.reranker_options)
        return self

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        """The ``top_n`` best of ``documents`` for ``query``, best first, as copies with
        ``metadata["relevance_score"]`` (the inputs are not changed)."""
        docs = list(documents)
        ranked = rank_raw(self.reranker, query, [d.page_content for d in docs], top_k=self.top_n)
        return [self._scored(docs[item["corpus_id"]], item["score"]) for item in ranked]

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Callbacks | None = None) -> Sequence[Document]:
        """:meth:`compress_documents` for async chains: a remote server is awaited, in-process scoring
        runs in a worker thread (never on the event loop)."""
        docs = list(documents)
        ranked = await arank_raw(self.reranker, query, [d.page_content for d in docs], top_k=self.top_n)
        return [self._scored(docs[item["corpus_id"]], item["score"]) for item in ranked]

    def _scored(self, doc: Document, logit: float) -> Document:
        metadata = {**doc.metadata, "relevance_score": relevance(logit, self.activation)}
        return Document(page_content=doc.page_content, metadata=metadata, id=doc.id)
