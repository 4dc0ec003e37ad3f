"""The queue as users see it: submit, list, look at, edit, hold, release, remove.

Submits insert without the store lock (a bulk submit does not stall claims on
PostgreSQL) and add their jobs to the in-memory index once committed. Every
other change here takes the lock, is one transaction of UPDATEs conditional
on the state each job was read in, and moves jobs only as the job lifecycle
allows (lifecycle.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from glidewms import classads
from glidewms.pool import listing
from glidewms.pool.autoclusters import Autoclusters
from glidewms.pool.fairshare import split_submitter
from glidewms.pool.jobs import (
    CLUSTER_PLACEHOLDER,
    HOLD_USER,
    Derived,
    InvalidJob,
    NewJob,
    NotFound,
    TemplateKey,
    check_edit,
    derive,
    has_periodic,
    job_id,
    split_job_id,
    template_key,
)
from glidewms.pool.lifecycle import JOB, TERMINAL_JOBS, JobCause, JobState
from glidewms.pool.queue_index import head_key
from glidewms.pool.schema import counters, events, jobs
from glidewms.pool.shared import Shared, current_job, record_event

# hold, release, remove: the state each leads to, and the event it writes
ACTIONS = {
    cause: (JOB.target(cause), event)
    for cause, event in (
        (JobCause.HOLD, "held"),
        (JobCause.RELEASE, "released"),
        (JobCause.REMOVE, "removed"),
    )
}
EDITABLE = JOB.sources(JobCause.EDIT)
QUEUED = JOB.target(JobCause.SUBMIT)
Planned = tuple[Any, str, str, int]  # (job row, action, reason, hold code)


class Queue:
    def __init__(self, shared: Shared, autoclusters: Autoclusters) -> None:
        self.shared = shared
        self.autoclusters = autoclusters

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
        engine, significant = self.shared.engine, self.shared.significant
        with engine.begin() as conn:
            cluster_id = conn.execute(
                counters.update()
                .where(counters.c.name == "cluster")
                .values(value=counters.c.value + 1)
                .returning(counters.c.value)
            ).scalar_one()
        ac_ids: dict[str, int] = {}
        templates: dict[TemplateKey, tuple[str, str, Derived | None, Any, bool]] = {}
        rows = []
        for proc_id, (job, key) in enumerate(zip(new_jobs, keys, strict=True)):
            template = templates.get(key)
            if template is None:  # once per kind of job: bulk clusters share one
                ad, _, _ = job.realise(cluster_id)
                ad["ClusterId"], ad["ProcId"], ad["Owner"] = cluster_id, 0, owner
                ad["QDate"] = int(now)
                d = derive(ad, owner, significant)
                per_proc = "procid" in d.signature_ad.lower()
                before, after = _split_text(ad, "ProcId")
                cmd = ad.eval("Cmd") if "Cmd" in ad else None
                template = templates[key] = (
                    before,
                    after,
                    None if per_proc else d,
                    cmd if isinstance(cmd, str) else None,
                    has_periodic(ad),
                )
            before, after, derived, cmd, periodic = template
            text = f"{before}{proc_id}{after}"
            d = derived or derive(classads.parse_ad(text), owner, significant)
            if d.signature not in ac_ids:
                ac_ids[d.signature] = self.autoclusters.id_for(d, now)
            args = [a.replace(CLUSTER_PLACEHOLDER, str(cluster_id)) for a in job.args]
            env = {k: v.replace(CLUSTER_PLACEHOLDER, str(cluster_id)) for k, v in job.env.items()}
            rows.append(
                {
                    "cluster_id": cluster_id,
                    "proc_id": proc_id,
                    "owner": owner,
                    "submitter": d.submitter,
                    "state": QUEUED,
                    "ad": text,
                    "autocluster_id": ac_ids[d.signature],
                    "prio": d.prio,
                    "cpus": d.cpus,
                    "q_date": now,
                    "sandbox": {"files": job.sandbox, "args": args, "env": env, "cmd": cmd},
                    "num_starts": 0,
                    "num_restarts": 0,
                    "updated_at": now,
                    "periodic": periodic,
                }
            )
        with engine.begin() as conn:
            conn.execute(jobs.insert(), rows)
            conn.execute(
                events.insert(),
                [
                    {
                        "cluster_id": cluster_id,
                        "proc_id": r["proc_id"],
                        "time": now,
                        "type": "submitted",
                        "detail": {"owner": owner},
                    }
                    for r in rows
                ],
            )
        added: dict[tuple[int, str], list[Any]] = {}
        for r in rows:
            key = head_key(r["prio"], now, cluster_id, r["proc_id"])
            slot = added.setdefault((r["autocluster_id"], r["submitter"]), [0, key])
            slot[0] += 1
            slot[1] = min(slot[1], key)
        shared = self.shared
        with shared.lock:
            for (ac, submitter), (n, best) in added.items():
                shared.index.add(ac, submitter, now, n, best)
                shared.accounting.ensure(submitter, owner, split_submitter(submitter, owner), now)
        return cluster_id, [job_id(cluster_id, r["proc_id"]) for r in rows]

    def get_job(self, jid: str) -> Any:
        cluster_id, proc_id = split_job_id(jid)
        with self.shared.engine.connect() as conn:
            row = current_job(conn, cluster_id, proc_id)
        if row is None:
            raise NotFound(f"no job {jid}")
        return row

    def job_events(self, jid: str) -> list[dict[str, Any]]:
        cluster_id, proc_id = split_job_id(jid)
        with self.shared.engine.connect() as conn:
            rows = conn.execute(
                sa.select(events)
                .where(events.c.cluster_id == cluster_id, events.c.proc_id == proc_id)
                .order_by(events.c.id)
            ).all()
        return [{"time": r.time, "type": r.type, "detail": r.detail or {}} for r in rows]

    def list_jobs(
        self,
        constraint: str | None = None,
        history: bool = False,
        job_ids: Iterable[str] | None = None,
    ) -> list[tuple[Any, str]]:
        """(row, full ad text) of matching jobs; `history` selects finished ones.

        No ad is parsed without a constraint; with one, each distinct ad (the
        jobs of a cluster differ only in ProcId) is parsed once.
        """
        expr = classads.parse_expr(constraint) if constraint else None
        query = sa.select(jobs)
        if job_ids is not None:
            pairs = [split_job_id(j) for j in job_ids]
            if not pairs:
                return []
            query = query.where(sa.tuple_(jobs.c.cluster_id, jobs.c.proc_id).in_(pairs))
        elif history:
            query = query.where(jobs.c.state.in_(TERMINAL_JOBS))
        else:
            query = query.where(jobs.c.state.notin_(TERMINAL_JOBS))
        query = query.order_by(jobs.c.cluster_id, jobs.c.proc_id)
        with self.shared.engine.connect() as conn:
            rows = conn.execute(query).all()
        if expr is None:
            return [(row, listing.ad_text(row)) for row in rows]
        ads = listing.AdCache()
        return [
            (row, listing.ad_text(row))
            for row in rows
            if classads.constraint_matches(expr, ads.full_ad(row))
        ]

    def act(self, action: str, rows: Sequence[Any], reason: str, by: str) -> list[str]:
        """hold, release or remove the given jobs (a user's request); returns
        the ids that changed."""
        return self.apply_actions([(row, action, reason, HOLD_USER) for row in rows], by)

    def apply_actions(self, planned: Sequence[Planned], by: str) -> list[str]:
        """(job row, action, reason, hold code) each, in one transaction: the
        one path for user requests, periodic expressions and the pool's own
        policy, so every hold has a reason and a code and every change an
        event. A job whose state (read anew) the action cannot move is left."""
        now, changed, moved = time.time(), [], []
        shared = self.shared
        with shared.lock:
            with shared.engine.begin() as conn:
                for given, action, reason, code in planned:
                    new_state, kind = ACTIONS[action]
                    row = current_job(conn, given.cluster_id, given.proc_id)
                    if row is None or not JOB.allows(row.state, new_state, action):
                        continue
                    values: dict[str, Any] = {
                        "state": new_state,
                        "updated_at": now,
                        "claim_id": None,
                        "lease_expires": None,
                    }
                    detail: dict[str, Any] = {"by": by, "reason": reason}
                    if action == JobCause.HOLD:
                        values["hold_reason"] = reason or f"held by {by}"
                        values["hold_code"] = detail["code"] = code
                    elif action == JobCause.RELEASE:
                        values["hold_reason"] = values["hold_code"] = None
                    else:
                        values["completion_date"] = now
                    result = conn.execute(
                        jobs.update()
                        .where(
                            jobs.c.cluster_id == row.cluster_id,
                            jobs.c.proc_id == row.proc_id,
                            jobs.c.state == row.state,
                        )
                        .values(**values)
                    )
                    if result.rowcount:
                        changed.append(job_id(row.cluster_id, row.proc_id))
                        moved.append((row, new_state))
                        record_event(conn, row.cluster_id, row.proc_id, now, kind, detail)
            for row, new_state in moved:
                shared.moved(row, new_state, now)
        return changed

    def edit(
        self, rows: Sequence[Any], attribute: str, value: str, by: str
    ) -> tuple[list[str], dict[str, str]]:
        """Set one attribute of idle or held jobs; returns (changed, {id: why not})."""
        expr = check_edit(attribute, value)
        now, changed, skipped, moved = time.time(), [], {}, []
        shared = self.shared
        with shared.lock:
            # first the new ads and their autoclusters (each its own short
            # transaction), then every job in one; the lock keeps ads unchanged
            planned = []
            with shared.engine.connect() as conn:
                for given in rows:
                    jid = job_id(given.cluster_id, given.proc_id)
                    row = current_job(conn, given.cluster_id, given.proc_id)
                    if row is None or row.state not in EDITABLE:
                        skipped[jid] = (
                            f"job is {row.state if row else 'gone'}: only idle "
                            "or held jobs can be edited"
                        )
                        continue
                    ad = classads.parse_ad(row.ad)
                    old = str(ad.lookup(attribute)) if attribute in ad else None
                    ad[attribute] = expr
                    planned.append((jid, row, ad, old, derive(ad, row.owner, shared.significant)))
            acs = {d.signature: self.autoclusters.id_for(d, now) for *_, d in planned}
            with shared.engine.begin() as conn:
                for jid, row, ad, old, d in planned:
                    ac = acs[d.signature]
                    sandbox = dict(row.sandbox or {})
                    if attribute.lower() == "cmd":
                        cmd = ad.eval("Cmd")
                        sandbox["cmd"] = cmd if isinstance(cmd, str) else None
                    result = conn.execute(
                        jobs.update()
                        .where(
                            jobs.c.cluster_id == row.cluster_id,
                            jobs.c.proc_id == row.proc_id,
                            jobs.c.state == row.state,
                        )
                        .values(
                            ad=classads.to_text(ad),
                            autocluster_id=ac,
                            prio=d.prio,
                            cpus=d.cpus,
                            submitter=d.submitter,
                            updated_at=now,
                            periodic=has_periodic(ad),
                            sandbox=sandbox,
                        )
                    )
                    if not result.rowcount:
                        skipped[jid] = "job changed meanwhile"
                        continue
                    changed.append(jid)
                    moved.append((row, ac, d))
                    record_event(
                        conn,
                        row.cluster_id,
                        row.proc_id,
                        now,
                        "edited",
                        {"by": by, "attribute": attribute, "old": old, "new": str(expr)},
                    )
            for row, ac, d in moved:
                if row.state == JobState.IDLE:  # it may have moved to another autocluster
                    shared.index.remove(
                        row.autocluster_id,
                        row.submitter,
                        head_key(row.prio, row.q_date, row.cluster_id, row.proc_id),
                    )
                    shared.became_idle(
                        ac, d.submitter, d.prio, row.q_date, row.cluster_id, row.proc_id
                    )
        return changed, skipped


def _split_text(ad: Any, name: str) -> tuple[str, str]:
    """The one-line text of `ad` cut where the value of `name` goes, so that a
    cluster of jobs differing only there is written without a parse each."""
    text = classads.to_text(ad)
    marker = f"{name} = {ad.lookup(name)}"
    for lead, tail in (("; ", ";"), ("; ", " ]"), ("[ ", ";"), ("[ ", " ]")):
        at = text.find(f"{lead}{marker}{tail}")
        if at >= 0:
            start = at + len(lead) + len(name) + 3
            before, after = text[:start], text[start + len(str(ad.lookup(name))) :]
            probe = classads.parse_ad(f"{before}12345{after}")
            if probe.get(name) == 12345 and len(probe) == len(ad):  # cut at the right place
                return before, after
    raise ValueError(f"cannot place {name} in {text!r}")
