"""Pilots bound to the identity that registered them, in-process against the
real pool app (real tokens, real ClassAd library), on SQLite and PostgreSQL.

Every pilot call about a pilot (turn, claim, heartbeat, leave) must come with
a token of the registering identity: its subject and its fe, group, entry and
site claims. Another identity is answered as if the pilot did not exist (404);
a completion of a claim another identity's pilot holds is answered as one of
a claim no longer held (409) and changes nothing.
"""

from __future__ import annotations

from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from fastapi.testclient import TestClient
from pydantic import ValidationError

from glidewms.config.pool import PoolConfig
from glidewms.pool.api import create_app
from glidewms.pool.schema import pilots
from glidewms.security.tokens import TokenError, TokenIssuer, TokenVerifier
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401
from tests.integration.conftest import bearer

JOB_AD = (
    '[ Cmd = "/bin/echo"; RequestCpus = 1; RequestMemory = 100; RequestDisk = 10; '
    "Requirements = TARGET.Cpus >= RequestCpus ]"
)
SLOT = {"Cpus": 2, "Memory": 1000, "Disk": 100000, "GLIDEIN_Site": "SA"}
FREE = {"cpus": 2, "memory": 1000, "disk": 100000}
OWNER = {"fe": "fe1", "group": "main", "entry": "A", "site": "SA"}


@pytest.fixture
def pool_config(pool_config: PoolConfig, database_url: str | None) -> PoolConfig:  # noqa: F811
    pool_config.database_url = database_url
    return pool_config


def pilot_token(issuer: TokenIssuer, subject: str = "pilot", **claims: str) -> dict[str, str]:
    return bearer(issuer.issue(subject, ["pilot"], 600, **{**OWNER, **claims}))


def register(pool: TestClient, auth: dict[str, str], glidein: str = "A-1") -> str:
    r = pool.post("/api/v1/pilots", json={"slot": SLOT, "glidein_id": glidein}, headers=auth)
    assert r.status_code == 201, r.text
    return str(r.json()["pilot_id"])


def submit(pool: TestClient, auth: dict[str, str], n: int = 1) -> list[str]:
    r = pool.post("/api/v1/jobs", json={"jobs": [{"ad": JOB_AD}] * n}, headers=auth)
    assert r.status_code == 201, r.text
    return list(r.json()["job_ids"])


def pilot_calls(pool: TestClient, pid: str, auth: dict[str, str]) -> dict[str, Any]:
    """Every call about a pilot, made with `auth`: name -> response."""
    base = f"/api/v1/pilots/{pid}"
    return {
        "cycle": pool.post(f"{base}/cycle", json={"free": FREE, "max_jobs": 1}, headers=auth),
        "claim": pool.post(f"{base}/claim", json={"free": FREE}, headers=auth),
        "claim_many": pool.post(f"{base}/claim", json={"free": FREE, "max_jobs": 2}, headers=auth),
        "heartbeat": pool.post(f"{base}/heartbeat", json={"retiring": True}, headers=auth),
        "deregister": pool.post(f"{base}/deregister", json={"reason": "x"}, headers=auth),
    }


@pytest.mark.parametrize(
    "other",
    [
        {"fe": "fe2"},
        {"group": "other"},
        {"entry": "B"},
        {"site": "SB"},
        {"subject": "someone-else"},
    ],
    ids=["frontend", "group", "entry", "site", "subject"],
)
def test_another_identity_cannot_act_on_a_pilot(pool, issuer, other, auth):
    """Each claim of the token counts: a token differing in any one of them gets
    404 for every pilot call, and the pilot's work and lease are untouched."""
    mine = pilot_token(issuer)
    pid = register(pool, mine)
    [jid] = submit(pool, auth("alice"))
    claims = dict(other)  # the parameter is shared by both databases' runs
    theirs = pilot_token(issuer, claims.pop("subject", "pilot"), **claims)
    answers = pilot_calls(pool, pid, theirs)
    assert {name: r.status_code for name, r in answers.items()} == dict.fromkeys(answers, 404)
    assert all(r.json()["detail"] == f"no pilot {pid}" for r in answers.values())
    # as for a pilot id nobody registered: existence is not confirmed
    assert pilot_calls(pool, "0123456789abcdef", theirs)["cycle"].json()["detail"] == (
        "no pilot 0123456789abcdef"
    )
    assert pool.get(f"/api/v1/jobs/{jid}", headers=auth("alice")).json()["state"] == "idle"
    [listed] = pool.get("/api/v1/pilots", headers=auth("fe1", "frontend")).json()
    assert listed["state"] == "active" and not listed["retiring"]
    # the pilot itself, with a renewed token of the same identity, goes on
    renewed = pilot_token(issuer)
    assert renewed != mine
    turn = pool.post(f"/api/v1/pilots/{pid}/cycle", json={"free": FREE}, headers=renewed)
    assert turn.status_code == 200 and turn.json()["claims"][0]["job_id"] == jid


def test_a_token_that_adds_or_drops_the_site_scope_is_the_same_identity(pool, issuer):
    """Frontends scope tokens to a site when their factories agree on the entry's
    site: a renewal may add or drop the claim, and the pilot goes on; a token
    of another site does not (test above)."""
    unscoped = bearer(issuer.issue("pilot", ["pilot"], 600, fe="fe1", group="main", entry="A"))
    pid = register(pool, unscoped)
    hb = f"/api/v1/pilots/{pid}/heartbeat"
    assert pool.post(hb, json={}, headers=pilot_token(issuer)).status_code == 200
    assert pool.post(hb, json={}, headers=pilot_token(issuer, site="SB")).status_code == 200
    scoped = register(pool, pilot_token(issuer), "A-2")
    hb = f"/api/v1/pilots/{scoped}/heartbeat"
    assert pool.post(hb, json={}, headers=unscoped).status_code == 200
    assert pool.post(hb, json={}, headers=pilot_token(issuer, site="SB")).status_code == 404


def test_an_admin_may_act_on_any_pilot(pool, issuer, auth):
    pid = register(pool, pilot_token(issuer))
    admin = auth("ops", "admin")
    hb = pool.post(f"/api/v1/pilots/{pid}/heartbeat", json={}, headers=admin)
    assert hb.status_code == 200, hb.text
    assert pool.post(f"/api/v1/pilots/{pid}/deregister", json={}, headers=admin).status_code == 200


def test_a_claim_is_bound_to_its_pilot(pool, issuer, auth):
    """Another identity's pilot cannot complete the claim (single form: 409, as
    for a stale claim; turn form: answered False), nor does its heartbeat
    renew or report it held; the job stays running for its own pilot."""
    alice = auth("alice")
    mine, theirs = pilot_token(issuer), pilot_token(issuer, fe="fe2")
    victim = register(pool, mine)
    attacker = register(pool, theirs)
    [jid] = submit(pool, alice)
    claim = pool.post(f"/api/v1/pilots/{victim}/claim", json={"free": FREE}, headers=mine).json()
    cid = claim["claim_id"]
    forged = {"exit_code": 0, "outputs": [{"name": "out", "sha256": "0" * 64}]}
    single = pool.post(f"/api/v1/claims/{cid}/complete", json=forged, headers=theirs)
    assert single.status_code == 409, single.text
    assert (
        single.json()["detail"]
        == pool.post("/api/v1/claims/nonexistent/complete", json=forged, headers=theirs).json()[
            "detail"
        ]
    )
    turn = pool.post(
        f"/api/v1/pilots/{attacker}/cycle",
        json={"completions": [{"claim_id": cid, **forged}], "max_jobs": 0},
        headers=theirs,
    )
    assert turn.status_code == 200 and turn.json()["completed"] == {cid: False}
    hb = pool.post(f"/api/v1/pilots/{attacker}/heartbeat", json={"claims": [cid]}, headers=theirs)
    assert hb.json()["kill"] == [cid]  # not this pilot's claim
    assert pool.get(f"/api/v1/jobs/{jid}", headers=alice).json()["state"] == "running"
    # its own pilot completes it, in both forms' place
    own = pool.post(f"/api/v1/claims/{cid}/complete", json={"exit_code": 0}, headers=mine)
    assert own.status_code == 200 and own.json()["job_id"] == jid
    assert pool.get(f"/api/v1/jobs/{jid}", headers=alice).json()["outputs"] in (None, [])


def test_a_pilot_registered_before_identities_were_kept_is_bound_to_frontend_and_group(
    pool, pool_config, issuer
):
    """A row of an older pool (no token_subject) keeps working for a token of
    its frontend and group, and is refused to any other."""
    pid = register(pool, pilot_token(issuer))
    engine = sa.create_engine(pool_config.resolved_database_url())
    with engine.begin() as conn:
        conn.execute(
            pilots.update()
            .where(pilots.c.pilot_id == pid)
            .values(token_subject=None, token_entry=None, token_site=None)
        )
    engine.dispose()
    hb = f"/api/v1/pilots/{pid}/heartbeat"
    assert pool.post(hb, json={}, headers=pilot_token(issuer, entry="Z")).status_code == 200
    assert pool.post(hb, json={}, headers=pilot_token(issuer, fe="fe2")).status_code == 404
    assert pool.post(hb, json={}, headers=pilot_token(issuer, group="g2")).status_code == 404


@pytest.mark.parametrize(
    ("slot", "glidein", "named"),
    [
        ({"GLIDEIN_Entry_Name": "B"}, "A-1", "GLIDEIN_Entry_Name"),
        ({"GLIDEIN_Site": "SB"}, "A-1", "GLIDEIN_Site"),
        ({}, "B-1", "glidein_id"),
        ({"GLIDEIN_Id": "B-1"}, None, "glidein_id"),
    ],
)
def test_a_slot_that_contradicts_its_token_is_refused(pool, issuer, slot, glidein, named):
    r = pool.post(
        "/api/v1/pilots",
        json={"slot": {**SLOT, **slot}, "glidein_id": glidein},
        headers=pilot_token(issuer),
    )
    assert r.status_code == 403 and named in r.json()["detail"], r.text


def test_a_slot_whose_glidein_id_differs_from_the_body_is_refused(pool, issuer):
    r = pool.post(
        "/api/v1/pilots",
        json={"slot": {**SLOT, "GLIDEIN_Id": "A-2"}, "glidein_id": "A-1"},
        headers=pilot_token(issuer),
    )
    assert r.status_code == 422 and "GLIDEIN_Id" in r.json()["detail"]


def test_a_token_with_pilot_and_user_scopes_is_no_pilot_token(pool, keys):
    """Signed by the installation's key (the issuer itself refuses to), such a
    token is refused on every pilot route."""
    key = keys[0].read_bytes()
    claims = {"iss": "glidewms", "sub": "pilot", "scope": "pilot user", "exp": 4102444800}
    mixed = bearer(jwt.encode({**claims, "fe": "fe1"}, load_pem_private_key(key, None), "EdDSA"))
    r = pool.post("/api/v1/pilots", json={"slot": SLOT}, headers=mixed)
    assert r.status_code == 403 and "pilot scope alone" in r.json()["detail"]
    done = pool.post("/api/v1/claims/x/complete", json={"exit_code": 0}, headers=mixed)
    assert done.status_code == 403
    assert pool.get("/api/v1/jobs", headers=mixed).status_code == 200  # it is a user token


def test_minted_pilot_tokens_come_from_the_pilot_issuer_and_carry_the_scope_asked(
    pool, pool_config, auth
):
    fe = auth("fe1", "frontend")
    r = pool.post("/api/v1/tokens/pilot", json={"entry": "A", "site": "SA"}, headers=fe)
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    assert jwt.get_unverified_header(token)["kid"] == "pilot"
    # the installation's public key alone does not verify it: another key signed it
    main_key = pool_config.resolved_issuer_public_key()
    with pytest.raises(TokenError):
        TokenVerifier.from_file(main_key).verify(token)
    claims = TokenVerifier.from_file(main_key, pool_config.pilot_issuer_public_key).verify(token)
    assert (claims.subject, claims.claims["fe"], claims.claims["entry"]) == ("pilot", "fe1", "A")
    assert claims.claims["site"] == "SA" and claims.scopes == {"pilot"}
    # the frontend is the caller's token subject, whatever the body says
    spoof = pool.post("/api/v1/tokens/pilot", json={"entry": "A", "fe": "fe2"}, headers=fe)
    assert spoof.status_code == 200
    assert jwt.decode(spoof.json()["token"], options={"verify_signature": False})["fe"] == "fe1"
    no_entry = pool.post("/api/v1/tokens/pilot", json={"site": "SA"}, headers=fe)
    assert no_entry.status_code == 422 and "site" in no_entry.json()["detail"]


def test_a_pool_without_the_pilot_issuer_key_mints_nothing(tmp_path, keys, auth):
    config = PoolConfig(state_dir=tmp_path / "bare" / "pool", issuer_public_key=keys[1])
    with TestClient(create_app(config, "http://testserver")) as pool:
        r = pool.post("/api/v1/tokens/pilot", json={}, headers=auth("fe1", "frontend"))
    assert r.status_code == 503 and "pilot_issuer_private_key" in r.json()["detail"]


def test_the_pool_refuses_the_installation_issuer_key(tmp_path, keys):
    with pytest.raises(ValidationError, match="pilot_issuer_private_key"):
        PoolConfig(state_dir=tmp_path / "pool", issuer_private_key=keys[0])  # type: ignore[call-arg]
