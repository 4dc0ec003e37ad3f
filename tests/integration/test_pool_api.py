"""The pool's API in-process: real tokens, real ClassAd library, and every test
twice, on SQLite and on a real PostgreSQL server (tests/components/postgres.py)."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from fastapi.testclient import TestClient

from glidewms.config.pool import PoolConfig
from glidewms.protocol import API_VERSION, VERSION_HEADER
from glidewms.security.tokens import TokenIssuer
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401
from tests.integration.conftest import bearer

JOB_AD = (
    '[ Cmd = "/bin/echo"; RequestCpus = 1; RequestMemory = 100; RequestDisk = 10; '
    "Requirements = TARGET.Cpus >= RequestCpus && TARGET.Memory >= RequestMemory ]"
)
SLOT = {"Cpus": 2, "Memory": 1000, "Disk": 100000, "GLIDEIN_Site": "LOCAL"}


@pytest.fixture
def pool_config(pool_config: PoolConfig, database_url: str | None) -> PoolConfig:  # noqa: F811
    """The shared config, on each database in turn."""
    pool_config.database_url = database_url
    return pool_config


@pytest.fixture
def alice(issuer: TokenIssuer) -> dict[str, str]:
    return bearer(issuer.issue("alice", ["user"]))


@pytest.fixture
def bob(issuer: TokenIssuer) -> dict[str, str]:
    return bearer(issuer.issue("bob", ["user"]))


@pytest.fixture
def pilot_auth(issuer: TokenIssuer) -> dict[str, str]:
    return bearer(issuer.issue("pilot", ["pilot"], fe="fe1", group="main"))


def submit(pool: TestClient, auth: dict[str, str], n: int = 1, ad: str = JOB_AD) -> list[str]:
    r = pool.post("/api/v1/jobs", json={"jobs": [{"ad": ad}] * n}, headers=auth)
    assert r.status_code == 201, r.text
    return r.json()["job_ids"]


def register(pool: TestClient, auth: dict[str, str], slot: dict | None = None) -> str:
    r = pool.post("/api/v1/pilots", json={"slot": slot or SLOT, "glidein_id": "g1"}, headers=auth)
    assert r.status_code == 201, r.text
    return r.json()["pilot_id"]


def claim(
    pool: TestClient, auth: dict[str, str], pid: str, wait: float = 0, free: dict | None = None
):
    return pool.post(
        f"/api/v1/pilots/{pid}/claim",
        json={"free": free or {"cpus": 2, "memory": 1000, "disk": 100000}, "wait": wait},
        headers=auth,
    )


def test_every_api_refuses_missing_token_and_wrong_scope(pool, alice, pilot_auth, issuer):
    assert pool.get("/api/v1/jobs").status_code == 401
    assert pool.get("/api/v1/jobs", headers=bearer("not-a-jwt")).status_code == 401
    assert pool.get("/api/v1/demand", headers=alice).status_code == 403
    assert pool.post("/api/v1/pilots", json={"slot": SLOT}, headers=alice).status_code == 403
    assert (
        pool.post("/api/v1/jobs", json={"jobs": [{"ad": JOB_AD}]}, headers=pilot_auth).status_code
        == 403
    )
    assert pool.post("/api/v1/tokens/pilot", json={}, headers=alice).status_code == 403
    expired = issuer.issue("alice", ["user"], lifetime=-10)
    assert pool.get("/api/v1/jobs", headers=bearer(expired)).status_code == 401
    other = TokenIssuer.from_file(_other_key())
    assert (
        pool.get("/api/v1/jobs", headers=bearer(other.issue("alice", ["user"]))).status_code == 401
    )


def _other_key():
    import tempfile
    from pathlib import Path

    from glidewms.security.tokens import generate_keypair

    return generate_keypair(Path(tempfile.mkdtemp()))[0]


def test_the_pool_names_its_protocol_version(pool, alice):
    """In every response, refusals and the health check included, and in its schema."""
    for response in (
        pool.get("/healthz"),
        pool.get("/api/v1/jobs"),
        pool.get("/api/v1/jobs", headers=alice),
        pool.get("/api/v1/jobs/9999.0", headers=alice),
    ):
        assert response.headers[VERSION_HEADER] == API_VERSION, response.request.url
    assert pool.get("/openapi.json").json()["info"]["version"] == API_VERSION


def test_claim_many_fills_the_free_cores_in_one_call(pool, alice, pilot_auth):
    """max_jobs > 1 answers {"claims": [...]}: each claim fits what the ones before
    it left free (here 3 cores of 1-core jobs, so 3 of the 5 idle jobs)."""
    ids = submit(pool, alice, 5)
    pid = register(pool, pilot_auth, {**SLOT, "Cpus": 4})
    r = pool.post(
        f"/api/v1/pilots/{pid}/claim",
        json={"free": {"cpus": 3, "memory": 1000, "disk": 100000}, "wait": 0, "max_jobs": 8},
        headers=pilot_auth,
    )
    assert r.status_code == 200, r.text
    claims = r.json()["claims"]
    assert sorted(c["job_id"] for c in claims) == ids[:3]
    assert len({c["claim_id"] for c in claims}) == 3
    # the original form is unchanged: one claim object, not a list
    one = claim(pool, pilot_auth, pid, free={"cpus": 1, "memory": 1000, "disk": 100000})
    assert one.status_code == 200 and one.json()["job_id"] == ids[3]
    # nothing that fits: 204, as for a single claim
    none = pool.post(
        f"/api/v1/pilots/{pid}/claim",
        json={"free": {"cpus": 4, "memory": 50, "disk": 100000}, "wait": 0, "max_jobs": 4},
        headers=pilot_auth,
    )
    assert none.status_code == 204
    assert (
        pool.post(
            f"/api/v1/pilots/{pid}/claim", json={"max_jobs": 0}, headers=pilot_auth
        ).status_code
        == 422
    )


def test_owner_comes_from_token_not_body(pool, alice):
    """An ad naming its own Owner is refused (the pool owns it: checks.POOL_OWNED);
    the job's owner is the token's subject."""
    r = pool.post(
        "/api/v1/jobs",
        json={"jobs": [{"ad": JOB_AD[:-1] + '; Owner = "mallory" ]'}]},
        headers=alice,
    )
    assert r.status_code == 422 and "Owner" in r.json()["detail"]
    [jid] = submit(pool, alice)
    job = pool.get(f"/api/v1/jobs/{jid}", headers=alice).json()
    assert job["owner"] == "alice"
    assert 'Owner = "alice"' in job["ad"]


def test_bad_classad_refused_with_position(pool, alice):
    r = pool.post("/api/v1/jobs", json={"jobs": [{"ad": JOB_AD}, {"ad": "[ A = ]"}]}, headers=alice)
    assert r.status_code == 422
    assert "jobs[1]" in r.json()["detail"]
    assert pool.get("/api/v1/jobs", headers=alice).json() == []


def test_claim_run_complete_and_outputs(pool, alice, pilot_auth):
    [jid] = submit(pool, alice)
    pid = register(pool, pilot_auth)
    r = claim(pool, pilot_auth, pid)
    assert r.status_code == 200
    c = r.json()
    assert c["job_id"] == jid and c["job"]["cmd"] == "/bin/echo"
    data = b"hello\n"
    digest = hashlib.sha256(data).hexdigest()
    assert pool.put(f"/api/v1/files/{digest}", content=data, headers=pilot_auth).status_code == 201
    r = pool.post(
        f"/api/v1/claims/{c['claim_id']}/complete",
        json={"exit_code": 0, "outputs": [{"name": "out", "sha256": digest}]},
        headers=pilot_auth,
    )
    assert r.status_code == 200, r.text
    # a second completion of the same claim is refused: a job completes once
    again = pool.post(
        f"/api/v1/claims/{c['claim_id']}/complete", json={"exit_code": 0}, headers=pilot_auth
    )
    assert again.status_code == 409
    hist = pool.get("/api/v1/jobs", params={"history": True}, headers=alice).json()
    assert [(j["job_id"], j["state"], j["exit_code"]) for j in hist] == [(jid, "completed", 0)]
    assert pool.get(f"/api/v1/files/{digest}", headers=alice).content == data
    kinds = [e["type"] for e in pool.get(f"/api/v1/jobs/{jid}/events", headers=alice).json()]
    assert kinds == ["submitted", "started", "completed"]


def test_upload_with_wrong_digest_refused(pool, alice):
    wrong = hashlib.sha256(b"other").hexdigest()
    assert pool.put(f"/api/v1/files/{wrong}", content=b"data", headers=alice).status_code == 422
    assert pool.get(f"/api/v1/files/{wrong}", headers=alice).status_code == 404


def test_requirements_decide_who_gets_the_job(pool, alice, pilot_auth):
    ad = (
        '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 100; '
        'DESIRED_Sites = "SiteB"; '
        "Requirements = stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites) ]"
    )
    [jid] = submit(pool, alice, ad=ad)
    at_a = register(pool, pilot_auth, {**SLOT, "GLIDEIN_Site": "SiteA"})
    at_b = register(pool, pilot_auth, {**SLOT, "GLIDEIN_Site": "SiteB"})
    assert claim(pool, pilot_auth, at_a).status_code == 204
    r = claim(pool, pilot_auth, at_b)
    assert r.status_code == 200 and r.json()["job_id"] == jid


def test_partitionable_free_resources_limit_claims(pool, alice, pilot_auth):
    big = JOB_AD.replace("RequestMemory = 100", "RequestMemory = 800")
    submit(pool, alice, ad=big)
    pid = register(pool, pilot_auth)
    assert claim(pool, pilot_auth, pid, free={"cpus": 2, "memory": 500}).status_code == 204
    assert claim(pool, pilot_auth, pid, free={"cpus": 2, "memory": 900}).status_code == 200


def test_long_poll_claim_wakes_on_submit(pool, alice, pilot_auth):
    pid = register(pool, pilot_auth)
    result: dict = {}
    started = threading.Event()

    def waiter() -> None:
        started.set()
        result["r"] = claim(pool, pilot_auth, pid, wait=30)

    t = threading.Thread(target=waiter)
    t.start()
    started.wait(5)
    [jid] = submit(pool, alice)
    t.join(20)
    assert not t.is_alive(), "the long-poll did not return after a submit"
    assert result["r"].status_code == 200 and result["r"].json()["job_id"] == jid


def test_expired_lease_requeues_and_stale_completion_is_refused(
    pool_config, issuer, alice, pilot_auth
):
    from glidewms.pool.api import create_app

    pool_config.claim_lease_seconds = 0.2
    with TestClient(create_app(pool_config)) as pool:
        [jid] = submit(pool, alice)
        p1 = register(pool, pilot_auth)
        first = claim(pool, pilot_auth, p1).json()
        deadline = time.monotonic() + 20
        while pool.get(f"/api/v1/jobs/{jid}", headers=alice).json()["state"] != "idle":
            assert time.monotonic() < deadline, "lease never expired"
            time.sleep(0.05)
        p2 = register(pool, pilot_auth)
        second = claim(pool, pilot_auth, p2).json()
        assert second["job_id"] == jid and second["claim_id"] != first["claim_id"]
        late = pool.post(
            f"/api/v1/claims/{first['claim_id']}/complete",
            json={"exit_code": 0},
            headers=pilot_auth,
        )
        assert late.status_code == 409
        ok = pool.post(
            f"/api/v1/claims/{second['claim_id']}/complete",
            json={"exit_code": 0},
            headers=pilot_auth,
        )
        assert ok.status_code == 200
        kinds = [e["type"] for e in pool.get(f"/api/v1/jobs/{jid}/events", headers=alice).json()]
        assert kinds.count("completed") == 1 and "evicted" in kinds


def test_hold_release_remove_only_own_jobs(pool, alice, bob, pilot_auth):
    [a1, a2] = submit(pool, alice, 2)
    r = pool.post("/api/v1/jobs/hold", json={"job_ids": [a1], "reason": "x"}, headers=bob)
    assert r.status_code == 403
    r = pool.post(
        "/api/v1/jobs/hold", json={"job_ids": [a1], "reason": "check input"}, headers=alice
    )
    assert r.json()["changed"] == [a1]
    pid = register(pool, pilot_auth)
    got = claim(pool, pilot_auth, pid).json()
    assert got["job_id"] == a2  # the held job is not handed out
    r = pool.post("/api/v1/jobs/remove", json={"constraint": "JobStatus == 2"}, headers=alice)
    assert r.json()["changed"] == [a2]
    hb = pool.post(
        f"/api/v1/pilots/{pid}/heartbeat", json={"claims": [got["claim_id"]]}, headers=pilot_auth
    ).json()
    assert hb["kill"] == [got["claim_id"]]
    r = pool.post("/api/v1/jobs/release", json={"job_ids": [a1]}, headers=alice)
    assert r.json()["changed"] == [a1]
    q = pool.get("/api/v1/jobs", params={"constraint": 'Owner == "alice"'}, headers=alice).json()
    assert [(j["job_id"], j["state"]) for j in q] == [(a1, "idle")]


def test_demand_groups_jobs_into_autoclusters(pool, alice, bob, issuer):
    submit(pool, alice, 3)
    submit(pool, bob, 2)
    submit(pool, alice, 1, ad=JOB_AD.replace("RequestMemory = 100", "RequestMemory = 4000"))
    fe = bearer(issuer.issue("fe1", ["frontend"]))
    acs = pool.get("/api/v1/demand", headers=fe).json()["autoclusters"]
    assert sorted((a["idle"], a["request"]["memory"]) for a in acs) == [(1, 4000), (5, 100)]
    small = next(a for a in acs if a["idle"] == 5)
    assert small["owners"] == {"alice": 3, "bob": 2}


def test_pilot_token_minted_for_frontend(pool, issuer):
    fe = bearer(issuer.issue("fe1", ["frontend"]))
    r = pool.post("/api/v1/tokens/pilot", json={"group": "main", "lifetime": 600}, headers=fe)
    token = r.json()["token"]
    pid = register(pool, bearer(token))
    pilots = pool.get("/api/v1/pilots", headers=fe).json()
    assert [(p["pilot_id"], p["frontend"], p["group"]) for p in pilots] == [(pid, "fe1", "main")]


def test_an_entry_scoped_pilot_token_registers_only_that_entry(pool, issuer):
    fe = bearer(issuer.issue("fe1", ["frontend"]))
    r = pool.post("/api/v1/tokens/pilot", json={"group": "main", "entry": "SITE_A_ce1"}, headers=fe)
    token = bearer(r.json()["token"])
    elsewhere = pool.post(
        "/api/v1/pilots",
        headers=token,
        json={"slot": {**SLOT, "GLIDEIN_Entry_Name": "SITE_B_ce1"}, "glidein_id": "g1"},
    )
    assert elsewhere.status_code == 403 and "SITE_A_ce1" in elsewhere.json()["detail"]
    # a slot that names no entry gets the token's (and its glidein id names the entry)
    r = pool.post(
        "/api/v1/pilots", json={"slot": SLOT, "glidein_id": "SITE_A_ce1-1"}, headers=token
    )
    pid = r.json()["pilot_id"]
    pilots = pool.get("/api/v1/pilots", headers=fe).json()
    assert [(p["pilot_id"], p["slot"]["GLIDEIN_Entry_Name"]) for p in pilots] == [
        (pid, "SITE_A_ce1")
    ]


def test_fair_share_alternates_owners(pool, alice, bob, pilot_auth):
    submit(pool, alice, 3)
    submit(pool, bob, 3)
    pid = register(pool, pilot_auth, {**SLOT, "Cpus": 8})
    owners = []
    for _ in range(4):
        c = claim(pool, pilot_auth, pid, free={"cpus": 8, "memory": 1000, "disk": 100000}).json()
        owners.append(pool.get(f"/api/v1/jobs/{c['job_id']}", headers=alice).json()["owner"])
    assert sorted(owners) == ["alice", "alice", "bob", "bob"]


def test_cluster_id_placeholder_is_filled_by_the_pool(pool, alice, pilot_auth):
    ad = JOB_AD[:-1] + '; Out = "out.$(ClusterId).txt" ]'
    r = pool.post(
        "/api/v1/jobs", json={"jobs": [{"ad": ad, "args": ["$(ClusterId)"]}]}, headers=alice
    )
    cluster = r.json()["cluster_id"]
    c = claim(pool, pilot_auth, register(pool, pilot_auth)).json()
    assert c["job"]["out"] == f"out.{cluster}.txt"
    assert c["job"]["args"] == [str(cluster)]
