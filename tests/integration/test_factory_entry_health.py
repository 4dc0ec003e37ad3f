"""Entry health from pilots, with the real factory app and its local backend.

The factory is served on a loopback port (a thread) and starts pilots as real
processes through its `local` backend. The pilot is a STAND-IN for
glidein_startup.sh that speaks only the pilot's side of the factory protocol
(curl, the pilot token): on a broken site it posts a failed validation record
and the `validation_failed` report the real bootstrap/agent send (exit 4); on
a working one it posts the `registered` trail record the real agent sends once
registered, then waits to be released and reports `idle_timeout`. Whether a
site is broken is a file the test writes (`mode.<entry>`).

The loop's cycle is an hour: cycles run only when the test nudges one and
waits for it to end (or a request is PUT), so submissions are counted per
cycle exactly. The probe interval is met by moving the factory's health clock.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from glidewms.cli.main import app as cli
from glidewms.config.factory import EntryConfig, FactoryConfig
from glidewms.factory.api import create_app
from glidewms.security.tokens import TokenIssuer, generate_keypair
from tests import harness
from tests.integration.factory_harness import FactoryFiles, stand_in
from tests.integration.test_factory_pilot_start import Served

wait_for = partial(harness.wait_for, timeout=60.0, interval=0.05)
POOL_URL = "http://127.0.0.1:9"
N = 5  # pause_after_pilot_failures
PROBE = 1000.0  # probe_interval

STAND_IN = r"""#!/bin/bash
# Stand-in for glidein_startup.sh: the pilot's side of the factory protocol only
out=@OUT@
factory="" gid="" entry=""
while [ $# -gt 0 ]; do
  case "$1" in
    --factory) factory=$2; shift 2 ;;
    --glidein-id) gid=$2; shift 2 ;;
    --entry) entry=$2; shift 2 ;;
    *) shift ;;
  esac
done
token=$(cat "$GLIDEIN_TOKEN_FILE")
post() {  # post PATH JSON
  curl -fsS -X POST -H "Authorization: Bearer $token" -H "Content-Type: application/json" \
    --data "$2" "$factory/api/v1/glideins/$gid/$1" > /dev/null
}
record() {  # record SEVERITY TYPE CONTENT
  printf '{"records": [{"time": %s, "invoker": "stand-in", "pid": %d, "severity": "%s", '\
'"type": "%s", "content": "%s"}], "final": false}' "$(date +%s)" $$ "$1" "$2" "$3"
}
if [ "$(cat "$out/mode.$entry")" = fail ]; then
  post log "$(record ERROR validation 'factory/os_arch: failed WN_Resource: need NoSuchOS1')"
  post report '{"exit_reason": "validation_failed", "exit_code": 4, "jobs_run": 0,
    "detail": "factory/os_arch: WN_Resource: need NoSuchOS1", "validation": [
    {"name": "os_arch", "stage": "factory", "status": "failed", "category": "WN_Resource"}]}'
  exit 4
fi
post log "$(record INFO registered "pilot $gid")"
while [ ! -e "$out/release" ]; do sleep 0.05; done
post report '{"exit_reason": "idle_timeout", "exit_code": 0, "jobs_run": 0}'
exit 0
"""


@pytest.fixture
def out(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "out"
    directory.mkdir()
    yield directory
    (directory / "release").touch()  # working pilots end with the test


def entry(name: str) -> EntryConfig:
    return EntryConfig(
        name=name,
        site=name.upper(),
        max_pilots=50,
        max_idle=50,
        max_per_cycle=8,
        recovery={"pause_after_pilot_failures": N, "probe_interval": PROBE},
    )


def test_an_entry_whose_pilots_fail_validation_is_paused_probed_and_resumed(
    tmp_path: Path, out: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is required (the stand-in pilot posts with it)")
    caplog.set_level(logging.INFO, logger="glidewms.factory")
    private, public = generate_keypair(tmp_path / "keys")
    issuer = TokenIssuer.from_file(private)
    bootstrap = tmp_path / "glidein_startup.sh"
    bootstrap.write_text(STAND_IN.replace("@OUT@", str(out)))
    bootstrap.chmod(0o755)
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "__main__.py").write_text("print('agent')\n")
    (out / "mode.broken").write_text("fail")
    (out / "mode.good").write_text("ok")
    config = FactoryConfig(
        state_dir=tmp_path / "state",
        issuer_public_key=public,
        cycle_seconds=3600,  # cycles only when nudged (or a PUT)
        entries=[entry("broken"), entry("good")],
    )
    fe1 = {"Authorization": f"Bearer {issuer.issue('fe1', ['frontend'], 600)}"}
    admin = {"Authorization": f"Bearer {issuer.issue('admin', ['admin'], 600)}"}
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(issuer.issue("admin", ["admin"], 600) + "\n")

    def body(broken: int, good: int) -> dict[str, Any]:
        return {
            "pool_url": POOL_URL,
            "pilot_token": issuer.issue("pilot", ["pilot"], 600, fe="fe1", group="main"),
            "entries": {
                "broken": {"idle": broken, "max_running": 50},
                "good": {"idle": good, "max_running": good},
            },
        }

    make = partial(create_app, config, bootstrap=bootstrap, agent_dir=agent, kill_grace=2.0)
    with Served(lambda url: make(url)) as served:  # runs the loop (client: plain HTTP)
        factory = served.app.state.factory
        store = factory.store

        def step() -> None:
            """One whole cycle of the loop."""
            before = factory.cycles
            factory.nudge()
            wait_for(lambda: factory.cycles > before, "a cycle")

        def put(broken: int, good: int) -> None:
            before = factory.cycles
            r = client.put("/api/v1/requests/main", json=body(broken, good), headers=fe1)
            assert r.status_code == 200, r.text
            wait_for(lambda: factory.cycles > before, "the cycle the PUT wakes")

        def submitted(name: str = "broken") -> int:
            return len(store.glideins(entry=name))

        def reported(n: int) -> list[Any]:
            found = [g for g in store.glideins(entry="broken") if g.report is not None]
            return found if len(found) >= n else []

        def ad(name: str) -> dict[str, Any]:
            [found] = [
                e for e in client.get("/api/v1/entries", headers=fe1).json() if e["name"] == name
            ]
            return found

        with httpx.Client(base_url=served.url, timeout=30) as client:
            wait_for(lambda: factory.cycles >= 1, "the first cycle")
            put(1, 2)  # one pilot to the broken entry, two to the good one
            assert submitted() == 1 and submitted("good") == 2
            wait_for(lambda: reported(1), "the first validation failure")
            put(8, 2)  # the frontend wants 8 more; a streak of 1 halves max_per_cycle
            assert submitted() == 1 + 4
            assert ad("broken")["pilot_failures"] == 1 and ad("broken")["paused"] is None
            wait_for(lambda: reported(5), "the next four failures")
            step()
            paused = ad("broken")["paused"]
            assert paused is not None and paused["by"] == "pilots"
            assert paused["reason"] == (
                f"{N} pilots failed (streak); last: validation failed: "
                "factory/os_arch: WN_Resource: need NoSuchOS1"
            )
            assert submitted() == N, "paused after N failures, nothing more sent"
            assert "failed validation at factory/os_arch (WN_Resource)" in caplog.text
            assert f"entry broken paused: {N} pilots failed" in caplog.text
            metrics = client.get("/metrics", headers=admin).text
            assert 'glidewms_factory_entry_paused{entry="broken"} 1.0' in metrics
            assert f'glidewms_factory_entry_pilot_failures{{entry="broken"}} {float(N)}' in metrics
            assert 'glidewms_factory_entry_pilot_failures{entry="good"} 0.0' in metrics

            # Paused: however many cycles pass, nothing is submitted.
            for _ in range(5):
                step()
            assert submitted() == N
            stats = client.get("/api/v1/stats", headers=fe1).json()["rows"]
            [row] = [r for r in stats if r["entry"] == "broken"]
            assert row["paused"]["reason"] == paused["reason"] and row["pilot_failures"] == N
            assert row["failures"] == {"validation_failed": N}

            # The probe interval passes: one probe, and only one while it is out.
            factory.clock = lambda: time.time() + PROBE
            step()
            assert submitted() == N + 1
            probe = ad("broken")["paused"]["probe"]
            assert probe is not None
            wait_for(lambda: reported(N + 1), "the probe to fail")
            step()
            after = ad("broken")["paused"]
            assert after["probe"] is None and after["probes_failed"] == 1
            assert after["retry_at"] > time.time() + PROBE + 1.5 * PROBE  # doubled
            assert f"probe pilot {probe} failed; next probe in 2000s" in caplog.text
            factory.clock = lambda: time.time() + 2 * PROBE
            step()
            assert submitted() == N + 1, "the doubled interval has not passed"

            # The site is fixed; the next probe validates, registers and resumes it.
            (out / "mode.broken").write_text("ok")
            factory.clock = lambda: time.time() + 4 * PROBE
            step()
            assert submitted() == N + 2
            second = ad("broken")["paused"]["probe"]
            wait_for(lambda: (g := store.get(second)) and g.registered_at, "the probe to register")
            step()
            assert ad("broken")["paused"] is None, "resumed by the probe"
            assert f"entry broken resumed: pilot {second} validated and registered" in caplog.text
            assert submitted() == N + 3, "on probation: one pilot per cycle"

            # An operator pauses it and resumes it (CLI; a frontend may not).
            r = client.post("/api/v1/entries/broken/pause", json={"reason": "x"}, headers=fe1)
            assert r.status_code == 403
            paused_by_hand = CliRunner().invoke(
                cli,
                [
                    "factory",
                    "entry",
                    "pause",
                    "broken",
                    "--reason",
                    "site upgrade",
                    "--factory",
                    served.url,
                    "--token-file",
                    str(admin_file),
                ],
            )
            assert paused_by_hand.exit_code == 0, paused_by_hand.output
            assert ad("broken")["paused"]["by"] == "operator"
            assert "entry broken paused by admin: site upgrade" in caplog.text
            for _ in range(3):
                step()
            assert submitted() == N + 3
            shown = CliRunner().invoke(
                cli,
                [
                    "factory",
                    "entry",
                    "list",
                    "--factory",
                    served.url,
                    "--token-file",
                    str(admin_file),
                ],
                env={"COLUMNS": "400"},
            )
            assert shown.exit_code == 0, shown.output
            assert "PAUSED by operator" in shown.output and "site upgrade" in shown.output
            resumed = CliRunner().invoke(
                cli,
                [
                    "factory",
                    "entry",
                    "resume",
                    "broken",
                    "--factory",
                    served.url,
                    "--token-file",
                    str(admin_file),
                ],
            )
            assert resumed.exit_code == 0 and "entry broken resumed" in resumed.output
            assert "entry broken resumed by admin" in caplog.text
            step()
            assert submitted() > N + 3, "submitting again after the resume"
            assert ad("broken")["pilot_failures"] == 0

            # The entry whose pilots work was never paused, nor backed off.
            good = ad("good")
            assert good["paused"] is None and good["pilot_failures"] == 0
            assert submitted("good") == 2
            (out / "release").touch()
            wait_for(
                lambda: (
                    sum(g.exit_reason == "idle_timeout" for g in store.glideins(entry="good")) == 2
                ),
                "the good pilots to retire",
            )
            step()
            assert ad("good")["paused"] is None and ad("good")["pilot_failures"] == 0


def test_a_pause_survives_a_restart_and_the_restart_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="glidewms.factory")
    files = FactoryFiles.create(tmp_path, stand_in("", ""), tmp_path)
    config = files.config(entry("broken"), cycle_seconds=3600)
    admin = files.headers("admin", ["admin"])
    with TestClient(files.app(config)) as client:
        r = client.post("/api/v1/entries/broken/pause", json={"reason": "  "}, headers=admin)
        assert r.status_code == 422
        r = client.post("/api/v1/entries/nope/pause", json={"reason": "x"}, headers=admin)
        assert r.status_code == 404
        r = client.post(
            "/api/v1/entries/broken/pause", json={"reason": "disk\nfull"}, headers=admin
        )
        assert r.status_code == 200 and r.json()["paused"]["reason"] == "disk full"
    with TestClient(files.app(config)) as client:  # the same database: a restart
        [ad] = client.get("/api/v1/entries", headers=admin).json()
        assert ad["paused"]["by"] == "operator" and ad["paused"]["reason"] == "disk full"
        assert "entry broken is still paused (by operator" in caplog.text
        r = client.post("/api/v1/entries/broken/resume", headers=admin)
        assert r.json() == {"entry": "broken", "resumed": True}
        [ad] = client.get("/api/v1/entries", headers=admin).json()
        assert ad["paused"] is None
