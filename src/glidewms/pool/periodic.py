"""Periodic job policy: PeriodicRemove, PeriodicHold, PeriodicRelease.

Users write `periodic_hold = ...` (and `periodic_hold_reason`,
`periodic_hold_subcode`, `periodic_remove`, `periodic_release`) in the submit
file; the pool evaluates them on the job's full ad every
`periodic_check_seconds`, as HTCondor's schedd does every
PERIODIC_EXPR_INTERVAL. `decide` is the rule, a pure function; the mixin
method only reads the jobs that carry such expressions (a flagged, indexed
column, so the pass never scans the others) and applies what `decide` says
through the same path as a user's hold/release/remove.

The rule, in HTCondor's order:
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

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from glidewms import classads
from glidewms.pool.jobs import HOLD_POLICY, HOLD_USER
from glidewms.pool.listing import AdCache
from glidewms.pool.schema import jobs

ACTIVE = ("idle", "running", "held")
Decision = tuple[str, str, int]  # (action, reason, hold code)


def _true(ad: Any, name: str) -> bool:
    return name in ad and classads.is_true(ad.eval(name))


def _said(name: str, ad: Any) -> str:
    return f"The job attribute {name} expression '{ad.lookup(name)}' evaluated to TRUE"


def decide(ad: Any, state: str, hold_code: int | None) -> Decision | None:
    """What the job's periodic expressions ask for now, or None."""
    if state in ACTIVE and _true(ad, "PeriodicRemove"):
        return "remove", _said("PeriodicRemove", ad), 0
    if state in ("idle", "running") and _true(ad, "PeriodicHold"):
        reason = ad.eval("PeriodicHoldReason") if "PeriodicHoldReason" in ad else None
        if not isinstance(reason, str) or not reason:
            reason = _said("PeriodicHold", ad)
        return "hold", reason, HOLD_POLICY
    if state == "held" and hold_code != HOLD_USER and _true(ad, "PeriodicRelease"):
        return "release", _said("PeriodicRelease", ad), 0
    return None


class PeriodicMixin:
    engine: Engine
    _lock: threading.Lock

    if TYPE_CHECKING:  # provided by PoolStore
        def apply_actions(self, planned: Sequence[tuple[Any, str, str, int]],
                          by: str) -> list[str]: ...

    def apply_periodic(self, now: float | None = None) -> dict[str, list[str]]:
        """Evaluate every flagged job's periodic expressions; apply them.
        Returns the ids changed, per action."""
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(jobs).where(
                jobs.c.periodic.is_(True), jobs.c.state.in_(ACTIVE))).all()
        ads = AdCache()
        planned: dict[str, list[tuple[Any, str, str, int]]] = {}
        for row in rows:
            ad = ads.full_ad(row)
            ad["CurrentTime"] = int(now)
            decision = decide(ad, row.state, row.hold_code)
            if decision is not None:
                action, reason, code = decision
                planned.setdefault(action, []).append((row, action, reason, code))
        return {action: self.apply_actions(items, f"periodic_{action}")
                for action, items in planned.items()}
