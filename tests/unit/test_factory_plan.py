"""The factory's planning functions, case by case: every clamp, never negative,
removal only as the request's stage allows and never beyond the excess, victims
in the right order, downtimes in force."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from glidewms.config.factory import EntryConfig
from glidewms.factory.backends import PilotState
from glidewms.factory.policy import (
    Counts,
    EntryRequest,
    RemovePlan,
    SubmitPlan,
    active_downtime,
    attribute_text,
    choose_victims,
    next_state,
    plan,
)
from glidewms.factory.states import GlideinState
from glidewms.factory.store import Glidein
from glidewms.protocol import RemovalStage


def entry(**limits: object) -> EntryConfig:
    values: dict[str, object] = {"max_pilots": 100, "max_idle": 100, "max_per_cycle": 100}
    values.update(limits)
    return EntryConfig(name="e1", site="S", **values)


def want(idle: int, max_running: int, remove: str = "NO", margin: int = 0) -> EntryRequest:
    return EntryRequest(idle=idle, max_running=max_running, remove=remove, remove_margin=margin)


SUBMIT_CASES = [
    # (id, entry limits, request, counts, expected count, limiting clamp)
    ("idle wanted, nothing there", {}, want(5, 50), Counts(), 5, "idle"),
    (
        "idle minus queued",
        {},
        want(5, 50),
        Counts(queued=3, entry_queued=3, entry_active=3),
        2,
        "idle",
    ),
    (
        "running pilots do not count as idle",
        {},
        want(5, 50),
        Counts(running=10, entry_active=10),
        5,
        "idle",
    ),
    (
        "max_running minus alive",
        {},
        want(10, 6),
        Counts(queued=1, running=3, entry_queued=1, entry_active=4),
        2,
        "max_running",
    ),
    (
        "removing pilots count against max_running",
        {},
        want(10, 6),
        Counts(running=3, removing=2, entry_active=5),
        1,
        "max_running",
    ),
    (
        "entry max_pilots over all frontends",
        {"max_pilots": 8},
        want(10, 50),
        Counts(running=2, entry_active=6, entry_queued=1),
        2,
        "entry max_pilots",
    ),
    (
        "entry max_idle over all frontends",
        {"max_idle": 4},
        want(10, 50),
        Counts(queued=1, entry_queued=3, entry_active=3),
        1,
        "entry max_idle",
    ),
    ("entry max_per_cycle", {"max_per_cycle": 3}, want(10, 50), Counts(), 3, "entry max_per_cycle"),
    ("nothing wanted", {}, want(0, 0), Counts(), 0, "idle"),
    (
        "never negative: over idle, no removal asked",
        {},
        want(1, 50),
        Counts(queued=4, entry_queued=4, entry_active=4),
        0,
        "idle",
    ),
    (
        "never negative: over max_running",
        {},
        want(5, 2),
        Counts(running=6, entry_active=6),
        0,
        "max_running",
    ),
    (
        "never negative: entry over max_pilots",
        {"max_pilots": 3},
        want(5, 50),
        Counts(entry_active=7),
        0,
        "entry max_pilots",
    ),
    (
        "never negative: entry over max_idle",
        {"max_idle": 2},
        want(5, 50),
        Counts(entry_queued=5, entry_active=5),
        0,
        "entry max_idle",
    ),
    ("zero per cycle", {"max_per_cycle": 0}, want(5, 50), Counts(), 0, "entry max_per_cycle"),
    (
        "disabled entry submits nothing",
        {"enabled": False},
        want(5, 50),
        Counts(),
        0,
        "entry disabled",
    ),
    (
        "remove allowed but nothing in excess submits",
        {},
        want(3, 50, "IDLE"),
        Counts(queued=1, entry_queued=1, entry_active=1),
        2,
        "idle",
    ),
]


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
    # (id, request, counts, expected plan) -- C(queued, running, removing, held)
    (
        "NO never removes",
        want(0, 0, "NO"),
        Counts(queued=5, running=3),
        SubmitPlan(0, "max_running"),
    ),
    (
        "WAIT never removes either",
        want(0, 0, "WAIT"),
        Counts(queued=5, running=3),
        SubmitPlan(0, "max_running"),
    ),
    (
        "IDLE: queued above idle",
        want(1, 50, "IDLE"),
        Counts(queued=4, running=3),
        RemovePlan(3, 0, "idle above request"),
    ),
    (
        "IDLE: the margin is tolerated",
        want(1, 50, "IDLE", margin=2),
        Counts(queued=4),
        RemovePlan(1, 0, "idle above request"),
    ),
    (
        "IDLE: within the margin nothing goes",
        want(1, 50, "IDLE", margin=3),
        Counts(queued=4),
        SubmitPlan(0, "idle"),
    ),
    (
        "IDLE: held pilots are not-yet-started too",
        want(1, 50, "IDLE"),
        Counts(queued=1, held=2),
        RemovePlan(2, 0, "idle above request"),
    ),
    (
        "IDLE: idle zero removes every queued one, never running ones",
        want(0, 0, "IDLE"),
        Counts(queued=2, running=9),
        RemovePlan(2, 0, "idle above request"),
    ),
    (
        "IDLE: above max_running is not its business",
        want(5, 4, "IDLE"),
        Counts(queued=2, running=5),
        SubmitPlan(0, "max_running"),
    ),
    (
        "IDLE: removals in flight are not counted twice",
        want(1, 50, "IDLE"),
        Counts(queued=2, removing=3),
        RemovePlan(1, 0, "idle above request"),
    ),
    (
        "ALL: queued first, then running",
        want(0, 3, "ALL"),
        Counts(queued=2, running=5),
        RemovePlan(2, 2, "above max_running"),
    ),
    (
        "ALL: only queued needed",
        want(5, 4, "ALL"),
        Counts(queued=2, running=3),
        RemovePlan(1, 0, "above max_running"),
    ),
    (
        "ALL: running only above max_running",
        want(0, 2, "ALL"),
        Counts(running=5),
        RemovePlan(0, 3, "above max_running"),
    ),
    (
        "ALL: margin on running",
        want(0, 2, "ALL", margin=2),
        Counts(running=5),
        RemovePlan(0, 1, "above max_running"),
    ),
    (
        "ALL: zero wanted removes everything",
        want(0, 0, "ALL"),
        Counts(queued=1, running=4, held=1),
        RemovePlan(2, 4, "above max_running"),
    ),
    (
        "ALL: removing ones already going",
        want(0, 2, "ALL"),
        Counts(running=2, removing=3),
        SubmitPlan(0, "max_running"),
    ),
    (
        "ALL: nothing in excess submits",
        want(3, 10, "ALL"),
        Counts(queued=1, running=2),
        SubmitPlan(2, "idle"),
    ),
]


@pytest.mark.parametrize(
    ("request_", "counts", "expected"),
    [case[1:] for case in REMOVE_CASES],
    ids=[case[0] for case in REMOVE_CASES],
)
def test_remove(request_: EntryRequest, counts: Counts, expected: object) -> None:
    decision = plan(entry(), request_, counts)
    assert decision == expected


def test_disabled_entry_and_downtime_still_remove() -> None:
    assert plan(entry(enabled=False), want(0, 10, "IDLE"), Counts(queued=2)) == RemovePlan(
        2, 0, "idle above request"
    )
    assert plan(entry(), want(0, 10, "IDLE"), Counts(queued=2), "maintenance") == RemovePlan(
        2, 0, "idle above request"
    )
    assert plan(entry(), want(5, 10), Counts(), "maintenance") == SubmitPlan(
        0, "downtime: maintenance"
    )


def test_max_held_stops_submission() -> None:
    assert plan(entry(max_held=2), want(5, 10), Counts(entry_held=2)) == SubmitPlan(
        0, "entry max_held"
    )
    assert plan(entry(max_held=2), want(5, 10), Counts(held=1, entry_held=1)) == SubmitPlan(
        5, "idle"
    )


def test_never_negative_never_above_any_bound_never_beyond_excess() -> None:
    """Every small combination: no negative plan, no bound crossed, removal within excess."""
    limits = entry(max_pilots=5, max_idle=3, max_per_cycle=2)
    for queued, running, idle, max_running, margin in itertools.product(range(5), repeat=5):
        for mode in ("NO", "WAIT", "IDLE", "ALL"):
            counts = Counts(
                queued=queued, running=running, entry_queued=queued, entry_active=queued + running
            )
            decision = plan(limits, want(idle, max_running, mode, margin), counts)
            assert decision.count >= 0
            if isinstance(decision, RemovePlan):
                assert mode in ("IDLE", "ALL")
                assert decision.pending <= queued and decision.running <= running
                assert mode == "ALL" or decision.running == 0
                excess = queued - (idle + margin)
                if mode == "ALL":
                    excess = max(excess, queued + running - (max_running + margin))
                assert decision.count == excess  # exactly the excess, never more
                continue
            n = decision.count
            assert n <= 2
            assert n == 0 or queued + n <= idle
            assert n == 0 or queued + running + n <= max_running
            assert n == 0 or (queued + running + n <= 5 and queued + n <= 3)


@pytest.mark.parametrize(
    ("raw", "stage"),
    [
        ("all", RemovalStage.ALL),
        (" wait ", RemovalStage.WAIT),
        ("IDLE", RemovalStage.IDLE),
        ("NO", RemovalStage.NO),
    ],
)
def test_remove_takes_the_stage_names(raw: object, stage: RemovalStage) -> None:
    got = EntryRequest.model_validate({"idle": 0, "max_running": 0, "remove": raw}).remove
    assert got is stage


@pytest.mark.parametrize("raw", ["SOME", 3, None, "", {"x": 1}, True, False])
def test_remove_refuses_anything_else(raw: object) -> None:
    """Booleans included: protocol 1.0 has no older frontend that would send them."""
    with pytest.raises(ValidationError):
        EntryRequest.model_validate({"idle": 0, "max_running": 0, "remove": raw})
    with pytest.raises(ValidationError):
        EntryRequest.model_validate({"idle": 0, "max_running": 0, "remove_margin": -1})


def pilot(gid: str, state: GlideinState, at: float, backend_id: str | None = "b") -> Glidein:
    return Glidein(
        glidein_id=gid,
        entry="e1",
        backend="local",
        frontend="fe",
        group="main",
        backend_id=backend_id and f"{backend_id}-{gid}",
        state=state,
        submitted_at=at,
        updated_at=at,
        exit_reason=None,
        exit_code=None,
        report=None,
    )


def test_choose_victims_order() -> None:
    """Held, then queued newest first, then running newest first; in-flight ones skipped."""
    pilots = [
        pilot("q1", GlideinState.queued, 1),
        pilot("q2", GlideinState.queued, 2),
        pilot("q3", GlideinState.queued, 3, backend_id=None),
        pilot("h1", GlideinState.held, 0),
        pilot("r1", GlideinState.running, 1),
        pilot("r2", GlideinState.running, 5),
        pilot("r3", GlideinState.running, 3),
    ]
    ids = lambda plan_: [g.glidein_id for g in choose_victims(pilots, plan_)]  # noqa: E731
    assert ids(RemovePlan(2, 0, "x")) == ["h1", "q2"]
    assert ids(RemovePlan(3, 2, "x")) == ["h1", "q2", "q1", "r2", "r3"]
    assert ids(RemovePlan(9, 1, "x")) == ["h1", "q2", "q1", "r2"]  # never running for queued
    assert ids(RemovePlan(0, 9, "x")) == ["r2", "r3", "r1"]


DOWNTIMES = [
    {"id": 1, "entry": "e1", "frontend": "*", "start": 100.0, "end": 200.0, "reason": "a"},
    {"id": 2, "entry": "*", "frontend": "fe2", "start": 150.0, "end": None, "reason": "b"},
    {"id": 3, "entry": "e1", "frontend": "fe1", "start": 150.0, "end": 300.0, "reason": "c"},
]


@pytest.mark.parametrize(
    ("entry_", "frontend", "now", "expected"),
    [
        ("e1", "fe1", 50.0, None),  # not started
        ("e1", "fe1", 120.0, "a"),
        ("e1", "fe1", 160.0, "c"),  # two apply: the one ending last
        ("e1", "fe1", 250.0, "c"),
        ("e1", "fe1", 300.0, None),  # end is exclusive
        ("e2", "fe1", 160.0, None),
        ("e2", "fe2", 1e12, "b"),  # open-ended, every entry
        ("e1", "fe2", 160.0, "b"),  # open-ended beats one that ends
    ],
)
def test_active_downtime(entry_: str, frontend: str, now: float, expected: str | None) -> None:
    found = active_downtime(DOWNTIMES, entry_, frontend, now)
    assert (found and found["reason"]) == expected


STATE_CASES = [
    (GlideinState.queued, PilotState.running, GlideinState.running),
    (GlideinState.queued, PilotState.queued, GlideinState.queued),
    (GlideinState.queued, PilotState.held, GlideinState.held),
    (GlideinState.held, PilotState.queued, GlideinState.queued),
    (GlideinState.removing, PilotState.held, GlideinState.removing),
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
        "true",
        "false",
        "3",
        "2.5",
        "x y",
    ]
