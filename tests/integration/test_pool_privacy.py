"""What users see of each other's jobs (docs/security.md): state, requests
and the ad, never arguments, environment, input or output files, nor the
job's events; and a sandbox file only if it is theirs. On SQLite and
PostgreSQL, through the API."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from fastapi.testclient import TestClient

from glidewms.config.pool import PoolConfig
from glidewms.security.tokens import TokenIssuer
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401
from tests.integration.conftest import bearer
from tests.integration.test_pool_api import SLOT, claim, register

SECRET_AD = (
    '[ Cmd = "/bin/run"; Arguments = "--password hunter2"; Environment = "TOKEN=s3cret"; '
    'TransferInput = "private.dat"; RequestCpus = 1; RequestMemory = 100; Requirements = true ]'
)
INPUT = b"alice's private input\n"
OUTPUT = b"alice's private output\n"


@pytest.fixture
def pool_config(pool_config: PoolConfig, database_url: str | None) -> PoolConfig:  # noqa: F811
    pool_config.database_url = database_url
    return pool_config


@pytest.fixture
def people(issuer: TokenIssuer) -> dict[str, dict[str, str]]:
    return {
        name: bearer(issuer.issue(name, [scope], **claims))
        for name, scope, claims in (
            ("alice", "user", {}),
            ("bob", "user", {}),
            ("admin", "admin", {}),
            ("pilot", "pilot", {"fe": "fe1", "group": "main"}),
        )
    }


def upload(pool: TestClient, who: dict[str, str], data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    r = pool.put(f"/api/v1/files/{digest}", content=data, headers=who)
    assert r.status_code == 201, r.text
    return digest


def alices_job(pool: TestClient, people: dict[str, dict[str, str]]) -> tuple[str, str]:
    digest = upload(pool, people["alice"], INPUT)
    job = {
        "ad": SECRET_AD,
        "args": ["--password", "hunter2"],
        "env": {"TOKEN": "s3cret"},
        "sandbox": [{"name": "private.dat", "sha256": digest}],
    }
    r = pool.post("/api/v1/jobs", json={"jobs": [job]}, headers=people["alice"])
    assert r.status_code == 201, r.text
    return r.json()["job_ids"][0], digest


def secrets_in(value: Any) -> bool:
    text = str(value)
    return "hunter2" in text or "s3cret" in text or "private.dat" in text


def test_other_users_see_state_and_requests_but_not_the_sandbox(
    pool: TestClient, people: dict[str, dict[str, str]]
) -> None:
    jid, _ = alices_job(pool, people)
    mine = pool.get(f"/api/v1/jobs/{jid}", headers=people["alice"]).json()
    assert secrets_in(mine["args"]) and secrets_in(mine["ad"]) and not mine["redacted"]
    theirs = pool.get(f"/api/v1/jobs/{jid}", headers=people["bob"]).json()
    assert (theirs["owner"], theirs["state"], theirs["redacted"]) == ("alice", "idle", True)
    assert "RequestMemory = 100" in theirs["ad"] and "RequestCpus" in theirs["ad_long"]
    assert not secrets_in(theirs)
    listed = pool.get("/api/v1/jobs", params={"long": True}, headers=people["bob"]).json()
    assert [j["job_id"] for j in listed] == [jid] and not secrets_in(listed)
    assert secrets_in(pool.get(f"/api/v1/jobs/{jid}", headers=people["admin"]).json())
    # the job's log is its owner's
    assert pool.get(f"/api/v1/jobs/{jid}/events", headers=people["bob"]).status_code == 403
    assert pool.get(f"/api/v1/jobs/{jid}/events", headers=people["alice"]).status_code == 200


def test_a_constraint_cannot_probe_what_is_hidden(
    pool: TestClient, people: dict[str, dict[str, str]]
) -> None:
    jid, _ = alices_job(pool, people)
    probe = {"constraint": 'regexp("hunter", Arguments)'}
    assert pool.get("/api/v1/jobs", params=probe, headers=people["bob"]).json() == []
    assert [
        j["job_id"] for j in pool.get("/api/v1/jobs", params=probe, headers=people["alice"]).json()
    ] == [jid]
    # nor through an action: bob's constraint selects among bob's jobs only
    r = pool.post("/api/v1/jobs/hold", json={"constraint": "true"}, headers=people["bob"])
    assert r.status_code == 200 and r.json()["changed"] == []
    assert pool.get(f"/api/v1/jobs/{jid}", headers=people["alice"]).json()["state"] == "idle"


def test_a_sandbox_file_is_read_by_its_owner_and_the_pilot_running_its_job(
    pool: TestClient, people: dict[str, dict[str, str]]
) -> None:
    jid, digest = alices_job(pool, people)
    get = lambda who: pool.get(f"/api/v1/files/{digest}", headers=people[who])  # noqa: E731
    assert get("alice").content == INPUT and get("admin").content == INPUT
    assert get("bob").status_code == 404  # as if it did not exist
    assert get("pilot").status_code == 404  # no job of its cluster runs
    pid = register(pool, people["pilot"], SLOT)
    c = claim(pool, people["pilot"], pid).json()
    assert c["job_id"] == jid and get("pilot").content == INPUT
    # outputs: the job's owner's too
    out = upload(pool, people["pilot"], OUTPUT)
    done = pool.post(
        f"/api/v1/claims/{c['claim_id']}/complete",
        json={"exit_code": 0, "outputs": [{"name": "out.txt", "sha256": out}]},
        headers=people["pilot"],
    )
    assert done.status_code == 200, done.text
    assert pool.get(f"/api/v1/files/{out}", headers=people["alice"]).content == OUTPUT
    assert pool.get(f"/api/v1/files/{out}", headers=people["bob"]).status_code == 404


def test_knowing_a_digest_opens_nothing(
    pool: TestClient, people: dict[str, dict[str, str]]
) -> None:
    """Bob can neither "upload" alice's file without its content, nor name it
    in a job of his to reach it."""
    _, digest = alices_job(pool, people)
    r = pool.put(f"/api/v1/files/{digest}", content=b"", headers=people["bob"])
    assert r.status_code == 422
    assert pool.get(f"/api/v1/files/{digest}", headers=people["bob"]).status_code == 404
    job = {"ad": SECRET_AD, "sandbox": [{"name": "x", "sha256": digest}]}
    r = pool.post("/api/v1/jobs", json={"jobs": [job]}, headers=people["bob"])
    assert r.status_code == 422 and "not uploaded" in r.json()["detail"]
    # with the content, he has his own copy of the right to it
    assert pool.put(f"/api/v1/files/{digest}", content=INPUT, headers=people["bob"]).json() == {
        "sha256": digest,
        "stored": False,
        "size": len(INPUT),
    }
    assert pool.get(f"/api/v1/files/{digest}", headers=people["bob"]).content == INPUT
