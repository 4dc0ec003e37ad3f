"""The pilot side of the pool's store: register, claim, heartbeat, complete,
leave, and the leases that requeue work when a pilot goes silent.

A mixin of `PoolStore` (store.py holds the job side); split only to keep each
module readable. Failures are told apart here: a job whose pilot was lost,
left, or let its lease run out is a *site* failure (evicted, requeued, and
held after `max_job_restarts`); a job that ran and exited non-zero is a
*job* failure (completed, with its exit code). Both are recorded in the job's
events and in the pool's counters.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from glidewms import classads
from glidewms.pool.fairshare import Accounting
from glidewms.pool.jobs import (
    HOLD_POLICY,
    NotFound,
    PilotGone,
)
from glidewms.pool.matchmaker import Matchmaker
from glidewms.pool.queue_index import IdleIndex
from glidewms.pool.schema import jobs, pilots

RESOURCES = (("cpus", "Cpus"), ("memory", "Memory"), ("disk", "Disk"), ("gpus", "GPUs"))
_PILOT = sa.select(pilots).where(pilots.c.pilot_id == sa.bindparam("b_pilot"))  # every turn


def slot_with(slot: Mapping[str, Any], resources: Mapping[str, int]) -> Any:
    """The pilot's slot ad offering `resources` (its free ones, or all)."""
    ad = classads.ad_from_dict(slot)
    for key, attr in RESOURCES:
        ad[attr] = resources[key]
    start = slot.get("GLIDEIN_Start")
    if isinstance(start, str) and start.strip():
        # The frontend's start expression travels as a string attribute (slot
        # ads are JSON); here it becomes the slot's real Start expression.
        try:
            ad["Start"] = classads.parse_expr(start)
        except classads.ClassAdError:
            ad["Start"] = False  # a pilot with a broken policy must not take jobs
    return ad


class SlotAds:
    """The slot ads a pilot's turns match, with their shapes, each built once.

    A turn that hands out 9 jobs matches ~17 slot ads (the free resources
    left after each choice, and the whole slot), and building a ClassAd from
    the slot's dict and hashing its shape cost more than the rest of a
    choice. A pilot offers the same few combinations of resources turn after
    turn, so (ad, shape) are kept per pilot and resources, and dropped when
    the pilot's slot is not equal to the one they were built from, or when
    autoclusters read more slot attributes (the matchmaker's `version`: the
    shape changes). The ad does not depend on the clock; a slot whose
    expressions do keeps its ``!`` shape, which the matchmaker never caches
    answers for. Bounded: cleared when full."""

    def __init__(self, matchmaker: Matchmaker, pilots: int = 10_000, per_pilot: int = 64) -> None:
        self.matchmaker = matchmaker
        self._pilots, self._per_pilot = pilots, per_pilot
        # pilot id -> (its slot, matchmaker version, {resources: (ad, shape)})
        self._known: dict[str, tuple[Mapping[str, Any], int,
                                     dict[tuple[int, ...], tuple[Any, str]]]] = {}

    def get(self, pilot_id: str, slot: Mapping[str, Any],
            resources: Mapping[str, int]) -> tuple[Any, str]:
        """(slot ad offering `resources`, its shape), as slot_with and shape give."""
        version = self.matchmaker.version
        known = self._known.get(pilot_id)
        if known is None or known[1] != version or known[0] != slot:
            if len(self._known) >= self._pilots:
                self._known.clear()
            known = self._known[pilot_id] = (slot, version, {})
        key = (resources["cpus"], resources["memory"], resources["disk"], resources["gpus"])
        found = known[2].get(key)
        if found is None:
            if len(known[2]) >= self._per_pilot:
                known[2].clear()
            ad = slot_with(slot, resources)
            found = known[2][key] = (ad, self.matchmaker.shape(ad))
        return found

    def forget(self, pilot_id: str) -> None:
        self._known.pop(pilot_id, None)


def whole_slot(slot: Mapping[str, Any]) -> Any:
    """The slot ad with all its resources, as if none were in use."""
    return slot_with(slot, free_from(slot, None))


def free_from(slot: Mapping[str, Any], reported: Mapping[str, float] | None) -> dict[str, int]:
    """The pilot's free resources: what it reported, else its slot's totals."""
    out = {}
    for key, attr in RESOURCES:
        value = (reported or {}).get(key)
        if value is None:
            value = slot.get(attr, 1 if key == "cpus" else 0)
        try:
            out[key] = int(value)
        except (TypeError, ValueError):
            out[key] = 0
    return out


class PilotsMixin:
    engine: Engine
    index: IdleIndex
    accounting: Accounting
    max_job_restarts: int
    reserve_for_large_jobs: bool
    reservations: dict[str, tuple[int, str, int]]
    empty_free: dict[str, dict[str, int]]
    slot_ads: SlotAds
    _lock: threading.Lock

    if TYPE_CHECKING:  # provided by PoolStore and its other mixins
        def _choose(self, conn: Connection, pilot_id: str, slot: Mapping[str, Any],
                    free: Mapping[str, int], whole: Mapping[str, int] | None,
                    now: float) -> Any: ...
        def _event(self, conn: Connection, cluster_id: int, proc_id: int, now: float, kind: str,
                   detail: dict[str, Any] | None = None) -> None: ...
        def _bump(self, conn: Connection, name: str, n: int = 1) -> None: ...
        def cycle(self, pilot_id: str, completions: Sequence[Any], free: Mapping[str, float],
                  lease: float, max_jobs: int, now: float
                  ) -> tuple[dict[str, bool], list[dict[str, Any]], int]: ...
        def _left(self, row: Any, now: float) -> None: ...
        def _became_idle(self, ac: int, submitter: str, prio: int, q_date: float,
                         cluster_id: int, proc_id: int) -> None: ...

    def register_pilot(self, slot: dict[str, Any], glidein_id: str | None,
                       frontend: str | None, group: str | None, lease: float) -> str:
        pilot_id = uuid.uuid4().hex[:16]
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(pilots.insert().values(
                pilot_id=pilot_id, glidein_id=glidein_id, frontend=frontend,
                group_name=group, slot=slot, state="active", registered_at=now,
                last_seen=now, lease_expires=now + lease, drain=False,
                free=free_from(slot, None), retiring=False))
        return pilot_id

    def _pilot(self, conn: Connection, pilot_id: str) -> Any:
        row = conn.execute(_PILOT, {"b_pilot": pilot_id}).first()
        if row is None:
            raise NotFound(f"no pilot {pilot_id}")
        if row.state in ("gone", "lost"):
            raise PilotGone(f"pilot {pilot_id} is {row.state}")
        return row

    def claim(self, pilot_id: str, free: dict[str, float], lease: float) -> dict[str, Any] | None:
        """Hand the best matching idle job to this pilot, or None.

        None also when the pilot is reserved for a larger job that will fit
        once some of its running jobs end (see PoolStore._choose).
        """
        found = self.claim_many(pilot_id, free, lease, 1)
        return found[0] if found else None

    def claim_many(self, pilot_id: str, free: dict[str, float], lease: float,
                   max_jobs: int) -> list[dict[str, Any]]:
        """Up to ``max_jobs`` claims for this pilot, as that many single claims in a row
        would give, in one transaction (see cycle.py)."""
        return self.cycle(pilot_id, (), free, lease, max_jobs, time.time())[1]

    @staticmethod
    def _runs_jobs(conn: Connection, pilot_id: str) -> bool:
        return conn.execute(sa.select(jobs.c.claim_id).where(
            jobs.c.pilot_id == pilot_id, jobs.c.state == "running").limit(1)).first() is not None

    def heartbeat(self, pilot_id: str, claim_ids: Sequence[str], pilot_lease: float,
                  claim_lease: float, retiring: bool | None = None) -> dict[str, Any]:
        now = time.time()
        if retiring:
            with self._lock:  # a retiring pilot waits for nothing
                self.reservations.pop(pilot_id, None)
        with self.engine.begin() as conn:
            pilot = self._pilot(conn, pilot_id)
            values: dict[str, Any] = {"last_seen": now, "lease_expires": now + pilot_lease}
            if retiring is not None:
                values["retiring"] = retiring
            conn.execute(pilots.update().where(pilots.c.pilot_id == pilot_id).values(**values))
            held = set()
            if claim_ids:
                conn.execute(
                    jobs.update()
                    .where(jobs.c.claim_id.in_(list(claim_ids)), jobs.c.pilot_id == pilot_id,
                           jobs.c.state == "running")
                    .values(lease_expires=now + claim_lease))
                held = {r[0] for r in conn.execute(
                    sa.select(jobs.c.claim_id).where(jobs.c.claim_id.in_(list(claim_ids)),
                                                     jobs.c.state == "running"))}
        return {"lease_seconds": claim_lease, "drain": bool(pilot.drain),
                "kill": [c for c in claim_ids if c not in held]}

    def deregister(self, pilot_id: str, reason: str) -> None:
        now = time.time()
        with self._lock:
            moved = []
            with self.engine.begin() as conn:
                self._pilot(conn, pilot_id)
                conn.execute(pilots.update().where(pilots.c.pilot_id == pilot_id)
                             .values(state="gone", exit_reason=reason, last_seen=now))
                self.reservations.pop(pilot_id, None)
                self.empty_free.pop(pilot_id, None)
                self.slot_ads.forget(pilot_id)
                moved = self._requeue(conn, jobs.c.pilot_id == pilot_id, now,
                                      f"pilot left: {reason}")
            self._after_requeue(moved, now)

    def expire_leases(self) -> int:
        """Requeue the jobs of lost pilots and of expired claims; mark silent pilots lost."""
        now = time.time()
        with self._lock:
            with self.engine.begin() as conn:
                lost = [r[0] for r in conn.execute(
                    sa.select(pilots.c.pilot_id)
                    .where(pilots.c.state.in_(("active", "draining")),
                           pilots.c.lease_expires < now))]
                moved = []
                if lost:
                    for pilot_id in lost:
                        self.reservations.pop(pilot_id, None)
                        self.empty_free.pop(pilot_id, None)
                        self.slot_ads.forget(pilot_id)
                    conn.execute(pilots.update().where(pilots.c.pilot_id.in_(lost))
                                 .values(state="lost", exit_reason="no heartbeat"))
                    moved = self._requeue(conn, jobs.c.pilot_id.in_(lost), now, "pilot lost")
                moved += self._requeue(conn, jobs.c.lease_expires < now, now,
                                       "claim lease expired")
            self._after_requeue(moved, now)
        return len(moved)

    def _requeue(self, conn: Connection, condition: Any, now: float,
                 reason: str) -> list[tuple[Any, str]]:
        """Running jobs back to idle (or held after too many): site failures."""
        rows = conn.execute(sa.select(jobs).where(jobs.c.state == "running", condition)).all()
        moved = []
        for r in rows:
            restarts = r.num_restarts + 1
            too_many = restarts > self.max_job_restarts
            new_state = "held" if too_many else "idle"
            result = conn.execute(
                jobs.update()
                .where(jobs.c.cluster_id == r.cluster_id, jobs.c.proc_id == r.proc_id,
                       jobs.c.state == "running")
                .values(state=new_state, claim_id=None, lease_expires=None,
                        num_restarts=restarts, updated_at=now,
                        hold_reason=(f"site failures {restarts} times (last: {reason})"
                                     if too_many else None),
                        hold_code=HOLD_POLICY if too_many else None))
            if not result.rowcount:
                continue
            moved.append((r, new_state))
            self._event(conn, r.cluster_id, r.proc_id, now, "evicted",
                        {"pilot": r.pilot_id, "reason": reason, "failure": "site"})
            if too_many:
                self._event(conn, r.cluster_id, r.proc_id, now, "held",
                            {"by": "pool", "reason": f"too many site failures ({restarts})",
                             "code": HOLD_POLICY, "failure": "site"})
            else:
                self._event(conn, r.cluster_id, r.proc_id, now, "requeued",
                            {"num_restarts": restarts})
        self._bump(conn, "site_failures", len(moved))
        return moved

    def _after_requeue(self, moved: list[tuple[Any, str]], now: float) -> None:
        for row, new_state in moved:
            self._left(row, now)
            if new_state == "idle":
                self._became_idle(row.autocluster_id, row.submitter, row.prio, row.q_date,
                                  row.cluster_id, row.proc_id)

    def list_pilots(self, active_only: bool = True) -> list[Any]:
        query = sa.select(pilots)
        if active_only:
            query = query.where(pilots.c.state.in_(("active", "draining")))
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(pilots.c.registered_at)).all())

    def busy_pilots(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return dict(conn.execute(
                sa.select(jobs.c.pilot_id, sa.func.count())
                .where(jobs.c.state == "running").group_by(jobs.c.pilot_id)
            ).all())
