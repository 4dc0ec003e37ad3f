"""Recovery decisions, case by case: back-off and pause after repeated failures,
held pilots released a bounded number of times then removed, stale pilots,
per-frontend limits, and finding interrupted submissions again."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from glidewms.config.factory import EntryConfig, RecoveryConfig
from glidewms.factory.backends import BackendContext
from glidewms.factory.backends.shell import Shell
from glidewms.factory.backends.slurm import SlurmBackend, parse_marked_arrays
from glidewms.factory.policy import Counts, EntryRequest, SubmitPlan, plan
from glidewms.factory.recovery import (
    EntryHealth,
    HeldAction,
    after_failure,
    after_success,
    held_action,
    resumed,
    stale_reason,
    submit_blocked,
)
from glidewms.factory.restart import submission_order
from glidewms.factory.states import GlideinState
from glidewms.factory.store import Glidein

RECOVERY = RecoveryConfig(
    pause_after_failures=3,
    pause_cooldown=100,
    max_releases=2,
    release_backoff=10,
    max_queued_time=500,
    walltime_grace=50,
)


def failures(n: int, start: float = 1000.0) -> EntryHealth:
    health = EntryHealth()
    for i in range(n):
        health = after_failure(health, f"error {i + 1}", start, 1.0, RECOVERY)
    return health


def test_backoff_doubles_then_pauses_after_the_limit() -> None:
    one, two, three = failures(1), failures(2), failures(3)
    assert (one.failures, one.next_try, one.paused) == (1, 1002.0, False)
    assert (two.failures, two.next_try, two.paused) == (2, 1004.0, False)
    assert three.paused and three.paused_at == 1000.0
    assert three.paused_reason == "3 submissions failed in a row; last: error 3"
    view = three.view(RECOVERY)
    assert view is not None and view["retry_at"] == 1100.0 and view["failures"] == 3
    assert EntryHealth().view(RECOVERY) is None


BLOCKED_CASES = [
    # (id, health, now, blocked?)
    ("healthy", EntryHealth(), 1000.0, False),
    ("backing off", failures(1), 1001.0, True),
    ("back-off over", failures(1), 1002.0, False),
    ("paused", failures(3), 1050.0, True),
    ("paused past its back-off, still paused", failures(3), 1099.0, True),
    ("cool-down over: one try", failures(3), 1100.0, False),
    ("resumed by an operator", resumed(failures(3)), 1001.0, False),
    ("a success clears everything", after_success(failures(3)), 1001.0, False),
]


@pytest.mark.parametrize(
    ("health", "now", "blocked"), [c[1:] for c in BLOCKED_CASES], ids=[c[0] for c in BLOCKED_CASES]
)
def test_submit_blocked(health: EntryHealth, now: float, blocked: bool) -> None:
    reason = submit_blocked(health, now, RECOVERY)
    assert (reason is not None) is blocked
    if health.paused and blocked:
        assert reason is not None and reason.startswith("paused: 3 submissions failed")


def test_a_failed_try_after_the_cooldown_pauses_again_at_once() -> None:
    again = after_failure(failures(3), "still broken", 1100.0, 1.0, RECOVERY)
    assert again.paused_at == 1100.0 and again.failures == 4
    assert submit_blocked(again, 1101.0, RECOVERY) is not None


def test_resume_keeps_the_last_error_but_no_pause() -> None:
    back = resumed(failures(3))
    assert not back.paused and back.failures == 0 and back.last_error == "error 3"


def pilot(state: GlideinState, since: float, releases: int = 0, submitted: float = 0.0) -> Glidein:
    return Glidein(
        glidein_id="e1-t-1",
        entry="e1",
        backend="slurm",
        frontend="fe1",
        group="g",
        backend_id="e1/1_0",
        state=state,
        submitted_at=submitted,
        updated_at=since,
        exit_reason=None,
        exit_code=None,
        report=None,
        releases=releases,
        state_since=since,
    )


HELD_CASES = [
    # (id, pilot, now, can release, action)
    ("not held", pilot(GlideinState.queued, 0), 1000, True, HeldAction.WAIT),
    (
        "held, too early for a first release",
        pilot(GlideinState.held, 100),
        109,
        True,
        HeldAction.WAIT,
    ),
    (
        "held long enough: first release",
        pilot(GlideinState.held, 100),
        110,
        True,
        HeldAction.RELEASE,
    ),
    (
        "second hold waits twice as long",
        pilot(GlideinState.held, 100, 1),
        119,
        True,
        HeldAction.WAIT,
    ),
    ("second release", pilot(GlideinState.held, 100, 1), 120, True, HeldAction.RELEASE),
    (
        "released max_releases times: removed",
        pilot(GlideinState.held, 100, 2),
        100,
        True,
        HeldAction.REMOVE,
    ),
    (
        "a backend that cannot release: removed",
        pilot(GlideinState.held, 100),
        100,
        False,
        HeldAction.REMOVE,
    ),
]


@pytest.mark.parametrize(
    ("g", "now", "can", "action"), [c[1:] for c in HELD_CASES], ids=[c[0] for c in HELD_CASES]
)
def test_held_action(g: Glidein, now: float, can: bool, action: HeldAction) -> None:
    assert held_action(g, now, RECOVERY, can) is action


ENTRY = EntryConfig(name="e1", site="S", walltime=1000, recovery=RECOVERY)
STALE_CASES = [
    ("queued within limits", pilot(GlideinState.queued, 0), 500, None),
    ("queued too long", pilot(GlideinState.queued, 0), 501, "stale_queued"),
    ("running within walltime + grace", pilot(GlideinState.running, 0), 1050, None),
    ("running beyond walltime + grace", pilot(GlideinState.running, 0), 1051, "stale_running"),
    ("held pilots are held_action's business", pilot(GlideinState.held, 0), 10**6, None),
    ("removing ones are on their way", pilot(GlideinState.removing, 0), 10**6, None),
]


@pytest.mark.parametrize(
    ("g", "now", "reason"), [c[1:] for c in STALE_CASES], ids=[c[0] for c in STALE_CASES]
)
def test_stale_reason(g: Glidein, now: float, reason: str | None) -> None:
    assert stale_reason(g, ENTRY, now) == reason


LIMITED = EntryConfig(
    name="e1",
    site="S",
    max_pilots=100,
    max_idle=100,
    max_per_cycle=100,
    frontend_limits={"fe1": {"max_pilots": 6, "max_idle": 3}},
)
FRONTEND_CASES = [
    # (id, frontend, counts, count, limited by)
    (
        "fe1 idle cap over all its groups",
        "fe1",
        Counts(frontend_queued=2, frontend_active=2),
        1,
        "frontend max_idle",
    ),
    (
        "fe1 pilots cap",
        "fe1",
        Counts(frontend_queued=0, frontend_active=5),
        1,
        "frontend max_pilots",
    ),
    ("fe1 at its cap", "fe1", Counts(frontend_active=7), 0, "frontend max_pilots"),
    (
        "another frontend is not limited by fe1's caps",
        "fe2",
        Counts(frontend_queued=9, frontend_active=9),
        10,
        "idle",
    ),
]


@pytest.mark.parametrize(
    ("frontend", "counts", "count", "by"),
    [c[1:] for c in FRONTEND_CASES],
    ids=[c[0] for c in FRONTEND_CASES],
)
def test_per_frontend_limits(frontend: str, counts: Counts, count: int, by: str) -> None:
    decided = plan(LIMITED, EntryRequest(idle=10, max_running=50), counts, None, frontend)
    assert decided == SubmitPlan(count, by)


def test_marked_arrays_from_squeue() -> None:
    text = "\n".join(
        [
            "77_2|glidewms:e1-ab-11",
            "77_0|glidewms:e1-ab-9",
            "77_1|glidewms:e1-ab-9",
            "77_10|glidewms:e1-ab-9",
            "78_0|someone else's comment",
            "79|glidewms:e1-ab-1",
        ]
    )
    assert parse_marked_arrays(text) == {"e1-ab-11": ["77_2"], "e1-ab-9": ["77_0", "77_1", "77_10"]}


def test_submission_order_follows_the_counter_not_the_string() -> None:
    gs = [pilot(GlideinState.queued, 0) for _ in range(3)]
    ids = ["e1-ab-10", "e1-ab-9", "e1-ab-100"]
    gs = [Glidein(**{**g.__dict__, "glidein_id": i}) for g, i in zip(gs, ids, strict=True)]
    assert [g.glidein_id for g in sorted(gs, key=submission_order)] == [
        "e1-ab-9",
        "e1-ab-10",
        "e1-ab-100",
    ]


class MarkedArrays(SlurmBackend):
    """Only `find_arrays` replaced: the mapping from marks to glideins is under test."""

    def __init__(self, arrays: dict[str, list[str]]) -> None:
        super().__init__(
            BackendContext(state_dir=Path("/nonexistent"), bootstrap=Path("/nonexistent"))
        )
        self.arrays = arrays

    async def find_arrays(self, shell: Shell, entry: EntryConfig) -> dict[str, list[str]]:
        return self.arrays


def adopt(arrays: dict[str, list[str]], ids: Sequence[str]) -> dict[str, str]:
    return asyncio.run(MarkedArrays(arrays).adopt(ENTRY, ids))


def test_adopt_maps_each_array_task_to_the_pilot_it_was_given() -> None:
    ids = ["e1-ab-1", "e1-ab-2", "e1-ab-3", "e1-ab-4", "e1-ab-5"]
    # two arrays (3 + 1 tasks); e1-ab-5's array never reached Slurm
    found = adopt({"e1-ab-1": ["5_0", "5_1", "5_2"], "e1-ab-4": ["6_0"], "x-zz-1": ["7_0"]}, ids)
    assert found == {
        "e1-ab-1": "e1/5_0",
        "e1-ab-2": "e1/5_1",
        "e1-ab-3": "e1/5_2",
        "e1-ab-4": "e1/6_0",
    }
    assert adopt({}, ids) == {}
