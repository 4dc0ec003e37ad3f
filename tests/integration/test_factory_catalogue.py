"""Entries from a site catalogue, applied to a running `glidewms factory` process.

The catalogue is a small CRIC-style JSON; its HTCondor-CEs are mapped by the
operator's overrides to the real Slurm the tests start (a stand-in for the
sites behind those CEs: the same entries, one local batch system), with
`--begin=now+1hour` so pilots stay queued for as long as the test needs.
The real CLI (`glidewms factory catalogue apply`) writes the entries file,
shows the diff and asks first; the real factory process reloads through
`POST /api/v1/reload` and through SIGHUP. Every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from glidewms.security.tokens import TokenIssuer, generate_keypair
from tests.components.slurm_cluster import SlurmCluster
from tests.components.slurm_cluster import slurm as slurm  # the session fixture
from tests.integration.factory_harness import POOL_URL, wait_for
from tests.integration.test_factory_recovery import start_factory, stop

A, B, C = "SITE_A_ce-a_short", "SITE_B_ce-b_short", "SITE_C_ce-c_short"


def site(name: str, host: str) -> dict[str, Any]:
    return {
        "name": name,
        "tier_level": 2,
        "country_code": "CH",
        "state": "ACTIVE",
        "vos": ["cms"],
        "ces": [
            {
                "name": host,
                "flavour": "HTCONDOR-CE",
                "endpoint": f"{host}:9619",
                "jobmanager": "slurm",
                "state": "ACTIVE",
                "queues": [
                    {
                        "name": "short",
                        "cores": 1,
                        "memory_mb": 100,
                        "walltime_minutes": 60,
                        "os": "el9",
                    }
                ],
            }
        ],
    }


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "glidewms", "factory", "catalogue", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_catalogue_applied_and_reloaded_without_losing_a_pilot(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    private, public = generate_keypair(tmp_path / "keys")
    issuer = TokenIssuer.from_file(private)
    admin_token = tmp_path / "admin.token"
    admin_token.write_text(issuer.issue("ops", ["admin"], 3600))
    admin = {"Authorization": f"Bearer {admin_token.read_text()}"}
    fe1 = {"Authorization": f"Bearer {issuer.issue('fe1', ['frontend'], 3600)}"}
    catalogue, overrides = tmp_path / "cric.json", tmp_path / "overrides.yaml"
    entries, config, url_file = (
        tmp_path / "entries.yaml",
        tmp_path / "factory.yaml",
        tmp_path / "factory.url",
    )
    catalogue.write_text(
        json.dumps(
            {
                "sites": {
                    "SITE_A": site("SITE_A", "ce-a.example.org"),
                    "SITE_B": site("SITE_B", "ce-b.example.org"),
                }
            }
        )
    )
    overrides.write_text(
        yaml.safe_dump(
            {
                "defaults": {"max_pilots": 5, "max_idle": 5, "max_per_cycle": 5, "cpus": 64},
                "flavours": {
                    "HTCONDOR-CE": {
                        "backend": "slurm",
                        "batch": {
                            "queue": "debug",
                            "env": slurm.env,
                            "options": ["--begin=now+1hour"],
                        },
                    }
                },
                "entries": {A: {"attributes": {"OPERATOR_SAYS": "hi"}}},
            }
        )
    )
    made = cli(
        "apply",
        "--yes",
        "--entries",
        str(entries),
        "--catalogue",
        str(catalogue),
        "--overrides",
        str(overrides),
    )
    assert made.returncode == 0, made.stderr
    assert f"added: {A}, {B}" in made.stdout
    written = {e["name"]: e for e in yaml.safe_load(entries.read_text())}
    assert set(written) == {A, B}
    assert written[A]["cpus"] == 1  # the catalogue over the defaults
    assert written[A]["attributes"]["OPERATOR_SAYS"] == "hi"  # the overrides over both
    assert written[A]["attributes"]["GLIDEIN_CE"] == "ce-a.example.org:9619"
    assert written[A]["batch"]["queue"] == "debug"  # the flavour over the catalogue
    config.write_text(
        yaml.safe_dump(
            {
                "listen_port": 0,
                "url_file": str(url_file),
                "state_dir": str(tmp_path / "state"),
                "issuer_public_key": str(public),
                "cycle_seconds": 0.2,
                "entry_files": [str(entries)],
            }
        )
    )

    def request(*names: str) -> None:
        body = {
            "pool_url": POOL_URL,
            "pilot_token": issuer.issue("pilot", ["pilot"], 3600, fe="fe1", group="main"),
            "entries": {n: {"idle": 2, "max_running": 2} for n in names},
        }
        r = httpx.put(f"{url}/api/v1/requests/main", headers=fe1, json=body, timeout=10)
        assert r.status_code == 200, r.text

    def pilots(entry: str) -> list[dict[str, Any]]:
        got = httpx.get(
            f"{url}/api/v1/glideins", params={"entry": entry}, headers=admin, timeout=10
        ).json()
        return sorted(got, key=lambda g: g["glidein_id"])

    def cycles() -> int:
        return int(httpx.get(f"{url}/healthz", timeout=10).json()["cycles"])

    proc = start_factory(config, dict(os.environ), url_file)
    try:
        url = wait_for(
            lambda: url_file.is_file() and url_file.read_text().strip(),
            "the factory URL",
            timeout=60,
        )
        request(A, B)
        wait_for(lambda: [g["state"] for g in pilots(B)] == ["queued"] * 2, "B's pilots")
        wait_for(lambda: [g["state"] for g in pilots(A)] == ["queued"] * 2, "A's pilots")
        b_pilots = [g["glidein_id"] for g in pilots(B)]

        # The catalogue drops SITE_B and gains SITE_C: the diff first; "no" writes nothing.
        catalogue.write_text(
            json.dumps(
                {
                    "sites": {
                        "SITE_A": site("SITE_A", "ce-a.example.org"),
                        "SITE_C": site("SITE_C", "ce-c.example.org"),
                    }
                }
            )
        )
        before = entries.read_text()
        refused = cli(
            "apply",
            "--entries",
            str(entries),
            "--catalogue",
            str(catalogue),
            "--overrides",
            str(overrides),
            stdin="n\n",
        )
        assert refused.returncode == 1
        assert f"added: {C}" in refused.stdout and f"removed: {B}" in refused.stdout
        assert f"-- name: {B}" in refused.stdout  # the unified diff of the YAML
        assert entries.read_text() == before
        applied = cli(
            "apply",
            "--yes",
            "--reload",
            "--entries",
            str(entries),
            "--catalogue",
            str(catalogue),
            "--overrides",
            str(overrides),
            "--factory",
            url,
            "--token-file",
            str(admin_token),
        )
        assert applied.returncode == 0, applied.stderr
        assert f"reloaded: 1 added ({C}); 1 removed ({B}); 0 changed; 1 unchanged" in applied.stdout

        request(A, B, C)
        wait_for(lambda: [g["state"] for g in pilots(C)] == ["queued"] * 2, "C's pilots")
        done = cycles()
        wait_for(lambda: cycles() >= done + 5, "five more cycles")
        assert [g["glidein_id"] for g in pilots(B)] == b_pilots, "nothing new at a removed entry"
        [stored] = httpx.get(f"{url}/api/v1/requests", headers=fe1, timeout=10).json()
        assert stored["errors"] == {B: f"unknown entry {B!r}"}
        names = {
            e["name"] for e in httpx.get(f"{url}/api/v1/entries", headers=admin, timeout=10).json()
        }
        assert names == {A, C}

        # The removed entry's pilots are still watched: when Slurm ends them, the factory sees.
        slurm.run("scancel", "-n", f"glidewms-{B}")
        wait_for(lambda: {g["state"] for g in pilots(B)} == {"removed"}, "B's pilots ended")
        assert [g["state"] for g in pilots(A)] == ["queued"] * 2

        # Stats: per entry and frontend, a frontend sees only its own rows.
        rows = {
            r["entry"]: r
            for r in httpx.get(f"{url}/api/v1/stats", headers=fe1, timeout=10).json()["rows"]
        }
        assert rows[B]["pilots"] == {"removed": 2} and rows[B]["failures"] == {}
        assert rows[A]["pilots"] == {"queued": 2} and rows[A]["submitted"] == 2
        fe2 = {"Authorization": f"Bearer {issuer.issue('fe2', ['frontend'], 600)}"}
        assert httpx.get(f"{url}/api/v1/stats", headers=fe2, timeout=10).json()["rows"] == []
        shown = subprocess.run(
            [
                sys.executable,
                "-m",
                "glidewms",
                "factory",
                "stats",
                "--json",
                "--factory",
                url,
                "--token-file",
                str(admin_token),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        assert {r["entry"] for r in json.loads(shown.stdout)["rows"]} == {A, B, C}
        table = subprocess.run(
            [
                sys.executable,
                "-m",
                "glidewms",
                "factory",
                "stats",
                "--factory",
                url,
                "--token-file",
                str(admin_token),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert table.returncode == 0 and A in table.stdout and "removed 2" in table.stdout

        # SIGHUP: the same reload, from the entries file changed by hand.
        changed = yaml.safe_load(entries.read_text())
        for e in changed:
            e["max_idle"] = 7 if e["name"] == A else e["max_idle"]
        entries.write_text(yaml.safe_dump(changed))
        proc.send_signal(signal.SIGHUP)

        def a_max_idle() -> int:
            ads = httpx.get(f"{url}/api/v1/entries", headers=admin, timeout=10).json()
            return int(next(e for e in ads if e["name"] == A)["limits"]["max_idle"])

        wait_for(lambda: a_max_idle() == 7, "the SIGHUP reload")
        assert proc.poll() is None

        # A configuration that does not load is refused; the running one stays.
        entries.write_text(yaml.safe_dump([{"name": A, "site": "X", "max_pilots": -1}]))
        bad = httpx.post(f"{url}/api/v1/reload", headers=admin, timeout=10)
        assert bad.status_code == 422 and "max_pilots" in bad.text and str(entries) in bad.text
        assert a_max_idle() == 7
        frontend_reload = httpx.post(f"{url}/api/v1/reload", headers=fe1, timeout=10)
        assert frontend_reload.status_code == 403
    finally:
        stop(proc)
        for name in (A, B, C):
            slurm.run("scancel", "-n", f"glidewms-{name}")
