"""What the pool tells frontends and people: demand, job listings, priorities,
counters.

Demand is answered from the in-memory queue index (counts per autocluster and
submitter, queue dates per cluster, running counts), never by scanning the
jobs table: frontends read it every cycle. Per autocluster it also says how
many registered pilots could run one of its jobs (`matching_pilots`), so a
high-memory or GPU job that no pilot fits is visible as such.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from glidewms.pool import concurrency
from glidewms.pool.autoclusters import Autoclusters
from glidewms.pool.jobs import NotFound
from glidewms.pool.lifecycle import PilotState
from glidewms.pool.schema import counters, pilots, usage
from glidewms.pool.shared import Shared
from glidewms.pool.slots import whole_slot


class Reports:
    def __init__(self, shared: Shared, autoclusters: Autoclusters) -> None:
        self.shared = shared
        self.autoclusters = autoclusters
        self._pilot_shapes: dict[str, tuple[int, str, Any]] = {}  # see _pilot_shape

    def demand(self) -> list[dict[str, Any]]:
        """Per autocluster with idle or running jobs: counts, owners, oldest
        queue date, resources per job, and how many pilots could run it.

        Under the store's lock only what claims change is copied (counts,
        queue dates, running counts) and the pilots are matched (that uses
        the matchmaker's caches); the summary is built from the copy outside
        it, so a frontend's read of 10k autoclusters does not stall claims."""
        shared = self.shared
        matchmaker = shared.matchmaker
        with shared.engine.connect() as conn:
            slots = {
                r.pilot_id: r.slot
                for r in conn.execute(
                    sa.select(pilots.c.pilot_id, pilots.c.slot).where(
                        pilots.c.state == PilotState.ACTIVE,
                        pilots.c.retiring.is_(False),
                        pilots.c.drain.is_(False),
                    )
                )
            }
            with shared.lock:
                index = shared.index
                ids = sorted(set(index.counts) | set(index.running))
                self.autoclusters.load_ads(conn, ids)  # first: shapes depend on what they read
                copied = [
                    (
                        ac,
                        {
                            s: (n, dict(index.dates.get((ac, s), {})))
                            for s, n in index.counts.get(ac, {}).items()
                            if n > 0
                        },
                        index.running.get(ac, 0),
                    )
                    for ac in ids
                ]
                owners = {name: state.owner for name, state in shared.accounting.submitters.items()}
                texts, requests = matchmaker.texts, matchmaker.requests
                described = {ac: (texts[ac], dict(requests[ac])) for ac in ids}
                # pilots alike in every attribute an autocluster reads are matched once
                shapes: dict[str, list[Any]] = {}
                for pilot_id, slot in slots.items():
                    shape, ad = self._pilot_shape(pilot_id, slot)
                    shapes.setdefault(shape, [ad, 0])[1] += 1
                for gone in set(self._pilot_shapes) - set(slots):
                    del self._pilot_shapes[gone]
                matching = {
                    ac: sum(
                        n for shape, (ad, n) in shapes.items() if matchmaker.fits(ac, ad, shape)
                    )
                    for ac in ids
                }
        return [
            _demand_entry(ac, per, running, owners, described[ac], matching[ac])
            for ac, per, running in copied
        ]

    def _pilot_shape(self, pilot_id: str, slot: dict[str, Any]) -> tuple[str, Any]:
        """(shape, whole slot ad) of a pilot; a slot never changes, its shape
        only when autoclusters read more attributes."""
        matchmaker = self.shared.matchmaker
        known = self._pilot_shapes.get(pilot_id)
        if known is None or known[0] != matchmaker.version:
            ad = whole_slot(slot)
            known = self._pilot_shapes[pilot_id] = (matchmaker.version, matchmaker.shape(ad), ad)
        return known[1], known[2]

    def userprio(self) -> list[dict[str, Any]]:
        """Every known submitter: usage, cores in use, idle jobs, factor, priority."""
        now = time.time()
        shared = self.shared
        accounting = shared.accounting
        with shared.lock:
            out = [
                {
                    "submitter": name,
                    "owner": state.owner,
                    "group": state.group,
                    "usage": accounting.usage(name, now),
                    "running_cores": state.running,
                    "idle_jobs": max(0, shared.index.idle_of(name)),
                    "factor": accounting.factor(name),
                    "effective_priority": accounting.effective(name, now),
                }
                for name, state in accounting.submitters.items()
            ]
        return sorted(out, key=lambda e: (e["effective_priority"], e["submitter"]))

    def set_usage(self, submitter: str, value: float) -> dict[str, Any]:
        """Set a known submitter's accumulated usage (core-seconds) and save it
        at once; NotFound for a submitter the pool never saw."""
        now = time.time()
        with self.shared.lock:
            if not self.shared.accounting.set_usage(submitter, value, now):
                raise NotFound(f"no submitter {submitter!r} (it never queued a job here)")
        self.flush_usage()
        return next(e for e in self.userprio() if e["submitter"] == submitter)

    def concurrency(self) -> list[dict[str, Any]]:
        """Concurrency limits: per name its limit, what running jobs hold,
        idle jobs that want it and how many of them wait because it is used
        up (concurrency.report). From memory, like demand."""
        shared = self.shared
        matchmaker = shared.matchmaker
        with shared.engine.connect() as conn, shared.lock:
            index = shared.index
            self.autoclusters.load_ads(conn, sorted(set(index.counts) | set(index.running)))
            wanted = {ac: dict(w) for ac, w in matchmaker.limits.items()}
            invalid = set(matchmaker.invalid_limits)
            idle = {ac: sum(max(0, n) for n in index.counts.get(ac, {}).values()) for ac in wanted}
            idle.update(
                {ac: sum(max(0, n) for n in index.counts.get(ac, {}).values()) for ac in invalid}
            )
            used = concurrency.in_use(index.running, wanted)
        return concurrency.report(shared.concurrency, used, idle, wanted, invalid)

    def stats(self) -> dict[str, int]:
        with self.shared.engine.connect() as conn:
            return {
                r.name: int(r.value)
                for r in conn.execute(sa.select(counters))
                if r.name != "cluster"
            }

    def queue_counts(self) -> dict[str, int]:
        """Idle and running jobs, from the in-memory index (no database)."""
        index = self.shared.index
        with self.shared.lock:
            idle = sum(max(0, n) for per in index.counts.values() for n in per.values())
            running = sum(index.running.values())
        return {"idle": idle, "running": running}

    def flush_usage(self) -> int:
        """Persist the usage of submitters that changed (called every lease tick)."""
        now = time.time()
        with self.shared.lock:
            changed = self.shared.accounting.snapshot(now)
        if not changed:
            return 0
        with self.shared.engine.begin() as conn:
            conn.execute(usage.delete().where(usage.c.submitter.in_([c[1] for c in changed])))
            conn.execute(
                usage.insert(),
                [
                    {
                        "submitter": name,
                        "owner": state.owner,
                        "acct_group": state.group,
                        "usage": value,
                        "updated_at": now,
                    }
                    for state, name, value in changed
                ],
            )
        return len(changed)


def _demand_entry(
    ac: int,
    per: dict[str, tuple[int, dict[float, int]]],
    running: int,
    owners_of: dict[str, str],
    described: tuple[str, dict[str, int]],
    matching: int,
) -> dict[str, Any]:
    """One autocluster's demand, from a copy of the index (see demand)."""
    owners: dict[str, int] = {}
    submitters: dict[str, int] = {}
    oldest: float | None = None
    idle = 0
    for submitter, (n, dates) in per.items():
        owner = owners_of.get(submitter, submitter)
        owners[owner] = owners.get(owner, 0) + n
        submitters[submitter] = n
        idle += n
        first = min((d for d, k in dates.items() if k > 0), default=None)
        if first is not None and (oldest is None or first < oldest):
            oldest = first
    return {
        "id": ac,
        "ad": described[0],
        "idle": idle,
        "running": running,
        "owners": owners,
        "submitters": submitters,
        "oldest_idle": oldest,
        "request": described[1],
        "matching_pilots": matching,
    }
