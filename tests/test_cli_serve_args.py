"""``rerankrt serve`` flags: bad values stop at parse time (exit 2, naming the flag), good ones reach ServerConfig.

Why at parse time: ``--port 70000`` used to bind port 4464 (the socket keeps the low 16 bits), and
a zero limit or timeout would start a server that refuses or times out everything.
"""

from __future__ import annotations

import pytest

from rerankrt.engine.cli import build_parser, main
from rerankrt.engine.server.config import API_KEY_ENV, ServerConfig


@pytest.mark.parametrize(("flag", "value"), [
    ("--port", "70000"), ("--port", "0"), ("--port", "-1"), ("--port", "http"), ("--port", "80.5"),
    ("--threads", "0"), ("--max-length", "-5"), ("--token-budget", "0"),
    ("--max-documents", "0"), ("--max-document-bytes", "-1"), ("--max-body-bytes", "1.5"),
    ("--max-queued-pairs", "0"), ("--window-tokens", "0"),
    ("--max-concurrent-requests", "0"), ("--max-client-concurrency", "-2"), ("--tokenize-threads", "0"),
    ("--max-tokenize-waiting", "0"), ("--max-connections", "0"),
    ("--request-timeout", "0"), ("--request-timeout", "nan"), ("--request-timeout", "inf"),
    ("--header-timeout", "-1"), ("--body-timeout", "0"), ("--body-timeout", "soon"),
    ("--max-wait-ms", "-0.5"), ("--drain-grace", "-1"), ("--drain-grace", "inf"),
])
def test_bad_values_exit_2_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", "artifact", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and value in err, err


def _served(monkeypatch, *flags: str) -> dict:
    """Run ``rerankrt serve`` up to the call of ``serve``, and return what that call got."""
    import rerankrt.engine.server.main as server_main

    calls: list[dict] = []
    monkeypatch.setattr(server_main, "serve", lambda artifacts, **kwargs: calls.append({"artifacts": artifacts,
                                                                                         **kwargs}))
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert main(["serve", "art-a", "b=art-b", *flags]) == 0
    assert len(calls) == 1
    return calls[0]


def test_defaults_are_server_config_defaults(monkeypatch):
    call = _served(monkeypatch)
    assert call["config"] == ServerConfig()
    assert call["artifacts"] == ["art-a", "b=art-b"] and call["host"] == "127.0.0.1" and call["port"] == 8080


def test_every_flag_reaches_server_config(monkeypatch):
    call = _served(
        monkeypatch, "--host", "0.0.0.0", "--port", "65535", "--threads", "2", "--max-length", "128",
        "--token-budget", "4096", "--precision", "int8", "--backend", "onnxruntime", "--log-level", "warning",
        "--max-documents", "100", "--max-document-bytes", "2048", "--max-body-bytes", "1000000",
        "--request-timeout", "2.5", "--max-concurrent-requests", "7", "--max-client-concurrency", "3",
        "--max-queued-pairs", "500", "--tokenize-threads", "2", "--max-tokenize-waiting", "9",
        "--max-wait-ms", "0", "--window-tokens", "8192", "--header-timeout", "1.5", "--body-timeout", "4",
        "--max-connections", "64", "--drain-grace", "0", "--no-auto-truncate", "--api-key", "k")
    assert call["config"] == ServerConfig(
        max_documents=100, max_document_bytes=2048, max_body_bytes=1_000_000, request_timeout_s=2.5,
        auto_truncate=False, api_key="k", max_concurrent_requests=7, max_client_concurrency=3,
        max_queued_pairs=500, tokenize_threads=2, max_tokenize_waiting=9, max_wait_ms=0.0, window_tokens=8192,
        header_timeout_s=1.5, body_timeout_s=4.0, max_connections=64, drain_grace_s=0.0)
    assert {k: v for k, v in call.items() if k not in ("artifacts", "config")} == dict(
        host="0.0.0.0", port=65535, log_level="warning", precision="int8", backend="onnxruntime", threads=2,
        max_length=128, token_budget=4096)


def test_limits_that_contradict_each_other_are_one_line_errors(monkeypatch, capsys):
    """Each value is valid alone; ServerConfig refuses the pair, and the CLI reports it without a traceback."""
    import rerankrt.engine.server.main as server_main

    monkeypatch.setattr(server_main, "serve", lambda *a, **k: pytest.fail("served with an invalid config"))
    assert main(["serve", "art", "--max-documents", "100", "--max-queued-pairs", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "max_documents" in err and "Traceback" not in err
