"""What users see of the pool beyond their jobs: slots (`glidewms status`),
why a job is idle (`glidewms analyze`), and the store's sizes (admins).

Slots are listed for any user, paged and bounded, without who runs on them
or the pilots' secrets (pool/analyze.py). An analysis is its job owner's
(and admins'): it evaluates the job's own Requirements, which others may
read anyway, but it is work done on the caller's behalf over every slot, so
it is bounded by `analyze.MAX_ANALYZE_SLOTS`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from glidewms import classads
from glidewms.errors import responses
from glidewms.pool import analyze
from glidewms.pool.jobs import full_ad
from glidewms.pool.routes.deps import Pool, UserCaller, call, guarded

router = APIRouter(responses=responses(404, 409))

MAX_SLOTS_PAGE = 1000


@router.get("/slots")
async def list_slots(
    pool: Pool,
    who: UserCaller,
    limit: Annotated[int, Query(ge=1, le=MAX_SLOTS_PAGE)] = MAX_SLOTS_PAGE,
    after: Annotated[str | None, Query(max_length=64, description="last pilot id seen")] = None,
) -> dict[str, Any]:
    """Live pilots' slots in pilot-id order, `limit` at a time; `next` is the
    `after` of the following page (None at the end)."""
    rows = await call(pool.store.pilots.list_pilots)
    busy = await call(pool.store.pilots.busy_pilots)
    rows = sorted(
        (r for r in rows if after is None or r.pilot_id > after), key=lambda r: r.pilot_id
    )
    page = rows[:limit]
    return {
        "slots": [analyze.slot_view(r, busy.get(r.pilot_id, 0)) for r in page],
        "next": page[-1].pilot_id if len(rows) > limit else None,
    }


@router.get("/jobs/{jid}/analyze")
async def analyze_job(
    jid: str,
    pool: Pool,
    who: UserCaller,
    pilot: Annotated[str | None, Query(max_length=64, description="only this slot")] = None,
) -> dict[str, Any]:
    """For each clause of the job's Requirements, how many slots satisfy it
    (or, with `pilot`, whether that one slot does)."""
    row = await guarded(pool.store.queue.get_job, jid)
    if not who.is_admin and row.owner != who.subject:
        raise HTTPException(403, f"not your job: {jid}")
    try:
        job = full_ad(row)
    except classads.ClassAdError as exc:
        raise HTTPException(409, f"job {jid}: its ad cannot be read: {exc}") from None
    rows = await call(pool.store.pilots.list_pilots)
    result: dict[str, Any] = {"job_id": jid, "state": row.state}
    if pilot is not None:
        found = [r for r in rows if r.pilot_id == pilot]
        if not found:
            raise HTTPException(404, f"no live pilot {pilot}")
        result["pilot_id"] = pilot
        result.update(await call(analyze.analyze_slot, job, found[0].slot or {}))
        return result
    live = [(r.pilot_id, r.slot or {}, r.free) for r in rows[: analyze.MAX_ANALYZE_SLOTS]]
    result.update(await call(analyze.analyze_job, job, live))
    result["slots_not_analyzed"] = max(0, len(rows) - len(live))
    return result


@router.get("/usage")
async def usage(pool: Pool, who: UserCaller) -> dict[str, Any]:
    """Rows, sandbox files and bytes, and the retention periods (admins)."""
    if not who.is_admin:
        raise HTTPException(403, "the pool's usage is for admins")
    from glidewms.pool.api import retention_of

    return await call(retention_of(pool).usage)
