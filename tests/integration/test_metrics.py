"""`GET /metrics` of the pool, the factory and the frontend, scraped with a
metrics-scope token and read with prometheus_client's own parser; the
Grafana dashboard names only metrics the services export.

Each test puts known state in a real service (jobs submitted and claimed,
pilots started by the real local backend, a frontend cycle against a real
pool) and checks the numbers a broken collector would get wrong.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from glidewms.security.tokens import TokenIssuer
from tests.integration.conftest import bearer

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "glidewms.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"

JOB_AD = (
    '[ Cmd = "/bin/echo"; RequestCpus = 1; RequestMemory = 100; RequestDisk = 10; '
    "Requirements = TARGET.Cpus >= RequestCpus && TARGET.Memory >= RequestMemory ]"
)
SLOT = {
    "Cpus": 4,
    "Memory": 4000,
    "Disk": 100000,
    "GLIDEIN_Site": "SITE_A",
    "GLIDEIN_Entry_Name": "entry_a",
}
FREE = {"cpus": 4, "memory": 4000, "disk": 100000}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient, headers: dict[str, str]) -> tuple[Samples, set[str]]:
    """Every sample by (name, sorted labels), and the family names."""
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    families = set()
    for family in text_string_to_metric_families(r.text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of `name` whose labels include `labels`."""
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all((k, w) in ls for k, w in labels.items())
    )


def refuses_without_metrics_scope(client: TestClient, issuer: TokenIssuer) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer("not-a-jwt")).status_code == 401
    user = client.get("/metrics", headers=bearer(issuer.issue("alice", ["user"])))
    assert user.status_code == 403 and "metrics" in user.json()["detail"]
    pilot = client.get("/metrics", headers=bearer(issuer.issue("p", ["pilot"])))
    assert pilot.status_code == 403
    assert client.get("/metrics", headers=bearer(issuer.issue("ops", ["admin"]))).status_code == 200


# ------------------------------------------------------------------ pool


def test_pool_metrics_count_the_queue_pilots_and_turns(pool: TestClient, issuer: TokenIssuer):
    alice, bob = bearer(issuer.issue("alice", ["user"])), bearer(issuer.issue("bob", ["user"]))
    pilot = bearer(issuer.issue("pilot", ["pilot"], fe="fe1", group="main"))
    scraper = bearer(issuer.issue("prometheus", ["metrics"]))
    refuses_without_metrics_scope(pool, issuer)
    for who, n in ((alice, 3), (bob, 4)):
        r = pool.post("/api/v1/jobs", json={"jobs": [{"ad": JOB_AD}] * n}, headers=who)
        assert r.status_code == 201, r.text
    held = pool.post("/api/v1/jobs/hold", json={"job_ids": ["2.0"]}, headers=bob)
    assert held.json()["changed"] == ["2.0"]
    r = pool.post("/api/v1/pilots", json={"slot": SLOT, "glidein_id": "g1"}, headers=pilot)
    pid = r.json()["pilot_id"]
    r = pool.post(f"/api/v1/pilots/{pid}/cycle", json={"free": FREE, "max_jobs": 2}, headers=pilot)
    claims = r.json()["claims"]
    assert len(claims) == 2

    samples, _ = scrape(pool, scraper)
    assert total(samples, "glidewms_pool_jobs", state="idle") == 4
    assert total(samples, "glidewms_pool_jobs", state="running") == 2
    assert value(samples, "glidewms_pool_jobs", state="held", owner="bob") == 1
    assert total(samples, "glidewms_pool_jobs", owner="alice") == 3
    assert total(samples, "glidewms_pool_jobs", owner="bob") == 4
    assert value(samples, "glidewms_pool_jobs_by_state", state="idle") == 4
    assert value(samples, "glidewms_pool_jobs_submitted_total") == 7
    assert value(samples, "glidewms_pool_jobs_started_total") == 2
    assert value(samples, "glidewms_pool_clusters_submitted_total") == 2
    assert value(samples, "glidewms_pool_job_wait_seconds_count") == 2
    assert value(samples, "glidewms_pool_turn_seconds_count", call="cycle") == 1
    assert (
        value(samples, "glidewms_pool_pilots", state="active", site="SITE_A", entry="entry_a") == 1
    )
    assert value(samples, "glidewms_pool_slots", status="busy") == 1
    assert value(samples, "glidewms_pool_slots", status="idle") == 0
    assert value(samples, "glidewms_pool_cores", status="busy") == 2
    assert value(samples, "glidewms_pool_cores", status="idle") == 2
    assert total(samples, "glidewms_pool_submitter_running_cores") == 2
    assert {ls for (n, ls) in samples if n == "glidewms_pool_submitter_effective_priority"} == {
        (("submitter", "alice"),),
        (("submitter", "bob"),),
    }

    # one job ends, one is started in the same turn
    done = {"claim_id": claims[0]["claim_id"], "exit_code": 0, "wall_seconds": 1.0}
    r = pool.post(
        f"/api/v1/pilots/{pid}/cycle",
        json={"completions": [done], "free": {**FREE, "cpus": 3}, "max_jobs": 1},
        headers=pilot,
    )
    assert r.json()["completed"] == {done["claim_id"]: True} and len(r.json()["claims"]) == 1
    samples, _ = scrape(pool, scraper)
    assert value(samples, "glidewms_pool_jobs_completed_total") == 1
    assert value(samples, "glidewms_pool_jobs_started_total") == 3
    assert total(samples, "glidewms_pool_jobs", state="idle") == 3
    assert total(samples, "glidewms_pool_jobs", state="running") == 2
    assert value(samples, "glidewms_pool_turn_seconds_count", call="cycle") == 2
    assert value(samples, "glidewms_scrape_errors_total", collector="pool") == 0


def test_pool_owner_label_is_capped(pool: TestClient, issuer: TokenIssuer, monkeypatch):
    """Beyond the cap, owners are summed under `other`: a scrape cannot grow
    with the number of users."""
    monkeypatch.setattr("glidewms.metrics.MAX_LABEL_VALUES", 2)
    for name, n in (("u1", 3), ("u2", 2), ("u3", 1), ("u4", 1)):
        who = bearer(issuer.issue(name, ["user"]))
        r = pool.post("/api/v1/jobs", json={"jobs": [{"ad": JOB_AD}] * n}, headers=who)
        assert r.status_code == 201
    samples, _ = scrape(pool, bearer(issuer.issue("prometheus", ["metrics"])))
    owners = {dict(ls)["owner"]: v for (n, ls), v in samples.items() if n == "glidewms_pool_jobs"}
    assert owners == {"u1": 3, "u2": 2, "other": 2}
