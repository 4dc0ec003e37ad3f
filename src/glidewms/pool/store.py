"""The pool's durable state: jobs, autoclusters, pilots, claims, events, usage.

Every state change is one transaction, so a pool killed at any instant
restarts with each job in exactly one state. Every UPDATE is conditional on
the state it expects, so a job is never handed out twice and a stale claim
can never complete a job.

One pool process owns a database. It keeps the idle queue (counts per
autocluster and submitter) and the fair-share accounting in memory, rebuilt
from the database at start; a process-wide lock serialises every change that
touches them, and they are updated only after the change has committed.
Submits insert without that lock (a bulk submit does not stall claims on
PostgreSQL) and add their jobs to the index once committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from glidewms import classads
from glidewms.db import migrate
from glidewms.pool import schema
from glidewms.pool.fairshare import Accounting, split_submitter
from glidewms.pool.jobs import (
    CLUSTER_PLACEHOLDER,
    JOB_STATUS,
    TERMINAL,
    Conflict,
    Derived,
    InvalidJob,
    NewJob,
    NotFound,
    PilotGone,
    check_edit,
    derive,
    execution_spec,
    full_ad,
    int_attr,
    job_id,
    split_job_id,
)
from glidewms.pool.matchmaker import Matchmaker
from glidewms.pool.pilots import PilotsMixin
from glidewms.pool.queue_index import IdleIndex, head_key
from glidewms.pool.schema import autoclusters, counters, events, jobs, usage

__all__ = ["JOB_STATUS", "Conflict", "FairShare", "InvalidJob", "NewJob", "NotFound",
           "PilotGone", "PoolStore", "execution_spec", "job_id"]

COUNTERS = ("cluster", "jobs_completed", "job_failures", "site_failures")


@dataclass
class FairShare:
    halflife: float = 86400.0
    user_factors: dict[str, float] | None = None
    group_factors: dict[str, float] | None = None
    default_factor: float = 1.0


class PoolStore(PilotsMixin):
    def __init__(self, engine: Engine, max_job_restarts: int = 5,
                 fair_share: FairShare | None = None) -> None:
        self.engine = engine
        self.max_job_restarts = max_job_restarts
        fs = fair_share or FairShare()
        self.accounting = Accounting(fs.halflife, fs.user_factors or {},
                                     fs.group_factors or {}, fs.default_factor)
        self.matchmaker = Matchmaker()
        self.index = IdleIndex()
        self._lock = threading.Lock()
        self._ac_lock = threading.Lock()
        migrate(engine, "pool", schema.MIGRATIONS)
        self._init_counters()
        self._rebuild()

    # ------------------------------------------------------------ startup

    def _init_counters(self) -> None:
        for name in COUNTERS:
            try:
                with self.engine.begin() as conn:
                    if conn.execute(sa.select(counters.c.value)
                                    .where(counters.c.name == name)).first() is None:
                        conn.execute(counters.insert().values(name=name, value=0))
            except sa.exc.IntegrityError:
                pass  # created by another process at the same instant

    def _rebuild(self) -> None:
        """Idle index and accounting from the database (O(jobs), once)."""
        now = time.time()
        with self.engine.connect() as conn:
            for r in conn.execute(
                sa.select(jobs.c.autocluster_id, jobs.c.submitter, jobs.c.owner,
                          sa.func.count())
                .where(jobs.c.state == "idle")
                .group_by(jobs.c.autocluster_id, jobs.c.submitter, jobs.c.owner)
            ):
                self.index.add(r[0], r[1], r[3])
                self.accounting.ensure(r[1], r[2], split_submitter(r[1], r[2]), now)
            for r in conn.execute(sa.select(usage)):
                self.accounting.load(r.submitter, r.owner, r.acct_group, r.usage, r.updated_at)
            for r in conn.execute(
                sa.select(jobs.c.submitter, jobs.c.owner, sa.func.sum(jobs.c.cpus))
                .where(jobs.c.state == "running").group_by(jobs.c.submitter, jobs.c.owner)
            ):
                # they ran while the pool was down too: count them since the last save
                state = self.accounting.submitters.get(r[0])
                self.accounting.change(r[0], r[1], split_submitter(r[0], r[1]), int(r[2]),
                                       state.at if state else now)

    # ---------------------------------------------------------------- jobs

    def submit(self, owner: str, new_jobs: Sequence[NewJob]) -> tuple[int, list[str]]:
        """Queue one cluster. All or nothing: a bad job refuses the whole cluster.

        The cluster id is taken in its own transaction (an id lost to a crash
        leaves a gap, never a duplicate), autoclusters are resolved before the
        jobs are inserted, and the jobs and their events go in one transaction.
        """
        now = time.time()
        checked: set[str] = set()
        for proc_id, job in enumerate(new_jobs):
            if job.ad_text in checked:
                continue
            try:
                job.realise(0)
            except classads.ClassAdError as exc:
                raise InvalidJob(proc_id, str(exc)) from None
            checked.add(job.ad_text)
        with self.engine.begin() as conn:
            cluster_id = self._next_cluster(conn)
        ac_ids: dict[str, int] = {}
        templates: dict[str, tuple[str, str, Derived | None]] = {}
        rows = []
        for proc_id, job in enumerate(new_jobs):
            template = templates.get(job.ad_text)
            if template is None:  # once per distinct ad text: bulk clusters share one
                ad, _, _ = job.realise(cluster_id)
                ad["ClusterId"], ad["ProcId"], ad["Owner"] = cluster_id, 0, owner
                ad["QDate"] = int(now)
                d = derive(ad, owner)
                per_proc = "procid" in d.signature_ad.lower()
                before, after = _split_text(ad, "ProcId")
                template = templates[job.ad_text] = (before, after, None if per_proc else d)
            before, after, derived = template
            text = f"{before}{proc_id}{after}"
            d = derived or derive(classads.parse_ad(text), owner)
            if d.signature not in ac_ids:
                ac_ids[d.signature] = self._autocluster_id(d, now)
            args = [a.replace(CLUSTER_PLACEHOLDER, str(cluster_id)) for a in job.args]
            env = {k: v.replace(CLUSTER_PLACEHOLDER, str(cluster_id))
                   for k, v in job.env.items()}
            rows.append({
                "cluster_id": cluster_id, "proc_id": proc_id, "owner": owner,
                "submitter": d.submitter, "state": "idle", "ad": text,
                "autocluster_id": ac_ids[d.signature], "prio": d.prio, "cpus": d.cpus,
                "q_date": now, "sandbox": {"files": job.sandbox, "args": args, "env": env},
                "num_starts": 0, "num_restarts": 0, "updated_at": now})
        with self.engine.begin() as conn:
            conn.execute(jobs.insert(), rows)
            conn.execute(events.insert(), [
                {"cluster_id": cluster_id, "proc_id": r["proc_id"], "time": now,
                 "type": "submitted", "detail": {"owner": owner}} for r in rows])
        added: dict[tuple[int, str], list[Any]] = {}
        for r in rows:
            key = head_key(r["prio"], now, cluster_id, r["proc_id"])
            slot = added.setdefault((r["autocluster_id"], r["submitter"]), [0, key])
            slot[0] += 1
            slot[1] = min(slot[1], key)
        with self._lock:
            for (ac, submitter), (n, best) in added.items():
                self.index.add(ac, submitter, n, best)
                self.accounting.ensure(submitter, owner, split_submitter(submitter, owner), now)
        return cluster_id, [job_id(cluster_id, r["proc_id"]) for r in rows]

    def _next_cluster(self, conn: Connection) -> int:
        return conn.execute(
            counters.update().where(counters.c.name == "cluster")
            .values(value=counters.c.value + 1).returning(counters.c.value)
        ).scalar_one()

    def _bump(self, conn: Connection, name: str, n: int = 1) -> None:
        if n:
            conn.execute(counters.update().where(counters.c.name == name)
                         .values(value=counters.c.value + n))

    def _autocluster_id(self, d: Derived, now: float) -> int:
        """The id of an autocluster, created in its own transaction if new, so
        concurrent submits of the same kind of job never collide."""
        with self._ac_lock:
            for _ in range(2):
                with self.engine.begin() as conn:
                    row = conn.execute(sa.select(autoclusters.c.id)
                                       .where(autoclusters.c.signature == d.signature)).first()
                    if row:
                        return int(row[0])
                try:
                    with self.engine.begin() as conn:
                        return int(conn.execute(autoclusters.insert().values(
                            signature=d.signature, ad=d.signature_ad, created_at=now)
                        ).inserted_primary_key[0])
                except sa.exc.IntegrityError:
                    continue  # another process created it: read it back
        raise RuntimeError(f"cannot create autocluster {d.signature}")

    def list_jobs(self, constraint: str | None = None, history: bool = False,
                  job_ids: Iterable[str] | None = None) -> list[tuple[Any, Any]]:
        """(row, full ad) of matching jobs; `history` selects finished ones."""
        expr = classads.parse_expr(constraint) if constraint else None
        query = sa.select(jobs)
        if job_ids is not None:
            pairs = [split_job_id(j) for j in job_ids]
            if not pairs:
                return []
            query = query.where(sa.tuple_(jobs.c.cluster_id, jobs.c.proc_id).in_(pairs))
        elif history:
            query = query.where(jobs.c.state.in_(TERMINAL))
        else:
            query = query.where(jobs.c.state.notin_(TERMINAL))
        query = query.order_by(jobs.c.cluster_id, jobs.c.proc_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        out = []
        for row in rows:
            ad = full_ad(row)
            if expr is None or classads.constraint_matches(expr, ad):
                out.append((row, ad))
        return out

    def full_ad(self, row: Any) -> Any:
        return full_ad(row)

    def get_job(self, jid: str) -> Any:
        cluster_id, proc_id = split_job_id(jid)
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(jobs).where(jobs.c.cluster_id == cluster_id, jobs.c.proc_id == proc_id)
            ).first()
        if row is None:
            raise NotFound(f"no job {jid}")
        return row

    def job_events(self, jid: str) -> list[dict[str, Any]]:
        cluster_id, proc_id = split_job_id(jid)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(events)
                .where(events.c.cluster_id == cluster_id, events.c.proc_id == proc_id)
                .order_by(events.c.id)
            ).all()
        return [{"time": r.time, "type": r.type, "detail": r.detail or {}} for r in rows]

    def act(self, action: str, rows: Sequence[Any], reason: str, by: str) -> list[str]:
        """hold, release or remove the given jobs; returns the ids that changed."""
        allowed_from = {"hold": ("idle", "running"), "release": ("held",),
                        "remove": ("idle", "running", "held")}[action]
        new_state = {"hold": "held", "release": "idle", "remove": "removed"}[action]
        kind = {"hold": "held", "release": "released", "remove": "removed"}[action]
        now, changed, moved = time.time(), [], []
        with self._lock:
            with self.engine.begin() as conn:
                for given in rows:
                    row = self._current(conn, given.cluster_id, given.proc_id)
                    if row is None or row.state not in allowed_from:
                        continue
                    values: dict[str, Any] = {"state": new_state, "updated_at": now,
                                              "claim_id": None, "lease_expires": None}
                    if action == "hold":
                        values["hold_reason"] = reason or f"held by {by}"
                    elif action == "release":
                        values["hold_reason"] = None
                    else:
                        values["completion_date"] = now
                    result = conn.execute(jobs.update().where(
                        jobs.c.cluster_id == row.cluster_id, jobs.c.proc_id == row.proc_id,
                        jobs.c.state == row.state).values(**values))
                    if result.rowcount:
                        changed.append(job_id(row.cluster_id, row.proc_id))
                        moved.append((row, new_state))
                        self._event(conn, row.cluster_id, row.proc_id, now, kind,
                                    {"by": by, "reason": reason})
            for row, new_state in moved:
                self._left(row, now)
                if new_state == "idle":
                    self._became_idle(row.autocluster_id, row.submitter, row.prio, row.q_date,
                                      row.cluster_id, row.proc_id)
        return changed

    def edit(self, rows: Sequence[Any], attribute: str, value: str,
             by: str) -> tuple[list[str], dict[str, str]]:
        """Set one attribute of idle or held jobs; returns (changed, {id: why not})."""
        expr = check_edit(attribute, value)
        now, changed, skipped, moved = time.time(), [], {}, []
        with self._lock:
            # first the new ads and their autoclusters (each its own short
            # transaction), then every job in one; the lock keeps ads unchanged
            planned = []
            with self.engine.connect() as conn:
                for given in rows:
                    jid = job_id(given.cluster_id, given.proc_id)
                    row = self._current(conn, given.cluster_id, given.proc_id)
                    if row is None or row.state not in ("idle", "held"):
                        skipped[jid] = (f"job is {row.state if row else 'gone'}: only idle "
                                        "or held jobs can be edited")
                        continue
                    ad = classads.parse_ad(row.ad)
                    old = str(ad.lookup(attribute)) if attribute in ad else None
                    ad[attribute] = expr
                    planned.append((jid, row, ad, old, derive(ad, row.owner)))
            acs = {d.signature: self._autocluster_id(d, now) for *_, d in planned}
            with self.engine.begin() as conn:
                for jid, row, ad, old, d in planned:
                    ac = acs[d.signature]
                    result = conn.execute(jobs.update().where(
                        jobs.c.cluster_id == row.cluster_id, jobs.c.proc_id == row.proc_id,
                        jobs.c.state == row.state).values(
                        ad=classads.to_text(ad), autocluster_id=ac, prio=d.prio, cpus=d.cpus,
                        submitter=d.submitter, updated_at=now))
                    if not result.rowcount:
                        skipped[jid] = "job changed meanwhile"
                        continue
                    changed.append(jid)
                    moved.append((row, ac, d))
                    self._event(conn, row.cluster_id, row.proc_id, now, "edited",
                                {"by": by, "attribute": attribute, "old": old,
                                 "new": str(expr)})
            for row, ac, d in moved:
                if row.state == "idle":
                    self.index.remove(row.autocluster_id, row.submitter,
                                      head_key(row.prio, row.q_date, row.cluster_id,
                                               row.proc_id))
                    self._became_idle(ac, d.submitter, d.prio, row.q_date, row.cluster_id,
                                      row.proc_id)
        return changed, skipped

    @staticmethod
    def _current(conn: Connection, cluster_id: int, proc_id: int) -> Any:
        return conn.execute(sa.select(jobs).where(
            jobs.c.cluster_id == cluster_id, jobs.c.proc_id == proc_id)).first()

    def _became_idle(self, ac: int, submitter: str, prio: int, q_date: float,
                     cluster_id: int, proc_id: int) -> None:
        self.index.add(ac, submitter, 1, head_key(prio, q_date, cluster_id, proc_id))

    def _left(self, row: Any, now: float) -> None:
        """Index and accounting for a job that left the state `row` shows."""
        if row.state == "idle":
            self.index.remove(row.autocluster_id, row.submitter,
                              head_key(row.prio, row.q_date, row.cluster_id, row.proc_id))
        elif row.state == "running":
            self.accounting.change(row.submitter, row.owner,
                                   split_submitter(row.submitter, row.owner), -row.cpus, now)

    @staticmethod
    def _event(conn: Connection, cluster_id: int, proc_id: int, now: float, kind: str,
               detail: dict[str, Any] | None = None) -> None:
        conn.execute(events.insert().values(cluster_id=cluster_id, proc_id=proc_id,
                                            time=now, type=kind, detail=detail or {}))

    # ------------------------------------------------------------ matching

    def _head(self, conn: Connection, ac: int, submitter: str) -> Any:
        cached = self.index.heads.get((ac, submitter))
        if cached is not None:
            return cached
        row = conn.execute(
            sa.select(jobs.c.prio, jobs.c.q_date, jobs.c.cluster_id, jobs.c.proc_id)
            .where(jobs.c.state == "idle", jobs.c.autocluster_id == ac,
                   jobs.c.submitter == submitter)
            .order_by(jobs.c.prio.desc(), jobs.c.q_date, jobs.c.cluster_id, jobs.c.proc_id)
            .limit(1)).first()
        if row is None:
            return None
        key = head_key(row.prio, row.q_date, row.cluster_id, row.proc_id)
        self.index.heads[(ac, submitter)] = key
        return key

    def _choose(self, conn: Connection, slot: Any, now: float) -> tuple[int, str, Any] | None:
        """(autocluster, submitter, head key) of the job this slot should run.

        The submitter with the best effective priority among those with a
        matching idle job; then the slot's Rank; then JobPrio; then FIFO.
        """
        ads = self._autocluster_ads(conn, list(self.index.autoclusters()))
        ranked = self.matchmaker.ranked(slot, ads)
        if not ranked:
            return None
        by_submitter: dict[str, list[tuple[float, int]]] = {}
        for ac, rank in ranked:
            for submitter, _ in self.index.submitters(ac):
                by_submitter.setdefault(submitter, []).append((rank, ac))
        while by_submitter:
            submitter = self.accounting.best(by_submitter, now)
            assert submitter is not None
            best = None
            for rank, ac in by_submitter.pop(submitter):
                key = self._head(conn, ac, submitter)
                if key is not None and (best is None or (-rank, key) < best[0]):
                    best = ((-rank, key), ac)
            if best is not None:
                return best[1], submitter, best[0][1]
        return None

    def _autocluster_ads(self, conn: Connection, ids: list[int]) -> dict[int, Any]:
        missing = [i for i in ids if i not in self.matchmaker.ads]
        if missing:
            for r in conn.execute(sa.select(autoclusters.c.id, autoclusters.c.ad)
                                  .where(autoclusters.c.id.in_(missing))):
                self.matchmaker.ads[r.id] = classads.parse_ad(r.ad)
        return {i: self.matchmaker.ads[i] for i in ids}

    # ------------------------------------------------------------- reports

    def demand(self) -> list[dict[str, Any]]:
        """Per autocluster: idle and running counts, owners, oldest queue date."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(jobs.c.autocluster_id, jobs.c.state, jobs.c.owner,
                          sa.func.count().label("n"), sa.func.min(jobs.c.q_date).label("oldest"))
                .where(jobs.c.state.in_(("idle", "running")))
                .group_by(jobs.c.autocluster_id, jobs.c.state, jobs.c.owner)
            ).all()
            ac_rows = {r.id: r for r in conn.execute(
                sa.select(autoclusters).where(
                    autoclusters.c.id.in_({r.autocluster_id for r in rows})))}
        summary: dict[int, dict[str, Any]] = {}
        for r in rows:
            entry = summary.setdefault(r.autocluster_id, {
                "id": r.autocluster_id, "ad": ac_rows[r.autocluster_id].ad,
                "idle": 0, "running": 0, "owners": {}, "oldest_idle": None})
            entry[r.state] += r.n
            if r.state == "idle":
                entry["owners"][r.owner] = entry["owners"].get(r.owner, 0) + r.n
                if entry["oldest_idle"] is None or r.oldest < entry["oldest_idle"]:
                    entry["oldest_idle"] = r.oldest
        for entry in summary.values():
            ad = classads.parse_ad(entry["ad"])
            entry["request"] = {
                "cpus": int_attr(ad, "RequestCpus", 1), "memory": int_attr(ad, "RequestMemory", 0),
                "disk": int_attr(ad, "RequestDisk", 0), "gpus": int_attr(ad, "RequestGPUs", 0)}
        return sorted(summary.values(), key=lambda e: e["id"])

    def userprio(self) -> list[dict[str, Any]]:
        """Every known submitter: usage, cores in use, idle jobs, factor, priority."""
        now = time.time()
        with self._lock:
            out = [{"submitter": name, "owner": state.owner, "group": state.group,
                    "usage": self.accounting.usage(name, now), "running_cores": state.running,
                    "idle_jobs": max(0, self.index.idle_of(name)),
                    "factor": self.accounting.factor(name),
                    "effective_priority": self.accounting.effective(name, now)}
                   for name, state in self.accounting.submitters.items()]
        return sorted(out, key=lambda e: (e["effective_priority"], e["submitter"]))

    def stats(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {r.name: int(r.value) for r in conn.execute(sa.select(counters))
                    if r.name != "cluster"}

    def flush_usage(self) -> int:
        """Persist the usage of submitters that changed (called every lease tick)."""
        now = time.time()
        with self._lock:
            changed = self.accounting.snapshot(now)
        if not changed:
            return 0
        with self.engine.begin() as conn:
            conn.execute(usage.delete().where(usage.c.submitter.in_([c[1] for c in changed])))
            conn.execute(usage.insert(), [
                {"submitter": name, "owner": state.owner, "acct_group": state.group,
                 "usage": value, "updated_at": now} for state, name, value in changed])
        return len(changed)


def _split_text(ad: Any, name: str) -> tuple[str, str]:
    """The one-line text of `ad` cut where the value of `name` goes, so that a
    cluster of jobs differing only there is written without a parse each."""
    text = classads.to_text(ad)
    marker = f"{name} = {ad.lookup(name)}"
    for lead, tail in (("; ", ";"), ("; ", " ]"), ("[ ", ";"), ("[ ", " ]")):
        at = text.find(f"{lead}{marker}{tail}")
        if at >= 0:
            start = at + len(lead) + len(name) + 3
            before, after = text[:start], text[start + len(str(ad.lookup(name))):]
            probe = classads.parse_ad(f"{before}12345{after}")
            if probe.get(name) == 12345 and len(probe) == len(ad):  # cut at the right place
                return before, after
    raise ValueError(f"cannot place {name} in {text!r}")
