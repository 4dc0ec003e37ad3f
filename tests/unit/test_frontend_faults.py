"""The frontend's failure streaks (faults.py) and its explanation history
(explanations.py): what is logged when, and what is kept how long."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from glidewms.frontend.explanations import Explanations
from glidewms.frontend.faults import Faults, Streak, step

ERR = "pool p query failed: ConnectError('refused')"
OTHER = "pool p query failed: ReadTimeout('')"


@pytest.mark.parametrize(
    ("streak", "error", "after", "said"),
    [
        (None, None, None, None),  # fine, still fine: nothing
        (None, ERR, Streak(100.0, 1, ERR), "p: failing: " + ERR),  # a streak starts
        (Streak(40.0, 3, ERR), ERR, Streak(40.0, 4, ERR), None),  # same failure: quiet
        (  # the same kind with other details: quiet too
            Streak(40.0, 3, ERR),
            "pool p query failed: ConnectError('reset')",
            Streak(40.0, 4, ERR),
            None,
        ),
        (Streak(40.0, 3, ERR), OTHER, Streak(40.0, 4, OTHER), "p: still failing (4 cycles)"),
        (Streak(40.0, 3, ERR), None, None, "p: works again after 3 failed cycle(s) over 60s"),
    ],
)
def test_a_streak_is_said_when_it_starts_changes_kind_and_ends(
    streak: Streak | None, error: str | None, after: Streak | None, said: str | None
) -> None:
    new, text = step("p", streak, error, 100.0)
    assert new == after
    if said is None:
        assert text is None
    else:
        assert text is not None and text.text.startswith(said) and text.level == logging.WARNING


def test_faults_log_one_line_per_change_not_per_cycle(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="glidewms.frontend.faults")
    faults = Faults()
    for t in range(5):
        faults.note("pool p", ERR, float(t))
        faults.note("factory f", None, float(t))
    assert faults.failing() == {
        "pool p": {"since": 0.0, "failed_cycles": 5, "error": ERR},
    }
    faults.note("pool p", None, 10.0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "5 failed cycle(s) over 10s" in lines[1]


def rec(demand: int) -> dict[str, object]:
    return {"demand": {"idle": demand}, "request": {"idle": demand}}


def test_cycles_that_decided_alike_fold_into_one_record() -> None:
    e = Explanations(100)
    for cycle in range(4):
        e.add(cycle, "main", "f/e", 10.0 * cycle, rec(1))
    e.add(4, "main", "f/e", 40.0, rec(2))
    kept = e.select("e", history=True)
    assert [(r.get("first_cycle"), r["cycle"], r.get("cycles")) for r in kept] == [
        (0, 3, 4),
        (None, 4, None),
    ]
    assert (kept[0]["first_time"], kept[0]["time"]) == (0.0, 30.0)
    assert e.select("e") == kept[-1:]


def test_an_idle_entrys_growing_count_of_cycles_without_demand_still_folds(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "explain.jsonl"
    e = Explanations(100, journal=journal)
    for cycle in range(5):
        e.add(
            cycle,
            "main",
            "f/e",
            float(cycle),
            {"removal": {"stage": "NO", "no_demand_cycles": cycle}},
        )
    e.add(5, "main", "f/e", 5.0, {"removal": {"stage": "WAIT", "no_demand_cycles": 5}})
    kept = e.select(history=True)
    assert [(r["cycle"], r.get("cycles"), r["removal"]) for r in kept] == [
        (4, 5, {"stage": "NO", "no_demand_cycles": 4}),
        (5, None, {"stage": "WAIT", "no_demand_cycles": 5}),
    ]
    e.flush()
    again = Explanations(100, journal=journal)
    again.load(6.0)
    assert again.select(history=True) == kept


def test_records_are_kept_for_their_time_and_at_most_history_of_them() -> None:
    e = Explanations(3, keep_seconds=100.0)
    for cycle in range(5):
        e.add(cycle, "main", "f/e", 10.0 * cycle, rec(cycle))
    assert [r["cycle"] for r in e.select(history=True)] == [2, 3, 4]  # the cap
    e.add(5, "main", "f/e", 135.0, rec(5))  # records older than 35 s go
    assert [r["cycle"] for r in e.select(history=True)] == [4, 5]
    e.add(6, "main", "other", 1000.0, rec(6))  # a quiet entry's records go too
    assert [r["entry"] for r in e.select(history=True)] == ["other"]


def test_the_journal_brings_records_and_folds_back_and_skips_junk(tmp_path: Path) -> None:
    journal = tmp_path / "explain.jsonl"
    e = Explanations(100, journal=journal)
    for cycle in range(3):
        e.add(cycle, "main", "f/e", float(cycle), rec(1))
    e.add(3, "g2", "f/e", 3.0, {"frozen": "pool p query failed", "request": None})
    e.flush()
    with journal.open("a") as f:
        f.write("not json\n[1, 2]\n" + json.dumps({"fold": ["x", "y"], "cycle": 1}) + "\n")
    again = Explanations(100, journal=journal)
    assert again.load(10.0) == 2
    assert again.select(history=True) == e.select(history=True)
    assert Explanations(100, keep_seconds=5.0, journal=journal).load(10.0) == 0  # too old


def test_the_journal_is_rewritten_once_it_holds_twice_what_is_kept(tmp_path: Path) -> None:
    journal = tmp_path / "explain.jsonl"
    e = Explanations(2, journal=journal)
    for cycle in range(10_050):
        e.add(cycle, "main", "f/e", float(cycle), rec(cycle))
        if cycle % 1000 == 0:
            e.flush()
    e.flush()
    lines = journal.read_text().splitlines()
    assert len(lines) < 2_000  # not 10,050: it was rewritten from the 2 kept records
    again = Explanations(2, journal=journal)
    again.load(20_000.0)
    assert again.select(history=True) == e.select(history=True)


def test_an_unwritable_journal_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    e = Explanations(10, journal=blocker / "explain.jsonl")  # its directory is a file
    for cycle in range(3):
        e.add(cycle, "main", "f/e", float(cycle), rec(cycle))
        e.flush()
    assert len([r for r in caplog.records if "cannot write explanations" in r.getMessage()]) == 1
    assert len(e.select(history=True)) == 3
