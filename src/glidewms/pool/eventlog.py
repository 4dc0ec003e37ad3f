"""The events of one cluster, page by page, for users' job event logs.

A user's ``log = file`` is written by their CLI (glidewms.userlog), which
asks for the events of a cluster after the last one it wrote (event ids only
grow), and for the UserLog path of each job those events are about (jobs of
a cluster may name different files: ``log = job_$(Process).log``). Read
only; one cluster per call; pages bounded.

Reading "after the last id" misses nothing because, within one cluster,
events become visible in id order: a cluster's `submitted` events commit in
its submit's transaction before any other event of it can exist, and every
later one is written and committed under the store lock (turns, actions,
lease expiry, and the materialisation of a late-materialising cluster's
jobs: materialize.py), so no event of it with a smaller id can commit later.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from glidewms import classads
from glidewms.pool.jobs import NotFound, stored_ad
from glidewms.pool.lifecycle import TERMINAL_JOBS
from glidewms.pool.materialize import pending
from glidewms.pool.schema import events, jobs
from glidewms.pool.shared import Shared

MAX_PAGE = 5000
_PROC = re.compile(r"(?:^\[ |; )ProcId = (-?\d+)(?:;| \])")


class NotYours(PermissionError):
    """The cluster is another user's."""


def cluster_events(
    shared: Shared, cluster_id: int, owner: str | None, after: int, limit: int
) -> dict[str, Any]:
    """Events of `cluster_id` with ids above `after` (at most `limit`), the
    UserLog of each job they name, and whether every job of the cluster has
    left the queue (nothing more will happen). `owner` None: an admin."""
    limit = max(1, min(limit, MAX_PAGE))
    with shared.engine.connect() as conn:
        first = conn.execute(
            sa.select(jobs.c.owner).where(jobs.c.cluster_id == cluster_id).limit(1)
        ).first()
        if first is None:
            raise NotFound(f"no cluster {cluster_id}")
        if owner is not None and first.owner != owner:
            raise NotYours(f"not your cluster: {cluster_id}")
        rows = conn.execute(
            sa.select(events.c.id, events.c.proc_id, events.c.time, events.c.type, events.c.detail)
            .where(events.c.cluster_id == cluster_id, events.c.id > after)
            .order_by(events.c.id)
            .limit(limit + 1)
        ).all()
        more = len(rows) > limit
        rows = rows[:limit]
        procs = sorted({r.proc_id for r in rows})
        logs: dict[str, str] = {}
        cache: dict[str, str | None] = {}
        for start in range(0, len(procs), 500):
            for job in conn.execute(
                sa.select(jobs.c.proc_id, jobs.c.ad).where(
                    jobs.c.cluster_id == cluster_id, jobs.c.proc_id.in_(procs[start : start + 500])
                )
            ):
                path = _user_log(job.ad, cache)
                if path:
                    logs[str(job.proc_id)] = path
        active = conn.execute(
            sa.select(jobs.c.proc_id)
            .where(jobs.c.cluster_id == cluster_id, jobs.c.state.not_in(list(TERMINAL_JOBS)))
            .limit(1)
        ).first()
        # late materialisation: jobs still to come count as queued
        queued = active is not None or pending(conn, cluster_id)
    return {
        "events": [
            {
                "id": r.id,
                "proc_id": r.proc_id,
                "time": r.time,
                "type": r.type,
                "detail": r.detail or {},
            }
            for r in rows
        ],
        "more": more,
        "user_logs": logs,
        "done": not queued and not more,
    }


def _user_log(text: str, cache: dict[str, str | None]) -> str | None:
    """The job's UserLog (an absolute path), parsed once per ad with ProcId
    aside: the jobs of a cluster share it (submit wrote each job's path as a
    string literal); any other value is evaluated for the job itself."""
    found = _PROC.search(text)
    literal = _LITERAL_LOG.search(text) is not None
    key = text if found is None or not literal else text[: found.start(1)] + text[found.end(1) :]
    if key not in cache:
        value = classads.eval_attr(stored_ad(text), "UserLog")
        cache[key] = value if isinstance(value, str) and value.startswith("/") else None
    return cache[key]


_LITERAL_LOG = re.compile(r'(?:^\[ |; )UserLog = "(?:[^"\\]|\\.)*"(?:;| \])', re.IGNORECASE)
