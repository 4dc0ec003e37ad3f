"""Failure handling against the real Slurm (slurmctld + slurmd started by the tests).

- a partition Slurm refuses: the entry backs off, pauses after
  `pause_after_failures` (no submit storm), says why in its ad, and resumes by
  the admin API;
- a pilot held with `scontrol hold`: released (bounded), then removed;
- a pilot queued beyond `max_queued_time`: removed as stale;
- a real `glidewms factory` process SIGKILLed right after `sbatch` returned
  (the test hook GLIDEWMS_FACTORY_TEST_CRASH=after_submit) restarts, finds
  its pilots in Slurm by the mark on their arrays, and submits none twice.

Pilots are kept pending with `--begin=now+1hour` where the test needs them
queued; every wait polls with a deadline.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml
from fastapi.testclient import TestClient

from glidewms.security.tokens import TokenIssuer
from tests.components.slurm_cluster import SlurmCluster
from tests.components.slurm_cluster import slurm as slurm  # the session fixture
from tests.integration.factory_harness import POOL_URL, FactoryFiles, wait_for
from tests.integration.test_factory_slurm import setup as setup  # fixture
from tests.integration.test_factory_slurm import slurm_entry

PENDING = ["--begin=now+1hour"]  # Slurm keeps such a job PENDING (reason BeginTime)


def make_app(setup: dict[str, Any], **entry: Any) -> Any:
    files: FactoryFiles = setup["files"]
    return files.app(files.config(entry["entry"], cycle_seconds=0.1))


def headers(issuer: TokenIssuer, subject: str, scopes: list[str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.issue(subject, scopes, 600)}"}


def request_body(issuer: TokenIssuer, entry: str, idle: int) -> dict[str, Any]:
    return {
        "pool_url": POOL_URL,
        "pilot_token": issuer.issue("pilot", ["pilot"], 600, fe="fe1", group="main"),
        "entries": {entry: {"idle": idle, "max_running": idle, "remove": "NO"}},
    }


def test_failing_entry_pauses_without_a_storm_and_resumes(
    slurm: SlurmCluster, setup: dict[str, Any]
) -> None:
    issuer: TokenIssuer = setup["issuer"]
    entry = slurm_entry(
        slurm,
        batch={"queue": "nosuchpartition", "env": slurm.env},
        recovery={"pause_after_failures": 2, "pause_cooldown": 3600},
    )
    app = make_app(setup, entry=entry)
    factory = app.state.factory
    fe1 = headers(issuer, "fe1", ["frontend"])
    admin = headers(issuer, "admin", ["admin"])

    def ad() -> dict[str, Any]:
        [found] = client.get("/api/v1/entries", headers=fe1).json()
        return found

    def failed_submissions() -> int:
        return sum(g.exit_reason == "submit_failed" for g in factory.store.glideins())

    with TestClient(app) as client:
        r = client.put("/api/v1/requests/main", json=request_body(issuer, "slurm1", 2), headers=fe1)
        assert r.status_code == 200
        paused = wait_for(lambda: ad()["paused"], "the entry to pause")
        assert paused["failures"] == 2
        assert "nosuchpartition" in paused["reason"] or "partition" in paused["reason"].lower()
        assert "sbatch failed" in ad()["last_error"]
        # No storm: many more cycles pass, no more submissions are tried.
        tried = failed_submissions()
        assert tried == 2 * 2, "two tries of two pilots each"
        cycles = factory.cycles
        wait_for(lambda: factory.cycles >= cycles + 10, "ten more cycles")
        assert failed_submissions() == tried
        # Stored: a restarted factory would still be paused.
        assert factory.store.entry_health()["slurm1"]["paused_at"] is not None

        assert client.post("/api/v1/entries/slurm1/resume", headers=fe1).status_code == 403
        assert client.post("/api/v1/entries/nope/resume", headers=admin).status_code == 404
        r = client.post("/api/v1/entries/slurm1/resume", headers=admin)
        assert r.status_code == 200 and r.json() == {"entry": "slurm1", "resumed": True}
        wait_for(lambda: failed_submissions() > tried, "a new try after the resume")
        wait_for(lambda: ad()["paused"], "the entry to pause again")


def test_held_pilot_is_released_then_removed(slurm: SlurmCluster, setup: dict[str, Any]) -> None:
    issuer: TokenIssuer = setup["issuer"]
    entry = slurm_entry(
        slurm,
        name="held1",
        batch={"env": slurm.env, "options": PENDING},
        recovery={"max_releases": 1, "release_backoff": 0},
    )
    app = make_app(setup, entry=entry)
    store = app.state.factory.store
    fe1 = headers(issuer, "fe1", ["frontend"])

    def only() -> Any:
        found = store.glideins()
        return found[-1] if found else None  # the first pilot (newest first)

    with TestClient(app) as client:
        client.put("/api/v1/requests/main", json=request_body(issuer, "held1", 1), headers=fe1)
        g = wait_for(
            lambda: (g := only()) and g.backend_id and g.state.value == "queued" and g,
            "a queued pilot",
        )
        ref = g.backend_id.split("/")[1]
        assert slurm.run("scontrol", "hold", ref).returncode == 0
        wait_for(lambda: only().releases == 1, "the factory to release the held pilot")
        wait_for(
            lambda: "JobHeld" not in slurm.run("squeue", "-h", "-o", "%r", "-j", ref).stdout,
            "Slurm to show it released",
        )
        wait_for(lambda: only().state.value == "queued", "the pilot queued again")
        assert len(store.glideins()) == 1, "a released pilot is not replaced"
        assert slurm.run("scontrol", "hold", ref).returncode == 0
        wait_for(lambda: only().state.value == "removed", "the pilot removed on a second hold")
        assert only().exit_reason == "held" and only().releases == 1
        gone = slurm.run("squeue", "-h", "-t", "all", "-o", "%T", "-j", ref).stdout.strip()
        assert gone in ("", "CANCELLED")
        wait_for(lambda: len(store.glideins()) == 2, "a replacement pilot")


def test_pilot_queued_too_long_is_removed_as_stale(
    slurm: SlurmCluster, setup: dict[str, Any]
) -> None:
    issuer: TokenIssuer = setup["issuer"]
    entry = slurm_entry(
        slurm,
        name="stale1",
        batch={"env": slurm.env, "options": PENDING},
        recovery={"max_queued_time": 1},
    )
    app = make_app(setup, entry=entry)
    store = app.state.factory.store
    fe1 = headers(issuer, "fe1", ["frontend"])
    with TestClient(app) as client:
        client.put("/api/v1/requests/main", json=request_body(issuer, "stale1", 1), headers=fe1)
        first = wait_for(
            lambda: [
                g
                for g in store.glideins()
                if g.exit_reason == "stale_queued" and g.state.value == "removed"
            ],
            "a stale pilot removed",
        )
        ref = first[0].backend_id.split("/")[1]
        state = slurm.run("squeue", "-h", "-t", "all", "-o", "%T", "-j", ref).stdout.strip()
        assert state in ("", "CANCELLED")


# -- restart after SIGKILL -----------------------------------------------------------


def start_factory(config: Path, env: dict[str, str], url_file: Path) -> subprocess.Popen[bytes]:
    url_file.unlink(missing_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "glidewms", "factory", "-c", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(config.parent / "factory.log", "ab"),
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def rows(db: Path) -> list[tuple[str, str | None, str, str | None]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT glidein_id, backend_id, state, exit_reason FROM glideins ORDER BY glidein_id"
        ).fetchall()


def test_sigkill_right_after_sbatch_loses_nothing_and_doubles_nothing(
    slurm: SlurmCluster, setup: dict[str, Any]
) -> None:
    """A real `glidewms factory` process kills itself (test hook) after `sbatch`
    returned and before it stored the job id; the restarted one adopts the jobs."""
    issuer: TokenIssuer = setup["issuer"]
    tmp: Path = setup["tmp"]
    state = tmp / "fstate"
    url_file = tmp / "factory.url"
    entry = slurm_entry(
        slurm, name="crash1", batch={"env": slurm.env, "options": PENDING}, max_per_cycle=10
    )
    config = tmp / "factory.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen_port": 0,
                "url_file": str(url_file),
                "state_dir": str(state),
                "issuer_public_key": str(setup["public"]),
                "cycle_seconds": 0.2,
                "entries": [entry.model_dump(mode="json")],
            }
        )
    )
    env = {**os.environ, "GLIDEWMS_FACTORY_TEST_CRASH": "after_submit"}
    fe1 = headers(issuer, "fe1", ["frontend"])
    db = state / "factory.db"

    def squeue_tasks() -> list[str]:
        out = slurm.run("squeue", "-h", "-r", "-t", "all", "-n", "glidewms-crash1", "-o", "%i")
        return sorted(out.stdout.split())

    proc = start_factory(config, env, url_file)
    try:
        url = wait_for(
            lambda: url_file.is_file() and url_file.read_text().strip(),
            "the factory URL",
            timeout=60,
        )
        r = httpx.put(
            f"{url}/api/v1/requests/main",
            headers=fe1,
            timeout=10,
            json=request_body(issuer, "crash1", 3),
        )
        assert r.status_code == 200
        assert proc.wait(60) == -signal.SIGKILL
        before = rows(db)
        assert len(before) == 3 and all(b is None for _, b, _, _ in before), before
        tasks = squeue_tasks()
        assert len(tasks) == 3 and len({t.split("_")[0] for t in tasks}) == 1, tasks

        proc = start_factory(
            config, {k: v for k, v in env.items() if k != "GLIDEWMS_FACTORY_TEST_CRASH"}, url_file
        )
        url = wait_for(
            lambda: url_file.is_file() and url_file.read_text().strip(),
            "the restarted factory URL",
            timeout=60,
        )
        adopted = wait_for(
            lambda: all(b for _, b, _, _ in rows(db)) and rows(db), "the pilots adopted", timeout=60
        )
        assert sorted(b.split("/")[1] for _, b, _, _ in adopted) == tasks
        assert [s for _, _, s, _ in adopted] == ["queued"] * 3
        cycles = httpx.get(f"{url}/healthz", timeout=10).json()["cycles"]
        wait_for(
            lambda: httpx.get(f"{url}/healthz", timeout=10).json()["cycles"] >= cycles + 5,
            "five more cycles",
        )
        assert len(rows(db)) == 3, "nothing submitted twice"
        assert squeue_tasks() == tasks
    finally:
        stop(proc)
        slurm.run("scancel", "-n", "glidewms-crash1")
