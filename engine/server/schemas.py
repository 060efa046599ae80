"""Request bodies of the two rerank APIs clients already speak (app.py builds the responses after →).

* ``POST /v1/rerank``: Cohere v2 / Jina (``query``, ``documents`` as strings or ``{"text"}``,
  ``top_n``, ``return_documents``) → ``results: [{index, relevance_score, document?}]``;
* ``POST /rerank``: text-embeddings-inference (``query``, ``texts``, ``raw_scores``,
  ``return_text``, ``truncate``) → ``[{index, score, text?}]`` sorted by score.

Strict types: ``{"query": 5}`` is an error, never the string ``"5"``. Unknown fields are ignored
(clients send vendor options such as ``max_tokens_per_doc``) except where they change meaning.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class DocumentObject(BaseModel):
    """Cohere/Jina accept ``{"text": ...}`` objects; other keys are kept out of scoring."""

    model_config = ConfigDict(extra="allow")
    text: StrictStr


class RerankRequest(BaseModel):
    model: StrictStr | None = None
    query: StrictStr
    documents: list[StrictStr | DocumentObject]
    top_n: StrictInt | None = Field(default=None, ge=0)
    return_documents: StrictBool = False
    raw_scores: StrictBool = Field(
        default=False, description="rerankrt extension: raw logits instead of sigmoid relevance in [0, 1]")


class TeiRerankRequest(BaseModel):
    model: StrictStr | None = None
    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool | None = None
    truncation_direction: Literal["Right", "right"] = "Right"
