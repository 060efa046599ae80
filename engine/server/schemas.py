"""Request bodies of the two rerank APIs clients already speak (app.py builds the responses after →).

* ``POST /v1/rerank``: Cohere v2 / Jina (``query``, ``documents`` as strings or ``{"text"}``,
  ``top_n``, ``return_documents``) → ``results: [{index, relevance_score, document?}]``;
* ``POST /rerank``: text-embeddings-inference (``query``, ``texts``, ``raw_scores``,
  ``return_text``, ``truncate``) → ``[{index, score, text?}]`` sorted by score.

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


class TeiRerankRequest(BaseModel):
    model: StrictStr | None = None
    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool | None = None
    truncation_direction: Literal["Right", "right"] = "Right"
    long_documents: LongDocumentsBody | None = None
