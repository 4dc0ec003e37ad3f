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
released: an observer (tests use it to serve a turn in the middle). Then
the lock is left free for a quarter of the batch's time, so the turns that
queued behind it are served before the next batch takes it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

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
from glidewms.pool.schema import events, jobs
from glidewms.pool.shared import Shared, trim_many

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
BATCH_YIELD = 0.25  # after a batch, the store lock is left free this share of its time
BATCH_PAUSE_MAX = 0.05  # seconds, at most
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
            started = time.monotonic()
            changed += self._apply_batch(batch, by)
            self._between(started)
        return changed

    def _apply_batch(self, planned: Sequence[Planned], by: str) -> list[str]:
        """One batch, one transaction: the jobs read anew (one query per
        cluster), then one executemany UPDATE and one events INSERT."""
        now, changed, moved = time.time(), [], []
        shared = self.shared
        with shared.lock:
            with shared.engine.begin() as conn:
                current = current_rows(conn, [(g.cluster_id, g.proc_id) for g, *_ in planned])
                params, new_events = [], []
                for given, action, reason, code in planned:
                    new_state, kind = ACTIONS[JobCause(action)]
                    row = current.pop((given.cluster_id, given.proc_id), None)
                    if row is None or not JOB.allows(row.state, new_state, action):
                        continue
                    detail: dict[str, Any] = {"by": by, "reason": reason}
                    hold_reason, hold_code, done = (
                        row.hold_reason,
                        row.hold_code,
                        row.completion_date,
                    )
                    if action == JobCause.HOLD:
                        hold_reason, hold_code = reason or f"held by {by}", code
                        detail["code"] = code
                    elif action == JobCause.RELEASE:
                        hold_reason = hold_code = None
                    else:
                        done = now
                    params.append(
                        {
                            "b_cluster": row.cluster_id,
                            "b_proc": row.proc_id,
                            "b_was": row.state,
                            "b_state": new_state,
                            "b_now": now,
                            "b_reason": hold_reason,
                            "b_code": hold_code,
                            "b_done": done,
                        }
                    )
                    new_events.append(_event(row, now, kind, detail))
                    changed.append(job_id(row.cluster_id, row.proc_id))
                    moved.append((row, new_state))
                if params:
                    _execute_all(conn, _ACT, params)
                    conn.execute(events.insert(), new_events)
                    trim_many(
                        conn, [(r.cluster_id, r.proc_id) for r, _ in moved], limits_keep(shared)
                    )
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
            started = time.monotonic()
            self._edit_batch(batch, attribute, expr, by, changed, skipped)
            self._between(started)
        return changed, skipped

    def edit_where(
        self, owner: str | None, constraint: str, attribute: str, value: str, by: str
    ) -> tuple[list[str], dict[str, str]]:
        """`edit` the queued jobs of `owner` (None: anyone's) that match `constraint`."""
        expr = check_edit(attribute, value, self.shared.limits.ads)
        changed: list[str] = []
        skipped: dict[str, str] = {}
        for page in self.queue.pages(owner, constraint):
            started = time.monotonic()
            self._edit_batch(page, attribute, expr, by, changed, skipped)
            self._between(started)
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
                current = current_rows(conn, [(g.cluster_id, g.proc_id) for g in rows])
                for given in rows:
                    jid = job_id(given.cluster_id, given.proc_id)
                    row = current.get((given.cluster_id, given.proc_id))
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
            params, new_events = [], []
            for jid, row, ad, old, d in planned:
                sandbox = dict(row.sandbox or {})
                if attribute.lower() == "cmd":
                    cmd = classads.eval_attr(ad, "Cmd")
                    sandbox["cmd"] = cmd if isinstance(cmd, str) else None
                params.append(
                    {
                        "b_cluster": row.cluster_id,
                        "b_proc": row.proc_id,
                        "b_was": row.state,
                        "b_ad": classads.to_text(ad),
                        "b_ac": acs[d.signature],
                        "b_prio": d.prio,
                        "b_cpus": d.cpus,
                        "b_submitter": d.submitter,
                        "b_now": now,
                        "b_periodic": has_periodic(ad),
                        "b_sandbox": sandbox,
                    }
                )
                detail = {"by": by, "attribute": attribute, "old": old, "new": str(expr)}
                new_events.append(_event(row, now, "edited", detail))
                changed.append(jid)
                moved.append((row, acs[d.signature], d))
            if params:
                with shared.engine.begin() as conn:
                    _execute_all(conn, _EDIT, params)
                    conn.execute(events.insert(), new_events)
                    trim_many(
                        conn, [(r.cluster_id, r.proc_id) for r, _, _ in moved], limits_keep(shared)
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

    def _between(self, started: float) -> None:
        if self.between_batches is not None:
            self.between_batches()
        # The store lock is a plain Lock, not fair: taken again at once, the
        # next batch would often win it over the pilot turns queued behind
        # this one (turn p99 ~1 s during a 200k-job hold, bench/bulk_turns.py).
        # Leave it free for a share of the time the batch took.
        time.sleep(min(BATCH_PAUSE_MAX, BATCH_YIELD * (time.monotonic() - started)))


def current_rows(conn: Connection, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Any]:
    """The jobs named by (cluster, proc) keys as they are now: one primary-key
    query per cluster (and per 500 of its jobs)."""
    by_cluster: dict[int, list[int]] = {}
    for cluster_id, proc_id in keys:
        by_cluster.setdefault(cluster_id, []).append(proc_id)
    found = {}
    for cluster_id, procs in by_cluster.items():
        for start in range(0, len(procs), 500):
            for row in conn.execute(
                sa.select(jobs).where(
                    jobs.c.cluster_id == cluster_id, jobs.c.proc_id.in_(procs[start : start + 500])
                )
            ):
                found[(row.cluster_id, row.proc_id)] = row
    return found


def limits_keep(shared: Shared) -> int:
    return shared.limits.max_events_per_job


def _event(row: Any, now: float, kind: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {
        "cluster_id": row.cluster_id,
        "proc_id": row.proc_id,
        "time": now,
        "type": kind,
        "detail": detail,
    }


def _execute_all(conn: Connection, statement: Any, params: list[dict[str, Any]]) -> None:
    """An executemany UPDATE conditional on the state each job was read in.
    Under the store lock no job can have moved since, so every row must
    change; if one did not, the whole batch is rolled back."""
    result = conn.execute(statement, params)
    if result.rowcount not in (-1, len(params)):
        raise RuntimeError(f"{len(params) - result.rowcount} jobs changed under the store lock")


_KEY = (
    (jobs.c.cluster_id == sa.bindparam("b_cluster"))
    & (jobs.c.proc_id == sa.bindparam("b_proc"))
    & (jobs.c.state == sa.bindparam("b_was"))
)
_ACT = (
    jobs.update()
    .where(_KEY)
    .values(
        state=sa.bindparam("b_state"),
        updated_at=sa.bindparam("b_now"),
        claim_id=None,
        lease_expires=None,
        hold_reason=sa.bindparam("b_reason"),
        hold_code=sa.bindparam("b_code"),
        completion_date=sa.bindparam("b_done"),
    )
)
_EDIT = (
    jobs.update()
    .where(_KEY)
    .values(
        ad=sa.bindparam("b_ad"),
        autocluster_id=sa.bindparam("b_ac"),
        prio=sa.bindparam("b_prio"),
        cpus=sa.bindparam("b_cpus"),
        submitter=sa.bindparam("b_submitter"),
        updated_at=sa.bindparam("b_now"),
        periodic=sa.bindparam("b_periodic"),
        sandbox=sa.bindparam("b_sandbox", type_=jobs.c.sandbox.type),
    )
)


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
