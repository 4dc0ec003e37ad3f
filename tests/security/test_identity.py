"""Identity and isolation, replayed against the real services (`glidewms up` on
loopback: pool, factory and frontend as processes, a real pilot started by
the factory's local backend).

The attacks of issue 11 that these replay, each of which worked before:
- a pilot token of another frontend (or of this frontend's other entry)
  heartbeats, turns, completes a claim of, or deregisters someone else's
  pilot: evicting its job or completing it with forged outputs;
- a pilot token registers a slot under another site, entry or glidein id;
- the pool holds the key that mints admin tokens: whoever reads the pool's
  key can sign anything. The pool now holds the pilot issuer's key, whose
  tokens are refused everywhere for any scope but `pilot`;
- a token with `pilot` beside other scopes is taken as a pilot token;
- a pilot reports to the factory about another frontend's or entry's glidein.

The operator's installation key (keys/issuer.key) stands in for "another
frontend" here: with it the test makes a second frontend's token, which asks
the real pool for pilot tokens like any frontend.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from glidewms.config.loader import load_config
from glidewms.config.pool import PoolConfig
from glidewms.security.tokens import TokenIssuer
from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e

LONG_JOB = """
executable = /bin/sleep
arguments = 300
transfer_executable = false
request_memory = 32
queue
"""


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """One installation with one real pilot running one long job (its claim is
    what the attackers go after). Pilots wait long enough to outlive the test."""
    tmp = tmp_path_factory.mktemp("identity")
    with systems(tmp, pilot_idle_timeout=600) as start:
        s = start(max_pilots=1)
        [jid] = s.submit(LONG_JOB, tmp)
        wait_for(lambda: s.job(jid)["state"] == "running", "the long job to run")
        s.long_job = jid  # type: ignore[attr-defined]
        yield s


def url(s: System, service: str, path: str) -> str:
    return f"{s.inst.services[service].url}/api/v1/{path}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(s: System, service: str, path: str, token: str, body: Any = None) -> httpx.Response:
    return httpx.post(url(s, service, path), headers=bearer(token), json=body or {}, timeout=10)


def mint(s: System, frontend_token: str, **body: str) -> str:
    """A pilot token, from the real pool, for the frontend of `frontend_token`."""
    r = post(s, "pool", "tokens/pilot", frontend_token, {"group": "main", **body})
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def operator_issuer(s: System) -> TokenIssuer:
    return TokenIssuer.from_file(s.inst.path("keys", "issuer.key"))


def attackers(s: System) -> dict[str, str]:
    """Pilot tokens that are not the victim pilot's, each by one claim."""
    ours = s.inst.token_file("frontend").read_text().strip()
    evil = operator_issuer(s).issue("evil", ["frontend"], 600)
    return {
        "another frontend, same entry and site": mint(s, evil, entry="local", site="LOCAL"),
        "same frontend, another entry": mint(s, ours, entry="elsewhere"),
        "same frontend, no entry": mint(s, ours),
    }


def victim(s: System) -> tuple[dict[str, Any], str, str]:
    """The real pilot, the claim it holds, and the token the factory gave it."""
    [pilot] = s.pilots()
    with sqlite3.connect(s.inst.path("pool", "pool.sqlite")) as conn:
        [(claim_id,)] = conn.execute("SELECT claim_id FROM jobs WHERE state = 'running'")
    token = s.inst.path("factory", "credentials", "frontend", "main+local.token")
    return pilot, claim_id, token.read_text().strip()


def test_the_factory_started_pilot_holds_an_entry_and_site_scoped_pilot_issuer_token(system):
    _, _, token = victim(system)
    assert jwt.get_unverified_header(token)["kid"] == "pilot"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["scope"] == "pilot"
    assert (claims["fe"], claims["group"], claims["entry"], claims["site"]) == (
        "frontend",
        "main",
        "local",
        "LOCAL",
    )
    # the frontend asked for no group-wide token, so the factory holds none
    assert not system.inst.path("factory", "credentials", "frontend", "main.token").exists()


def test_no_other_pilot_token_can_act_on_the_pilot_or_its_claim(system):
    pilot, claim_id, own = victim(system)
    pid = pilot["pilot_id"]
    forged = {"exit_code": 0, "outputs": [{"name": "out", "sha256": "0" * 64}]}
    for who, token in attackers(system).items():
        answers = {
            "heartbeat": post(system, "pool", f"pilots/{pid}/heartbeat", token).status_code,
            "cycle": post(
                system,
                "pool",
                f"pilots/{pid}/cycle",
                token,
                {"completions": [{"claim_id": claim_id, **forged}], "max_jobs": 0},
            ).status_code,
            "complete": post(
                system, "pool", f"claims/{claim_id}/complete", token, forged
            ).status_code,
            "deregister": post(system, "pool", f"pilots/{pid}/deregister", token).status_code,
        }
        assert answers == {"heartbeat": 404, "cycle": 404, "complete": 409, "deregister": 404}, who
    # nothing changed: the job still runs on its pilot, which is still there
    assert system.job(system.long_job)["state"] == "running"
    assert [p["state"] for p in system.pilots()] == ["active"]
    # while the pilot's own token is taken (a heartbeat of its claim keeps it held)
    hb = post(system, "pool", f"pilots/{pid}/heartbeat", own, {"claims": [claim_id]})
    assert hb.status_code == 200 and hb.json()["kill"] == []


def test_a_pilot_token_registers_only_its_entry_site_and_glidein_ids(system):
    _, _, own = victim(system)
    slot = {"Cpus": 1, "Memory": 64, "IsProbe": True}
    refused = {
        "GLIDEIN_Site": ({**slot, "GLIDEIN_Site": "CERN"}, "local-probe-1"),
        "GLIDEIN_Entry_Name": ({**slot, "GLIDEIN_Entry_Name": "cern"}, "local-probe-1"),
        "glidein_id": (slot, "cern-probe-1"),
    }
    for named, (ad, glidein) in refused.items():
        r = post(system, "pool", "pilots", own, {"slot": ad, "glidein_id": glidein})
        assert r.status_code == 403 and named in r.json()["detail"], r.text
    ok = post(system, "pool", "pilots", own, {"slot": slot, "glidein_id": "local-probe-1"})
    assert ok.status_code == 201, ok.text
    gone = post(system, "pool", f"pilots/{ok.json()['pilot_id']}/deregister", own)
    assert gone.status_code == 200


def test_pilot_reports_to_the_factory_are_bound_to_the_token(system):
    [glidein] = system.glideins()
    gid = glidein["glidein_id"]
    report = {"exit_reason": "forged", "exit_code": 0}
    log = {"records": [], "final": False}
    for who, token in attackers(system).items():
        if who == "same frontend, no entry":
            continue  # a frontend-wide token covers the frontend's glideins
        assert post(system, "factory", f"glideins/{gid}/report", token, report).status_code == 403
        assert post(system, "factory", f"glideins/{gid}/log", token, log).status_code == 403, who
    assert system.glidein(gid)["exit_reason"] is None


def test_the_pilot_issuer_key_signs_nothing_but_pilot_tokens_anywhere(system):
    """The key the pool holds, used as an attacker who read it would."""
    key = load_pem_private_key(system.inst.path("keys", "pilot_issuer.key").read_bytes(), None)
    base = {"iss": "glidewms", "sub": "mallory", "exp": 4102444800, "fe": "frontend"}

    def forge(scope: str, headers: dict[str, str] | None) -> str:
        return jwt.encode({**base, "scope": scope}, key, "EdDSA", headers=headers)  # type: ignore[arg-type]

    reads = [("pool", "jobs"), ("pool", "pilots"), ("factory", "glideins"), ("frontend", "status")]
    for scope in ("admin", "user", "frontend", "pilot admin", "pilot user"):
        for headers in ({"kid": "pilot"}, None, {"kid": "main"}):
            token = forge(scope, headers)
            for service, path in reads:
                r = httpx.get(url(system, service, path), headers=bearer(token), timeout=10)
                assert r.status_code == 401, (scope, headers, service, path, r.text)
    # what it may sign, a pilot token, each service takes
    pilot = forge("pilot", {"kid": "pilot"})
    r = httpx.get(url(system, "factory", "stage/manifest"), headers=bearer(pilot), timeout=10)
    assert r.status_code == 200


def test_a_token_with_pilot_and_user_scopes_is_not_a_pilot_token(system):
    mixed = jwt.encode(
        {"iss": "glidewms", "sub": "pilot", "scope": "pilot user", "exp": 4102444800},
        load_pem_private_key(system.inst.path("keys", "issuer.key").read_bytes(), None),  # type: ignore[arg-type]
        "EdDSA",
    )
    r = post(system, "pool", "pilots", mixed, {"slot": {"Cpus": 1}})
    assert r.status_code == 403 and "pilot scope alone" in r.json()["detail"]
    manifest = httpx.get(url(system, "factory", "stage/manifest"), headers=bearer(mixed))
    assert manifest.status_code == 403


def test_the_pool_is_given_no_path_to_the_installation_key(system):
    config_file = system.inst.path("config", "pool.yaml")
    text = config_file.read_text()
    assert "issuer.key" not in text.replace("pilot_issuer.key", "")
    config = load_config(PoolConfig, config_file)
    values = {str(v) for v in yaml.safe_load(text).values()}
    installation_key = str(system.inst.path("keys", "issuer.key"))
    assert installation_key not in values
    assert config.resolved_pilot_issuer_private_key() == system.inst.path(
        "keys", "pilot_issuer.key"
    )
    cmdline = Path(f"/proc/{system.inst.services['pool'].process.pid}/cmdline").read_bytes()
    assert b"issuer.key" not in cmdline.replace(b"pilot_issuer.key", b"")
