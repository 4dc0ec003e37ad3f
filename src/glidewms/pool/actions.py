"""Changes users and policies ask for: hold, release, remove, edit.

Every change takes the store lock and is a transaction of UPDATEs
conditional on the state each job was read in, moving jobs only as the job
lifecycle allows (lifecycle.py). A change over many jobs (a constraint that
matches a million) is done in batches of `batch_size` jobs, each batch its
own lock acquisition and transaction, and the jobs are read a page at a time
(Queue.pages): pilot turns, which need the same lock, are served between
batches, so a bulk action slows the pool down but never stops it. Each job
is acted on at most once (pages walk job ids forward), and a job a turn
changed meanwhile is read anew and left if the action no longer applies, as
it would have been in one transaction.

`between_batches`, when set, is called after each batch with the lock
released: an observer (tests use it to serve a turn in the middle).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from glidewms import classads
from glidewms.pool.autoclusters import Autoclusters
from glidewms.pool.jobs import (
    HOLD_USER,
    InvalidEdit,
    check_edit,
    check_edited,
    derive,
    has_periodic,
    job_id,
    stored_ad,
)
from glidewms.pool.lifecycle import JOB, JobCause, JobState
from glidewms.pool.queue import Queue
from glidewms.pool.queue_index import head_key
from glidewms.pool.schema import jobs
from glidewms.pool.shared import Shared, current_job, record_event, trim_events

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
Planned = tuple[Any, str, str, int]  # (job row, action, reason, hold code)
T = TypeVar("T")


class Actions:
    def __init__(self, shared: Shared, queue: Queue, autoclusters: Autoclusters) -> None:
        self.shared = shared
        self.queue = queue
        self.autoclusters = autoclusters
        self.between_batches: Callable[[], None] | None = None

    def act(self, action: str, rows: Sequence[Any], reason: str, by: str) -> list[str]:
        """hold, release or remove the given jobs (a user's request); returns
        the ids that changed."""
        return self.apply_actions([(row, action, reason, HOLD_USER) for row in rows], by)

    def act_where(
        self, action: str, owner: str | None, constraint: str, reason: str, by: str
    ) -> list[str]:
        """hold, release or remove the queued jobs of `owner` (None: anyone's)
        that match `constraint`, page by page."""
        changed: list[str] = []
        for page in self.queue.pages(owner, constraint):
            changed += self.apply_actions([(row, action, reason, HOLD_USER) for row in page], by)
        return changed

    def apply_actions(self, planned: Sequence[Planned], by: str) -> list[str]:
        """(job row, action, reason, hold code) each, in batches: the one path
        for user requests, periodic expressions and the pool's own policy, so
        every hold has a reason and a code and every change an event. A job
        whose state (read anew) the action cannot move is left."""
        changed: list[str] = []
        for batch in _batches(planned, self.shared.limits.batch_size):
            changed += self._apply_batch(batch, by)
            self._between()
        return changed

    def _apply_batch(self, planned: Sequence[Planned], by: str) -> list[str]:
        now, changed, moved = time.time(), [], []
        shared = self.shared
        keep = shared.limits.max_events_per_job
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
                        trim_events(conn, row.cluster_id, row.proc_id, keep)
            for row, new_state in moved:
                shared.moved(row, new_state, now)
        return changed

    def edit(
        self, rows: Sequence[Any], attribute: str, value: str, by: str
    ) -> tuple[list[str], dict[str, str]]:
        """Set one attribute of idle or held jobs; returns (changed, {id: why not})."""
        expr = check_edit(attribute, value, self.shared.limits.ads)
        changed: list[str] = []
        skipped: dict[str, str] = {}
        for batch in _batches(rows, self.shared.limits.batch_size):
            self._edit_batch(batch, attribute, expr, by, changed, skipped)
            self._between()
        return changed, skipped

    def edit_where(
        self, owner: str | None, constraint: str, attribute: str, value: str, by: str
    ) -> tuple[list[str], dict[str, str]]:
        """`edit` the queued jobs of `owner` (None: anyone's) that match `constraint`."""
        expr = check_edit(attribute, value, self.shared.limits.ads)
        changed: list[str] = []
        skipped: dict[str, str] = {}
        for page in self.queue.pages(owner, constraint):
            self._edit_batch(page, attribute, expr, by, changed, skipped)
            self._between()
        return changed, skipped

    def _edit_batch(
        self,
        rows: Sequence[Any],
        attribute: str,
        expr: Any,
        by: str,
        changed: list[str],
        skipped: dict[str, str],
    ) -> None:
        now, moved = time.time(), []
        shared = self.shared
        limits = shared.limits
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
                    ad = stored_ad(row.ad)
                    old = str(ad.lookup(attribute)) if attribute in ad else None
                    ad[attribute] = expr
                    try:
                        check_edited(ad, attribute, limits.ads)
                    except InvalidEdit as exc:
                        skipped[jid] = str(exc)
                        continue
                    planned.append((jid, row, ad, old, derive(ad, row.owner, shared.significant)))
            acs = {d.signature: self.autoclusters.id_for(d, now) for *_, d in planned}
            with shared.engine.begin() as conn:
                for jid, row, ad, old, d in planned:
                    ac = acs[d.signature]
                    sandbox = dict(row.sandbox or {})
                    if attribute.lower() == "cmd":
                        cmd = classads.eval_attr(ad, "Cmd")
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
                    trim_events(conn, row.cluster_id, row.proc_id, limits.max_events_per_job)
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

    def _between(self) -> None:
        if self.between_batches is not None:
            self.between_batches()


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
