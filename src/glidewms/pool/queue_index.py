"""The idle queue in memory: counts per (autocluster, submitter) and cached heads.

A claim must cost work per autocluster, not per job, so the pool never scans
the jobs table to find out who has idle work where: this index answers that
from memory. It is rebuilt from the database at start and changed by the
store after every committed transaction that moves a job into or out of the
idle state (under the store's lock, so it never disagrees with the database
for longer than that transaction).

The head of an (autocluster, submitter) is its best idle job by JobPrio, then
queue date, then id. It is read from the database with one index seek the
first time it is needed and cached until that job leaves the idle state.
"""

from __future__ import annotations

from collections.abc import Iterator

# (-JobPrio, QDate, ClusterId, ProcId): smaller is better
HeadKey = tuple[int, float, int, int]


def head_key(prio: int, q_date: float, cluster_id: int, proc_id: int) -> HeadKey:
    return (-prio, q_date, cluster_id, proc_id)


class IdleIndex:
    def __init__(self) -> None:
        self.counts: dict[int, dict[str, int]] = {}
        self.heads: dict[tuple[int, str], HeadKey] = {}

    def add(self, ac: int, submitter: str, n: int = 1, best: HeadKey | None = None) -> None:
        """`n` jobs became idle; `best` is the best of them, when known."""
        per = self.counts.setdefault(ac, {})
        per[submitter] = per.get(submitter, 0) + n
        cached = self.heads.get((ac, submitter))
        if cached is not None:
            if best is None:
                del self.heads[(ac, submitter)]
            elif best < cached:
                self.heads[(ac, submitter)] = best
        self._prune(ac, submitter)

    def remove(self, ac: int, submitter: str, key: HeadKey) -> None:
        """One idle job left the idle state (claimed, held, removed, edited)."""
        per = self.counts.setdefault(ac, {})
        per[submitter] = per.get(submitter, 0) - 1
        if self.heads.get((ac, submitter)) == key:
            del self.heads[(ac, submitter)]
        self._prune(ac, submitter)

    def forget_head(self, ac: int, submitter: str) -> None:
        self.heads.pop((ac, submitter), None)

    def _prune(self, ac: int, submitter: str) -> None:
        # A count may dip below zero for an instant (a job claimed before the
        # submit that queued it has updated the index); only zero is dropped.
        per = self.counts.get(ac)
        if per is not None and per.get(submitter) == 0:
            del per[submitter]
            self.heads.pop((ac, submitter), None)
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

    def idle_of(self, submitter: str) -> int:
        return sum(per.get(submitter, 0) for per in self.counts.values())
