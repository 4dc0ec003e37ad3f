"""`/entries`: what a frontend may ask pilots at, and an operator's pause and resume
of one."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

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
    streak: tuple[int, str | None] = (0, None),
) -> dict[str, Any]:
    """What a frontend needs to match demand to an entry.

    `downtime` is the downtime in force for the asking frontend (or None): a
    frontend should not count on new pilots there until its `end`. `paused`
    says the factory stopped submitting (who paused it: its failed
    submissions, its failing pilots or an operator; why, since when, when it
    tries again by itself), until it or an operator resumes the entry.
    `pilot_failures` is the entry's pilot failure streak (pilot_health.py) and
    `last_pilot_failure` the last one's reason.
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
        "gpus": entry.gpus,
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
        "pilot_failures": streak[0],
        "last_pilot_failure": streak[1],
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
            factory.streak(e.name),
        )
        for e in factory.config.entries
        if identity.is_admin or e.allows(identity.subject)
    ]


class PauseBody(BaseModel):
    """POST /entries/{name}/pause."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=1024, description="why (shown in entry ads)")


@router.post("/{name}/resume")
async def resume_entry(name: str, identity: Admin, factory: FactoryDep) -> dict[str, Any]:
    """Resume an entry paused (by failures or an operator) or backing off (admin)."""
    if factory.config.entry(name) is None:
        raise HTTPException(404, f"no entry named {name!r}")
    was_paused = await factory.resume(name, identity.subject)
    log.info("entry %s: resume asked by %s (was paused: %s)", name, identity.subject, was_paused)
    return {"entry": name, "resumed": was_paused}


@router.post("/{name}/pause")
async def pause_entry(
    name: str, body: PauseBody, identity: Admin, factory: FactoryDep
) -> dict[str, Any]:
    """Pause an entry (admin): no new pilot, not even a probe, until it is resumed;
    its pilots are left alone."""
    entry = factory.config.entry(name)
    if entry is None:
        raise HTTPException(404, f"no entry named {name!r}")
    reason = " ".join(body.reason.split())
    if not reason:
        raise HTTPException(422, "reason: expected some words")
    await factory.pause(name, reason, identity.subject)
    return {"entry": name, "paused": factory.pause_view(entry)}
