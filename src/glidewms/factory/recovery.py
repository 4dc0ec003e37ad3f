"""How the factory recovers from failures: pure functions, no I/O.

Three things go wrong at sites, and each has one decision here, tested by
tables:

- submissions fail: `after_failure()` backs off (doubling from the cycle
  time) and, after `pause_after_failures` failures in a row, pauses the entry.
  `submit_blocked()` says whether (and why) the entry may not submit now. A
  paused entry tries once more after `pause_cooldown` (one more failure pauses
  it again at once) or when an operator resumes it: never a submit storm.
  (Pilots that fail at the site pause an entry too: pilot_health.py.)
- pilots are held by the batch system: `held_action()` releases a held pilot
  a bounded number of times, with a doubling delay, then removes it.
- pilots are forgotten in a queue or run far beyond their walltime:
  `stale_reason()` names why such a pilot must be removed.

The state of an entry (`EntryHealth`) is stored, so a restarted factory does
not forget a pause and storm the site again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from glidewms.config.factory import EntryConfig, RecoveryConfig
from glidewms.factory.states import GlideinState
from glidewms.factory.store import Glidein

MAX_BACKOFF_SECONDS = 600.0


# Who paused an entry (`EntryHealth.paused_by`); None in rows stored before pilots counted.
BY_SUBMISSIONS = "submissions"
BY_PILOTS = "pilots"
BY_OPERATOR = "operator"


@dataclass(frozen=True, kw_only=True)
class EntryHealth:
    """Submission failures of one entry in a row, its pilot failure streak, and its
    pause if any (who paused it, and for a pause by pilots, its probe)."""

    failures: int = 0
    last_error: str | None = None
    next_try: float = 0.0  # no submission before this (epoch seconds)
    paused_at: float | None = None
    paused_reason: str | None = None
    paused_by: str | None = None  # BY_SUBMISSIONS (also None), BY_PILOTS or BY_OPERATOR
    pilot_failures: int = 0  # the streak (pilot_health.py)
    last_pilot_failure: str | None = None
    probe_at: float | None = None  # paused by pilots: no probe pilot before this
    probe_id: str | None = None  # the probe pilot in flight
    probes: int = 0  # probes that failed since the entry last did well

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    @property
    def pause_kind(self) -> str | None:
        if self.paused_at is None:
            return None
        return self.paused_by or BY_SUBMISSIONS

    def view(self, recovery: RecoveryConfig) -> dict[str, object] | None:
        """The pause as entry ads show it, or None when not paused.

        `retry_at` is when the factory tries again by itself: the one try after
        the cool-down (submissions), the next probe (pilots), never (operator).
        """
        kind = self.pause_kind
        if self.paused_at is None or kind is None:
            return None
        retry_at: float | None = None
        if kind == BY_SUBMISSIONS:
            retry_at = self.paused_at + recovery.pause_cooldown
        elif kind == BY_PILOTS:
            retry_at = self.probe_at
        return {
            "since": self.paused_at,
            "by": kind,
            "reason": self.paused_reason,
            "failures": self.pilot_failures if kind == BY_PILOTS else self.failures,
            "retry_at": retry_at,
            "probe": self.probe_id,
            "probes_failed": self.probes,
        }


def after_failure(
    health: EntryHealth, error: str, now: float, cycle_seconds: float, recovery: RecoveryConfig
) -> EntryHealth:
    """One more failed submission: back off, and pause after too many in a row.

    An entry paused by its pilots or an operator stays paused as it is (a
    failed probe submission is the probe's failure, not a new kind of pause).
    """
    failures = health.failures + 1
    delay = min(cycle_seconds * 2**failures, MAX_BACKOFF_SECONDS)
    changed = replace(health, failures=failures, last_error=error, next_try=now + delay)
    if health.pause_kind in (BY_PILOTS, BY_OPERATOR):
        return changed
    if failures >= recovery.pause_after_failures:
        return replace(  # a retry after the cool-down that fails pauses anew
            changed,
            paused_at=now,
            paused_reason=f"{failures} submissions failed in a row; last: {error}",
            paused_by=BY_SUBMISSIONS,
        )
    return changed


def after_success(health: EntryHealth) -> EntryHealth:
    """A submission worked: forget the submission failures and their pause (a pause
    by pilots or an operator stays)."""
    cleared = replace(health, failures=0, last_error=None, next_try=0.0)
    if health.pause_kind == BY_SUBMISSIONS:
        return replace(cleared, paused_at=None, paused_reason=None, paused_by=None)
    return cleared


def resumed(health: EntryHealth) -> EntryHealth:
    """An operator resumed the entry: submit at the next cycle, count failures anew
    (pilot failures and failed probes too)."""
    return replace(EntryHealth(), last_error=health.last_error)


def paused_by_operator(health: EntryHealth, reason: str, now: float) -> EntryHealth:
    """An operator paused the entry: nothing is submitted (no probe) until resumed."""
    return replace(
        health,
        paused_at=now,
        paused_reason=reason,
        paused_by=BY_OPERATOR,
        probe_at=None,
        probe_id=None,
    )


def submit_blocked(health: EntryHealth, now: float, recovery: RecoveryConfig) -> str | None:
    """Why the entry may not submit now for its submission failures (or an operator's
    pause), or None when it may; pauses by pilots are pilot_health.allowance's."""
    if health.pause_kind == BY_OPERATOR:
        return f"paused by an operator: {health.paused_reason}"
    if health.pause_kind == BY_SUBMISSIONS and health.paused_at is not None:
        retry_at = health.paused_at + recovery.pause_cooldown
        if now < retry_at:
            return f"paused: {health.paused_reason}"
        return None  # the cool-down is over: one try
    if health.failures > 0 and now < health.next_try:
        return f"backing off after {health.failures} failure(s): {health.last_error}"
    return None


class HeldAction(str, Enum):
    WAIT = "wait"
    RELEASE = "release"
    REMOVE = "remove"


def held_action(
    pilot: Glidein, now: float, recovery: RecoveryConfig, can_release: bool = True
) -> HeldAction:
    """What to do with a held pilot: release it (bounded, with backoff) or remove it.

    The n-th release (n from 1) waits `release_backoff * 2**(n-1)` seconds after
    the pilot was held; after `max_releases` releases, or where the backend
    cannot release, the pilot is removed.
    """
    if pilot.state is not GlideinState.held:
        return HeldAction.WAIT
    if not can_release or pilot.releases >= recovery.max_releases:
        return HeldAction.REMOVE
    held_since = pilot.state_since if pilot.state_since is not None else pilot.updated_at
    if now - held_since >= recovery.release_backoff * 2**pilot.releases:
        return HeldAction.RELEASE
    return HeldAction.WAIT


def stale_reason(pilot: Glidein, entry: EntryConfig, now: float) -> str | None:
    """`stale_queued`/`stale_running` when the pilot is far beyond its limits, else None."""
    since = pilot.state_since if pilot.state_since is not None else pilot.submitted_at
    recovery = entry.recovery
    if pilot.state is GlideinState.queued and now - since > recovery.max_queued_time:
        return "stale_queued"
    if (
        pilot.state is GlideinState.running
        and now - since > entry.walltime + recovery.walltime_grace
    ):
        return "stale_running"
    return None
