"""The pool's own state, for people and monitoring: health, fair-share
priorities, counters."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from glidewms.pool.routes.deps import Pool, UserCaller, call

health = APIRouter()  # outside the API prefix
router = APIRouter()


@health.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/userprio")
async def userprio(pool: Pool, who: UserCaller) -> dict[str, Any]:
    return {
        "time": time.time(),
        "halflife": pool.config.priority_halflife,
        "submitters": await call(pool.store.reports.userprio),
    }


@router.get("/concurrency")
async def concurrency_limits(pool: Pool, who: UserCaller) -> dict[str, Any]:
    """Concurrency limits in use, and idle jobs waiting for them (docs/pool.md)."""
    return {"time": time.time(), "limits": await call(pool.store.reports.concurrency)}


@router.get("/stats")
async def stats(pool: Pool, who: UserCaller) -> dict[str, Any]:
    """Counters, and the queue's idle/running counts from memory: cheap
    enough to poll (the throughput benchmark waits on it)."""
    reports = pool.store.reports
    return {
        "time": time.time(),
        "counters": await call(reports.stats),
        "queue": await call(reports.queue_counts),
    }
