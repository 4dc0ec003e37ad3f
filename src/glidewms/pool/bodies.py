"""Request bodies: only from a caller with a valid token, and capped, before
anything reads them.

A body is parsed whole (JSON into models) before a handler, or the
dependency that checks the caller's token, runs: a 200 MB request took
seconds to be refused, even without a token. `BodyLimit` answers 401 at once
to a request with a body and no valid bearer token (which scope it needs is
still the route's to check), 413 at once when Content-Length says the body
is larger than the cap, and stops reading a body without one (chunked) as
soon as it passes the cap. File uploads stream to disk and have their own
cap (routes/files.py): only the size cap lets them through.

Plain ASGI, like protocol.VersionHeader: the pilot turn pays no task for it.

`invalid_body` answers a body its model refuses (422) without echoing the
input: FastAPI's own answer repeats it, so a NaN made the answer itself fail
(500: NaN is not JSON) and a 200 MB field came back whole.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glidewms.security.tokens import TokenError


class BodyLimit:
    def __init__(self, app: ASGIApp, most: int, unlimited_prefix: str) -> None:
        self.app = app
        self.most = most
        self.unlimited_prefix = unlimited_prefix  # e.g. "/api/v1/files/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        length = headers.get(b"content-length", b"")
        if (length not in (b"", b"0") or b"transfer-encoding" in headers) and not _authenticated(
            scope, headers.get(b"authorization", b"")
        ):
            await _refuse(send, "a request with a body needs a valid bearer token", 401)
            return
        if scope["path"].startswith(self.unlimited_prefix):
            await self.app(scope, receive, send)
            return
        if length.isdigit() and int(length) > self.most:
            await _refuse(send, f"request body of {int(length)} bytes; at most {self.most}")
            return
        seen = 0
        started = refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.most:
                    # answer now; the app sees the client go, and its answer is dropped
                    refused = True
                    if not started:
                        await _refuse(send, f"request body of more than {self.most} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def tracked(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, tracked)


def _authenticated(scope: Scope, authorization: bytes) -> bool:
    """A bearer token the app's verifier accepts (remembered ones cost a lookup)."""
    scheme, _, token = authorization.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    try:
        scope["app"].state.verifier.verify(token.strip())
    except TokenError:
        return False
    return True


async def _refuse(send: Send, detail: str, status: int = 413) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def invalid_body(request: Request, exc: Exception) -> JSONResponse:
    """422 naming where and why (FastAPI's `loc`, `msg`, `type`), never what."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [
        {
            "loc": [part if isinstance(part, (int, str)) else str(part) for part in e["loc"]],
            "msg": str(e["msg"])[:500],
            "type": str(e["type"]),
        }
        for e in errors[:50]
    ]
    return JSONResponse({"detail": detail}, status_code=422)
