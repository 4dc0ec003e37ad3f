"""Entry health from pilots, case by case (pilot_health.py): what counts as a
failure, the streak and its decay, the back-off per cycle, the pause after N,
probes (doubling, capped) and the resume by a pilot that registers."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from glidewms.config.factory import RecoveryConfig
from glidewms.factory.pilot_health import (
    ENDED,
    STARTED,
    Allowance,
    Outcome,
    Verdict,
    after_pilot,
    allowance,
    judge,
)
from glidewms.factory.recovery import (
    BY_OPERATOR,
    BY_PILOTS,
    EntryHealth,
    after_failure,
    after_success,
    paused_by_operator,
    resumed,
)
from glidewms.factory.states import GlideinState as S
from glidewms.factory.store import Glidein

RECOVERY = RecoveryConfig(
    pause_after_pilot_failures=3,
    pilot_success_decay=0.5,
    probe_interval=100,
    probe_interval_max=350,
)
VALIDATION = [
    {"name": "cpus", "stage": "factory", "status": "ok", "category": ""},
    {"name": "os_arch", "stage": "factory", "status": "failed", "category": "WN_Resource"},
]


def pilot(
    state: S,
    reason: str | None = None,
    code: int | None = None,
    report: dict[str, Any] | None = None,
    registered: bool = False,
    counted: str | None = None,
    gid: str = "e-1",
) -> Glidein:
    return Glidein(
        glidein_id=gid,
        entry="e",
        backend="local",
        frontend="fe",
        group="main",
        backend_id="1",
        state=state,
        submitted_at=0.0,
        updated_at=0.0,
        exit_reason=reason,
        exit_code=code,
        report=report,
        registered_at=5.0 if registered else None,
        health_counted=counted,
    )


def said(reason: str, code: int, jobs: int = 0, **extra: Any) -> dict[str, Any]:
    return {"exit_reason": reason, "exit_code": code, "jobs_run": jobs, **extra}


F, OK, N = Outcome.FAILURE, Outcome.SUCCESS, Outcome.NEUTRAL
BAD_OS = said("validation_failed", 4, detail="factory/os_arch: WN_Resource: need NoSuchOS1")

JUDGE_CASES = [
    # (id, pilot, (outcome, mark, started) or None)
    ("queued: nothing yet", pilot(S.queued), None),
    ("running, not registered: nothing yet", pilot(S.running), None),
    ("registered: started", pilot(S.running, registered=True), (N, STARTED, True)),
    ("registered, already counted", pilot(S.running, registered=True, counted=STARTED), None),
    (
        "validation failed",
        pilot(S.failed, "validation_failed", 4, BAD_OS | {"validation": VALIDATION}),
        (F, ENDED, False),
    ),
    (
        "validation failed, report while still running",
        pilot(S.running, "validation_failed", 4, BAD_OS),
        (F, ENDED, False),
    ),
    ("corrupt stage before any job", pilot(S.failed, "corruption", 3, said("corruption", 3)), F),
    ("registration refused", pilot(S.failed, "error", 1, said("error", 1)), (F, ENDED, False)),
    ("ended failed without a report", pilot(S.failed), (F, ENDED, False)),
    (
        "black hole after registering",
        pilot(S.running, "black_hole", 5, said("black_hole", 5, jobs=9), True, STARTED),
        (F, ENDED, False),
    ),
    (
        "black hole, registration unseen",
        pilot(S.finished, "black_hole", 5, said("black_hole", 5)),
        F,
    ),
    ("idle timeout: success", pilot(S.finished, "idle_timeout", 0, said("idle_timeout", 0)), OK),
    ("lifetime after jobs", pilot(S.finished, "lifetime", 0, said("lifetime", 0, jobs=4)), OK),
    (
        "ran jobs then an error: not the site's",
        pilot(S.failed, "error", 1, said("error", 1, jobs=3), True, STARTED),
        (N, ENDED, False),
    ),
    (
        "periodic validation failed after jobs",
        pilot(S.finished, "validation_failed", 4, said("validation_failed", 4, jobs=2), True),
        (N, ENDED, True),
    ),
    ("batch system's SIGTERM", pilot(S.failed, "signal", 143, said("signal", 143)), N),
    ("the pool lost it", pilot(S.failed, "lost", 3, said("lost", 3)), N),
    ("removed by the factory, no report", pilot(S.removed), N),
    ("removed as held", pilot(S.removed, "held"), N),
    ("removed as stale", pilot(S.removed, "stale_queued"), N),
    ("failed submission (recovery.py's)", pilot(S.failed, "submit_failed"), N),
    ("finished without a report", pilot(S.finished, None, 0), N),
    ("already counted", pilot(S.failed, "validation_failed", 4, BAD_OS, counted=ENDED), None),
]


@pytest.mark.parametrize(
    ("g", "expected"), [c[1:] for c in JUDGE_CASES], ids=[c[0] for c in JUDGE_CASES]
)
def test_judge(g: Glidein, expected: Any) -> None:
    verdict = judge(g)
    if expected is None:
        assert verdict is None
        return
    assert verdict is not None
    if isinstance(expected, Outcome):
        assert (verdict.outcome, verdict.mark) == (expected, ENDED)
    else:
        assert (verdict.outcome, verdict.mark, verdict.started) == expected


def test_a_validation_failure_names_its_check_and_reason() -> None:
    report = BAD_OS | {"validation": VALIDATION, "detail": "factory/os_arch: WN_Resource:\nx" * 50}
    verdict = judge(pilot(S.failed, "validation_failed", 4, report))
    assert verdict is not None and verdict.check == "factory/os_arch (WN_Resource)"
    assert verdict.reason.startswith("validation failed: factory/os_arch: WN_Resource: x")
    assert "\n" not in verdict.reason and len(verdict.reason) <= 330
    hostile = judge(pilot(S.failed, "error", 1, said("error", 1, detail="\x1b]0;pwned\x07 ok")))
    assert (
        hostile is not None
        and hostile.reason == "exit before the first job: error: \\x1b]0;pwned\\x07 ok"
    )


def fail(gid: str = "e-1") -> Verdict:
    return Verdict(gid, F, "validation failed: factory/os_arch", ENDED)


def good(gid: str = "e-1") -> Verdict:
    return Verdict(gid, OK, "idle_timeout", ENDED)


def started(gid: str = "e-1") -> Verdict:
    return Verdict(gid, N, "registered", STARTED, started=True)


def neutral(gid: str = "e-1") -> Verdict:
    return Verdict(gid, N, "signal", ENDED)


def fold(*verdicts: Verdict, health: EntryHealth | None = None, now: float = 1000.0) -> EntryHealth:
    health = health or EntryHealth()
    for v in verdicts:
        health = after_pilot(health, v, now, RECOVERY)
    return health


PAUSED = fold(fail(), fail(), fail())
PROBING = replace(PAUSED, probe_id="e-9")

FOLD_CASES = [
    # (id, health, (streak, paused by, probe_at, probes))
    ("one failure", fold(fail()), (1, None, None, 0)),
    ("two failures", fold(fail(), fail()), (2, None, None, 0)),
    ("a success halves the streak", fold(fail(), fail(), good()), (1, None, None, 0)),
    ("successes forget it", fold(fail(), fail(), good(), good()), (0, None, None, 0)),
    ("neutral ends change nothing", fold(fail(), neutral(), neutral()), (1, None, None, 0)),
    ("a registration alone changes nothing", fold(fail(), started()), (1, None, None, 0)),
    ("three in the streak pause", PAUSED, (3, BY_PILOTS, 1100.0, 0)),
    ("failures in flight keep it paused", fold(fail(), health=PAUSED), (4, BY_PILOTS, 1100.0, 0)),
    ("a probe that fails: 2x later", fold(fail("e-9"), health=PROBING), (4, BY_PILOTS, 1200.0, 1)),
    (
        "probes fail: doubling up to the cap",
        fold(fail("e-9"), health=replace(PROBING, probes=2)),
        (4, BY_PILOTS, 1350.0, 3),
    ),
    (
        "a probe that ends saying nothing",
        fold(neutral("e-9"), health=PROBING),
        (3, BY_PILOTS, 1100.0, 0),
    ),
    ("a probe that registers resumes", fold(started("e-9"), health=PROBING), (2, None, None, 0)),
    ("any pilot that registers resumes", fold(started("e-2"), health=PAUSED), (2, None, None, 0)),
    (
        "one failure on probation pauses again",
        fold(started("e-9"), fail(), health=PROBING),
        (3, BY_PILOTS, 1100.0, 0),
    ),
    (
        "a later pause waits longer",
        fold(started("e-9"), fail(), health=replace(PROBING, probes=2)),
        (3, BY_PILOTS, 1350.0, 2),
    ),
    (
        "a success that clears the streak clears the probes",
        fold(good(), good(), health=replace(fold(fail()), probes=2)),
        (0, None, None, 0),
    ),
    (
        "an operator's pause is not lifted by a pilot",
        fold(started(), good(), health=paused_by_operator(EntryHealth(), "x", 1.0)),
        (0, BY_OPERATOR, None, 0),
    ),
    ("an operator's resume forgets all", resumed(replace(PAUSED, probes=3)), (0, None, None, 0)),
]


@pytest.mark.parametrize(
    ("health", "expected"), [c[1:] for c in FOLD_CASES], ids=[c[0] for c in FOLD_CASES]
)
def test_after_pilot(health: EntryHealth, expected: tuple[Any, ...]) -> None:
    got = (health.pilot_failures, health.paused_by if health.paused else None)
    assert (*got, health.probe_at, health.probes) == expected


def test_a_pause_says_why_and_when_the_probe_goes() -> None:
    assert PAUSED.paused_reason == (
        "3 pilots failed (streak); last: validation failed: factory/os_arch"
    )
    view = PAUSED.view(RECOVERY)
    assert view is not None
    assert (view["by"], view["failures"], view["retry_at"], view["probe"]) == (
        BY_PILOTS,
        3,
        1100.0,
        None,
    )
    assert paused_by_operator(EntryHealth(), "site upgrade", 5.0).view(RECOVERY) == {
        "since": 5.0,
        "by": BY_OPERATOR,
        "reason": "site upgrade",
        "failures": 0,
        "retry_at": None,
        "probe": None,
        "probes_failed": 0,
    }


ALLOW_CASES = [
    # (id, health, now, allowance of an entry with max_per_cycle 10)
    ("healthy: no limit", EntryHealth(), 1000.0, Allowance(None)),
    (
        "streak 1: half",
        fold(fail()),
        1000.0,
        Allowance(5, "backing off after a streak of 1 failures"),
    ),
    (
        "streak 2: a quarter",
        fold(fail(), fail()),
        1000.0,
        Allowance(2, "backing off after a streak of 2 failures"),
    ),
    (
        "long streak: still one",
        replace(fold(fail()), pilot_failures=40),
        1000.0,
        Allowance(1, "backing off after a streak of 40 failures"),
    ),
    ("paused: nothing", PAUSED, 1099.0, Allowance(0, f"paused: {PAUSED.paused_reason}")),
    ("probe due: one probe", PAUSED, 1100.0, Allowance(1, "paused: one probe pilot", probe=True)),
    (
        "probe out: nothing",
        PROBING,
        5000.0,
        Allowance(0, f"paused: {PAUSED.paused_reason}; probe e-9 out"),
    ),
    (
        "operator: nothing, ever",
        paused_by_operator(EntryHealth(), "upgrade", 1.0),
        10**9,
        Allowance(0, "paused by an operator: upgrade"),
    ),
]


@pytest.mark.parametrize(
    ("health", "now", "expected"), [c[1:] for c in ALLOW_CASES], ids=[c[0] for c in ALLOW_CASES]
)
def test_allowance(health: EntryHealth, now: float, expected: Allowance) -> None:
    assert allowance(health, now, RECOVERY, 10) == expected


def test_submissions_and_pilots_pause_apart() -> None:
    """A failed probe submission does not turn a pause by pilots into a pause by
    submissions, and a submission that works does not lift a pause by pilots."""
    strict = RECOVERY.model_copy(update={"pause_after_failures": 1})
    failed = after_failure(PAUSED, "sbatch: error", 1000.0, 1.0, strict)
    assert failed.paused_by == BY_PILOTS and failed.failures == 1
    assert after_success(failed).paused_by == BY_PILOTS and after_success(failed).failures == 0
    by_submission = after_failure(EntryHealth(), "sbatch: error", 1000.0, 1.0, strict)
    assert by_submission.pause_kind == "submissions"
    assert not after_success(by_submission).paused
