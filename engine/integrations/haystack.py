"""Haystack 2.x/3.x: rerankrt as a ranker component (extra ``rerankrt[haystack]``).

:class:`RerankrtRanker` is a ``@component`` with Haystack's ranker contract: ``run(query, documents,
top_k=None) -> {"documents": [...]}``, best first, at most ``top_k``, each a copy of its input with
``Document.score`` set (``scale_score=True``, the default of Haystack's rankers, reports it in [0, 1]
with a sigmoid; ``False`` the raw logit; the order is the same). It goes after a retriever in a
``Pipeline`` like any Haystack ranker, and serializes with the pipeline (``to_dict``/``from_dict``,
``Pipeline.dumps``): only the model's location and options are stored, never a loaded model or a key
(``api_key`` is a Haystack ``Secret``, by default the ``RERANKRT_API_KEY`` variable).

Loading a saved pipeline that holds this component: Haystack 3 imports only allowlisted modules, so
pass ``Pipeline.loads(text, allowed_modules=["rerankrt.engine.integrations.haystack"])`` (or set
``HAYSTACK_DESERIALIZATION_ALLOWLIST``). This module does not allowlist itself on import: a pipeline
file could then point the component at any ``url`` and send it your documents; trusting a file that
names rerankrt is the caller's decision.

Why ``warm_up``: building (or loading) a pipeline should be cheap and side-effect free; the model is
loaded, or the server's client opened, when Haystack warms the pipeline up (``Pipeline.run`` does it
first; ``run`` also warms up a component used on its own).

In process (``model=`` an artifact directory or hub id, with ``precision``/``backend``/``device``/
``max_length`` as in ``Reranker.from_pretrained``) or on a ``rerankrt serve`` (``url=``; ``model`` then
names the served model): same component, same results. Bad input raises what ``Reranker.predict``
raises (``InvalidInputTypeError`` for a query or a ``Document.content`` that is not a string, e.g.
``None``: Haystack 2's similarity rankers scored such a document as ``""``, ranking it silently); inside a
pipeline Haystack wraps it in ``PipelineRuntimeError`` with it as the cause.

    from haystack import Pipeline
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from rerankrt.engine.integrations.haystack import RerankrtRanker

    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(store, top_k=50))
    pipe.add_component("ranker", RerankrtRanker(model="/models/ettin-17m", top_k=5))
    pipe.connect("retriever.documents", "ranker.documents")
    pipe.run({"retriever": {"query": q}, "ranker": {"query": q}})
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

try:
    from haystack import Document, component, default_from_dict, default_to_dict
    from haystack.utils import Secret, deserialize_secrets_inplace
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('rerankrt.engine.integrations.haystack needs haystack-ai: pip install "rerankrt[haystack]"'
                      ) from exc

from ..client import API_KEY_ENV, arank_raw, connect_or_load, rank_raw, relevance
from ..errors import InvalidInputTypeError

__all__ = ["RerankrtRanker"]

_ENV_KEY = Secret.from_env_var(API_KEY_ENV, strict=False)  # the default key: the variable the server reads
_LOAD_DEFAULTS: dict[str, Any] = {"precision": "auto", "backend": "auto", "device": "cpu", "max_length": None}


@component
class RerankrtRanker:
    """Ranks Documents by relevance to a query with a rerankrt cross-encoder (see the module's docstring).

    ```python
    ranker = RerankrtRanker(model="/models/ettin-17m", top_k=5)
    ranker.warm_up()
    ranker.run(query="what is a cross-encoder?", documents=docs)["documents"]
    ```
    """

    def __init__(self, model: str | os.PathLike | None = None, *, url: str | None = None,
                 api_key: Secret | None = _ENV_KEY, top_k: int | None = 10,
                 scale_score: bool = True, meta_fields_to_embed: list[str] | None = None,
                 embedding_separator: str = "\n", precision: str = "auto", backend: str = "auto", device: str = "cpu",
                 max_length: int | None = None, reranker_options: dict[str, Any] | None = None,
                 timeout: float = 30.0) -> None:
        """
        :param model: In process: an artifact directory or hub id. With ``url``: the served model's name
            (``None``: the server's default).
        :param url: A rerankrt server (``http://host:port``); ``None`` scores in process.
        :param api_key: Sent to the server as ``Authorization: Bearer`` (a Haystack ``Secret``).
        :param top_k: Documents returned, best first (``None``: all); ``run(top_k=...)`` overrides it.
        :param scale_score: Scores in [0, 1] (sigmoid of the logit, the server's ``relevance_score``)
            instead of raw logits.
        :param meta_fields_to_embed: Meta fields scored with the content, each before it and joined by
            ``embedding_separator`` (as Haystack's rankers do).
        :param precision, backend, device, max_length, reranker_options: In process only: as in
            ``Reranker.from_pretrained`` (``max_length`` defaults to the model's own, 7,999 tokens for Ettin).
        :param timeout: With ``url``: seconds per HTTP request.
        """
        if model is None and url is None:
            raise ValueError("give model= (an artifact directory or hub id) to score in process, or url= for a server")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"top_k must be a non-negative integer or None, got {top_k!r}")
        self.model = None if model is None else str(model)
        self.url = url
        self.api_key = api_key
        self.top_k = top_k
        self.scale_score = scale_score
        self.meta_fields_to_embed = list(meta_fields_to_embed or [])
        self.embedding_separator = embedding_separator
        self.precision, self.backend, self.device, self.max_length = precision, backend, device, max_length
        self.reranker_options = dict(reranker_options or {})
        self.timeout = timeout
        self._scorer: Any = None

    def _options(self) -> dict[str, Any]:
        """Loading options that differ from ``Reranker.from_pretrained``'s defaults (none may go with ``url``)."""
        chosen = {"precision": self.precision, "backend": self.backend, "device": self.device,
                  "max_length": self.max_length}
        return {**{k: v for k, v in chosen.items() if v != _LOAD_DEFAULTS[k]}, **self.reranker_options}

    def warm_up(self) -> None:
        """Load the model (in process) or open the server's client; once."""
        if self._scorer is None:
            key = self.api_key.resolve_value() if self.api_key is not None else None
            if self.url is not None:
                self._scorer = connect_or_load(self.model, url=self.url, api_key=key, timeout=self.timeout,
                                               **self._options())
            else:
                self._scorer = connect_or_load(self.model, **self._options())

    def to_dict(self) -> dict[str, Any]:
        """The component's init parameters (the key as a Secret reference, never its value)."""
        return default_to_dict(
            self, model=self.model, url=self.url, api_key=self.api_key.to_dict() if self.api_key is not None else None,
            top_k=self.top_k, scale_score=self.scale_score, meta_fields_to_embed=self.meta_fields_to_embed,
            embedding_separator=self.embedding_separator, precision=self.precision, backend=self.backend,
            device=self.device, max_length=self.max_length, reranker_options=self.reranker_options,
            timeout=self.timeout)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RerankrtRanker:
        """The component :meth:`to_dict` described (not warmed up)."""
        data = {**data, "init_parameters": dict(data.get("init_parameters") or {})}  # the caller's dict stays as is
        deserialize_secrets_inplace(data["init_parameters"], keys=["api_key"])
        return default_from_dict(cls, data)

    def _texts(self, documents: list[Document]) -> list[Any]:
        texts = []
        for i, doc in enumerate(documents):
            if not isinstance(doc, Document):
                raise InvalidInputTypeError(f"document {i} has type {type(doc).__name__}; expected a haystack "
                                            "Document", i)
            content: Any = doc.content
            if self.meta_fields_to_embed and isinstance(content, str):
                meta = [str(doc.meta[k]) for k in self.meta_fields_to_embed if doc.meta.get(k) is not None]
                content = self.embedding_separator.join([*meta, content])
            texts.append(content)  # not a string (None): rank() names it with its index
        return texts

    def _scored(self, documents: list[Document], ranked: list[dict], scale_score: bool | None) -> list[Document]:
        activation = "sigmoid" if (self.scale_score if scale_score is None else scale_score) else "raw"
        return [dataclasses.replace(documents[item["corpus_id"]], score=relevance(item["score"], activation))
                for item in ranked]

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], top_k: int | None = None,
            scale_score: bool | None = None) -> dict[str, list[Document]]:
        """
        The ``top_k`` documents most relevant to ``query``, best first, with ``score`` set.

        :param query: The query the documents are ranked for.
        :param documents: The candidates (copies are returned; the inputs are not changed).
        :param top_k: Overrides the component's ``top_k``.
        :param scale_score: Overrides the component's ``scale_score``.
        :returns: ``{"documents": [...]}``.
        :raises InvalidInputTypeError: A query or a document content that is not a string.
        """
        self.warm_up()
        documents = list(documents)
        ranked = rank_raw(self._scorer, query, self._texts(documents), top_k=self.top_k if top_k is None else top_k)
        return {"documents": self._scored(documents, ranked, scale_score)}

    @component.output_types(documents=list[Document])
    async def run_async(self, query: str, documents: list[Document], top_k: int | None = None,
                        scale_score: bool | None = None) -> dict[str, list[Document]]:
        """:meth:`run` for ``AsyncPipeline``: a server is awaited, in-process scoring runs in a worker thread."""
        self.warm_up()
        documents = list(documents)
        ranked = await arank_raw(self._scorer, query, self._texts(documents),
                                 top_k=self.top_k if top_k is None else top_k)
        return {"documents": self._scored(documents, ranked, scale_score)}
