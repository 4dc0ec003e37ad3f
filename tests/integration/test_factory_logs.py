"""Downtimes, the pilot log trail and archive, and the operators' CLI, against the
real factory app (real tokens, SQLite, local pilot processes from the stand-in
bootstrap of test_factory_api). The CLI runs in-process with its HTTP client
pointed at the app; everything else is as in production."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from glidewms.cli.main import app as cli_app
from glidewms.factory import client as factory_client
from tests.integration.test_factory_api import Env, glideins, states, wait_for
from tests.integration.test_factory_api import env as env  # the fixture

Headers = dict[str, str]


def put(client: TestClient, env: Env, idle: int, max_running: int) -> None:
    body = env.request_body({"local": {"idle": idle, "max_running": max_running}})
    response = client.put("/api/v1/requests/main", json=body, headers=env.auth("fe1", "frontend"))
    assert response.status_code == 200, response.text


def settle(factory: Any, cycles: int = 5) -> None:
    start = factory.cycles
    wait_for(lambda: factory.cycles >= start + cycles, f"{cycles} cycles")


def test_downtime_stops_submission_and_shows_in_entry_ads(env: Env) -> None:
    app = env.app(env.config(max_pilots=4, max_per_cycle=4))
    factory = app.state.factory
    admin, fe1 = env.auth("root", "admin"), env.auth("fe1", "frontend")
    with TestClient(app) as client:
        # Only admins manage downtimes; bad input is refused with the field named.
        body = {"entry": "local", "reason": "disk replacement"}
        assert client.post("/api/v1/downtimes", json=body, headers=fe1).status_code == 403
        bad = client.post("/api/v1/downtimes", json={"entry": "nope", "reason": "x"}, headers=admin)
        assert bad.status_code == 422 and "nope" in bad.text
        backwards = {"entry": "local", "reason": "x", "start": 200.0, "end": 100.0}
        assert client.post("/api/v1/downtimes", json=backwards, headers=admin).status_code == 422

        added = client.post("/api/v1/downtimes", json=body, headers=admin)
        assert added.status_code == 201, added.text
        downtime_id = added.json()["id"]
        for_fe2 = {"frontend": "fe2", "reason": "fe2 only", "end": time.time() + 3600}
        assert client.post("/api/v1/downtimes", json=for_fe2, headers=admin).status_code == 201

        put(client, env, 2, 2)
        settle(factory)
        assert glideins(client, env) == [], "pilots submitted during a downtime"
        [ad] = client.get("/api/v1/entries", headers=fe1).json()
        assert ad["in_downtime"] is True and ad["downtime"]["reason"] == "disk replacement"
        seen = client.get("/api/v1/downtimes", headers=fe1).json()
        assert [d["reason"] for d in seen] == ["disk replacement"], "fe2's downtime shown to fe1"
        assert len(client.get("/api/v1/downtimes", headers=admin).json()) == 2

        assert client.delete(f"/api/v1/downtimes/{downtime_id}", headers=admin).status_code == 200
        assert client.delete(f"/api/v1/downtimes/{downtime_id}", headers=admin).status_code == 404
        wait_for(lambda: states(client, env) == ["running", "running"], "pilots after downtime")
        [ad] = client.get("/api/v1/entries", headers=fe1).json()
        assert ad["in_downtime"] is False and ad["downtime"] is None


def record(content: str, severity: str = "INFO", kind: str = "startup") -> dict[str, Any]:
    return {
        "time": time.time(),
        "invoker": "agent",
        "pid": 42,
        "severity": severity,
        "type": kind,
        "content": content,
    }


def test_trail_archive_and_search(env: Env) -> None:
    app = env.app(env.config(max_pilots=2, max_per_cycle=2))
    factory = app.state.factory
    with TestClient(app) as client:
        put(client, env, 2, 2)
        wait_for(lambda: states(client, env) == ["running", "running"], "two pilots")
        first, second = sorted(g["glidein_id"] for g in glideins(client, env))
        url = f"/api/v1/glideins/{first}/log"
        pilot = env.auth("pilot", "pilot", fe="fe1", group="main")
        other = env.auth("pilot", "pilot", fe="fe2", group="main")
        frontend = env.auth("fe1", "frontend")
        ok = {
            "records": [
                record("validated"),
                {
                    **record("job 1.0 done", kind="job"),
                    "attachments": [
                        {"name": "env.txt", "base64": base64.b64encode(b"A=1").decode()}
                    ],
                },
            ],
            "final": False,
        }
        assert client.post(url, json=ok, headers=other).status_code == 403
        assert client.post(url, json=ok, headers=frontend).status_code == 403
        assert client.post("/api/v1/glideins/nope/log", json=ok, headers=pilot).status_code == 404
        wrong = {"records": [record("x", severity="LOUD")]}
        response = client.post(url, json=wrong, headers=pilot)
        assert response.status_code == 422 and "severity" in response.text
        huge = {"records": [record("x" * (1024 * 1024))]}
        assert client.post(url, json=huge, headers=pilot).status_code == 413
        response = client.post(url, json=ok, headers=pilot)
        assert response.status_code == 200 and response.json()["stored"] == 2
        final = {"records": [record("bye", kind="exit")], "final": True}
        assert client.post(url, json=final, headers=pilot).status_code == 200

        # Live: not archived yet, the backend's current output is shown.
        # (a process counts as running before its first line is written: wait for it)
        live = wait_for(
            lambda: (
                (got := client.get(f"/api/v1/glideins/{first}/logs", headers=frontend).json())[
                    "stdout"
                ]
                and got
            ),
            "the pilot's first line",
        )
        assert live["archived"] is False and f"pilot {first} started" in live["stdout"]
        assert [r.get("content") for r in live["trail"]] == [
            "validated",
            "job 1.0 done",
            "bye",
            None,
        ]
        assert live["trail"][-1]["final"] is True
        assert live["trail"][1]["attachments"][0]["name"] == "env.txt"
        fe2 = env.auth("fe2", "frontend")
        assert client.get(f"/api/v1/glideins/{first}/logs", headers=fe2).status_code == 403

        report = {"exit_reason": "validation_failed", "exit_code": 1}
        rep_url = f"/api/v1/glideins/{first}/report"
        assert client.post(rep_url, json=report, headers=pilot).status_code == 200
        put(client, env, 0, 0)
        (env.out / "release").touch()
        wait_for(lambda: states(client, env) == ["finished", "finished"], "pilots ended")
        wait_for(
            lambda: all(factory.store.get(g).logs_archived for g in (first, second)),
            "logs archived",
        )
        archived = client.get(f"/api/v1/glideins/{first}/logs", headers=frontend).json()
        assert archived["archived"] is True and f"pilot {first} started" in archived["stdout"]
        directory = env.tmp / "state" / "archive" / "local" / "fe1" / first
        assert (directory / "stdout").is_file() and (directory / "trail.jsonl").is_file()

        def search(**params: Any) -> list[str]:
            found = client.get("/api/v1/glideins", params=params, headers=frontend).json()
            return sorted(g["glidein_id"] for g in found)

        assert search(exit_reason="validation_failed") == [first]
        assert search(entry="local") == [first, second]
        assert search(entry="other") == []
        assert search(since=time.time() + 60) == []
        assert search(until=time.time() + 60, since=time.time() - 600) == [first, second]

        # Retention: past it, a pilot's archive goes (and only then).
        assert factory.archive.purge(time.time()) == 0
        assert factory.archive.purge(time.time() + 31 * 86400) == 2
        assert not directory.exists()
        # ... and their rows once entry health has counted their ends
        wait_for(
            lambda: all(factory.store.get(g).health_counted == "ended" for g in (first, second)),
            "ends counted",
        )
        assert factory.store.purge_ended(time.time() - 60) == 0
        assert factory.store.purge_ended(time.time() + 1, batch=1) == 2
        assert search(entry="local") == []


@pytest.fixture
def cli(env: Env, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The CLI with its HTTP client bound to an in-process factory app."""
    app = env.app(env.config(max_pilots=1, max_per_cycle=1))
    with TestClient(app) as client:
        token_file = env.tmp / "admin.token"
        token_file.write_text(env.token("root", "admin"))

        def bound(base_url: str, timeout: float, headers: Headers, verify: Any) -> TestClient:
            assert base_url == "http://factory.test/api/v1"
            return TestClient(app, base_url=base_url, headers=headers)

        monkeypatch.setattr(factory_client.httpx, "Client", bound)
        runner = CliRunner()

        def run(*args: str) -> Any:
            return runner.invoke(
                cli_app,
                [
                    "factory",
                    *args,
                    "--factory",
                    "http://factory.test",
                    "--token-file",
                    str(token_file),
                ],
            )

        yield run, client, app


def test_cli_downtime_logs_and_search(cli: Any, env: Env) -> None:
    run, client, app = cli
    added = run(
        "downtime", "add", "--entry", "local", "--reason", "kernel update", "--duration", "2h"
    )
    assert added.exit_code == 0, added.output
    assert "downtime 1 added: entry local" in added.output
    listed = run("downtime", "list")
    assert "kernel update" in listed.output and "local" in listed.output
    bad = run("downtime", "add", "--entry", "nope", "--reason", "x")
    assert bad.exit_code == 2 and "no entry named 'nope'" in bad.output
    assert run("downtime", "add", "--reason", "x", "--end", "soon").exit_code != 0
    put(client, env, 1, 1)
    settle(app.state.factory)
    assert glideins(client, env) == []
    assert run("downtime", "rm", "1").exit_code == 0
    assert run("downtime", "rm", "1").exit_code == 2
    wait_for(lambda: states(client, env) == ["running"], "a pilot after the downtime")

    [glidein_id] = [g["glidein_id"] for g in glideins(client, env)]
    pilot = env.auth("pilot", "pilot", fe="fe1", group="main")
    client.post(
        f"/api/v1/glideins/{glidein_id}/log",
        headers=pilot,
        json={"records": [record("node looks fine", kind="validation")]},
    )
    shown = run("logs", glidein_id)
    assert shown.exit_code == 0, shown.output
    assert f"pilot {glidein_id} started" in shown.output
    assert "validation: node looks fine" in shown.output
    as_json = json.loads(run("logs", glidein_id, "--json").output)
    assert as_json["glidein_id"] == glidein_id and as_json["state"] == "running"
    assert run("logs", "nope").exit_code == 2

    found = run("search", "--entry", "local", "--since", "-1h")
    assert glidein_id in found.output
    assert glidein_id not in run("search", "--exit-reason", "corruption").output


def test_cli_without_a_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GLIDEWMS_FACTORY_URL", raising=False)
    result = CliRunner().invoke(cli_app, ["factory", "downtime", "list"])
    assert result.exit_code == 2 and "no factory URL" in result.output
