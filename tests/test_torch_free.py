"""The runtime imports and scores with torch, transformers, sentence-transformers, optimum and the
export package made unimportable (as in a runtime-only install)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = ("torch", "transformers", "sentence_transformers", "optimum", "rerankrt.export")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"{name} is blocked in this test")
            return None
    sys.meta_path.insert(0, Block())
""")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)


def test_runtime_scores_without_the_training_stack(tiny_artifact):
    result = _run(f"""
        import json, sys
        from rerankrt.engine import Reranker
        r = Reranker.from_pretrained({str(tiny_artifact)!r}, precision="int8")
        scores = r.predict([("a query", "a document"), ("another", "")])
        ranked = r.rank("a query", ["x", "y", "z"], top_k=2)
        heavy = [m for m in ("torch", "transformers", "sentence_transformers", "optimum", "rerankrt.export")
                 if m in sys.modules]
        print(json.dumps({{"scores": scores.tolist(), "ranked": len(ranked), "heavy": heavy}}))
    """)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(out["scores"]) == 2 and out["ranked"] == 2 and out["heavy"] == []


def test_runtime_works_without_openvino(tiny_artifact):
    """openvino is optional: with it unimportable, auto falls back to onnxruntime."""
    result = subprocess.run([sys.executable, "-c",
                             BLOCKER.replace('"optimum",', '"optimum", "openvino",') + textwrap.dedent(f"""
        from rerankrt.engine import Reranker
        r = Reranker.from_pretrained({str(tiny_artifact)!r}, precision="auto")
        assert r.backend.name == "onnxruntime", r.backend.name
        print(r.precision, float(r.predict(("q", "d"))))
    """)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] in ("int8", "fp32")


def test_cli_serving_commands_without_the_training_stack(tiny_artifact):
    result = _run(f"""
        import sys
        from rerankrt.engine.cli import main
        sys.exit(main(["predict", {str(tiny_artifact)!r}, "--query", "q", "--doc", "d1", "--doc", "d2"]))
    """)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["document"] for r in rows] == ["d1", "d2"] and all(isinstance(r["score"], float) for r in rows)
    blocked_export = _run("""
        import sys
        from rerankrt.engine.cli import main
        sys.exit(main(["export", "some/model", "-o", "/tmp/never"]))
    """)
    assert blocked_export.returncode == 2 and "[export] extra" in blocked_export.stderr


def test_http_server_serves_without_the_training_stack(tiny_artifact):
    """The [serve] stack (FastAPI, uvicorn) on the runtime alone: app built, a rerank answered in-process."""
    result = _run(f"""
        import json, sys
        import httpx
        from rerankrt.engine.server import create_app, ServerConfig
        from rerankrt.engine.server.main import load_models
        app = create_app(load_models([{str(tiny_artifact)!r}], precision="fp32"), ServerConfig())

        async def go():
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    r = await client.post("/v1/rerank", json={{"query": "q", "documents": ["a", "b", "c"]}})
                    return r.status_code, len(r.json()["results"])

        import asyncio
        status, n = asyncio.run(go())
        heavy = [m for m in ("torch", "transformers", "sentence_transformers", "optimum", "rerankrt.export")
                 if m in sys.modules]
        print(json.dumps({{"status": status, "n": n, "heavy": heavy}}))
    """)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out == {"status": 200, "n": 3, "heavy": []}
