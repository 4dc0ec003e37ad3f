"""The pool's durable state: jobs, autoclusters, pilots, claims, events, usage.

Every state change is one transaction, so a pool killed at any instant
restarts with each job in exactly one state. Every UPDATE is conditional on
the state it expects, so a job is never handed out twice and a stale claim
can never complete a job.

One pool process owns a database, and holds a lock on it for its life
(dblock.py). It keeps the queue (counts per autocluster and submitter, queue
dates, running counts), the fair-share accounting and the reservations of
partitionable pilots for large jobs in memory, rebuilt from the database at
start; a process-wide lock serialises every change that
touches them, and they are updated only after the change has committed.
Submits insert without that lock (a bulk submit does not stall claims on
PostgreSQL) and add their jobs to the index once committed.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from glidewms import classads
from glidewms.db import migrate
from glidewms.pool import schema
from glidewms.pool.choosing import ChoosingMixin
from glidewms.pool.cycle import CycleMixin
from glidewms.pool.dblock import DatabaseInUse, DatabaseLock
from glidewms.pool.exit import Completion, ExitMixin
from glidewms.pool.fairshare import Accounting, split_submitter
from glidewms.pool.jobs import (
    CLUSTER_PLACEHOLDER,
    HOLD_USER,
    JOB_STATUS,
    Conflict,
    Derived,
    InvalidJob,
    NewJob,
    NotFound,
    PilotGone,
    SpecCache,
    TemplateKey,
    check_edit,
    derive,
    execution_spec,
    full_ad,
    has_periodic,
    job_id,
    split_job_id,
    template_key,
)
from glidewms.pool.matchmaker import Matchmaker
from glidewms.pool.periodic import PeriodicMixin
from glidewms.pool.pilots import PilotsMixin, SlotAds
from glidewms.pool.queue_index import IdleIndex, head_key
from glidewms.pool.reports import ReportsMixin
from glidewms.pool.schema import autoclusters, counters, events, jobs, usage

__all__ = ["JOB_STATUS", "Completion", "Conflict", "DatabaseInUse", "FairShare", "InvalidJob",
           "NewJob", "NotFound", "PilotGone", "PoolStore", "execution_spec", "job_id"]

COUNTERS = ("cluster", "jobs_completed", "job_failures", "site_failures")
# action -> (new state, event); and the states each action applies to
TRANSITIONS = {"hold": ("held", "held"), "release": ("idle", "released"),
               "remove": ("removed", "removed")}
ALLOWED_FROM = {"hold": ("idle", "running"), "release": ("held",),
                "remove": ("idle", "running", "held")}


@dataclass
class FairShare:
    halflife: float = 86400.0
    user_factors: dict[str, float] | None = None
    group_factors: dict[str, float] | None = None
    default_factor: float = 1.0


class PoolStore(CycleMixin, ExitMixin, PilotsMixin, ChoosingMixin, ReportsMixin, PeriodicMixin):
    def __init__(self, engine: Engine, max_job_restarts: int = 5,
                 fair_share: FairShare | None = None, reserve_for_large_jobs: bool = True,
                 lock_wait: float = 10.0, significant: Sequence[str] = ()) -> None:
        self.engine = engine
        self.significant = tuple(significant)  # extra autocluster attributes (config)
        self.db_lock = DatabaseLock(engine, lock_wait)  # before anything writes
        self.max_job_restarts = max_job_restarts
        self.reserve_for_large_jobs = reserve_for_large_jobs
        # pilot id -> (autocluster, submitter, order): see PilotsMixin.claim
        self.reservations: dict[str, tuple[int, str, int]] = {}
        self._reservation_order = itertools.count()
        self.empty_free: dict[str, dict[str, int]] = {}  # pilot -> free when it ran nothing
        # slot shape -> (index epoch, what it can run): see _candidates
        self._choices: dict[str, tuple[int, dict[int, float], dict[str, Any]]] = {}
        self._loaded_epoch = -1
        self._pilot_shapes: dict[str, tuple[int, str, Any]] = {}  # for demand
        self._ac_ids: dict[str, int] = {}  # autocluster signature -> id
        fs = fair_share or FairShare()
        self.accounting = Accounting(fs.halflife, fs.user_factors or {},
                                     fs.group_factors or {}, fs.default_factor)
        self.matchmaker = Matchmaker()
        self.slot_ads = SlotAds(self.matchmaker)  # per pilot: see choosing._candidates
        self._turn_taken: set[tuple[int, int]] = set()  # see ChoosingMixin._head
        self._specs = SpecCache()  # what claims read from ads, per cluster (cycle.py)
        self.index = IdleIndex()
        self._lock = threading.Lock()
        self._ac_lock = threading.Lock()
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
                          jobs.c.q_date, sa.func.count())
                .where(jobs.c.state == "idle")
                .group_by(jobs.c.autocluster_id, jobs.c.submitter, jobs.c.owner, jobs.c.q_date)
            ):
                self.index.add(r[0], r[1], r[3], r[4])
                self.accounting.ensure(r[1], r[2], split_submitter(r[1], r[2]), now)
            for r in conn.execute(
                sa.select(jobs.c.autocluster_id, sa.func.count())
                .where(jobs.c.state == "running").group_by(jobs.c.autocluster_id)
            ):
                self.index.started(r[0], r[1])
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
        cuts: dict[tuple[str, str], bool] = {}
        keys = [template_key(job.ad_text, cuts) for job in new_jobs]
        checked: set[TemplateKey] = set()
        for proc_id, (job, key) in enumerate(zip(new_jobs, keys, strict=True)):
            if key in checked:
                continue
            try:
                job.realise(0)
            except classads.ClassAdError as exc:
                raise InvalidJob(proc_id, str(exc)) from None
            checked.add(key)
        with self.engine.begin() as conn:
            cluster_id = self._next_cluster(conn)
        ac_ids: dict[str, int] = {}
        templates: dict[TemplateKey, tuple[str, str, Derived | None, Any, bool]] = {}
        rows = []
        for proc_id, (job, key) in enumerate(zip(new_jobs, keys, strict=True)):
            template = templates.get(key)
            if template is None:  # once per kind of job: bulk clusters share one
                ad, _, _ = job.realise(cluster_id)
                ad["ClusterId"], ad["ProcId"], ad["Owner"] = cluster_id, 0, owner
                ad["QDate"] = int(now)
                d = derive(ad, owner, self.significant)
                per_proc = "procid" in d.signature_ad.lower()
                before, after = _split_text(ad, "ProcId")
                cmd = ad.eval("Cmd") if "Cmd" in ad else None
                template = templates[key] = (
                    before, after, None if per_proc else d,
                    cmd if isinstance(cmd, str) else None, has_periodic(ad))
            before, after, derived, cmd, periodic = template
            text = f"{before}{proc_id}{after}"
            d = derived or derive(classads.parse_ad(text), owner, self.significant)
            if d.signature not in ac_ids:
                ac_ids[d.signature] = self._autocluster_id(d, now)
            args = [a.replace(CLUSTER_PLACEHOLDER, str(cluster_id)) for a in job.args]
            env = {k: v.replace(CLUSTER_PLACEHOLDER, str(cluster_id))
                   for k, v in job.env.items()}
            rows.append({
                "cluster_id": cluster_id, "proc_id": proc_id, "owner": owner,
                "submitter": d.submitter, "state": "idle", "ad": text,
                "autocluster_id": ac_ids[d.signature], "prio": d.prio, "cpus": d.cpus,
                "q_date": now, "sandbox": {"files": job.sandbox, "args": args, "env": env,
                                           "cmd": cmd},
                "num_starts": 0, "num_restarts": 0, "updated_at": now, "periodic": periodic})
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
                self.index.add(ac, submitter, now, n, best)
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
        concurrent submits of the same kind of job never collide. Autoclusters
        are never deleted, so a known signature is answered from memory."""
        known = self._ac_ids.get(d.signature)
        if known is not None:
            return known
        with self._ac_lock:
            ac = self._find_or_create_autocluster(d, now)
            self._ac_ids[d.signature] = ac
            return ac

    def _find_or_create_autocluster(self, d: Derived, now: float) -> int:
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
                continue  # created meanwhile (by a submit that failed later): read it back
        raise RuntimeError(f"cannot create autocluster {d.signature}")

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
        """hold, release or remove the given jobs (a user's request); returns
        the ids that changed."""
        return self.apply_actions([(row, action, reason, HOLD_USER) for row in rows], by)

    def apply_actions(self, planned: Sequence[tuple[Any, str, str, int]], by: str) -> list[str]:
        """(job row, action, reason, hold code) each, in one transaction: the
        one path for user requests, periodic expressions and the pool's own
        policy, so every hold has a reason and a code and every change an event."""
        now, changed, moved = time.time(), [], []
        with self._lock:
            with self.engine.begin() as conn:
                for given, action, reason, code in planned:
                    new_state, kind = TRANSITIONS[action]
                    row = self._current(conn, given.cluster_id, given.proc_id)
                    if row is None or row.state not in ALLOWED_FROM[action]:
                        continue
                    values: dict[str, Any] = {"state": new_state, "updated_at": now,
                                              "claim_id": None, "lease_expires": None}
                    detail: dict[str, Any] = {"by": by, "reason": reason}
                    if action == "hold":
                        values["hold_reason"] = reason or f"held by {by}"
                        values["hold_code"] = detail["code"] = code
                    elif action == "release":
                        values["hold_reason"] = values["hold_code"] = None
                    else:
                        values["completion_date"] = now
                    result = conn.execute(jobs.update().where(
                        jobs.c.cluster_id == row.cluster_id, jobs.c.proc_id == row.proc_id,
                        jobs.c.state == row.state).values(**values))
                    if result.rowcount:
                        changed.append(job_id(row.cluster_id, row.proc_id))
                        moved.append((row, new_state))
                        self._event(conn, row.cluster_id, row.proc_id, now, kind, detail)
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
                    planned.append((jid, row, ad, old, derive(ad, row.owner, self.significant)))
            acs = {d.signature: self._autocluster_id(d, now) for *_, d in planned}
            with self.engine.begin() as conn:
                for jid, row, ad, old, d in planned:
                    ac = acs[d.signature]
                    sandbox = dict(row.sandbox or {})
                    if attribute.lower() == "cmd":
                        cmd = ad.eval("Cmd")
                        sandbox["cmd"] = cmd if isinstance(cmd, str) else None
                    result = conn.execute(jobs.update().where(
                        jobs.c.cluster_id == row.cluster_id, jobs.c.proc_id == row.proc_id,
                        jobs.c.state == row.state).values(
                        ad=classads.to_text(ad), autocluster_id=ac, prio=d.prio, cpus=d.cpus,
                        submitter=d.submitter, updated_at=now, periodic=has_periodic(ad),
                        sandbox=sandbox))
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
        self.index.add(ac, submitter, q_date, 1, head_key(prio, q_date, cluster_id, proc_id))

    def _left(self, row: Any, now: float) -> None:
        """Index and accounting for a job that left the state `row` shows."""
        if row.state == "idle":
            self.index.remove(row.autocluster_id, row.submitter,
                              head_key(row.prio, row.q_date, row.cluster_id, row.proc_id))
        elif row.state == "running":
            self.index.stopped(row.autocluster_id)
            self.accounting.change(row.submitter, row.owner,
                                   split_submitter(row.submitter, row.owner), -row.cpus, now)

    @staticmethod
    def _event(conn: Connection, cluster_id: int, proc_id: int, now: float, kind: str,
               detail: dict[str, Any] | None = None) -> None:
        conn.execute(events.insert().values(cluster_id=cluster_id, proc_id=proc_id,
                                            time=now, type=kind, detail=detail or {}))


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
