"""`/downtimes`: no new pilots at an entry (or for a frontend) for a while."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field

from glidewms.errors import responses
from glidewms.factory.routes.deps import Admin, FactoryDep, Frontend, StoreDep, check_name

log = logging.getLogger(__name__)

router = APIRouter(prefix="/downtimes", responses=responses(404))


class DowntimeBody(BaseModel):
    """POST /api/v1/downtimes: no new pilots at `entry` for `frontend` in [start, end)."""

    model_config = ConfigDict(extra="forbid")

    entry: str = Field(default="*", description="an entry name, or * for every entry")
    frontend: str = Field(default="*", description="a frontend name, or * for every frontend")
    start: float | None = Field(default=None, description="epoch seconds; default now")
    end: float | None = Field(default=None, description="epoch seconds; default until removed")
    reason: str = Field(min_length=1, max_length=1024)


@router.get("")
async def list_downtimes(
    identity: Frontend, store: StoreDep, past: bool = False
) -> list[dict[str, Any]]:
    """Downtimes in force or to come (`past=true`: ended ones too); a frontend sees
    the ones that apply to it."""
    found = await asyncio.to_thread(store.downtimes, past)
    if identity.is_admin:
        return found
    return [d for d in found if d["frontend"] in ("*", identity.subject)]


@router.post("", status_code=201)
async def add_downtime(
    body: DowntimeBody, identity: Admin, factory: FactoryDep, store: StoreDep
) -> dict[str, Any]:
    if body.entry != "*" and factory.config.entry(body.entry) is None:
        raise HTTPException(422, f"entry: no entry named {body.entry!r}")
    if body.frontend != "*":
        check_name("frontend", body.frontend, 422)
    start = time.time() if body.start is None else body.start
    if body.end is not None and body.end <= start:
        raise HTTPException(422, "end: must be after start")
    added = await asyncio.to_thread(
        store.add_downtime,
        body.entry,
        body.frontend,
        start,
        body.end,
        body.reason,
        identity.subject,
    )
    log.info(
        "downtime %s added by %s: entry %s, frontend %s: %s",
        added["id"],
        identity.subject,
        body.entry,
        body.frontend,
        body.reason,
    )
    factory.wake()
    return added


@router.delete("/{downtime_id}")
async def remove_downtime(
    downtime_id: Annotated[int, Path(ge=1, le=2**63 - 1)],  # an id SQLite can hold
    identity: Admin,
    factory: FactoryDep,
    store: StoreDep,
) -> dict[str, Any]:
    if not await asyncio.to_thread(store.remove_downtime, downtime_id):
        raise HTTPException(404, f"no downtime {downtime_id}")
    factory.wake()
    return {"removed": downtime_id}
