"""`/stats`: pilots, failures, goodput and badput per entry and frontend (stats.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter

from glidewms.factory.routes.deps import FactoryDep, Frontend, StoreDep, frontend_filter
from glidewms.factory.stats import entry_stats

router = APIRouter()


@router.get("/stats")
async def stats(
    identity: Frontend, store: StoreDep, factory: FactoryDep, since: float | None = None
) -> dict[str, Any]:
    """Per entry and frontend since `since` (default: the last 24 hours): pilots by
    state, submit rate, failures by category, goodput and badput (stats.py), and the
    entry's health now (its pause, pilot failure streak). A frontend sees its own
    rows; admin all."""
    now = time.time()
    start = now - 86400 if since is None else since
    found = await asyncio.to_thread(store.recent, start, frontend_filter(identity))
    rows = entry_stats(found, start, now)
    for row in rows:
        entry = factory.watched_entry(row["entry"])
        row["paused"] = None if entry is None else factory.pause_view(entry)
        row["pilot_failures"], row["last_pilot_failure"] = factory.streak(row["entry"])
    return {"time": now, "since": start, "rows": rows}
