"""The one shape of every error a service answers, and its place in the OpenAPI.

Every refusal is `{"detail": ...}`: a sentence (an `HTTPException`, or the
security gate's 401/413 in security/asgi.py), or for a body or parameter a
model refused, a list of where and why (`invalid_body`). Routes declare the
statuses they give (`responses(...)`) so the schema says what clients may
meet; the fuzzer (tests/security/test_openapi_fuzz.py) holds them to it.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel


class ErrorItem(BaseModel):
    """One refused field: where (`loc`), why (`msg`), the kind (`type`)."""

    loc: list[int | str]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error answer: a sentence, or one item per refused field."""

    detail: str | list[ErrorItem]


WHY = {
    400: "Bad request",
    401: "Missing, invalid or expired bearer token",
    403: "The token lacks the scope, or the caller is not the owner",
    404: "No such resource",
    409: "Conflicts with the resource's current state",
    410: "Gone (a pilot that has left)",
    413: "Request body larger than the configured cap",
    422: "A parameter or body refused (naming the field)",
    503: "Not available now",
}

# What every route behind the token gate may answer: no or a bad token (the
# gate), a token of another scope, a body over the cap or unparsable (400),
# a refused parameter.
GATED = (400, 401, 403, 413, 422)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these statuses, all with `ErrorBody`."""
    return {code: {"model": ErrorBody, "description": WHY[code]} for code in codes}


async def invalid_body(request: Request, exc: Exception) -> JSONResponse:
    """422 naming where and why (FastAPI's `loc`, `msg`, `type`), never what:
    FastAPI's own answer repeats the input, so a NaN made the answer itself
    fail (500: NaN is not JSON) and a 200 MB field came back whole."""
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
