"""Fuzzing ``rerankrt serve`` over real HTTP: the contract an operator relies on before going live.

One real server process (``python -m rerankrt.engine.cli serve``, the command an operator runs)
serves every test of this module; a second one, started only for the auth tests, has ``--api-key``.
The contract, for every complete, well-formed HTTP request:

* never a 5xx (503 only while starting or draining, which nothing here provokes) and never a
  dropped connection;
* every non-2xx body is JSON ``{"error": {"type": str, "message": str, ...}}`` with a JSON
  content type: 404, 405, malformed JSON, wrong types, limits and 401 alike;
* invalid text (lone UTF-16 surrogates) is 400 or 200, never a 5xx;
* a list longer than ``--max-documents`` is a 413 answered quickly, whatever its items are;
* a body above ``--max-body-bytes`` is a 413;
* malformed JSON of every kind (100k-deep nesting, huge numbers, NaN/Infinity, invalid UTF-8) is a
  4xx, and so is a body sent as a non-JSON content type or in a content coding (gzip, ...): the
  server does not guess. Left to the server: a UTF-8 BOM (RFC 8259 8.1 lets a parser ignore it) and
  duplicate keys that resolve to a valid request;
* a well-typed request is answered 200 with results that look right (count, order, ranges, echoes);
* while all of that goes on, ``/health`` p99 stays under 50 ms, RSS grows by at most 100 MB (and
  peaks at most 256 MB above where it started), and a valid request gets the same scores after the
  fuzz as before it.

Generated requests come from hypothesis, derandomized (the same examples on every run, no example
database). ``RERANKRT_FUZZ_SCALE=10`` multiplies every generated count for a longer soak.
No expected value comes from the code under test: scores are checked by their properties
(range, order, duplicates, determinism, raw logits vs relevance, the two APIs agreeing).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx", reason="httpx (dev extra) not installed")
pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")
pytest.importorskip("hypothesis", reason="hypothesis (dev extra) not installed")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the server's RSS")

MAX_DOCUMENTS = 1000
MAX_BODY_BYTES = 2_000_000
API_KEY = "fuzz-test-key-7f3a"
QUICK_S = 0.5  # "well under 1 s" for a refused over-long list, on top of what parsing the JSON costs here
REQUEST_TIMEOUT_S = 20.0  # a request with no answer by then counts as dropped
RSS_GROWTH_MB = 100  # resident memory after the run vs before it
PEAK_GROWTH_MB = 256  # the peak during the run vs before it (memory handed back later hides in RSS-after)
HEALTH_P99_S = 0.050
HEALTH_INTERVAL_S = 0.020
SCALE = float(os.environ.get("RERANKRT_FUZZ_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, round(n * SCALE))


FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much, HealthCheck.data_too_large])

JSON_TYPE = {"content-type": "application/json"}
OK = frozenset({200})
CLIENT_ERRORS = frozenset(range(400, 500))
OK_OR_CLIENT_ERROR = OK | CLIENT_ERRORS
TEXT_VERDICTS = frozenset({200, 400})  # invalid text: refused with 400, or answered


# --------------------------------------------------------------------------------------------------
# the server under test


@dataclass
class Reply:
    method: str
    path: str
    body: bytes | None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""
    elapsed: float = 0.0
    error: str | None = None  # transport failure: no (complete) answer

    def json(self):
        return json.loads(self.content)

    def describe(self) -> str:
        body = self.body if self.body is None or len(self.body) <= 300 else (
            self.body[:240] + b"...<%d bytes>..." % len(self.body) + self.body[-40:])
        answer = self.error or f"{self.status} {self.headers.get('content-type')!r} {self.content[:400]!r}"
        return f"{self.method} {self.path} body={body!r} -> {answer} ({self.elapsed:.3f} s)"


class ServerProcess:
    """``rerankrt serve`` in a child process on a free loopback port, its output in a log file."""

    def __init__(self, artifact: Path, log_path: Path, *extra: str) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [sys.executable, "-m", "rerankrt.engine.cli", "serve", str(artifact), "--port", str(self.port),
               "--precision", "fp32", "--backend", "onnxruntime", "--log-level", "warning",
               "--max-documents", str(MAX_DOCUMENTS), "--max-body-bytes", str(MAX_BODY_BYTES), *extra]
        with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe would stall the server
            self.proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S)
        self.auth: dict[str, str] = {}

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, f"server did not start:\n{self.log()}"
            time.sleep(0.1)

    def send(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             timeout_s: float = REQUEST_TIMEOUT_S, content=None) -> Reply:
        reply = Reply(method, path, body)
        headers = {**self.auth, **(headers or {})}
        started = time.perf_counter()
        try:
            # an absolute URL: a path such as "//x" must not be read as a host relative to base_url
            response = self.client.request(method, self.url + path, content=body if content is None else content,
                                           headers=headers, timeout=timeout_s)
            reply.status, reply.headers, reply.content = response.status_code, dict(response.headers), response.content
        except httpx.HTTPError as exc:  # any transport failure is a finding, not a test crash
            reply.error = f"{type(exc).__name__}: {exc}"
        reply.elapsed = time.perf_counter() - started
        if reply.error or reply.status >= 500:
            # the server may have closed this connection: start the next request on a fresh one, so
            # a failure is charged to the request that caused it and not to the one after
            self.client.close()
            self.client = httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S)
        return reply

    def post_json(self, path: str, value, **kwargs) -> Reply:
        return self.send("POST", path, encode(value), JSON_TYPE, **kwargs)

    def wait_idle(self, timeout_s: float = 60) -> None:
        """After a request that ran long: wait until the server answers /health quickly again."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            started = time.perf_counter()
            with contextlib.suppress(httpx.TransportError):
                httpx.get(self.url + "/health", timeout=timeout_s)
            if time.perf_counter() - started < 0.1:
                return
            time.sleep(0.05)

    def rss_mb(self, field: str = "VmRSS") -> float:
        """The server's resident memory now (``VmRSS``) or at its peak (``VmHWM``)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no {field} in /proc/<pid>/status")

    def reset_peak_rss(self) -> bool:
        """Start ``VmHWM`` over from the current RSS (``clear_refs`` 5); False where not permitted."""
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def log(self, tail: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace")
        return text[-tail:]

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()  # graceful draining is test_server.py's subject, not this module's
        self.proc.wait(30)


@pytest.fixture(scope="module")
def server(tiny_artifact, tmp_path_factory):
    proc = ServerProcess(tiny_artifact, tmp_path_factory.mktemp("fuzz-server") / "server.log")
    try:
        proc.wait_ready()
        proc.model = proc.send("GET", "/info").json()["default_model"]
        yield proc
    finally:
        proc.close()


@pytest.fixture(scope="module")
def auth_server(tiny_artifact, tmp_path_factory):
    proc = ServerProcess(tiny_artifact, tmp_path_factory.mktemp("fuzz-auth-server") / "server.log",
                         "--api-key", API_KEY)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.close()


# --------------------------------------------------------------------------------------------------
# the contract


def contract_problems(server: ServerProcess, reply: Reply) -> list[str]:
    """What in ``reply`` breaks the contract that holds for every request, whatever it sent."""
    if reply.error:
        return [f"no answer (dropped connection or hang): {reply.error}"]
    problems = []
    if reply.status >= 500:
        problems.append(f"a {reply.status}")
    ctype = reply.headers.get("content-type", "")
    if not 200 <= reply.status < 300 and reply.method != "HEAD":
        if not ctype.startswith("application/json"):
            problems.append(f"a non-2xx answer with content-type {ctype!r}")
        try:
            body = reply.json()
        except ValueError:
            problems.append("a non-2xx body that is not JSON")
        else:
            error = body.get("error") if isinstance(body, dict) else None
            if not (isinstance(error, dict) and isinstance(error.get("type"), str)
                    and isinstance(error.get("message"), str)):
                problems.append('a non-2xx body not shaped {"error": {"type": str, "message": str}}')
    elif ctype.startswith("application/json") and reply.method != "HEAD":
        try:
            reply.json()
        except ValueError:
            problems.append("a 2xx JSON answer that does not parse")
    if server.proc.poll() is not None:
        problems.append(f"the server process exited with {server.proc.returncode}")
    return problems


def check(server: ServerProcess, reply: Reply, allowed: frozenset[int] | set[int] = OK_OR_CLIENT_ERROR,
          why: str = "") -> None:
    problems = contract_problems(server, reply)
    if not problems and reply.status not in allowed:
        problems.append(f"status {reply.status} where {why or 'the contract'} allows {_statuses(allowed)}")
    if problems:
        log = f"\nserver log tail:\n{server.log(1500)}" if reply.error or (reply.status or 0) >= 500 else ""
        raise AssertionError("; ".join(problems) + "\n  " + reply.describe() + log)


def _statuses(allowed) -> str:
    allowed = set(allowed)
    if len(allowed & CLIENT_ERRORS) < 50:
        return ", ".join(map(str, sorted(allowed)))
    missing = sorted(CLIENT_ERRORS - allowed)
    return ", ".join(["4xx" + (f" but {missing}" if missing else ""), *map(str, sorted(allowed - CLIENT_ERRORS))])


def quick_budget_s(body: bytes | None) -> float:
    """QUICK_S plus what parsing ``body`` with the stdlib takes on this machine (a loaded CI runner parses
    1 MiB of ``[[[]]]`` in ~0.3 s): the bound catches per-item work, not a slow machine."""
    started = time.perf_counter()
    with contextlib.suppress(ValueError, RecursionError):
        json.loads(body or b"")
    return QUICK_S + time.perf_counter() - started


def encode(value, utf8: bool = False) -> bytes:
    """JSON bytes; lone surrogates become ``\\udXXX`` escapes, or with ``utf8`` raw (invalid UTF-8) bytes."""
    if utf8:
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()


def has_surrogate(value) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_surrogate(v) for v in value)
    return False


def _finite_scores(scores: list, raw: bool) -> None:
    assert all(isinstance(s, float) and math.isfinite(s) for s in scores), scores
    if not raw:
        assert all(0.0 <= s <= 1.0 for s in scores), f"relevance outside [0, 1]: {scores}"
    assert all(a >= b for a, b in zip(scores, scores[1:])), f"not sorted by score: {scores}"


def _same_text_same_score(texts: list[str], by_index: dict[int, float]) -> None:
    seen: dict[str, float] = {}
    for i, score in sorted(by_index.items()):
        if texts[i] in seen:
            assert score == pytest.approx(seen[texts[i]], abs=1e-4), f"the same document scored differently: {i}"
        seen.setdefault(texts[i], score)


def check_v1_results(body: dict, reply: Reply) -> None:
    """A 200 from /v1/rerank for the well-typed ``body``: results that look right."""
    texts = [d if isinstance(d, str) else d["text"] for d in body["documents"]]
    results = reply.json()["results"]
    top_n = body.get("top_n")
    if top_n != 0:  # top_n=0 is left to the server (none, or all)
        assert len(results) == (len(texts) if top_n is None else min(top_n, len(texts))), reply.describe()
    indices = [r["index"] for r in results]
    assert len(set(indices)) == len(indices) and all(0 <= i < len(texts) for i in indices), reply.describe()
    _finite_scores([r["relevance_score"] for r in results], body.get("raw_scores", False))
    _same_text_same_score(texts, {r["index"]: r["relevance_score"] for r in results})
    if body.get("return_documents") and not has_surrogate(body):
        assert all(r["document"]["text"] == texts[r["index"]] for r in results), reply.describe()


def check_tei_results(body: dict, reply: Reply) -> None:
    """A 200 from TEI's /rerank for the well-typed ``body``."""
    texts = body["texts"]
    results = reply.json()
    assert sorted(r["index"] for r in results) == list(range(len(texts))), reply.describe()
    _finite_scores([r["score"] for r in results], body.get("raw_scores", False))
    _same_text_same_score(texts, {r["index"]: r["score"] for r in results})
    if body.get("return_text") and not has_surrogate(body):
        assert all(r["text"] == texts[r["index"]] for r in results), reply.describe()


# --------------------------------------------------------------------------------------------------
# strategies

SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
ANY_CHAR = st.characters(exclude_categories=())  # every code point, lone surrogates included
VALID_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)
ODD_TEXT = st.text(alphabet=st.one_of(ANY_CHAR, SURROGATE), max_size=24)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.integers(-(2**80), 2**80),
                    st.floats(allow_nan=False, allow_infinity=False), ODD_TEXT)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ODD_TEXT, inner,
                                                                                                 max_size=4),
                           max_leaves=10)


@st.composite
def text_with_lone_surrogate(draw) -> str:
    text = draw(st.text(alphabet=ANY_CHAR, max_size=12))
    at = draw(st.integers(0, len(text)))
    return text[:at] + draw(SURROGATE) + text[at:]


DOCUMENT = st.one_of(
    VALID_TEXT,
    st.builds(lambda text, extra: {**extra, "text": text}, VALID_TEXT,
              st.dictionaries(st.sampled_from(["title", "id", "url", "meta"]), JSON_VALUES, max_size=2)))
V1_FIELDS = ["query", "documents", "top_n", "return_documents", "raw_scores", "model"]
V1_VALID = st.fixed_dictionaries(
    {"query": VALID_TEXT, "documents": st.lists(DOCUMENT, min_size=1, max_size=6)},
    optional={"top_n": st.integers(0, 8), "return_documents": st.booleans(), "raw_scores": st.booleans(),
              "model": st.none(), "x_client_tag": JSON_VALUES})
TEI_FIELDS = ["query", "texts", "raw_scores", "return_text", "truncate", "truncation_direction", "model"]
TEI_VALID = st.fixed_dictionaries(
    {"query": VALID_TEXT, "texts": st.lists(VALID_TEXT, min_size=1, max_size=6)},
    optional={"raw_scores": st.booleans(), "return_text": st.booleans(), "truncate": st.none() | st.booleans(),
              "truncation_direction": st.sampled_from(["Right", "right"]), "model": st.none(),
              "x_client_tag": JSON_VALUES})
ITEM_VALUES = st.one_of(JSON_VALUES, st.builds(lambda v: {"text": v}, JSON_VALUES))


@st.composite
def mutated(draw, valid, fields: list[str], list_field: str) -> dict:
    """A well-typed body with 1-3 changes: a field replaced by any JSON value, dropped, a random key
    added, or one list item replaced."""
    body = dict(draw(valid))
    for op in draw(st.lists(st.sampled_from(["replace", "drop", "add", "item"]), min_size=1, max_size=3)):
        if op == "replace":
            body[draw(st.sampled_from(fields))] = draw(JSON_VALUES)
        elif op == "drop":
            body.pop(draw(st.sampled_from(fields)), None)
        elif op == "add":
            body[draw(ODD_TEXT)] = draw(JSON_VALUES)
        elif isinstance(body.get(list_field), list) and body[list_field]:
            items = list(body[list_field])
            items[draw(st.integers(0, len(items) - 1))] = draw(ITEM_VALUES)
            body[list_field] = items
    return body


JSON_TOKENS = ['{', '}', '[', ']', ',', ':', '"query"', '"documents"', '"texts"', '"text"', '"q"', '"top_n"',
               '"return_documents"', '"\\ud800"', '"\\udfff"', '"\\u0000"', '"\\x"', 'NaN', 'Infinity', '-Infinity',
               '1e999', '-0', '9' * 40, '0x10', '1.5e-400', 'null', 'true', 'false', 'True', '"', '\\', ' ', '\n',
               '\ufeff', '\x00', "'q'", '/*c*/', '\udcff']
TOKEN_SOUP = st.lists(st.sampled_from(JSON_TOKENS), max_size=30).map(
    lambda tokens: "".join(tokens).encode("utf-8", "surrogatepass"))


@st.composite
def corrupted(draw, valid) -> bytes:
    """A valid body's bytes with a few bytes inserted, deleted or overwritten."""
    raw = bytearray(encode(draw(valid), utf8=draw(st.booleans())))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        byte = draw(st.integers(0, 255))
        if op == "insert":
            raw.insert(at, byte)
        elif op == "delete" and at < len(raw):
            del raw[at]
        elif op == "replace" and at < len(raw):
            raw[at] = byte
        elif op == "truncate":
            del raw[at:]
    return bytes(raw)


RAW_BODIES = st.one_of(st.binary(max_size=300), TOKEN_SOUP, JSON_VALUES.map(encode),
                       corrupted(V1_VALID), corrupted(TEI_VALID))
JSON_CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "Application/JSON", None]
OTHER_CONTENT_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                       "application/xml", "text/html; charset=utf-8"]
CODINGS = [None, None, None, "identity", "gzip", "deflate", "br", "x-unknown"]

ROUTES = {"/v1/rerank": "POST", "/rerank": "POST", "/health": "GET", "/info": "GET", "/metrics": "GET",
          "/live": "GET", "/ready": "GET"}
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND", "FOO"]
PARSER_METHODS = set(METHODS) - {"FOO"}  # registered methods; llhttp knows these (and the rest of the registry)
PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/%:@!$&'()*+,;="
ODD_PATHS = ["/", "/v1", "/v1/", "/v2/rerank", "/docs", "/openapi.json", "/redoc", "/V1/RERANK", "/v1//rerank",
             "/%2e%2e/etc/passwd", "/v1/rerank%00", "/health?verbose=1", "/v1/rerank?model=x", "/%68ealth",
             "/metrics/../info", "/" + "a" * 4000, "/v1/rerank/", "/rerank/", "/health/", "/info/"]
PATHS = st.one_of(st.sampled_from([*ROUTES, *ODD_PATHS]), st.text(alphabet=PATH_CHARS, max_size=40).map("/{}".format))


@st.composite
def requests_to_routes(draw) -> tuple[str, str, bytes | None, dict]:
    method = draw(st.sampled_from(METHODS))
    path = draw(PATHS)
    body = draw(st.none() | V1_VALID.map(encode) | st.binary(max_size=40))
    return method, path, body, (JSON_TYPE if body is not None else {})


@st.composite
def raw_requests(draw) -> tuple[str, str, bytes, dict]:
    path = draw(st.sampled_from(["/v1/rerank", "/rerank"]))
    body = draw(RAW_BODIES)
    headers = {}
    ctype = draw(st.sampled_from(JSON_CONTENT_TYPES + OTHER_CONTENT_TYPES))
    if ctype is not None:
        headers["content-type"] = ctype
    coding = draw(st.sampled_from(CODINGS))
    if coding is not None:
        headers["content-encoding"] = coding
    return "POST", path, body, headers


@st.composite
def lone_surrogate_requests(draw) -> tuple[str, dict, str]:
    """A valid request with one string made invalid text; ``(path, body, where)``."""
    bad = draw(text_with_lone_surrogate())
    where = draw(st.sampled_from(["query", "document", "document-object", "document-extra", "model",
                                  "tei-query", "tei-text", "tei-model"]))
    echo = draw(st.booleans())
    docs: list = ["a plain document", "another document about something else"]
    if where.startswith("tei"):
        body = {"query": "a query", "texts": docs, "return_text": echo}
        if where == "tei-query":
            body["query"] = bad
        elif where == "tei-text":
            docs[draw(st.integers(0, 1))] = bad
        else:
            body["model"] = bad
        return "/rerank", body, where
    body = {"query": "a query", "documents": docs, "return_documents": echo}
    i = draw(st.integers(0, 1))
    if where == "query":
        body["query"] = bad
    elif where == "document":
        docs[i] = bad
    elif where == "document-object":
        docs[i] = {"text": bad}
    elif where == "document-extra":
        docs[i] = {"text": docs[i], draw(st.sampled_from(["title", bad])): bad}
    else:
        body["model"] = bad
    return "/v1/rerank", body, where


V1_CASES = st.one_of(V1_VALID.map(lambda b: (b, True)),
                     mutated(V1_VALID, V1_FIELDS, "documents").map(lambda b: (b, False)))
TEI_CASES = st.one_of(TEI_VALID.map(lambda b: (b, True)),
                      mutated(TEI_VALID, TEI_FIELDS, "texts").map(lambda b: (b, False)))


def _as_request(path: str):
    return lambda case: ("POST", path, encode(case[0]), JSON_TYPE)


ANY_REQUEST = st.one_of(
    V1_CASES.map(_as_request("/v1/rerank")), TEI_CASES.map(_as_request("/rerank")), raw_requests(),
    requests_to_routes(), lone_surrogate_requests().map(lambda c: ("POST", c[0], encode(c[1]), JSON_TYPE)))


# --------------------------------------------------------------------------------------------------
# generated requests


@settings(FUZZ, max_examples=examples(150))
@given(case=V1_CASES, utf8=st.booleans())
def test_fuzz_v1_rerank_fields(server, case, utf8):
    """/v1/rerank with well-typed bodies (200 with sane results) and bodies with fields replaced by any
    JSON value, dropped, added or with one document of any type (4xx JSON or 200, never 5xx)."""
    body, well_typed = case
    reply = server.send("POST", "/v1/rerank", encode(body, utf8), JSON_TYPE)
    if well_typed:
        check(server, reply, TEXT_VERDICTS if has_surrogate(body) else OK, "a well-typed request")
        if reply.status == 200:
            check_v1_results(body, reply)
    else:
        check(server, reply)


@settings(FUZZ, max_examples=examples(100))
@given(case=TEI_CASES, utf8=st.booleans())
def test_fuzz_tei_rerank_fields(server, case, utf8):
    body, well_typed = case
    reply = server.send("POST", "/rerank", encode(body, utf8), JSON_TYPE)
    if well_typed:
        check(server, reply, TEXT_VERDICTS if has_surrogate(body) else OK, "a well-typed request")
        if reply.status == 200:
            check_tei_results(body, reply)
    else:
        check(server, reply)


@settings(FUZZ, max_examples=examples(120))
@given(request=raw_requests())
def test_fuzz_raw_bodies(server, request):
    """Random bytes, JSON token soup, any JSON document and corrupted valid bodies, under JSON and
    non-JSON content types and content codings the body is not in."""
    method, path, body, headers = request
    reply = server.send(method, path, body, headers)
    ctype = headers.get("content-type")
    coded = headers.get("content-encoding") not in (None, "identity")
    if coded or (ctype is not None and not ctype.lower().startswith("application/json")):
        check(server, reply, CLIENT_ERRORS, "a body in a content type or coding the server does not take")
    else:
        check(server, reply)


@settings(FUZZ, max_examples=examples(100))
@given(request=requests_to_routes())
def test_fuzz_methods_and_paths(server, request):
    method, path, body, headers = request
    reply = server.send(method, path, body, headers)
    route = httpx.URL(server.url + path).path  # as sent: dot segments resolved, percent-escapes decoded
    if method not in PARSER_METHODS:
        # the HTTP parser (llhttp) refuses a method token it does not know before any route is looked
        # up: a 400 in the contract's shape (RFC 9110 suggests 501, a 5xx the contract rules out)
        check(server, reply, {400, 404, 405}, "a method the HTTP parser does not know")
    elif route in ROUTES:
        if method == ROUTES[route] or (method == "HEAD" and ROUTES[route] == "GET"):
            check(server, reply)
        else:
            check(server, reply, {405}, "a wrong method on a known path")
    elif route.rstrip("/") in ROUTES:
        check(server, reply)  # a trailing slash: refused or served, but answered in the contract's shape
    else:
        check(server, reply, {404}, "an unknown path")


@settings(FUZZ, max_examples=examples(100))
@given(case=lone_surrogate_requests(), escaped=st.booleans())
def test_fuzz_lone_surrogates(server, case, escaped):
    """Lone surrogates in every string the APIs take, escaped (``"\\ud800"``, valid JSON) or as raw
    bytes (invalid UTF-8), with and without the texts echoed back."""
    path, body, where = case
    reply = server.send("POST", path, encode(body, utf8=not escaped), JSON_TYPE)
    allowed = TEXT_VERDICTS | {404} if where.endswith("model") else TEXT_VERDICTS
    check(server, reply, allowed, "invalid text")


@settings(FUZZ, max_examples=examples(30))
@given(path=st.sampled_from(["/v1/rerank", "/rerank"]), n=st.integers(MAX_DOCUMENTS + 1, 6 * MAX_DOCUMENTS),
       items=st.lists(ITEM_VALUES | VALID_TEXT, min_size=1, max_size=4))
def test_fuzz_over_long_lists_are_413_at_once(server, path, n, items):
    field_name = "documents" if path == "/v1/rerank" else "texts"
    raw = encode({"query": "q", field_name: [items[i % len(items)] for i in range(n)]})
    reply = server.send("POST", path, raw, JSON_TYPE)
    check(server, reply, {413}, f"{n} {field_name} (the limit is {MAX_DOCUMENTS})")
    budget = quick_budget_s(raw)
    assert reply.elapsed < budget, f"refused in {reply.elapsed:.2f} s (> {budget:.2f} s): " + reply.describe()


@settings(FUZZ, max_examples=examples(40))
@given(header=st.sampled_from(["authorization", "x-api-key", "bearer"]),
       value=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=60),
       path=st.sampled_from(["/v1/rerank", "/rerank", "/info", "/metrics"]))
def test_fuzz_wrong_keys_are_401(auth_server, header, value, path):
    if header == "bearer":
        header, value = "authorization", "Bearer " + value
    value = value.strip()  # HTTP strips a header value's outer whitespace
    assert value not in (API_KEY, "Bearer " + API_KEY)
    body = {"query": "q", "documents": ["d"]} if path == "/v1/rerank" else {"query": "q", "texts": ["d"]}
    method = "POST" if path.endswith("rerank") else "GET"
    reply = auth_server.send(method, path, encode(body) if method == "POST" else None,
                             {**JSON_TYPE, header: value.encode("latin-1")})
    check(auth_server, reply, {401}, "a wrong API key")


# --------------------------------------------------------------------------------------------------
# handwritten cases


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: bytes | None = None
    allowed: frozenset[int] = CLIENT_ERRORS
    method: str = "POST"
    headers: tuple = (("content-type", "application/json"),)
    quick: bool = False  # answered within QUICK_S


def _v1(**fields) -> bytes:
    return encode({"query": "a query", "documents": ["a document", "another one"], **fields})


def _list_body(field_name: str, item: bytes, size: int = 1 << 20) -> bytes:
    head, tail = b'{"query":"q","%s":[' % field_name.encode(), b"]}"
    n = (size - len(head) - len(tail)) // (len(item) + 1)
    return head + b",".join([item] * n) + tail


def _nested(opening: bytes, closing: bytes, depth: int = 100_000, inside: bytes = b"") -> bytes:
    return opening * depth + inside + closing * depth


VALID_V1 = _v1()
SURROGATE_Q = rb'{"query":"\ud800","documents":["a"]}'
CASES = [
    # routing
    Case("unknown-path-get", "/nope", None, frozenset({404}), method="GET"),
    Case("unknown-path-post", "/v3/rerank", VALID_V1, frozenset({404})),
    Case("get-v1-rerank", "/v1/rerank", None, frozenset({405}), method="GET"),
    Case("get-tei-rerank", "/rerank", None, frozenset({405}), method="GET"),
    Case("post-health", "/health", b"{}", frozenset({405})),
    Case("delete-info", "/info", None, frozenset({405}), method="DELETE"),
    Case("put-metrics", "/metrics", b"{}", frozenset({405}), method="PUT"),
    Case("post-live", "/live", b"{}", frozenset({405})),
    Case("trailing-slash-v1", "/v1/rerank/", VALID_V1, OK_OR_CLIENT_ERROR),
    Case("trailing-slash-health", "/health/", None, OK_OR_CLIENT_ERROR, method="GET"),
    # bodies that are not a JSON object
    Case("unparseable-json", "/v1/rerank", b'{"query": "q", "documents": [', frozenset({400})),
    Case("non-object-list", "/v1/rerank", b'["q", ["a"]]', frozenset({400, 422})),
    Case("non-object-string", "/rerank", b'"q"', frozenset({400, 422})),
    Case("non-object-number", "/v1/rerank", b"1", frozenset({400, 422})),
    Case("null-body", "/v1/rerank", b"null", frozenset({400, 422})),
    Case("empty-body", "/v1/rerank", b"", frozenset({400, 422})),
    Case("whitespace-body", "/rerank", b" \r\n\t ", frozenset({400, 422})),
    # wrong types
    Case("query-number", "/v1/rerank", encode({"query": 5, "documents": ["a"]}), frozenset({422})),
    Case("documents-string", "/v1/rerank", encode({"query": "q", "documents": "abc"}), frozenset({422})),
    Case("document-number", "/v1/rerank", encode({"query": "q", "documents": ["a", 7]}), frozenset({422})),
    Case("document-object-text-number", "/v1/rerank", encode({"query": "q", "documents": [{"text": 7}]}),
         frozenset({422})),
    Case("document-object-no-text", "/v1/rerank", encode({"query": "q", "documents": [{"title": "a"}]}),
         frozenset({422})),
    Case("top-n-string", "/v1/rerank", _v1(top_n="3"), frozenset({422})),
    Case("top-n-negative", "/v1/rerank", _v1(top_n=-1), frozenset({422})),
    Case("top-n-float", "/v1/rerank", _v1(top_n=1.5), frozenset({422})),
    Case("top-n-bool", "/v1/rerank", _v1(top_n=True), frozenset({422})),
    Case("return-documents-string", "/v1/rerank", _v1(return_documents="yes"), frozenset({422})),
    Case("raw-scores-number", "/v1/rerank", _v1(raw_scores=1), frozenset({422})),
    Case("model-number", "/v1/rerank", _v1(model=5), frozenset({422})),
    Case("missing-query", "/v1/rerank", encode({"documents": ["a"]}), frozenset({422})),
    Case("missing-documents", "/v1/rerank", encode({"query": "q"}), frozenset({422})),
    Case("empty-documents", "/v1/rerank", encode({"query": "q", "documents": []}), CLIENT_ERRORS - {413}),
    Case("tei-text-number", "/rerank", encode({"query": "q", "texts": [1]}), frozenset({422})),
    Case("tei-truncate-string", "/rerank", encode({"query": "q", "texts": ["a"], "truncate": "no"}),
         frozenset({422})),
    Case("tei-direction-unknown", "/rerank", encode({"query": "q", "texts": ["a"], "truncation_direction": "Up"}),
         frozenset({422})),
    Case("tei-missing-texts", "/rerank", encode({"query": "q"}), frozenset({422})),
    # invalid text: lone surrogates, escaped in the JSON
    Case("surrogate-query", "/v1/rerank", SURROGATE_Q, TEXT_VERDICTS),
    Case("surrogate-document", "/v1/rerank", rb'{"query":"q","documents":["\udfff"]}', TEXT_VERDICTS),
    Case("surrogate-document-echoed", "/v1/rerank",
         rb'{"query":"q","documents":["x\udfff"],"return_documents":true}', TEXT_VERDICTS),
    Case("surrogate-text-object", "/v1/rerank", rb'{"query":"q","documents":[{"text":"\ud800"}]}', TEXT_VERDICTS),
    Case("surrogate-text-object-echoed", "/v1/rerank",
         rb'{"query":"q","documents":[{"text":"\ud800"}],"return_documents":true}', TEXT_VERDICTS),
    Case("surrogate-object-extra-echoed", "/v1/rerank",
         rb'{"query":"q","documents":[{"text":"a","title":"\udbff"}],"return_documents":true}', TEXT_VERDICTS),
    Case("surrogate-object-key-echoed", "/v1/rerank",
         rb'{"query":"q","documents":[{"text":"a","\ud800":1}],"return_documents":true}', TEXT_VERDICTS),
    Case("surrogate-model", "/v1/rerank", rb'{"query":"q","documents":["a"],"model":"\ud800"}',
         TEXT_VERDICTS | {404}),
    Case("surrogate-tei-query", "/rerank", rb'{"query":"\ud800","texts":["a"]}', TEXT_VERDICTS),
    Case("surrogate-tei-text", "/rerank", rb'{"query":"q","texts":["\udfff"]}', TEXT_VERDICTS),
    Case("surrogate-tei-text-echoed", "/rerank", rb'{"query":"q","texts":["\udfff"],"return_text":true}',
         TEXT_VERDICTS),
    Case("surrogate-unknown-field", "/v1/rerank", rb'{"query":"q","documents":["a"],"vendor":"\ud800"}',
         TEXT_VERDICTS),
    Case("surrogate-pair-is-valid", "/v1/rerank", rb'{"query":"\ud83d\ude00","documents":["\ud83d\ude00"]}', OK),
    # invalid UTF-8 bytes
    Case("invalid-utf8-byte", "/v1/rerank", b'{"query":"\xff\xfe","documents":["a"]}', frozenset({400})),
    Case("invalid-utf8-overlong", "/v1/rerank", b'{"query":"\xc0\xaf","documents":["a"]}', frozenset({400})),
    Case("invalid-utf8-cesu-surrogate", "/rerank", b'{"query":"q","texts":["\xed\xa0\x80"]}', frozenset({400})),
    Case("invalid-utf8-truncated", "/v1/rerank", b'{"query":"\xe2\x82","documents":["a"]}', frozenset({400})),
    Case("utf16-body", "/v1/rerank", VALID_V1.decode().encode("utf-16"), CLIENT_ERRORS | OK),
    # JSON oddities
    Case("nested-lists-100k", "/v1/rerank", _nested(b"[", b"]"), quick=True),
    Case("nested-objects-100k", "/v1/rerank", _nested(b'{"a":', b"}", inside=b"1"), quick=True),
    Case("nested-in-documents-100k", "/v1/rerank", b'{"query":"q","documents":' + _nested(b"[", b"]") + b"}",
         quick=True),
    Case("nested-unclosed-1m", "/rerank", b"[" * 1_000_000, quick=True),
    Case("huge-integer-5000-digits", "/v1/rerank", _v1()[:-1] + b',"top_n":' + b"9" * 5000 + b"}"),
    Case("huge-integer-1m-digits", "/v1/rerank", _v1()[:-1] + b',"top_n":' + b"9" * 1_000_000 + b"}", quick=True),
    Case("huge-integer-in-documents", "/rerank", b'{"query":"q","texts":[' + b"1" * 100_000 + b"]}", quick=True),
    Case("huge-float", "/v1/rerank", _v1()[:-1] + b',"top_n":1e999}'),
    Case("tiny-float", "/v1/rerank", _v1()[:-1] + b',"top_n":1e-999}'),
    Case("long-float", "/v1/rerank", _v1()[:-1] + b',"top_n":0.' + b"1" * 1_000_000 + b"}", quick=True),
    Case("nan-top-n", "/v1/rerank", _v1()[:-1] + b',"top_n":NaN}'),
    Case("infinity-top-n", "/v1/rerank", _v1()[:-1] + b',"top_n":Infinity}'),
    Case("minus-infinity-query", "/v1/rerank", b'{"query":-Infinity,"documents":["a"]}'),
    Case("nan-in-documents", "/rerank", b'{"query":"q","texts":[NaN]}'),
    Case("nan-in-unknown-field", "/v1/rerank", _v1()[:-1] + b',"vendor":NaN}'),
    Case("duplicate-key-last-invalid", "/v1/rerank", b'{"query":"q","query":5,"documents":["a"]}'),
    Case("duplicate-key-last-valid", "/v1/rerank", b'{"query":5,"query":"q","documents":["a"]}', OK_OR_CLIENT_ERROR),
    Case("bom", "/v1/rerank", b"\xef\xbb\xbf" + VALID_V1, OK_OR_CLIENT_ERROR),  # RFC 8259 8.1: MAY ignore a BOM
    Case("trailing-garbage", "/v1/rerank", VALID_V1 + b"xyz"),
    Case("two-documents", "/v1/rerank", VALID_V1 + VALID_V1),
    Case("nul-byte-after-body", "/v1/rerank", VALID_V1 + b"\x00"),
    # content types and codings
    Case("content-type-text-plain", "/v1/rerank", VALID_V1, headers=(("content-type", "text/plain"),)),
    Case("content-type-form", "/v1/rerank", VALID_V1,
         headers=(("content-type", "application/x-www-form-urlencoded"),)),
    Case("content-type-form-fields", "/rerank", b"query=q&texts=a",
         headers=(("content-type", "application/x-www-form-urlencoded"),)),
    Case("content-type-multipart", "/v1/rerank", VALID_V1, headers=(("content-type", "multipart/form-data; b=x"),)),
    Case("content-type-missing", "/v1/rerank", VALID_V1, OK_OR_CLIENT_ERROR, headers=()),
    Case("gzip-header-plain-body", "/v1/rerank", VALID_V1,
         headers=(("content-type", "application/json"), ("content-encoding", "gzip"))),
    Case("gzip-header-gzip-body", "/v1/rerank", gzip.compress(VALID_V1), OK_OR_CLIENT_ERROR,
         headers=(("content-type", "application/json"), ("content-encoding", "gzip"))),
    Case("unknown-coding", "/rerank", encode({"query": "q", "texts": ["a"]}),
         headers=(("content-type", "application/json"), ("content-encoding", "x-snappy"))),
    # limits
    Case("body-over-max-body-bytes", "/v1/rerank",
         encode({"query": "q", "documents": ["x" * (MAX_BODY_BYTES // 2)] * 2 + ["a"]}), frozenset({413}), quick=True),
    Case("query-over-max-document-bytes", "/v1/rerank", encode({"query": "q" * 1_500_000, "documents": ["a"]}),
         frozenset({413}), quick=True),
    Case("documents-limit-plus-one", "/v1/rerank", encode({"query": "q", "documents": ["a"] * (MAX_DOCUMENTS + 1)}),
         frozenset({413}), quick=True),
    Case("texts-limit-plus-one", "/rerank", encode({"query": "q", "texts": ["a"] * (MAX_DOCUMENTS + 1)}),
         frozenset({413}), quick=True),
]
# ~1 MiB lists of wrong-typed items: 413 at once, before any item is looked at
LIST_ITEMS = {"ints": b"1", "nulls": b"null", "bools": b"true", "floats": b"1.5", "objects": b"{}",
              "lists": b"[]", "nested-lists": b"[[[]]]", "text-objects-with-int": b'{"text":1}', "strings": b'"a"'}
CASES += [Case(f"1mib-documents-of-{name}", "/v1/rerank", _list_body("documents", item), frozenset({413}), quick=True)
          for name, item in LIST_ITEMS.items()]
CASES += [Case(f"1mib-texts-of-{name}", "/rerank", _list_body("texts", LIST_ITEMS[name]), frozenset({413}), quick=True)
          for name in ("ints", "objects", "nested-lists")]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_handwritten_case(server, case):
    reply = server.send(case.method, case.path, case.body, dict(case.headers))
    try:
        check(server, reply, case.allowed, case.name)
        if case.quick:
            budget = quick_budget_s(case.body)
            assert reply.elapsed < budget, f"answered in {reply.elapsed:.2f} s (> {budget:.2f} s): " + reply.describe()
        if reply.status == 200 and case.path == "/v1/rerank" and case.body == VALID_V1:
            check_v1_results(json.loads(VALID_V1), reply)
    finally:
        if reply.error or reply.elapsed > 1:
            server.wait_idle()  # a slow failure must not be charged to the next case


def test_body_over_the_limit_sent_chunked_is_413(server):
    """No Content-Length: the limit holds on the bytes actually received."""
    chunk = b" " * 65536

    def body():
        yield b'{"query":"q","documents":["a"],"pad":"'
        for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
            yield chunk
        yield b'"}'

    reply = server.send("POST", "/v1/rerank", None, JSON_TYPE, content=body())
    check(server, reply, {413}, "a chunked body above --max-body-bytes")


def test_probes_and_model_names(server):
    for path in ("/health", "/live", "/ready"):
        check(server, server.send("GET", path), OK, f"GET {path} on a started server")
    body = {"query": "q", "documents": ["a", "b"], "model": server.model}
    reply = server.post_json("/v1/rerank", body)
    check(server, reply, OK, "the served model by name")
    check_v1_results(body, reply)
    check(server, server.post_json("/v1/rerank", {**body, "model": server.model + "-not-served"}), {404},
          "a model not served")
    check(server, server.post_json("/rerank", {"query": "q", "texts": ["a"], "model": "x" * 100_000}), {404, 413},
          "a 100 kB model name")


def test_api_key_guards_everything_but_the_probes(auth_server):
    s = auth_server
    v1, tei = encode({"query": "q", "documents": ["a", "b"]}), encode({"query": "q", "texts": ["a", "b"]})
    for method, path, body in [("POST", "/v1/rerank", v1), ("POST", "/rerank", tei), ("GET", "/info", None),
                               ("GET", "/metrics", None)]:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {API_KEY}"},
                        {"authorization": API_KEY}, {"x-api-key": "wrong"}, {"authorization": "Bearer"}):
            check(s, s.send(method, path, body, {**JSON_TYPE, **headers}), {401}, f"{method} {path} {headers}")
        check(s, s.send(method, path, body, {**JSON_TYPE, "authorization": f"Bearer {API_KEY}"}), OK,
              f"{method} {path} with the key")
    for path in ("/health", "/live", "/ready"):
        check(s, s.send("GET", path), OK, f"the probe {path} without a key")
    # unauthenticated clients never get the body parsed: malformed and over-long bodies are 401 too
    check(s, s.send("POST", "/v1/rerank", b'{"query": [', JSON_TYPE), {401}, "malformed JSON without a key")
    reply = s.send("POST", "/v1/rerank", _list_body("documents", b"1"), JSON_TYPE)
    check(s, reply, {401}, "a 1 MiB list without a key")
    assert reply.elapsed < quick_budget_s(reply.body), reply.describe()
    check(s, s.send("GET", "/nope"), {401, 404}, "an unknown path without a key")


# --------------------------------------------------------------------------------------------------
# operations over a whole fuzz run

POLLER = r"""
import http.client, json, select, sys, time
port, interval = int(sys.argv[1]), float(sys.argv[2])
latencies, failures = [], 0
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
next_at = time.perf_counter()
while not select.select([sys.stdin], [], [], max(0.0, next_at - time.perf_counter()))[0]:
    started = time.perf_counter()
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        failures += response.status != 200
    except Exception:
        failures += 1
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    took = time.perf_counter() - started
    latencies.append(took)
    # the polls a slow answer kept from being sent would have waited too (no coordinated omission)
    missed = 1
    while took - missed * interval > 0:
        latencies.append(took - missed * interval)
        missed += 1
    next_at = max(started + missed * interval, time.perf_counter())
print(json.dumps({"latencies": latencies, "failures": failures}))
"""

REFERENCE_DOCS = ["Paris is the capital and largest city of France.", "The Eiffel Tower is in Paris.",
                  "Bananas are rich in potassium.", "Berlin is the capital of Germany.",
                  "Paris is the capital and largest city of France.", "", "🙂 emoji and accents: café, naïve",
                  "a much longer document " * 60]
REFERENCE_QUERY = "what is the capital of France?"


def reference_scores(server: ServerProcess) -> list[float]:
    """Scores of a fixed valid request in input order, after checking that they look right."""
    relevance = server.post_json("/v1/rerank", {"query": REFERENCE_QUERY, "documents": REFERENCE_DOCS})
    raw = server.post_json("/v1/rerank", {"query": REFERENCE_QUERY, "documents": REFERENCE_DOCS, "raw_scores": True})
    tei = server.post_json("/rerank", {"query": REFERENCE_QUERY, "texts": REFERENCE_DOCS})
    for reply in (relevance, raw, tei):
        check(server, reply, OK, "the reference request")
    check_v1_results({"documents": REFERENCE_DOCS}, relevance)
    check_v1_results({"documents": REFERENCE_DOCS, "raw_scores": True}, raw)
    check_tei_results({"texts": REFERENCE_DOCS}, tei)
    by_index = {r["index"]: r["relevance_score"] for r in relevance.json()["results"]}
    scores = [by_index[i] for i in range(len(REFERENCE_DOCS))]
    logits = {r["index"]: r["relevance_score"] for r in raw.json()["results"]}
    tei_scores = {r["index"]: r["score"] for r in tei.json()}
    for i, score in enumerate(scores):
        assert score == pytest.approx(1 / (1 + math.exp(-logits[i])), abs=1e-5), "relevance is not sigmoid(raw)"
        assert score == pytest.approx(tei_scores[i], abs=1e-5), "the two APIs disagree"
    assert max(scores) - min(scores) > 1e-6, f"every document scored the same: {scores}"
    return scores


def heavy_requests() -> list[tuple[str, str, bytes, dict]]:
    """The handwritten requests that cost a naive server the most."""
    return [("POST", "/v1/rerank", _list_body("documents", b"1"), JSON_TYPE),
            ("POST", "/v1/rerank", _list_body("documents", b"[]"), JSON_TYPE),
            ("POST", "/rerank", _list_body("texts", b'{"text":1}'), JSON_TYPE),
            ("POST", "/v1/rerank", _nested(b"[", b"]"), JSON_TYPE),
            ("POST", "/v1/rerank", _v1()[:-1] + b',"top_n":' + b"9" * 1_000_000 + b"}", JSON_TYPE),
            ("POST", "/v1/rerank", encode({"query": "q" * 1_500_000, "documents": ["a"]}), JSON_TYPE),
            ("POST", "/v1/rerank", b"x" * (MAX_BODY_BYTES + 1), JSON_TYPE),
            ("POST", "/v1/rerank", SURROGATE_Q, JSON_TYPE)]


class HealthPoller:
    """GET /health every ``interval`` from a child process, so this process's GIL never delays a poll."""

    def __init__(self, server: ServerProcess) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", POLLER, str(server.port), str(HEALTH_INTERVAL_S)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def stop(self) -> tuple[list[float], int]:
        out, _ = self.proc.communicate("stop\n", timeout=120)
        polled = json.loads(out)
        return sorted(polled["latencies"]), polled["failures"]


def _p99(latencies: list[float]) -> float:
    return latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)] if latencies else math.nan


def test_operations_during_a_fuzz_run(server):
    """Generated and heavy requests while /health is polled every 20 ms: RSS growth, /health p99, and the
    same scores for a valid request after the fuzz as before it."""
    before = reference_scores(server)
    for _ in range(3):  # the allocator's and the runtime's steady state, before the baseline
        reference_scores(server)
    idle = HealthPoller(server)  # the machine's own noise, for the message
    time.sleep(1.0)
    idle_latencies, _ = idle.stop()
    peak_reset = server.reset_peak_rss()
    rss_before = server.rss_mb()
    tally: Counter = Counter()
    bad: list[str] = []

    def send(method, path, body, headers):
        reply = server.send(method, path, body, headers)
        tally[reply.status or "dropped"] += 1
        if contract_problems(server, reply):
            bad.append(reply.describe()[:300])

    @settings(FUZZ, max_examples=examples(150))
    @given(request=ANY_REQUEST)
    def fuzz(request):
        send(*request)

    poller = HealthPoller(server)
    started = time.perf_counter()
    try:
        time.sleep(0.2)
        for request in heavy_requests():
            send(*request)
        fuzz()
        for request in heavy_requests():
            send(*request)
        time.sleep(0.2)
    finally:
        latencies, failures = poller.stop()
    took = time.perf_counter() - started
    rss_after, peak = server.rss_mb(), server.rss_mb("VmHWM")
    after = reference_scores(server)

    p99 = _p99(latencies)
    summary = (f"{sum(tally.values())} requests in {took:.1f} s, statuses {dict(tally)}; /health: "
               f"{len(latencies)} samples, p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms, "
               f"{failures} failed (idle before: p99 {_p99(idle_latencies) * 1000:.1f} ms); "
               f"RSS {rss_before:.0f} -> {rss_after:.0f} MB, peak {peak:.0f} MB{'' if peak_reset else ' ever'}")
    print(summary)  # the run's figures, shown with pytest -s
    problems = []
    if rss_after - rss_before > RSS_GROWTH_MB:
        problems.append(f"RSS grew by {rss_after - rss_before:.0f} MB (limit {RSS_GROWTH_MB} MB)")
    if peak_reset and peak - rss_before > PEAK_GROWTH_MB:
        problems.append(f"RSS peaked {peak - rss_before:.0f} MB above its start (limit {PEAK_GROWTH_MB} MB)")
    if p99 > HEALTH_P99_S:
        problems.append(f"/health p99 {p99 * 1000:.1f} ms (limit {HEALTH_P99_S * 1000:.0f} ms)")
    if failures:
        problems.append(f"{failures} /health polls failed")
    if after != pytest.approx(before, abs=1e-4):
        problems.append(f"the reference scores changed: {before} -> {after}")
    if bad:
        problems.append(f"{len(bad)} answers broke the contract, e.g. {bad[:3]}")
    assert not problems, "; ".join(problems) + "\n" + summary
