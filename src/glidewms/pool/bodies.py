"""A cap on request bodies, before anything reads them.

A body is parsed whole (JSON into models) before a handler can look at it,
so a 200 MB submit would cost its memory and seconds of parsing even when it
is refused afterwards. `BodyLimit` answers 413 at once when Content-Length
says the body is larger than the cap, and stops reading a body without one
(chunked) as soon as it passes the cap. File uploads stream to disk and have
their own cap (routes/files.py): they are let through here.

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


class BodyLimit:
    def __init__(self, app: ASGIApp, most: int, unlimited_prefix: str) -> None:
        self.app = app
        self.most = most
        self.unlimited_prefix = unlimited_prefix  # e.g. "/api/v1/files/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.unlimited_prefix):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.most:
                await _refuse(send, f"request body of {int(value)} bytes; at most {self.most}")
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


async def _refuse(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
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
