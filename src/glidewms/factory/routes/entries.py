"""`/entries`: what a frontend may ask pilots at, and an operator's resume of one."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, HTTPException

from glidewms.config.factory import EntryConfig
from glidewms.errors import responses
from glidewms.factory.policy import Tally, active_downtime
from glidewms.factory.routes.deps import Admin, FactoryDep, Frontend, StoreDep
from glidewms.factory.states import ACTIVE_STATES

log = logging.getLogger(__name__)

router = APIRouter(prefix="/entries", responses=responses(404))


def entry_ad(
    entry: EntryConfig,
    counts: dict[str, int],
    error: str | None,
    downtime: Mapping[str, Any] | None = None,
    paused: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a frontend needs to match demand to an entry.

    `downtime` is the downtime in force for the asking frontend (or None): a
    frontend should not count on new pilots there until its `end`. `paused`
    says the factory stopped submitting after repeated failures (why, since
    when, when it tries again), until an operator resumes the entry.
    """
    active = {s.value: counts.get(s.value, 0) for s in ACTIVE_STATES}
    return {
        "name": entry.name,
        "site": entry.site,
        "backend": entry.backend,
        "enabled": entry.enabled,
        "cpus": entry.cpus,
        "memory": entry.memory,
        "disk": entry.disk,
        "walltime": entry.walltime,
        "idle_timeout": entry.idle_timeout,
        "attributes": entry.attributes,
        "limits": {
            "max_pilots": entry.max_pilots,
            "max_idle": entry.max_idle,
            "max_held": entry.max_held,
            "max_per_cycle": entry.max_per_cycle,
        },
        "counts": active,
        "free": max(0, entry.max_pilots - sum(active.values())),
        "last_error": error,
        "paused": None if paused is None else dict(paused),
        "in_downtime": downtime is not None,
        "downtime": None
        if downtime is None
        else {k: downtime[k] for k in ("id", "start", "end", "reason")},
    }


@router.get("")
async def entries(identity: Frontend, factory: FactoryDep, store: StoreDep) -> list[dict[str, Any]]:
    """Entry ads this frontend may request pilots at (all of them for admin)."""
    tally = Tally(await asyncio.to_thread(store.active))
    downtimes = await asyncio.to_thread(store.downtimes)
    now = time.time()
    return [
        entry_ad(
            e,
            tally.entry_counts(e.name),
            factory.entry_errors.get(e.name),
            active_downtime(downtimes, e.name, identity.subject, now),
            factory.pause_view(e),
        )
        for e in factory.config.entries
        if identity.is_admin or e.allows(identity.subject)
    ]


@router.post("/{name}/resume")
async def resume_entry(name: str, identity: Admin, factory: FactoryDep) -> dict[str, Any]:
    """Resume an entry paused after repeated submission failures (admin)."""
    if factory.config.entry(name) is None:
        raise HTTPException(404, f"no entry named {name!r}")
    was_paused = await factory.resume(name)
    log.info("entry %s: resume asked by %s (was paused: %s)", name, identity.subject, was_paused)
    return {"entry": name, "resumed": was_paused}
