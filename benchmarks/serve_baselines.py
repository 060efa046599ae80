"""The two HTTP baselines of bench_serve.py, each the plain way a user would write it.

* ``naive``: the same rerankrt engine behind an ``async def`` FastAPI endpoint that calls
  ``Reranker.rank`` directly: one request at a time, no cross-request batching;
* ``st``: sentence-transformers ``CrossEncoder`` behind a plain ``def`` FastAPI endpoint (FastAPI
  runs it in its thread pool, so concurrent requests run concurrent ``rank`` calls).

Both answer ``POST /v1/rerank`` with the same request/response shape as ``rerankrt serve`` (the
fields the load generator uses) and ``GET /health``.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

THREADS = 2
MAX_LENGTH = 512


class Body(BaseModel):
    query: str
    documents: list[str]
    top_n: int | None = None


def naive_app(artifact: str) -> FastAPI:
    from rerankrt.engine import Reranker

    reranker = Reranker.from_pretrained(artifact, threads=THREADS, max_length=MAX_LENGTH)
    reranker.predict([("warm up", "a document")])
    app = FastAPI()

    @app.post("/v1/rerank")
    async def rerank(body: Body) -> dict:  # blocks the event loop: one request at a time
        ranked = reranker.rank(body.query, body.documents, top_k=body.top_n)
        return {"results": [{"index": r["corpus_id"], "relevance_score": r["score"]} for r in ranked]}

    return app


def st_app(model_dir: str) -> FastAPI:
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(THREADS)
    model = CrossEncoder(model_dir, device="cpu", max_length=MAX_LENGTH)
    model.predict([("warm up", "a document")])
    app = FastAPI()

    @app.post("/v1/rerank")
    def rerank(body: Body) -> dict:
        ranked = model.rank(body.query, body.documents, top_k=body.top_n, batch_size=32, show_progress_bar=False)
        return {"results": [{"index": int(r["corpus_id"]), "relevance_score": float(r["score"])} for r in ranked]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["naive", "st"])
    parser.add_argument("source", help="artifact directory (naive) or CrossEncoder directory (st)")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = naive_app(args.source) if args.kind == "naive" else st_app(args.source)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
