"""The queue in memory: counts per (autocluster, submitter), cached heads,
queue dates, and running counts per autocluster.

A claim must cost work per autocluster, not per job, and so must the demand
summary frontends read every cycle, so the pool never scans the jobs table to
find out who has idle work where: this index answers that from memory. It is
rebuilt from the database at start and changed by the store after every
committed transaction that moves a job into or out of the idle or running
state (under the store's lock, so it never disagrees with the database for
longer than that transaction).

The head of an (autocluster, submitter) is its best idle job by JobPrio, then
queue date, then id. It is read from the database with one index seek the
first time it is needed and cached until that job leaves the idle state;
the same seek also reads the next few jobs in that order (`upcoming`), so a
stream of claims from one pair costs one seek per `PREFETCH` jobs. The
cached keys are always a prefix of the pair's idle jobs in that order: a
job that leaves idle is dropped from it, and new idle jobs cut it where they
would sort.

Queue dates are kept as counts per distinct date: the jobs of one cluster
share their QDate, so this costs memory per cluster, not per job, and the
oldest idle job of an autocluster is a min over its clusters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

# (-JobPrio, QDate, ClusterId, ProcId): smaller is better
HeadKey = tuple[int, float, int, int]


def head_key(prio: int, q_date: float, cluster_id: int, proc_id: int) -> HeadKey:
    return (-prio, q_date, cluster_id, proc_id)


class IdleIndex:
    def __init__(self) -> None:
        self.counts: dict[int, dict[str, int]] = {}
        self.heads: dict[tuple[int, str], HeadKey] = {}
        # the pair's idle jobs after its head, in order (a prefix; may be empty)
        self.upcoming: dict[tuple[int, str], list[HeadKey]] = {}
        # pairs whose head was claimed with nothing prefetched behind it: their
        # next read prefetches (a first read of a pair reads its head only)
        self.streaming: set[tuple[int, str]] = set()
        self.dates: dict[tuple[int, str], dict[float, int]] = {}
        self.running: dict[int, int] = {}
        # changes whenever an (autocluster, submitter) gets idle jobs again:
        # what a slot could run before is, apart from pairs that have run
        # out (their count says so), still what it can run
        self.epoch = 0

    def add(
        self, ac: int, submitter: str, q_date: float, n: int = 1, best: HeadKey | None = None
    ) -> None:
        """`n` jobs queued at `q_date` became idle; `best` is the best of them, when known."""
        per = self.counts.setdefault(ac, {})
        before = per.get(submitter, 0)
        per[submitter] = before + n
        if before <= 0 < before + n:
            self.epoch += 1
        dates = self.dates.setdefault((ac, submitter), {})
        dates[q_date] = dates.get(q_date, 0) + n
        pair = (ac, submitter)
        cached = self.heads.get(pair)
        if cached is not None:
            if best is None:
                self.forget_head(ac, submitter)
            elif best < cached:
                self.heads[pair] = best  # the new jobs may sort before the old head's
                self.upcoming.pop(pair, None)  # followers: the prefix ends at `best`
            else:
                later = self.upcoming.get(pair)
                if later and later[-1] >= best:
                    self.upcoming[pair] = [k for k in later if k < best]
        self._prune(ac, submitter)

    def remove(self, ac: int, submitter: str, key: HeadKey) -> None:
        """One idle job left the idle state (claimed, held, removed, edited)."""
        per = self.counts.setdefault(ac, {})
        per[submitter] = per.get(submitter, 0) - 1
        dates = self.dates.setdefault((ac, submitter), {})
        q_date = key[1]
        left = dates.get(q_date, 0) - 1
        if left:
            dates[q_date] = left
        else:
            dates.pop(q_date, None)
        pair = (ac, submitter)
        later = self.upcoming.get(pair)
        if self.heads.get(pair) == key:
            if later:
                self.heads[pair] = later.pop(0)
            else:
                del self.heads[pair]
                self.upcoming.pop(pair, None)
                self.streaming.add(pair)
        elif later and key in later:
            later.remove(key)
        self._prune(ac, submitter)

    def remove_many(
        self,
        ac: int,
        submitter: str,
        dates: Mapping[float, int],
        gone: Callable[[HeadKey], bool],
    ) -> None:
        """`remove` for many idle jobs of one (autocluster, submitter) at once
        (a bulk action's batch): `dates` counts them per queue date, and
        `gone` tells whether a cached key is one of them. The same end state
        as one `remove` per job, one pass over the cached keys."""
        n = sum(dates.values())
        if not n:
            return
        pair = (ac, submitter)
        per = self.counts.setdefault(ac, {})
        per[submitter] = per.get(submitter, 0) - n
        known = self.dates.setdefault(pair, {})
        for q_date, k in dates.items():
            left = known.get(q_date, 0) - k
            if left:
                known[q_date] = left
            else:
                known.pop(q_date, None)
        head = self.heads.get(pair)
        if head is not None:
            later = self.upcoming.get(pair) or []
            if gone(head) or any(gone(k) for k in later):
                # what is left of the cached prefix is still a prefix
                kept = [k for k in (head, *later) if not gone(k)]
                if kept:
                    self.heads[pair] = kept[0]
                    self.upcoming[pair] = kept[1:]
                else:
                    del self.heads[pair]
                    self.upcoming.pop(pair, None)
                    self.streaming.add(pair)
        self._prune(ac, submitter)

    def started(self, ac: int, n: int = 1) -> None:
        self.running[ac] = self.running.get(ac, 0) + n

    def stopped(self, ac: int) -> None:
        left = self.running.get(ac, 0) - 1
        if left > 0:
            self.running[ac] = left
        else:
            self.running.pop(ac, None)

    def forget_head(self, ac: int, submitter: str) -> None:
        self.heads.pop((ac, submitter), None)
        self.upcoming.pop((ac, submitter), None)

    def set_heads(self, ac: int, submitter: str, keys: list[HeadKey]) -> None:
        """The pair's first idle jobs in order, as read from the database."""
        if keys:
            self.heads[(ac, submitter)] = keys[0]
            self.upcoming[(ac, submitter)] = keys[1:]

    def _prune(self, ac: int, submitter: str) -> None:
        # A count may dip below zero for an instant (a job claimed before the
        # submit that queued it has updated the index); only zero is dropped.
        per = self.counts.get(ac)
        if per is not None and per.get(submitter) == 0:
            del per[submitter]
            self.forget_head(ac, submitter)
            self.streaming.discard((ac, submitter))
            self.dates.pop((ac, submitter), None)
            if not per:
                del self.counts[ac]

    def autoclusters(self) -> Iterator[int]:
        """Autoclusters with idle work."""
        for ac, per in self.counts.items():
            if any(n > 0 for n in per.values()):
                yield ac

    def submitters(self, ac: int) -> Iterator[tuple[str, int]]:
        for submitter, n in self.counts.get(ac, {}).items():
            if n > 0:
                yield submitter, n

    def idle(self, ac: int, submitter: str) -> int:
        return max(0, self.counts.get(ac, {}).get(submitter, 0))

    def oldest(self, ac: int, submitter: str) -> float | None:
        """The queue date of the oldest idle job of this (autocluster, submitter)."""
        dates = [d for d, n in self.dates.get((ac, submitter), {}).items() if n > 0]
        return min(dates) if dates else None

    def idle_of(self, submitter: str) -> int:
        return sum(per.get(submitter, 0) for per in self.counts.values())
