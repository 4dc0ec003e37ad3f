"""Per entry and frontend: pilots by state, submit rate, failures by category,
goodput and badput. Pure functions over the stored glideins, tested by tables.

- *pilots by state*: the pilots alive now, and those that ended in the
  window, by state;
- *submit rate*: pilots submitted in the window, per hour;
- *failures by category*: each pilot that ended badly in the window once,
  under its exit reason (`validation_failed`, `held`, `stale_queued`,
  `submit_failed`, ...), or `failed` when the batch system said so without
  one. A pilot that ended cleanly (exit code 0: idle timeout, lifetime) or
  that the factory removed on purpose is not a failure;
- *goodput/badput*: seconds of jobs that succeeded/failed on the pilots,
  from their final reports (`goodput_seconds`, `badput_seconds`), with the
  pilots' own wall time (`pilot_seconds`) to compare against.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from glidewms.factory.states import ACTIVE_STATES, GlideinState
from glidewms.factory.store import Glidein

# Exit reasons of pilots the factory stopped on purpose: not a failure of the site.
REMOVAL_REASONS = frozenset({"signal", None})


def failure_category(g: Glidein) -> str | None:
    """Why this ended pilot counts as a failure, or None if it does not."""
    if g.state in ACTIVE_STATES:
        return None
    if g.state is GlideinState.removed and g.exit_reason in REMOVAL_REASONS:
        return None
    if g.exit_code == 0 and g.state is not GlideinState.failed:
        return None
    if g.exit_reason:
        return g.exit_reason
    return "failed" if g.state is GlideinState.failed else None


def _seconds(report: dict[str, Any] | None, key: str) -> float:
    value = (report or {}).get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def entry_stats(glideins: Iterable[Glidein], since: float, now: float) -> list[dict[str, Any]]:
    """One row per (entry, frontend) with pilots alive now or active in [since, now]."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    hours = max(now - since, 1.0) / 3600.0
    for g in glideins:
        alive = g.state in ACTIVE_STATES
        ended_here = not alive and g.updated_at >= since
        submitted_here = g.submitted_at >= since
        if not (alive or ended_here or submitted_here):
            continue
        row = rows.setdefault(
            (g.entry, g.frontend),
            {
                "entry": g.entry,
                "frontend": g.frontend,
                "pilots": {},
                "submitted": 0,
                "submit_rate_per_hour": 0.0,
                "failures": {},
                "reports": 0,
                "goodput_seconds": 0.0,
                "badput_seconds": 0.0,
                "pilot_seconds": 0.0,
            },
        )
        if alive or ended_here:
            row["pilots"][g.state.value] = row["pilots"].get(g.state.value, 0) + 1
        if submitted_here:
            row["submitted"] += 1
        if ended_here:
            category = failure_category(g)
            if category is not None:
                row["failures"][category] = row["failures"].get(category, 0) + 1
            if g.report is not None:
                row["reports"] += 1
                for name, source in (
                    ("goodput_seconds", "goodput_seconds"),
                    ("badput_seconds", "badput_seconds"),
                    ("pilot_seconds", "wall_seconds"),
                ):
                    row[name] += _seconds(g.report, source)
    out = []
    for key in sorted(rows):
        row = rows[key]
        row["submit_rate_per_hour"] = round(row["submitted"] / hours, 3)
        for name in ("goodput_seconds", "badput_seconds", "pilot_seconds"):
            row[name] = round(row[name], 3)
        out.append(row)
    return out
