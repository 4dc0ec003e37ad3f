"""The factory app end to end: real tokens, real SQLite, real local processes.

The pilot is a stand-in for glidein_startup.sh (a short bash script written
here): it records its argv, checks that GLIDEIN_TOKEN_FILE names a 0600 file
and that the token appears neither in argv nor in its environment, then waits
for a release file. Everything else is the real factory. Conditions are
awaited by polling with a deadline, never by fixed sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from glidewms.config.factory import EntryConfig, FactoryConfig
from glidewms.factory.api import create_app
from glidewms.factory.backends import (
    Backend,
    BackendContext,
    PilotLogs,
    PilotState,
    PilotSubmission,
)
from glidewms.factory.backends.local import LocalBackend
from glidewms.protocol import API_PREFIX, API_VERSION, VERSION_HEADER
from glidewms.security.tokens import TokenIssuer
from tests import harness
from tests.integration.factory_harness import FACTORY_URL, POOL_URL, FactoryFiles, stand_in

# Stand-in for glidein_startup.sh: records its argv, checks its token file, waits.
STAND_IN = stand_in(
    " (the real one is not under test here).", 'echo "pilot $gid started"', poll=0.05
)
wait_for = partial(harness.wait_for, timeout=15.0, interval=0.02)


@dataclass
class Env:
    tmp: Path
    issuer: TokenIssuer
    public_key: Path
    out: Path
    bootstrap: Path
    agent_dir: Path

    def config(self, **entry: Any) -> FactoryConfig:
        values = {"name": "local", "site": "LOCAL", "max_pilots": 3, "max_per_cycle": 2}
        values.update(entry)
        return FactoryConfig(
            state_dir=Path("state"),  # relative to the cwd, as an operator may write it
            issuer_public_key=self.public_key,
            cycle_seconds=0.1,
            entries=[EntryConfig(**values)],
        )

    def app(self, config: FactoryConfig, kill_grace: float = 2.0) -> Any:
        return create_app(
            config,
            FACTORY_URL,
            bootstrap=self.bootstrap,
            agent_dir=self.agent_dir,
            kill_grace=kill_grace,
        )

    def auth(self, subject: str, *scopes: str, **claims: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(subject, *scopes, **claims)}"}

    def token(self, subject: str, *scopes: str, **claims: str) -> str:
        return self.issuer.issue(subject, list(scopes), lifetime=600, **claims)

    def request_body(self, entries: dict[str, Any], fe: str = "fe1") -> dict[str, Any]:
        pilot_token = self.token("pilot", "pilot", fe=fe, group="main")
        return {"pool_url": POOL_URL, "pilot_token": pilot_token, "entries": entries}

    def args(self, glidein_id: str) -> list[str]:
        return (self.out / f"{glidein_id}.args").read_text().splitlines()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    files = FactoryFiles.create(tmp_path, STAND_IN, out)
    agent = files.agent
    (agent / "sub").mkdir()
    (agent / "__init__.py").write_text('"""agent"""\n')
    (agent / "sub" / "helper.py").write_text("X = 1\n")
    (agent / "notes.txt").write_text("not staged\n")
    yield Env(tmp_path, files.issuer, files.public, out, files.bootstrap, agent)
    (out / "release").touch()  # let any stand-in still waiting go


def glideins(client: TestClient, env: Env, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/api/v1/glideins", params=params, headers=env.auth("fe1", "frontend"))
    assert response.status_code == 200, response.text
    return response.json()


def states(client: TestClient, env: Env) -> list[str]:
    return sorted(g["state"] for g in glideins(client, env))


# -- authentication and scopes -------------------------------------------------------


def test_tokens_and_scopes(env: Env) -> None:
    with TestClient(env.app(env.config())) as client:
        assert client.get("/healthz").status_code == 200
        for method, path in [
            ("GET", "/api/v1/entries"),
            ("GET", "/api/v1/requests"),
            ("PUT", "/api/v1/requests/main"),
            ("GET", "/api/v1/glideins"),
            ("POST", "/api/v1/glideins/x/report"),
            ("GET", "/api/v1/stage/manifest"),
            ("GET", "/api/v1/stage/files/agent/__main__.py"),
        ]:
            assert client.request(method, path).status_code == 401, path
            bad = {"Authorization": "Bearer not-a-jwt"}
            assert client.request(method, path, headers=bad).status_code == 401, path
            user = env.auth("alice", "user")
            assert client.request(method, path, headers=user, json={}).status_code == 403, path
        pilot = env.auth("pilot", "pilot", fe="fe1", group="main")
        assert client.get("/api/v1/entries", headers=pilot).status_code == 403
        frontend = env.auth("fe1", "frontend")
        assert client.get("/api/v1/stage/manifest", headers=frontend).status_code == 403
        admin = env.auth("root", "admin")
        assert client.get("/api/v1/stage/manifest", headers=admin).status_code == 200


def test_routes_are_served_under_the_protocol_prefix(env: Env) -> None:
    """Every route of the protocol, at its URL and method, and every answer (a refusal
    too) names the protocol version."""
    with TestClient(env.app(env.config())) as client:
        schema = client.get("/openapi.json").json()
        assert schema["info"]["version"] == API_VERSION
        served = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
        assert served == {("GET", "/healthz"), ("GET", "/metrics")} | {
            (m, API_PREFIX + p)
            for m, p in [
                ("POST", "/reload"),
                ("GET", "/entries"),
                ("POST", "/entries/{name}/resume"),
                ("POST", "/entries/{name}/pause"),
                ("GET", "/requests"),
                ("PUT", "/requests/{group}"),
                ("GET", "/glideins"),
                ("POST", "/glideins/{glidein_id}/report"),
                ("POST", "/glideins/{glidein_id}/log"),
                ("GET", "/glideins/{glidein_id}/logs"),
                ("GET", "/logsearch"),
                ("GET", "/timeseries"),
                ("GET", "/stats"),
                ("GET", "/downtimes"),
                ("POST", "/downtimes"),
                ("DELETE", "/downtimes/{downtime_id}"),
                ("GET", "/stage/manifest"),
                ("GET", "/stage/files/{path}"),
            ]
        }
        refused = client.get(f"{API_PREFIX}/entries")
        assert refused.status_code == 401
        assert refused.headers[VERSION_HEADER] == API_VERSION
        assert client.get("/healthz").headers[VERSION_HEADER] == API_VERSION


# -- requests --------------------------------------------------------------------------


def test_put_request_is_stored_and_idempotent(env: Env) -> None:
    config = env.config(allowed_frontends=["fe1"])
    with TestClient(env.app(config)) as client:
        fe1 = env.auth("fe1", "frontend")
        body = env.request_body(
            {"local": {"idle": 0, "max_running": 0}, "nowhere": {"idle": 1, "max_running": 1}}
        )
        first = client.put("/api/v1/requests/main", json=body, headers=fe1)
        assert first.status_code == 200, first.text
        second = client.put("/api/v1/requests/main", json=body, headers=fe1)
        assert second.status_code == 200
        listed = client.get("/api/v1/requests", headers=fe1).json()
        assert len(listed) == 1
        stored = listed[0]
        assert (stored["frontend"], stored["group"], stored["pool_url"]) == (
            "fe1",
            "main",
            POOL_URL,
        )
        assert stored["entries"]["local"] == {
            "idle": 0,
            "max_running": 0,
            "remove": "NO",
            "remove_margin": 0,
        }
        assert stored["errors"] == {"nowhere": "unknown entry 'nowhere'"}
        assert body["pilot_token"] not in first.text + second.text + str(listed)
        token_file = config.state_dir / "credentials" / "fe1" / "main.token"
        assert token_file.read_text().strip() == body["pilot_token"]
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

        # Another frontend sees neither fe1's request nor an entry closed to it.
        fe2 = env.auth("fe2", "frontend")
        assert client.get("/api/v1/requests", headers=fe2).json() == []
        assert client.get("/api/v1/entries", headers=fe2).json() == []
        denied = client.put(
            "/api/v1/requests/main",
            headers=fe2,
            json=env.request_body({"local": {"idle": 2, "max_running": 2}}, fe="fe2"),
        )
        assert denied.status_code == 200
        assert denied.json()["errors"] == {"local": "entry 'local' does not accept frontend 'fe2'"}
        admin = env.auth("root", "admin")
        assert len(client.get("/api/v1/requests", headers=admin).json()) == 2
        assert glideins(client, env) == []


def test_put_request_rejects_bad_bodies(env: Env) -> None:
    with TestClient(env.app(env.config())) as client:
        fe1 = env.auth("fe1", "frontend")
        typo = env.request_body({"local": {"idle": 1, "max_runing": 2}})
        response = client.put("/api/v1/requests/main", json=typo, headers=fe1)
        assert response.status_code == 422
        assert "max_runing" in response.text and "max_running" in response.text
        negative = env.request_body({"local": {"idle": -1, "max_running": 2}})
        assert client.put("/api/v1/requests/main", json=negative, headers=fe1).status_code == 422
        foreign = env.request_body({"local": {"idle": 1, "max_running": 1}}, fe="fe2")
        response = client.put("/api/v1/requests/main", json=foreign, headers=fe1)
        assert response.status_code == 422 and "fe claim" in response.json()["detail"]
        not_pilot = {**foreign, "pilot_token": env.token("fe1", "frontend")}
        response = client.put("/api/v1/requests/main", json=not_pilot, headers=fe1)
        assert response.status_code == 422 and "pilot scope" in response.json()["detail"]
        wrong_group = env.request_body({})
        response = client.put("/api/v1/requests/other", json=wrong_group, headers=fe1)
        assert response.status_code == 422 and "group claim" in response.json()["detail"]
        bad_url = {**env.request_body({}), "pool_url": "ftp://x"}
        assert client.put("/api/v1/requests/main", json=bad_url, headers=fe1).status_code == 422
        assert client.get("/api/v1/requests", headers=fe1).json() == []


# -- stage -----------------------------------------------------------------------------


def test_stage_manifest_matches_files(env: Env) -> None:
    app = env.app(env.config())
    with TestClient(app) as client:
        pilot = env.auth("pilot", "pilot", fe="fe1", group="main")
        response = client.get("/api/v1/stage/manifest", headers=pilot)
        assert response.status_code == 200
        manifest = response.content
        assert hashlib.sha256(manifest).hexdigest() == app.state.factory.stage.manifest_sha256
        listed = dict(reversed(line.split("  ", 1)) for line in manifest.decode().splitlines())
        assert sorted(listed) == ["agent/__init__.py", "agent/__main__.py", "agent/sub/helper.py"]
        for path, digest in listed.items():
            body = client.get(f"/api/v1/stage/files/{path}", headers=pilot)
            assert body.status_code == 200
            assert hashlib.sha256(body.content).hexdigest() == digest
            assert body.content == (env.agent_dir / path.removeprefix("agent/")).read_bytes()
        for attempt in [
            "../factory.db",
            "agent/../../factory.db",
            "%2e%2e/factory.db",
            "..%2Ffactory.db",
            "agent/notes.txt",
            "manifest",
            "/etc/passwd",
        ]:
            response = client.get(f"/api/v1/stage/files/{attempt}", headers=pilot)
            assert response.status_code == 404, attempt


# -- pilots ----------------------------------------------------------------------------


def test_local_pilots_follow_the_plan_and_report(env: Env) -> None:
    config = env.config(attributes={"HAS_X": True, "Speed": 2}, idle_timeout=300)
    app = env.app(config)
    factory = app.state.factory
    with TestClient(app) as client:
        fe1 = env.auth("fe1", "frontend")
        body = env.request_body({"local": {"idle": 5, "max_running": 4}})
        assert client.put("/api/v1/requests/main", json=body, headers=fe1).status_code == 200

        # max_pilots=3 binds (idle 5, max_running 4); max_per_cycle=2 spreads it over cycles.
        wait_for(lambda: states(client, env) == ["running"] * 3, "three running pilots")
        ids = [g["glidein_id"] for g in glideins(client, env)]
        wait_for(lambda: all((env.out / f"{i}.args").exists() for i in ids), "pilot argv")
        settled = factory.cycles
        wait_for(lambda: factory.cycles >= settled + 5, "five more cycles")
        assert len(glideins(client, env)) == 3
        assert len({g["submitted_at"] for g in glideins(client, env)}) == 2

        args = env.args(ids[0])
        option = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
        assert option["--factory"] == FACTORY_URL
        assert option["--manifest-sha256"] == factory.stage.manifest_sha256
        assert option["--pool"] == POOL_URL
        assert option["--glidein-id"] == ids[0] and ids[0].startswith("local-")
        assert (option["--entry"], option["--site"]) == ("local", "LOCAL")
        assert (option["--idle-timeout"], option["--lifetime"]) == ("300", "86400")
        assert (option["--cpus"], option["--memory"], option["--work-dir"]) == ("1", "2048", "auto")
        assert [args[i + 1] for i, a in enumerate(args) if a == "--attr"] == [
            "HAS_X=true",
            "Speed=2",
        ]
        assert not any(body["pilot_token"] in a for a in args)

        summary = client.get("/api/v1/glideins", params={"summary": "true"}, headers=fe1)
        assert summary.json() == {"summary": {"local": {"running": 3}}}
        [ad] = client.get("/api/v1/entries", headers=fe1).json()
        assert ad["counts"] == {"queued": 0, "held": 0, "running": 3, "removing": 0}
        assert ad["free"] == 0 and ad["in_downtime"] is False
        assert ad["attributes"] == {"HAS_X": True, "Speed": 2}
        assert ad["limits"] == {"max_pilots": 3, "max_idle": 10, "max_held": 5, "max_per_cycle": 2}

        # Want nothing more, let the pilots end: they are tracked to finished.
        body = env.request_body({"local": {"idle": 0, "max_running": 0}})
        assert client.put("/api/v1/requests/main", json=body, headers=fe1).status_code == 200
        (env.out / "release").touch()
        wait_for(lambda: states(client, env) == ["finished"] * 3, "three finished pilots")
        done = factory.cycles
        wait_for(lambda: factory.cycles >= done + 3, "three more cycles")
        assert len(glideins(client, env)) == 3

        backend = factory.backends["local"]
        stored = factory.store.get(ids[0])
        logs = asyncio.run(backend.logs(stored.backend_id))
        assert f"pilot {ids[0]} started" in logs.stdout and logs.stderr == ""

        # The final report, from a pilot token of the right frontend only.
        report = {
            "exit_reason": "idle_timeout",
            "exit_code": 0,
            "jobs_run": 4,
            "jobs_failed": 1,
            "detail": "no more work",
            "cpu_seconds": 12.5,
        }
        pilot = env.auth("pilot", "pilot", fe="fe1", group="main")
        other = env.auth("pilot", "pilot", fe="fe2", group="main")
        url = f"/api/v1/glideins/{ids[0]}/report"
        assert client.post(url, json=report, headers=other).status_code == 403
        assert client.post(url, json={"exit_code": 0}, headers=pilot).status_code == 422
        assert (
            client.post("/api/v1/glideins/nope/report", json=report, headers=pilot).status_code
            == 404
        )
        response = client.post(url, json=report, headers=pilot)
        assert response.status_code == 200, response.text
        [shown] = [g for g in glideins(client, env) if g["glidein_id"] == ids[0]]
        assert (shown["exit_reason"], shown["exit_code"]) == ("idle_timeout", 0)
        assert shown["report"]["jobs_run"] == 4 and shown["report"]["cpu_seconds"] == 12.5
        assert shown["state"] == "finished"


def test_a_running_pilot_that_reported_its_end_is_counted_as_exited(env: Env) -> None:
    """A black hole keeps its node after its final report: the summary the
    frontends read says so (`exited`, a subset of `running`), so that they do
    not count it as a pilot about to register (frontend/supply.py)."""
    app = env.app(env.config(max_pilots=2))
    with TestClient(app) as client:
        fe1 = env.auth("fe1", "frontend")
        body = env.request_body({"local": {"idle": 2, "max_running": 2}})
        assert client.put("/api/v1/requests/main", json=body, headers=fe1).status_code == 200
        wait_for(lambda: states(client, env) == ["running"] * 2, "two running pilots")
        first = sorted(g["glidein_id"] for g in glideins(client, env))[0]
        pilot = env.auth("pilot", "pilot", fe="fe1", group="main")
        report = {"exit_reason": "black_hole", "exit_code": 5, "hold_seconds": 600, "cpus": 1}
        r = client.post(f"/api/v1/glideins/{first}/report", json=report, headers=pilot)
        assert r.status_code == 200, r.text
        wait_for(lambda: states(client, env) == ["running"] * 2, "still two at the site")
        summary = client.get("/api/v1/glideins", params={"summary": "true"}, headers=fe1)
        assert summary.json() == {"summary": {"local": {"running": 2, "exited": 1}}}
        other = env.auth("fe2", "frontend")
        summary = client.get("/api/v1/glideins", params={"summary": "true"}, headers=other)
        assert summary.json() == {"summary": {}}
        (env.out / "release").touch()


def test_factory_restart_keeps_tracking_pilots(env: Env) -> None:
    config = env.config(max_pilots=2)
    with TestClient(env.app(config)) as client:
        fe1 = env.auth("fe1", "frontend")
        body = env.request_body({"local": {"idle": 2, "max_running": 2}})
        client.put("/api/v1/requests/main", json=body, headers=fe1)
        wait_for(lambda: states(client, env) == ["running"] * 2, "two running pilots")
    # The factory stopped; its pilots did not. A new factory finds them via /proc.
    app = env.app(config)
    with TestClient(app) as client:
        start = app.state.factory.cycles
        wait_for(lambda: app.state.factory.cycles >= start + 3, "cycles after restart")
        assert states(client, env) == ["running"] * 2
        fe1 = env.auth("fe1", "frontend")
        body = env.request_body({"local": {"idle": 0, "max_running": 0}})
        client.put("/api/v1/requests/main", json=body, headers=fe1)
        (env.out / "release").touch()
        wait_for(lambda: states(client, env) == ["finished"] * 2, "pilots seen finished")
        assert len(glideins(client, env)) == 2


def test_missing_bootstrap_fails_and_backs_off(env: Env) -> None:
    env.bootstrap = env.tmp / "missing.sh"
    app = env.app(env.config())
    with TestClient(app) as client:
        fe1 = env.auth("fe1", "frontend")
        body = env.request_body({"local": {"idle": 1, "max_running": 1}})
        client.put("/api/v1/requests/main", json=body, headers=fe1)
        wait_for(lambda: states(client, env) == ["failed"], "a failed submission")
        start = app.state.factory.cycles
        wait_for(lambda: app.state.factory.cycles >= start + 25, "more cycles")
        # Exponential back-off (2, 4, 8, 16... cycles), not one failure per cycle.
        assert set(states(client, env)) == {"failed"}
        assert len(states(client, env)) <= 5
        [ad] = client.get("/api/v1/entries", headers=fe1).json()
        assert "bootstrap script not found" in ad["last_error"]
        assert glideins(client, env)[0]["exit_reason"] == "submit_failed"


class FakeBatch(Backend):
    """Stand-in for a batch system whose pilots wait in a queue (Slurm, Grid Engine):
    the local backend starts pilots at once, so it never shows queued ones."""

    kind = "local"

    def __init__(self) -> None:
        super().__init__(BackendContext(state_dir=Path("/nonexistent"), bootstrap=Path("/x")))
        self.jobs: dict[str, PilotState] = {}
        self.blind = False  # the batch system stops answering

    async def submit(self, entry: EntryConfig, pilots: Sequence[PilotSubmission]) -> list[str]:
        ids = [f"job-{p.glidein_id}" for p in pilots]
        self.jobs.update(dict.fromkeys(ids, PilotState.queued))
        return ids

    async def status(self, backend_ids: Sequence[str]) -> dict[str, PilotState]:
        if self.blind:
            return dict.fromkeys(backend_ids, PilotState.unknown)
        return {b: self.jobs[b] for b in backend_ids}

    async def remove(self, backend_ids: Sequence[str]) -> None:
        for b in backend_ids:
            if self.jobs[b] is PilotState.queued:
                self.jobs[b] = PilotState.removed

    async def logs(self, backend_id: str) -> PilotLogs:
        return PilotLogs("", "")


def test_queued_pilots_removed_only_when_asked(env: Env) -> None:
    app = env.app(env.config(max_pilots=10, max_idle=10, max_per_cycle=10))
    factory = app.state.factory
    batch = factory.backends["local"] = FakeBatch()
    with TestClient(app) as client:
        fe1 = env.auth("fe1", "frontend")

        def put(idle: int, max_running: int, remove: str) -> None:
            wanted = {"local": {"idle": idle, "max_running": max_running, "remove": remove}}
            response = client.put(
                "/api/v1/requests/main", json=env.request_body(wanted), headers=fe1
            )
            assert response.status_code == 200

        def settle() -> None:
            start = factory.cycles
            wait_for(lambda: factory.cycles >= start + 3, "three cycles")

        put(4, 10, "NO")
        wait_for(lambda: states(client, env) == ["queued"] * 4, "four queued pilots")
        first = sorted(
            (g["glidein_id"] for g in glideins(client, env)), key=lambda i: int(i.rsplit("-", 1)[1])
        )
        # fewer wanted, removal not allowed: nothing happens. The request changes
        # before a pilot starts running: a cycle in between would otherwise still
        # want 4 idle pilots, see 3, and rightly submit a fourth.
        put(1, 10, "NO")
        batch.jobs[f"job-{first[0]}"] = PilotState.running
        settle()
        assert states(client, env) == ["queued"] * 3 + ["running"]

        # A batch system that stops answering: its pilots stay counted as they were,
        # so a pilot that ended unseen is not replaced until it is seen to end.
        batch.blind = True
        batch.jobs[f"job-{first[1]}"] = PilotState.finished
        put(3, 10, "NO")
        settle()
        assert states(client, env) == ["queued"] * 3 + ["running"]
        put(2, 10, "NO")
        batch.blind = False
        wait_for(
            lambda: states(client, env) == ["finished", "queued", "queued", "running"],
            "the unseen end seen",
        )

        put(1, 10, "IDLE")  # the newest queued pilot goes; the running one stays
        wait_for(
            lambda: states(client, env) == ["finished", "queued", "removed", "running"],
            "one removed",
        )
        assert [g["glidein_id"] for g in glideins(client, env, state="removed")] == [first[3]]
        put(0, 0, "IDLE")
        wait_for(
            lambda: states(client, env) == ["finished", "removed", "removed", "running"],
            "all queued gone",
        )
        settle()
        assert len(glideins(client, env)) == 4
        assert batch.jobs[f"job-{first[0]}"] is PilotState.running


# -- the local backend on its own --------------------------------------------------------


def test_local_backend_remove_escalates_and_recovers(env: Env) -> None:
    stubborn = env.tmp / "stubborn.sh"
    stubborn.write_text("trap '' TERM\necho up\nwhile true; do sleep 0.05; done\n")
    context = BackendContext(state_dir=env.tmp / "state", bootstrap=stubborn, kill_grace=0.3)
    entry = EntryConfig(name="e1", site="S")
    token_file = env.tmp / "token"
    token_file.write_text("t\n")

    async def scenario() -> None:
        backend = LocalBackend(context)
        pilots = [
            PilotSubmission(f"e1-x-{i}", ("--glidein-id", f"e1-x-{i}"), token_file)
            for i in range(2)
        ]
        ids = await backend.submit(entry, pilots)
        assert (await backend.status(ids)) == dict.fromkeys(ids, PilotState.running)

        # After a "restart" (a new backend without the Popen objects), /proc answers.
        fresh = LocalBackend(context)
        assert (await fresh.status(ids)) == dict.fromkeys(ids, PilotState.running)

        await backend.remove(ids[:1])  # SIGTERM is ignored: SIGKILL after the grace period
        await fresh.remove(ids[1:])
        deadline = time.monotonic() + 10
        while (await backend.status(ids[:1]))[ids[0]] is PilotState.running:
            assert time.monotonic() < deadline, "pilot not killed"
            await asyncio.sleep(0.05)
        assert (await backend.status(ids[:1])) == {ids[0]: PilotState.removed}
        while (await fresh.status(ids[1:]))[ids[1]] is PilotState.running:
            assert time.monotonic() < deadline, "recovered pilot not killed"
            await asyncio.sleep(0.05)
        await backend.close()
        await fresh.close()

    asyncio.run(scenario())
