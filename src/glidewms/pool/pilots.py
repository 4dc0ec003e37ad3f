"""Pilots and their leases: register, heartbeat, leave, and the expiry that
requeues work when a pilot goes silent.

Failures are told apart here: a job whose pilot was lost, left, or let its
lease run out is a *site* failure (evicted, requeued, and held after
`max_job_restarts`); a job that ran and exited non-zero is a *job* failure
(completed, with its exit code: exit.py). Both are recorded in the job's
events and in the pool's counters. Pilots and their jobs move only as their
lifecycles allow (lifecycle.py).

Every pilot is bound to the identity that registered it (`PilotOwner`: the
token's subject and its fe, group, entry and site claims), and every call
about it that names an owner must come from the same identity: another's
pilot is answered as if it did not exist (NotFound), so pilot ids are not
confirmed to whoever guesses them. The owner is compared with the pilot's
row, which each of these calls reads anyway: no query is added to a turn.

Leases are renewed in memory (leases.py): a heartbeat is a read (the
pilot's row and which of its claims it still holds, for its answer), not a
write transaction; `expire_leases` writes the renewals of the pass in one
batch, then expires. A pilot inside a long-poll is connected and never
expires. Renewals lost in a crash are harmless: `renew_after_restart`
gives every live pilot and claim a full lease at start.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from glidewms.pool.checks import check_slot
from glidewms.pool.choosing import Matching
from glidewms.pool.drains import drained_at
from glidewms.pool.jobs import HOLD_POLICY, NotFound, PilotGone
from glidewms.pool.leases import LeaseBook, Renewals
from glidewms.pool.lifecycle import (
    ENDED_PILOTS,
    JOB,
    LIVE_PILOTS,
    PILOT,
    JobCause,
    JobState,
    PilotCause,
)
from glidewms.pool.schema import jobs, pilots
from glidewms.pool.shared import Shared, bump, record_event, trim_events
from glidewms.pool.slots import free_from

log = logging.getLogger(__name__)
_PILOT = sa.select(pilots).where(pilots.c.pilot_id == sa.bindparam("b_pilot"))  # every turn
EVICTED = JOB.source(JobCause.EVICT)  # only a running job can lose its pilot
REGISTERED = PILOT.target(PilotCause.REGISTER)
LEFT = PILOT.target(PilotCause.DEREGISTER)
LOST = PILOT.target(PilotCause.EXPIRE)
DRAINING = PILOT.target(PilotCause.DRAIN)
_INSERT_PILOT = pilots.insert()
_HOLDING = sa.select(jobs.c.claim_id).where(  # built once: heartbeats and turns ask it
    jobs.c.claim_id.in_(sa.bindparam("b_claims", expanding=True)),
    jobs.c.pilot_id == sa.bindparam("b_pilot"),
    jobs.c.state == JobState.RUNNING,
)
_EXPIRES = PILOT.sources(PilotCause.EXPIRE)  # the states a lease matters in
# One statement each, run as an executemany over a pass's renewals: a lease
# only ever moves later, and only for a pilot (a claim) still live (held).
_RENEW_PILOT = (
    pilots.update()
    .where(
        pilots.c.pilot_id == sa.bindparam("b_pilot"),
        sa.or_(*[pilots.c.state == s for s in _EXPIRES]),  # no IN: executemany
        pilots.c.lease_expires < sa.bindparam("b_expires"),
    )
    .values(lease_expires=sa.bindparam("b_expires"), last_seen=sa.bindparam("b_seen"))
)
_RENEW_CLAIM = (
    jobs.update()
    .where(
        jobs.c.claim_id == sa.bindparam("b_claim"),
        jobs.c.pilot_id == sa.bindparam("b_pilot"),
        jobs.c.state == JobState.RUNNING,
        jobs.c.lease_expires < sa.bindparam("b_expires"),
    )
    .values(lease_expires=sa.bindparam("b_expires"))
)


@dataclass(frozen=True)
class PilotOwner:
    """The identity a pilot is bound to: its registering token's subject and claims."""

    subject: str
    frontend: str | None = None
    group: str | None = None
    entry: str | None = None
    site: str | None = None

    def owns(self, row: Any) -> bool:
        """Is the pilot of this row ours? Subject, frontend, group and entry must
        be the same; the site must too where both tokens name one (a token
        renewed with a site its entry's earlier one lacked is the same pilot's;
        one of another site is not). A pilot registered before identities were
        kept (NULL token_subject) is bound to its frontend and group only."""
        if row.token_subject is None:
            return bool(row.frontend == self.frontend and row.group_name == self.group)
        return bool(
            row.token_subject == self.subject
            and row.frontend == self.frontend
            and row.group_name == self.group
            and row.token_entry == self.entry
            and (row.token_site is None or self.site is None or row.token_site == self.site)
        )


class Pilots:
    def __init__(self, shared: Shared, matching: Matching, max_job_restarts: int) -> None:
        self.shared = shared
        self.matching = matching  # forgets what it kept for pilots that leave
        self.max_job_restarts = max_job_restarts
        self.leases = LeaseBook()  # renewals until the next expiry pass writes them

    def register(
        self, slot: dict[str, Any], glidein_id: str | None, owner: PilotOwner, lease: float
    ) -> str:
        check_slot(slot, self.shared.limits.ads)  # Refused (422): nothing stored
        pilot_id = uuid.uuid4().hex[:16]
        now = time.time()
        with self.shared.engine.begin() as conn:
            conn.execute(  # the statement built once, the values as parameters
                _INSERT_PILOT,
                {
                    "pilot_id": pilot_id,
                    "glidein_id": glidein_id,
                    "frontend": owner.frontend,
                    "group_name": owner.group,
                    "token_subject": owner.subject,
                    "token_entry": owner.entry,
                    "token_site": owner.site,
                    "slot": slot,
                    "state": REGISTERED,
                    "registered_at": now,
                    "last_seen": now,
                    "lease_expires": now + lease,
                    "drain": False,
                    "free": free_from(slot, None),
                    "retiring": False,
                },
            )
            if drained_at(conn, slot, owner.entry, owner.site):  # an entry or site drain holds
                PILOT.check(REGISTERED, DRAINING, PilotCause.DRAIN)
                conn.execute(
                    pilots.update()
                    .where(pilots.c.pilot_id == pilot_id)
                    .values(state=DRAINING, drain=True)
                )
        return pilot_id

    @staticmethod
    def live(conn: Connection, pilot_id: str, owner: PilotOwner | None = None) -> Any:
        """The pilot's row; NotFound (also when `owner` is given and the pilot is
        another's), or PilotGone once it left or was lost."""
        row = conn.execute(_PILOT, {"b_pilot": pilot_id}).first()
        if row is None or (owner is not None and not owner.owns(row)):
            raise NotFound(f"no pilot {pilot_id}")
        if row.state in ENDED_PILOTS:
            raise PilotGone(f"pilot {pilot_id} is {row.state}")
        return row

    def heartbeat(
        self,
        pilot_id: str,
        claim_ids: Sequence[str],
        pilot_lease: float,
        claim_lease: float,
        retiring: bool | None = None,
        owner: PilotOwner | None = None,
    ) -> dict[str, Any]:
        """Renew the pilot's lease and those of the claims it still holds; the
        answer names the others (kill) and whether to drain.

        Only reads: the renewals go to the lease book and the next expiry pass
        writes them all in one batch (leases.py). `retiring` is written only
        when it changes (the agent says it in every heartbeat)."""
        now = time.time()
        with self.shared.engine.connect() as conn:
            pilot = self.live(conn, pilot_id, owner)
            held = self.holding(conn, pilot_id, claim_ids)
        if retiring is not None and bool(pilot.retiring) != retiring:
            with self.shared.engine.begin() as conn:
                conn.execute(
                    pilots.update()
                    .where(pilots.c.pilot_id == pilot_id, pilots.c.state.in_(LIVE_PILOTS))
                    .values(retiring=retiring)
                )
        self.leases.seen(pilot_id, held, now)
        if retiring:
            with self.shared.lock:  # a retiring pilot waits for nothing
                self.matching.unreserve(pilot_id)
        return {
            "lease_seconds": claim_lease,
            "drain": bool(pilot.drain),
            "kill": [c for c in claim_ids if c not in held],
        }

    @staticmethod
    def holding(conn: Connection, pilot_id: str, claim_ids: Sequence[str]) -> set[str]:
        """Which of `claim_ids` this pilot holds (another pilot's is not held here)."""
        if not claim_ids:
            return set()
        found = conn.execute(_HOLDING, {"b_claims": list(claim_ids), "b_pilot": pilot_id})
        return {r[0] for r in found}

    def deregister(self, pilot_id: str, reason: str, owner: PilotOwner | None = None) -> int:
        """The pilot leaves; its jobs go back to idle. Returns how many did."""
        now = time.time()
        shared = self.shared
        with shared.lock:
            moved = []
            with shared.engine.begin() as conn:
                pilot = self.live(conn, pilot_id, owner)
                PILOT.check(pilot.state, LEFT, PilotCause.DEREGISTER)
                conn.execute(
                    pilots.update()
                    .where(pilots.c.pilot_id == pilot_id)
                    .values(state=LEFT, exit_reason=reason, last_seen=now)
                )
                self.matching.forget(pilot_id)
                moved = self._requeue(
                    conn, jobs.c.pilot_id == pilot_id, now, f"pilot left: {reason}"
                )
            for row, new_state in moved:
                shared.moved(row, new_state, now)
        return len(moved)

    def renew_after_restart(self, pilot_lease: float, claim_lease: float) -> tuple[int, int]:
        """At start: a full lease from now for every live pilot and every claim
        whose lease would end sooner; (pilots, claims) renewed.

        While the pool was down no heartbeat could reach it: a lease that ran
        out meanwhile says nothing about its pilot, which kept its jobs running
        and retried (docs/glidein.md, "Outages"). Without this, the first
        expiry pass after a restart declared every pilot lost, requeued its
        running jobs, and the pilot, told it was unknown, killed them. A pilot
        that really died is found one lease later, as any other.
        """
        now = time.time()
        shared = self.shared
        with shared.lock, shared.engine.begin() as conn:
            renewed_pilots = conn.execute(
                pilots.update()
                .where(
                    pilots.c.state.in_(PILOT.sources(PilotCause.EXPIRE)),
                    pilots.c.lease_expires < now + pilot_lease,
                )
                .values(lease_expires=now + pilot_lease)
            ).rowcount
            renewed_claims = conn.execute(
                jobs.update()
                .where(jobs.c.state == EVICTED, jobs.c.lease_expires < now + claim_lease)
                .values(lease_expires=now + claim_lease)
            ).rowcount
        return renewed_pilots, renewed_claims

    def expire_leases(self, pilot_lease: float, claim_lease: float) -> int:
        """Write the renewals noted since the last pass, then requeue the jobs
        of lost pilots and of expired claims and mark silent pilots lost; how
        many jobs were requeued.

        One transaction: a renewal is in the database before the expiry that
        would need it. A pilot inside a long-poll is not lost whatever its
        lease says (it is connected: leases.py); its lease is renewed instead."""
        now = time.time()
        shared = self.shared
        renewals = Renewals()
        try:
            with shared.lock:
                renewals = self.leases.take()  # under the lock: written at once
                with shared.engine.begin() as conn:
                    self._write(conn, renewals, pilot_lease, claim_lease)
                    found = conn.execute(
                        sa.select(pilots.c.pilot_id, pilots.c.last_seen).where(
                            pilots.c.state.in_(_EXPIRES), pilots.c.lease_expires < now
                        )
                    ).all()
                    # asked of the few expired only, after the SELECT: a pilot
                    # connected, or seen since `take`, is not lost
                    book = self.leases
                    lost = [r.pilot_id for r in found if not book.alive(r.pilot_id)]
                    waiting = [r.pilot_id for r in found if book.is_connected(r.pilot_id)]
                    if lost:
                        last = max(r.last_seen for r in found if r.pilot_id in lost)
                        log.info(
                            "%d pilot(s) lost (silent for %.0f s or more, e.g. %s)",
                            len(lost),
                            now - last,
                            lost[0],
                        )
                    if waiting:  # found once per lease: not read again each pass
                        self._write(
                            conn, Renewals(dict.fromkeys(waiting, now)), pilot_lease, claim_lease
                        )
                    moved = []
                    if lost:
                        for pilot_id in lost:
                            self.matching.forget(pilot_id)
                        conn.execute(
                            pilots.update()
                            .where(pilots.c.pilot_id.in_(lost))
                            .values(state=LOST, exit_reason="no heartbeat")
                        )
                        moved = self._requeue(conn, jobs.c.pilot_id.in_(lost), now, "pilot lost")
                    moved += self._requeue(
                        conn,
                        jobs.c.lease_expires < now,
                        now,
                        "claim lease expired",
                        keep=self.leases.claim_seen,  # renewed since `take`
                    )
                for row, new_state in moved:
                    shared.moved(row, new_state, now)
        except BaseException:
            self.leases.give_back(renewals)  # written next pass
            raise
        return len(moved)

    @staticmethod
    def _write(
        conn: Connection, renewals: Renewals, pilot_lease: float, claim_lease: float
    ) -> None:
        """The renewals, one executemany per table (a lease only moves later)."""
        if renewals.pilots:
            conn.execute(
                _RENEW_PILOT,
                [
                    {"b_pilot": p, "b_seen": seen, "b_expires": seen + pilot_lease}
                    for p, seen in renewals.pilots.items()
                ],
            )
        if renewals.claims:
            conn.execute(
                _RENEW_CLAIM,
                [
                    {"b_claim": c, "b_pilot": p, "b_expires": seen + claim_lease}
                    for c, (p, seen) in renewals.claims.items()
                ],
            )

    def _requeue(
        self,
        conn: Connection,
        condition: Any,
        now: float,
        reason: str,
        keep: Callable[[str], bool] | None = None,
    ) -> list[tuple[Any, JobState]]:
        """Running jobs back to idle (or held after too many): site failures.
        `keep(claim_id)`: true for a claim to leave running after all."""
        rows = conn.execute(sa.select(jobs).where(jobs.c.state == EVICTED, condition)).all()
        if keep is not None:
            rows = [r for r in rows if not keep(r.claim_id)]
        moved: list[tuple[Any, JobState]] = []
        for r in rows:
            restarts = r.num_restarts + 1
            too_many = restarts > self.max_job_restarts
            new_state = JobState.HELD if too_many else JobState.IDLE
            JOB.check(EVICTED, new_state, JobCause.EVICT)
            result = conn.execute(
                jobs.update()
                .where(
                    jobs.c.cluster_id == r.cluster_id,
                    jobs.c.proc_id == r.proc_id,
                    jobs.c.state == EVICTED,
                )
                .values(
                    state=new_state,
                    claim_id=None,
                    lease_expires=None,
                    num_restarts=restarts,
                    updated_at=now,
                    hold_reason=(
                        f"site failures {restarts} times (last: {reason})" if too_many else None
                    ),
                    hold_code=HOLD_POLICY if too_many else None,
                )
            )
            if not result.rowcount:
                continue
            moved.append((r, new_state))
            record_event(
                conn,
                r.cluster_id,
                r.proc_id,
                now,
                "evicted",
                {"pilot": r.pilot_id, "reason": reason, "failure": "site"},
            )
            if too_many:
                record_event(
                    conn,
                    r.cluster_id,
                    r.proc_id,
                    now,
                    "held",
                    {
                        "by": "pool",
                        "reason": f"too many site failures ({restarts})",
                        "code": HOLD_POLICY,
                        "failure": "site",
                    },
                )
            else:
                record_event(
                    conn, r.cluster_id, r.proc_id, now, "requeued", {"num_restarts": restarts}
                )
            trim_events(conn, r.cluster_id, r.proc_id, self.shared.limits.max_events_per_job)
        bump(conn, "site_failures", len(moved))
        return moved

    def list_pilots(self, active_only: bool = True) -> list[Any]:
        query = sa.select(pilots)
        if active_only:
            query = query.where(pilots.c.state.in_(LIVE_PILOTS))
        with self.shared.engine.connect() as conn:
            return list(conn.execute(query.order_by(pilots.c.registered_at)).all())

    def busy_pilots(self) -> dict[str, int]:
        with self.shared.engine.connect() as conn:
            return dict(
                conn.execute(
                    sa.select(jobs.c.pilot_id, sa.func.count())
                    .where(jobs.c.state == JobState.RUNNING)
                    .group_by(jobs.c.pilot_id)
                ).all()
            )
