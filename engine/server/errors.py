"""The one error shape every client sees: ``{"error": {"type", "message", ...extra}}``.

Used by the app, the front-door middleware and the connection protocols alike, so a 404, a 408
from a slow body, a 429 from admission and a 400 for malformed HTTP all read the same way. No
stack trace ever reaches a client.
"""

from __future__ import annotations

import json


class ApiError(Exception):
    """An error a client may see, with its HTTP ``status`` and extra headers (``Retry-After``, ``Allow``)."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None, **extra) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers, self.extra = status, kind, message, headers or {}, extra

    def __reduce__(self):  # picklable: raised in a body-parsing worker process, re-raised here
        return (_rebuild, (self.status, self.kind, self.message, self.headers, self.extra))

    @property
    def reason(self) -> str:
        """The label of ``rerankrt_rejected_total``: why the request was refused."""
        return str(self.extra.get("reason") or self.extra.get("limit") or self.kind)

    def body(self) -> bytes:
        return error_body(self.kind, self.message, **self.extra)

    def response(self):
        from fastapi.responses import Response

        return Response(self.body(), status_code=self.status, headers=self.headers, media_type="application/json")

    async def send(self, send) -> None:
        """Answer on a raw ASGI ``send`` (middleware, before the app has run)."""
        payload = self.body()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        headers += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def error_body(kind: str, message: str, **extra) -> bytes:
    """The JSON bytes of an error (ASCII-escaped: a message quoting bad input can never fail to encode)."""
    return json.dumps({"error": {"type": kind, "message": message, **extra}}, ensure_ascii=True).encode()


def _rebuild(status: int, kind: str, message: str, headers: dict[str, str], extra: dict) -> ApiError:
    return ApiError(status, kind, message, headers, **extra)
