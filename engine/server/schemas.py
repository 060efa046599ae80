"""Request bodies of the two rerank APIs clients already speak (app.py builds the responses after →).

* ``POST /v2/rerank`` (Cohere v2, what ``cohere.ClientV2`` calls) and ``POST /v1/rerank`` (Jina, and
  Cohere-style clients of the v1 path): ``query``, ``documents`` as strings or ``{"text"}``, ``top_n``,
  ``max_tokens_per_doc``, ``return_documents`` → ``results: [{index, relevance_score, document?}]``;
* ``POST /rerank``: text-embeddings-inference (``query``, ``texts``, ``raw_scores``,
  ``return_text``, ``truncate``, ``truncation_direction``) → ``[{index, score, text?}]`` sorted by score.

Strict types: ``{"query": 5}`` is an error, never the string ``"5"``. Unknown fields are ignored
except where they change meaning. Cohere's ``max_tokens_per_doc`` is honoured (each document cut to that
many tokens: one window of that width, ``chunking.py``); ``long_documents`` (rerankrt) chunks documents.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class DocumentObject(BaseModel):
    """Cohere/Jina accept ``{"text": ...}`` objects; other keys are kept out of scoring."""

    model_config = ConfigDict(extra="allow")
    text: StrictStr


class LongDocumentsBody(BaseModel):
    """rerankrt extension: documents longer than the model reads are cut into windows (``chunking.py``)."""

    model_config = ConfigDict(extra="forbid")
    strategy: Literal["truncate", "chunk"] = "truncate"
    window: StrictInt | None = Field(default=None, ge=1)
    stride: StrictInt | None = Field(default=None, ge=1)
    aggregate: Literal["max", "mean", "first"] = "max"
    max_chunks_per_doc: StrictInt | None = Field(default=None, ge=1)


class RelevantSpansBody(BaseModel):
    """Cohere v2 ``relevant_spans``: only ``{"mode": "disabled"}`` is served (``enabled`` is refused with a 422
    that says so, rather than ignored: a client asking for spans would otherwise get none without knowing)."""

    mode: Literal["enabled", "disabled"]
    threshold: float | None = None
    max_spans: StrictInt | None = None


class RerankRequest(BaseModel):
    model: StrictStr | None = None
    query: StrictStr
    documents: list[StrictStr | DocumentObject]
    top_n: StrictInt | None = Field(default=None, ge=0)
    return_documents: StrictBool = False
    raw_scores: StrictBool = Field(
        default=False, description="rerankrt extension: raw logits instead of sigmoid relevance in [0, 1]")
    max_tokens_per_doc: StrictInt | None = Field(
        default=None, ge=1, description="Cohere v2: each document is cut to this many tokens before scoring")
    long_documents: LongDocumentsBody | None = None
    max_chunks_per_doc: StrictInt | None = Field(
        default=None, ge=1, description="Cohere v1: documents are chunked, at most this many windows each, max taken")
    rank_fields: list[StrictStr] | None = Field(
        default=None, description="Cohere v1: only ['text'] is served (documents are ranked on their text)")
    priority: StrictInt | None = Field(
        default=None, description="Cohere v2: accepted; every admitted request is scheduled alike (no priorities)")
    relevant_spans: RelevantSpansBody | None = None


class TeiRerankRequest(BaseModel):
    model: StrictStr | None = None
    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool | None = None
    truncation_direction: Literal["Right", "right", "Left", "left"] = Field(
        default="Right", description="TEI: which end of a too-long text is cut; Left keeps the document's end")
    long_documents: LongDocumentsBody | None = None
