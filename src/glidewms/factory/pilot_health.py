"""What a pilot's fate says about its entry: pure functions, no I/O.

Failed *submissions* are recovery.py's. This module is about pilots that were
submitted and then failed at the site, which the factory learns from their
final report, their trail and their backend's last word:

- `judge()` reads one pilot's row and says what is new about it: it
  registered with the pool (`started`: it validated and runs), or it ended,
  and how that ending counts (`Outcome`):

  - FAILURE: validation failed before the pilot ever registered, any other
    non-zero exit before it registered or ran a job (an error, a corrupt
    stage, a bootstrap that could not report and ended `failed`), and a black
    hole (even after it registered: that is how black holes look);
  - SUCCESS: it retired (idle timeout, lifetime) or ended cleanly after it
    registered or ran jobs;
  - NEUTRAL: what says nothing about the site: removed by the factory (no
    report, or a `signal` one), ended by the batch system (`signal`), lost by
    the pool (`lost`), a failed submission (recovery.py counts those), and
    anything that went wrong after it registered, other than a black hole.

- `after_pilot()` folds one verdict into the entry's `EntryHealth`: a failure
  lengthens the streak, a success shrinks it (`pilot_success_decay`); at
  `pause_after_pilot_failures` the entry is paused with the reason. While
  paused by its pilots, a probe that fails (or ends saying nothing) sets the
  next probe later (doubling, capped); any pilot that registers resumes it,
  on probation (one failure short of pausing again, and the probe interval
  keeps doubling until a pilot retires well with the streak back at zero).

- `allowance()` says how many pilots the entry may get this cycle: all it
  asks for, fewer as the streak grows (`max_per_cycle >> streak`, at least
  one), one probe when it is due, or none (with why).

Rows are judged at most twice (when they register, when they end) and marked
(`Glidein.health_counted`), so a restarted factory counts nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from glidewms.config.factory import RecoveryConfig
from glidewms.factory.recovery import BY_PILOTS, EntryHealth, submit_blocked
from glidewms.factory.states import FINAL_STATES, GlideinState
from glidewms.factory.store import Glidein

STARTED = "started"  # `health_counted`: its registration was counted
ENDED = "ended"  # its end was counted: never judged again

REASON_CHARS = 300  # a reason (from a pilot's report) as kept and shown


class Outcome(str, Enum):
    FAILURE = "failure"
    SUCCESS = "success"
    NEUTRAL = "neutral"


@dataclass(frozen=True)
class Verdict:
    """What one pilot's news counts for; `mark` is what its row is marked with."""

    glidein_id: str
    outcome: Outcome
    reason: str
    mark: str
    started: bool = False  # it registered: the entry works (resumes a pause by pilots)
    check: str | None = None  # a validation failure: the check that failed


def short(text: Any, limit: int = REASON_CHARS) -> str:
    """One line of at most `limit` printable characters: pilots' words go in logs and
    ads (a control character, an escape sequence's start, is shown escaped)."""
    line = " ".join(str(text)[: limit * 4].split())
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def failed_check(report: dict[str, Any]) -> str | None:
    """`stage/name (category)` of the first failed validation script in a report."""
    results = report.get("validation")
    if not isinstance(results, list):
        return None
    for r in results:
        if isinstance(r, dict) and r.get("status") not in (None, "ok"):
            name = f"{r.get('stage', '?')}/{r.get('name', '?')}"
            return short(f"{name} ({r['category']})" if r.get("category") else name, 120)
    return None


def _jobs_run(report: dict[str, Any]) -> int:
    value = report.get("jobs_run")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def end_outcome(g: Glidein) -> tuple[Outcome, str, str | None]:
    """How a pilot's end counts, why, and the failed check of a validation failure."""
    reason = g.exit_reason or ""
    if g.report is None:
        cannot_say = reason in ("submit_failed", "lost") or g.registered_at is not None
        if g.state is GlideinState.failed and not cannot_say:
            return Outcome.FAILURE, "ended without a report before its first job", None
        return Outcome.NEUTRAL, reason or g.state.value, None
    report = g.report
    detail = short(report.get("detail") or "")
    started = g.registered_at is not None or _jobs_run(report) > 0
    said = f"{reason}: {detail}" if detail else reason
    if reason == "black_hole":
        return Outcome.FAILURE, f"black hole: {detail}" if detail else "black hole", None
    if reason in ("idle_timeout", "lifetime"):
        return Outcome.SUCCESS, reason, None
    if reason in ("signal", "lost"):
        return Outcome.NEUTRAL, reason, None
    if started:
        return (Outcome.SUCCESS if g.exit_code == 0 else Outcome.NEUTRAL), said, None
    if reason == "validation_failed":
        check = failed_check(report)
        return Outcome.FAILURE, f"validation failed: {detail or check or '?'}", check
    if g.exit_code == 0:
        return Outcome.NEUTRAL, said, None
    return Outcome.FAILURE, f"exit before the first job: {said}", None


def judge(g: Glidein) -> Verdict | None:
    """What is new about this pilot for its entry's health, or None (nothing yet)."""
    if g.health_counted == ENDED:
        return None
    ended = g.report is not None or g.state in FINAL_STATES
    newly_started = g.registered_at is not None and g.health_counted is None
    if not ended:
        if newly_started:
            return Verdict(g.glidein_id, Outcome.NEUTRAL, "registered", STARTED, started=True)
        return None
    outcome, reason, check = end_outcome(g)
    return Verdict(g.glidein_id, outcome, reason, ENDED, started=newly_started, check=check)


def probe_delay(probes: int, recovery: RecoveryConfig) -> float:
    """Seconds before the next probe after `probes` failed ones (doubling, capped)."""
    return float(min(recovery.probe_interval * 2 ** min(probes, 40), recovery.probe_interval_max))


def after_pilot(
    health: EntryHealth, verdict: Verdict, now: float, recovery: RecoveryConfig
) -> EntryHealth:
    """The entry's health once one pilot's verdict is counted (module docstring)."""
    limit = recovery.pause_after_pilot_failures
    by_pilots = health.pause_kind == BY_PILOTS
    is_probe = health.probe_id is not None and verdict.glidein_id == health.probe_id
    if by_pilots and (verdict.started or verdict.outcome is Outcome.SUCCESS):
        health = replace(  # the site works again: resume, on probation
            health,
            paused_at=None,
            paused_reason=None,
            paused_by=None,
            probe_at=None,
            probe_id=None,
            pilot_failures=max(0, limit - 1),
        )
        by_pilots = is_probe = False
    if verdict.outcome is Outcome.SUCCESS:
        streak = int(health.pilot_failures * recovery.pilot_success_decay)
        return replace(health, pilot_failures=streak, probes=health.probes if streak else 0)
    if verdict.outcome is Outcome.FAILURE:
        health = replace(
            health, pilot_failures=health.pilot_failures + 1, last_pilot_failure=verdict.reason
        )
        if is_probe:
            probes = health.probes + 1
            return replace(
                health, probe_id=None, probes=probes, probe_at=now + probe_delay(probes, recovery)
            )
        if health.paused_at is None and health.pilot_failures >= limit:
            return replace(
                health,
                paused_at=now,
                paused_by=BY_PILOTS,
                paused_reason=f"{health.pilot_failures} pilots failed (streak); "
                f"last: {verdict.reason}",
                probe_at=now + probe_delay(health.probes, recovery),
                probe_id=None,
            )
        return health
    if is_probe and verdict.mark == ENDED:  # the probe ended saying nothing: another one
        return replace(health, probe_id=None, probe_at=now + probe_delay(health.probes, recovery))
    return health


@dataclass(frozen=True)
class Allowance:
    """At most `count` pilots this cycle (None: no limit of health); `probe`: the one
    pilot is the probe; `reason`: why fewer than asked, if so."""

    count: int | None
    reason: str | None = None
    probe: bool = False


def allowance(
    health: EntryHealth, now: float, recovery: RecoveryConfig, max_per_cycle: int
) -> Allowance:
    """How many pilots the entry may get now given its health (module docstring)."""
    blocked = submit_blocked(health, now, recovery)
    if blocked is not None:
        return Allowance(0, blocked)
    if health.pause_kind == BY_PILOTS:
        if health.probe_id is not None:
            return Allowance(0, f"paused: {health.paused_reason}; probe {health.probe_id} out")
        if health.probe_at is not None and now < health.probe_at:
            return Allowance(0, f"paused: {health.paused_reason}")
        return Allowance(1, "paused: one probe pilot", probe=True)
    if health.pilot_failures > 0:
        count = max(1, max_per_cycle >> min(health.pilot_failures, 62))
        return Allowance(count, f"backing off after a streak of {health.pilot_failures} failures")
    return Allowance(None)
