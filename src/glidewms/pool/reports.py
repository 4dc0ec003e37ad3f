"""What the pool tells frontends and people: demand, job listings, priorities,
counters. A mixin of `PoolStore`, split out to keep each module readable.

Demand is answered from the in-memory queue index (counts per autocluster and
submitter, queue dates per cluster, running counts), never by scanning the
jobs table: frontends read it every cycle. Per autocluster it also says how
many registered pilots could run one of its jobs (`matching_pilots`), so a
high-memory or GPU job that no pilot fits is visible as such.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from glidewms import classads
from glidewms.pool import listing
from glidewms.pool.fairshare import Accounting
from glidewms.pool.jobs import TERMINAL, split_job_id
from glidewms.pool.matchmaker import Matchmaker
from glidewms.pool.pilots import whole_slot
from glidewms.pool.queue_index import IdleIndex
from glidewms.pool.schema import counters, jobs, pilots, usage


class ReportsMixin:
    engine: Engine
    index: IdleIndex
    accounting: Accounting
    matchmaker: Matchmaker
    _pilot_shapes: dict[str, tuple[int, str, Any]]
    _lock: threading.Lock

    if TYPE_CHECKING:  # provided by ChoosingMixin
        def _autocluster_ads(self, conn: Connection, ids: list[int]) -> dict[int, Any]: ...

    def demand(self) -> list[dict[str, Any]]:
        """Per autocluster with idle or running jobs: counts, owners, oldest
        queue date, resources per job, and how many pilots could run it.

        Under the store's lock only what claims change is copied (counts,
        queue dates, running counts) and the pilots are matched (that uses
        the matchmaker's caches); the summary is built from the copy outside
        it, so a frontend's read of 10k autoclusters does not stall claims."""
        with self.engine.connect() as conn:
            slots = {r.pilot_id: r.slot for r in conn.execute(
                sa.select(pilots.c.pilot_id, pilots.c.slot).where(
                    pilots.c.state == "active", pilots.c.retiring.is_(False),
                    pilots.c.drain.is_(False)))}
            with self._lock:
                index = self.index
                ids = sorted(set(index.counts) | set(index.running))
                self._autocluster_ads(conn, ids)  # first: shapes depend on what they read
                copied = [(ac, {s: (n, dict(index.dates.get((ac, s), {})))
                                for s, n in index.counts.get(ac, {}).items() if n > 0},
                           index.running.get(ac, 0)) for ac in ids]
                owners = {name: state.owner for name, state in
                          self.accounting.submitters.items()}
                texts, requests = self.matchmaker.texts, self.matchmaker.requests
                described = {ac: (texts[ac], dict(requests[ac])) for ac in ids}
                # pilots alike in every attribute an autocluster reads are matched once
                shapes: dict[str, list[Any]] = {}
                for pilot_id, slot in slots.items():
                    shape, ad = self._pilot_shape(pilot_id, slot)
                    shapes.setdefault(shape, [ad, 0])[1] += 1
                for gone in set(self._pilot_shapes) - set(slots):
                    del self._pilot_shapes[gone]
                matching = {ac: sum(n for shape, (ad, n) in shapes.items()
                                    if self.matchmaker.fits(ac, ad, shape)) for ac in ids}
        return [_demand_entry(ac, per, running, owners, described[ac], matching[ac])
                for ac, per, running in copied]

    def _pilot_shape(self, pilot_id: str, slot: dict[str, Any]) -> tuple[str, Any]:
        """(shape, whole slot ad) of a pilot; a slot never changes, its shape
        only when autoclusters read more attributes."""
        known = self._pilot_shapes.get(pilot_id)
        if known is None or known[0] != self.matchmaker.version:
            ad = whole_slot(slot)
            known = self._pilot_shapes[pilot_id] = (self.matchmaker.version,
                                                    self.matchmaker.shape(ad), ad)
        return known[1], known[2]

    def list_jobs(self, constraint: str | None = None, history: bool = False,
                  job_ids: Iterable[str] | None = None) -> list[tuple[Any, str]]:
        """(row, full ad text) of matching jobs; `history` selects finished ones.

        No ad is parsed without a constraint; with one, each distinct ad (the
        jobs of a cluster differ only in ProcId) is parsed once.
        """
        expr = classads.parse_expr(constraint) if constraint else None
        query = sa.select(jobs)
        if job_ids is not None:
            pairs = [split_job_id(j) for j in job_ids]
            if not pairs:
                return []
            query = query.where(sa.tuple_(jobs.c.cluster_id, jobs.c.proc_id).in_(pairs))
        elif history:
            query = query.where(jobs.c.state.in_(TERMINAL))
        else:
            query = query.where(jobs.c.state.notin_(TERMINAL))
        query = query.order_by(jobs.c.cluster_id, jobs.c.proc_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        if expr is None:
            return [(row, listing.ad_text(row)) for row in rows]
        ads = listing.AdCache()
        return [(row, listing.ad_text(row)) for row in rows
                if classads.constraint_matches(expr, ads.full_ad(row))]

    def userprio(self) -> list[dict[str, Any]]:
        """Every known submitter: usage, cores in use, idle jobs, factor, priority."""
        now = time.time()
        with self._lock:
            out = [{"submitter": name, "owner": state.owner, "group": state.group,
                    "usage": self.accounting.usage(name, now), "running_cores": state.running,
                    "idle_jobs": max(0, self.index.idle_of(name)),
                    "factor": self.accounting.factor(name),
                    "effective_priority": self.accounting.effective(name, now)}
                   for name, state in self.accounting.submitters.items()]
        return sorted(out, key=lambda e: (e["effective_priority"], e["submitter"]))

    def stats(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {r.name: int(r.value) for r in conn.execute(sa.select(counters))
                    if r.name != "cluster"}

    def queue_counts(self) -> dict[str, int]:
        """Idle and running jobs, from the in-memory index (no database)."""
        with self._lock:
            idle = sum(max(0, n) for per in self.index.counts.values() for n in per.values())
            running = sum(self.index.running.values())
        return {"idle": idle, "running": running}

    def flush_usage(self) -> int:
        """Persist the usage of submitters that changed (called every lease tick)."""
        now = time.time()
        with self._lock:
            changed = self.accounting.snapshot(now)
        if not changed:
            return 0
        with self.engine.begin() as conn:
            conn.execute(usage.delete().where(usage.c.submitter.in_([c[1] for c in changed])))
            conn.execute(usage.insert(), [
                {"submitter": name, "owner": state.owner, "acct_group": state.group,
                 "usage": value, "updated_at": now} for state, name, value in changed])
        return len(changed)


def _demand_entry(ac: int, per: dict[str, tuple[int, dict[float, int]]], running: int,
                  owners_of: dict[str, str], described: tuple[str, dict[str, int]],
                  matching: int) -> dict[str, Any]:
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
    return {"id": ac, "ad": described[0], "idle": idle, "running": running,
            "owners": owners, "submitters": submitters, "oldest_idle": oldest,
            "request": described[1], "matching_pilots": matching}
