"""Fair share, job life, qedit, pilot listing and restarts, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from glidewms.config.pool import PoolConfig
from glidewms.pool.api import create_app
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401

JOB = (
    '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 100; '
    "Requirements = TARGET.Cpus >= RequestCpus && TARGET.Memory >= RequestMemory ]"
)
SLOT = {"Cpus": 16, "Memory": 16000, "Disk": 100000, "GPUs": 0, "GLIDEIN_Site": "LOCAL"}
FREE = {"cpus": 16, "memory": 16000, "disk": 100000}


@pytest.fixture
def pool_config(pool_config: PoolConfig, database_url: str | None) -> PoolConfig:  # noqa: F811
    pool_config.database_url = database_url
    return pool_config


def submit(pool: TestClient, who: dict, n: int = 1, ad: str = JOB) -> list[str]:
    r = pool.post("/api/v1/jobs", json={"jobs": [{"ad": ad}] * n}, headers=who)
    assert r.status_code == 201, r.text
    return r.json()["job_ids"]


def register(pool: TestClient, pilot: dict, slot: dict | None = None) -> str:
    r = pool.post("/api/v1/pilots", json={"slot": slot or SLOT, "glidein_id": "g1"}, headers=pilot)
    assert r.status_code == 201, r.text
    return r.json()["pilot_id"]


def claim(pool: TestClient, pilot: dict, pid: str, free: dict | None = None) -> dict | None:
    r = pool.post(
        f"/api/v1/pilots/{pid}/claim", json={"free": free or FREE, "wait": 0}, headers=pilot
    )
    assert r.status_code in (200, 204), r.text
    return r.json() if r.status_code == 200 else None


def owner_of(pool: TestClient, who: dict, jid: str) -> str:
    return pool.get(f"/api/v1/jobs/{jid}", headers=who).json()["owner"]


def test_priority_factor_gives_the_favoured_user_more_slots(pool_config, auth):
    """bob's factor 3 makes each of his cores weigh three of alice's: of 8 claims
    while both have plenty queued, alice gets 6, bob 2."""
    pool_config.priority_factors = {"bob": 3.0}
    alice, bob, pilot = auth("alice"), auth("bob"), auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        submit(pool, alice, 10)
        submit(pool, bob, 10)
        pid = register(pool, pilot)
        owners = [owner_of(pool, alice, claim(pool, pilot, pid)["job_id"]) for _ in range(8)]
        assert owners.count("alice") == 6 and owners.count("bob") == 2
        prio = pool.get("/api/v1/userprio", headers=alice).json()
        rows = {s["submitter"]: s for s in prio["submitters"]}
        assert rows["bob"]["factor"] == 3.0 and rows["alice"]["factor"] == 1.0
        assert (rows["alice"]["running_cores"], rows["bob"]["running_cores"]) == (6, 2)
        assert (rows["alice"]["idle_jobs"], rows["bob"]["idle_jobs"]) == (4, 8)
        assert rows["alice"]["usage"] > 0


def test_job_priority_then_fifo_within_a_user(pool, auth):
    alice, pilot = auth("alice"), auth("pilot", "pilot", fe="fe1")
    [low1, low2] = submit(pool, alice, 2)
    [high] = submit(pool, alice, 1, ad=JOB[:-1] + "; JobPrio = 10 ]")
    pid = register(pool, pilot)
    order = [claim(pool, pilot, pid)["job_id"] for _ in range(3)]
    assert order == [high, low1, low2]


def test_accounting_group_is_its_own_submitter_with_its_factor(pool_config, auth):
    pool_config.group_priority_factors = {"cms": 5.0}
    alice = auth("alice")
    with TestClient(create_app(pool_config)) as pool:
        submit(pool, alice, 1, ad=JOB[:-1] + '; AcctGroup = "cms" ]')
        submit(pool, alice, 1)
        rows = {
            s["submitter"]: s
            for s in pool.get("/api/v1/userprio", headers=alice).json()["submitters"]
        }
        assert rows["cms.alice"]["group"] == "cms" and rows["cms.alice"]["factor"] == 5.0
        assert rows["alice"]["idle_jobs"] == 1 and rows["cms.alice"]["idle_jobs"] == 1


def test_usage_and_queue_survive_a_restart(pool_config, auth):
    """The idle index and the accounting are rebuilt from the database."""
    alice, bob, pilot = auth("alice"), auth("bob"), auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        submit(pool, alice, 3)
        pid = register(pool, pilot)
        first = claim(pool, pilot, pid)
        done = pool.post(
            f"/api/v1/claims/{first['claim_id']}/complete", json={"exit_code": 0}, headers=pilot
        )
        assert done.status_code == 200
        claim(pool, pilot, pid)  # alice keeps one core running across the restart
    with TestClient(create_app(pool_config)) as pool:
        submit(pool, bob, 2)
        rows = {
            s["submitter"]: s
            for s in pool.get("/api/v1/userprio", headers=alice).json()["submitters"]
        }
        assert rows["alice"]["usage"] > 0 and rows["alice"]["running_cores"] == 1
        assert rows["alice"]["idle_jobs"] == 1 and rows["bob"]["idle_jobs"] == 2
        pid = register(pool, pilot)
        got = claim(pool, pilot, pid)
        assert owner_of(pool, alice, got["job_id"]) == "bob"  # alice has the usage


def test_site_and_job_failures_are_told_apart(pool_config, auth):
    pool_config.max_job_restarts = 1
    alice, pilot = auth("alice"), auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        [jid, bad] = submit(pool, alice, 2)
        for n in range(2):  # pilots that leave mid-job: site failures
            pid = register(pool, pilot)
            got = claim(pool, pilot, pid)
            assert got["job_id"] == jid
            pool.post(
                f"/api/v1/pilots/{pid}/deregister", json={"reason": f"killed {n}"}, headers=pilot
            )
        job = pool.get(f"/api/v1/jobs/{jid}", headers=alice).json()
        assert job["state"] == "held" and "site failures" in job["hold_reason"]
        assert "NumSiteFailures = 2" in job["ad_long"]
        kinds = [e["type"] for e in pool.get(f"/api/v1/jobs/{jid}/events", headers=alice).json()]
        assert kinds == [
            "submitted",
            "started",
            "evicted",
            "requeued",
            "started",
            "evicted",
            "held",
        ]
        pid = register(pool, pilot)
        got = claim(pool, pilot, pid)
        assert got["job_id"] == bad
        pool.post(
            f"/api/v1/claims/{got['claim_id']}/complete", json={"exit_code": 3}, headers=pilot
        )
        [*_, last] = pool.get(f"/api/v1/jobs/{bad}/events", headers=alice).json()
        assert last["type"] == "completed" and last["detail"]["failure"] == "job"
        counters = pool.get("/api/v1/stats", headers=alice).json()["counters"]
        assert counters == {"jobs_completed": 1, "job_failures": 1, "site_failures": 2}
        released = pool.post("/api/v1/jobs/release", json={"job_ids": [jid]}, headers=alice)
        assert released.json()["changed"] == [jid]
        assert claim(pool, pilot, pid)["job_id"] == jid  # back in the idle index


def test_qedit_changes_matching_and_is_recorded(pool, auth):
    alice, pilot = auth("alice"), auth("pilot", "pilot", fe="fe1")
    [jid] = submit(pool, alice, 1, ad=JOB.replace("RequestMemory = 100", "RequestMemory = 9000"))
    pid = register(pool, pilot)
    small = {"cpus": 4, "memory": 2000, "disk": 1000}
    assert claim(pool, pilot, pid, small) is None
    r = pool.post(
        "/api/v1/jobs/edit",
        json={"job_ids": [jid], "attribute": "RequestMemory", "value": "1024"},
        headers=alice,
    )
    assert r.status_code == 200 and r.json()["changed"] == [jid]
    got = claim(pool, pilot, pid, small)
    assert got["job_id"] == jid and got["job"]["request"]["memory"] == 1024
    edited = [
        e
        for e in pool.get(f"/api/v1/jobs/{jid}/events", headers=alice).json()
        if e["type"] == "edited"
    ]
    assert edited[0]["detail"] == {
        "by": "alice",
        "attribute": "RequestMemory",
        "old": "9000",
        "new": "1024",
    }
    # running jobs are not edited; the reason says why
    r = pool.post(
        "/api/v1/jobs/edit",
        json={"job_ids": [jid], "attribute": "Foo", "value": "1"},
        headers=alice,
    )
    assert r.json()["changed"] == [] and "running" in r.json()["skipped"][jid]


@pytest.mark.parametrize(
    ("attribute", "value", "status", "words"),
    [
        ("Owner", '"mallory"', 422, "set by the pool"),
        ("jobstatus", "1", 422, "set by the pool"),  # case-insensitive, like ClassAds
        ("Bad-Name", "1", 422, "not a ClassAd attribute name"),
        ("RequestMemory", "2048 +", 422, "not a valid ClassAd expression"),
    ],
)
def test_qedit_refuses_bad_edits(pool, auth, attribute, value, status, words):
    alice = auth("alice")
    [jid] = submit(pool, alice)
    r = pool.post(
        "/api/v1/jobs/edit",
        json={"job_ids": [jid], "attribute": attribute, "value": value},
        headers=alice,
    )
    assert r.status_code == status and words in r.json()["detail"]


def test_qedit_of_others_jobs_is_forbidden(pool, auth):
    [jid] = submit(pool, auth("alice"))
    r = pool.post(
        "/api/v1/jobs/edit",
        json={"job_ids": [jid], "attribute": "Foo", "value": "1"},
        headers=auth("bob"),
    )
    assert r.status_code == 403


def test_pilot_listing_reports_free_and_retiring(pool, auth):
    alice, pilot, fe = auth("alice"), auth("pilot", "pilot", fe="fe1"), auth("fe1", "frontend")
    pid = register(pool, pilot)
    [p] = pool.get("/api/v1/pilots", headers=fe).json()
    assert p["free"] == {"cpus": 16, "memory": 16000, "disk": 100000, "gpus": 0}
    assert p["retiring"] is False
    submit(pool, alice)
    claim(pool, pilot, pid, {"cpus": 6, "memory": 3000, "disk": 500})
    hb = pool.post(
        f"/api/v1/pilots/{pid}/heartbeat", json={"claims": [], "retiring": True}, headers=pilot
    )
    assert hb.status_code == 200
    [p] = pool.get("/api/v1/pilots", headers=fe).json()
    assert p["free"] == {"cpus": 6, "memory": 3000, "disk": 500, "gpus": 0}
    assert p["retiring"] is True and p["running_jobs"] == 1


def test_gpu_job_waits_for_a_gpu_slot_while_small_jobs_run(pool, auth):
    alice, pilot, fe = auth("alice"), auth("pilot", "pilot", fe="fe1"), auth("fe1", "frontend")
    gpu_ad = (
        JOB[:-1].replace(
            "TARGET.Cpus >= RequestCpus", "TARGET.Cpus >= RequestCpus && TARGET.GPUs >= RequestGPUs"
        )
        + "; RequestGPUs = 1 ]"
    )
    [gpu_job] = submit(pool, alice, 1, ad=gpu_ad)
    small = submit(pool, alice, 3)
    cpu_only = register(pool, pilot)
    got = [claim(pool, pilot, cpu_only)["job_id"] for _ in range(3)]
    assert sorted(got) == sorted(small) and claim(pool, pilot, cpu_only) is None
    demand = pool.get("/api/v1/demand", headers=fe).json()["autoclusters"]
    waiting = [a for a in demand if a["request"]["gpus"] == 1]
    assert waiting and waiting[0]["idle"] == 1
    gpu_pilot = register(pool, pilot, {**SLOT, "GPUs": 1})
    assert claim(pool, pilot, gpu_pilot, {**FREE, "gpus": 1})["job_id"] == gpu_job


def test_v1_database_is_migrated(pool_config, auth):
    """A database of the first schema (no submitter, cpus, free, retiring, usage,
    pick index) upgrades in place and its idle jobs are claimable. The v1
    database is made by taking today's schema back to v1 with DDL."""
    from glidewms.db import make_engine, migrate
    from glidewms.pool import schema

    pool_config.state_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(pool_config.resolved_database_url())
    migrate(engine, "pool", schema.MIGRATIONS)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_jobs_pick"))
        for table, column in (
            ("jobs", "submitter"),
            ("jobs", "cpus"),
            ("pilots", "free"),
            ("pilots", "retiring"),
        ):
            conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(sa.text("DROP TABLE usage"))
        conn.execute(sa.text("UPDATE schema_version SET version = 1 WHERE service = 'pool'"))
        conn.execute(
            sa.text(
                "INSERT INTO autoclusters (signature, ad, created_at) VALUES "
                "('sig', '[ RequestCpus = 1 ]', 0)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO jobs (cluster_id, proc_id, owner, state, ad, autocluster_id, prio, "
                "q_date, sandbox, num_starts, num_restarts, updated_at) SELECT 7, 0, 'alice', "
                "'idle', '[ Cmd = \"/bin/true\"; RequestCpus = 1 ]', id, 0, 1, '{}', 0, 0, 1 "
                "FROM autoclusters"
            )
        )
        conn.execute(sa.text("INSERT INTO counters VALUES ('cluster', 7)"))
    engine.dispose()
    pilot = auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        pid = register(pool, pilot)
        assert claim(pool, pilot, pid)["job_id"] == "7.0"
        assert submit(pool, auth("alice")) == ["8.0"]
        rows = pool.get("/api/v1/userprio", headers=auth("alice")).json()["submitters"]
        assert [r["submitter"] for r in rows] == ["alice"]
