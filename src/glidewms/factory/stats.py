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
  pilots' own wall time (`pilot_seconds`) to compare against; and the same
  in *core-seconds* (`report_core_seconds`), which is what an 8-core pilot
  running 1-core jobs is judged by, with `goodput_fraction` = goodput
  core-seconds / pilot core-seconds. A black hole that keeps its node
  (`hold_seconds`) held all its cores doing nothing: that time is badput
  and pilot time.
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
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
        return 0.0
    return min(max(float(value), 0.0), MAX_SECONDS)


CORE_FIELDS = ("goodput_core_seconds", "badput_core_seconds", "pilot_core_seconds")
MAX_CPUS = 4096  # a report's cores are bounded before they multiply anything
MAX_SECONDS = 10 * 365 * 86400.0  # and so are its seconds


def _amount(report: dict[str, Any], key: str, most: float = MAX_SECONDS) -> float | None:
    """The report's number under `key`, bounded; None when absent or not a number."""
    value = report.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
        return None
    return min(max(float(value), 0.0), most)


def report_core_seconds(report: dict[str, Any] | None) -> tuple[float, float, float]:
    """(goodput, badput, pilot) core-seconds of one final report.

    A pilot sends `goodput_core_seconds`/`badput_core_seconds` (each job's wall
    times the cores it held) and `pilot_core_seconds` (its wall times its
    cores). An older pilot sent wall seconds only: its jobs count as one core
    each (their cores are not known; an underestimate for multi-core jobs),
    its own time as wall times its `cpus` (one if absent). A black hole's
    `hold_seconds` count on all its cores as badput and as pilot time.
    """
    r = report or {}
    cpus = int(_amount(r, "cpus", MAX_CPUS) or 1) or 1
    good = _amount(r, "goodput_core_seconds")
    bad = _amount(r, "badput_core_seconds")
    own = _amount(r, "pilot_core_seconds")
    held = (_amount(r, "hold_seconds") or 0.0) * cpus
    good = good if good is not None else _seconds(r, "goodput_seconds")
    bad = bad if bad is not None else _seconds(r, "badput_seconds")
    own = own if own is not None else _seconds(r, "wall_seconds") * cpus
    return good, bad + held, own + held


def goodput_fraction(good: float, pilot: float) -> float | None:
    """Goodput core-seconds over pilot core-seconds (None without pilot time)."""
    return round(min(1.0, good / pilot), 4) if pilot > 0 else None


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
                "goodput_core_seconds": 0.0,
                "badput_core_seconds": 0.0,
                "pilot_core_seconds": 0.0,
                "goodput_fraction": None,
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
                cores = report_core_seconds(g.report)
                for name, value in zip(CORE_FIELDS, cores, strict=True):
                    row[name] += value
    out = []
    for key in sorted(rows):
        row = rows[key]
        row["submit_rate_per_hour"] = round(row["submitted"] / hours, 3)
        for name in ("goodput_seconds", "badput_seconds", "pilot_seconds", *CORE_FIELDS):
            row[name] = round(row[name], 3)
        row["goodput_fraction"] = goodput_fraction(
            row["goodput_core_seconds"], row["pilot_core_seconds"]
        )
        out.append(row)
    return out
