"""LlamaIndex: rerankrt as a node postprocessor (extra ``rerankrt[llamaindex]``).

:class:`RerankrtRerank` is a ``BaseNodePostprocessor`` (``llama_index.core.postprocessor.types``), the
drop-in for LlamaIndex's ``SentenceTransformerRerank`` in ``node_postprocessors=[...]`` of a query
engine or after ``retriever.retrieve``: nodes come back best first, at most ``top_n``, with the
reranker's score as ``NodeWithScore.score``; ``keep_retrieval_score=True`` keeps the retriever's score
in the node's metadata as ``retrieval_score`` (as ``SentenceTransformerRerank`` does).

Differences from ``SentenceTransformerRerank``, each on purpose:

* no 512-token cap: the model reads its own ``max_length`` (7,999 tokens for Ettin), so a long node
  is not judged by its first page; pass ``max_length`` in ``reranker_options`` to shorten it;
* no torch: the artifact runs on onnxruntime/OpenVINO, or on a ``rerankrt serve`` (``url=``) with
  the same calls, so one argument moves an index's reranking onto a shared server;
* returned nodes are copies when the metadata changes: writing ``retrieval_score`` into the stored
  node would leak it into the next query's text (``MetadataMode.EMBED`` includes metadata) and into
  the LLM's context; the copy also lists it in the excluded metadata keys for both.

The text scored is ``node.get_content(metadata_mode=EMBED)`` (metadata the index embeds, then the
text), as LlamaIndex's rerankers do; ``metadata_mode=MetadataMode.NONE`` scores the text alone.
Bad input raises what ``Reranker.predict`` raises (``InvalidInputTypeError``: a missing query, a
node whose content is not a string); LlamaIndex defines no exception of its own for it.

    from rerankrt.engine.integrations.llamaindex import RerankrtRerank

    engine = index.as_query_engine(similarity_top_k=50,
                                   node_postprocessors=[RerankrtRerank(model="/models/ettin-17m", top_n=5)])
"""

from __future__ import annotations

import os
from typing import Any, Literal

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('rerankrt.engine.integrations.llamaindex needs llama-index-core: '
                      'pip install "rerankrt[llamaindex]"') from exc

from ..client import arank_raw, connect_or_load, rank_raw, relevance
from ..errors import InvalidInputTypeError

__all__ = ["RerankrtRerank"]

RETRIEVAL_SCORE_KEY = "retrieval_score"  # SentenceTransformerRerank's key


class RerankrtRerank(BaseNodePostprocessor):
    """Rerank nodes with rerankrt, in process or on a server (see the module's docstring)."""

    model: str | None = Field(default=None, description="In process: an artifact directory or hub id. With url: "
                              "the served model's name (None: the server's default).")
    url: str | None = Field(default=None, description="A rerankrt server (http://host:port); None scores in process.")
    top_n: int | None = Field(default=2, ge=0, description="Nodes returned, best first (None: all).")
    keep_retrieval_score: bool = Field(default=False, description="Keep the retriever's score in the node's "
                                       "metadata as 'retrieval_score' (the node's score becomes the reranker's).")
    activation: Literal["sigmoid", "raw"] = Field(default="sigmoid", description="'sigmoid': scores in [0, 1] "
                                                  "(the server's relevance_score); 'raw': logits. Same order.")
    metadata_mode: MetadataMode = Field(default=MetadataMode.EMBED, description="Which metadata is scored with "
                                        "the node's text (LlamaIndex rerankers use EMBED).")
    reranker_options: dict[str, Any] = Field(default_factory=dict, description="In process: options of "
                                             "Reranker.from_pretrained (precision, backend, max_length, ...).")
    _scorer: Any = PrivateAttr()

    def __init__(self, top_n: int | None = 2, model: str | os.PathLike | None = None, url: str | None = None, *,
                 reranker: Any = None, api_key: str | None = None, keep_retrieval_score: bool = False,
                 activation: Literal["sigmoid", "raw"] = "sigmoid", metadata_mode: MetadataMode = MetadataMode.EMBED,
                 reranker_options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """``reranker``: an already built ``Reranker`` or ``RerankClient`` (then no ``model``/``url``);
        ``api_key`` (with ``url``; default ``RERANKRT_API_KEY``) is not stored in the component's fields."""
        options = dict(reranker_options or {})
        fields: dict[str, Any] = dict(
            top_n=top_n, model=None if model is None else str(model), url=url,
            keep_retrieval_score=keep_retrieval_score, activation=activation, metadata_mode=metadata_mode,
            reranker_options=options, **kwargs)
        super().__init__(**fields)
        if reranker is not None:
            if model is not None or url is not None or options:
                raise ValueError("give either reranker= (a Reranker or RerankClient) or model=/url=, not both")
            self._scorer = reranker
        else:
            self._scorer = connect_or_load(model, url=url, api_key=api_key, **options)

    @classmethod
    def class_name(cls) -> str:
        return "RerankrtRerank"

    def _texts(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> tuple[Any, list[Any]]:
        if query_bundle is None:
            raise InvalidInputTypeError("query is None; expected a string (pass query_str or query_bundle)")
        return query_bundle.query_str, [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        query, texts = self._texts(nodes, query_bundle)
        with self.callback_manager.event(CBEventType.RERANKING, payload={
                EventPayload.NODES: nodes, EventPayload.MODEL_NAME: self._model_name(),
                EventPayload.QUERY_STR: query, EventPayload.TOP_K: self.top_n}) as event:
            ranked = rank_raw(self._scorer, query, texts, top_k=self.top_n)
            out = self._reranked(nodes, ranked)
            event.on_end(payload={EventPayload.NODES: out})
        return out

    async def _apostprocess_nodes(self, nodes: list[NodeWithScore],
                                  query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        query, texts = self._texts(nodes, query_bundle)
        with self.callback_manager.event(CBEventType.RERANKING, payload={
                EventPayload.NODES: nodes, EventPayload.MODEL_NAME: self._model_name(),
                EventPayload.QUERY_STR: query, EventPayload.TOP_K: self.top_n}) as event:
            ranked = await arank_raw(self._scorer, query, texts, top_k=self.top_n)
            out = self._reranked(nodes, ranked)
            event.on_end(payload={EventPayload.NODES: out})
        return out

    def _reranked(self, nodes: list[NodeWithScore], ranked: list[dict]) -> list[NodeWithScore]:
        out = []
        for item in ranked:
            original = nodes[item["corpus_id"]]
            node = original.node
            if self.keep_retrieval_score:
                node = node.model_copy(update={
                    "metadata": {**node.metadata, RETRIEVAL_SCORE_KEY: original.score},
                    "excluded_embed_metadata_keys": _with(node.excluded_embed_metadata_keys, RETRIEVAL_SCORE_KEY),
                    "excluded_llm_metadata_keys": _with(node.excluded_llm_metadata_keys, RETRIEVAL_SCORE_KEY)})
            out.append(NodeWithScore(node=node, score=relevance(item["score"], self.activation)))
        return out

    def _model_name(self) -> str:
        return self.model or str(getattr(self._scorer, "model", None) or type(self._scorer).__name__)


def _with(keys: list[str], key: str) -> list[str]:
    return keys if key in keys else [*keys, key]
