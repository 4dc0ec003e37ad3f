"""A pilot's whole exchange with the pool in one call: completions, then claims.

HTCondor keeps a claim between jobs so a slot that finishes one job starts the
next without asking the negotiator again; our equivalent is one call per
pilot turn that reports what ended and asks for what to run next. This mixin
of `PoolStore` does such a turn under one lock acquisition and in ONE
transaction: the ended claims are read with one SELECT and finished with one
executemany UPDATE (exit.py decides completed, requeued or held), the new
claims cost one conditional UPDATE ... RETURNING (no re-read), and every
event of the turn (ended jobs', then started ones') goes in with one
executemany INSERT. The statements on this path are built once.

The jobs chosen are exactly those `max_jobs` single claims in a row would
give: each sees the free resources minus what the claims before it asked,
and the in-memory index and fair-share accounting as the claims before it
left them. So those change as the turn goes (a claim must not see a job this
turn already took), and are put back if the transaction fails: a pool never
keeps in memory what its database does not say.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from glidewms.pool.exit import Completion, FinishedJob
from glidewms.pool.fairshare import Accounting, split_submitter
from glidewms.pool.jobs import SpecCache, execution_spec, job_id
from glidewms.pool.matchmaker import Matchmaker
from glidewms.pool.pilots import RESOURCES, free_from
from glidewms.pool.queue_index import IdleIndex
from glidewms.pool.schema import events, jobs, pilots

Undo = list[Callable[[], None]]


class CycleMixin:
    engine: Engine
    index: IdleIndex
    accounting: Accounting
    reserve_for_large_jobs: bool
    reservations: dict[str, tuple[int, str, int]]
    empty_free: dict[str, dict[str, int]]
    matchmaker: Matchmaker
    _specs: SpecCache
    _lock: threading.Lock

    if TYPE_CHECKING:  # provided by PoolStore and its other mixins
        def _pilot(self, conn: Connection, pilot_id: str) -> Any: ...
        def _choose(self, conn: Connection, pilot_id: str, slot: Mapping[str, Any],
                    free: Mapping[str, int], whole: Mapping[str, int] | None,
                    now: float) -> Any: ...
        def _runs_jobs(self, conn: Connection, pilot_id: str) -> bool: ...
        def _finish(self, conn: Connection, completions: Sequence[Completion],
                    now: float, pilot_id: str | None,
                    events_out: list[dict[str, Any]] | None = None) -> list[FinishedJob]: ...
        def _became_idle(self, ac: int, submitter: str, prio: int, q_date: float,
                         cluster_id: int, proc_id: int) -> None: ...

    def cycle(self, pilot_id: str, completions: Sequence[Completion],
              free: Mapping[str, float], lease: float, max_jobs: int,
              now: float) -> tuple[dict[str, bool], list[dict[str, Any]], int]:
        """Finish `completions` and hand out up to `max_jobs` claims, atomically.

        Returns ({claim_id: accepted?}, claims, jobs an exit policy put back
        to idle). A completion of a claim this
        pilot no longer holds (requeued, held, removed, already completed) is
        answered False and changes nothing: the 409 of the single form.
        """
        undo: Undo = []
        with self._lock:
            try:
                with self.engine.begin() as conn:
                    pilot = self._pilot(conn, pilot_id)
                    turn_events: list[dict[str, Any]] = []  # ended jobs' first, then started
                    finished = self._finish(conn, completions, now, pilot_id, turn_events)
                    for f in finished:  # what single calls in a row would see
                        self._stopped(f.row, now, undo)
                    claims: list[dict[str, Any]] = []
                    if pilot.drain:
                        self.reservations.pop(pilot_id, None)
                    elif max_jobs > 0:
                        self._claim_batch(conn, pilot, free, lease, max_jobs, now, claims,
                                          turn_events, undo)
                    reported = free_from(pilot.slot, free)  # as last reported
                    if pilot.free != reported:
                        conn.execute(_SET_FREE, {"b_pilot": pilot_id, "b_free": reported})
                    if turn_events:
                        conn.execute(_INSERT_EVENTS, turn_events)
            except BaseException:
                for step in reversed(undo):
                    step()
                raise
            for f in finished:
                if f.new_state == "idle":  # claimable from the next call on
                    r = f.row
                    self._became_idle(r.autocluster_id, r.submitter, r.prio, r.q_date,
                                      r.cluster_id, r.proc_id)
            if claims:
                self.reservations.pop(pilot_id, None)
        done = {c.claim_id: False for c in completions}
        done.update({f.claim_id: True for f in finished})
        return done, claims, sum(1 for f in finished if f.new_state == "idle")

    def _stopped(self, row: Any, now: float, undo: Undo) -> None:
        """A running job left: its autocluster's running count and its cores."""
        self.index.stopped(row.autocluster_id)
        undo.append(lambda: self.index.started(row.autocluster_id))
        self._account(row.submitter, row.owner, -row.cpus, now, undo)

    def _account(self, submitter: str, owner: str, cpus: int, now: float, undo: Undo) -> None:
        group = split_submitter(submitter, owner)
        self.accounting.change(submitter, owner, group, cpus, now)
        undo.append(lambda: self.accounting.change(submitter, owner, group, -cpus, now))

    def _claim_batch(self, conn: Connection, pilot: Any, free: Mapping[str, float],
                     lease: float, max_jobs: int, now: float, claims: list[dict[str, Any]],
                     started: list[dict[str, Any]], undo: Undo) -> None:
        """Up to `max_jobs` claims in this transaction.

        First the choices, one by one in memory (each sees the index and the
        accounting as the choices before it left them, and the free resources
        minus their requests); then ONE conditional UPDATE ... RETURNING
        marks them all running. A job that turns out not to be idle any more
        (the index was ahead of a submit) is given back and left out."""
        pilot_id = pilot.pilot_id
        left = dict(free)
        full = self.empty_free.get(pilot_id) or free_from(pilot.slot, None)
        chosen: list[tuple[int, str, Any, Undo]] = []
        taken = self._turn_taken  # chosen, still idle in the database until _CLAIM
        taken.clear()
        try:
            self._choose_turn(conn, pilot, left, full, max_jobs, now, chosen,
                              self.matchmaker.requests, taken)
            if not chosen:
                return
            params: dict[str, Any] = {"b_prefix": uuid.uuid4().hex, "b_pilot": pilot_id,
                                      "b_lease": now + lease, "b_now": now}
            for i, (_, _, k, _) in enumerate(chosen):
                params[f"c{i}"], params[f"p{i}"] = k[2], k[3]
            rows = {(r.cluster_id, r.proc_id): r
                    for r in conn.execute(_claim_statement(len(chosen)), params)}
        except BaseException:
            for *_, mine in reversed(chosen):
                for step in reversed(mine):
                    step()
            raise
        finally:
            taken.clear()
        site = pilot.slot.get("GLIDEIN_Site")
        for ac, submitter, key, mine in chosen:
            row = rows.get((key[2], key[3]))
            if row is None:  # not idle after all: as if never chosen
                for step in reversed(mine):
                    step()
                self.index.forget_head(ac, submitter)
                continue
            undo.extend(mine)
            self._account(submitter, row.owner, row.cpus, now, undo)
            started.append({"cluster_id": key[2], "proc_id": key[3], "time": now,
                            "type": "started",
                            "detail": {"pilot": pilot_id, "glidein": pilot.glidein_id,
                                       "site": site, "submitter": submitter}})
            claims.append({"claim_id": row.claim_id, "job_id": job_id(key[2], key[3]),
                           "lease_seconds": lease,
                           "job": execution_spec(row, self._specs)})

    def _choose_turn(self, conn: Connection, pilot: Any, left: dict[str, float],
                     full: dict[str, int], max_jobs: int, now: float,
                     chosen: list[tuple[int, str, Any, Undo]],
                     requests: Mapping[int, Mapping[str, int]],
                     taken: set[tuple[int, int]]) -> None:
        """The turn's choices, in memory only (see _claim_batch)."""
        pilot_id = pilot.pilot_id
        runs: bool | None = None
        while len(chosen) < max_jobs:
            if chosen and (left.get("cpus", 1) < 1 or left.get("memory", 1) < 1):
                break
            reported = free_from(pilot.slot, left)
            whole = None
            if self.reserve_for_large_jobs and reported != full:
                if runs is None:
                    runs = bool(chosen) or self._runs_jobs(conn, pilot_id)
                if runs or chosen:
                    whole = full
                else:  # keeps some for itself: never reserve beyond that
                    self.empty_free[pilot_id] = reported
            choice = self._choose(conn, pilot_id, pilot.slot, reported, whole, now)
            if choice is None:
                self.reservations.pop(pilot_id, None)
                break
            kind, ac, submitter, key = choice
            if kind == "reserve":
                break
            mine: Undo = []
            self.index.remove(ac, submitter, key)
            self.index.started(ac)
            mine.append(lambda ac=ac, s=submitter, k=key: (
                self.index.add(ac, s, k[1], 1, k), self.index.stopped(ac)))
            chosen.append((ac, submitter, key, mine))
            taken.add((key[2], key[3]))
            request = requests.get(ac) or {}
            for name, _ in RESOURCES:
                if name in left:
                    left[name] = max(0, left[name] - int(request.get(name) or 0))


_SET_FREE = (pilots.update().where(pilots.c.pilot_id == sa.bindparam("b_pilot"))
             .values(free=sa.bindparam("b_free", type_=pilots.c.free.type)))
_INSERT_EVENTS = events.insert()

# One statement marks a whole turn's jobs running. Claim ids are a random
# prefix per turn plus the job id: unguessable, and unique per job. The jobs
# are named as an OR of primary keys (SQLite scans the whole table for a
# row-value IN list); one statement per batch size, compiled once. The state
# test is wrapped in COALESCE (state is NOT NULL: same meaning) so that no
# index can serve it: SQLite otherwise searches ix_jobs_pick on state = 'idle'
# and reads EVERY idle job per turn (2 ms a turn at 10k idle jobs, growing
# with the queue) instead of one primary-key lookup per chosen job.
_CLAIM_STATEMENTS: dict[int, Any] = {}
_STILL_IDLE = sa.func.coalesce(jobs.c.state, "") == "idle"


def _claim_statement(n: int) -> Any:
    statement = _CLAIM_STATEMENTS.get(n)
    if statement is None:
        keys = sa.or_(*[sa.and_(jobs.c.cluster_id == sa.bindparam(f"c{i}"),
                                jobs.c.proc_id == sa.bindparam(f"p{i}")) for i in range(n)])
        statement = _CLAIM_STATEMENTS[n] = (
            jobs.update()
            .where(keys, _STILL_IDLE)
            .values(state="running",
                    claim_id=sa.bindparam("b_prefix", type_=sa.String) + "."
                    + sa.cast(jobs.c.cluster_id, sa.String) + "."
                    + sa.cast(jobs.c.proc_id, sa.String),
                    pilot_id=sa.bindparam("b_pilot"), lease_expires=sa.bindparam("b_lease"),
                    num_starts=jobs.c.num_starts + 1, start_date=sa.bindparam("b_now"),
                    updated_at=sa.bindparam("b_now"))
            .returning(jobs.c.cluster_id, jobs.c.proc_id, jobs.c.claim_id, jobs.c.ad,
                       jobs.c.sandbox, jobs.c.owner, jobs.c.cpus))
    return statement
