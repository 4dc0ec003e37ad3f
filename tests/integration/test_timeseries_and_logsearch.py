"""The two endpoints the web console reads besides the services' own:
`GET /api/v1/timeseries` (every service; glidewms/timeseries.py) and the
factory's `GET /api/v1/logsearch` (factory/logsearch.py), against real apps:
token rules, bounds, and the numbers or pilots a broken one would get wrong.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from glidewms.config.pool import PoolConfig
from glidewms.factory.store import Glidein
from glidewms.security.tokens import TokenIssuer
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401
from tests.integration.conftest import bearer
from tests.integration.test_factory_api import Env
from tests.integration.test_factory_api import env as factory_env  # noqa: F401

JOB_AD = '[ Cmd = "/bin/echo"; RequestCpus = 1; Requirements = true ]'


@pytest.fixture
def pool_config(pool_config: PoolConfig, database_url: str | None) -> PoolConfig:  # noqa: F811
    """No sampling loop: the test takes its samples itself, at known times; on
    SQLite and on PostgreSQL in turn (the downsampling's queries)."""
    pool_config.timeseries_seconds = 0
    pool_config.database_url = database_url
    return pool_config


def test_pool_timeseries_keeps_the_queue_and_follows_the_token_rules(
    pool: TestClient, issuer: TokenIssuer
) -> None:
    alice = bearer(issuer.issue("alice", ["user"]))
    path = "/api/v1/timeseries"
    assert pool.get(path).status_code == 401
    assert pool.get(path, headers=bearer(issuer.issue("p", ["pilot"]))).status_code == 403
    names = pool.get(path, headers=alice).json()["names"]
    assert "glidewms_pool_jobs_by_state" in names
    assert "glidewms_pool_job_wait_seconds_p50" in names

    sampler = pool.app.state.timeseries  # type: ignore[attr-defined]
    r = pool.post("/api/v1/jobs", json={"jobs": [{"ad": JOB_AD}] * 3}, headers=alice)
    assert r.status_code == 201
    sampler.sample(time.time() - 20)
    r = pool.post("/api/v1/jobs", json={"jobs": [{"ad": JOB_AD}] * 2}, headers=alice)
    sampler.sample(time.time() - 10)
    found = pool.get(path, params={"name": "glidewms_pool_jobs_by_state"}, headers=alice).json()
    idle = next(s for s in found["series"] if s["labels"] == {"state": "idle"})
    assert [v for _, v in idle["points"]] == [3.0, 5.0]
    assert found["resolution"] == 0

    assert pool.get(path, params={"name": "nope"}, headers=alice).status_code == 404
    for bad in ({"since": -1}, {"step": 86401}, {"name": "x" * 200}, {"since": "soon"}):
        assert pool.get(path, params=bad, headers=alice).status_code == 422, bad


def archived_pilot(env: Env, app: Any, glidein_id: str, frontend: str, trail: str) -> None:
    factory = app.state.factory
    factory.store.add_glideins(
        [Glidein.submitted(glidein_id, "local", "local", frontend, "main", time.time())]
    )
    factory.archive.append_trail(
        "local", frontend, glidein_id, [{"type": "startup", "content": trail}], True
    )
    factory.archive.store_output("local", frontend, glidein_id, f"{glidein_id} out\n", "")


def test_log_search_finds_text_in_the_callers_own_pilots(
    factory_env: Env,  # noqa: F811
) -> None:
    env = factory_env
    app = env.app(env.config())
    with TestClient(app) as client:
        archived_pilot(env, app, "g-1", "fe1", "CVMFS repository not mounted")
        archived_pilot(env, app, "g-2", "fe1", "all fine")
        archived_pilot(env, app, "g-3", "fe2", "cvmfs is missing here too")
        path = "/api/v1/logsearch"
        fe1, admin = env.auth("fe1", "frontend"), env.auth("ops", "admin")
        assert client.get(path, params={"q": "cvmfs"}).status_code == 401
        user = env.auth("alice", "user")
        assert client.get(path, params={"q": "cvmfs"}, headers=user).status_code == 403

        def hits(headers: dict[str, str], **params: Any) -> list[str]:
            r = client.get(path, params=params, headers=headers)
            assert r.status_code == 200, r.text
            return sorted(p["glidein_id"] for p in r.json()["pilots"])

        assert hits(fe1, q="cvmfs") == ["g-1"]  # any case; not fe2's pilot
        assert hits(admin, q="CVMFS") == ["g-1", "g-3"]
        assert hits(admin, q="g-2 out") == ["g-2"]  # stdout too
        assert hits(admin, q="cvmfs", site="LOCAL") == ["g-1", "g-3"]
        assert hits(admin, q="cvmfs", site="ELSEWHERE") == []
        assert hits(admin, q="cvmfs", since=time.time() + 3600) == []
        r = client.get(path, params={"q": "cvmfs"}, headers=admin).json()
        assert r["pilots"][0]["matches"][0]["file"] == "trail.jsonl"
        assert not r["truncated"]
        for bad in ({"q": "x"}, {"q": "y" * 201}, {"q": "ab", "limit": 0}, {"q": "a\nb"}):
            assert client.get(path, params=bad, headers=admin).status_code == 422, bad
