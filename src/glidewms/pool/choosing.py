"""Which job a pilot gets: the matching side of `PoolStore` (a mixin, split
out to keep each module readable).

Work per claim is per submitter with idle work the slot can run, not per job
and, once a slot shape has been seen, not per autocluster either: what a
shape can run is remembered until an (autocluster, submitter) pair gets idle
jobs again (the index's epoch); pairs that run out are skipped meanwhile.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from glidewms.pool.fairshare import Accounting
from glidewms.pool.matchmaker import Matchmaker
from glidewms.pool.pilots import SlotAds
from glidewms.pool.queue_index import IdleIndex, head_key
from glidewms.pool.schema import autoclusters, jobs

CHOICE_CACHE_LIMIT = 10_000
PREFETCH = 64  # idle jobs of a pair read per seek (IdleIndex.upcoming)


class ChoosingMixin:
    index: IdleIndex
    accounting: Accounting
    matchmaker: Matchmaker
    reservations: dict[str, tuple[int, str, int]]
    _reservation_order: itertools.count[int]
    _choices: dict[str, tuple[int, dict[int, float], dict[str, Any]]]
    _loaded_epoch: int
    _lock: threading.Lock
    _turn_taken: set[tuple[int, int]]  # see _head
    slot_ads: SlotAds

    def _head(self, conn: Connection, ac: int, submitter: str) -> Any:
        """The pair's best idle job, read with the next ones when not cached.

        Jobs a pilot turn has chosen but not yet marked running (cycle.py
        marks a whole turn with one UPDATE at its end) are still idle in the
        database: `_turn_taken` names them, and they are skipped."""
        cached = self.index.heads.get((ac, submitter))
        if cached is not None:
            return cached
        taken = self._turn_taken
        row = conn.execute(
            sa.select(jobs.c.prio, jobs.c.q_date, jobs.c.cluster_id, jobs.c.proc_id)
            .where(jobs.c.state == "idle", jobs.c.autocluster_id == ac,
                   jobs.c.submitter == submitter)
            .order_by(jobs.c.prio.desc(), jobs.c.q_date, jobs.c.cluster_id, jobs.c.proc_id)
            .limit((PREFETCH if (ac, submitter) in self.index.streaming else 1)
                   + len(taken))).all()
        keys = [head_key(r.prio, r.q_date, r.cluster_id, r.proc_id) for r in row
                if (r.cluster_id, r.proc_id) not in taken]
        if not keys:
            return None
        self.index.set_heads(ac, submitter, keys)
        return keys[0]

    def _choose(self, conn: Connection, pilot_id: str, slot: Mapping[str, Any],
                free: Mapping[str, int], whole: Mapping[str, int] | None,
                now: float) -> tuple[str, int, str, Any] | None:
        """What this pilot should do: ("claim", autocluster, submitter, head key)
        of the job to run now, ("reserve", autocluster, submitter, None) to
        take nothing while its running jobs end, or None when nothing matches.

        Order: the submitter with the best effective priority among those with
        a matching idle job; then the slot's Rank; then JobPrio; then FIFO.
        `slot` is the pilot's slot (its dict), offering `free`; `whole`
        (given when the pilot runs jobs) is all of its resources. A job that
        fits `whole` but not `free`, and comes first in that order, is not
        passed over for a smaller one: the pilot is reserved for it, unless
        enough other pilots already are (one per idle job). So a large job is
        never starved by a stream of small ones on partitionable pilots, and
        no more pilots wait than jobs.
        """
        fits_now, by_now = self._candidates(conn, pilot_id, slot, free)
        fits_whole, by_whole = (self._candidates(conn, pilot_id, slot, whole)
                                if whole is not None else ({}, {}))
        submitters = set(by_now) | set(by_whole)
        while submitters:
            submitter = self.accounting.best(submitters, now)
            assert submitter is not None
            submitters.discard(submitter)
            options = by_whole.get(submitter, [])
            if by_now.get(submitter):
                options = options + [o for o in by_now[submitter] if o[1] not in fits_whole]
            heads, counts, ranked = self.index.heads, self.index.counts, []
            for neg_rank, ac in options:
                if counts.get(ac, {}).get(submitter, 0) <= 0:
                    continue  # ran out since this list was made
                key = heads.get((ac, submitter))
                if key is None:
                    key = self._head(conn, ac, submitter)
                if key is not None:
                    ranked.append((neg_rank, key, ac))
            if not ranked:
                continue
            _, key, ac = min(ranked)
            if ac in fits_now:  # the usual case: the best one fits now
                return "claim", ac, submitter, key
            for _, key, ac in sorted(ranked):
                if ac in fits_now:
                    return "claim", ac, submitter, key
                if self._may_reserve(pilot_id, ac, submitter):
                    return "reserve", ac, submitter, None
        return None

    def _candidates(self, conn: Connection, pilot_id: str, slot: Mapping[str, Any],
                    resources: Mapping[str, int]
                    ) -> tuple[dict[int, float], dict[str, list[tuple[float, int]]]]:
        """({autocluster: slot Rank}, {submitter: [(-Rank, autocluster)]}) of the
        idle work this slot offering `resources` can run (its ad and shape
        from `slot_ads`), remembered per slot shape until an
        (autocluster, submitter) gets idle jobs again: a claim then costs work
        per submitter and its autoclusters, not per autocluster of the pool.
        Pairs that ran out of idle jobs stay listed until then; the caller
        skips them. Nothing is remembered while a slot or an autocluster with
        idle jobs reads the clock: an overflow Start must say yes once the
        jobs have waited long enough."""
        epoch = self.index.epoch
        if self._loaded_epoch != epoch:  # ads first: a shape depends on what they read
            self._autocluster_ads(conn, list(self.index.counts))
            self._loaded_epoch = epoch
        ad, shape = self.slot_ads.get(pilot_id, slot, resources)
        counts = self.index.counts
        # an answer that reads the clock is never reused (see matchmaker.py)
        clocked = shape.startswith("!") or any(ac in counts for ac in self.matchmaker.volatile_ids)
        hit = None if clocked else self._choices.get(shape)
        if hit is not None and hit[0] == epoch:
            return hit[1], hit[2]
        ads = self.matchmaker.ads
        ranked = dict(self.matchmaker.ranked(ad, {ac: ads[ac] for ac in self.index.counts},
                                             shape))
        by_submitter: dict[str, list[tuple[float, int]]] = {}
        for ac, rank in ranked.items():
            for submitter, _ in self.index.submitters(ac):
                by_submitter.setdefault(submitter, []).append((-rank, ac))
        if not clocked:
            if len(self._choices) > CHOICE_CACHE_LIMIT:
                self._choices.clear()
            self._choices[shape] = (epoch, ranked, by_submitter)
        return ranked, by_submitter

    def _may_reserve(self, pilot_id: str, ac: int, submitter: str) -> bool:
        """Reserve this pilot for (ac, submitter) unless as many pilots that
        reserved earlier already wait for its idle jobs."""
        mine = self.reservations.get(pilot_id)
        order = mine[2] if mine and mine[:2] == (ac, submitter) \
            else next(self._reservation_order)
        earlier = sum(1 for other, (a, s, o) in self.reservations.items()
                      if other != pilot_id and a == ac and s == submitter and o < order)
        if earlier >= self.index.idle(ac, submitter):
            return False
        self.reservations[pilot_id] = (ac, submitter, order)
        return True

    def _autocluster_ads(self, conn: Connection, ids: list[int]) -> dict[int, Any]:
        missing = [i for i in ids if i not in self.matchmaker.ads]
        if missing:
            for r in conn.execute(sa.select(autoclusters.c.id, autoclusters.c.ad)
                                  .where(autoclusters.c.id.in_(missing))):
                self.matchmaker.remember(r.id, r.ad)
        return {i: self.matchmaker.ads[i] for i in ids}
