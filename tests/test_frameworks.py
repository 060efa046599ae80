"""RAG frameworks (LangChain, LlamaIndex, Haystack) and ``RerankClient``, each through its real pipeline.

Each framework's own retriever picks candidates from negconstraint documents; rerankrt reranks them
inside the framework (in process, and on a real ``rerankrt serve``). The order is checked against
``Reranker.rank`` on the same texts, an independent path, and the scores against its logits. A
framework that is not installed skips its tests (``pytest.importorskip``); the negconstraint data
is read from ../shared at test time and skips when absent.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

from rerankrt.engine import InvalidInputError, InvalidInputTypeError, Reranker  # noqa: E402
from rerankrt.engine.errors import RemoteError  # noqa: E402

from conftest import SHARED, realistic_pairs  # noqa: E402

NEGCONSTRAINT = SHARED / "data" / "negconstraint"
N_QUERIES, N_POOL, N_CANDIDATES, TOP_N = 3, 40, 15, 5
API_KEY = "frameworks-test-key"


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _read_jsonl(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8") as f:
        return {row["_id"]: row["text"] for row in map(json.loads, f)}


@pytest.fixture(scope="module")
def negconstraint() -> tuple[list[str], list[tuple[str, str]]]:
    """A few queries and a pool of (id, text): their relevant documents (qrels) and random others (seeded)."""
    corpus_file, queries_file = NEGCONSTRAINT / "corpus.jsonl", NEGCONSTRAINT / "queries.jsonl"
    qrels_file = NEGCONSTRAINT / "qrels" / "test.tsv"
    if not (corpus_file.is_file() and queries_file.is_file() and qrels_file.is_file()):
        pytest.skip("../shared/data/negconstraint not present")
    corpus, queries = _read_jsonl(corpus_file), _read_jsonl(queries_file)
    relevant: dict[str, list[str]] = {}
    for line in qrels_file.read_text(encoding="utf-8").splitlines()[1:]:
        qid, did, score = line.split("\t")
        if int(score) > 0 and did in corpus and qid in queries:
            relevant.setdefault(qid, []).append(did)
    rng = random.Random(18)
    qids = rng.sample(sorted(relevant), N_QUERIES)
    ids = [d for q in qids for d in relevant[q]]
    ids += rng.sample(sorted(set(corpus) - set(ids)), N_POOL - len(ids))
    return [queries[q] for q in qids], [(d, corpus[d]) for d in ids]


@pytest.fixture(scope="module")
def distilled(distilled_artifact) -> Reranker:
    return Reranker.from_pretrained(distilled_artifact, precision="fp32", backend="onnxruntime")


@pytest.fixture(scope="module")
def tiny(tiny_artifact) -> Reranker:
    return Reranker.from_pretrained(tiny_artifact, precision="fp32", backend="onnxruntime")


@pytest.fixture(scope="module")
def server(tiny):
    """A real ``rerankrt serve`` app (uvicorn, loopback) serving the tiny model as "tiny", with an API key."""
    pytest.importorskip("httpx", reason="httpx (the client extra) not installed")
    pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")
    from live_server import LiveServer

    from rerankrt.engine.server import ServerConfig, create_app

    live = LiveServer(create_app({"tiny": tiny}, ServerConfig(api_key=API_KEY, max_document_bytes=20_000)))
    yield live
    live.close()


@pytest.fixture
def client(server):
    from rerankrt.engine.client import RerankClient

    with RerankClient(server.url, api_key=API_KEY) as c:
        yield c


def _expected(reranker: Reranker, query: str, texts: list[str], top_k: int | None = TOP_N) -> list[dict]:
    return reranker.rank(query, texts, top_k=top_k)


def _assert_same_error(call, reference) -> None:
    """``call`` raises what ``reference`` (``Reranker.predict``/``rank`` on the same input) raises."""
    with pytest.raises(InvalidInputError) as ref:
        reference()
    with pytest.raises(InvalidInputError) as got:
        call()
    assert type(got.value) is type(ref.value)
    assert got.value.index == ref.value.index


# -- RerankClient against a real server -----------------------------------------------------------
def test_client_rank_and_predict_equal_the_reranker(client, tiny):
    pairs = realistic_pairs(3, 12)
    query, docs = pairs[0][0], [d for _, d in pairs[:12]]
    expected = tiny.rank(query, docs)
    got = client.rank(query, docs)
    assert [g["corpus_id"] for g in got] == [e["corpus_id"] for e in expected]
    np.testing.assert_allclose([g["score"] for g in got], [e["score"] for e in expected], atol=1e-5)
    top = client.rank(query, docs, top_k=3, return_documents=True)
    assert [t["corpus_id"] for t in top] == [e["corpus_id"] for e in expected[:3]]
    assert [t["text"] for t in top] == [docs[e["corpus_id"]] for e in expected[:3]]
    assert client.rank(query, []) == [] and client.rank(query, docs, top_k=0) == []

    # predict: pairs of three queries interleaved, back in input order; one pair gives a scalar
    rng = random.Random(0)
    shuffled = rng.sample(pairs, len(pairs))
    np.testing.assert_allclose(client.predict(shuffled), tiny.predict(shuffled), atol=1e-5)
    assert np.ndim(client.predict(shuffled[0])) == 0
    assert float(client.predict(shuffled[0])) == pytest.approx(float(tiny.predict(shuffled[0])), abs=1e-5)
    assert client.predict([]).shape == (0,)


def test_client_splits_long_inputs_and_async_equals_sync(server, tiny):
    from rerankrt.engine.client import RerankClient

    pairs = realistic_pairs(3, 10)
    query, docs = pairs[0][0], [d for _, d in pairs[:10]]
    with RerankClient(server.url, model="tiny", api_key=API_KEY, max_documents_per_request=3) as small:
        np.testing.assert_allclose(small.predict(pairs), tiny.predict(pairs), atol=1e-5)
        ranked = small.rank(query, docs)
        assert [r["corpus_id"] for r in ranked] == [e["corpus_id"] for e in tiny.rank(query, docs)]

        async def both():
            return await small.arank(query, docs, top_k=4), await small.apredict(pairs)

        aranked, apredicted = asyncio.run(both())
    # the server batches concurrent requests together, so scores may move in the last float32 bits
    assert [r["corpus_id"] for r in aranked] == [r["corpus_id"] for r in ranked[:4]]
    np.testing.assert_allclose([r["score"] for r in aranked], [r["score"] for r in ranked[:4]], atol=1e-5)
    np.testing.assert_allclose(apredicted, tiny.predict(pairs), atol=1e-5)


def test_client_errors_are_the_runtimes(client, tiny, server):
    from rerankrt.engine.client import RerankClient

    # checked before sending, exactly as in process
    bad_pairs = [("q", "d"), ("q", None)]
    _assert_same_error(lambda: client.predict(bad_pairs), lambda: tiny.predict(bad_pairs))
    _assert_same_error(lambda: client.rank("q", ["d", 5]), lambda: tiny.rank("q", ["d", 5]))
    _assert_same_error(lambda: client.rank(None, ["d"]), lambda: tiny.rank(None, ["d"]))
    _assert_same_error(lambda: client.predict("not pairs"), lambda: tiny.predict("not pairs"))
    with pytest.raises(ValueError, match="top_k"):
        client.rank("q", ["d"], top_k=-1)

    # what only the server judges: its 4xx answers, with its message and the caller's index
    with pytest.raises(InvalidInputError, match="longer than 20000") as exc:
        client.rank("q", ["short", "x" * 30_000])
    assert exc.value.index == 1
    with pytest.raises(InvalidInputError, match="surrogate"):
        client.rank("q", ["fine", "bad \ud800 text"])

    # everything else is a RemoteError with its status
    with RerankClient(server.url, api_key="wrong") as wrong, pytest.raises(RemoteError) as exc:
        wrong.rank("q", ["d"])
    assert exc.value.status == 401 and not isinstance(exc.value, InvalidInputError)
    with RerankClient(server.url, model="nope", api_key=API_KEY) as unknown, pytest.raises(RemoteError) as exc:
        unknown.predict([("q", "d")])
    assert exc.value.status == 404
    with RerankClient("http://127.0.0.1:9", api_key=API_KEY, timeout=5) as gone, pytest.raises(RemoteError) as exc:
        gone.rank("q", ["d"])
    assert exc.value.status is None


def test_frameworks_are_never_imported_by_the_engine():
    import subprocess
    import sys

    code = ("import sys, rerankrt.engine, rerankrt.engine.client, rerankrt.engine.errors\n"
            "print([m for m in sys.modules if m.split('.')[0] in "
            "('langchain_core', 'langchain_classic', 'llama_index', 'haystack')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- LangChain ------------------------------------------------------------------------------------
def _langchain_retriever(pool: list[tuple[str, str]]):
    from langchain_core.documents import Document
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=32))
    store.add_documents([Document(page_content=text, metadata={"doc_id": did, "source": "negconstraint"}, id=did)
                         for did, text in pool])
    return store.as_retriever(search_kwargs={"k": N_CANDIDATES})


def test_langchain_compression_retriever_equals_rank(negconstraint, distilled):
    pytest.importorskip("langchain_core")
    from rerankrt.engine.integrations.langchain import RerankrtRerank

    queries, pool = negconstraint
    base = _langchain_retriever(pool)
    compressor = RerankrtRerank(reranker=distilled, top_n=TOP_N)
    try:
        from langchain_classic.retrievers import ContextualCompressionRetriever
    except ImportError:  # langchain-classic absent: the compressor on the retriever's output, as it would run
        pipeline = None
    else:
        pipeline = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)
    for query in queries:
        candidates = base.invoke(query)
        assert len(candidates) == N_CANDIDATES
        got = pipeline.invoke(query) if pipeline is not None else compressor.compress_documents(candidates, query)
        expected = _expected(distilled, query, [d.page_content for d in candidates])
        assert [d.id for d in got] == [candidates[e["corpus_id"]].id for e in expected]
        for doc, e in zip(got, expected):
            assert doc.metadata["relevance_score"] == pytest.approx(_sigmoid(e["score"]), rel=1e-6)
            assert doc.metadata["doc_id"] == doc.id and doc.metadata["source"] == "negconstraint"
        assert all("relevance_score" not in d.metadata for d in candidates)  # inputs unchanged
        if pipeline is not None:
            assert asyncio.run(pipeline.ainvoke(query)) == got

    # top_n; raw logits on request
    candidates = base.invoke(queries[0])
    everything = RerankrtRerank(reranker=distilled, top_n=None, activation="raw").compress_documents(candidates,
                                                                                                     queries[0])
    expected = _expected(distilled, queries[0], [d.page_content for d in candidates], top_k=None)
    assert len(everything) == N_CANDIDATES
    assert [d.metadata["relevance_score"] for d in everything] == pytest.approx([e["score"] for e in expected])
    assert RerankrtRerank(reranker=distilled, top_n=0).compress_documents(candidates, queries[0]) == []


def test_langchain_cross_encoder_reranker_equals_rank(negconstraint, distilled):
    pytest.importorskip("langchain_core")
    classic = pytest.importorskip("langchain_classic.retrievers.document_compressors.cross_encoder_rerank")
    from rerankrt.engine.integrations.langchain import RerankrtCrossEncoder

    queries, pool = negconstraint
    base = _langchain_retriever(pool)
    reranker = classic.CrossEncoderReranker(model=RerankrtCrossEncoder(distilled), top_n=TOP_N)
    for query in queries:
        candidates = base.invoke(query)
        got = reranker.compress_documents(candidates, query)
        expected = _expected(distilled, query, [d.page_content for d in candidates])
        assert [d.id for d in got] == [candidates[e["corpus_id"]].id for e in expected]
    pairs = [(queries[0], d.page_content) for d in candidates]
    assert RerankrtCrossEncoder(distilled).score(pairs) == pytest.approx(distilled.predict(pairs).tolist())


def test_langchain_bad_input_raises_what_predict_raises(tiny):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from rerankrt.engine.integrations.langchain import RerankrtCrossEncoder, RerankrtRerank

    compressor = RerankrtRerank(reranker=tiny, top_n=2)
    docs = [Document(page_content="fine"), Document.model_construct(page_content=None, metadata={})]
    _assert_same_error(lambda: compressor.compress_documents(docs, "q"), lambda: tiny.rank("q", ["fine", None]))
    _assert_same_error(lambda: asyncio.run(compressor.acompress_documents(docs, "q")),
                       lambda: tiny.rank("q", ["fine", None]))
    _assert_same_error(lambda: compressor.compress_documents(docs[:1], None), lambda: tiny.rank(None, ["fine"]))
    _assert_same_error(lambda: RerankrtCrossEncoder(tiny).score([("q", "d"), ("q", None)]),
                       lambda: tiny.predict([("q", "d"), ("q", None)]))
    with pytest.raises(ValueError, match="not both"):
        RerankrtRerank(reranker=tiny, url="http://127.0.0.1:9")
    with pytest.raises(ValueError):
        RerankrtRerank(reranker=tiny, top_n=-1)


def test_langchain_remote_equals_rank(server, tiny):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from rerankrt.engine.integrations.langchain import RerankrtCrossEncoder, RerankrtRerank

    pairs = realistic_pairs(1, 12)
    query, texts = pairs[0][0], [d for _, d in pairs]
    docs = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(texts)]
    compressor = RerankrtRerank(url=server.url, model="tiny", api_key=API_KEY, top_n=4)
    expected = _expected(tiny, query, texts, top_k=4)
    got = compressor.compress_documents(docs, query)
    assert [d.metadata["i"] for d in got] == [e["corpus_id"] for e in expected]
    assert [d.metadata["i"] for d in asyncio.run(compressor.acompress_documents(docs, query))] == \
        [e["corpus_id"] for e in expected]
    remote = RerankrtCrossEncoder(url=server.url, api_key=API_KEY)
    np.testing.assert_allclose(remote.score(pairs), tiny.predict(pairs), atol=1e-5)


# -- LlamaIndex -----------------------------------------------------------------------------------
@pytest.fixture
def llama_index(monkeypatch):
    """llama-index-core with a mock LLM in its global Settings (restored after), so nothing reaches for OpenAI."""
    core = pytest.importorskip("llama_index.core")
    from llama_index.core.llms import MockLLM

    monkeypatch.setattr(core.Settings, "_llm", MockLLM())
    return core


def _llama_index(pool: list[tuple[str, str]]):
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.schema import TextNode

    nodes = [TextNode(text=text, id_=did, metadata={"source": "negconstraint"}) for did, text in pool]
    return VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))


def test_llamaindex_query_engine_equals_rank(llama_index, negconstraint, distilled):
    from llama_index.core import get_response_synthesizer
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.schema import MetadataMode

    from rerankrt.engine.integrations.llamaindex import RerankrtRerank

    queries, pool = negconstraint
    retriever = _llama_index(pool).as_retriever(similarity_top_k=N_CANDIDATES)
    rerank = RerankrtRerank(top_n=TOP_N, reranker=distilled)
    engine = RetrieverQueryEngine(retriever=retriever, node_postprocessors=[rerank],
                                  response_synthesizer=get_response_synthesizer(response_mode="no_text"))
    for query in queries:
        candidates = retriever.retrieve(query)
        assert len(candidates) == N_CANDIDATES
        # what LlamaIndex's rerankers score: the text with the metadata the index embeds
        texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in candidates]
        expected = _expected(distilled, query, texts)
        got = engine.query(query).source_nodes
        assert [n.node.node_id for n in got] == [candidates[e["corpus_id"]].node.node_id for e in expected]
        assert [n.score for n in got] == pytest.approx([_sigmoid(e["score"]) for e in expected], rel=1e-6)
        assert all(n.node.metadata == {"source": "negconstraint"} for n in got)
        assert [n.node.node_id for n in asyncio.run(engine.aquery(query)).source_nodes] == \
            [n.node.node_id for n in got]


def test_llamaindex_keeps_retrieval_score_top_n_and_bad_input(llama_index, negconstraint, tiny):
    from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

    from rerankrt.engine.integrations.llamaindex import RerankrtRerank

    queries, pool = negconstraint
    candidates = _llama_index(pool).as_retriever(similarity_top_k=N_CANDIDATES).retrieve(queries[0])
    texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in candidates]
    by_id = {n.node.node_id: n for n in candidates}

    kept = RerankrtRerank(top_n=None, reranker=tiny, keep_retrieval_score=True, activation="raw") \
        .postprocess_nodes(candidates, query_str=queries[0])
    expected = _expected(tiny, queries[0], texts, top_k=None)
    assert [n.node.node_id for n in kept] == [candidates[e["corpus_id"]].node.node_id for e in expected]
    assert [n.score for n in kept] == pytest.approx([e["score"] for e in expected])
    for n in kept:
        assert n.node.metadata["retrieval_score"] == by_id[n.node.node_id].score
        assert n.node.metadata["source"] == "negconstraint"
        # the retriever's score is neither scored nor shown to the LLM, and the stored node is unchanged
        assert "retrieval_score" not in n.node.get_content(metadata_mode=MetadataMode.EMBED)
        assert "retrieval_score" not in n.node.get_content(metadata_mode=MetadataMode.LLM)
        assert "retrieval_score" not in by_id[n.node.node_id].node.metadata
    top = RerankrtRerank(top_n=3, reranker=tiny).postprocess_nodes(candidates, query_str=queries[0])
    assert [n.node.node_id for n in top] == [n.node.node_id for n in kept[:3]]

    rerank = RerankrtRerank(top_n=2, reranker=tiny, metadata_mode=MetadataMode.NONE)
    nodes = [NodeWithScore(node=TextNode(text="fine"), score=0.5),
             NodeWithScore(node=TextNode.model_construct(text=None, metadata={}), score=0.4)]
    _assert_same_error(lambda: rerank.postprocess_nodes(nodes, query_str="q"), lambda: tiny.rank("q", ["fine", None]))
    with pytest.raises(InvalidInputTypeError):
        rerank.postprocess_nodes(nodes[:1])  # no query at all


def test_llamaindex_remote_equals_rank(llama_index, server, tiny):
    from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

    from rerankrt.engine.integrations.llamaindex import RerankrtRerank

    pairs = realistic_pairs(1, 12)
    query = pairs[0][0]
    nodes = [NodeWithScore(node=TextNode(text=d, id_=f"n{i}"), score=0.0) for i, (_, d) in enumerate(pairs)]
    rerank = RerankrtRerank(top_n=4, url=server.url, api_key=API_KEY)
    expected = _expected(tiny, query, [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes], 4)
    got = rerank.postprocess_nodes(nodes, query_str=query)
    assert [n.node.node_id for n in got] == [f"n{e['corpus_id']}" for e in expected]
    agot = asyncio.run(rerank.apostprocess_nodes(nodes, query_str=query))
    assert [n.node.node_id for n in agot] == [n.node.node_id for n in got]


# -- Haystack -------------------------------------------------------------------------------------
def _haystack_pipeline(pool: list[tuple[str, str]], ranker):
    from haystack import Document, Pipeline
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore

    store = InMemoryDocumentStore()
    store.write_documents([Document(id=did, content=text, meta={"source": "negconstraint"}) for did, text in pool])
    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(store, top_k=N_CANDIDATES))
    pipe.add_component("ranker", ranker)
    pipe.connect("retriever.documents", "ranker.documents")
    return pipe


def test_haystack_pipeline_equals_rank_and_roundtrips(negconstraint, distilled, distilled_artifact):
    pytest.importorskip("haystack")
    from haystack import Pipeline

    from rerankrt.engine.integrations.haystack import RerankrtRanker

    queries, pool = negconstraint
    ranker = RerankrtRanker(model=str(distilled_artifact), precision="fp32", backend="onnxruntime", top_k=TOP_N)
    pipe = _haystack_pipeline(pool, ranker)
    for query in queries:
        out = pipe.run({"retriever": {"query": query}, "ranker": {"query": query}}, include_outputs_from={"retriever"})
        candidates, got = out["retriever"]["documents"], out["ranker"]["documents"]
        assert len(candidates) == N_CANDIDATES
        expected = _expected(distilled, query, [d.content for d in candidates])
        assert [d.id for d in got] == [candidates[e["corpus_id"]].id for e in expected]
        assert [d.score for d in got] == pytest.approx([_sigmoid(e["score"]) for e in expected], rel=1e-6)
        assert all(d.meta == {"source": "negconstraint"} for d in got)
        bm25 = {d.id: d.score for d in candidates}
        assert all(bm25[d.id] != d.score for d in got)  # copies with the reranker's score; inputs untouched

    # serialized and loaded back: the same component, the same results
    data = ranker.to_dict()
    assert data["init_parameters"]["api_key"] == {"type": "env_var", "env_vars": ["RERANKRT_API_KEY"], "strict": False}
    again = RerankrtRanker.from_dict(data)
    assert again.to_dict() == data
    # Haystack 3 loads only allowlisted modules: a pipeline file naming rerankrt is trusted by the caller, not by us
    allow = ({"allowed_modules": [RerankrtRanker.__module__]}
             if "allowed_modules" in inspect.signature(Pipeline.loads).parameters else {})
    loaded = Pipeline.loads(pipe.dumps(), **allow)
    query = queries[0]
    assert [d.id for d in loaded.run({"retriever": {"query": query}, "ranker": {"query": query}})["ranker"][
        "documents"]] == [d.id for d in pipe.run({"retriever": {"query": query}, "ranker": {"query": query}})[
            "ranker"]["documents"]]


def test_haystack_top_k_raw_scores_and_bad_input(tiny, tiny_artifact):
    pytest.importorskip("haystack")
    from haystack import Document
    from haystack.core.errors import PipelineRuntimeError

    from rerankrt.engine.integrations.haystack import RerankrtRanker

    pairs = realistic_pairs(1, 12)
    query, texts = pairs[0][0], [d for _, d in pairs]
    docs = [Document(content=t, meta={"i": i}) for i, t in enumerate(texts)]
    ranker = RerankrtRanker(model=str(tiny_artifact), precision="fp32", backend="onnxruntime", top_k=3,
                            scale_score=False)
    ranker.warm_up()
    expected = _expected(tiny, query, texts, top_k=None)
    got = ranker.run(query=query, documents=docs)["documents"]
    assert [d.meta["i"] for d in got] == [e["corpus_id"] for e in expected[:3]]
    assert [d.score for d in got] == pytest.approx([e["score"] for e in expected[:3]])
    everything = ranker.run(query=query, documents=docs, top_k=len(docs) + 5, scale_score=True)["documents"]
    assert [d.meta["i"] for d in everything] == [e["corpus_id"] for e in expected]
    assert all(0 <= d.score <= 1 for d in everything)
    assert asyncio.run(ranker.run_async(query=query, documents=docs)) == {"documents": got}
    assert ranker.run(query=query, documents=[]) == {"documents": []}

    bad = [Document(content="fine"), Document(content=None)]
    _assert_same_error(lambda: ranker.run(query="q", documents=bad), lambda: tiny.rank("q", ["fine", None]))
    _assert_same_error(lambda: ranker.run(query=None, documents=bad[:1]), lambda: tiny.rank(None, ["fine"]))
    pipe = _haystack_pipeline([("a", "fine")], ranker)
    with pytest.raises(PipelineRuntimeError) as exc:
        pipe.run({"retriever": {"query": "fine"}, "ranker": {"query": None}})
    assert isinstance(exc.value.__cause__, InvalidInputTypeError)
    with pytest.raises(ValueError, match="model= .* or url="):
        RerankrtRanker()


def test_haystack_remote_equals_rank(server, tiny):
    pytest.importorskip("haystack")
    from haystack import Document
    from haystack.utils import Secret

    from rerankrt.engine.integrations.haystack import RerankrtRanker

    pairs = realistic_pairs(1, 12)
    query, texts = pairs[0][0], [d for _, d in pairs]
    docs = [Document(content=t, meta={"i": i}) for i, t in enumerate(texts)]
    ranker = RerankrtRanker(url=server.url, model="tiny", api_key=Secret.from_env_var("RERANKRT_TEST_KEY"), top_k=4)
    os.environ["RERANKRT_TEST_KEY"] = API_KEY
    try:
        ranker = RerankrtRanker.from_dict(ranker.to_dict())  # the key travels as a reference to the variable
        ranker.warm_up()
        got = ranker.run(query=query, documents=docs)["documents"]
        agot = asyncio.run(ranker.run_async(query=query, documents=docs))["documents"]
    finally:
        del os.environ["RERANKRT_TEST_KEY"]
    expected = _expected(tiny, query, texts, top_k=4)
    assert [d.meta["i"] for d in got] == [e["corpus_id"] for e in expected]
    assert [d.score for d in got] == pytest.approx([_sigmoid(e["score"]) for e in expected], abs=1e-5)
    assert [d.meta["i"] for d in agot] == [d.meta["i"] for d in got]
