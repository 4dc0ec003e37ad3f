"""The queue as users see it: submit, list, look at (actions.py changes jobs).

Submits insert without the store lock (a bulk submit does not stall claims on
PostgreSQL) and add their jobs to the in-memory index once committed.
Listings and the pages bulk actions walk read without it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from glidewms import classads
from glidewms.pool import listing
from glidewms.pool.access import grant
from glidewms.pool.autoclusters import Autoclusters
from glidewms.pool.checks import Refused
from glidewms.pool.fairshare import split_submitter
from glidewms.pool.jobs import (
    CLUSTER_PLACEHOLDER,
    InvalidJob,
    NewJob,
    NotFound,
    TemplateKey,
    derive,
    has_periodic,
    job_id,
    split_job_id,
    stored_ad,
    template_key,
)
from glidewms.pool.lifecycle import JOB, TERMINAL_JOBS, JobCause
from glidewms.pool.queue_index import head_key
from glidewms.pool.schema import counters, events, jobs
from glidewms.pool.shared import Shared, current_job

QUEUED = JOB.target(JobCause.SUBMIT)


class Queue:
    def __init__(self, shared: Shared, autoclusters: Autoclusters) -> None:
        self.shared = shared
        self.autoclusters = autoclusters

    def submit(self, owner: str, new_jobs: Sequence[NewJob]) -> tuple[int, list[str]]:
        """Queue one cluster. All or nothing: a bad job refuses the whole cluster.

        Every kind of job is checked before anything is written (`check`).
        The cluster id is taken in its own transaction (`new_cluster_id`: an
        id lost to a crash leaves a gap, never a duplicate), autoclusters are
        resolved before the jobs are inserted, and the jobs and their events
        go in one transaction, written `batch_size` rows at a time so a large
        cluster never has all its rows in memory at once.
        """
        now = time.time()
        keys = self.check(new_jobs)
        cluster_id = self.new_cluster_id()
        prepared = self.prepare(owner, cluster_id, 0, new_jobs, keys, now)
        with self.shared.engine.begin() as conn:
            added = self.insert(conn, owner, cluster_id, 0, new_jobs, keys, now, prepared)
        with self.shared.lock:
            self.index_added(owner, added, now)
        return cluster_id, [job_id(cluster_id, p) for p in range(len(new_jobs))]

    def check(self, new_jobs: Sequence[NewJob], first: int = 0) -> list[TemplateKey]:
        """Each job within the store's limits, nothing the pool owns, numbers
        in range (InvalidJob names the job, counted from `first`, and the
        attribute); the jobs' template keys. Jobs of one kind (their ads
        differ only in ProcId) are parsed once."""
        limits = self.shared.limits
        cuts: dict[tuple[str, str], bool] = {}
        keys = [template_key(job.ad_text, cuts, limits.ads) for job in new_jobs]
        checked: set[TemplateKey] = set()
        for index, (job, key) in enumerate(zip(new_jobs, keys, strict=True)):
            try:
                if key in checked:  # the ad is the same kind's: its arguments may not be
                    job.check_size(limits.ads)
                else:
                    job.realise(0, limits.ads)
                    checked.add(key)
            except (classads.ClassAdError, Refused) as exc:
                raise InvalidJob(first + index, str(exc)) from None
        return keys

    def new_cluster_id(self) -> int:
        with self.shared.engine.begin() as conn:
            return int(
                conn.execute(
                    counters.update()
                    .where(counters.c.name == "cluster")
                    .values(value=counters.c.value + 1)
                    .returning(counters.c.value)
                ).scalar_one()
            )

    def prepare(
        self,
        owner: str,
        cluster_id: int,
        first: int,
        new_jobs: Sequence[NewJob],
        keys: Sequence[TemplateKey],
        now: float,
    ) -> Prepared:
        """The templates and columns of checked jobs (ProcIds from `first`
        on). Outside any transaction: new autoclusters are written in their own."""
        templates: dict[TemplateKey, Template] = {}
        columns = self._columns(owner, cluster_id, first, new_jobs, keys, templates, now)
        return templates, columns

    def insert(
        self,
        conn: Any,
        owner: str,
        cluster_id: int,
        first: int,
        new_jobs: Sequence[NewJob],
        keys: Sequence[TemplateKey],
        now: float,
        prepared: Prepared,
    ) -> Added:
        """Write prepared jobs (ProcIds from `first` on) and their `submitted`
        events in `conn`'s transaction, `batch_size` rows at a time. Returns
        what `index_added` adds to the in-memory index once committed."""
        limits = self.shared.limits
        templates, columns = prepared
        added: Added = {}
        for start in range(0, len(new_jobs), limits.batch_size):
            stop = min(len(new_jobs), start + limits.batch_size)
            rows = [
                _row(owner, cluster_id, first + i, new_jobs[i], templates[keys[i]], columns[i], now)
                for i in range(start, stop)
            ]
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
            grant(
                conn,
                {
                    (f["sha256"], owner, cluster_id)
                    for job in new_jobs[start:stop]
                    for f in job.sandbox
                },
            )
            for r in rows:
                key = head_key(r["prio"], now, cluster_id, r["proc_id"])
                slot = added.setdefault((r["autocluster_id"], r["submitter"]), [0, key])
                slot[0] += 1
                slot[1] = min(slot[1], key)
        return added

    def index_added(self, owner: str, added: Added, now: float) -> None:
        """Committed idle jobs into the in-memory index; under the store lock."""
        shared = self.shared
        for (ac, submitter), (n, best) in added.items():
            shared.index.add(ac, submitter, now, n, best)
            shared.accounting.ensure(submitter, owner, split_submitter(submitter, owner), now)

    def _columns(
        self,
        owner: str,
        cluster_id: int,
        first: int,
        new_jobs: Sequence[NewJob],
        keys: Sequence[TemplateKey],
        templates: dict[TemplateKey, Template],
        now: float,
    ) -> list[Columns]:
        """What each job's row holds beside its ad (autocluster, priority,
        cores, submitter), with its kind's template in `templates`: one
        shared tuple per kind of job, unless its autocluster depends on ProcId."""
        significant = self.shared.significant
        ac_ids: dict[str, int] = {}
        out: list[Columns] = []
        shared_columns: dict[TemplateKey, Columns] = {}
        for proc_id, (job, key) in enumerate(zip(new_jobs, keys, strict=True), start=first):
            template = templates.get(key)
            if template is None:  # once per kind of job: bulk clusters share one
                ad, _, _ = job.realise(cluster_id, self.shared.limits.ads)
                ad["ClusterId"], ad["ProcId"], ad["Owner"] = cluster_id, 0, owner
                ad["QDate"] = int(now)
                d = derive(ad, owner, significant)
                per_proc = "procid" in d.signature_ad.lower()
                before, after = _split_text(ad, "ProcId")
                cmd = classads.eval_attr(ad, "Cmd")
                template = templates[key] = Template(
                    before, after, cmd if isinstance(cmd, str) else None, has_periodic(ad)
                )
                if not per_proc:
                    if d.signature not in ac_ids:
                        ac_ids[d.signature] = self.autoclusters.id_for(d, now)
                    shared_columns[key] = (ac_ids[d.signature], d.prio, d.cpus, d.submitter)
            found = shared_columns.get(key)
            if found is None:
                text = f"{template.before}{proc_id}{template.after}"
                d = derive(stored_ad(text), owner, significant)
                if d.signature not in ac_ids:
                    ac_ids[d.signature] = self.autoclusters.id_for(d, now)
                found = (ac_ids[d.signature], d.prio, d.cpus, d.submitter)
            out.append(found)
        return out

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
        viewer: str | None = None,
        owner: str | None = None,
        after: tuple[int, int] | None = None,
        limit: int | None = None,
    ) -> list[tuple[Any, str]]:
        """(row, full ad text) of matching jobs; `history` selects finished ones.

        No ad is parsed without a constraint; with one, each distinct ad (the
        jobs of a cluster differ only in ProcId) is parsed once. A `viewer`
        (None: an admin) has the constraint evaluated on other users' jobs
        without their private attributes (listing.PRIVATE): a constraint
        must not read what the answer would not show. `owner` keeps that
        user's jobs; `after` and `limit` page in job-id order (at most
        `limit` matches after the job `after`), read a batch at a time.
        """
        expr = self.constraint(constraint)
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
        if owner is not None:
            query = query.where(sa.func.coalesce(jobs.c.owner, "") == owner)
        query = query.order_by(jobs.c.cluster_id, jobs.c.proc_id)
        ads = None if expr is None else listing.Matcher(expr, viewer)
        if limit is None and after is None:
            with self.shared.engine.connect() as conn:
                rows = conn.execute(query).all()
            return [(row, listing.ad_text(row)) for row in rows if ads is None or ads.matches(row)]
        found: list[tuple[Any, str]] = []
        step = self.shared.limits.batch_size
        while limit is None or len(found) < limit:
            page = query
            if after is not None:
                page = page.where(sa.tuple_(jobs.c.cluster_id, jobs.c.proc_id) > after)
            with self.shared.engine.connect() as conn:
                rows = conn.execute(page.limit(step)).all()
            for row in rows:
                if ads is None or ads.matches(row):
                    found.append((row, listing.ad_text(row)))
                    if limit is not None and len(found) >= limit:
                        break
            if len(rows) < step:
                break
            after = (rows[-1].cluster_id, rows[-1].proc_id)
        return found

    def constraint(self, text: str | None) -> Any:
        """A user's constraint, parsed within the store's limits (None: all jobs)."""
        if not text:
            return None
        return classads.parse_expr(text, "constraint", self.shared.limits.ads)

    def pages(self, owner: str | None, constraint: str | None) -> Iterator[list[Any]]:
        """The queued (not finished) jobs of `owner` (None: everyone's) that
        match `constraint`, in pages of at most `batch_size` rows in job-id
        order. Each page is read in its own short transaction, after the
        caller acted on the one before: a bulk action over a million jobs
        holds neither memory nor the store for more than a page."""
        expr = self.constraint(constraint)
        ads = listing.Matcher(expr, owner)
        after = (-1, -1)
        query = sa.select(jobs).where(jobs.c.state.notin_(TERMINAL_JOBS))
        if owner is not None:
            # COALESCE (owner is NOT NULL: same meaning) keeps SQLite on the
            # primary key: by the owner index it would sort all of the owner's
            # jobs for every page
            query = query.where(sa.func.coalesce(jobs.c.owner, "") == owner)
        query = query.order_by(jobs.c.cluster_id, jobs.c.proc_id).limit(
            self.shared.limits.batch_size
        )
        while True:
            with self.shared.engine.connect() as conn:
                rows = conn.execute(
                    query.where(sa.tuple_(jobs.c.cluster_id, jobs.c.proc_id) > after)
                ).all()
            if not rows:
                return
            after = (rows[-1].cluster_id, rows[-1].proc_id)
            yield [row for row in rows if expr is None or ads.matches(row)]


@dataclass(frozen=True)
class Template:
    """A kind of job of a submitted cluster: its ad text cut where ProcId's
    value goes, and what its rows keep beside the ad."""

    before: str
    after: str
    cmd: str | None
    periodic: bool


Columns = tuple[int, int, int, str]  # autocluster, priority, cores, submitter
Added = dict[tuple[int, str], list[Any]]  # (autocluster, submitter) -> [jobs, best head key]
Prepared = tuple[dict[TemplateKey, Template], list[Columns]]


def _row(
    owner: str,
    cluster_id: int,
    proc_id: int,
    job: NewJob,
    template: Template,
    columns: Columns,
    now: float,
) -> dict[str, Any]:
    """One job's row, as submit inserts it."""
    ac, prio, cpus, submitter = columns
    cluster = str(cluster_id)
    return {
        "cluster_id": cluster_id,
        "proc_id": proc_id,
        "owner": owner,
        "submitter": submitter,
        "state": QUEUED,
        "ad": f"{template.before}{proc_id}{template.after}",
        "autocluster_id": ac,
        "prio": prio,
        "cpus": cpus,
        "q_date": now,
        "sandbox": {
            "files": job.sandbox,
            "args": [a.replace(CLUSTER_PLACEHOLDER, cluster) for a in job.args],
            "env": {k: v.replace(CLUSTER_PLACEHOLDER, cluster) for k, v in job.env.items()},
            "cmd": template.cmd,
        },
        "num_starts": 0,
        "num_restarts": 0,
        "updated_at": now,
        "periodic": template.periodic,
    }


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
            probe = stored_ad(f"{before}12345{after}")
            if probe.get(name) == 12345 and len(probe) == len(ad):  # cut at the right place
                return before, after
    raise ValueError(f"cannot place {name} in {text!r}")
