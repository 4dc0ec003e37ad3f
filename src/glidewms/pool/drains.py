"""Operators' drains: a pilot, an entry or a site stops taking new jobs.

HTCondor's `condor_drain` in pilot terms. A *gentle* drain (condor_drain
-graceful) lets the running jobs finish: the pilot takes no new claim (the
turn hands a draining pilot none), learns of the drain in its next heartbeat
answer (`drain: true`) and exits once its last job ended. A *hard* drain also
vacates the running jobs now: they go back to idle as evictions that are
nobody's failure (no `num_restarts`, no `site_failures`: the operator chose
it), the pilot is told to kill their claims in its next heartbeat (`kill`) and
leaves once they are gone.

A drain of an entry (the slot's GLIDEIN_Entry_Name) or a site (GLIDEIN_Site)
holds until it is lifted: a pilot that registers there later is drained at
once (it registers, hears `drain` in its first heartbeat and leaves), so an
operator who drains a site for maintenance need not race the factory. A
pilot's own drain ends with the pilot. Lifting a drain (`undrain`) puts the
pilots it covered and that have not left back to `active`, unless another
drain still covers them; the jobs a hard drain vacated stay requeued.

The pilot state follows the drain (lifecycle.PILOT: active --drain-->
draining --undrain--> active) and so does the row's `drain` flag, which the
turn and the heartbeat read: no query is added to a turn.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from glidewms.pool.choosing import Matching
from glidewms.pool.jobs import NotFound
from glidewms.pool.lifecycle import (
    JOB,
    LIVE_PILOTS,
    PILOT,
    JobCause,
    JobState,
    PilotCause,
)
from glidewms.pool.schema import drains, jobs, pilots
from glidewms.pool.shared import Shared, record_event, trim_events

KINDS = ("pilot", "entry", "site")
# The slot attribute that names a pilot's entry and site (the registration
# checks them against the pilot's token where the token names them).
SLOT_ATTRIBUTE = {"entry": "GLIDEIN_Entry_Name", "site": "GLIDEIN_Site"}
DRAINED = PILOT.target(PilotCause.DRAIN)
UNDRAINED = PILOT.target(PilotCause.UNDRAIN)
VACATED = JOB.source(JobCause.EVICT)


@dataclass(frozen=True)
class Target:
    """What a drain is about: kind (pilot, entry, site) and its name."""

    kind: str
    name: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"a drain is of a pilot, an entry or a site, not {self.kind!r}")

    def covers(self, row: Any) -> bool:
        """Does this target name the pilot of this row?"""
        if self.kind == "pilot":
            return bool(row.pilot_id == self.name)
        return place_of(row, self.kind) == self.name


def place_of(row: Any, kind: str) -> str | None:
    """The pilot's entry or site: its slot ad's, else its token's."""
    slot = row.slot if isinstance(row.slot, dict) else {}
    value = slot.get(SLOT_ATTRIBUTE[kind])
    if isinstance(value, str):
        return value
    token = row.token_entry if kind == "entry" else row.token_site
    return None if token is None else str(token)


def covering(rows: Iterable[Any], pilot: Any) -> Any | None:
    """The first drain row (kind, name, ...) that covers `pilot`, if any."""
    for d in rows:
        if Target(d.kind, d.name).covers(pilot):
            return d
    return None


def drained_at(conn: Connection, slot: dict[str, Any], owner_entry: Any, owner_site: Any) -> bool:
    """Is an entry or a site drain holding where a pilot with this slot registers?"""
    entry = slot.get(SLOT_ATTRIBUTE["entry"], owner_entry)
    site = slot.get(SLOT_ATTRIBUTE["site"], owner_site)
    if entry is None and site is None:
        return False
    found = conn.execute(  # a name that is None (NULL) matches no drain
        _DRAINED_AT,
        {
            "b_entry": None if entry is None else str(entry),
            "b_site": None if site is None else str(site),
        },
    )
    return found.first() is not None


# Every registration asks it: built once (building it per call cost more than running it).
_DRAINED_AT = (
    sa.select(drains.c.kind)
    .where(
        sa.or_(
            sa.and_(drains.c.kind == "entry", drains.c.name == sa.bindparam("b_entry")),
            sa.and_(drains.c.kind == "site", drains.c.name == sa.bindparam("b_site")),
        )
    )
    .limit(1)
)


class Drains:
    """Drain and undrain pilots, entries and sites; list the drains."""

    def __init__(self, shared: Shared, matching: Matching) -> None:
        self.shared = shared
        self.matching = matching  # a draining pilot keeps no reservation

    def drain(self, target: Target, hard: bool, reason: str, by: str) -> dict[str, Any]:
        """Drain the target's live pilots (and, for an entry or site, those to come).

        Returns the pilots drained now and the jobs vacated (hard). A pilot
        that is unknown or gone cannot be drained: NotFound.
        """
        now = time.time()
        shared = self.shared
        moved: list[Any] = []
        with shared.lock:
            with shared.engine.begin() as conn:
                live = self._live(conn)
                if target.kind == "pilot" and not any(target.covers(p) for p in live):
                    raise NotFound(f"no live pilot {target.name}")
                self._forget_ended(conn, {p.pilot_id for p in live})
                conn.execute(
                    drains.delete().where(
                        drains.c.kind == target.kind, drains.c.name == target.name
                    )
                )
                conn.execute(
                    drains.insert().values(
                        kind=target.kind,
                        name=target.name,
                        hard=hard,
                        reason=reason,
                        by=by,
                        created_at=now,
                    )
                )
                chosen = [p for p in live if target.covers(p)]
                newly = [p.pilot_id for p in chosen if p.state != DRAINED]
                for p in chosen:
                    if p.state != DRAINED:
                        PILOT.check(p.state, DRAINED, PilotCause.DRAIN)
                if newly:
                    conn.execute(
                        pilots.update()
                        .where(pilots.c.pilot_id.in_(newly), pilots.c.state.in_(LIVE_PILOTS))
                        .values(state=DRAINED, drain=True)
                    )
                for p in chosen:
                    self.matching.unreserve(p.pilot_id)
                if hard and chosen:
                    moved = self._vacate(
                        conn, [p.pilot_id for p in chosen], now, _why(target, reason)
                    )
            for row in moved:
                shared.moved(row, JobState.IDLE, now)
        return {
            "kind": target.kind,
            "name": target.name,
            "hard": hard,
            "reason": reason,
            "pilots": sorted(p.pilot_id for p in chosen),
            "vacated": [f"{r.cluster_id}.{r.proc_id}" for r in moved],
        }

    def undrain(self, target: Target) -> dict[str, Any]:
        """Lift a drain: its pilots not yet gone take jobs again, unless another
        drain covers them. NotFound if no such drain holds."""
        shared = self.shared
        with shared.lock, shared.engine.begin() as conn:
            removed = conn.execute(
                drains.delete().where(drains.c.kind == target.kind, drains.c.name == target.name)
            ).rowcount
            if not removed:
                raise NotFound(f"no drain of {target.kind} {target.name}")
            left = conn.execute(sa.select(drains)).all()
            back = [
                p.pilot_id
                for p in self._live(conn)
                if p.state == DRAINED and target.covers(p) and covering(left, p) is None
            ]
            if back:
                PILOT.check(DRAINED, UNDRAINED, PilotCause.UNDRAIN)
                conn.execute(
                    pilots.update()
                    .where(pilots.c.pilot_id.in_(back), pilots.c.state == DRAINED)
                    .values(state=UNDRAINED, drain=False)
                )
        return {"kind": target.kind, "name": target.name, "pilots": sorted(back)}

    def list_drains(self) -> list[dict[str, Any]]:
        """Every drain that holds, with the live pilots it covers."""
        with self.shared.engine.connect() as conn:
            live = self._live(conn)
            rows = conn.execute(sa.select(drains).order_by(drains.c.created_at)).all()
        out = []
        for d in rows:
            target = Target(d.kind, d.name)
            covered = sorted(p.pilot_id for p in live if target.covers(p))
            if d.kind == "pilot" and not covered:
                continue  # that pilot left: its drain ended with it
            out.append(
                {
                    "kind": d.kind,
                    "name": d.name,
                    "hard": bool(d.hard),
                    "reason": d.reason,
                    "by": d.by,
                    "since": d.created_at,
                    "pilots": covered,
                }
            )
        return out

    @staticmethod
    def _live(conn: Connection) -> list[Any]:
        return list(
            conn.execute(
                sa.select(
                    pilots.c.pilot_id,
                    pilots.c.state,
                    pilots.c.slot,
                    pilots.c.token_entry,
                    pilots.c.token_site,
                ).where(pilots.c.state.in_(LIVE_PILOTS))
            ).all()
        )

    @staticmethod
    def _forget_ended(conn: Connection, live: set[str]) -> None:
        """Pilot drains whose pilot left end with it."""
        ended = [
            r[0]
            for r in conn.execute(sa.select(drains.c.name).where(drains.c.kind == "pilot"))
            if r[0] not in live
        ]
        if ended:
            conn.execute(drains.delete().where(drains.c.kind == "pilot", drains.c.name.in_(ended)))

    def _vacate(self, conn: Connection, pilot_ids: list[str], now: float, reason: str) -> list[Any]:
        """The running jobs of these pilots back to idle: evicted, nobody's failure."""
        rows = conn.execute(
            sa.select(jobs).where(jobs.c.state == VACATED, jobs.c.pilot_id.in_(pilot_ids))
        ).all()
        moved = []
        for r in rows:
            JOB.check(VACATED, JobState.IDLE, JobCause.EVICT)
            done = conn.execute(
                jobs.update()
                .where(
                    jobs.c.cluster_id == r.cluster_id,
                    jobs.c.proc_id == r.proc_id,
                    jobs.c.state == VACATED,
                )
                .values(state=JobState.IDLE, claim_id=None, lease_expires=None, updated_at=now)
            ).rowcount
            if not done:
                continue
            moved.append(r)
            record_event(
                conn,
                r.cluster_id,
                r.proc_id,
                now,
                "evicted",
                {"pilot": r.pilot_id, "reason": reason, "failure": "none"},
            )
            record_event(
                conn, r.cluster_id, r.proc_id, now, "requeued", {"num_restarts": r.num_restarts}
            )
            trim_events(conn, r.cluster_id, r.proc_id, self.shared.limits.max_events_per_job)
        return moved


def _why(target: Target, reason: str) -> str:
    text = f"hard drain of {target.kind} {target.name}"
    return f"{text}: {reason}" if reason else text
