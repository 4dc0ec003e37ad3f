"""The factory's planning function, case by case: every clamp, never negative,
removal only of queued pilots and only when the request allows it."""

from __future__ import annotations

import itertools

import pytest

from glidewms.config.factory import EntryConfig
from glidewms.factory.backends import PilotState
from glidewms.factory.service import (
    Counts,
    EntryRequest,
    RemovePlan,
    SubmitPlan,
    attribute_text,
    next_state,
    plan,
)
from glidewms.factory.store import GlideinState


def entry(**limits: object) -> EntryConfig:
    values: dict[str, object] = {"max_pilots": 100, "max_idle": 100, "max_per_cycle": 100}
    values.update(limits)
    return EntryConfig(name="e1", site="S", **values)


def want(idle: int, max_running: int, remove: bool = False) -> EntryRequest:
    return EntryRequest(idle=idle, max_running=max_running, remove=remove)


SUBMIT_CASES = [
    # (id, entry limits, request, counts, expected count, limiting clamp)
    ("idle wanted, nothing there", {}, want(5, 50), Counts(), 5, "idle"),
    ("idle minus queued", {}, want(5, 50), Counts(queued=3, entry_queued=3, entry_active=3), 2,
     "idle"),
    ("running pilots do not count as idle", {}, want(5, 50),
     Counts(running=10, entry_active=10), 5, "idle"),
    ("max_running minus alive", {}, want(10, 6), Counts(queued=1, running=3, entry_queued=1,
     entry_active=4), 2, "max_running"),
    ("removing pilots count against max_running", {}, want(10, 6),
     Counts(running=3, removing=2, entry_active=5), 1, "max_running"),
    ("entry max_pilots over all frontends", {"max_pilots": 8}, want(10, 50),
     Counts(running=2, entry_active=6, entry_queued=1), 2, "entry max_pilots"),
    ("entry max_idle over all frontends", {"max_idle": 4}, want(10, 50),
     Counts(queued=1, entry_queued=3, entry_active=3), 1, "entry max_idle"),
    ("entry max_per_cycle", {"max_per_cycle": 3}, want(10, 50), Counts(), 3,
     "entry max_per_cycle"),
    ("nothing wanted", {}, want(0, 0), Counts(), 0, "idle"),
    ("never negative: over idle, no removal asked", {}, want(1, 50),
     Counts(queued=4, entry_queued=4, entry_active=4), 0, "idle"),
    ("never negative: over max_running", {}, want(5, 2), Counts(running=6, entry_active=6), 0,
     "max_running"),
    ("never negative: entry over max_pilots", {"max_pilots": 3}, want(5, 50),
     Counts(entry_active=7), 0, "entry max_pilots"),
    ("never negative: entry over max_idle", {"max_idle": 2}, want(5, 50),
     Counts(entry_queued=5, entry_active=5), 0, "entry max_idle"),
    ("zero per cycle", {"max_per_cycle": 0}, want(5, 50), Counts(), 0, "entry max_per_cycle"),
    ("disabled entry submits nothing", {"enabled": False}, want(5, 50), Counts(), 0,
     "entry disabled"),
    ("remove allowed but nothing in excess submits", {}, want(3, 50, remove=True),
     Counts(queued=1, entry_queued=1, entry_active=1), 2, "idle"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("limits", "request_", "counts", "expected", "limited_by"),
    [case[1:] for case in SUBMIT_CASES],
    ids=[case[0] for case in SUBMIT_CASES],
)
def test_submit(
    limits: dict[str, object],
    request_: EntryRequest,
    counts: Counts,
    expected: int,
    limited_by: str,
) -> None:
    decision = plan(entry(**limits), request_, counts)
    assert decision == SubmitPlan(expected, limited_by)


REMOVE_CASES = [
    # (id, request, counts, expected plan)
    ("queued above idle", want(1, 50, remove=True), Counts(queued=4, running=3),
     RemovePlan(3, "queued above idle")),
    ("idle zero removes every queued one, never running ones", want(0, 50, remove=True),
     Counts(queued=2, running=9), RemovePlan(2, "queued above idle")),
    ("alive above max_running, only queued removable", want(5, 4, remove=True),
     Counts(queued=2, running=5), RemovePlan(2, "above max_running")),
    ("alive above max_running by one", want(5, 6, remove=True), Counts(queued=3, running=4),
     RemovePlan(1, "above max_running")),
    ("running only: nothing to remove, nothing to submit", want(0, 0, remove=True),
     Counts(running=5), SubmitPlan(0, "max_running")),
    ("removal not allowed: just no submission", want(0, 0, remove=False),
     Counts(queued=5, running=1), SubmitPlan(0, "max_running")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_", "counts", "expected"),
    [case[1:] for case in REMOVE_CASES],
    ids=[case[0] for case in REMOVE_CASES],
)
def test_remove(request_: EntryRequest, counts: Counts, expected: object) -> None:
    decision = plan(entry(), request_, counts)
    assert decision == expected
    if isinstance(decision, RemovePlan):
        assert 0 < decision.count <= counts.queued


def test_disabled_entry_removes() -> None:
    decision = plan(entry(enabled=False), want(0, 10, remove=True), Counts(queued=2))
    assert decision == RemovePlan(2, "queued above idle")


def test_never_negative_never_above_any_bound() -> None:
    """Every small combination: no negative plan, no bound crossed, only queued removed."""
    limits = entry(max_pilots=5, max_idle=3, max_per_cycle=2)
    for queued, running, idle, max_running in itertools.product(range(5), repeat=4):
        for remove in (False, True):
            counts = Counts(queued=queued, running=running, entry_queued=queued,
                            entry_active=queued + running)  # fmt: skip
            decision = plan(limits, want(idle, max_running, remove), counts)
            assert decision.count >= 0
            if isinstance(decision, RemovePlan):
                assert remove and decision.count <= queued
                continue
            n = decision.count
            assert n <= 2
            assert n == 0 or queued + n <= idle
            assert n == 0 or queued + running + n <= max_running
            assert n == 0 or (queued + running + n <= 5 and queued + n <= 3)


STATE_CASES = [
    (GlideinState.queued, PilotState.running, GlideinState.running),
    (GlideinState.queued, PilotState.queued, GlideinState.queued),
    (GlideinState.running, PilotState.finished, GlideinState.finished),
    (GlideinState.running, PilotState.failed, GlideinState.failed),
    (GlideinState.running, PilotState.removed, GlideinState.removed),
    (GlideinState.running, PilotState.unknown, GlideinState.running),
    (GlideinState.queued, PilotState.unknown, GlideinState.queued),
    (GlideinState.removing, PilotState.queued, GlideinState.removing),
    (GlideinState.removing, PilotState.running, GlideinState.removing),
    (GlideinState.removing, PilotState.finished, GlideinState.removed),
    (GlideinState.removing, PilotState.failed, GlideinState.removed),
    (GlideinState.removing, PilotState.unknown, GlideinState.removing),
]


@pytest.mark.parametrize(("current", "seen", "expected"), STATE_CASES)
def test_next_state(current: GlideinState, seen: PilotState, expected: GlideinState) -> None:
    assert next_state(current, seen) is expected


def test_attribute_text() -> None:
    assert [attribute_text(v) for v in (True, False, 3, 2.5, "x y")] == [
        "true", "false", "3", "2.5", "x y"
    ]  # fmt: skip
