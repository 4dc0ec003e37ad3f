"""Concurrency limits and fair share by accounting group, through the pool's
API with pilot turns driven by hand: every step is asserted from the pool's
state, never from timing. On SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from glidewms.config.pool import PoolConfig
from glidewms.pool.api import create_app
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401
from tests.integration.test_metrics import scrape

SLOT = {"Cpus": 64, "Memory": 64000, "Disk": 1000000}


@pytest.fixture
def pool_config(pool_config: PoolConfig, database_url: str | None) -> PoolConfig:  # noqa: F811
    pool_config.database_url = database_url
    return pool_config


def submit(pool: TestClient, who: dict, ad: str, n: int = 1) -> list[str]:
    r = pool.post("/api/v1/jobs", json={"jobs": [{"ad": ad}] * n}, headers=who)
    assert r.status_code == 201, r.text
    return r.json()["job_ids"]


def register(pool: TestClient, pilot: dict) -> str:
    r = pool.post("/api/v1/pilots", json={"slot": SLOT}, headers=pilot)
    assert r.status_code == 201, r.text
    return r.json()["pilot_id"]


def turn(pool: TestClient, pilot: dict, pid: str, done: list[str] = (), max_jobs: int = 1):
    body = {
        "completions": [{"claim_id": c, "exit_code": 0} for c in done],
        "max_jobs": max_jobs,
    }
    r = pool.post(f"/api/v1/pilots/{pid}/cycle", json=body, headers=pilot)
    assert r.status_code == 200, r.text
    return r.json()["claims"]


def running(pool: TestClient, who: dict) -> list[str]:
    r = pool.get("/api/v1/jobs", params={"constraint": "JobStatus == 2"}, headers=who)
    assert r.status_code == 200, r.text
    return sorted(j["job_id"] for j in r.json())


def limits(pool: TestClient, who: dict) -> dict[str, dict]:
    r = pool.get("/api/v1/concurrency", headers=who)
    assert r.status_code == 200, r.text
    return {row["name"]: row for row in r.json()["limits"]}


DB_JOB = '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 10; ConcurrencyLimits = "db" ]'
PLAIN = '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 10 ]'


def test_never_more_jobs_hold_a_limit_than_it_allows(pool_config: PoolConfig, auth):
    pool_config.concurrency_limits = {"db": 2}
    alice, pilot = auth("alice"), auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        db_jobs = submit(pool, alice, DB_JOB, 5)
        plain = submit(pool, alice, PLAIN, 1)
        pilots = [register(pool, pilot) for _ in range(6)]
        held: dict[str, list[str]] = {p: [] for p in pilots}  # claim ids per pilot
        # every pilot asks for as much as it can take: only 2 db jobs start
        for p in pilots:
            held[p] = [c["claim_id"] for c in turn(pool, pilot, p, max_jobs=8)]
            assert len(set(running(pool, alice)) & set(db_jobs)) <= 2
        now = running(pool, alice)
        assert len(set(now) & set(db_jobs)) == 2
        assert plain[0] in now  # a job without limits is not held back by them
        row = limits(pool, alice)["db"]
        assert (row["limit"], row["in_use"], row["idle_jobs"], row["blocked_jobs"]) == (
            2,
            2,
            3,
            3,
        )
        samples, _ = scrape(pool, auth("ops", "metrics"))
        db = (("name", "db"),)  # a label called `name`: test_metrics.value cannot take it
        assert samples[("glidewms_pool_concurrency_limit", db)] == 2
        assert samples[("glidewms_pool_concurrency_in_use", db)] == 2
        assert samples[("glidewms_pool_concurrency_waiting_jobs", db)] == 3
        # pilots turn: each completion frees one unit, and one more db job starts
        ended: set[str] = set()
        for _ in range(20):
            for p in pilots:
                done, held[p] = held[p], []
                claims = turn(pool, pilot, p, done, max_jobs=8)
                held[p] = [c["claim_id"] for c in claims]
                ended.update(done)
                assert len(set(running(pool, alice)) & set(db_jobs)) <= 2
            states = {
                j: pool.get(f"/api/v1/jobs/{j}", headers=alice).json()["state"] for j in db_jobs
            }
            if all(states[j] == "completed" for j in db_jobs):
                break
        assert all(states[j] == "completed" for j in db_jobs), states
        assert limits(pool, alice)["db"]["in_use"] == 0


def test_a_limit_is_given_back_when_a_running_job_is_removed(pool_config, auth):
    pool_config.concurrency_limits = {"db": 1}
    alice, pilot = auth("alice"), auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        first, second = submit(pool, alice, DB_JOB, 2)
        p = register(pool, pilot)
        assert [c["job_id"] for c in turn(pool, pilot, p, max_jobs=8)] == [first]
        assert turn(pool, pilot, p, max_jobs=8) == []
        r = pool.post("/api/v1/jobs/remove", json={"job_ids": [first]}, headers=alice)
        assert r.status_code == 200, r.text
        assert [c["job_id"] for c in turn(pool, pilot, p, max_jobs=8)] == [second]


def test_a_limit_is_given_back_when_its_pilot_leaves(pool_config, auth):
    pool_config.concurrency_limits = {"db": 1}
    alice, pilot = auth("alice"), auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        first, second = submit(pool, alice, DB_JOB, 2)
        gone, other = register(pool, pilot), register(pool, pilot)
        assert [c["job_id"] for c in turn(pool, pilot, gone, max_jobs=8)] == [first]
        assert turn(pool, pilot, other, max_jobs=8) == []
        r = pool.post(f"/api/v1/pilots/{gone}/deregister", json={}, headers=pilot)
        assert r.status_code == 200, r.text
        # the evicted job is idle again: one of the two runs, never both
        got = [c["job_id"] for c in turn(pool, pilot, other, max_jobs=8)]
        assert len(got) == 1 and got[0] in (first, second)
        assert limits(pool, alice)["db"]["in_use"] == 1


def test_an_unreadable_limit_keeps_the_job_idle_and_says_so(pool_config, auth):
    alice, pilot = auth("alice"), auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        submit(pool, alice, DB_JOB.replace('"db"', '"d$b"'))
        ok = submit(pool, alice, DB_JOB)  # no limit configured for db: unlimited
        p = register(pool, pilot)
        assert [c["job_id"] for c in turn(pool, pilot, p, max_jobs=8)] == ok
        assert limits(pool, alice)["!invalid"]["blocked_jobs"] == 1


def test_limits_survive_a_pool_restart(pool_config, auth):
    pool_config.concurrency_limits = {"db": 1}
    alice, pilot = auth("alice"), auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        submit(pool, alice, DB_JOB, 2)
        p = register(pool, pilot)
        assert len(turn(pool, pilot, p, max_jobs=8)) == 1
    with TestClient(create_app(pool_config)) as pool:
        # the running job still holds db: the restarted pool starts no second one
        assert turn(pool, pilot, p, max_jobs=8) == []
        assert limits(pool, alice)["db"]["in_use"] == 1


def test_groups_with_less_usage_get_the_next_slots(pool_config, auth):
    """Two accounting groups: the one that has used less gets slots first,
    until their effective priorities cross, as fair share says."""
    alice, bob, pilot = auth("alice"), auth("bob"), auth("pilot", "pilot", fe="fe1")
    group = '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 10; AccountingGroup = "{}" ]'
    with TestClient(create_app(pool_config)) as pool:
        p = register(pool, pilot)
        # physics already runs 3 cores: it has used more than chemistry
        submit(pool, alice, group.format("physics.alice"), 3)
        assert len(turn(pool, pilot, p, max_jobs=3)) == 3
        physics = set(submit(pool, alice, group.format("physics.alice"), 4))
        # bob names his group with alice's user part: charged as chemistry.bob
        chemistry = set(submit(pool, bob, group.format("chemistry.alice"), 4))
        got = [c["job_id"] for c in turn(pool, pilot, p, max_jobs=6)]
        # chemistry has no usage: it gets slots until it runs as many cores as
        # physics (a tie goes to the one that has used less: chemistry), then
        # physics does
        assert [j in chemistry for j in got] == [True, True, True, True, False, False]
        assert set(got[4:]) <= physics
        prio = {
            s["submitter"]: s
            for s in pool.get("/api/v1/userprio", headers=alice).json()["submitters"]
        }
        assert prio["chemistry.bob"]["group"] == "chemistry"
        assert prio["chemistry.bob"]["running_cores"] == 4
        assert prio["physics.alice"]["running_cores"] == 5
        assert "chemistry.alice" not in prio
