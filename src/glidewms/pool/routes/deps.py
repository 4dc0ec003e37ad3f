"""What the routes depend on: the pool they serve, the caller, and the
translation of store errors to HTTP statuses.

Every dependency here is a coroutine (or `Require`, one itself): FastAPI runs
a plain-function dependency in a worker thread, a hop the pilot turn, served
a thousand times a second, must not pay. Store calls go to a worker thread
(`call`): they block on the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
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
from glidewms.security.http import Require, require
from glidewms.security.tokens import Identity, TokenIssuer

T = TypeVar("T")


WAKE_FANOUT = 2  # waiters a woken one that found nothing hands its wake to
OWN_NEWS = 0  # the token of a wake for one pilot (`wake_pilots`): none to hand on
FIRST = asyncio.FIRST_COMPLETED


class Waiter:
    """One claim's place in the queue of waiting pilots: taken *before* the
    claim looks for work, so a notify that happens between the look and the
    wait is never missed (it resolves `woken` and the wait returns at once)."""

    __slots__ = ("pilot", "since", "token", "woken")

    def __init__(self, since: int, woken: asyncio.Future[int], pilot: str | None = None) -> None:
        self.since = since  # notifies before this waiter looked: it has seen those
        self.token: int | None = None  # the notify that woke it
        self.woken = woken
        self.pilot = pilot  # whose claim this is (`wake_pilots`)


class WorkSignal:
    """Wakes as many waiting claims as there is new work, not all of them.

    Waking every long-polling pilot on every submit made one job cost a
    claim per idle pilot (the thundering herd of issue 15). Here a notify
    for n new jobs wakes the n waiters that have waited longest. A woken
    waiter that then finds nothing (the job was not for its slot, or another
    pilot took it) hands the wake on to the next `WAKE_FANOUT` waiters that
    have not looked since that notify, unless `has_idle` says no job is idle
    at all: so a job never waits while a pilot that could run it sleeps,
    every waiter looks at most once per notify, and a job that matches only
    a few pilots reaches them in a logarithmic number of rounds. `wakeups`
    counts the waiters woken (tests and the swarm benchmark read it).
    """

    def __init__(self, has_idle: Callable[[], bool] | None = None) -> None:
        self._notifies = 0
        self._waiters: dict[Waiter, None] = {}  # oldest first (an ordered set)
        self.has_idle = has_idle
        self.wakeups = 0

    def enter(self, pilot: str | None = None) -> Waiter:
        """A place in the queue, taken before looking for work; end it with
        `leave` (or `taken`/`missed` after a wake)."""
        waiter = Waiter(self._notifies, asyncio.get_running_loop().create_future(), pilot)
        self._waiters[waiter] = None
        return waiter

    def notify(self, n: int | None = None) -> None:
        """Up to `n` new jobs (or jobs back to idle) may be there to claim;
        None: how many is not known (or pilots changed, not jobs), so every
        waiter looks, as before."""
        self._notifies += 1
        self._wake(self._notifies, len(self._waiters) if n is None else max(1, n))

    def leave(self, waiter: Waiter) -> None:
        """The waiter stops waiting without having looked after its wake (it
        found work or gave up): a wake it got goes to the next waiter."""
        self._waiters.pop(waiter, None)
        if waiter.token is not None:
            self._wake(waiter.token, 1)

    def wake_pilots(self, pilots: Collection[str]) -> int:
        """Wake these pilots' waiting claims, whatever work there is (they have
        news of their own: a drain), without a wake to hand on; how many."""
        wanted = set(pilots)
        woken = [w for w in self._waiters if w.pilot in wanted]
        for waiter in woken:
            del self._waiters[waiter]
            waiter.woken.set_result(OWN_NEWS)
        return len(woken)

    def missed(self, token: int) -> None:
        """A waiter woken by notify `token` looked and found nothing."""
        if self.has_idle is None or self.has_idle():
            self._wake(token, WAKE_FANOUT)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _wake(self, token: int, n: int) -> None:
        waiters = self._waiters
        while n > 0 and waiters:
            waiter = next(iter(waiters))
            if waiter.since >= token:
                return  # this one and all after it have looked since that notify
            del waiters[waiter]
            waiter.token = token
            waiter.woken.set_result(token)
            self.wakeups += 1
            n -= 1

    async def wait(
        self, waiter: Waiter, timeout: float, gone: asyncio.Future[Any] | None = None
    ) -> int | None:
        """The notify that woke `waiter`, or None when `timeout` passed or
        `gone` completed first (the client left: the waiter has then left the
        queue)."""
        woken = waiter.woken
        try:
            if gone is None:
                return await asyncio.wait_for(asyncio.shield(woken), max(0.0, timeout))
            await asyncio.wait((woken, gone), timeout=max(0.0, timeout), return_when=FIRST)
        except asyncio.TimeoutError:
            self.leave(waiter)
            return None
        except asyncio.CancelledError:  # the request went away mid-wait
            self.leave(waiter)
            raise
        if woken.done():
            return woken.result()
        self.leave(waiter)
        return None


@dataclass(frozen=True)
class PoolContext:
    """One pool service: built by `create_app`, kept in `app.state.pool`."""

    config: PoolConfig
    store: PoolStore
    files: SandboxStore
    signal: WorkSignal  # fired by every submit, release and requeue
    issuer: TokenIssuer | None  # None: this pool cannot mint pilot tokens


async def gone(request: Request) -> None:
    """Returns when the client of `request` has gone (its connection closed).

    The body is read by then, so the server's next message for this request
    is the disconnect (uvicorn sends it as soon as the connection is lost, or
    once the answer went out: a watcher is cancelled before that)."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # the server could not say: as gone (the poll ends, the pilot retries)
        return


async def pool_context(request: Request) -> PoolContext:
    return request.app.state.pool  # type: ignore[no-any-return]


class PilotRequire(Require):
    """`require` for calls pilots make: a pilot token minted by another pool
    (its `pool` claim names another pool than this one's `name`) is refused,
    so a token copied from a pilot serving pool A cannot act in pool B even
    when the pools share a pilot issuer key. A token without the claim (a
    pool without a name minted it) is judged as before."""

    async def __call__(self, request: Request) -> Identity:  # type: ignore[override]
        identity = await super().__call__(request)
        claimed = identity.claims.get("pool")
        if claimed is not None and "pilot" in identity.scopes:
            own = request.app.state.pool.config.name
            if claimed != own:
                raise HTTPException(
                    403, f"this pilot token was minted by pool {str(claimed)[:64]!r}, not this one"
                )
        return identity


Pool = Annotated[PoolContext, Depends(pool_context)]
# The caller, by the scope its token must hold (admin is accepted for any).
UserCaller = Annotated[Identity, Depends(require("user"))]
PilotCaller = Annotated[Identity, Depends(PilotRequire(("pilot",)))]
FrontendCaller = Annotated[Identity, Depends(require("frontend"))]
UserOrPilotCaller = Annotated[Identity, Depends(PilotRequire(("user", "pilot")))]


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
