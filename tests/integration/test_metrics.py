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
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from glidewms.config.pool import PoolConfig
from glidewms.security.tokens import TokenIssuer
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401
from tests.integration.conftest import bearer
from tests.integration.test_factory_api import Env, wait_for
from tests.integration.test_factory_api import env as factory_env  # noqa: F401
from tests.integration.test_factory_api import glideins as factory_glideins
from tests.integration.test_factory_api import states as factory_states

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


@pytest.fixture
def pool_config(pool_config: PoolConfig, database_url: str | None) -> PoolConfig:  # noqa: F811
    """The shared config, on SQLite and on PostgreSQL in turn (the collectors' queries)."""
    pool_config.database_url = database_url
    return pool_config


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


# ------------------------------------------------------------------ factory


def test_factory_metrics_count_pilots_failures_goodput_and_backend_calls(
    factory_env: Env,  # noqa: F811
    database_url: str | None,  # noqa: F811
):
    env = factory_env
    config = env.config(max_pilots=2)
    config.database_url = database_url  # the report sums use each database's JSON functions
    app = env.app(config)
    scraper = env.auth("prometheus", "metrics")
    with TestClient(app) as client:
        refuses_without_metrics_scope(client, env.issuer)
        fe1 = env.auth("fe1", "frontend")
        body = env.request_body({"local": {"idle": 2, "max_running": 2}})
        assert client.put("/api/v1/requests/main", json=body, headers=fe1).status_code == 200
        wait_for(lambda: factory_states(client, env) == ["running"] * 2, "two running pilots")

        samples, _ = scrape(client, scraper)
        labels = {"entry": "local", "frontend": "fe1"}
        assert value(samples, "glidewms_factory_glideins", **labels, state="running") == 2
        assert value(samples, "glidewms_factory_glideins_submitted_total", **labels) == 2
        assert (
            value(
                samples,
                "glidewms_factory_backend_seconds_count",
                backend="local",
                operation="submit",
            )
            >= 1
        )
        assert (
            value(
                samples,
                "glidewms_factory_backend_seconds_count",
                backend="local",
                operation="status",
            )
            >= 1
        )
        assert value(samples, "glidewms_factory_entry_paused", entry="local") == 0
        assert value(samples, "glidewms_factory_cycles_total") >= 1

        # both end; one reports a failed validation, the other some goodput
        body = env.request_body({"local": {"idle": 0, "max_running": 0}})
        assert client.put("/api/v1/requests/main", json=body, headers=fe1).status_code == 200
        (env.out / "release").touch()
        wait_for(lambda: factory_states(client, env) == ["finished"] * 2, "two finished pilots")
        first, second = sorted(g["glidein_id"] for g in factory_glideins(client, env))
        pilot = env.auth("pilot", "pilot", fe="fe1", group="main")
        reports = {
            first: {  # as a black hole that kept its 4-core node 10 s would say
                "exit_reason": "validation_failed",
                "exit_code": 1,
                "wall_seconds": 20,
                "cpus": 4,
                "hold_seconds": 10,
            },
            second: {
                "exit_reason": "idle_timeout",
                "exit_code": 0,
                "goodput_seconds": 100.5,
                "badput_seconds": 7,
                "wall_seconds": "not a number",  # kept as sent; must not break the sum
            },
        }
        for gid, report in reports.items():
            r = client.post(f"/api/v1/glideins/{gid}/report", json=report, headers=pilot)
            assert r.status_code == 200, r.text

        samples, _ = scrape(client, scraper)
        assert total(samples, "glidewms_factory_glideins", **labels) == 0
        assert (
            value(samples, "glidewms_factory_glideins_ended_total", **labels, state="finished") == 2
        )
        assert (
            value(
                samples,
                "glidewms_factory_glidein_failures_total",
                **labels,
                category="validation_failed",
            )
            == 1
        )
        assert total(samples, "glidewms_factory_glidein_failures_total") == 1
        assert value(samples, "glidewms_factory_goodput_seconds_total", **labels) == 100.5
        assert value(samples, "glidewms_factory_badput_seconds_total", **labels) == 7
        assert value(samples, "glidewms_factory_pilot_seconds_total", **labels) == 20
        # core-seconds: older reports (no core fields) count jobs as one core, the
        # pilot on its cpus; a hold on all its cores is badput and pilot time
        assert value(samples, "glidewms_factory_goodput_core_seconds_total", **labels) == 100.5
        assert value(samples, "glidewms_factory_badput_core_seconds_total", **labels) == 7 + 40
        assert value(samples, "glidewms_factory_pilot_core_seconds_total", **labels) == 80 + 40
        assert value(samples, "glidewms_scrape_errors_total", collector="factory") == 0


def test_factory_metrics_show_a_paused_entry(factory_env: Env):  # noqa: F811
    env = factory_env
    env.bootstrap = env.tmp / "missing.sh"
    app = env.app(env.config(recovery={"pause_after_failures": 2}))
    with TestClient(app) as client:
        body = env.request_body({"local": {"idle": 1, "max_running": 1}})
        client.put("/api/v1/requests/main", json=body, headers=env.auth("fe1", "frontend"))
        factory = app.state.factory
        wait_for(lambda: factory.health.get("local") and factory.health["local"].paused, "pause")
        samples, _ = scrape(client, env.auth("prometheus", "metrics"))
    assert value(samples, "glidewms_factory_entry_paused", entry="local") == 1
    assert value(samples, "glidewms_factory_entry_submit_failures", entry="local") == 2
    failed = value(
        samples,
        "glidewms_factory_glidein_failures_total",
        entry="local",
        frontend="fe1",
        category="submit_failed",
    )
    assert failed == 2
    assert (
        value(samples, "glidewms_factory_backend_errors_total", backend="local", operation="submit")
        == 2
    )


# ------------------------------------------------------------------ frontend


def test_frontend_metrics_show_demand_supply_requests_and_failed_queries(tmp_path: Path):
    from tests.integration import test_frontend_loop as loop

    keys = loop.Keys(*_keypair(tmp_path))
    factory = loop.StandInFactory("f", keys.public, [loop.entry_ad("e1", "S1")])
    factory.counts = {"g1": {"e1": {"queued": 2}}}
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(loop.real_pool(tmp_path, keys, "pool"))
        served = stack.enter_context(loop.ThreadServer(factory.app()))
        config = loop.frontend_config(
            tmp_path,
            keys,
            pools=[{"name": "p", "url": pool.url}],
            factories=[
                {"name": "f", "url": served.url},
                {"name": "fdead", "url": loop.refused_url()},
            ],
            groups=[{"name": "g1", "pool": "p"}],
        )
        loop.submit(pool, keys, 5, loop.ONE_CORE)
        frontend = loop.Frontend(config, keys.token("fe1", "frontend"))
        app = loop.frontend_app(
            config, keys.token("fe1", "frontend"), frontend=frontend, loop=False
        )
        for _ in range(2):
            loop.run_cycle(frontend)
        assert factory.requests_for("g1"), "the healthy factory got its request"

    client = TestClient(app)
    refuses_without_metrics_scope(client, keys.issuer)
    samples, _ = scrape(client, bearer(keys.token("prometheus", "metrics")))
    at = {"group": "g1", "entry": "f/e1"}
    assert value(samples, "glidewms_frontend_demand_idle_jobs", **at) == 5
    assert value(samples, "glidewms_frontend_demand_running_jobs", **at) == 0
    assert value(samples, "glidewms_frontend_supply_pilots", **at, state="queued") == 2
    sent = factory.requests_for("g1")[-1]["entries"]["e1"]
    assert value(samples, "glidewms_frontend_request_idle", **at) == sent["idle"] > 0
    assert value(samples, "glidewms_frontend_request_max_running", **at) == sent["max_running"]
    assert value(samples, "glidewms_frontend_request_remove_stage", **at) == 0  # NO
    assert value(samples, "glidewms_frontend_pressure_demand_units", **at) > 0
    assert (
        value(samples, "glidewms_frontend_query_failures_total", kind="factory", peer="fdead") == 2
    )
    assert total(samples, "glidewms_frontend_query_failures_total", kind="pool") == 0
    assert value(samples, "glidewms_frontend_cycle_seconds_count") == 2
    assert value(samples, "glidewms_frontend_cycles_total") == 2
    assert value(samples, "glidewms_frontend_last_cycle_ok") == 0  # fdead is unreachable
    assert value(samples, "glidewms_frontend_last_cycle_errors") == 1


def _keypair(tmp_path: Path) -> tuple[Path, Path, TokenIssuer]:
    from glidewms.security.tokens import generate_keypair

    private, public = generate_keypair(tmp_path / "keys")
    return private, public, TokenIssuer.from_file(private)


# ------------------------------------------------------------------ dashboard

# What is not a metric name in the dashboard's PromQL: functions are followed
# by "(" and label names sit in {...} or by/without (...), removed first.
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
PROMQL_WORDS |= {"and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads."""
    assert expr.count("(") == expr.count(")"), expr
    assert expr.count("{") == expr.count("}") and expr.count("[") == expr.count("]"), expr
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for found in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = found.group()
        follows = text[found.end() :].lstrip()[:1]
        if follows == "(" or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def exported(client: TestClient, headers: dict[str, str]) -> set[str]:
    """Every series name a scrape of this service can hold: the samples it has
    now, and the names of families that have none yet."""
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    names = set()
    for family in text_string_to_metric_families(r.text):
        names |= {s.name for s in family.samples}
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum")}
        else:
            names.add(family.name)
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for p in dashboard["panels"]:
        panels += p.get("panels", [])
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert len(exprs) >= 30 and all(isinstance(e, str) and e for e in exprs)
    return exprs


def test_the_dashboard_reads_only_metrics_the_services_export(
    pool: TestClient,
    issuer: TokenIssuer,
    factory_env: Env,  # noqa: F811
    tmp_path: Path,
):
    names = exported(pool, bearer(issuer.issue("prometheus", ["metrics"])))
    env = factory_env
    with TestClient(env.app(env.config())) as factory:
        names |= exported(factory, env.auth("prometheus", "metrics"))
    from tests.integration import test_frontend_loop as loop

    keys = loop.Keys(*_keypair(tmp_path))
    config = loop.frontend_config(tmp_path, keys)
    with TestClient(loop.frontend_app(config, "token", loop=False)) as frontend:
        names |= exported(frontend, bearer(keys.token("prometheus", "metrics")))

    read = set()
    for expr in dashboard_expressions():
        found = metric_names(expr)
        assert found, f"no metric in {expr!r}"
        read |= found
    assert read <= names, f"the dashboard reads what no service exports: {sorted(read - names)}"
    # and it shows something of each service
    for prefix in ("glidewms_pool_", "glidewms_factory_", "glidewms_frontend_"):
        assert any(name.startswith(prefix) for name in read), prefix


def test_metric_names_are_read_from_expressions():
    expr = (
        'histogram_quantile(0.9, sum by (le, call) (rate(x_bucket{call="a b"}[5m]))) '
        "/ on (job) group_left y_total + time() - z"
    )
    assert metric_names(expr) == {"x_bucket", "y_total", "z"}


def test_the_prometheus_example_scrapes_every_service_with_a_token_file():
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"glidewms-pool", "glidewms-factory", "glidewms-frontend"}
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics"
        assert job["authorization"]["type"] == "Bearer"
        assert job["authorization"]["credentials_file"]
        assert "credentials" not in job["authorization"]  # never the token inline
