"""Late materialisation: a cluster whose jobs exist in `jobs` only as its
limits allow (HTCondor's max_materialize / max_idle, its "job factory").

A client sends such a cluster compactly: its common ("proto") job once, then
chunks of per-proc deltas (only what differs from the proto besides ProcId),
then a commit. Until the commit the cluster is `staging` and no one sees it;
a commit that never comes leaves it to be dropped by `drop_stale`, so a
submit stays all or nothing. Every proc is checked as it arrives (the same
checks as a plain submit), so nothing refused can wait inside a cluster.

Once committed, `materialize` writes jobs from the next ProcId on, a batch
at a time, while the cluster has fewer than `max_materialize` jobs in the
queue (idle, running or held) and fewer than `max_idle` of them not running
(idle or held), as HTCondor's schedd counts them. A batch's jobs, their
`submitted` events and the cluster's cursor (`next_proc`) move in one
transaction, under the store lock: a crash at any instant leaves the cursor
and the jobs agreeing (nothing lost, nothing twice), and events stay in id
order within the cluster (eventlog.py relies on it). The upkeep pass calls it
every `lease_check_seconds` (so a job that starts, ends or is removed makes
room within about that), a commit calls it at once.

A plain cluster too large for one body is sent the same way with no limits:
it is then materialised whole, a batch at a time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from glidewms import classads
from glidewms.pool.access import grant
from glidewms.pool.jobs import (
    ATTRIBUTE_NAME,
    CLUSTER_PLACEHOLDER,
    Conflict,
    InvalidJob,
    NewJob,
    NotFound,
    template_key,
)
from glidewms.pool.lifecycle import JobState
from glidewms.pool.queue import Queue
from glidewms.pool.schema import jobs, late_clusters, late_procs
from glidewms.pool.shared import Shared

STAGING, ACTIVE, DONE, REMOVED = "staging", "active", "done", "removed"
STAGING_SECONDS = 3600.0  # a cluster not committed within this is dropped
BATCHES_PER_PASS = 20  # per cluster and pass: one huge cluster does not hold up the upkeep
NOT_RUNNING = (JobState.IDLE.value, JobState.HELD.value)
QUEUED = (JobState.IDLE.value, JobState.RUNNING.value, JobState.HELD.value)
_OWNED_NAMES = frozenset({"procid", "clusterid"})


def how_many(
    left: int,
    present: int,
    not_running: int,
    max_materialize: int | None,
    max_idle: int | None,
    batch: int,
) -> int:
    """How many of a cluster's `left` procs to materialise now: it has
    `present` jobs in the queue, `not_running` of them idle or held; at most
    `batch` at once. None: that limit is not set."""
    room = min(left, batch)
    if max_materialize is not None:
        room = min(room, max_materialize - present)
    if max_idle is not None:
        room = min(room, max_idle - not_running)
    return max(0, room)


@dataclass(frozen=True)
class Proto:
    """The common job of a cluster: attributes (name -> expression text, no
    ProcId), sandbox files, arguments, environment."""

    attrs: dict[str, str]
    sandbox: list[dict[str, Any]]
    args: list[str]
    env: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return {"attrs": self.attrs, "sandbox": self.sandbox, "args": self.args, "env": self.env}

    @classmethod
    def of(cls, data: dict[str, Any]) -> Proto:
        return cls(data["attrs"], data["sandbox"], data["args"], data["env"])


def ad_text(attrs: dict[str, str], proc_id: int) -> str:
    """A job's ad as a plain submit writes it (submit.JobDescription.ad_text:
    its attributes in order, ProcId last)."""
    return "[ " + "".join(f"{k} = {v}; " for k, v in attrs.items()) + f"ProcId = {proc_id}; ]"


def proc_job(proto: Proto, delta: dict[str, Any], proc_id: int) -> NewJob:
    """Proc `proc_id` of a cluster: the proto with its delta applied."""
    attrs = proto.attrs
    if delta.get("ad") or delta.get("unset"):
        attrs = dict(attrs)
        for name in delta.get("unset") or ():
            attrs.pop(name, None)
        attrs.update(delta.get("ad") or {})
    sandbox = delta.get("sandbox")
    args = delta.get("args")
    env = delta.get("env")
    return NewJob(
        ad_text=ad_text(attrs, proc_id),
        sandbox=proto.sandbox if sandbox is None else sandbox,
        args=proto.args if args is None else args,
        env=proto.env if env is None else env,
    )


class Materializer:
    def __init__(self, shared: Shared, queue: Queue) -> None:
        self.shared = shared
        self.queue = queue

    # ------------------------------------------------------------ submit

    def create(
        self, owner: str, proto: Proto, max_materialize: int | None, max_idle: int | None
    ) -> int:
        """A staging cluster for `owner`: its id. The proto is checked as
        job 0 would be."""
        self._check_attrs(proto.attrs, 0)
        self.queue.check([proc_job(proto, {}, 0)])
        cluster_id = self.queue.new_cluster_id()
        now = time.time()
        with self.shared.engine.begin() as conn:
            conn.execute(
                late_clusters.insert().values(
                    cluster_id=cluster_id,
                    owner=owner,
                    state=STAGING,
                    proto=proto.as_json(),
                    max_materialize=max_materialize,
                    max_idle=max_idle,
                    staged=0,
                    total=None,
                    next_proc=0,
                    created_at=now,
                    updated_at=now,
                )
            )
            grant(conn, {(f["sha256"], owner, cluster_id) for f in proto.sandbox})
        return cluster_id

    def append(
        self, owner: str, cluster_id: int, first: int, deltas: Sequence[dict[str, Any]], most: int
    ) -> int:
        """Procs `first`... of a staging cluster, each checked; returns how
        many the cluster has. `first` must be how many it had (a retry of a
        chunk already taken is answered, not taken twice); `most` bounds the
        cluster's procs."""
        row = self._own(owner, cluster_id)
        if row.state != STAGING:
            raise Conflict(f"cluster {cluster_id} is {row.state}: procs are added before commit")
        if first < row.staged:
            if self._has_chunk(cluster_id, first, len(deltas)):
                return int(row.staged)
            raise Conflict(f"procs: first is {first}; the cluster has {row.staged} procs")
        if first != row.staged:
            raise Conflict(f"procs: first is {first}; the cluster has {row.staged} procs")
        if first + len(deltas) > most:
            raise InvalidJob(first, f"a cluster has at most {most} procs")
        proto = Proto.of(row.proto)
        for index, delta in enumerate(deltas):
            self._check_attrs(delta.get("ad") or {}, first + index)
        new_jobs = [proc_job(proto, d, first + i) for i, d in enumerate(deltas)]
        self.queue.check(new_jobs, first)
        now = time.time()
        with self.shared.engine.begin() as conn:
            moved = conn.execute(
                late_clusters.update()
                .where(
                    late_clusters.c.cluster_id == cluster_id,
                    late_clusters.c.state == STAGING,
                    late_clusters.c.staged == first,
                )
                .values(staged=first + len(deltas), updated_at=now)
            ).rowcount
            if moved != 1:
                raise Conflict(f"cluster {cluster_id}: another chunk was added meanwhile")
            conn.execute(
                late_procs.insert().values(
                    cluster_id=cluster_id, first=first, count=len(deltas), deltas=list(deltas)
                )
            )
            grant(conn, {(f["sha256"], owner, cluster_id) for j in new_jobs for f in j.sandbox})
        return first + len(deltas)

    def commit(self, owner: str, cluster_id: int, total: int) -> int:
        """The cluster becomes visible and its first jobs are written; returns
        how many. `total` must be the procs sent (a lost chunk is caught here).
        Committing a committed cluster again answers the same."""
        row = self._own(owner, cluster_id)
        if row.state != STAGING:
            if row.total == total:
                return 0
            raise Conflict(f"cluster {cluster_id} is {row.state}")
        if row.staged != total or total < 1:
            raise Conflict(f"commit: total is {total}; the cluster has {row.staged} procs")
        with self.shared.engine.begin() as conn:
            moved = conn.execute(
                late_clusters.update()
                .where(late_clusters.c.cluster_id == cluster_id, late_clusters.c.state == STAGING)
                .values(state=ACTIVE, total=total, updated_at=time.time())
            ).rowcount
        if moved != 1:
            raise Conflict(f"cluster {cluster_id} was committed or dropped meanwhile")
        return self.materialize([cluster_id])

    # ------------------------------------------------------------ materialise

    def materialize(self, only: Iterable[int] | None = None) -> int:
        """Materialise what the limits of every active cluster (or of `only`)
        allow now; returns how many jobs were written."""
        query = sa.select(late_clusters.c.cluster_id).where(late_clusters.c.state == ACTIVE)
        if only is not None:
            query = query.where(late_clusters.c.cluster_id.in_(list(only)))
        with self.shared.engine.connect() as conn:
            ids = [r.cluster_id for r in conn.execute(query.order_by(late_clusters.c.cluster_id))]
        written = 0
        for cluster_id in ids:
            for _ in range(BATCHES_PER_PASS):
                n = self._batch(cluster_id)
                written += n
                if n == 0:
                    break
        return written

    def _batch(self, cluster_id: int) -> int:
        """One batch of one cluster, in one transaction under the store lock."""
        shared = self.shared
        with shared.lock:
            with shared.engine.connect() as conn:
                row = conn.execute(
                    sa.select(late_clusters).where(late_clusters.c.cluster_id == cluster_id)
                ).first()
                if row is None or row.state != ACTIVE:
                    return 0
                counts: dict[str, int] = dict(
                    conn.execute(
                        sa.select(jobs.c.state, sa.func.count())
                        .where(jobs.c.cluster_id == cluster_id, jobs.c.state.in_(QUEUED))
                        .group_by(jobs.c.state)
                    ).all()
                )
                n = how_many(
                    row.total - row.next_proc,
                    sum(counts.values()),
                    sum(counts.get(s, 0) for s in NOT_RUNNING),
                    row.max_materialize,
                    row.max_idle,
                    shared.limits.batch_size,
                )
                start, stop = row.next_proc, row.next_proc + n
                chunks = (
                    conn.execute(
                        sa.select(
                            late_procs.c.first, late_procs.c.count.label("n"), late_procs.c.deltas
                        )
                        .where(
                            late_procs.c.cluster_id == cluster_id,
                            late_procs.c.first < stop,
                            late_procs.c.first + late_procs.c.count > start,
                        )
                        .order_by(late_procs.c.first)
                    ).all()
                    if n
                    else []
                )
            now = time.time()
            if n == 0:
                if row.next_proc >= row.total:
                    self._set_state(cluster_id, row.next_proc, DONE, now)
                return 0
            proto = Proto.of(row.proto)
            new_jobs = [
                proc_job(proto, c.deltas[p - c.first], p)
                for c in chunks
                for p in range(max(start, c.first), min(stop, c.first + c.n))
            ]
            if len(new_jobs) != n:  # the chunks must cover every proc: refuse to guess
                raise RuntimeError(
                    f"cluster {cluster_id}: procs {start}..{stop} are not all stored"
                )
            cuts: dict[tuple[str, str], bool] = {}
            keys = [template_key(j.ad_text, cuts, shared.limits.ads) for j in new_jobs]
            prepared = self.queue.prepare(row.owner, cluster_id, start, new_jobs, keys, now)
            with shared.engine.begin() as conn:
                moved = conn.execute(
                    late_clusters.update()
                    .where(
                        late_clusters.c.cluster_id == cluster_id,
                        late_clusters.c.state == ACTIVE,
                        late_clusters.c.next_proc == start,
                    )
                    .values(
                        next_proc=stop, state=DONE if stop >= row.total else ACTIVE, updated_at=now
                    )
                ).rowcount
                if moved != 1:
                    return 0
                added = self.queue.insert(
                    conn, row.owner, cluster_id, start, new_jobs, keys, now, prepared
                )
                conn.execute(
                    late_procs.delete().where(
                        late_procs.c.cluster_id == cluster_id,
                        late_procs.c.first + late_procs.c.count <= stop,
                    )
                )
            self.queue.index_added(row.owner, added, now)
        return n

    def _set_state(self, cluster_id: int, at: int, state: str, now: float) -> None:
        with self.shared.engine.begin() as conn:
            conn.execute(
                late_clusters.update()
                .where(
                    late_clusters.c.cluster_id == cluster_id,
                    late_clusters.c.state == ACTIVE,
                    late_clusters.c.next_proc == at,
                )
                .values(state=state, updated_at=now)
            )

    # ------------------------------------------------------------ rm, q, upkeep

    def remove_pending(self, owner: str | None, cluster_id: int) -> int:
        """condor_rm of a whole cluster: its procs not yet materialised will
        never be; returns how many. `owner` None: an admin."""
        row = self._own(owner, cluster_id)
        with self.shared.lock, self.shared.engine.begin() as conn:
            fresh = conn.execute(
                sa.select(
                    late_clusters.c.state, late_clusters.c.next_proc, late_clusters.c.total
                ).where(late_clusters.c.cluster_id == cluster_id)
            ).one()
            if fresh.state not in (ACTIVE, STAGING):
                return 0
            pending = int(fresh.total or row.staged) - int(fresh.next_proc)
            conn.execute(
                late_clusters.update()
                .where(late_clusters.c.cluster_id == cluster_id)
                .values(state=REMOVED, updated_at=time.time())
            )
            conn.execute(late_procs.delete().where(late_procs.c.cluster_id == cluster_id))
        return max(0, pending)

    def clusters(self, owner: str | None) -> list[dict[str, Any]]:
        """Committed late clusters (of `owner`; None: everyone's) that still
        have jobs to materialise or in the queue."""
        query = sa.select(late_clusters).where(late_clusters.c.state.in_((ACTIVE, DONE, REMOVED)))
        if owner is not None:
            query = query.where(late_clusters.c.owner == owner)
        out = []
        with self.shared.engine.connect() as conn:
            for row in conn.execute(query.order_by(late_clusters.c.cluster_id)):
                queued = conn.execute(
                    sa.select(sa.func.count()).where(
                        jobs.c.cluster_id == row.cluster_id, jobs.c.state.in_(QUEUED)
                    )
                ).scalar_one()
                if row.state != ACTIVE and not queued:
                    continue
                out.append(
                    {
                        "cluster_id": row.cluster_id,
                        "owner": row.owner,
                        "state": row.state,
                        "total": row.total,
                        "materialized": row.next_proc,
                        "queued": queued,
                        "max_materialize": row.max_materialize,
                        "max_idle": row.max_idle,
                    }
                )
        return out

    def drop_stale(self, now: float) -> int:
        """Staging clusters never committed (a client that died mid-submit)."""
        with self.shared.engine.begin() as conn:
            stale = [
                r.cluster_id
                for r in conn.execute(
                    sa.select(late_clusters.c.cluster_id).where(
                        late_clusters.c.state == STAGING,
                        late_clusters.c.updated_at < now - STAGING_SECONDS,
                    )
                )
            ]
            if stale:
                conn.execute(late_procs.delete().where(late_procs.c.cluster_id.in_(stale)))
                conn.execute(late_clusters.delete().where(late_clusters.c.cluster_id.in_(stale)))
        return len(stale)

    # ------------------------------------------------------------ helpers

    def _own(self, owner: str | None, cluster_id: int) -> Any:
        with self.shared.engine.connect() as conn:
            row = conn.execute(
                sa.select(late_clusters).where(late_clusters.c.cluster_id == cluster_id)
            ).first()
        # another user's cluster is answered as absent: its id says nothing
        if row is None or (owner is not None and row.owner != owner):
            raise NotFound(f"no late-materialising cluster {cluster_id} of yours")
        return row

    def _has_chunk(self, cluster_id: int, first: int, count: int) -> bool:
        with self.shared.engine.connect() as conn:
            got = conn.execute(
                sa.select(late_procs.c.count).where(
                    late_procs.c.cluster_id == cluster_id, late_procs.c.first == first
                )
            ).first()
        return got is not None and got[0] == count

    def _check_attrs(self, attrs: dict[str, str], index: int) -> None:
        """Names and values of attributes sent apart: each value one whole
        expression (so joining them into an ad adds or hides none)."""
        limits = self.shared.limits.ads
        for name, value in attrs.items():
            if not ATTRIBUTE_NAME.fullmatch(name) or name.lower() in _OWNED_NAMES:
                raise InvalidJob(index, f"not an attribute name a job may set: {name[:80]!r}")
            try:
                classads.parse_expr(value.replace(CLUSTER_PLACEHOLDER, "0"), name, limits)
            except classads.ClassAdError as exc:
                raise InvalidJob(index, str(exc)) from None


def pending(conn: Any, cluster_id: int) -> bool:
    """Whether the cluster still has procs to materialise (eventlog: not done)."""
    return (
        conn.execute(
            sa.select(late_clusters.c.cluster_id).where(
                late_clusters.c.cluster_id == cluster_id, late_clusters.c.state == ACTIVE
            )
        ).first()
        is not None
    )
