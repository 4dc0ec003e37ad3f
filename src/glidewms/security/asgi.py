"""The gate in front of every service: the token checked and the body size
bounded before any byte of the body is read.

FastAPI reads and parses a request's body before it solves the route's
dependencies, so an unauthenticated caller could make a service receive and
parse hundreds of megabytes only to be told 401 at the end (8-15 s for
200 MB). `Gate` answers first:

- a request to a route that is not public carries a bearer token the app's
  verifier (``app.state.verifier``) accepts, or gets 401 without its body
  being read. The verified `Identity` goes into the ASGI scope
  (`IDENTITY_SCOPE_KEY`), where `security.http.Require` takes it instead of
  verifying the token a second time; scopes (403) are still the route's
  business, since only the route knows which it wants;
- a body larger than its route's cap gets 413: at once when Content-Length
  says so, else (chunked) as soon as the bytes received pass the cap (the
  server's HTTP parser keeps a Content-Length body to its declared length,
  so only chunked bodies need counting).

Public routes are declared, not inferred (`GatePolicy.public`): a route
added later is closed until someone opens it on purpose, and a unit test
checks the declarations against the routes' own dependencies. The refusals
name `Connection: close`, so the server drops a body it will never read
instead of draining it for the next request.

Plain ASGI, like `protocol.VersionHeader`: no task per request, and on the
pool's turn path the token check it does replaces the one the route did.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException

from glidewms.protocol import ASGIApp, Receive, Scope, Send
from glidewms.security.tokens import TokenError, TokenVerifier

IDENTITY_SCOPE_KEY = "glidewms.identity"

MIB = 1024 * 1024


@dataclass(frozen=True)
class Route:
    """Requests with `method` to `path` exactly, or, when `path` ends in '/',
    to every path under it."""

    method: str
    path: str

    def matches(self, method: str, path: str) -> bool:
        if method != self.method and not (method == "HEAD" and self.method == "GET"):
            return False
        return path.startswith(self.path) if self.path.endswith("/") else path == self.path


# What every service serves without a token: liveness, and the API's own
# description (the schema says which routes need which token; it is no secret).
DOCS_AND_HEALTH = (
    Route("GET", "/healthz"),
    Route("GET", "/openapi.json"),
    Route("GET", "/docs"),
    Route("GET", "/docs/oauth2-redirect"),
    Route("GET", "/redoc"),
)


@dataclass(frozen=True)
class BodyCap:
    """The largest body `route` takes, and the configuration key that says so
    (named in the 413, so an operator knows what to raise)."""

    route: Route
    limit: int
    key: str


@dataclass(frozen=True)
class GatePolicy:
    """What one service lets through: its public routes, its default body cap
    (`key` names it in 413s) and the routes with caps of their own."""

    max_body: int
    key: str = "max_body_bytes"
    caps: tuple[BodyCap, ...] = ()
    public: tuple[Route, ...] = DOCS_AND_HEALTH
    _exact: frozenset[tuple[str, str]] = field(init=False, repr=False, compare=False)
    _prefixes: tuple[Route, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact = {(r.method, r.path) for r in self.public if not r.path.endswith("/")}
        exact |= {("HEAD", path) for method, path in exact if method == "GET"}
        object.__setattr__(self, "_exact", frozenset(exact))
        prefixes = tuple(r for r in self.public if r.path.endswith("/"))
        object.__setattr__(self, "_prefixes", prefixes)

    def is_public(self, method: str, path: str) -> bool:
        if (method, path) in self._exact:
            return True
        return bool(self._prefixes) and any(r.matches(method, path) for r in self._prefixes)

    def cap(self, method: str, path: str) -> tuple[int, str]:
        for cap in self.caps:
            if cap.route.matches(method, path):
                return cap.limit, cap.key
        return self.max_body, self.key


class BodyTooLarge(HTTPException):
    """A chunked body passed its cap while it was being read. An HTTPException,
    so FastAPI answers it as one (it wraps any other error of a body read in
    a 400) and the route's own clean-up runs as the exception goes by."""

    def __init__(self, limit: int, key: str) -> None:
        super().__init__(
            413,
            f"request body larger than {limit} bytes ({key})",
            headers={"Connection": "close"},
        )


class Gate:
    """ASGI middleware: see the module docstring. `app.add_middleware(Gate,
    policy=...)`; the verifier is the app's (`app.state.verifier`), looked up
    per request like `Require` does, so both always agree."""

    def __init__(self, app: ASGIApp, policy: GatePolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        authorization = length = chunked = None
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:  # the first, as Starlette
                authorization = value
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = value
        has_body = chunked is not None or (length is not None and length != b"0")
        if not self.policy.is_public(method, path):
            verifier: TokenVerifier = scope["app"].state.verifier
            refusal = _authenticate(scope, verifier, authorization)
            if refusal is not None:
                await _answer(send, 401, refusal, has_body, {"www-authenticate": "Bearer"})
                return
        if not has_body:
            await self.app(scope, receive, send)
            return
        limit, key = self.policy.cap(method, path)
        if length is not None:
            declared = int(length) if length.isdigit() else -1  # the server refuses a bad one
            if declared > limit:
                detail = f"request body of {declared} bytes is larger than {limit} ({key})"
                await _answer(send, 413, detail, True)
                return
        if chunked is None:  # the server reads no more than Content-Length declared
            await self.app(scope, receive, send)
            return
        await self.app(scope, _counting(receive, limit, key), send)


def _authenticate(scope: Scope, verifier: TokenVerifier, header: bytes | None) -> str | None:
    """Put the caller's Identity in the scope; or why not (the 401's detail,
    worded as `Require` words it)."""
    scheme, _, token = (header or b"").decode("latin-1").partition(" ")
    if not token or scheme.lower() != "bearer":
        return "missing bearer token"
    try:
        scope[IDENTITY_SCOPE_KEY] = verifier.verify(token)
    except TokenError as exc:
        return f"invalid token: {exc}"
    return None


def _counting(receive: Receive, limit: int, key: str) -> Receive:
    received = 0

    async def counted() -> MutableMapping[str, Any]:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit, key)
        return message

    return counted


async def _answer(
    send: Send, status: int, detail: str, close: bool, extra: dict[str, str] | None = None
) -> None:
    """A JSON error answered by the gate itself; `close` when a body is left
    unread (the server then closes the connection instead of draining it)."""
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
