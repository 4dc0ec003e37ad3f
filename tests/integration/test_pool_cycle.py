"""The pilot turn (POST /pilots/{id}/cycle: completions and claims in one call)
and the exit policy (max_retries, on_exit_hold, on_exit_remove), through the
real API on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from glidewms.config.pool import PoolConfig
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401
from tests.integration.test_pool_partitionable import register, submit

TRUE = '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 10 ]'
SLOT = {"Cpus": 16, "Memory": 16000, "Disk": 100000, "GLIDEIN_Site": "LOCAL"}
FREE = {"cpus": 16, "memory": 16000, "disk": 100000, "gpus": 0}


@pytest.fixture
def pool_config(pool_config: PoolConfig, database_url: str | None) -> PoolConfig:  # noqa: F811
    pool_config.database_url = database_url
    return pool_config


def cycle(
    pool: TestClient,
    pilot: dict,
    pid: str,
    done: list[tuple[str, int]],
    max_jobs: int = 16,
    **extra: Any,
) -> dict[str, Any]:
    body = {
        "completions": [
            {"claim_id": c, "exit_code": code, "wall_seconds": 0.01} for c, code in done
        ],
        "free": FREE,
        "max_jobs": max_jobs,
        "wait": 0,
        **extra,
    }
    r = pool.post(f"/api/v1/pilots/{pid}/cycle", json=body, headers=pilot)
    assert r.status_code == 200, r.text
    return r.json()


def run_until_idle(
    pool: TestClient, pilot: dict, pid: str, exit_code: int = 0, max_jobs: int = 16
) -> list[dict[str, Any]]:
    """Turns as a pilot with 16 slots takes them: every job of a turn ends
    and is reported by the next turn, until nothing is running or idle (a
    job an exit policy requeues is claimable from the next turn on).
    Returns every claim handed out."""
    claims: list[dict[str, Any]] = []
    held: list[str] = []
    for _ in range(200):
        answer = cycle(pool, pilot, pid, [(c, exit_code) for c in held], max_jobs)
        assert set(answer["completed"]) == set(held)
        assert all(answer["completed"].values())
        claims += answer["claims"]
        was_running = bool(held)
        held = [c["claim_id"] for c in answer["claims"]]
        if not held and not was_running:
            return claims
    raise AssertionError("the queue never drained")


def test_each_job_is_claimed_and_completed_exactly_once(pool: TestClient, auth) -> None:
    """300 jobs through turns of 10 claims: turns cross the pool's prefetch of
    64 idle jobs, so a turn that re-reads a pair's head must not hand out a job
    it already chose (its one UPDATE comes at the end of the turn)."""
    user, pilot = auth("alice"), auth("pilot", "pilot")
    ids = submit(pool, user, TRUE, 300)
    pid = register(pool, pilot, SLOT)
    claims = run_until_idle(pool, pilot, pid, max_jobs=10)
    assert sorted(c["job_id"] for c in claims) == sorted(ids)  # each once, none left
    assert len({c["claim_id"] for c in claims}) == 300
    stats = pool.get("/api/v1/stats", headers=user).json()
    assert stats["counters"]["jobs_completed"] == 300
    assert stats["queue"] == {"idle": 0, "running": 0}
    for jid in (ids[0], ids[63], ids[64], ids[150], ids[-1]):
        kinds = [e["type"] for e in pool.get(f"/api/v1/jobs/{jid}/events", headers=user).json()]
        assert kinds == ["submitted", "started", "completed"]


def test_a_stale_completion_is_refused_alone(pool: TestClient, auth) -> None:
    """A completion the pool no longer holds (job removed meanwhile, or never
    this pilot's) answers false; the others of the same call are committed."""
    user, pilot = auth("alice"), auth("pilot", "pilot")
    submit(pool, user, TRUE, 3)
    pid = register(pool, pilot, SLOT)
    other = register(pool, pilot, SLOT)
    first = cycle(pool, pilot, pid, [])["claims"]
    assert len(first) == 3
    a, b, c = (x["claim_id"] for x in first)
    r = pool.post("/api/v1/jobs/remove", json={"job_ids": [first[1]["job_id"]]}, headers=user)
    assert r.json()["changed"] == [first[1]["job_id"]]
    assert cycle(pool, pilot, other, [(c, 0)], max_jobs=0)["completed"] == {c: False}
    answer = cycle(pool, pilot, pid, [(a, 0), (b, 0), (c, 0), ("nonsense", 0)])
    assert answer == {"completed": {a: True, b: False, c: True, "nonsense": False}, "claims": []}
    again = cycle(pool, pilot, pid, [(a, 0)], max_jobs=0)
    assert again["completed"] == {a: False}  # never completed twice
    assert pool.get("/api/v1/stats", headers=user).json()["counters"]["jobs_completed"] == 2


def test_an_empty_turn_long_polls_then_answers_nothing(pool: TestClient, auth) -> None:
    pilot = auth("pilot", "pilot")
    pid = register(pool, pilot, SLOT)
    assert cycle(pool, pilot, pid, [], wait=0.2) == {"completed": {}, "claims": []}
    r = pool.post("/api/v1/pilots/nope/cycle", json={"free": FREE}, headers=pilot)
    assert r.status_code == 404


def job_of(pool: TestClient, user: dict, jid: str) -> dict[str, Any]:
    return pool.get(f"/api/v1/jobs/{jid}", headers=user).json()


def test_max_retries_reruns_a_failing_job_then_completes_it(pool: TestClient, auth) -> None:
    """max_retries = 2: a job exiting 1 runs 3 times in all, then completes
    with its exit code; each rerun is a `requeued` event."""
    user, pilot = auth("alice"), auth("pilot", "pilot")
    [jid] = submit(pool, user, TRUE[:-1] + "; MaxRetries = 2 ]")
    pid = register(pool, pilot, SLOT)
    claims = run_until_idle(pool, pilot, pid, exit_code=1)
    assert [c["job_id"] for c in claims] == [jid] * 3
    job = job_of(pool, user, jid)
    assert (job["state"], job["exit_code"], job["num_starts"]) == ("completed", 1, 3)
    assert "NumJobCompletions = 3" in job["ad"]
    events = pool.get(f"/api/v1/jobs/{jid}/events", headers=user).json()
    kinds = [e["type"] for e in events]
    assert kinds == [
        "submitted",
        "started",
        "requeued",
        "started",
        "requeued",
        "started",
        "completed",
    ]
    assert events[2]["detail"]["by"] == "max_retries"
    assert events[2]["detail"]["num_job_completions"] == 1


def test_max_retries_stops_at_the_first_success(pool: TestClient, auth) -> None:
    user, pilot = auth("alice"), auth("pilot", "pilot")
    [jid] = submit(pool, user, TRUE[:-1] + "; MaxRetries = 5 ]")
    pid = register(pool, pilot, SLOT)
    assert len(run_until_idle(pool, pilot, pid, exit_code=0)) == 1
    assert job_of(pool, user, jid)["state"] == "completed"


def test_on_exit_hold_holds_with_code_3(pool: TestClient, auth) -> None:
    user, pilot = auth("alice"), auth("pilot", "pilot")
    ad = TRUE[:-1] + '; OnExitHold = ExitCode =!= 0; OnExitHoldReason = "bad exit" ]'
    [bad, good] = [submit(pool, user, ad)[0], submit(pool, user, ad)[0]]
    pid = register(pool, pilot, SLOT)
    claims = cycle(pool, pilot, pid, [])["claims"]
    by_job = {c["job_id"]: c["claim_id"] for c in claims}
    answer = cycle(pool, pilot, pid, [(by_job[bad], 3), (by_job[good], 0)], max_jobs=0)
    assert all(answer["completed"].values())
    held, done = job_of(pool, user, bad), job_of(pool, user, good)
    assert (held["state"], held["hold_reason"], held["hold_reason_code"]) == ("held", "bad exit", 3)
    assert held["exit_code"] == 3
    assert done["state"] == "completed"
    last = pool.get(f"/api/v1/jobs/{bad}/events", headers=user).json()[-1]
    assert (last["type"], last["detail"]["by"], last["detail"]["code"]) == (
        "held",
        "on_exit_hold",
        3,
    )


def test_on_exit_remove_false_sends_the_job_back_to_idle(pool: TestClient, auth) -> None:
    """on_exit_remove = NumJobCompletions >= 2: the first run goes back to idle
    (through the single complete call too), the second completes."""
    user, pilot = auth("alice"), auth("pilot", "pilot")
    [jid] = submit(pool, user, TRUE[:-1] + "; OnExitRemove = NumJobCompletions >= 2 ]")
    pid = register(pool, pilot, SLOT)
    [claim] = cycle(pool, pilot, pid, [])["claims"]
    r = pool.post(
        f"/api/v1/claims/{claim['claim_id']}/complete",
        json={"exit_code": 0, "outputs": [], "wall_seconds": 0.1},
        headers=pilot,
    )
    assert r.status_code == 200 and r.json()["state"] == "idle"
    assert job_of(pool, user, jid)["state"] == "idle"
    assert pool.get("/api/v1/stats", headers=user).json()["queue"]["idle"] == 1
    claims = run_until_idle(pool, pilot, pid)
    assert [c["job_id"] for c in claims] == [jid]
    assert job_of(pool, user, jid)["state"] == "completed"
