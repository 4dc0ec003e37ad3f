"""A pilot's whole exchange with the pool in one call: completions, then claims.

HTCondor keeps a claim between jobs so a slot that finishes one job starts the
next without asking the negotiator again; our equivalent is one call per
pilot turn that reports what ended and asks for what to run next. `Turns`
does such a turn under one lock acquisition and in ONE transaction: the
ended claims are read with one SELECT and finished with one executemany
UPDATE (exit.py decides completed, requeued or held), the new claims cost
one conditional UPDATE ... RETURNING (no re-read), and every event of the
turn (ended jobs', then started ones') goes in with one executemany INSERT.
The statements on this path are built once.

The jobs chosen are exactly those `max_jobs` single claims in a row would
give: each sees the free resources minus what the claims before it asked,
and the in-memory index and fair-share accounting as the claims before it
left them. So those change as the turn goes (a claim must not see a job this
turn already took), and are put back if the transaction fails: a pool never
keeps in memory what its database does not say.

A self-checkpointing job's checkpoint (exit.py) goes out with its claim:
`execution_spec` puts its files in the sandbox, so every run, after a
checkpoint or an eviction, starts from the latest one.

A turn is also the pilot's sign of life: it renews the pilot's lease and
those of the claims it lists as running (`held`), in memory like a heartbeat
(pilots.py, leases.py), and its answer carries what a heartbeat's does
(`standing`: drain, and the listed claims no longer held, to kill), so a
pilot that turns needs no heartbeat.

The older single calls (one claim, one completion) are turns too: `claim`
and `claim_many` are turns that report nothing, `complete` one that claims
nothing.

A turn given an `owner` (pilots.PilotOwner, from the caller's token) is
refused as if the pilot did not exist unless the pilot is that owner's; the
check reads the pilot's row the turn reads anyway. Completions are bound to
the pilot: a turn finishes only claims its own pilot holds, and a single
completion only a claim held by a pilot of the caller's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from glidewms.pool.choosing import Chosen, Matching, Undo, give_back
from glidewms.pool.exit import Completion, finish
from glidewms.pool.fairshare import split_submitter
from glidewms.pool.jobs import Conflict, SpecCache, execution_spec, job_id
from glidewms.pool.lifecycle import JOB, JobCause, JobState
from glidewms.pool.pilots import PilotOwner, Pilots
from glidewms.pool.schema import events, jobs, pilots
from glidewms.pool.shared import Shared
from glidewms.pool.slots import free_from


class Turns:
    def __init__(self, shared: Shared, pilots: Pilots, matching: Matching) -> None:
        self.shared = shared
        self.pilots = pilots
        self.matching = matching
        self._specs = SpecCache()  # what claims read from ads, per cluster
        self.observe_wait: Callable[[float], None] | None = None  # pool/metrics.py sets it

    def cycle(
        self,
        pilot_id: str,
        completions: Sequence[Completion],
        free: Mapping[str, float],
        lease: float,
        max_jobs: int,
        now: float,
        owner: PilotOwner | None = None,
        held: Sequence[str] = (),
        standing: dict[str, Any] | None = None,
    ) -> tuple[dict[str, bool], list[dict[str, Any]], int]:
        """Finish `completions` and hand out up to `max_jobs` claims, atomically.

        Returns ({claim_id: accepted?}, claims, jobs an exit policy put back
        to idle). A completion of a claim this pilot no longer holds
        (requeued, held, removed, already completed) is answered False and
        changes nothing: the 409 of the single form. `held`: the claims the
        pilot runs, renewed with the pilot's lease; `standing`, if given, is
        filled with the heartbeat's answer: `drain`, and `kill` (the claims
        of `held` this pilot no longer holds).
        """
        shared, matching = self.shared, self.matching
        undo: Undo = []
        with shared.lock:
            try:
                with shared.engine.begin() as conn:
                    pilot = self.pilots.live(conn, pilot_id, owner)
                    holding = self.pilots.holding(conn, pilot_id, held)
                    turn_events: list[dict[str, Any]] = []  # ended jobs' first, then started
                    finished = finish(
                        conn,
                        completions,
                        now,
                        pilot_id,
                        turn_events,
                        shared.limits,
                    )
                    for f in finished:  # what single calls in a row would see
                        self._stopped(f.row, now, undo)
                    claims: list[dict[str, Any]] = []
                    if pilot.drain:
                        matching.unreserve(pilot_id)
                    elif max_jobs > 0:
                        self._claim_batch(
                            conn, pilot, free, lease, max_jobs, now, claims, turn_events, undo
                        )
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
                if f.new_state == JobState.IDLE:  # claimable from the next call on
                    r = f.row
                    shared.became_idle(
                        r.autocluster_id, r.submitter, r.prio, r.q_date, r.cluster_id, r.proc_id
                    )
            if claims:
                matching.unreserve(pilot_id)
        self.pilots.leases.seen(pilot_id, holding, now)
        if standing is not None:
            standing["drain"] = bool(pilot.drain)
            standing["kill"] = [c for c in held if c not in holding]
        done = {c.claim_id: False for c in completions}
        done.update({f.claim_id: True for f in finished})
        return done, claims, sum(1 for f in finished if f.new_state == JobState.IDLE)

    def claim(
        self,
        pilot_id: str,
        free: dict[str, float],
        lease: float,
        owner: PilotOwner | None = None,
    ) -> dict[str, Any] | None:
        """Hand the best matching idle job to this pilot, or None.

        None also when the pilot is reserved for a larger job that will fit
        once some of its running jobs end (see Matching._choose).
        """
        found = self.claim_many(pilot_id, free, lease, 1, owner)
        return found[0] if found else None

    def claim_many(
        self,
        pilot_id: str,
        free: dict[str, float],
        lease: float,
        max_jobs: int,
        owner: PilotOwner | None = None,
    ) -> list[dict[str, Any]]:
        """Up to ``max_jobs`` claims for this pilot, as that many single claims in a row
        would give, in one transaction."""
        return self.cycle(pilot_id, (), free, lease, max_jobs, time.time(), owner)[1]

    def complete(
        self,
        claim_id: str,
        exit_code: int,
        outputs: list[dict[str, str]],
        wall_seconds: float,
        owner: PilotOwner | None = None,
    ) -> tuple[str, JobState]:
        """One completion (the single-call form): (job id, its new state);
        Conflict if the claim is gone, or (given `owner`) held by a pilot not
        of that owner: the two are not told apart."""
        now = time.time()
        shared = self.shared
        with shared.lock:
            with shared.engine.begin() as conn:
                pilot_id = None
                if owner is not None:
                    pilot = conn.execute(_HOLDER, {"b_claim": claim_id}).first()
                    if pilot is None or not owner.owns(pilot):
                        raise Conflict(_GONE)
                    pilot_id = pilot.pilot_id
                finished = finish(
                    conn,
                    [Completion(claim_id, exit_code, outputs, wall_seconds)],
                    now,
                    pilot_id,
                    limits=shared.limits,
                )
                if not finished:
                    raise Conflict(_GONE)
            for f in finished:
                shared.moved(f.row, f.new_state, now)
        row = finished[0].row
        return job_id(row.cluster_id, row.proc_id), finished[0].new_state

    def _stopped(self, row: Any, now: float, undo: Undo) -> None:
        """A running job left: its autocluster's running count and its cores."""
        index = self.shared.index
        index.stopped(row.autocluster_id)
        undo.append(lambda: index.started(row.autocluster_id))
        self._account(row.submitter, row.owner, -row.cpus, now, undo)

    def _account(self, submitter: str, owner: str, cpus: int, now: float, undo: Undo) -> None:
        accounting = self.shared.accounting
        group = split_submitter(submitter, owner)
        accounting.change(submitter, owner, group, cpus, now)
        undo.append(lambda: accounting.change(submitter, owner, group, -cpus, now))

    def _claim_batch(
        self,
        conn: Connection,
        pilot: Any,
        free: Mapping[str, float],
        lease: float,
        max_jobs: int,
        now: float,
        claims: list[dict[str, Any]],
        started: list[dict[str, Any]],
        undo: Undo,
    ) -> None:
        """Up to `max_jobs` claims in this transaction.

        First the choices, one by one in memory (Matching.choose_turn); then
        ONE conditional UPDATE ... RETURNING marks them all running. A job
        that turns out not to be idle any more (the index was ahead of a
        submit) is given back and left out."""
        pilot_id = pilot.pilot_id
        chosen: list[Chosen] = self.matching.choose_turn(conn, pilot, free, max_jobs, now)
        if not chosen:
            return
        try:
            params: dict[str, Any] = {
                "b_prefix": uuid.uuid4().hex,
                "b_pilot": pilot_id,
                "b_lease": now + lease,
                "b_now": now,
            }
            for i, (_, _, k, _) in enumerate(chosen):
                params[f"c{i}"], params[f"p{i}"] = k[2], k[3]
            rows = {
                (r.cluster_id, r.proc_id): r
                for r in conn.execute(claim_statement(len(chosen)), params)
            }
        except BaseException:
            give_back(chosen)
            raise
        site = pilot.slot.get("GLIDEIN_Site")
        index = self.shared.index
        for ac, submitter, key, mine in chosen:
            row = rows.get((key[2], key[3]))
            if row is None:  # not idle after all: as if never chosen
                for step in reversed(mine):
                    step()
                index.forget_head(ac, submitter)
                continue
            undo.extend(mine)
            if self.observe_wait is not None:  # seconds since the queue date (key[1])
                self.observe_wait(now - key[1])
            self._account(submitter, row.owner, row.cpus, now, undo)
            started.append(
                {
                    "cluster_id": key[2],
                    "proc_id": key[3],
                    "time": now,
                    "type": "started",
                    "detail": {
                        "pilot": pilot_id,
                        "glidein": pilot.glidein_id,
                        "site": site,
                        "submitter": submitter,
                    },
                }
            )
            claims.append(
                {
                    "claim_id": row.claim_id,
                    "job_id": job_id(key[2], key[3]),
                    "lease_seconds": lease,
                    "job": execution_spec(row, self._specs),
                }
            )


_GONE = "claim is no longer held: the job was requeued, held or removed"
# The pilot that holds a claim (a single completion checks it is the caller's).
_HOLDER = sa.select(pilots).where(
    pilots.c.pilot_id
    == sa.select(jobs.c.pilot_id)
    .where(jobs.c.claim_id == sa.bindparam("b_claim"))
    .scalar_subquery()
)
_SET_FREE = (
    pilots.update()
    .where(pilots.c.pilot_id == sa.bindparam("b_pilot"))
    .values(free=sa.bindparam("b_free", type_=pilots.c.free.type))
)
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
_CLAIMED, _RUNS = JOB.source(JobCause.CLAIM), JOB.target(JobCause.CLAIM)  # idle -> running
_STILL_IDLE = sa.func.coalesce(jobs.c.state, "") == _CLAIMED


def claim_statement(n: int) -> Any:
    """The UPDATE ... RETURNING that marks `n` chosen jobs running."""
    statement = _CLAIM_STATEMENTS.get(n)
    if statement is None:
        keys = sa.or_(
            *[
                sa.and_(
                    jobs.c.cluster_id == sa.bindparam(f"c{i}"),
                    jobs.c.proc_id == sa.bindparam(f"p{i}"),
                )
                for i in range(n)
            ]
        )
        statement = _CLAIM_STATEMENTS[n] = (
            jobs.update()
            .where(keys, _STILL_IDLE)
            .values(
                state=_RUNS,
                claim_id=sa.bindparam("b_prefix", type_=sa.String)
                + "."
                + sa.cast(jobs.c.cluster_id, sa.String)
                + "."
                + sa.cast(jobs.c.proc_id, sa.String),
                pilot_id=sa.bindparam("b_pilot"),
                lease_expires=sa.bindparam("b_lease"),
                num_starts=jobs.c.num_starts + 1,
                start_date=sa.bindparam("b_now"),
                updated_at=sa.bindparam("b_now"),
            )
            .returning(
                jobs.c.cluster_id,
                jobs.c.proc_id,
                jobs.c.claim_id,
                jobs.c.ad,
                jobs.c.sandbox,
                jobs.c.owner,
                jobs.c.cpus,
                jobs.c.checkpoint,
            )
        )
    return statement
