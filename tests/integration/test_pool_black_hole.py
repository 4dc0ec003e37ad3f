"""Black-hole victims through the real pool app (real tokens, real ClassAd library),
turns driven by hand as a pilot would drive them.

A pilot that held back its quick failures and then declared a black hole names
those claims (``POST /pilots/{id}/black-hole``): the pool requeues the jobs as
site failures (NumRestarts/NumSiteFailures, an event saying why, held after
``max_job_restarts``), never completes them, and refuses every claim that is
not the caller's to give back: another pilot's, one already completed, one
that succeeded.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from glidewms.config.pool import PoolConfig
from glidewms.pool.blackhole import MAX_VICTIMS
from glidewms.security.tokens import TokenIssuer
from tests.integration.conftest import bearer

JOB_AD = (
    '[ Cmd = "/bin/false"; RequestCpus = 1; RequestMemory = 100; RequestDisk = 10; '
    "Requirements = TARGET.Cpus >= RequestCpus ]"
)
SLOT = {"Cpus": 4, "Memory": 4000, "Disk": 100000, "GLIDEIN_Site": "SA"}
FREE = {"cpus": 4, "memory": 4000, "disk": 100000}
OWNER = {"fe": "fe1", "group": "main", "entry": "A", "site": "SA"}


@pytest.fixture
def pool_config(pool_config: PoolConfig) -> PoolConfig:
    pool_config.max_job_restarts = 1
    return pool_config


def pilot(pool: TestClient, issuer: TokenIssuer, glidein: str, **claims: str) -> Any:
    auth = bearer(issuer.issue("pilot", ["pilot"], 600, **{**OWNER, **claims}))
    r = pool.post("/api/v1/pilots", json={"slot": SLOT, "glidein_id": glidein}, headers=auth)
    assert r.status_code == 201, r.text
    return r.json()["pilot_id"], auth


def turn(pool: TestClient, pid: str, auth: dict[str, str], **body: Any) -> dict[str, Any]:
    r = pool.post(
        f"/api/v1/pilots/{pid}/cycle", json={"free": FREE, "wait": 0, **body}, headers=auth
    )
    assert r.status_code in (200, 204), r.text
    return r.json() if r.status_code == 200 else {}


def black_hole(pool: TestClient, pid: str, auth: dict[str, str], claims: list[dict]) -> Any:
    return pool.post(
        f"/api/v1/pilots/{pid}/black-hole",
        json={"claims": claims, "detail": "3 jobs failed within 120s"},
        headers=auth,
    )


def victim(claim: str, code: int = 127, wall: float = 0.2) -> dict[str, Any]:
    return {"claim_id": claim, "exit_code": code, "wall_seconds": wall}


def job(pool: TestClient, user: dict[str, str], jid: str) -> dict[str, Any]:
    return pool.get(f"/api/v1/jobs/{jid}", headers=user).json()


def events(pool: TestClient, user: dict[str, str], jid: str) -> list[dict[str, Any]]:
    r = pool.get(f"/api/v1/jobs/{jid}/events", headers=user)
    assert r.status_code == 200, r.text
    body = r.json()
    return list(body["events"] if isinstance(body, dict) else body)


def test_victims_requeued_as_site_failures_never_completed(pool, issuer, auth):
    alice = auth("alice")
    r = pool.post("/api/v1/jobs", json={"jobs": [{"ad": JOB_AD}] * 4}, headers=alice)
    jids = r.json()["job_ids"]
    bad, bad_auth = pilot(pool, issuer, "A-1")
    claims = {c["job_id"]: c["claim_id"] for c in turn(pool, bad, bad_auth, max_jobs=4)["claims"]}
    assert sorted(claims) == sorted(jids)
    j0, j1, j2, j3 = jids
    # j3 failed slowly: its result was not held, and the pool completed it
    done = turn(pool, bad, bad_auth, max_jobs=0, completions=[victim(claims[j3], 1, 900)])
    assert done["completed"] == {claims[j3]: True}
    assert job(pool, alice, j3)["state"] == "completed"

    # another pilot (another identity, or the same identity's other pilot) cannot
    _other, other_auth = pilot(pool, issuer, "B-1", entry="B")
    twin, twin_auth = pilot(pool, issuer, "A-2")
    assert black_hole(pool, bad, other_auth, [victim(claims[j0])]).status_code == 404
    r = black_hole(pool, twin, twin_auth, [victim(claims[j0])])
    assert r.status_code == 200 and r.json()["requeued"] == []
    assert r.json()["refused"] == {claims[j0]: "not a claim this pilot holds"}
    assert job(pool, alice, j0)["state"] == "running"

    r = black_hole(
        pool,
        bad,
        bad_auth,
        [
            victim(claims[j0]),
            victim(claims[j0]),  # named twice: once
            victim(claims[j1], 0),  # a success is no victim
            victim(claims[j2], 126),
            victim(claims[j3]),  # completed already: final
            victim("0" * 32),  # no such claim
        ],
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["requeued"] == sorted([claims[j0], claims[j2]])
    assert set(answer["refused"]) == {claims[j1], claims[j3], "0" * 32}
    assert "success" in answer["refused"][claims[j1]]
    assert answer["refused"][claims[j3]] == "not a claim this pilot holds"  # completed: final

    for jid in (j0, j2):
        ad = job(pool, alice, jid)
        assert ad["state"] == "idle"
        assert ad["num_restarts"] == 1 and "NumSiteFailures = 1;" in ad["ad"]
        kinds = [e["type"] for e in events(pool, alice, jid)]
        assert "completed" not in kinds and kinds[-2:] == ["evicted", "requeued"]
        [why] = [e["detail"] for e in events(pool, alice, jid) if e["type"] == "evicted"]
        assert why["failure"] == "site" and why["pilot"] == bad
        assert why["reason"].startswith(f"black hole: pilot {bad} (3 jobs failed within 120s)")
        assert "exited" in why["reason"]
    assert job(pool, alice, j1)["state"] == "running"  # still the pilot's to report
    assert job(pool, alice, j3)["state"] == "completed"
    # the same claims again: already requeued, nothing happens twice
    again = black_hole(pool, bad, bad_auth, [victim(claims[j0])]).json()
    assert again["requeued"] == [] and claims[j0] in again["refused"]
    assert job(pool, alice, j0)["num_restarts"] == 1
    # a late result for a requeued claim is refused, not completed
    late = turn(pool, bad, bad_auth, max_jobs=0, completions=[victim(claims[j0])])
    assert late["completed"] == {claims[j0]: False}
    assert job(pool, alice, j0)["state"] == "idle"

    # they run again on a good pilot and complete there
    good, good_auth = pilot(pool, issuer, "C-1", entry="C")
    got = {c["job_id"]: c["claim_id"] for c in turn(pool, good, good_auth, max_jobs=4)["claims"]}
    assert sorted(got) == sorted([j0, j2])
    ok = [{"claim_id": c, "exit_code": 0, "wall_seconds": 5.0} for c in got.values()]
    assert all(turn(pool, good, good_auth, max_jobs=0, completions=ok)["completed"].values())
    for jid in (j0, j2):
        ad = job(pool, alice, jid)
        assert ad["state"] == "completed" and ad["exit_code"] == 0
        assert [e["type"] for e in events(pool, alice, jid)].count("completed") == 1
    # the black-hole pilot leaves: the job it still held is requeued (site failure)
    bye = pool.post(
        f"/api/v1/pilots/{bad}/deregister", json={"reason": "black_hole"}, headers=bad_auth
    )
    assert bye.status_code == 200
    assert job(pool, alice, j1)["state"] == "idle"
    # a pilot that left names no more claims
    assert black_hole(pool, bad, bad_auth, [victim(claims[j1])]).status_code == 410


def test_held_after_max_job_restarts_and_bounded(pool, issuer, auth):
    """A second black hole for the same job holds it (max_job_restarts = 1), as
    any site failure; one call names at most MAX_VICTIMS claims."""
    alice = auth("alice")
    [jid] = pool.post("/api/v1/jobs", json={"jobs": [{"ad": JOB_AD}]}, headers=alice).json()[
        "job_ids"
    ]
    for n in (1, 2):
        pid, pauth = pilot(pool, issuer, f"A-{n}")
        [c] = turn(pool, pid, pauth, max_jobs=1)["claims"]
        r = black_hole(pool, pid, pauth, [victim(c["claim_id"])])
        assert r.json()["requeued"] == [c["claim_id"]]
    ad = job(pool, alice, jid)
    assert ad["state"] == "held" and ad["num_restarts"] == 2
    assert "site failures 2 times" in ad["hold_reason"] and "black hole" in ad["hold_reason"]
    pid, pauth = pilot(pool, issuer, "A-9")
    too_many = [victim(f"{i:032x}") for i in range(MAX_VICTIMS + 1)]
    assert black_hole(pool, pid, pauth, too_many).status_code == 422
