"""Periodic job policy, the pool's own hold policy, and one pool per database,
on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from glidewms.config.pool import PoolConfig
from glidewms.pool.api import create_app
from glidewms.pool.dblock import DatabaseInUse
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401
from tests.integration.test_pool_durability import GLIDEWMS, PoolProcess

JOB = '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 10{extra} ]'
SLOT = {"Cpus": 8, "Memory": 8000, "Disk": 100000}
DEADLINE = 30.0


@pytest.fixture
def pool_config(pool_config: PoolConfig, database_url: str | None) -> PoolConfig:  # noqa: F811
    pool_config.database_url = database_url
    pool_config.periodic_check_seconds = 3600  # tests call the pass themselves, but one
    pool_config.database_lock_wait = 0.0
    return pool_config


def submit(pool: TestClient, who: dict, extra: str = "") -> str:
    r = pool.post("/api/v1/jobs", json={"jobs": [{"ad": JOB.format(extra=extra)}]}, headers=who)
    assert r.status_code == 201, r.text
    return r.json()["job_ids"][0]


def job(pool: TestClient, who: dict, jid: str) -> dict:
    r = pool.get(f"/api/v1/jobs/{jid}", headers=who)
    assert r.status_code == 200, r.text
    return r.json()


def events(pool: TestClient, who: dict, jid: str) -> list[dict]:
    return pool.get(f"/api/v1/jobs/{jid}/events", headers=who).json()


def start_on_pilot(pool: TestClient, pilot: dict) -> tuple[str, dict]:
    r = pool.post("/api/v1/pilots", json={"slot": SLOT}, headers=pilot)
    pid = r.json()["pilot_id"]
    r = pool.post(f"/api/v1/pilots/{pid}/claim", json={"wait": 0}, headers=pilot)
    assert r.status_code == 200, r.text
    return pid, r.json()


def test_the_lease_loop_applies_periodic_hold_with_the_jobs_reason(pool_config, auth):
    pool_config.periodic_check_seconds = 0.05
    alice = auth("alice")
    with TestClient(create_app(pool_config)) as pool:
        plain = submit(pool, alice)
        jid = submit(
            pool, alice, '; PeriodicHold = NumJobStarts == 0; PeriodicHoldReason = "never started"'
        )
        end = time.monotonic() + DEADLINE
        while job(pool, alice, jid)["state"] != "held":
            assert time.monotonic() < end, "periodic_hold was not applied"
            time.sleep(0.05)
        view = job(pool, alice, jid)
        assert (view["hold_reason"], view["hold_reason_code"]) == ("never started", 3)
        assert "HoldReasonCode = 3" in view["ad_long"]
        held = [e for e in events(pool, alice, jid) if e["type"] == "held"]
        assert held[0]["detail"] == {"by": "periodic_hold", "reason": "never started", "code": 3}
        assert job(pool, alice, plain)["state"] == "idle"


def test_periodic_hold_of_a_running_job_tells_its_pilot_to_kill_it(pool_config, auth):
    alice, pilot = auth("alice"), auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        jid = submit(pool, alice, "; PeriodicHold = JobStatus == 2")
        store = pool.app.state.pool.store
        assert store.periodic.apply() == {}  # idle: nothing to do
        pid, claim = start_on_pilot(pool, pilot)
        assert store.periodic.apply() == {"hold": [jid]}
        r = pool.post(
            f"/api/v1/pilots/{pid}/heartbeat", json={"claims": [claim["claim_id"]]}, headers=pilot
        )
        assert r.json()["kill"] == [claim["claim_id"]]
        assert job(pool, alice, jid)["state"] == "held"
        assert store.reports.userprio()[0]["running_cores"] == 0  # accounting saw it stop


def test_periodic_release_lifts_policy_holds_but_not_a_users(pool_config, auth):
    alice = auth("alice")
    with TestClient(create_app(pool_config)) as pool:
        store = pool.app.state.pool.store
        mine = submit(pool, alice, "; PeriodicRelease = true")
        r = pool.post(
            "/api/v1/jobs/hold", json={"job_ids": [mine], "reason": "wait"}, headers=alice
        )
        assert r.json()["changed"] == [mine]
        assert job(pool, alice, mine)["hold_reason_code"] == 1
        assert store.periodic.apply() == {}  # the user's hold stays
        other = submit(
            pool,
            alice,
            "; PeriodicHold = NumJobStarts == 0 && NumRestarts == 0; PeriodicRelease = true",
        )
        assert store.periodic.apply() == {"hold": [other]}
        assert store.periodic.apply() == {"release": [other]}
        assert job(pool, alice, other)["hold_reason"] is None
        kinds = [e["type"] for e in events(pool, alice, other)]
        assert kinds == ["submitted", "held", "released"]


def test_site_failure_holds_are_job_policy_holds_that_periodic_release_can_lift(pool_config, auth):
    """max_job_restarts 0: the first lost pilot holds the job (code 3, with a
    reason); the job's periodic_release gives it one more chance, no more."""
    pool_config.max_job_restarts = 0
    alice, pilot = auth("alice"), auth("pilot", "pilot", fe="fe1")
    with TestClient(create_app(pool_config)) as pool:
        store = pool.app.state.pool.store
        jid = submit(pool, alice, "; PeriodicRelease = HoldReasonCode == 3 && NumRestarts < 2")
        for restarts, released in ((1, True), (2, False)):
            pid, _ = start_on_pilot(pool, pilot)
            pool.post(f"/api/v1/pilots/{pid}/deregister", json={"reason": "gone"}, headers=pilot)
            view = job(pool, alice, jid)
            assert (view["state"], view["hold_reason_code"], view["num_restarts"]) == (
                "held",
                3,
                restarts,
            )
            assert "site failures" in view["hold_reason"]
            held = [e for e in events(pool, alice, jid) if e["type"] == "held"][-1]
            assert (held["detail"]["by"], held["detail"]["code"]) == ("pool", 3)
            assert (store.periodic.apply() == {"release": [jid]}) is released
        assert job(pool, alice, jid)["state"] == "held"


def test_periodic_remove_sees_current_time_and_edits_are_picked_up(pool_config, auth):
    alice = auth("alice")
    with TestClient(create_app(pool_config)) as pool:
        store = pool.app.state.pool.store
        jid = submit(pool, alice, "; PeriodicRemove = CurrentTime - QDate > 3600")
        assert store.periodic.apply() == {}
        assert store.periodic.apply(now=time.time() + 7200) == {"remove": [jid]}
        history = pool.get("/api/v1/jobs", params={"history": True}, headers=alice).json()
        assert [j["job_id"] for j in history if j["state"] == "removed"] == [jid]
        plain = submit(pool, alice)
        r = pool.post(
            "/api/v1/jobs/edit",
            json={"job_ids": [plain], "attribute": "PeriodicHold", "value": "true"},
            headers=alice,
        )
        assert r.json()["changed"] == [plain]
        assert store.periodic.apply() == {"hold": [plain]}


def test_listing_parses_no_ad_without_a_constraint_and_agrees_with_one(
    pool_config, auth, monkeypatch
):
    alice = auth("alice")
    with TestClient(create_app(pool_config)) as pool:
        r = pool.post(
            "/api/v1/jobs", json={"jobs": [{"ad": JOB.format(extra="")}] * 5}, headers=alice
        )
        ids = r.json()["job_ids"]
        pool.post(
            "/api/v1/jobs/hold",
            json={"job_ids": ids[3:], "reason": 'a "quoted" one'},
            headers=alice,
        )
        from glidewms import classads

        parsed = []
        real = classads.parse_ad
        monkeypatch.setattr(classads, "parse_ad", lambda t, *a: parsed.append(t) or real(t, *a))
        listed = pool.get("/api/v1/jobs", headers=alice).json()
        assert parsed == [] and [j["cmd"] for j in listed] == ["/bin/true"] * 5
        assert 'HoldReason = "a \\"quoted\\" one"' in listed[4]["ad"]
        held = pool.get(
            "/api/v1/jobs", params={"constraint": "JobStatus == 5 && ProcId > 3"}, headers=alice
        ).json()
        assert [j["job_id"] for j in held] == ids[4:]
        assert len(parsed) == 1  # one parse for the whole cluster


# ------------------------------------------------------------- one pool per database


def test_a_second_pool_on_the_same_database_refuses_to_start(pool_config):
    with (
        TestClient(create_app(pool_config)),
        pytest.raises(DatabaseInUse, match="in use by another pool"),
    ):
        create_app(pool_config)
    with TestClient(create_app(pool_config)) as pool:  # released when the first stopped
        assert pool.get("/healthz").status_code == 200


def test_the_pool_command_says_why_it_refuses(tmp_path: Path, database_url: str | None):  # noqa: F811
    first = PoolProcess(tmp_path, database_url)
    try:
        first.start()
        values = yaml.safe_load(first.config.read_text())
        values.update(url_file=str(tmp_path / "second.url"), database_lock_wait=0.5)
        second = tmp_path / "second.yaml"
        second.write_text(yaml.safe_dump(values))
        result = subprocess.run(
            [GLIDEWMS, "pool", "--config", str(second)], timeout=120, capture_output=True, text=True
        )
        assert result.returncode == 2, result.stderr
        assert "in use by another pool" in " ".join(result.stderr.split())  # rich wraps
        assert not (tmp_path / "second.url").exists()
    finally:
        first.stop()
