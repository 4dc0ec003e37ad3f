"""Retention: finished jobs, their events, pilots that left and sandbox files
no job references are purged after their periods; what a queued job still
references is kept. The clock is driven (`purge(now)`), nothing sleeps."""

from __future__ import annotations

import hashlib
import time

import pytest

from glidewms.config.pool import PoolConfig
from glidewms.pool.api import retention_of
from glidewms.pool.retention import DAY
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401
from tests.integration.conftest import bearer
from tests.integration.test_pool_api import JOB_AD, claim, register

ALICE_SUB = "alice"


@pytest.fixture
def pool_config(pool_config: PoolConfig, database_url: str | None) -> PoolConfig:  # noqa: F811
    """On each database in turn (SQLite, PostgreSQL)."""
    pool_config.database_url = database_url
    return pool_config


def _upload(pool, auth, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    assert pool.put(f"/api/v1/files/{digest}", content=data, headers=auth).status_code == 201
    return digest


def _submit_with(pool, auth, digest: str) -> str:
    job = {"ad": JOB_AD, "sandbox": [{"name": "in.txt", "sha256": digest}]}
    r = pool.post("/api/v1/jobs", json={"jobs": [job]}, headers=auth)
    assert r.status_code == 201, r.text
    return r.json()["job_ids"][0]


def test_past_retention_is_purged_and_referenced_files_kept(pool, issuer):
    alice = bearer(issuer.issue(ALICE_SUB, ["user"]))
    admin = bearer(issuer.issue("root", ["admin"]))
    pilot = bearer(issuer.issue("pilot", ["pilot"], fe="fe1", group="main"))
    shared_input = _upload(pool, alice, b"input both jobs read\n")
    never_used = _upload(pool, alice, b"uploaded, never submitted\n")
    done_job = _submit_with(pool, alice, shared_input)
    pid = register(pool, pilot)
    c = claim(pool, pilot, pid).json()
    assert c["job_id"] == done_job
    output = _upload(pool, pilot, b"the finished job's output\n")
    r = pool.post(
        f"/api/v1/claims/{c['claim_id']}/complete",
        json={"exit_code": 0, "outputs": [{"name": "out", "sha256": output}]},
        headers=pilot,
    )
    assert r.status_code == 200, r.text
    assert pool.post(f"/api/v1/pilots/{pid}/deregister", json={}, headers=pilot).status_code == 200
    # a second job, still queued, reads the same input (a new cluster)
    queued_job = _submit_with(pool, alice, shared_input)

    context = pool.app.state.pool
    keeper = retention_of(context)
    files = context.files
    assert keeper.purge(time.time()) == {"jobs": 0, "events": 0, "pilots": 0, "files": 0}
    before = pool.get("/api/v1/usage", headers=admin).json()
    assert before["rows"]["history_jobs"] == 1 and before["sandbox_files"] == 3
    assert before["sandbox_bytes"] > 0 and before["rows"]["pilots"] == 1
    assert pool.get("/api/v1/usage", headers=alice).status_code == 403

    # 31 days on: past the history (30 d) and sandbox (7 d) periods, not the events' (90 d)
    purged = keeper.purge(time.time() + 31 * DAY)
    assert purged["jobs"] == 1 and purged["pilots"] == 1 and purged["files"] == 2
    hist = pool.get("/api/v1/jobs", params={"history": True}, headers=alice).json()
    assert hist == []
    assert pool.get(f"/api/v1/jobs/{done_job}/events", headers=alice).status_code == 404
    assert not files.has(never_used) and not files.has(output)
    assert files.has(shared_input)  # the queued job still references it
    assert pool.get(f"/api/v1/files/{shared_input}", headers=alice).status_code == 200
    queued = pool.get("/api/v1/jobs", headers=alice).json()
    assert [j["job_id"] for j in queued] == [queued_job]
    assert pool.get(f"/api/v1/jobs/{queued_job}/events", headers=alice).json()

    # 91 days on: the queued job's events are past their period; the job and its input stay
    purged = keeper.purge(time.time() + 91 * DAY)
    assert purged["events"] >= 1 and purged["jobs"] == 0 and purged["files"] == 0
    assert pool.get(f"/api/v1/jobs/{queued_job}/events", headers=alice).json() == []
    assert files.has(shared_input)
    after = pool.get("/api/v1/usage", headers=admin).json()
    assert after["rows"]["history_jobs"] == 0 and after["sandbox_files"] == 1
    assert after["rows"]["queued_jobs"] == 1 and after["rows"]["events"] == 0
