"""What the store's components share: the database, the store lock, and the
queue and accounting kept in memory.

The memory (idle index, fair-share accounting, matchmaker caches) says what
the database says, so it changes only under `lock`, and only after the
transaction that moved a job has committed (or, on the pilot-turn path, is
put back if it fails: see turns.py). The helpers below are the moves every
component makes on it when a job enters or leaves the idle or running state.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from glidewms.pool.checks import StoreLimits
from glidewms.pool.concurrency import LimitConfig
from glidewms.pool.fairshare import Accounting, split_submitter
from glidewms.pool.lifecycle import JobState
from glidewms.pool.matchmaker import Matchmaker
from glidewms.pool.queue_index import IdleIndex, head_key
from glidewms.pool.schema import counters, events, jobs

COUNTERS = ("cluster", "jobs_completed", "job_failures", "site_failures")


@dataclass
class Shared:
    """Built once by PoolStore and given to each component; never replaced."""

    engine: Engine
    accounting: Accounting
    significant: tuple[str, ...] = ()  # extra autocluster attributes (config)
    limits: StoreLimits = field(default_factory=StoreLimits)  # what outside input is held to
    concurrency: LimitConfig = field(default_factory=LimitConfig)  # concurrency.py (config)
    index: IdleIndex = field(default_factory=IdleIndex)
    matchmaker: Matchmaker = field(default_factory=Matchmaker)
    # serialises every change that touches the memory above
    lock: threading.Lock = field(default_factory=threading.Lock)

    def became_idle(
        self, ac: int, submitter: str, prio: int, q_date: float, cluster_id: int, proc_id: int
    ) -> None:
        self.index.add(ac, submitter, q_date, 1, head_key(prio, q_date, cluster_id, proc_id))

    def left(self, row: Any, now: float) -> None:
        """Index and accounting for a job that left the state `row` shows."""
        if row.state == JobState.IDLE:
            self.index.remove(
                row.autocluster_id,
                row.submitter,
                head_key(row.prio, row.q_date, row.cluster_id, row.proc_id),
            )
        elif row.state == JobState.RUNNING:
            self.index.stopped(row.autocluster_id)
            self.accounting.change(
                row.submitter, row.owner, split_submitter(row.submitter, row.owner), -row.cpus, now
            )

    def moved(self, row: Any, new_state: str, now: float) -> None:
        """The job `row` shows (as it was) is now in `new_state`: the memory follows."""
        self.left(row, now)
        if new_state == JobState.IDLE:
            self.became_idle(
                row.autocluster_id, row.submitter, row.prio, row.q_date, row.cluster_id, row.proc_id
            )


def current_job(conn: Connection, cluster_id: int, proc_id: int) -> Any:
    return conn.execute(
        sa.select(jobs).where(jobs.c.cluster_id == cluster_id, jobs.c.proc_id == proc_id)
    ).first()


def record_event(
    conn: Connection,
    cluster_id: int,
    proc_id: int,
    now: float,
    kind: str,
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        events.insert().values(
            cluster_id=cluster_id, proc_id=proc_id, time=now, type=kind, detail=detail or {}
        )
    )


def bump(conn: Connection, name: str, n: int = 1) -> None:
    """Add `n` to one of the pool's COUNTERS."""
    if n:
        conn.execute(
            counters.update().where(counters.c.name == name).values(value=counters.c.value + n)
        )


def trim_events(conn: Connection, cluster_id: int, proc_id: int, keep: int) -> int:
    """Keep a job's first event (its submit) and its newest `keep - 1`: a job
    requeued, held and released forever must not grow its log without bound.
    One index seek when there is nothing to drop. Returns how many went."""
    older = conn.execute(
        sa.select(events.c.id)
        .where(events.c.cluster_id == cluster_id, events.c.proc_id == proc_id)
        .order_by(events.c.id.desc())
        .offset(max(1, keep - 1))
    ).all()
    drop = [r[0] for r in older[:-1]]  # the oldest of them is the first event: kept
    if drop:
        conn.execute(events.delete().where(events.c.id.in_(drop)))
    return len(drop)


def trim_many(conn: Connection, keys: list[tuple[int, int]], keep: int) -> int:
    """`trim_events` for those of the jobs named by (cluster, proc) keys that
    have `keep` events or more: one grouped count per cluster (and per 500
    of its jobs) finds them."""
    by_cluster: dict[int, list[int]] = {}
    for cluster_id, proc_id in keys:
        by_cluster.setdefault(cluster_id, []).append(proc_id)
    over: list[tuple[int, int]] = []
    for cluster_id, procs in by_cluster.items():
        for start in range(0, len(procs), 500):
            found = conn.execute(
                sa.select(events.c.cluster_id, events.c.proc_id)
                .where(
                    events.c.cluster_id == cluster_id,
                    events.c.proc_id.in_(procs[start : start + 500]),
                )
                .group_by(events.c.cluster_id, events.c.proc_id)
                .having(sa.func.count() > keep)
            )
            over += [(r.cluster_id, r.proc_id) for r in found]
    return sum(trim_events(conn, c, p, keep) for c, p in over)
