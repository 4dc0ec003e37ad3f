"""How the factory recovers from failures: pure functions, no I/O.

Three things go wrong at sites, and each has one decision here, tested by
tables:

- submissions fail: `after_failure()` backs off (doubling from the cycle
  time) and, after `pause_after_failures` failures in a row, pauses the entry.
  `submit_blocked()` says whether (and why) the entry may not submit now. A
  paused entry tries once more after `pause_cooldown` (one more failure pauses
  it again at once) or when an operator resumes it: never a submit storm.
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


@dataclass(frozen=True, kw_only=True)
class EntryHealth:
    """Submission failures of one entry in a row, and its pause if any."""

    failures: int = 0
    last_error: str | None = None
    next_try: float = 0.0  # no submission before this (epoch seconds)
    paused_at: float | None = None
    paused_reason: str | None = None

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    def view(self, recovery: RecoveryConfig) -> dict[str, object] | None:
        """The pause as entry ads show it, or None when not paused."""
        if self.paused_at is None:
            return None
        return {
            "since": self.paused_at,
            "reason": self.paused_reason,
            "failures": self.failures,
            "retry_at": self.paused_at + recovery.pause_cooldown,
        }


def after_failure(
    health: EntryHealth, error: str, now: float, cycle_seconds: float, recovery: RecoveryConfig
) -> EntryHealth:
    """One more failed submission: back off, and pause after too many in a row."""
    failures = health.failures + 1
    delay = min(cycle_seconds * 2**failures, MAX_BACKOFF_SECONDS)
    paused_at, reason = health.paused_at, health.paused_reason
    if failures >= recovery.pause_after_failures:
        paused_at = now  # a retry after the cool-down that fails pauses anew
        reason = f"{failures} submissions failed in a row; last: {error}"
    return EntryHealth(
        failures=failures,
        last_error=error,
        next_try=now + delay,
        paused_at=paused_at,
        paused_reason=reason,
    )


def after_success(health: EntryHealth) -> EntryHealth:
    """A submission worked: forget the failures and any pause."""
    return EntryHealth()


def resumed(health: EntryHealth) -> EntryHealth:
    """An operator resumed the entry: submit at the next cycle, count failures anew."""
    return replace(EntryHealth(), last_error=health.last_error)


def submit_blocked(health: EntryHealth, now: float, recovery: RecoveryConfig) -> str | None:
    """Why the entry may not submit now, or None when it may."""
    if health.paused_at is not None:
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
