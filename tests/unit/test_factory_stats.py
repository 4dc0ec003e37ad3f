"""Stats per entry and frontend (factory/stats.py) and what a reload changes (reload.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from glidewms.config.factory import EntryConfig
from glidewms.factory.reload import entry_changes
from glidewms.factory.states import GlideinState
from glidewms.factory.stats import entry_stats, failure_category, report_core_seconds
from glidewms.factory.store import Glidein

NOW = 100_000.0
SINCE = NOW - 3600


def pilot(
    state: GlideinState,
    reason: str | None = None,
    code: int | None = None,
    *,
    entry: str = "e1",
    frontend: str = "fe1",
    submitted: float = NOW - 600,
    updated: float = NOW - 60,
    report: dict[str, Any] | None = None,
    n: int = 0,
) -> Glidein:
    g = Glidein.submitted(f"{entry}-{n}", entry, "local", frontend, "main", submitted)
    return replace(
        g, state=state, exit_reason=reason, exit_code=code, updated_at=updated, report=report
    )


S = GlideinState


@pytest.mark.parametrize(
    ("state", "reason", "code", "category"),
    [
        (S.finished, "idle_timeout", 0, None),
        (S.finished, "lifetime", 0, None),
        (S.removed, None, None, None),  # the factory removed it on purpose
        (S.removed, "signal", 143, None),
        (S.failed, None, None, "failed"),  # the batch system said so, no report
        (S.failed, "submit_failed", None, "submit_failed"),
        (S.finished, "validation_failed", 4, "validation_failed"),
        (S.removed, "held", None, "held"),
        (S.removed, "stale_queued", None, "stale_queued"),
        (S.finished, "black_hole", 5, "black_hole"),
        (S.running, None, None, None),
        (S.queued, "whatever", 1, None),
    ],
)
def test_failure_category(
    state: GlideinState, reason: str | None, code: int | None, category: str | None
) -> None:
    assert failure_category(pilot(state, reason, code)) == category


def test_entry_stats_count_the_window_per_entry_and_frontend() -> None:
    good = {"goodput_seconds": 100.0, "badput_seconds": 5.5, "wall_seconds": 200.0}
    rows = entry_stats(
        [
            pilot(S.running, n=1),
            pilot(S.queued, n=2),
            pilot(S.finished, "idle_timeout", 0, report=good, n=3),
            pilot(S.finished, "validation_failed", 4, report={"wall_seconds": 3}, n=4),
            pilot(S.failed, "submit_failed", n=5),
            pilot(S.finished, "idle_timeout", 0, submitted=NOW - 9000, updated=NOW - 8000, n=6),
            pilot(S.running, entry="e2", submitted=NOW - 9000, n=7),
            pilot(S.queued, frontend="fe2", n=8),
        ],
        SINCE,
        NOW,
    )
    by_key = {(r["entry"], r["frontend"]): r for r in rows}
    assert set(by_key) == {("e1", "fe1"), ("e2", "fe1"), ("e1", "fe2")}
    e1 = by_key[("e1", "fe1")]
    assert e1["pilots"] == {"running": 1, "queued": 1, "finished": 2, "failed": 1}
    assert e1["submitted"] == 5 and e1["submit_rate_per_hour"] == 5.0
    assert e1["failures"] == {"validation_failed": 1, "submit_failed": 1}
    assert (e1["goodput_seconds"], e1["badput_seconds"], e1["pilot_seconds"]) == (100, 5.5, 203)
    assert e1["reports"] == 2
    e2 = by_key[("e2", "fe1")]  # alive, submitted before the window
    assert e2["pilots"] == {"running": 1} and e2["submitted"] == 0


def test_entry_changes() -> None:
    a, b, c = (EntryConfig(name=n, site="S") for n in "abc")
    summary = entry_changes([a, b], [a.model_copy(update={"max_idle": 3}), c])
    assert (summary.added, summary.removed, summary.changed, summary.unchanged) == (
        ["c"],
        ["b"],
        ["a"],
        0,
    )
    assert entry_changes([a, b], [b, a]).unchanged == 2


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (  # a pilot of today: core-seconds as it counted them
            {
                "cpus": 8,
                "goodput_core_seconds": 800.0,
                "badput_core_seconds": 40.0,
                "pilot_core_seconds": 1600.0,
                "goodput_seconds": 100.0,
                "wall_seconds": 200.0,
            },
            (800.0, 40.0, 1600.0),
        ),
        (  # an older pilot: its jobs count as one core each, itself on all its cores
            {"cpus": 8, "goodput_seconds": 100.0, "badput_seconds": 5.0, "wall_seconds": 200.0},
            (100.0, 5.0, 1600.0),
        ),
        ({"goodput_seconds": 10, "wall_seconds": 20}, (10.0, 0.0, 20.0)),  # no cpus: one
        (  # a black hole that kept its node 600 s: all its cores, as badput and pilot time
            {
                "cpus": 4,
                "goodput_core_seconds": 0,
                "badput_core_seconds": 2.0,
                "pilot_core_seconds": 40.0,
                "hold_seconds": 600,
            },
            (0.0, 2402.0, 2440.0),
        ),
        (  # hostile numbers are bounded, wrong types ignored
            {
                "cpus": 10**9,
                "pilot_core_seconds": -5,
                "goodput_core_seconds": "x",
                "wall_seconds": True,
            },
            (0.0, 0.0, 0.0),
        ),
        (None, (0.0, 0.0, 0.0)),
    ],
    ids=["core-fields", "older-pilot", "no-cpus", "black-hole-hold", "hostile", "no-report"],
)
def test_report_core_seconds(report: dict[str, Any] | None, expected: tuple) -> None:
    assert report_core_seconds(report) == expected


def test_entry_stats_show_core_seconds_and_the_goodput_fraction() -> None:
    eight = {
        "cpus": 8,
        "goodput_core_seconds": 4000.0,
        "badput_core_seconds": 100.0,
        "pilot_core_seconds": 7000.0,
    }
    hole = {"cpus": 8, "badput_core_seconds": 8.0, "pilot_core_seconds": 80.0, "hold_seconds": 125}
    rows = entry_stats(
        [
            pilot(S.finished, "idle_timeout", 0, report=eight, n=1),
            pilot(S.finished, "black_hole", 5, report=hole, n=2),
            pilot(S.running, n=3),  # alive: its report is not in yet
        ],
        SINCE,
        NOW,
    )
    [row] = rows
    assert row["goodput_core_seconds"] == 4000.0
    assert row["badput_core_seconds"] == 100.0 + 8.0 + 1000.0
    assert row["pilot_core_seconds"] == 7000.0 + 80.0 + 1000.0
    assert row["goodput_fraction"] == round(4000.0 / 8080.0, 4)
    assert entry_stats([pilot(S.running)], SINCE, NOW)[0]["goodput_fraction"] is None
