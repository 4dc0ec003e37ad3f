"""A cluster's events after a given one, for the job event logs users'
CLIs write (``log = file``; pool/eventlog.py). Its owner's (and admins')
only, like a job's events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from glidewms.errors import responses
from glidewms.pool.checks import INT32
from glidewms.pool.eventlog import MAX_PAGE, NotYours, cluster_events
from glidewms.pool.routes.deps import Pool, UserCaller, guarded

router = APIRouter(responses=responses(403, 404))


@router.get("/clusters/{cluster_id}/events")
async def events_of_cluster(
    cluster_id: Annotated[int, Path(ge=0, lt=INT32)],
    pool: Pool,
    who: UserCaller,
    after: Annotated[int, Query(ge=0, lt=2**63, description="the last event id already seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
) -> dict[str, Any]:
    """{"events": [{id, proc_id, time, type, detail}], "more", "user_logs":
    {proc: path}, "done"}: events by id; `more` says another page follows;
    `done` that no job of the cluster is queued any more."""
    owner = None if who.is_admin else who.subject
    try:
        return await guarded(cluster_events, pool.store.shared, cluster_id, owner, after, limit)
    except NotYours as exc:
        raise HTTPException(403, str(exc)) from None
