"""What the routes depend on: the pool they serve, the caller, and the
translation of store errors to HTTP statuses.

Every dependency here is a coroutine (or `Require`, one itself): FastAPI runs
a plain-function dependency in a worker thread, a hop the pilot turn, served
a thousand times a second, must not pay. Store calls go to a worker thread
(`call`): they block on the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from glidewms import classads
from glidewms.config.pool import PoolConfig
from glidewms.pool.checks import Refused
from glidewms.pool.jobs import BadJobId, Conflict, InvalidEdit, InvalidJob, NotFound, PilotGone
from glidewms.pool.pilots import PilotOwner
from glidewms.pool.sandbox import SandboxStore
from glidewms.pool.store import PoolStore
from glidewms.security.http import require
from glidewms.security.tokens import Identity, TokenIssuer

T = TypeVar("T")


class WorkSignal:
    """Wakes every waiting claim when work may have appeared.

    Callers take `current()` *before* looking for work, so a notify that
    happens between the look and the wait is never missed.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()


@dataclass(frozen=True)
class PoolContext:
    """One pool service: built by `create_app`, kept in `app.state.pool`."""

    config: PoolConfig
    store: PoolStore
    files: SandboxStore
    signal: WorkSignal  # fired by every submit, release and requeue
    issuer: TokenIssuer | None  # None: this pool cannot mint pilot tokens


async def pool_context(request: Request) -> PoolContext:
    return request.app.state.pool  # type: ignore[no-any-return]


Pool = Annotated[PoolContext, Depends(pool_context)]
# The caller, by the scope its token must hold (admin is accepted for any).
UserCaller = Annotated[Identity, Depends(require("user"))]
PilotCaller = Annotated[Identity, Depends(require("pilot"))]
FrontendCaller = Annotated[Identity, Depends(require("frontend"))]
UserOrPilotCaller = Annotated[Identity, Depends(require("user", "pilot"))]


def pilot_owner(who: Identity) -> PilotOwner | None:
    """The identity a pilot call must match, from the token (None: an admin,
    who may act on any pilot). A pilot registered by an admin is the admin's."""
    if who.is_admin:
        return None
    return owner_of(who)


def owner_of(who: Identity) -> PilotOwner:
    """The identity a pilot registered with `who` is bound to."""
    claims = who.claims
    return PilotOwner(
        subject=who.subject,
        frontend=_claim(claims, "fe"),
        group=_claim(claims, "group"),
        entry=_claim(claims, "entry"),
        site=_claim(claims, "site"),
    )


def _claim(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return None if value is None else str(value)


async def call(fn: Callable[..., T], *args: Any) -> T:
    """A blocking store call, in a worker thread."""
    return await run_in_threadpool(fn, *args)


async def guarded(fn: Callable[..., T], *args: Any) -> T:
    """`call`, with the store's refusals as HTTP statuses."""
    try:
        return await run_in_threadpool(fn, *args)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except PilotGone as exc:
        raise HTTPException(410, str(exc)) from None
    except Conflict as exc:
        raise HTTPException(409, str(exc)) from None
    except (classads.ClassAdError, InvalidEdit, InvalidJob, Refused, BadJobId) as exc:
        raise HTTPException(422, str(exc)) from None
