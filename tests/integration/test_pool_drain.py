"""Operators' drains (gentle and hard, of a pilot, an entry, a site) and the
fair share's settable usage, through the pool's HTTP API, on SQLite and
PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from glidewms.config.pool import PoolConfig
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401

JOB = (
    '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 100; '
    "Requirements = TARGET.Cpus >= RequestCpus && TARGET.Memory >= RequestMemory ]"
)
FREE = {"cpus": 4, "memory": 4000, "disk": 10000}


@pytest.fixture
def pool_config(pool_config: PoolConfig, database_url: str | None) -> PoolConfig:  # noqa: F811
    pool_config.database_url = database_url
    return pool_config


def slot(entry: str, site: str) -> dict[str, Any]:
    return {
        "Cpus": 4,
        "Memory": 4000,
        "Disk": 10000,
        "GLIDEIN_Entry_Name": entry,
        "GLIDEIN_Site": site,
    }


def submit(pool: TestClient, who: dict, n: int = 1) -> list[str]:
    r = pool.post("/api/v1/jobs", json={"jobs": [{"ad": JOB}] * n}, headers=who)
    assert r.status_code == 201, r.text
    return r.json()["job_ids"]


def register(pool: TestClient, pilot: dict, entry: str = "e1", site: str = "S1") -> str:
    r = pool.post("/api/v1/pilots", json={"slot": slot(entry, site)}, headers=pilot)
    assert r.status_code == 201, r.text
    return r.json()["pilot_id"]


def turn(pool: TestClient, pilot: dict, pid: str, done: list[str] | None = None) -> dict:
    body = {
        "free": FREE,
        "wait": 0,
        "max_jobs": 1,
        "completions": [{"claim_id": c, "exit_code": 0} for c in done or []],
    }
    r = pool.post(f"/api/v1/pilots/{pid}/cycle", json=body, headers=pilot)
    assert r.status_code == 200, r.text
    return r.json()


def heartbeat(pool: TestClient, pilot: dict, pid: str, claims: list[str]) -> dict:
    r = pool.post(f"/api/v1/pilots/{pid}/heartbeat", json={"claims": claims}, headers=pilot)
    assert r.status_code == 200, r.text
    return r.json()


def states(pool: TestClient, admin: dict) -> dict[str, str]:
    return {p["pilot_id"]: p["state"] for p in pool.get("/api/v1/pilots", headers=admin).json()}


def test_gentle_drain_of_a_pilot_lets_its_job_finish_and_gives_it_no_more(pool, auth):
    alice, pilot, admin = auth("alice"), auth("p", "pilot", fe="fe1"), auth("root", "admin")
    submit(pool, alice, 2)
    pid = register(pool, pilot)
    [claim] = turn(pool, pilot, pid)["claims"]
    # only an admin drains
    body = {"pilot": pid, "reason": "kernel update"}
    assert pool.post("/api/v1/drains", json=body, headers=alice).status_code == 403
    assert pool.post("/api/v1/drains", json=body, headers=pilot).status_code == 403
    r = pool.post("/api/v1/drains", json=body, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["pilots"] == [pid] and r.json()["vacated"] == []
    assert states(pool, admin)[pid] == "draining"
    answer = heartbeat(pool, pilot, pid, [claim["claim_id"]])
    assert answer["drain"] is True and answer["kill"] == []  # its job runs on
    # its result is taken, and it gets no new job although one is idle
    after = turn(pool, pilot, pid, [claim["claim_id"]])
    assert after["completed"] == {claim["claim_id"]: True} and after["claims"] == []
    job = pool.get(f"/api/v1/jobs/{claim['job_id']}", headers=alice).json()
    assert job["state"] == "completed"
    [listed] = pool.get("/api/v1/drains", headers=admin).json()
    assert (listed["kind"], listed["reason"], listed["pilots"]) == ("pilot", "kernel update", [pid])
    # the pilot leaves: its drain ends with it
    pool.post(f"/api/v1/pilots/{pid}/deregister", json={"reason": "idle_timeout"}, headers=pilot)
    assert pool.get("/api/v1/drains", headers=admin).json() == []
    # a pilot gone or unknown cannot be drained
    assert pool.post("/api/v1/drains", json={"pilot": pid}, headers=admin).status_code == 404


def test_hard_drain_of_an_entry_vacates_its_jobs_without_counting_a_failure(pool, auth):
    alice, admin = auth("alice"), auth("root", "admin")
    pilot = auth("p", "pilot", fe="fe1")
    [jid] = submit(pool, alice, 1)
    pid = register(pool, pilot, entry="e1")
    [claim] = turn(pool, pilot, pid)["claims"]
    r = pool.post("/api/v1/drains", json={"entry": "e1", "hard": True}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["vacated"] == [jid] and r.json()["pilots"] == [pid]
    job = pool.get(f"/api/v1/jobs/{jid}", headers=alice).json()
    assert job["state"] == "idle" and job["num_restarts"] == 0
    events = pool.get(f"/api/v1/jobs/{jid}/events", headers=alice).json()
    [evicted] = [e for e in events if e["type"] == "evicted"]
    assert "hard drain of entry e1" in str(evicted) and "'site'" not in str(evicted)
    stats = pool.get("/api/v1/stats", headers=admin).json()["counters"]
    assert stats.get("site_failures", 0) == 0
    # the pilot is told to kill the vacated claim and to drain
    answer = heartbeat(pool, pilot, pid, [claim["claim_id"]])
    assert answer == {**answer, "drain": True, "kill": [claim["claim_id"]]}
    # a late result of the vacated claim is not taken
    assert turn(pool, pilot, pid, [claim["claim_id"]])["completed"] == {claim["claim_id"]: False}
    # a pilot registering later at the drained entry is drained at once...
    late = register(pool, pilot, entry="e1")
    assert states(pool, admin)[late] == "draining"
    assert turn(pool, pilot, late)["claims"] == []
    assert heartbeat(pool, pilot, late, [])["drain"] is True
    # ...while one of another entry runs the vacated job
    other = register(pool, pilot, entry="e2")
    assert [c["job_id"] for c in turn(pool, pilot, other)["claims"]] == [jid]
    # undrain: the entry's pilots that did not leave take jobs again
    submit(pool, alice, 1)
    r = pool.post("/api/v1/drains/undrain", json={"entry": "e1"}, headers=admin)
    assert r.status_code == 200, r.text
    assert sorted(r.json()["pilots"]) == sorted([pid, late])
    assert states(pool, admin)[late] == "active"
    assert heartbeat(pool, pilot, late, [])["drain"] is False
    assert len(turn(pool, pilot, late)["claims"]) == 1
    again = pool.post("/api/v1/drains/undrain", json={"entry": "e1"}, headers=admin)
    assert again.status_code == 404


def test_a_pilot_under_two_drains_stays_drained_until_both_are_lifted(pool, auth):
    admin, pilot = auth("root", "admin"), auth("p", "pilot", fe="fe1")
    pid = register(pool, pilot, entry="e1", site="S1")
    spare = register(pool, pilot, entry="e9", site="S9")
    assert pool.post("/api/v1/drains", json={"site": "S1"}, headers=admin).status_code == 200
    assert pool.post("/api/v1/drains", json={"entry": "e1"}, headers=admin).status_code == 200
    assert states(pool, admin) == {pid: "draining", spare: "active"}
    r = pool.post("/api/v1/drains/undrain", json={"site": "S1"}, headers=admin)
    assert r.json()["pilots"] == []  # the entry's drain still holds
    assert states(pool, admin)[pid] == "draining"
    r = pool.post("/api/v1/drains/undrain", json={"entry": "e1"}, headers=admin)
    assert r.json()["pilots"] == [pid] and states(pool, admin)[pid] == "active"


def test_a_drain_names_exactly_one_target(pool, auth):
    admin = auth("root", "admin")
    for body in ({}, {"entry": "e1", "site": "S1"}, {"entry": ""}, {"site": "x" * 200}):
        assert pool.post("/api/v1/drains", json=body, headers=admin).status_code == 422, body


def test_an_operator_sets_a_submitters_past_usage_and_priorities_follow(pool, auth):
    alice, bob, admin = auth("alice"), auth("bob"), auth("root", "admin")
    submit(pool, alice, 1)
    submit(pool, bob, 1)
    body = {"submitter": "alice", "usage": 36000.0}
    assert pool.put("/api/v1/userprio/usage", json=body, headers=alice).status_code == 403
    r = pool.put("/api/v1/userprio/usage", json=body, headers=admin)
    assert r.status_code == 200, r.text
    assert abs(r.json()["usage"] - 36000.0) < 1.0
    rows = pool.get("/api/v1/userprio", headers=alice).json()["submitters"]
    assert [s["submitter"] for s in rows] == ["bob", "alice"]  # alice's history now weighs
    # the next free slot goes to bob
    pilot = auth("p", "pilot", fe="fe1")
    pid = register(pool, pilot)
    [claim] = turn(pool, pilot, pid)["claims"]
    assert pool.get(f"/api/v1/jobs/{claim['job_id']}", headers=bob).json()["owner"] == "bob"
    unknown = {"submitter": "carol", "usage": 1.0}
    assert pool.put("/api/v1/userprio/usage", json=unknown, headers=admin).status_code == 404
    for bad in (-1.0, 1e300):
        r = pool.put(
            "/api/v1/userprio/usage", json={"submitter": "bob", "usage": bad}, headers=admin
        )
        assert r.status_code == 422


def test_a_set_usage_survives_a_pool_restart(pool_config, auth):
    from glidewms.pool.api import create_app

    alice, admin = auth("alice"), auth("root", "admin")
    with TestClient(create_app(pool_config, "http://testserver")) as pool:
        submit(pool, alice, 1)
        body = {"submitter": "alice", "usage": 7200.0}
        assert pool.put("/api/v1/userprio/usage", json=body, headers=admin).status_code == 200
    with TestClient(create_app(pool_config, "http://testserver")) as pool:
        [row] = pool.get("/api/v1/userprio", headers=alice).json()["submitters"]
        assert 7000.0 < row["usage"] <= 7200.0


def test_an_entry_drain_outlives_a_pool_restart(pool_config, auth):
    from glidewms.pool.api import create_app

    admin, pilot = auth("root", "admin"), auth("p", "pilot", fe="fe1")
    with TestClient(create_app(pool_config, "http://testserver")) as pool:
        body = {"entry": "e1", "reason": "downtime"}
        assert pool.post("/api/v1/drains", json=body, headers=admin).status_code == 200
    with TestClient(create_app(pool_config, "http://testserver")) as pool:
        [held] = pool.get("/api/v1/drains", headers=admin).json()
        assert (held["kind"], held["name"], held["reason"]) == ("entry", "e1", "downtime")
        pid = register(pool, pilot, entry="e1")
        assert states(pool, admin)[pid] == "draining"
