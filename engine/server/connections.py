"""Connection-level defences uvicorn lacks: a request-head timeout, a connection cap that sheds
stalled sockets first, and JSON for malformed HTTP.

Why here and not in the app: an ASGI app only sees a connection once a complete request head has
arrived. A socket that connects and sends nothing (or half a request line) costs a file
descriptor forever and is invisible to every middleware; at the process's open-file limit
``accept()`` fails with ``EMFILE`` and the event loop stops accepting *anyone* (asyncio retries
once a second). Measured on a 2-core box with the default 1,024 limit: 1,100 such sockets served
0 of 56 other requests for 30 s. So the protocol objects themselves, one per TCP connection, do
the bookkeeping:

- **Head timeout.** From connect, and again from the end of each response on a keep-alive
  connection, a complete request head must arrive within ``header_timeout_s``, or the connection
  is closed. uvicorn's own ``timeout_keep_alive`` only fires when *no byte at all* arrives, and
  it is re-armed by every byte: one byte every few seconds keeps a socket forever (slowloris).
  This timer is armed once per head and never extended.
- **Connection cap.** At ``max_connections`` open connections, a new one closes the connection
  that has waited longest for its request head (stalled or idle keep-alive: closing it loses no
  work); if every connection is busy with a real request, the new one is closed instead. A cap
  below the open-file limit means ``accept()`` never hits ``EMFILE``, so real clients keep
  getting in while stalled ones are shed. uvicorn's ``limit_concurrency`` is no substitute: it
  answers 503 to real requests but never closes a stalled socket.
- **JSON errors.** uvicorn answers unparsable HTTP with a plain-text 400; here every error a
  client can still be answered on is ``{"error": {"type", "message"}}`` like the app's, with
  ``Connection: close``.

Bookkeeping is O(1) per event: a set of open connections, an insertion-ordered dict of those
waiting for a head (oldest first: the eviction candidate is its first key), one
``loop.call_later`` timer per waiting connection, cancelled when the head completes or the
connection closes. Counters live in :attr:`ConnectionGuard.stats` (and an optional callback) so
metrics can expose them without this module knowing about Prometheus.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import resource
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional in uvicorn; h11 always comes with it
    HttpToolsProtocol = None  # type: ignore[assignment, misc]

log = logging.getLogger("rerankrt.server")

# File descriptors kept free for everything that is not a client socket: the listening socket,
# the event loop's epoll and self-pipe, model and tokenizer files, logs, thread-pool pipes, and
# headroom so accept() never meets EMFILE (which stalls asyncio's accept loop for a second each time).
NOFILE_RESERVE = 64
# Past this the limit is memory and CPU, not descriptors: each open connection holds a transport,
# a parser and buffers (tens of KiB when busy), and a 2-core server cannot usefully serve more
# concurrent clients; stalled ones beyond the cap are evicted anyway.
MAX_DEFAULT_CONNECTIONS = 10_000
# A request head larger than this is refused (431). h11 already stops at 16 KiB; httptools (llhttp)
# has no limit at all, so without this a slow client could grow a head buffer for header_timeout_s.
MAX_HEAD_BYTES = 64 << 10


def raise_open_file_limit() -> tuple[int, int]:
    """Raise ``RLIMIT_NOFILE``'s soft limit to the hard limit (best effort); return ``(soft, hard)`` after.

    systemd and most shells start services at soft 1,024 while allowing far more (hard 524,288 on
    systemd ≥ 240); a server that holds one descriptor per client should take what it is allowed.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # RLIM_INFINITY is not accepted for NOFILE on Linux (the kernel caps it at fs.nr_open): ask for a
    # large finite number instead.
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def default_max_connections(soft_limit: int) -> int:
    """The connection cap for an open-file soft limit: the limit less a reserve, at most 10,000.

    The reserve is :data:`NOFILE_RESERVE`, or a quarter of a very small limit (256 → 192), so even
    a tight limit leaves the process descriptors of its own.
    """
    if soft_limit == resource.RLIM_INFINITY:
        return MAX_DEFAULT_CONNECTIONS
    return max(1, min(MAX_DEFAULT_CONNECTIONS, soft_limit - min(NOFILE_RESERVE, soft_limit // 4)))


def error_bytes(status: int, kind: str, message: str, default_headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with the app's JSON error body.

    Written to the transport directly, not through h11 or httptools: the parser state is either
    broken (malformed input) or has no request to answer (a timed-out head), and the connection is
    closed right after anyway.
    """
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode()]
    lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
    lines += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
              b"connection: close\r\n\r\n", body]
    return b"".join(lines)


class ConnectionGuard:
    """Shared by every connection of one server: the cap, the head timeout, and the counters.

    ``stats`` counts connections ``opened``; closed at the head timeout with a head begun
    (``header_timeout``, answered 408) or with nothing sent (``idle_timeout``); ``evicted`` (stalled,
    closed to make room for a new one); ``refused`` (new, closed at the cap with nothing to evict);
    ``bad_request`` (malformed HTTP, answered 400); ``head_too_large`` (answered 431).
    ``on_event(kind)`` is called with the same names, for metrics.
    """

    def __init__(self, header_timeout_s: float, max_connections: int,
                 on_event: Callable[[str], None] | None = None) -> None:
        if not header_timeout_s > 0 or max_connections < 1:
            raise ValueError("header_timeout_s must be > 0 and max_connections >= 1")
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.on_event = on_event
        self.stats: dict[str, int] = dict.fromkeys(
            ("opened", "header_timeout", "idle_timeout", "evicted", "refused", "bad_request", "head_too_large"), 0)
        self._open: set[GuardedProtocol] = set()
        self._waiting: OrderedDict[GuardedProtocol, None] = OrderedDict()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def waiting_connections(self) -> int:
        """Open connections owed no response (idle, or reading a request head): the ones eviction may close."""
        return len(self._waiting)

    def count(self, kind: str) -> None:
        self.stats[kind] += 1
        if self.on_event is not None:
            self.on_event(kind)

    def admit(self, conn: GuardedProtocol) -> bool:
        """Register a new connection; at the cap, evict the longest-waiting one first, or refuse this one."""
        if len(self._open) >= self.max_connections:
            if not self._waiting:
                self.count("refused")
                return False
            victim = next(iter(self._waiting))
            self.count("evicted")
            # 408, not 503: the request was incomplete and the server stopped waiting for it (no 5xx for
            # what is the client's stall)
            victim.guard_close(408, "too_many_connections",
                               f"the server is at its limit of {self.max_connections} connections; this one had "
                               "not sent a complete request head and was closed to make room")
        self._open.add(conn)
        self.count("opened")
        return True

    def mark_waiting(self, conn: GuardedProtocol) -> None:
        self._waiting[conn] = None

    def mark_busy(self, conn: GuardedProtocol) -> None:
        self._waiting.pop(conn, None)

    def release(self, conn: GuardedProtocol) -> None:
        """Forget a connection (idempotent). Called when the guard closes it, so its slot is free at
        once rather than on the next loop iteration, and again from ``connection_lost``."""
        self._open.discard(conn)
        self._waiting.pop(conn, None)


class GuardedProtocol(asyncio.Protocol):
    """Mixin over a uvicorn HTTP protocol; concrete classes come from :func:`protocol_class`.

    A connection is *waiting* (head timer running, evictable) while the server owes it no response:
    from connect, and from the end of each response until the next request head is complete. The
    phase is re-derived from uvicorn's state after every event that can change it (connect, bytes
    in, response done) rather than tracked through every parser callback: fewer hooks into uvicorn's
    internals, and pipelining falls out right (a pipelined request's head is parsed, and a response
    owed, before the previous response ends). A client still sending the body of a request that was
    already answered (e.g. a 413 before the body was read) counts as waiting too: closing it loses
    no work, and nothing else would bound it.
    """

    guard: ClassVar[ConnectionGuard]
    # provided by the uvicorn base class
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    server_state: Any
    cycle: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting = False  # no response owed (registered in guard._waiting, head timer armed)
        self._header_timer: asyncio.TimerHandle | None = None

    def _head_in_progress(self) -> bool:
        """Whether some bytes of a new request head have arrived (then a close is explained in JSON)."""
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.guard.admit(self):
            self.transport.close()
            return
        self._sync_phase()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.guard.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._sync_phase()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._sync_phase()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to unparsable HTTP, as JSON (its own is text/plain)."""
        self.guard.count("bad_request")
        self._send_error_and_close(400, "bad_http_request",
                                   "the request is not valid HTTP/1.1 (malformed request line, header or framing)")

    # -- the guard's side ------------------------------------------------------------------------
    def guard_close(self, status: int, kind: str, message: str) -> None:
        """Close this connection for the guard. A client that has started a request head gets a JSON
        error first; an idle one (nothing sent since its last response) is closed silently, as uvicorn
        closes idle keep-alive connections: an unsolicited response there could be read as the answer
        to a request the client is sending at that very moment."""
        self.guard.release(self)
        if self._head_in_progress():
            self._send_error_and_close(status, kind, message)
        else:
            self._cancel_timer()
            self.transport.close()

    def _send_error_and_close(self, status: int, kind: str, message: str) -> None:
        self._cancel_timer()
        if not self.transport.is_closing():
            self.transport.write(error_bytes(status, kind, message, self.server_state.default_headers))
            self.transport.close()

    def _sync_phase(self) -> None:
        awaiting = not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete)
        if awaiting == self._awaiting:
            return  # still waiting: the timer keeps running (bytes trickling in must not extend it)
        self._awaiting = awaiting
        if awaiting:
            self.guard.mark_waiting(self)
            self._header_timer = self.loop.call_later(self.guard.header_timeout_s, self._header_timeout)
        else:
            self.guard.mark_busy(self)
            self._cancel_timer()

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        # idle (nothing sent since connect or the last response) is routine for keep-alive; a head
        # begun and not finished is the slowloris signature: counted apart
        self.guard.count("header_timeout" if self._head_in_progress() else "idle_timeout")
        self.guard_close(408, "header_timeout",
                         f"no complete request head within {self.guard.header_timeout_s:g} s")

    def _cancel_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None


class GuardedH11Protocol(GuardedProtocol, H11Protocol):
    """h11 buffers a partial head itself (and refuses one over 16 KiB with a 400)."""

    def _head_in_progress(self) -> bool:
        return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(GuardedProtocol, HttpToolsProtocol):
        """httptools (llhttp) has no limit on a head's size: bytes that arrive between messages are
        counted, and a head past :data:`MAX_HEAD_BYTES` is refused with a 431."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = False  # on_message_begin .. on_headers_complete
            self._in_body = False  # on_headers_complete .. on_message_complete
            self._head_bytes = 0  # received since the last message ended (an upper bound on the head)

        def data_received(self, data: bytes) -> None:
            if not self._in_body:
                self._head_bytes += len(data)  # before parsing: a message ending in this chunk resets it
            super().data_received(data)
            if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self.guard.count("head_too_large")
                self._send_error_and_close(431, "request_header_fields_too_large",
                                           f"the request head exceeds {MAX_HEAD_BYTES} bytes")

        def on_message_begin(self) -> None:
            self._in_head = True
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._in_head, self._in_body = False, True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_body, self._head_bytes = False, 0
            super().on_message_complete()

        def _head_in_progress(self) -> bool:
            return self._in_head

else:  # pragma: no cover
    GuardedHttpToolsProtocol = None  # type: ignore[assignment, misc]


def protocol_class(guard: ConnectionGuard, http_impl: str = "auto") -> type[asyncio.Protocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)``, bound to ``guard``.

    ``auto`` picks httptools when it is importable, else h11, as uvicorn's own ``auto`` does. A
    subclass per guard (not a module global) keeps two servers in one process independent.
    """
    if http_impl == "auto":
        http_impl = "httptools" if GuardedHttpToolsProtocol is not None else "h11"
    if http_impl == "httptools":
        if GuardedHttpToolsProtocol is None:
            raise ImportError("http='httptools' needs the httptools package")
        base: type[GuardedProtocol] = GuardedHttpToolsProtocol
    elif http_impl == "h11":
        base = GuardedH11Protocol
    else:
        raise ValueError(f"unknown HTTP implementation {http_impl!r}; use auto, httptools or h11")
    return type(base.__name__, (base,), {"guard": guard, "__module__": __name__})
