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

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from glidewms import classads
from glidewms.pool.autoclusters import Autoclusters
from glidewms.pool.bulk import ACT_COLUMNS, KEY_COLUMNS, Selection
from glidewms.pool.fairshare import split_submitter
from glidewms.pool.jobs import (
    _PROC_ID,
    HOLD_USER,
    Derived,
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
from glidewms.pool.queue_index import HeadKey, head_key
from glidewms.pool.schema import events, jobs
from glidewms.pool.shared import Shared, trim_events

log = logging.getLogger(__name__)

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
SCAN_FACTOR = 10  # rows a constraint SQL cannot narrow may read per batch, in batch sizes
MAX_RUNS = 16  # runs of consecutive job ids one statement names by ranges
IN_CHUNK = 500  # job ids one statement names by an IN list otherwise
T = TypeVar("T")


class Actions:
    def __init__(self, shared: Shared, queue: Queue, autoclusters: Autoclusters) -> None:
        self.shared = shared
        self.queue = queue
        self.autoclusters = autoclusters
        self.between_batches: Callable[[], None] | None = None
        # the latest bulk action: seconds the store lock was held per batch,
        # waited for and left free in all (the log line of `_report`)
        self.lock_held: list[float] = []
        self.lock_waited = self.paused = 0.0

    def act(self, action: str, rows: Sequence[Any], reason: str, by: str) -> list[str]:
        """hold, release or remove the given jobs (a user's request); returns
        the ids that changed."""
        return self.apply_actions([(row, action, reason, HOLD_USER) for row in rows], by)

    def act_where(
        self, action: str, owner: str | None, constraint: str, reason: str, by: str
    ) -> list[str]:
        """hold, release or remove the queued jobs of `owner` (None: anyone's)
        that match `constraint`, page by page (bulk.Selection)."""
        changed: list[str] = []
        selection = Selection(
            self.shared.engine, owner, constraint, self.shared.limits.ads, KEY_COLUMNS
        )
        size = self.shared.limits.batch_size
        self.lock_held, self.lock_waited, self.paused = [], 0.0, 0.0
        began = time.monotonic()
        for page in selection.pages(size, SCAN_FACTOR * size):
            if page:
                started = time.monotonic()
                changed += self._apply_batch([(row, action, reason, HOLD_USER) for row in page], by)
                self._between(started)
        self._report(action, len(changed), began)
        return changed

    def apply_actions(self, planned: Sequence[Planned], by: str) -> list[str]:
        """(job row, action, reason, hold code) each, in batches: the one path
        for user requests, periodic expressions and the pool's own policy, so
        every hold has a reason and a code and every change an event. A job
        whose state (read anew) the action cannot move is left."""
        changed: list[str] = []
        self.lock_held = []
        for batch in _batches(planned, self.shared.limits.batch_size):
            started = time.monotonic()
            changed += self._apply_batch(batch, by)
            self._between(started)
        return changed

    def _apply_batch(self, planned: Sequence[Planned], by: str) -> list[str]:
        """One batch, one transaction, set-based, per (action, reason, code)
        and run of consecutive ids of a cluster (`_key_clauses`): which jobs
        the action cannot move (usually none), what the memory needs of those
        it moves grouped by (state, autocluster, submitter, ...), one UPDATE
        and one INSERT ... SELECT of their events.

        No job row is fetched under the store lock: SQLite lets go of the GIL
        for every row it steps through, and while pilot turns keep the event
        loop busy each time back costs up to the interpreter's switch interval
        (5 ms), which once made a batch of 1000 hold the lock ~200 ms. A
        statement of a few grouped rows costs a few of those, whatever the
        batch's size."""
        now = time.time()
        shared = self.shared
        work: dict[tuple[str, str, int], dict[int, list[int]]] = {}
        for given, action, reason, code in planned:
            if action != JobCause.HOLD:
                code = 0  # only a hold records one
            per = work.setdefault((str(action), reason, code), {})
            per.setdefault(given.cluster_id, []).append(given.proc_id)
        changed: list[str] = []
        moved: list[tuple[Any, int, str, set[int]]] = []  # (group row, cluster, new state, procs)
        asked = time.monotonic()
        with shared.lock:
            locked = time.monotonic()
            self.lock_waited += locked - asked
            with shared.engine.begin() as conn:
                for (action, reason, code), clusters in work.items():
                    for cluster_id, procs in clusters.items():
                        self._act_group(
                            conn,
                            JobCause(action),
                            reason,
                            code,
                            cluster_id,
                            procs,
                            by,
                            now,
                            changed,
                            moved,
                        )
                if changed:
                    keys = [(c, p) for _, c, _, procs in moved for p in procs]
                    _trim(conn, keys, limits_keep(shared))
            self._memory(moved, now)
            self.lock_held.append(time.monotonic() - locked)
        return changed

    def _act_group(
        self,
        conn: Connection,
        action: JobCause,
        reason: str,
        code: int,
        cluster_id: int,
        procs: list[int],
        by: str,
        now: float,
        changed: list[str],
        moved: list[tuple[Any, int, str, set[int]]],
    ) -> None:
        new_state, kind = ACTIONS[action]
        values: dict[str, Any] = {
            "state": new_state,
            "updated_at": now,
            "claim_id": None,
            "lease_expires": None,
        }
        detail: dict[str, Any] = {"by": by, "reason": reason}
        if action == JobCause.HOLD:
            values["hold_reason"], values["hold_code"] = reason or f"held by {by}", code
            detail["code"] = code
        elif action == JobCause.RELEASE:
            values["hold_reason"] = values["hold_code"] = None
        else:
            values["completion_date"] = now
        sources = [s for s in JobState if JOB.allows(s, new_state, action)]
        movable = jobs.c.state.in_(sources)
        for where, n in _key_clauses(cluster_id, procs):
            stay = {r[0] for r in conn.execute(sa.select(jobs.c.proc_id).where(where, ~movable))}
            groups = conn.execute(
                sa.select(*_GROUPED, sa.func.count(), sa.func.min(jobs.c.proc_id))
                .where(where, movable)
                .group_by(*_GROUPED)
            ).all()
            count = sum(g[-2] for g in groups)
            if not count:
                continue
            mine = set(procs) if len(stay) + count == n else _present(conn, where)
            mine = {p for p in mine if p not in stay} & set(procs)
            result = conn.execute(jobs.update().where(where, movable).values(**values))
            _check_count(result, count)
            if len(mine) != count:
                raise RuntimeError("jobs changed under the store lock")
            # the jobs left as they were (usually none) get no event
            done = sa.and_(where, jobs.c.proc_id.notin_(sorted(stay))) if stay else where
            _insert_events(conn, done, now, kind, detail)
            changed += [job_id(cluster_id, p) for p in sorted(mine)]
            moved += [(g, cluster_id, new_state, mine) for g in groups]

    def _memory(self, moved: Sequence[tuple[Any, int, str, set[int]]], now: float) -> None:
        """The idle index and accounting follow the committed moves, from the
        grouped rows: one change per (autocluster, submitter) and queue date
        for idle jobs (a cached head among the moved jobs is dropped)."""
        shared = self.shared
        leaving: dict[tuple[int, str], Counter[float]] = {}
        gone: set[tuple[int, int]] = set()
        arriving: dict[tuple[int, str, float], list[Any]] = {}
        for g, cluster_id, new_state, procs in moved:
            state, ac, submitter, owner, cpus, prio, q_date, n, first = g
            if state == JobState.IDLE:
                leaving.setdefault((ac, submitter), Counter())[q_date] += n
                gone.update((cluster_id, p) for p in procs)
            elif state == JobState.RUNNING:
                for _ in range(n):
                    shared.index.stopped(ac)
                    shared.accounting.change(
                        submitter, owner, split_submitter(submitter, owner), -cpus, now
                    )
            if new_state == JobState.IDLE:
                entry = arriving.setdefault((ac, submitter, q_date), [0, None])
                entry[0] += n
                key = head_key(prio, q_date, cluster_id, first)
                entry[1] = key if entry[1] is None else min(entry[1], key)
        for (ac, submitter), dates in leaving.items():
            shared.index.remove_many(ac, submitter, dates, lambda k: (k[2], k[3]) in gone)
        for (ac, submitter, q_date), (n, best) in arriving.items():
            shared.index.add(ac, submitter, q_date, n, best)

    def edit(
        self, rows: Sequence[Any], attribute: str, value: str, by: str
    ) -> tuple[list[str], dict[str, str]]:
        """Set one attribute of idle or held jobs; returns (changed, {id: why not})."""
        expr = check_edit(attribute, value, self.shared.limits.ads)
        changed: list[str] = []
        skipped: dict[str, str] = {}
        self.lock_held = []
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
        selection = Selection(
            self.shared.engine, owner, constraint, self.shared.limits.ads, KEY_COLUMNS
        )
        size = self.shared.limits.batch_size
        self.lock_held, self.lock_waited, self.paused = [], 0.0, 0.0
        began = time.monotonic()
        for page in selection.pages(size, SCAN_FACTOR * size):
            if page:
                started = time.monotonic()
                self._edit_batch(page, attribute, expr, by, changed, skipped)
                self._between(started)
        self._report("edit", len(changed), began)
        return changed, skipped

    def _report(self, action: str, n: int, began: float) -> None:
        """One log line per bulk action: how long, and how long each batch
        held the store lock (what pilot turns waited for at most)."""
        held = sorted(self.lock_held)
        if held:
            log.info(
                "bulk %s: %d jobs in %.1f s, %d batches; store lock held per batch "
                "median %.1f ms, max %.1f ms; %.1f s held, %.1f s waiting for it, "
                "%.1f s left free",
                action,
                n,
                time.monotonic() - began,
                len(held),
                1000 * held[len(held) // 2],
                1000 * held[-1],
                sum(held),
                self.lock_waited,
                self.paused,
            )

    def _edit_batch(
        self,
        rows: Sequence[Any],
        attribute: str,
        expr: Any,
        by: str,
        changed: list[str],
        skipped: dict[str, str],
    ) -> None:
        """One batch of an edit. The jobs of a cluster share their stored ad
        text but for ProcId, so the edit is worked out once per such text
        (`_Edited`: parse, set, check, derive) and written for all of them by
        one UPDATE that puts each job's ProcId back into the new text; a job
        whose text reads ProcId elsewhere, an edit of Cmd (its sandbox entry
        differs per job), or an ad the new value would take past the size
        bound, is worked out on its own as before."""
        now = time.time()
        shared = self.shared
        limits = shared.limits
        per_job = attribute.lower() == "cmd"
        asked = time.monotonic()
        with shared.lock:
            locked = time.monotonic()
            self.lock_waited += locked - asked
            # first the new ads and their autoclusters (each its own short
            # transaction), then every job in one; the lock keeps ads unchanged
            alone: list[tuple[str, Any, Any, str | None, Derived]] = []
            shared_kind: list[tuple[Any, _Edited]] = []
            kinds: dict[tuple[str, str], _Edited | None] = {}
            with shared.engine.connect() as conn:
                current = current_rows(
                    conn, [(g.cluster_id, g.proc_id) for g in rows], ad=True, sandbox=per_job
                )
            for given in rows:
                jid = job_id(given.cluster_id, given.proc_id)
                row = current.get((given.cluster_id, given.proc_id))
                if row is None or row.state not in EDITABLE:
                    skipped[jid] = (
                        f"job is {row.state if row else 'gone'}: only idle "
                        "or held jobs can be edited"
                    )
                    continue
                kind = None if per_job else self._kind(kinds, row, attribute, expr)
                if kind is not None and kind.fits(row.proc_id, limits.ads.max_ad_bytes):
                    shared_kind.append((row, kind))
                    continue
                ad = stored_ad(row.ad)
                old = str(ad.lookup(attribute)) if attribute in ad else None
                ad[attribute] = expr
                try:
                    check_edited(ad, attribute, limits.ads)
                except InvalidEdit as exc:
                    skipped[jid] = str(exc)
                    continue
                alone.append((jid, row, ad, old, derive(ad, row.owner, shared.significant)))
            derived = [d for *_, d in alone] + [k.derived for _, k in shared_kind]
            acs = {d.signature: self.autoclusters.id_for(d, now) for d in derived}
            params, new_events = [], []
            moved: list[tuple[Any, int, Derived]] = []
            for jid, row, ad, old, d in alone:
                sandbox = dict(row.sandbox or {}) if per_job else None
                if sandbox is not None:
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
                        **({"b_sandbox": sandbox} if sandbox is not None else {}),
                    }
                )
                detail = {"by": by, "attribute": attribute, "old": old, "new": str(expr)}
                new_events.append(_event(row, now, "edited", detail))
                changed.append(jid)
                moved.append((row, acs[d.signature], d))
            groups: dict[tuple[int, int], list[Any]] = {}
            for row, kind in shared_kind:
                groups.setdefault((id(kind), row.cluster_id), []).append(row)
                changed.append(job_id(row.cluster_id, row.proc_id))
                moved.append((row, acs[kind.derived.signature], kind.derived))
            if params or groups:
                with shared.engine.begin() as conn:
                    if params:
                        _execute_all(conn, _EDIT_CMD if per_job else _EDIT, params)
                        conn.execute(events.insert(), new_events)
                    for (_, cluster_id), members in groups.items():
                        kind = next(k for r, k in shared_kind if r is members[0])
                        self._edit_group(
                            conn, kind, acs, cluster_id, members, attribute, by, expr, now
                        )
                    edited = [(r.cluster_id, r.proc_id) for r, _, _ in moved]
                    _trim(conn, edited, limits_keep(shared))
            leaving: dict[tuple[int, str], Counter[float]] = {}
            gone: set[tuple[int, int]] = set()
            arriving: dict[tuple[int, str, float], list[Any]] = {}
            for row, ac, d in moved:
                if row.state == JobState.IDLE:  # it may have moved to another autocluster
                    leaving.setdefault((row.autocluster_id, row.submitter), Counter())[
                        row.q_date
                    ] += 1
                    gone.add((row.cluster_id, row.proc_id))
                    key = head_key(d.prio, row.q_date, row.cluster_id, row.proc_id)
                    _arrive(arriving, ac, d.submitter, row.q_date, key)
            for (ac, submitter), dates in leaving.items():
                shared.index.remove_many(ac, submitter, dates, lambda k: (k[2], k[3]) in gone)
            for (ac, submitter, q_date), (n, best) in arriving.items():
                shared.index.add(ac, submitter, q_date, n, best)
            self.lock_held.append(time.monotonic() - locked)

    def _kind(
        self, kinds: dict[tuple[str, str], _Edited | None], row: Any, attribute: str, expr: Any
    ) -> _Edited | None:
        """The edit worked out for every job of `row`'s stored text (ProcId
        aside), or None when it must be worked out per job."""
        found = _PROC_ID.search(row.ad)
        if found is None:
            return None
        key = (row.ad[: found.start(1)] + row.ad[found.end(1) :], row.owner)
        if key in kinds:
            return kinds[key]
        if len(kinds) >= 1000:
            kinds.clear()
        kinds[key] = None
        if key[0].lower().count("procid") != 1:
            return None  # the job reads its ProcId elsewhere: it may differ per job
        shared = self.shared
        ad = stored_ad(row.ad)
        old = str(ad.lookup(attribute)) if attribute in ad else None
        ad[attribute] = expr
        try:
            check_edited(ad, attribute, shared.limits.ads)
        except InvalidEdit:
            return None  # each job gets its own verdict
        text = classads.to_text(ad)
        at = _PROC_ID.search(text)
        if at is None or text.lower().count("procid") != 1:
            return None
        kinds[key] = _Edited(
            text[: at.start(1)],
            text[at.end(1) :],
            old,
            derive(ad, row.owner, shared.significant),
            has_periodic(ad),
        )
        return kinds[key]

    def _edit_group(
        self,
        conn: Connection,
        kind: _Edited,
        acs: dict[str, int],
        cluster_id: int,
        members: list[Any],
        attribute: str,
        by: str,
        expr: Any,
        now: float,
    ) -> None:
        d = kind.derived
        ad_text = (
            sa.literal(kind.before) + sa.cast(jobs.c.proc_id, sa.Text) + sa.literal(kind.after)
        )
        detail = {"by": by, "attribute": attribute, "old": kind.old, "new": str(expr)}
        for where, n in _key_clauses(cluster_id, [r.proc_id for r in members]):
            result = conn.execute(
                jobs.update()
                .where(where, jobs.c.state.in_(EDITABLE))
                .values(
                    ad=ad_text,
                    autocluster_id=acs[d.signature],
                    prio=d.prio,
                    cpus=d.cpus,
                    submitter=d.submitter,
                    updated_at=now,
                    periodic=kind.periodic,
                )
            )
            _check_count(result, n)
            _insert_events(conn, where, now, "edited", detail)

    def _between(self, started: float) -> None:
        if self.between_batches is not None:
            self.between_batches()
        # The store lock is a plain Lock, not fair: taken again at once, the
        # next batch would often win it over the pilot turns queued behind
        # this one (turn p99 ~1 s during a 200k-job hold, bench/bulk_turns.py).
        # Leave it free for a share of the time the batch took.
        pause = min(BATCH_PAUSE_MAX, BATCH_YIELD * (time.monotonic() - started))
        self.paused += pause
        time.sleep(pause)


def current_rows(
    conn: Connection, keys: Sequence[tuple[int, int]], ad: bool = False, sandbox: bool = False
) -> dict[tuple[int, int], Any]:
    """The jobs named by (cluster, proc) keys as they are now: the columns an
    action needs (with `ad`, the stored ad; with `sandbox`, that too), one
    query per run of consecutive ids of a cluster (`_key_clauses`)."""
    columns = list(ACT_COLUMNS)
    if ad:
        columns.append(jobs.c.ad)
    if sandbox:
        columns.append(jobs.c.sandbox)
    by_cluster: dict[int, list[int]] = {}
    for cluster_id, proc_id in keys:
        by_cluster.setdefault(cluster_id, []).append(proc_id)
    found = {}
    for cluster_id, procs in by_cluster.items():
        for where, _ in _key_clauses(cluster_id, procs):
            for row in conn.execute(sa.select(*columns).where(where)):
                found[(row.cluster_id, row.proc_id)] = row
    return found


def _key_clauses(
    cluster_id: int, procs: Sequence[int], table: sa.Table = jobs
) -> Iterator[tuple[Any, int]]:
    """(condition, jobs it names) covering exactly the jobs `procs` of a
    cluster: a few runs of consecutive ids as BETWEENs (a cluster acted on
    whole is one range scan, and no statement carries a parameter per job),
    else IN lists of at most IN_CHUNK ids."""
    ordered = sorted(set(procs))
    runs: list[tuple[int, int]] = []
    for n in ordered:
        if runs and runs[-1][1] == n - 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    cluster = table.c.cluster_id == cluster_id
    proc = table.c.proc_id
    if len(runs) <= MAX_RUNS:
        ranges = [proc == a if a == b else proc.between(a, b) for a, b in runs]
        yield sa.and_(cluster, sa.or_(*ranges)), len(ordered)
        return
    for start in range(0, len(ordered), IN_CHUNK):
        chunk = ordered[start : start + IN_CHUNK]
        yield sa.and_(cluster, proc.in_(chunk)), len(chunk)


def _trim(conn: Connection, keys: Sequence[tuple[int, int]], keep: int) -> None:
    """shared.trim_many, finding the jobs over `keep` events by the same runs
    of ids as the changes (one grouped count per run, not per 500 ids)."""
    by_cluster: dict[int, list[int]] = {}
    for cluster_id, proc_id in keys:
        by_cluster.setdefault(cluster_id, []).append(proc_id)
    for cluster_id, procs in by_cluster.items():
        for where, _ in _key_clauses(cluster_id, procs, events):
            over = conn.execute(
                sa.select(events.c.cluster_id, events.c.proc_id)
                .where(where)
                .group_by(events.c.cluster_id, events.c.proc_id)
                .having(sa.func.count() > keep)
            ).all()
            for row in over:
                trim_events(conn, row.cluster_id, row.proc_id, keep)


def _present(conn: Connection, where: Any) -> set[int]:
    """The procs `where` names that exist (a job purged meanwhile does not)."""
    return {r[0] for r in conn.execute(sa.select(jobs.c.proc_id).where(where))}


def _check_count(result: Any, expected: int) -> None:
    """Under the store lock no job can have moved since it was read, so the
    statement must have changed every job it names; if not, the whole batch
    is rolled back."""
    if result.rowcount not in (-1, expected):
        raise RuntimeError(f"{expected - result.rowcount} jobs changed under the store lock")


def _insert_events(conn: Connection, where: Any, now: float, kind: str, detail: Any) -> None:
    """One event for each job `where` names (all just changed), the same
    detail for each: one INSERT ... SELECT, the detail encoded once."""
    conn.execute(
        events.insert().from_select(
            ["cluster_id", "proc_id", "time", "type", "detail"],
            sa.select(
                jobs.c.cluster_id,
                jobs.c.proc_id,
                sa.literal(now, sa.Float),
                sa.literal(kind, sa.String),
                sa.literal(detail, events.c.detail.type),
            )
            .where(where)
            .order_by(jobs.c.cluster_id, jobs.c.proc_id),
        )
    )


def _arrive(
    arriving: dict[tuple[int, str, float], list[Any]],
    ac: int,
    submitter: str,
    q_date: float,
    key: HeadKey,
) -> None:
    """Count a job becoming idle in (autocluster, submitter) at `q_date`,
    keeping the best key of them (IdleIndex.add takes a count and the best)."""
    entry = arriving.get((ac, submitter, q_date))
    if entry is None:
        arriving[(ac, submitter, q_date)] = [1, key]
    else:
        entry[0] += 1
        if key < entry[1]:
            entry[1] = key


@dataclass(frozen=True)
class _Edited:
    """An edit worked out for the jobs of one stored ad text (ProcId aside):
    the new text around where ProcId's value goes, and what it derives."""

    before: str
    after: str
    old: str | None
    derived: Derived
    periodic: bool

    def fits(self, proc_id: int, most: int) -> bool:
        size = len(self.before.encode("utf-8", "surrogatepass")) + len(
            self.after.encode("utf-8", "surrogatepass")
        )
        return size + len(str(proc_id)) <= most


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


# what the memory needs of the jobs a batch moves, grouped (Actions._memory)
_GROUPED = (
    jobs.c.state,
    jobs.c.autocluster_id,
    jobs.c.submitter,
    jobs.c.owner,
    jobs.c.cpus,
    jobs.c.prio,
    jobs.c.q_date,
)
_KEY = (
    (jobs.c.cluster_id == sa.bindparam("b_cluster"))
    & (jobs.c.proc_id == sa.bindparam("b_proc"))
    & (jobs.c.state == sa.bindparam("b_was"))
)
_EDIT_VALUES: dict[str, Any] = {
    "ad": sa.bindparam("b_ad"),
    "autocluster_id": sa.bindparam("b_ac"),
    "prio": sa.bindparam("b_prio"),
    "cpus": sa.bindparam("b_cpus"),
    "submitter": sa.bindparam("b_submitter"),
    "updated_at": sa.bindparam("b_now"),
    "periodic": sa.bindparam("b_periodic"),
}
_EDIT = jobs.update().where(_KEY).values(**_EDIT_VALUES)
# an edit of Cmd also changes the sandbox's record of the command
_EDIT_CMD = (
    jobs.update()
    .where(_KEY)
    .values(**_EDIT_VALUES, sandbox=sa.bindparam("b_sandbox", type_=jobs.c.sandbox.type))
)


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
