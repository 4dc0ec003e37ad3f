"""The wire protocol's version and the vocabulary that crosses between services.

Every service serves its API under ``API_PREFIX`` and names the protocol
version it speaks in the ``VERSION_HEADER`` of every response (and in its
OpenAPI ``info.version``). Versions are ``MAJOR.MINOR``:

- a MINOR release only adds (optional request fields, response fields,
  endpoints); a peer of the same major version ignores what it does not know;
- a MAJOR release changes or removes something; it is served under a new
  prefix (``/api/v2``) next to the old one for as long as old peers exist.

This is where compatibility lives when there is any: version 1.0 is the first
release and has no older peers, so no service carries code for one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from enum import Enum
from typing import Any

API_MAJOR = 1
API_MINOR = 0
API_VERSION = f"{API_MAJOR}.{API_MINOR}"
API_PREFIX = f"/api/v{API_MAJOR}"
VERSION_HEADER = "Glidewms-Api-Version"


class IncompatiblePeer(RuntimeError):
    """A peer answered with a protocol version this one cannot speak."""


def check_peer(service: str, header: str | None) -> None:
    """Refuse a peer whose major version differs; a missing header is allowed
    (proxies may strip it) and so is a newer minor version."""
    if header is None:
        return
    major, _, _minor = header.partition(".")
    if not major.isdigit() or int(major) != API_MAJOR:
        raise IncompatiblePeer(
            f"{service} speaks protocol {header!r}; this glidewms speaks {API_VERSION}"
        )


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class VersionHeader:
    """ASGI middleware naming the protocol version on every HTTP response.

    Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``: it adds one
    header to the start message and nothing else, so the pool's turn path
    pays microseconds for it, not a task per request.
    """

    _header = (VERSION_HEADER.lower().encode(), API_VERSION.encode())

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_version(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self._header]
            await send(message)

        await self.app(scope, receive, send_with_version)


class RemovalStage(str, Enum):
    """How far a frontend asks a factory to go in removing an entry's pilots.

    Ordered: each stage does what the one before does and more.
    """

    NO = "NO"  # remove nothing
    WAIT = "WAIT"  # submit nothing more; let the excess drain by itself
    IDLE = "IDLE"  # also remove the excess still queued at the site
    ALL = "ALL"  # also remove running excess (only where the group allows it)

    @property
    def rank(self) -> int:
        return list(RemovalStage).index(self)
