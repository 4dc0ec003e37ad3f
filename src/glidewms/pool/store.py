"""The pool's durable state, and the components that change it.

Every state change is one transaction, so a pool killed at any instant
restarts with each job in exactly one state. Every UPDATE is conditional on
the state it expects, so a job is never handed out twice and a stale claim
can never complete a job.

One pool process owns a database, and holds a lock on it for its life
(dblock.py). It keeps the queue (counts per autocluster and submitter, queue
dates, running counts), the fair-share accounting and the reservations of
partitionable pilots for large jobs in memory, rebuilt from the database at
start (shared.py says how they stay in step with it).

`PoolStore` owns the engine, the database lock and that memory, runs the
migrations and the rebuild, and builds the components, which share them by
composition:

| attribute | component | what |
|---|---|---|
| `queue` | `Queue` (queue.py) | submit, list, the pages bulk actions walk |
| `actions` | `Actions` (actions.py) | hold/release/remove/edit, in batches |
| `materializer` | `Materializer` (materialize.py) | late materialisation (max_materialize) |
| `turns` | `Turns` (turns.py) | pilot turns: completions and claims |
| `pilots` | `Pilots` (pilots.py) | register, heartbeat, leave, lease expiry |
| `matching` | `Matching` (choosing.py) | which job a pilot gets; reservations |
| `reports` | `Reports` (reports.py) | demand, priorities, counters, usage |
| `periodic` | `Periodic` (periodic.py) | periodic_hold/remove/release |
| `autoclusters` | `Autoclusters` | kinds of job, for queue and matching |
| `files` | `FileAccess` (access.py) | who may read which sandbox file |
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from glidewms.db import migrate
from glidewms.pool import schema
from glidewms.pool.access import FileAccess
from glidewms.pool.actions import Actions
from glidewms.pool.autoclusters import Autoclusters
from glidewms.pool.checks import StoreLimits
from glidewms.pool.choosing import Matching
from glidewms.pool.concurrency import LimitConfig
from glidewms.pool.dblock import DatabaseLock
from glidewms.pool.drains import Drains
from glidewms.pool.fairshare import Accounting, split_submitter
from glidewms.pool.lifecycle import JobState
from glidewms.pool.materialize import Materializer
from glidewms.pool.periodic import Periodic
from glidewms.pool.pilots import Pilots
from glidewms.pool.queue import Queue
from glidewms.pool.reports import Reports
from glidewms.pool.schema import counters, jobs, usage
from glidewms.pool.shared import COUNTERS, Shared
from glidewms.pool.streams import Streams
from glidewms.pool.turns import Turns


@dataclass
class FairShare:
    halflife: float = 86400.0
    user_factors: dict[str, float] | None = None
    group_factors: dict[str, float] | None = None
    default_factor: float = 1.0


class PoolStore:
    def __init__(
        self,
        engine: Engine,
        *,
        max_job_restarts: int = 5,
        fair_share: FairShare | None = None,
        reserve_for_large_jobs: bool = True,
        lock_wait: float = 10.0,
        significant: Sequence[str] = (),
        limits: StoreLimits | None = None,
        concurrency: LimitConfig | None = None,
    ) -> None:
        self.engine = engine
        self.db_lock = DatabaseLock(engine, lock_wait)  # before anything writes
        fs = fair_share or FairShare()
        self.shared = Shared(
            engine=engine,
            significant=tuple(significant),
            limits=limits or StoreLimits(),
            concurrency=concurrency or LimitConfig(),
            accounting=Accounting(
                fs.halflife, fs.user_factors or {}, fs.group_factors or {}, fs.default_factor
            ),
        )
        self.autoclusters = Autoclusters(self.shared)
        self.queue = Queue(self.shared, self.autoclusters)
        self.actions = Actions(self.shared, self.queue, self.autoclusters)
        self.materializer = Materializer(self.shared, self.queue)
        self.matching = Matching(self.shared, self.autoclusters, reserve_for_large_jobs)
        self.pilots = Pilots(self.shared, self.matching, max_job_restarts)
        self.turns = Turns(self.shared, self.pilots, self.matching)
        self.drains = Drains(self.shared, self.matching)
        self.reports = Reports(self.shared, self.autoclusters)
        self.periodic = Periodic(self.shared, self.actions)
        self.files = FileAccess(self.shared)
        self.streams = Streams(self.shared)
        try:
            migrate(engine, "pool", schema.MIGRATIONS)
            self._init_counters()
            self._rebuild()
        except BaseException:
            self.db_lock.release()
            raise

    def close(self) -> None:
        """Release the database for another pool, and its connections."""
        self.db_lock.release()
        self.engine.dispose()

    def _init_counters(self) -> None:
        for name in COUNTERS:
            try:
                with self.engine.begin() as conn:
                    if (
                        conn.execute(
                            sa.select(counters.c.value).where(counters.c.name == name)
                        ).first()
                        is None
                    ):
                        conn.execute(counters.insert().values(name=name, value=0))
            except sa.exc.IntegrityError:
                pass  # created by another process at the same instant

    def _rebuild(self) -> None:
        """Idle index and accounting from the database (O(jobs), once)."""
        now = time.time()
        index, accounting = self.shared.index, self.shared.accounting
        with self.engine.connect() as conn:
            for r in conn.execute(
                sa.select(
                    jobs.c.autocluster_id,
                    jobs.c.submitter,
                    jobs.c.owner,
                    jobs.c.q_date,
                    sa.func.count(),
                )
                .where(jobs.c.state == JobState.IDLE)
                .group_by(jobs.c.autocluster_id, jobs.c.submitter, jobs.c.owner, jobs.c.q_date)
            ):
                index.add(r[0], r[1], r[3], r[4])
                accounting.ensure(r[1], r[2], split_submitter(r[1], r[2]), now)
            for r in conn.execute(
                sa.select(jobs.c.autocluster_id, sa.func.count())
                .where(jobs.c.state == JobState.RUNNING)
                .group_by(jobs.c.autocluster_id)
            ):
                index.started(r[0], r[1])
            for r in conn.execute(sa.select(usage)):
                accounting.load(r.submitter, r.owner, r.acct_group, r.usage, r.updated_at)
            for r in conn.execute(
                sa.select(jobs.c.submitter, jobs.c.owner, sa.func.sum(jobs.c.cpus))
                .where(jobs.c.state == JobState.RUNNING)
                .group_by(jobs.c.submitter, jobs.c.owner)
            ):
                # they ran while the pool was down too: count them since the last save
                state = accounting.submitters.get(r[0])
                accounting.change(
                    r[0], r[1], split_submitter(r[0], r[1]), int(r[2]), state.at if state else now
                )
