"""``rerankrt.engine.integrations.ray`` on a local Ray instance: every row keeps its identity and gets
predict's score."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

from rerankrt.engine import Reranker  # noqa: E402
from rerankrt.engine.integrations.ray import rerank_dataset  # noqa: E402

from conftest import EDGE_PAIRS, realistic_pairs  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_rerank_dataset_on_an_actor_pool_matches_predict(local_ray, tiny_artifact):
    pairs = realistic_pairs(4, 20) + EDGE_PAIRS
    rows = [{"row_id": i, "query": q, "document": d} for i, (q, d) in enumerate(pairs)]
    ds = ray.data.from_items(rows, override_num_blocks=6)
    scored = rerank_dataset(ds, tiny_artifact, concurrency=2, num_cpus=1, batch_size=16, precision="fp32",
                            backend="onnxruntime").take_all()
    assert sorted(r["row_id"] for r in scored) == list(range(len(pairs)))
    for r in scored:
        assert (r["query"], r["document"]) == pairs[r["row_id"]]
    expected = Reranker.from_pretrained(tiny_artifact, precision="fp32", backend="onnxruntime").predict(pairs)
    got = np.array([r["score"] for r in sorted(scored, key=lambda r: r["row_id"])])
    np.testing.assert_allclose(got, expected, atol=1e-5)
