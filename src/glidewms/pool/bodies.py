"""Answers about request bodies the pool refuses.

The token and size checks that come before any body is read are the gate's
(security/asgi.py, installed by pool/api.py). `invalid_body` answers a body
its model refuses (422) without echoing the input: FastAPI's own answer
repeats it, so a NaN made the answer itself fail (500: NaN is not JSON) and
a 200 MB field came back whole.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


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
