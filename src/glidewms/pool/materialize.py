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

import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from glidewms import classads
from glidewms.classad_limits import AdLimits
from glidewms.pool.access import grant
from glidewms.pool.checks import Refused
from glidewms.pool.jobs import (
    ATTRIBUTE_NAME,
    CLUSTER_PLACEHOLDER,
    Conflict,
    InvalidJob,
    NewJob,
    NotFound,
    TemplateKey,
    stored_ad,
    template_key,
)
from glidewms.pool.lifecycle import JobState
from glidewms.pool.queue import Columns, Prepared, Queue, Template
from glidewms.pool.schema import jobs, late_clusters, late_procs
from glidewms.pool.shared import Shared

log = logging.getLogger(__name__)

STAGING, ACTIVE, DONE, REMOVED = "staging", "active", "done", "removed"
STAGING_SECONDS = 3600.0  # a cluster not committed within this is dropped
CHUNKS_KEPT = 4  # decoded chunks kept between batches (each at most a body's size)
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


# What the pool reads from a job's ad beside matching (or whose value shapes
# its autocluster): never taken for a free attribute.
_READ = frozenset(
    {"cmd", "concurrencylimits", "accountinggroup", "acctgroup", "acctgroupuser", "userlog"}
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_SLOT = "GLIDEWMSSLOT{}X"
_PROC_SLOT = 987654321


@dataclass(frozen=True)
class Form:
    """A cluster's canonical ad text (as the plain path stores it), cut where
    the values of its free attributes and ProcId go. A free attribute is a
    string literal of the proto that no other attribute, nor the pool,
    reads: procs that differ from the proto only in such strings (output
    names, `$(Process)`-numbered inputs: the usual case) are of the proto's
    kind, so they are checked and materialised without a parse of their ad
    (issue 15: a million of them at submit). Others take the plain path."""

    free: frozenset[str]
    segments: tuple[str, ...]  # text between the slots
    slots: tuple[str | None, ...]  # the attribute of each slot (None: ProcId)
    values: dict[str, str]  # each free attribute's proto value, rendered

    def fits(
        self, delta: dict[str, Any], cluster_id: int, limits: AdLimits
    ) -> dict[str, str] | None:
        """The delta's free values rendered for cluster `cluster_id` (its
        placeholder replaced, as NewJob.realise does), if it changes nothing
        else and each is one string literal within its bound; None otherwise."""
        if delta.get("unset"):
            return None
        changed = delta.get("ad") or {}
        rendered = {}
        for name, text in changed.items():
            if name not in self.free or len(text.encode()) > limits.max_value_bytes:
                return None
            text = text.replace(CLUSTER_PLACEHOLDER, str(cluster_id))
            if not _STRING.fullmatch(text):  # one literal, nothing after it
                return None
            try:
                render = str(classads.classad2.ExprTree(text))  # as the ad will show it
            except Exception:  # the binding's own errors: not a literal it takes
                return None
            if not _STRING.fullmatch(render):
                return None
            rendered[name] = render
        return rendered

    def text(self, rendered: dict[str, str], proc_id: int) -> tuple[str, str]:
        """The job's ad text, cut where ProcId's value goes (a Template's before, after)."""
        parts: list[str] = [self.segments[0]]
        before = ""
        for slot, segment in zip(self.slots, self.segments[1:], strict=True):
            if slot is None:
                before, parts = "".join(parts), []
            else:
                parts.append(rendered.get(slot) or self.values[slot])
            parts.append(segment)
        return before, "".join(parts)


def form_of(ad: Any, attrs: dict[str, str], significant: Sequence[str]) -> Form | None:
    """`ad`: the proto realised as the plain path realises job 0 (ClusterId,
    Owner, QDate set), a copy this changes; None when its text cannot be cut
    unambiguously."""
    lowered = {name: {t.lower() for t in _NAME.findall(text)} for name, text in attrs.items()}
    skip = _READ | {s.lower() for s in significant}
    free = [
        name
        for name, text in attrs.items()
        if name in ad
        and name.lower() not in skip
        and _STRING.fullmatch(str(ad.lookup(name)))
        and not any(name.lower() in refs for other, refs in lowered.items() if other != name)
    ]
    values = {name: str(ad.lookup(name)) for name in free}
    for i, name in enumerate(free):  # `ad` is the caller's own copy
        ad[name] = _SLOT.format(i)
    ad["ProcId"] = _PROC_SLOT
    text = classads.to_text(ad)
    marks: list[tuple[str, str | None]] = [
        (f'"{_SLOT.format(i)}"', name) for i, name in enumerate(free)
    ]
    marks.append((f"ProcId = {_PROC_SLOT}", None))
    found = []
    for mark, slot in marks:
        if text.count(mark) != 1:
            return None
        at, size = text.index(mark), len(mark)
        if slot is None:  # the slot is the number only
            at, size = at + len("ProcId = "), len(str(_PROC_SLOT))
        found.append((at, size, slot))
    found.sort(key=lambda f: f[0])
    segments, slots, last = [], [], 0
    for at, size, slot in found:
        segments.append(text[last:at])
        slots.append(slot)
        last = at + size
    segments.append(text[last:])
    return Form(frozenset(free), tuple(segments), tuple(slots), values)


@dataclass(frozen=True)
class Chunk:
    first: int
    n: int
    deltas: list[dict[str, Any]]


class Materializer:
    def __init__(self, shared: Shared, queue: Queue) -> None:
        self.shared = shared
        self.queue = queue
        self._chunks: dict[tuple[int, int], list[dict[str, Any]]] = {}

    # ------------------------------------------------------------ submit

    def create(
        self,
        owner: str,
        proto: Proto,
        max_materialize: int | None,
        max_idle: int | None,
        most_staging: int | None = None,
    ) -> int:
        """A staging cluster for `owner`: its id. The proto is checked as
        job 0 would be. `most_staging` bounds the clusters one owner may be
        sending at once: each may grow to `max_procs_per_cluster` procs
        before its commit, so without it one user could fill the disk with
        clusters that never become jobs."""
        self._check_attrs(proto.attrs, 0)
        self.queue.check([proc_job(proto, {}, 0)])
        if most_staging is not None:  # two racing creates may pass one over: still bounded
            with self.shared.engine.connect() as conn:
                staging = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(late_clusters)
                    .where(late_clusters.c.owner == owner, late_clusters.c.state == STAGING)
                ).scalar_one()
            if staging >= most_staging:
                raise Conflict(
                    f"{staging} of your clusters are being submitted (at most "
                    f"{most_staging}, max_staging_clusters): commit them, or wait for "
                    "an abandoned one to be dropped"
                )
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
        form = self._form(proto, cluster_id, row.owner, time.time())
        limits = self.shared.limits.ads
        new_jobs = [proc_job(proto, d, first + i) for i, d in enumerate(deltas)]
        slow: list[int] = []
        for index, (delta, job) in enumerate(zip(deltas, new_jobs, strict=True)):
            if form is not None and form[0].fits(delta, cluster_id, limits) is not None:
                try:
                    job.check_size(limits)  # of the proto's kind: its size is what may differ
                except Refused as exc:
                    raise InvalidJob(first + index, str(exc)) from None
                continue
            self._check_attrs(delta.get("ad") or {}, first + index)
            slow.append(index)
        try:
            self.queue.check([new_jobs[i] for i in slow])
        except InvalidJob as exc:
            message = str(exc).split(": ", 1)[1]
            raise InvalidJob(first + slow[exc.index], message) from None
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
            try:
                for _ in range(BATCHES_PER_PASS):
                    n = self._batch(cluster_id)
                    written += n
                    if n == 0:
                        break
            except Exception:  # one cluster's fault does not stall the others
                log.exception("cluster %d: materialisation failed", cluster_id)
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
                stored = (
                    conn.execute(
                        sa.select(late_procs.c.first, late_procs.c.count.label("n"))
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
                chunks = [
                    Chunk(c.first, c.n, self._deltas(conn, cluster_id, c.first)) for c in stored
                ]
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
            prepared, keys = self._prepare(
                row.owner, cluster_id, start, proto, chunks, new_jobs, now
            )
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

    def _prepare(
        self,
        owner: str,
        cluster_id: int,
        start: int,
        proto: Proto,
        chunks: Sequence[Any],
        new_jobs: list[NewJob],
        now: float,
    ) -> tuple[Prepared, list[TemplateKey]]:
        """Templates and columns of a batch: the proto's kind for the procs
        that fit its Form (no parse), the plain path's for the others."""
        deltas = [
            c.deltas[p - c.first]
            for c in chunks
            for p in range(max(start, c.first), min(start + len(new_jobs), c.first + c.n))
        ]
        form = self._form(proto, cluster_id, owner, now)
        limits = self.shared.limits.ads
        fits = [None if form is None else form[0].fits(d, cluster_id, limits) for d in deltas]
        slow = [i for i, f in enumerate(fits) if f is None]
        cuts: dict[tuple[str, str], bool] = {}
        slow_keys = [template_key(new_jobs[i].ad_text, cuts, limits) for i in slow]
        slow_jobs = [new_jobs[i] for i in slow]
        templates, slow_columns = self.queue.prepare(
            owner, cluster_id, 0, slow_jobs, slow_keys, now
        )
        keys: list[TemplateKey] = [None] * len(new_jobs)
        columns: list[Columns] = [None] * len(new_jobs)  # type: ignore[list-item]
        for i, key, col in zip(slow, slow_keys, slow_columns, strict=True):
            keys[i], columns[i] = key, col
        if form is not None:
            shape, cmd, periodic, proto_columns = form
            for i, rendered in enumerate(fits):
                if rendered is not None:
                    before, after = shape.text(rendered, start + i)
                    keys[i] = ("fast", start + i)
                    templates[keys[i]] = Template(before, after, cmd, periodic)
                    columns[i] = proto_columns
        return (templates, columns), keys

    def _form(
        self, proto: Proto, cluster_id: int, owner: str, now: float
    ) -> tuple[Form, str | None, bool, Columns] | None:
        """The cluster's Form, with what fast jobs share: Cmd, the periodic
        flag, the proto's columns (autocluster, priority, cores, submitter)."""
        job = proc_job(proto, {}, 0)
        key = template_key(job.ad_text, {}, self.shared.limits.ads)
        templates, columns = self.queue.prepare(owner, cluster_id, 0, [job], [key], now)
        template = templates[key]
        ad = stored_ad(f"{template.before}0{template.after}")
        shape = form_of(ad, proto.attrs, self.shared.significant)
        if shape is None:
            return None
        return shape, template.cmd, template.periodic, columns[0]

    def _deltas(self, conn: Any, cluster_id: int, first: int) -> list[dict[str, Any]]:
        """A stored chunk's deltas, decoded once for the batches that read it
        (chunks never change: a few kept, the oldest dropped)."""
        key = (cluster_id, first)
        found = self._chunks.get(key)
        if found is None:
            found = conn.execute(
                sa.select(late_procs.c.deltas).where(
                    late_procs.c.cluster_id == cluster_id, late_procs.c.first == first
                )
            ).scalar_one()
            if len(self._chunks) >= CHUNKS_KEPT:
                self._chunks.pop(next(iter(self._chunks)))
            self._chunks[key] = found
        return list(found)

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
        query = sa.select(
            late_clusters.c.cluster_id,
            late_clusters.c.owner,
            late_clusters.c.state,
            late_clusters.c.total,
            late_clusters.c.next_proc,
            late_clusters.c.max_materialize,
            late_clusters.c.max_idle,
        ).where(late_clusters.c.state.in_((ACTIVE, DONE, REMOVED)))
        if owner is not None:
            query = query.where(late_clusters.c.owner == owner)
        out = []
        with self.shared.engine.connect() as conn:
            rows = conn.execute(query.order_by(late_clusters.c.cluster_id)).all()
            queued: dict[int, int] = {}
            for start in range(0, len(rows), 500):  # one grouped count per 500 clusters
                ids = [r.cluster_id for r in rows[start : start + 500]]
                queued.update(
                    conn.execute(
                        sa.select(jobs.c.cluster_id, sa.func.count())
                        .where(jobs.c.cluster_id.in_(ids), jobs.c.state.in_(QUEUED))
                        .group_by(jobs.c.cluster_id)
                    ).all()
                )
        for row in rows:
            n = queued.get(row.cluster_id, 0)
            if row.state != ACTIVE and not n:
                continue
            out.append(
                {
                    "cluster_id": row.cluster_id,
                    "owner": row.owner,
                    "state": row.state,
                    "total": row.total,
                    "materialized": row.next_proc,
                    "queued": n,
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
