"""Real clients against ``rerankrt serve``: the ``cohere`` SDK (v2 and v1, sync and async) and a plain
HTTP TEI client, each parsing the responses with its own models.

Scores are checked against ``Reranker.predict`` / token ids built here from the tokenizer (independent
of the server's path), never against values taken from the server itself.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="httpx (dev extra) not installed")
pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")
cohere = pytest.importorskip("cohere", reason="the cohere SDK (dev extra) is not installed")

from live_server import LiveServer  # noqa: E402

from rerankrt.engine import Reranker  # noqa: E402
from rerankrt.engine.server import ServerConfig, create_app  # noqa: E402

from conftest import EDGE_PAIRS, realistic_pairs, whole_tokens  # noqa: E402

CLS, SEP = 50281, 50282


@pytest.fixture(scope="module")
def reranker(tiny_artifact) -> Reranker:
    return Reranker.from_pretrained(tiny_artifact, precision="fp32", backend="onnxruntime")


@pytest.fixture(scope="module")
def short_reranker(tiny_artifact) -> Reranker:
    """The same model reading at most 48 tokens, so ordinary documents are cut (truncation tests)."""
    return Reranker.from_pretrained(tiny_artifact, precision="fp32", backend="onnxruntime", max_length=48)


@pytest.fixture(scope="module")
def live(reranker, short_reranker):
    server = LiveServer(create_app({"tiny": reranker, "tiny-48": short_reranker},
                                   ServerConfig(api_key="secret-key")))
    yield server
    server.close()


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


def _docs(n_docs=20):
    pairs = realistic_pairs(1, n_docs)
    return pairs[0][0], [d for _, d in pairs] + [d for _, d in EDGE_PAIRS if d]


# -- Cohere v2 (/v2/rerank) -----------------------------------------------------------------------------
def test_cohere_v2_client_ranks_like_predict(live, reranker):
    query, docs = _docs()
    expected = _sigmoid(reranker.predict([(query, d) for d in docs]))
    co = cohere.ClientV2(api_key="secret-key", base_url=live.url)
    res = co.rerank(model="tiny", query=query, documents=docs)
    assert isinstance(res, cohere.v2.types.V2RerankResponse)
    assert [r.index for r in res.results] == list(np.argsort(-expected, kind="stable"))
    for r in res.results:
        assert r.relevance_score == pytest.approx(float(expected[r.index]), abs=1e-6)
    assert res.meta is not None and res.meta.api_version.version == "2"

    top = co.rerank(model="tiny", query=query, documents=docs, top_n=3)
    assert [r.index for r in top.results] == [r.index for r in res.results[:3]]


def test_cohere_v2_max_tokens_per_doc_scores_the_first_tokens(live, reranker):
    query, docs = _docs(8)
    cap = 16
    co = cohere.ClientV2(api_key="secret-key", base_url=live.url)
    res = co.rerank(model="tiny", query=query, documents=docs, max_tokens_per_doc=cap)
    q = whole_tokens(reranker, query)
    for r in res.results:
        d = whole_tokens(reranker, docs[r.index])
        ids = [CLS, *q, SEP, *d[:cap], SEP]
        assert r.relevance_score == pytest.approx(float(_sigmoid(reranker.logits_for_token_ids([ids])[0, 0])),
                                                  abs=1e-6)


def test_cohere_v2_async_client_concurrent_requests(live, reranker):
    query, docs = _docs(12)
    expected = _sigmoid(reranker.predict([(query, d) for d in docs]))

    async def many():
        co = cohere.AsyncClientV2(api_key="secret-key", base_url=live.url)
        return await asyncio.gather(*[co.rerank(model="tiny", query=query, documents=docs[i:] + docs[:i])
                                      for i in range(8)])

    for i, res in enumerate(asyncio.run(many())):
        rotated = np.roll(expected, -i)
        got = np.array([r.relevance_score for r in sorted(res.results, key=lambda r: r.index)])
        np.testing.assert_allclose(got, rotated, atol=1e-6)


def test_cohere_errors_map_to_the_sdks_exceptions(live):
    co = cohere.ClientV2(api_key="secret-key", base_url=live.url)
    with pytest.raises(cohere.errors.UnprocessableEntityError):
        co.rerank(model="tiny", query="q", documents=[])
    with pytest.raises(cohere.errors.NotFoundError):
        co.rerank(model="no-such-model", query="q", documents=["d"])
    with pytest.raises(cohere.errors.UnprocessableEntityError) as info:  # asked for, not served: said so
        co.rerank(model="tiny", query="q", documents=["d"], relevant_spans={"mode": "enabled"})
    assert "relevant_spans" in str(info.value.body)
    with pytest.raises(cohere.errors.UnauthorizedError):
        cohere.ClientV2(api_key="wrong", base_url=live.url).rerank(model="tiny", query="q", documents=["d"])
    with pytest.raises(cohere.errors.UnprocessableEntityError):
        co.rerank(model="tiny", query="q", documents=["d"], top_n=-1)


# -- Cohere v1 (/v1/rerank) -----------------------------------------------------------------------------
def test_cohere_v1_client_with_documents_returned_and_chunks(live, reranker):
    query, docs = _docs(10)
    expected = _sigmoid(reranker.predict([(query, d) for d in docs]))
    co = cohere.Client(api_key="secret-key", base_url=live.url)
    res = co.rerank(model="tiny", query=query, documents=docs, top_n=4, return_documents=True)
    assert [r.index for r in res.results] == list(np.argsort(-expected, kind="stable")[:4])
    for r in res.results:
        assert r.document is not None and r.document.text == docs[r.index]
        assert r.relevance_score == pytest.approx(float(expected[r.index]), abs=1e-6)

    # max_chunks_per_doc: Cohere v1 chunks long documents and takes the best chunk; rerankrt's chunk/max
    long_docs = [" ".join([d] * 4) for d in docs[:4]]
    chunked = _sigmoid(reranker.predict([(query, d) for d in long_docs],
                                        long_documents={"strategy": "chunk", "max_chunks_per_doc": 2}))
    res = co.rerank(model="tiny", query=query, documents=long_docs, max_chunks_per_doc=2)
    got = np.array([r.relevance_score for r in sorted(res.results, key=lambda r: r.index)])
    np.testing.assert_allclose(got, chunked, atol=1e-6)
    with pytest.raises(cohere.errors.UnprocessableEntityError):
        co.rerank(model="tiny", query=query, documents=[{"title": "t", "text": "x"}], rank_fields=["title"])


# -- TEI (/rerank) over plain HTTP --------------------------------------------------------------------------
def _tei(live, body):
    r = httpx.post(f"{live.url}/rerank", json=body, headers={"Authorization": "Bearer secret-key"}, timeout=60)
    return r


@pytest.mark.parametrize("direction", ["Right", "right", "Left", "left"])
def test_tei_truncation_direction_cuts_the_named_end(live, short_reranker, direction):
    """TEI's ``truncation_direction``: longest_first from the named end. The expected ids are cut here by
    hand from the untruncated tokens (the query is short, so only the document loses tokens)."""
    query, docs = _docs(10)
    query = " ".join(query.split()[:5])  # short: only the documents are cut, as the expected ids assume
    r = _tei(live, {"model": "tiny-48", "query": query, "texts": docs, "raw_scores": True, "truncate": True,
                    "truncation_direction": direction})
    assert r.status_code == 200, r.text
    got = {x["index"]: x["score"] for x in r.json()}
    q = whole_tokens(short_reranker, query)
    room = 48 - 3 - len(q)
    assert room > 0
    cut = 0
    for i, doc in enumerate(docs):
        d = whole_tokens(short_reranker, doc)
        cut += len(d) > room
        kept = d[-room:] if direction.lower() == "left" and len(d) > room else d[:room]
        ids = [CLS, *q, SEP, *kept, SEP]
        assert got[i] == pytest.approx(float(short_reranker.logits_for_token_ids([ids])[0, 0]), abs=1e-5), i
    assert cut >= 3  # the test means something: several documents were cut


def test_tei_left_truncation_refuses_what_it_cannot_mean(live):
    r = _tei(live, {"query": "q", "texts": ["d"], "truncation_direction": "left",
                    "long_documents": {"strategy": "chunk"}})
    assert r.status_code == 422 and "truncation_direction" in r.text
    r = _tei(live, {"query": "q", "texts": ["d"], "truncation_direction": "middle"})
    assert r.status_code == 422


def test_tei_client_without_truncate_gets_413_for_a_long_text(live):
    r = _tei(live, {"model": "tiny-48", "query": "q", "texts": ["word " * 200], "truncate": False})
    assert r.status_code == 413 and r.json()["error"]["limit"] == "max_length"
