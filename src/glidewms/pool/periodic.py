"""Periodic job policy: PeriodicRemove, PeriodicHold, PeriodicRelease.

Users write `periodic_hold = ...` (and `periodic_hold_reason`,
`periodic_hold_subcode`, `periodic_remove`, `periodic_release`) in the submit
file; the pool evaluates them on the job's full ad every
`periodic_check_seconds`, as HTCondor's schedd does every
PERIODIC_EXPR_INTERVAL. `decide` is the rule, a pure function; `Periodic`
only reads the jobs that carry such expressions (a flagged, indexed column,
so the pass never scans the others) and applies what `decide` says through
the same path as a user's hold/release/remove (Actions.apply_actions).

The rule, in HTCondor's order (the states each action applies to are the
job lifecycle's):
1. PeriodicRemove true (idle, running or held): removed.
2. PeriodicHold true (idle or running): held with code 3 (job policy) and
   PeriodicHoldReason when it evaluates to a non-empty string.
3. PeriodicRelease true (held): released, unless the job's own user held it
   (code 1): a user's hold is lifted by a user only.
The pool's own limit on site failures (`max_job_restarts`) holds with the
same code 3 and a reason, so `periodic_release = HoldReasonCode == 3 &&
NumRestarts < 10` gives a job more chances. An expression that evaluates to
Undefined or Error counts as false. `CurrentTime` is the time of the pass.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from glidewms import classads
from glidewms.pool.actions import Actions, Planned
from glidewms.pool.jobs import HOLD_POLICY, HOLD_USER
from glidewms.pool.lifecycle import JOB, JobCause
from glidewms.pool.listing import AdCache
from glidewms.pool.schema import jobs
from glidewms.pool.shared import Shared

REMOVABLE = JOB.sources(JobCause.REMOVE)  # idle, running, held
HOLDABLE = JOB.sources(JobCause.HOLD)  # idle, running
RELEASABLE = JOB.sources(JobCause.RELEASE)  # held
Decision = tuple[JobCause, str, int]  # (action, reason, hold code)


def _true(ad: Any, name: str) -> bool:
    return classads.is_true(classads.eval_attr(ad, name))


def _said(name: str, ad: Any) -> str:
    return f"The job attribute {name} expression '{ad.lookup(name)}' evaluated to TRUE"


def decide(ad: Any, state: str, hold_code: int | None) -> Decision | None:
    """What the job's periodic expressions ask for now, or None."""
    if state in REMOVABLE and _true(ad, "PeriodicRemove"):
        return JobCause.REMOVE, _said("PeriodicRemove", ad), 0
    if state in HOLDABLE and _true(ad, "PeriodicHold"):
        reason = classads.eval_attr(ad, "PeriodicHoldReason")
        if not isinstance(reason, str) or not reason:
            reason = _said("PeriodicHold", ad)
        return JobCause.HOLD, reason, HOLD_POLICY
    if state in RELEASABLE and hold_code != HOLD_USER and _true(ad, "PeriodicRelease"):
        return JobCause.RELEASE, _said("PeriodicRelease", ad), 0
    return None


class Periodic:
    def __init__(self, shared: Shared, actions: Actions) -> None:
        self.shared = shared
        self.actions = actions

    def apply(self, now: float | None = None) -> dict[str, list[str]]:
        """Evaluate every flagged job's periodic expressions; apply them.
        Returns the ids changed, per action."""
        now = time.time() if now is None else now
        with self.shared.engine.connect() as conn:
            rows = conn.execute(
                sa.select(jobs).where(jobs.c.periodic.is_(True), jobs.c.state.in_(REMOVABLE))
            ).all()
        ads = AdCache()
        planned: dict[str, list[Planned]] = {}
        for row in rows:
            ad = ads.full_ad(row)
            if ad is None:
                continue  # unreadable (stored by an older pool beyond the bounds)
            ad["CurrentTime"] = int(now)
            decision = decide(ad, row.state, row.hold_code)
            if decision is not None:
                action, reason, code = decision
                planned.setdefault(str(action), []).append((row, action, reason, code))
        return {
            action: self.actions.apply_actions(items, f"periodic_{action}")
            for action, items in planned.items()
        }
