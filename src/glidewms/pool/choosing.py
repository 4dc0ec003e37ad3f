"""Which jobs a pilot gets: matchmaking, fair share and reservations.

Work per claim is per submitter with idle work the slot can run, not per job
and, once a slot shape has been seen, not per autocluster either: what a
shape can run is remembered until an (autocluster, submitter) pair gets idle
jobs again (the index's epoch); pairs that run out are skipped meanwhile.

Everything here is in memory and runs under the store lock; the database is
only read (a pair's next idle jobs, a pilot's running jobs). A turn's
choices change the index as they are made, each with the steps that give it
back (`Chosen`), for the caller to undo if its transaction fails.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping, Set
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from glidewms.pool import concurrency
from glidewms.pool.autoclusters import Autoclusters
from glidewms.pool.lifecycle import JobState
from glidewms.pool.queue_index import HeadKey, IdleIndex, head_key
from glidewms.pool.schema import jobs
from glidewms.pool.shared import Shared
from glidewms.pool.slots import RESOURCES, SlotAds, free_from

CHOICE_CACHE_LIMIT = 10_000
PREFETCH = 64  # idle jobs of a pair read per seek (IdleIndex.upcoming)

Undo = list[Callable[[], None]]
# (autocluster, submitter, head key of the job, the steps that give it back)
Chosen = tuple[int, str, HeadKey, Undo]


class Matching:
    def __init__(
        self, shared: Shared, autoclusters: Autoclusters, reserve_for_large_jobs: bool
    ) -> None:
        self.shared = shared
        self.autoclusters = autoclusters
        self.reserve_for_large_jobs = reserve_for_large_jobs
        # pilot id -> (autocluster, submitter, order): see _may_reserve
        self.reservations: dict[str, tuple[int, str, int]] = {}
        self._reservation_order = itertools.count()
        self.empty_free: dict[str, dict[str, int]] = {}  # pilot -> free when it ran nothing
        # slot shape -> (index epoch, what it can run): see _candidates
        self._choices: dict[str, tuple[int, dict[int, float], dict[str, Any]]] = {}
        self._loaded_epoch = -1
        self.slot_ads = SlotAds(shared.matchmaker)  # per pilot: see _candidates
        self._running_ads_loaded = False  # see limits_in_use

    def forget(self, pilot_id: str) -> None:
        """The pilot left or was lost: nothing is kept or reserved for it."""
        self.reservations.pop(pilot_id, None)
        self.empty_free.pop(pilot_id, None)
        self.slot_ads.forget(pilot_id)

    def unreserve(self, pilot_id: str) -> None:
        self.reservations.pop(pilot_id, None)

    def choose_turn(
        self, conn: Connection, pilot: Any, free: Mapping[str, float], max_jobs: int, now: float
    ) -> list[Chosen]:
        """Up to `max_jobs` jobs for the pilot `pilot` (its row) offering `free`,
        as that many single claims in a row would choose them: each sees the
        index and the accounting as the choices before it left them, and the
        free resources minus their requests. Each choice is taken out of the
        index at once (the caller marks them running, or gives them back);
        if this raises, the choices made so far are given back."""
        pilot_id = pilot.pilot_id
        taken: set[tuple[int, int]] = set()  # chosen, still idle in the database
        index, requests = self.shared.index, self.shared.matchmaker.requests
        left = dict(free)
        full = self.empty_free.get(pilot_id) or free_from(pilot.slot, None)
        chosen: list[Chosen] = []
        runs: bool | None = None
        in_use = self.limits_in_use(conn)  # None: no autocluster names a limit
        try:
            while len(chosen) < max_jobs:
                if chosen and (left.get("cpus", 1) < 1 or left.get("memory", 1) < 1):
                    break
                reported = free_from(pilot.slot, left)
                whole = None
                if self.reserve_for_large_jobs and reported != full:
                    if runs is None:
                        runs = bool(chosen) or _runs_jobs(conn, pilot_id)
                    if runs or chosen:
                        whole = full
                    else:  # keeps some for itself: never reserve beyond that
                        self.empty_free[pilot_id] = reported
                choice = self._choose(
                    conn, pilot_id, pilot.slot, reported, whole, now, taken, in_use
                )
                if choice is None:
                    self.unreserve(pilot_id)
                    break
                kind, ac, submitter, key = choice
                if kind == "reserve":
                    break
                mine: Undo = []
                index.remove(ac, submitter, key)
                index.started(ac)
                mine.append(functools.partial(_put_back, index, ac, submitter, key))
                chosen.append((ac, submitter, key, mine))
                taken.add((key[2], key[3]))
                wanted = self.shared.matchmaker.limits.get(ac)
                if wanted and in_use is not None:
                    concurrency.take(in_use, wanted)
                request = requests.get(ac) or {}
                for name, _ in RESOURCES:
                    if name in left:
                        left[name] = max(0, left[name] - int(request.get(name) or 0))
        except BaseException:
            give_back(chosen)
            raise
        return chosen

    def _head(self, conn: Connection, ac: int, submitter: str, taken: Set[tuple[int, int]]) -> Any:
        """The pair's best idle job, read with the next ones when not cached.

        Jobs a pilot turn has chosen but not yet marked running (turns.py
        marks a whole turn with one UPDATE at its end) are still idle in the
        database: `taken` names them, and they are skipped."""
        index = self.shared.index
        cached = index.heads.get((ac, submitter))
        if cached is not None:
            return cached
        row = conn.execute(
            sa.select(jobs.c.prio, jobs.c.q_date, jobs.c.cluster_id, jobs.c.proc_id)
            .where(
                jobs.c.state == JobState.IDLE,
                jobs.c.autocluster_id == ac,
                jobs.c.submitter == submitter,
            )
            .order_by(jobs.c.prio.desc(), jobs.c.q_date, jobs.c.cluster_id, jobs.c.proc_id)
            .limit((PREFETCH if (ac, submitter) in index.streaming else 1) + len(taken))
        ).all()
        keys = [
            head_key(r.prio, r.q_date, r.cluster_id, r.proc_id)
            for r in row
            if (r.cluster_id, r.proc_id) not in taken
        ]
        if not keys:
            return None
        index.set_heads(ac, submitter, keys)
        return keys[0]

    def _choose(
        self,
        conn: Connection,
        pilot_id: str,
        slot: Mapping[str, Any],
        free: Mapping[str, int],
        whole: Mapping[str, int] | None,
        now: float,
        taken: Set[tuple[int, int]],
        in_use: dict[str, float] | None = None,
    ) -> tuple[str, int, str, Any] | None:
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

        Jobs whose concurrency limits are used up (`in_use`, what running
        jobs and this turn's earlier choices hold) are passed over as if
        they did not match: they neither run nor reserve the pilot.
        """
        index, accounting = self.shared.index, self.shared.accounting
        blocked = self._blocked(in_use)
        fits_now, by_now = self._candidates(conn, pilot_id, slot, free)
        fits_whole, by_whole = (
            self._candidates(conn, pilot_id, slot, whole) if whole is not None else ({}, {})
        )
        submitters = set(by_now) | set(by_whole)
        while submitters:
            submitter = accounting.best(submitters, now)
            assert submitter is not None
            submitters.discard(submitter)
            options = by_whole.get(submitter, [])
            if by_now.get(submitter):
                options = options + [o for o in by_now[submitter] if o[1] not in fits_whole]
            heads, counts, ranked = index.heads, index.counts, []
            for neg_rank, ac in options:
                if counts.get(ac, {}).get(submitter, 0) <= 0:
                    continue  # ran out since this list was made
                if blocked is not None and blocked(ac):
                    continue  # its concurrency limits are used up
                key = heads.get((ac, submitter))
                if key is None:
                    key = self._head(conn, ac, submitter, taken)
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

    def limits_in_use(self, conn: Connection) -> dict[str, float] | None:
        """What running jobs hold of each concurrency limit, or None when no
        autocluster known names one (the usual pool: nothing to count). The
        ads of the autoclusters running at start are read once: from then on
        every running autocluster was claimed through here, so known."""
        matchmaker = self.shared.matchmaker
        if not self._running_ads_loaded:
            self.autoclusters.load_ads(conn, list(self.shared.index.running))
            self._running_ads_loaded = True
        self._load_ads(conn)  # the idle ones: a new autocluster may name limits
        if not matchmaker.limits and not matchmaker.invalid_limits:
            return None
        return concurrency.in_use(self.shared.index.running, matchmaker.limits)

    def _load_ads(self, conn: Connection) -> None:
        """The ads of the autoclusters with idle jobs, read into the
        matchmaker whenever a pair got idle jobs again (the index's epoch)."""
        index = self.shared.index
        if self._loaded_epoch != index.epoch:  # ads first: a shape depends on what they read
            self.autoclusters.load_ads(conn, list(index.counts))
            self._loaded_epoch = index.epoch

    def _blocked(self, in_use: dict[str, float] | None) -> Callable[[int], bool] | None:
        """A test: may no job of this autocluster start now? None: none is limited."""
        if in_use is None:
            return None
        matchmaker, config = self.shared.matchmaker, self.shared.concurrency
        limits, invalid = matchmaker.limits, matchmaker.invalid_limits

        def blocked(ac: int) -> bool:
            if ac in invalid:
                return True
            wanted = limits.get(ac)
            return wanted is not None and concurrency.exceeded(wanted, in_use, config) is not None

        return blocked

    def _candidates(
        self, conn: Connection, pilot_id: str, slot: Mapping[str, Any], resources: Mapping[str, int]
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
        index, matchmaker = self.shared.index, self.shared.matchmaker
        epoch = index.epoch
        self._load_ads(conn)
        ad, shape = self.slot_ads.get(pilot_id, slot, resources)
        counts = index.counts
        # an answer that reads the clock is never reused (see matchmaker.py)
        clocked = shape.startswith("!") or any(ac in counts for ac in matchmaker.volatile_ids)
        hit = None if clocked else self._choices.get(shape)
        if hit is not None and hit[0] == epoch:
            return hit[1], hit[2]
        ads = matchmaker.ads
        ranked = dict(matchmaker.ranked(ad, {ac: ads[ac] for ac in index.counts}, shape))
        by_submitter: dict[str, list[tuple[float, int]]] = {}
        for ac, rank in ranked.items():
            for submitter, _ in index.submitters(ac):
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
        order = mine[2] if mine and mine[:2] == (ac, submitter) else next(self._reservation_order)
        earlier = sum(
            1
            for other, (a, s, o) in self.reservations.items()
            if other != pilot_id and a == ac and s == submitter and o < order
        )
        if earlier >= self.shared.index.idle(ac, submitter):
            return False
        self.reservations[pilot_id] = (ac, submitter, order)
        return True


def give_back(chosen: list[Chosen]) -> None:
    """Undo choices (latest first): their jobs are idle in the index again."""
    for *_, mine in reversed(chosen):
        for step in reversed(mine):
            step()


def _runs_jobs(conn: Connection, pilot_id: str) -> bool:
    return (
        conn.execute(
            sa.select(jobs.c.claim_id)
            .where(jobs.c.pilot_id == pilot_id, jobs.c.state == JobState.RUNNING)
            .limit(1)
        ).first()
        is not None
    )


def _put_back(index: IdleIndex, ac: int, submitter: str, key: Any) -> None:
    """Undo of taking a job from the idle index when its turn rolls back."""
    index.add(ac, submitter, key[1], 1, key)
    index.stopped(ac)
