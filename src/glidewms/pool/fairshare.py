"""Fair share: who gets the next free slot.

The arithmetic is pure functions (tested with tables); `Accounting` keeps the
per-submitter state in memory and is the only thing the store calls.

Usage is core-seconds that decay with a half-life, in the spirit of
HTCondor's PRIORITY_HALFLIFE: a submitter who ran 100 cores for a day weighs
half as much a half-life later. Between two changes of a submitter's running
cores R the usage follows dU/dt = R - U·ln2/h exactly, so it is updated only
when R changes (a claim, a completion, an eviction) and when read.

The effective priority (lower is better) is the usage one half-life ahead if
the submitter kept its present cores, times its priority factor:

    effective = factor * (U/2 + R*h/(2*ln 2))

It remembers history (U) and reacts at once to what runs now (R), so two new
users with equal history alternate claim by claim instead of by timing noise.
A submitter is "group.Owner" when the job names an accounting group (its
AccountingGroup without the user part, else its AcctGroup: jobs.derive; the
user part is always the owner from the token), else the owner; its factor
is the user's factor times the group's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

LN2 = math.log(2)


def decay(elapsed: float, halflife: float) -> float:
    """The fraction of past usage left after `elapsed` seconds."""
    if elapsed <= 0:
        return 1.0
    return float(0.5 ** (elapsed / halflife))


def usage_after(usage: float, running_cores: float, elapsed: float, halflife: float) -> float:
    """Usage after `elapsed` seconds with `running_cores` in use the whole time."""
    if elapsed <= 0:
        return usage
    kept = decay(elapsed, halflife)
    return usage * kept + running_cores * halflife / LN2 * (1.0 - kept)


def effective_priority(usage: float, running_cores: float, halflife: float, factor: float) -> float:
    """Lower is better: the usage one half-life ahead at today's cores, times the factor."""
    return factor * usage_after(usage, running_cores, halflife, halflife)


def submitter_name(owner: str, acct_group: str | None) -> str:
    return f"{acct_group}.{owner}" if acct_group else owner


def split_submitter(submitter: str, owner: str) -> str | None:
    """The accounting group of a submitter name, given its owner."""
    suffix = f".{owner}"
    return submitter[: -len(suffix)] if submitter.endswith(suffix) else None


def priority_factor(
    owner: str,
    group: str | None,
    user_factors: Mapping[str, float],
    group_factors: Mapping[str, float],
    default: float = 1.0,
) -> float:
    """The user's factor (or the default) times the group's (1 when unnamed)."""
    factor = user_factors.get(owner, default)
    if group:
        factor *= group_factors.get(group, 1.0)
    return factor


def best_submitter(priorities: Mapping[str, float]) -> str | None:
    """The lowest effective priority; names break ties so the order is stable."""
    if not priorities:
        return None
    return min(priorities, key=lambda s: (priorities[s], s))


@dataclass
class SubmitterState:
    owner: str
    group: str | None
    usage: float = 0.0  # core-seconds as of `at`
    at: float = 0.0
    running: int = 0  # cores in use now


class Accounting:
    """Usage and running cores per submitter, kept current in memory.

    Not thread-safe by itself: the store calls it under its own lock.
    """

    def __init__(
        self,
        halflife: float,
        user_factors: Mapping[str, float],
        group_factors: Mapping[str, float],
        default_factor: float = 1.0,
    ) -> None:
        self.halflife = halflife
        self.user_factors = dict(user_factors)
        self.group_factors = dict(group_factors)
        self.default_factor = default_factor
        self.submitters: dict[str, SubmitterState] = {}
        self.dirty: set[str] = set()

    def _state(self, submitter: str, owner: str, group: str | None, now: float) -> SubmitterState:
        state = self.submitters.get(submitter)
        if state is None:
            state = self.submitters[submitter] = SubmitterState(owner, group, 0.0, now, 0)
        return state

    def ensure(self, submitter: str, owner: str, group: str | None, now: float) -> None:
        """Know this submitter (it has queued jobs), without changing its usage."""
        self._state(submitter, owner, group, now)

    def load(self, submitter: str, owner: str, group: str | None, usage: float, at: float) -> None:
        """Restore a persisted usage (decayed to `at`)."""
        state = self._state(submitter, owner, group, at)
        state.usage, state.at = usage, at

    def change(self, submitter: str, owner: str, group: str | None, cores: int, now: float) -> None:
        """`cores` more (or fewer, when negative) in use from `now` on."""
        state = self._state(submitter, owner, group, now)
        state.usage = usage_after(state.usage, state.running, now - state.at, self.halflife)
        state.at = now
        state.running = max(0, state.running + cores)
        self.dirty.add(submitter)

    def set_usage(self, submitter: str, usage: float, now: float) -> bool:
        """An operator's word on a submitter's past usage (HTCondor's `userprio
        -setaccum`): `usage` core-seconds as of `now`, decaying from there; its
        running cores still count on top. False for a submitter never seen."""
        state = self.submitters.get(submitter)
        if state is None:
            return False
        state.usage, state.at = max(0.0, usage), now
        self.dirty.add(submitter)
        return True

    def usage(self, submitter: str, now: float) -> float:
        state = self.submitters.get(submitter)
        if state is None:
            return 0.0
        return usage_after(state.usage, state.running, now - state.at, self.halflife)

    def factor(self, submitter: str) -> float:
        state = self.submitters.get(submitter)
        if state is None:
            return self.default_factor
        return priority_factor(
            state.owner, state.group, self.user_factors, self.group_factors, self.default_factor
        )

    def effective(self, submitter: str, now: float) -> float:
        state = self.submitters.get(submitter)
        running = state.running if state else 0
        return effective_priority(
            self.usage(submitter, now), running, self.halflife, self.factor(submitter)
        )

    def best(self, candidates: Iterable[str], now: float) -> str | None:
        return best_submitter({s: self.effective(s, now) for s in candidates})

    def snapshot(self, now: float) -> list[tuple[SubmitterState, str, float]]:
        """(state, name, usage now) of every submitter changed since the last call."""
        out = [(self.submitters[s], s, self.usage(s, now)) for s in sorted(self.dirty)]
        self.dirty.clear()
        return out
