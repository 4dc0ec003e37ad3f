"""`GET /api/v1/logsearch`: full-text search across archived pilot logs
(factory/logsearch.py): a frontend searches its own pilots, an admin all."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from glidewms.factory import logsearch
from glidewms.factory.routes.deps import FactoryDep, Frontend, frontend_filter

router = APIRouter(tags=["glideins"])


@router.get("/logsearch")
async def search_logs(
    identity: Frontend,
    factory: FactoryDep,
    q: Annotated[str, Query(min_length=2, max_length=200)],
    entry: Annotated[str | None, Query(max_length=128)] = None,
    site: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[float | None, Query(ge=0, le=1e11)] = None,
    until: Annotated[float | None, Query(ge=0, le=1e11)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """Pilots whose archived stdout, stderr or trail contains `q` (a literal,
    case-insensitive), by `entry` or `site` and submission time; bounded
    (`truncated` says a bound was hit: narrow the search)."""
    if "\n" in q or "\r" in q:
        raise HTTPException(422, "q: one line of text")
    entries: set[str] | None = None
    if site is not None:
        entries = {e.name for e in factory.config.entries if e.site == site}
    if entry is not None:
        entries = {entry} if entries is None else entries & {entry}
    if entries is not None and not entries:
        return {"text": q, "pilots": [], "candidates": 0, "scanned_bytes": 0, "truncated": False}
    query = logsearch.Query(
        text=q,
        frontend=frontend_filter(identity),
        entries=None if entries is None else frozenset(entries),
        since=since,
        until=until,
        limit=limit,
    )
    return await asyncio.to_thread(logsearch.search, factory.store, factory.archive, query)
