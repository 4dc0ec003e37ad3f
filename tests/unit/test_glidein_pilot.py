"""The pilot as a whole: validation before registration, lifetime, black holes, the trail.

Decisions are pure functions tested by tables; whole pilots run in a thread
against `FakePool` (the in-test stand-in for the pool and the factory's
report and log endpoints, from test_glidein_agent). The validation scripts
and bubblewrap are the real ones (CI=true makes a missing bwrap fail).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import glidewms.glidein.agent as agent_pkg
from glidewms.glidein.agent.agent import Agent
from glidewms.glidein.agent.config import load_config
from glidewms.glidein.agent.policy import (
    ExitReason,
    State,
    black_hole,
    core_seconds,
    hold_back,
    job_fits,
    next_step,
    retire_and_die,
)
from glidewms.glidein.agent.resources import Resources
from glidewms.glidein.agent.trail import MAX_CALL_BYTES, Trail
from tests.unit.test_glidein_agent import (
    TOKEN,
    WAIT,
    FakePool,
    claim_for,
    config_text,
    sleeping_python_claim,
)

GLIDEIN = Path(agent_pkg.__file__).parents[1]


@pytest.fixture
def pool() -> Iterator[FakePool]:
    with FakePool() as fake:
        yield fake


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- policy


def state(**changes: Any) -> State:
    base: dict[str, Any] = dict(
        now=100.0,
        idle_since=90.0,
        idle_timeout=60.0,
        deadline=1000.0,
        draining=False,
        running=0,
        free_cpus=2,
        free_memory=100,
        die_at=2000.0,
        tail_timeout=None,
        jobs_run=0,
    )
    base.update(changes)
    return State(**base)


@pytest.mark.parametrize(
    ("facts", "action", "reason"),
    [
        ({}, "claim", None),
        ({"now": 2000.0, "running": 1}, "exit", "lifetime"),  # die: vacate what runs
        ({"now": 1500.0, "running": 1}, "wait", None),  # retired, job still runs
        ({"now": 1500.0}, "exit", "lifetime"),  # retired and idle
        ({"stop_reason": ExitReason.BLACK_HOLE, "stop_detail": "x", "running": 1}, "wait", None),
        ({"stop_reason": ExitReason.BLACK_HOLE, "stop_detail": "x"}, "exit", "black_hole"),
        ({"stop_reason": ExitReason.VALIDATION_FAILED}, "exit", "validation_failed"),
        ({"now": 200.0, "jobs_run": 1, "tail_timeout": 500.0}, "claim", None),  # tail is longer
        ({"now": 200.0, "jobs_run": 0, "tail_timeout": 500.0}, "exit", "idle_timeout"),
        ({"now": 120.0, "jobs_run": 1, "tail_timeout": 10.0}, "exit", "idle_timeout"),
    ],
)
def test_next_step_with_lifetime_and_stops(
    facts: dict[str, Any], action: str, reason: str | None
) -> None:
    step = next_step(state(**facts), 3600)
    assert (step.action, step.reason) == (action, reason)


def test_waiting_while_retired_never_passes_the_die_time() -> None:
    step = next_step(state(now=1995.0, running=1), 3600)
    assert step.action == "wait" and step.seconds == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((3600, 180, 0, 0, 0.5), (3420, 3420)),
        ((3600, 180, 600, 300, 0.0), (2820, 3420)),
        ((3600, 180, 600, 300, 0.999), (2520.3, 3420)),
        ((100, 0, 600, 0, 0.0), (0, 100)),  # never before the start
    ],
)
def test_retire_and_die(args: tuple, expected: tuple[float, float]) -> None:
    assert retire_and_die(*args) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("failures", "jobs", "window", "expected"),
    [
        ([], 3, 60, False),
        ([30, 40, 50], 3, 60, True),
        ([30, 40, 50], 0, 60, False),  # off
        ([10, 20, 80], 3, 60, False),  # the first one is too old
        ([10, 50, 70, 80], 3, 60, True),
    ],
)
def test_black_hole(failures: list[float], jobs: int, window: float, expected: bool) -> None:
    assert black_hole(failures, 80.0, jobs, window) is expected


@pytest.mark.parametrize(
    ("failed", "wall", "jobs", "window", "held"),
    [
        (True, 0.3, 10, 120, 120.0),  # a quick failure: may prove a black hole
        (True, 120.0, 10, 120, 120.0),  # as long as the window: still quick
        (True, 120.5, 10, 120, 0.0),  # slower than the window: the job's own
        (False, 0.3, 10, 120, 0.0),  # a success is never held
        (True, 0.3, 0, 120, 0.0),  # protection off
        (True, 0.3, 10, 0, 0.0),  # no window: off too
    ],
)
def test_hold_back(failed: bool, wall: float, jobs: int, window: float, held: float) -> None:
    assert hold_back(failed, wall, jobs, window) == held


@pytest.mark.parametrize(
    ("wall", "cpus", "expected"),
    [(10.0, 8, 80.0), (10.0, 1, 10.0), (10.0, None, 10.0), (10.0, 0, 10.0), (-1.0, 8, 0.0)],
)
def test_core_seconds(wall: float, cpus: int | None, expected: float) -> None:
    assert core_seconds(wall, cpus) == expected


@pytest.mark.parametrize(("runtime", "expected"), [(None, True), (100, True), (1000, False)])
def test_job_fits(runtime: float | None, expected: bool) -> None:
    assert job_fits(runtime, 0.0, 500.0) is expected


def test_trail_batches_stay_under_the_call_limit() -> None:
    sent: list[dict[str, Any]] = []

    class Factory:
        def call(self, method: str, path: str, body: Any, **_: Any) -> tuple[int, Any]:
            sent.append(body)
            return 200, {}

    trail = Trail(Factory(), "g-1")  # type: ignore[arg-type]
    for i in range(400):
        trail.add("INFO", "log", f"{i}:" + "x" * 7000)
    assert trail.flush(final=True)
    assert len(sent) > 1 and all(len(str(b)) < MAX_CALL_BYTES * 1.1 for b in sent)
    assert [b["final"] for b in sent] == [False] * (len(sent) - 1) + [True]
    assert sum(len(b["records"]) for b in sent) == 400 and trail.pending() == 0


# --------------------------------------------------------------------------- whole pilots


def pilot_dir(
    tmp_path: Path, pool: FakePool, token_file: Path, scripts: bool = True, **config: Any
) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    if scripts:
        shutil.copytree(
            GLIDEIN / "validation",
            work / "validation",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        shutil.copytree(
            GLIDEIN / "agent", work / "agent", ignore=shutil.ignore_patterns("__pycache__")
        )
    (work / "glidein_config").write_text(config_text(pool, work, token_file, **config))
    return work


def start(work: Path, total: Resources | None = None) -> tuple[threading.Thread, Agent]:
    cfg = load_config(str(work / "glidein_config"))
    agent = Agent(cfg, total=total, backoff=0.05, kill_grace=5)
    thread = threading.Thread(target=agent.run, kwargs={"install_signals": False})
    thread.start()
    return thread, agent


def finish(thread: threading.Thread) -> None:
    thread.join(WAIT)
    assert not thread.is_alive(), "the pilot did not exit"


def records(pool: FakePool, kind: str) -> list[dict[str, Any]]:
    return [r for call in pool.logs for r in call["records"] if r["type"] == kind]


FAIL_VO = (
    '#!/bin/bash\nsource "$(dirname "$0")/gconfig.sh"\n'
    'echo "checking experiment software"\n'
    'result_failed VO_Config "experiment software area missing"\n'
)


def add_vo(work: Path, line: str, script: str) -> None:
    (work / "vo").mkdir()
    shutil.copy(GLIDEIN / "validation" / "gconfig.sh", work / "vo")
    (work / "vo" / "scripts.list").write_text(line)
    (work / "vo" / line.split()[1]).write_text(script)
    with (work / "glidein_config").open("a") as f:
        f.write("GLIDEIN_Script_Lists vo/scripts.list\n")


def test_a_failing_validation_means_no_job_is_ever_claimed(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    work = pilot_dir(tmp_path, pool, token_file, GLIDEIN_Container_Runtimes="bwrap")
    add_vo(work, "group vo_check.sh\n", FAIL_VO)
    pool.claims.append(sleeping_python_claim(pool, "c1"))
    thread, agent = start(work)
    finish(thread)
    assert agent.exit_code == 4
    assert pool.registered == [] and pool.claim_requests == [] and pool.deregistered == []
    (report,) = pool.reports
    assert report["exit_reason"] == "validation_failed"
    assert report["detail"] == "group/vo_check: VO_Config: experiment software area missing"
    stages = [(v["stage"], v["name"], v["status"]) for v in report["validation"]]
    assert stages[-1] == ("group", "vo_check", "failed")
    assert all(status == "ok" for _, _, status in stages[:-1]) and len(stages) == 10
    failed = [r for r in records(pool, "validation") if r["severity"] == "ERROR"]
    assert "VO_Config" in failed[0]["content"]
    assert failed[0]["attachments"][0]["name"] == "output"
    assert pool.logs[-1]["final"] is True and records(pool, "exit")


def test_validation_publishes_slot_attributes_and_jobs_run_in_containers(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    if shutil.which("bwrap") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("bwrap is required when CI=true")
        pytest.skip("bwrap is not installed")
    work = pilot_dir(
        tmp_path, pool, token_file, GLIDEIN_Idle_Timeout=1, GLIDEIN_Publish_Env="GLIDEIN_OS"
    )
    job = b'#!/bin/sh\necho "$(pwd) $GLIDEIN_OS $(cat /proc/1/comm)" > where.txt\n'
    pool.claims.append(claim_for(pool, "c1", {"job.sh": job}, container={"image": ""}))
    thread, _ = start(work)
    finish(thread)
    slot = pool.registered[0]["slot"]
    assert slot["HAS_CONTAINER"] is True and slot["GLIDEIN_Container_Runtime"] == "bwrap"
    assert isinstance(slot["GPUs"], int) and slot["GLIDEIN_OS"]
    assert slot["GLIDEIN_ToRetire"] <= slot["GLIDEIN_ToDie"]
    outputs = {o["name"]: pool.files[o["sha256"]] for o in pool.completed["c1"]["outputs"]}
    pwd, os_name, init = outputs["where.txt"].decode().split()
    assert (pwd, os_name) == ("/srv", slot["GLIDEIN_OS"])
    assert init == "bwrap"  # pid 1 of the job's pid namespace is bubblewrap's
    report = pool.reports[0]
    assert report["goodput_seconds"] > 0 and report["badput_seconds"] == 0
    assert records(pool, "job")[0]["content"].startswith("job c1.0: started=True")


FAILING_JOB = b"#!/bin/sh\nexit 7\n"


def test_a_black_hole_stops_claiming_reports_and_holds_the_node(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    work = pilot_dir(
        tmp_path,
        pool,
        token_file,
        scripts=False,
        GLIDEIN_Idle_Timeout=600,
        GLIDEIN_Black_Hole_Jobs=3,
        GLIDEIN_Black_Hole_Window=600,
        GLIDEIN_Black_Hole_Hold=600,
    )
    for i in range(5):
        pool.claims.append(claim_for(pool, f"c{i}", {"job.sh": FAILING_JOB}))
    thread, agent = start(work, Resources(1, 1024, 10**6))
    assert pool.events["report"].wait(WAIT)
    report = pool.reports[0]
    assert (report["exit_reason"], report["jobs_run"], report["jobs_failed"]) == (
        "black_hole",
        3,
        3,
    )
    assert len(pool.claims) == 2  # the last two were never claimed
    assert pool.deregistered == [{"reason": "black_hole"}]
    # the quick failures were held back, never completed, and handed back to
    # the pool as black-hole victims before the pilot left
    assert pool.completed == {}
    [call] = pool.black_holes
    assert sorted(c["claim_id"] for c in call["claims"]) == ["c0", "c1", "c2"]
    assert {c["exit_code"] for c in call["claims"]} == {7}
    assert "3 jobs failed within 600s" in call["detail"]
    assert report["black_hole_requeued"] == 3 and report["hold_seconds"] == 600
    assert report["goodput_core_seconds"] == 0 and report["badput_core_seconds"] > 0
    assert report["pilot_core_seconds"] > 0
    thread.join(0.5)
    assert thread.is_alive(), "the pilot must keep the node after a black hole"
    agent.hold_over.set()  # what SIGTERM from the batch system does
    finish(thread)
    assert agent.exit_code == 5


def test_a_quick_failure_is_held_for_the_window_then_reported_as_it_is(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    """One quick failure is no black hole: held back while it could still become
    one (the pilot's heartbeats keep its claim alive), then completed as the
    job's own failure; a success right after it is not held."""
    work = pilot_dir(
        tmp_path,
        pool,
        token_file,
        scripts=False,
        GLIDEIN_Idle_Timeout=600,
        GLIDEIN_Black_Hole_Jobs=3,
        GLIDEIN_Black_Hole_Window=2,
    )
    pool.claims.append(claim_for(pool, "bad", {"job.sh": FAILING_JOB}))
    pool.claims.append(claim_for(pool, "good", {"job.sh": b"#!/bin/sh\nexit 0\n"}))
    thread, agent = start(work, Resources(1, 1024, 10**6))
    try:
        deadline = time.monotonic() + WAIT
        while "good" not in pool.completed and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pool.completed["good"]["exit_code"] == 0
        assert "bad" not in pool.completed, "a quick failure must wait out the window"
        while "bad" not in pool.completed and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pool.completed["bad"]["exit_code"] == 7
        assert pool.black_holes == []
        assert any("bad" in hb["claims"] for hb in pool.heartbeats), "held claim not renewed"
    finally:
        agent.finish(ExitReason.SIGNAL, "test over")
        finish(thread)


def test_black_hole_victims_go_as_failures_when_the_pool_cannot_take_them(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    """The black-hole call fails: the held results are reported as they are
    (never lost), and the pilot still leaves as a black hole."""
    pool.black_hole_status = 503
    work = pilot_dir(
        tmp_path,
        pool,
        token_file,
        scripts=False,
        GLIDEIN_Black_Hole_Jobs=2,
        GLIDEIN_Black_Hole_Window=600,
        GLIDEIN_Black_Hole_Hold=0,
    )
    for i in range(2):
        pool.claims.append(claim_for(pool, f"c{i}", {"job.sh": FAILING_JOB}))
    thread, _ = start(work, Resources(1, 1024, 10**6))
    finish(thread)
    assert pool.black_holes and sorted(pool.completed) == ["c0", "c1"]
    report = pool.reports[0]
    assert report["exit_reason"] == "black_hole" and report["black_hole_requeued"] == 0
    assert report["hold_seconds"] == 0


def test_the_die_time_vacates_running_jobs(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    work = pilot_dir(
        tmp_path,
        pool,
        token_file,
        scripts=False,
        GLIDEIN_Lifetime=3,
        GLIDEIN_Die_Margin=0,
        GLIDEIN_Retire_Spread=0,
        GLIDEIN_Idle_Timeout=600,
    )
    pool.claims.append(sleeping_python_claim(pool, "c1"))
    thread, _ = start(work, Resources(1, 1024, 10**6))
    finish(thread)
    assert pool.started_jobs and pool.completed == {}
    assert pool.reports[0]["exit_reason"] == "lifetime"
    assert "die time" in pool.reports[0]["detail"]
    assert pool.deregistered == [{"reason": "lifetime"}]  # the pool requeues the job
    assert not Path(f"/proc/{pool.started_jobs[0]['pid']}").exists()


def test_a_job_that_would_not_fit_is_not_started(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    work = pilot_dir(tmp_path, pool, token_file, scripts=False, GLIDEIN_Idle_Timeout=1)
    pool.claims.append(sleeping_python_claim(pool, "c1"))
    pool.claims[0]["job"]["max_runtime"] = 10**6
    thread, _ = start(work, Resources(1, 1024, 10**6))
    finish(thread)
    assert pool.started_jobs == [] and pool.reports[0]["jobs_run"] == 0
    assert 0 < pool.claim_requests[0]["max_runtime"] <= 3600


PERIODIC = """#!/bin/bash
source "$(dirname "$0")/gconfig.sh"
n=$(( $(cat runs 2>/dev/null || echo 0) + 1 )); echo $n > runs
[ $n -ge 2 ] && result_failed WN_Resource "scratch disk went read-only"
result_ok
"""
WAIT_JOB = b"""import os, sys, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
opener.open(urllib.request.Request(sys.argv[1] + "/test/started", data=b"{}"), timeout=10)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
"""


def test_a_periodic_failure_stops_new_jobs_and_the_pilot_retires(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    work = pilot_dir(tmp_path, pool, token_file, scripts=False, GLIDEIN_Idle_Timeout=600)
    add_vo(work, "final periodic.sh period=1\n", PERIODIC)
    release = tmp_path / "release"
    pool.claims.append(
        claim_for(
            pool,
            "c1",
            {"job.py": WAIT_JOB},
            cmd=sys.executable,
            args=["job.py", pool.url, str(release)],
        )
    )
    pool.claims.append(sleeping_python_claim(pool, "c2"))
    thread, _ = start(work, Resources(1, 1024, 10**6))  # one job at a time
    assert pool.events["started"].wait(WAIT)
    for _ in range(int(WAIT / 0.05)):  # poll: heartbeats come from the pilot's thread
        if any(hb.get("retiring") for hb in pool.heartbeats):
            break
        threading.Event().wait(0.05)
    assert any(hb.get("retiring") for hb in pool.heartbeats)
    release.touch()
    finish(thread)
    assert list(pool.completed) == ["c1"]  # the running job finished, no new one started
    assert len(pool.claims) == 1
    report = pool.reports[0]
    assert report["exit_reason"] == "validation_failed"
    assert "scratch disk went read-only" in report["detail"]
    assert report["validation"][-1]["status"] == "failed"


def test_a_factory_without_the_log_endpoint_is_harmless(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    pool.log_status = 404
    work = pilot_dir(tmp_path, pool, token_file, scripts=False, GLIDEIN_Idle_Timeout=1)
    thread, agent = start(work, Resources(1, 1024, 10**6))
    finish(thread)
    assert pool.reports[0]["exit_reason"] == "idle_timeout" and agent.exit_code == 0
    assert agent.trail.enabled is False and pool.logs == []


def test_retire_spread_differs_between_pilots(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    work = pilot_dir(tmp_path, pool, token_file, scripts=False, GLIDEIN_Retire_Spread=600)
    cfg = load_config(str(work / "glidein_config"))
    agents = [Agent(cfg, total=Resources(1, 1, 1)) for _ in range(5)]
    retires = {round(a.deadline - a.started) for a in agents}
    assert len(retires) > 1 and all(not math.isinf(r) and r <= 86400 - 300 for r in retires)


def test_a_full_slot_looks_again_at_the_retire_time_at_the_latest() -> None:
    step = next_step(state(running=1, free_cpus=0, deadline=105.0), 3600)
    assert step.action == "wait" and step.seconds == pytest.approx(5.0)


def test_a_job_signalled_with_its_pilot_is_vacated_not_completed(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    # A batch system ends a pilot's job by signalling all of its processes: the job
    # may die of that SIGTERM before the pilot kills it. Its exit (143) is the
    # site's doing: the job must go back to the pool, not complete as failed.
    work = pilot_dir(tmp_path, pool, token_file, scripts=False, GLIDEIN_Idle_Timeout=600)
    pool.claims.append(sleeping_python_claim(pool, "c1"))
    thread, agent = start(work, Resources(1, 1024, 10**6))
    assert pool.events["started"].wait(WAIT)
    pid = pool.started_jobs[0]["pid"]
    os.killpg(pid, signal.SIGTERM)  # the job first...
    deadline = time.monotonic() + WAIT
    while Path(f"/proc/{pid}").exists():  # reaped: the pilot has seen the job end
        assert time.monotonic() < deadline, "the job did not die of SIGTERM"
        time.sleep(0.01)
    agent.on_signal(signal.SIGTERM)  # ...then the pilot, as the batch system does
    finish(thread)
    assert pool.completed == {}, "a job killed by the site was completed"
    assert agent.exit_code == 128 + signal.SIGTERM
    (report,) = pool.reports
    assert (report["exit_reason"], report["jobs_run"], report["jobs_failed"]) == ("signal", 1, 0)
    assert pool.deregistered == [{"reason": "signal"}]
    assert "killed=True" in records(pool, "job")[0]["content"]


def test_the_signal_handler_takes_no_lock_its_thread_may_hold(
    pool: FakePool, tmp_path: Path, token_file: Path
) -> None:
    # A handler runs in the main thread between two bytecodes: if it took a lock that
    # thread holds at that moment (an Event's, while waking from `finished.wait()`,
    # when the batch system's SIGTERM and the bootstrap's forwarded one land together)
    # the pilot would hang forever, jobs and node kept.
    work = pilot_dir(tmp_path, pool, token_file, scripts=False)
    agent = Agent(load_config(str(work / "glidein_config")), total=Resources(1, 1024, 10**6))
    returned = threading.Event()

    def signal_lands_while_the_lock_is_held() -> None:
        with agent.finished._cond:  # the lock Event.wait holds when it wakes
            agent.on_signal(signal.SIGTERM)
            agent.on_signal(signal.SIGINT)  # a second one changes nothing
        returned.set()

    threading.Thread(target=signal_lands_while_the_lock_is_held, daemon=True).start()
    assert returned.wait(WAIT), "the signal handler blocked on a lock its thread held"
    assert agent._take_signal() and agent.reason == "signal"
    assert agent.exit_code == 128 + signal.SIGTERM and agent.hold_over.is_set()


def test_a_kill_that_races_the_job_start_still_kills_it(tmp_path: Path) -> None:
    from glidewms.glidein.agent.jobs import JobProcess, job_environment
    from tests.unit.test_glidein_agent import make_job

    spec, sandbox = make_job(tmp_path, "exec sleep 300\n")
    process = JobProcess(spec, str(sandbox), job_environment(spec, str(sandbox), {}))
    process.kill(5)  # the pilot vacates before the process exists
    started = time.monotonic()
    assert process.run() == 128 + signal.SIGTERM
    assert time.monotonic() - started < WAIT
