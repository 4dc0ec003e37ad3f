"""The commands HTCondor users expect, against a real pool process and the
real `glidewms` command with stdout a pipe: `status` (-af, -json,
-constraint, -total), `analyze` naming the clause no slot satisfies, `q`
and `history` (-af, -json, -limit, -allusers, the batch view, -hold), and
output that is not wrapped when piped."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from glidewms.security.tokens import TokenIssuer
from tests.integration.test_pool_durability import GLIDEWMS, PoolProcess

BIG = {
    "Cpus": 8,
    "Memory": 16000,
    "Disk": 10**6,
    "GLIDEIN_Site": "SiteBig",
    "GLIDEIN_Entry_Name": "big_entry",
    "GLIDEIN_Proxy_Token": "s3cr3t-value",
}
SMALL = {
    "Cpus": 2,
    "Memory": 1000,
    "Disk": 10**6,
    "GLIDEIN_Site": "SiteSmall-" + "x" * 150,
    "GLIDEIN_Entry_Name": "small_entry",
}


@pytest.fixture
def pool_process(tmp_path: Path) -> Iterator[PoolProcess]:
    (tmp_path / "p").mkdir()
    process = PoolProcess(tmp_path / "p", None)
    values = yaml.safe_load(process.config.read_text())
    values["claim_lease_seconds"] = 3600.0  # the CLI's runs take longer than its 2 s
    process.config.write_text(yaml.safe_dump(values))
    process.start()
    try:
        yield process
    finally:
        process.stop()


def run(env: dict[str, str], *args: str, code: int = 0) -> str:
    done = subprocess.run(
        [GLIDEWMS, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == code, (args, done.stdout, done.stderr)
    return done.stdout + (done.stderr if code else "")


def test_status_analyze_and_listings(tmp_path, pool_process):
    pool = pool_process
    issuer = TokenIssuer.from_file(pool.keys[0])
    envs = {}
    for who, scope in (("alice", "user"), ("bob", "user"), ("root", "admin")):
        token = tmp_path / f"{who}.token"
        token.write_text(issuer.issue(who, [scope]))
        envs[who] = {
            **os.environ,
            "GLIDEWMS_POOL_URL": pool.url,
            "GLIDEWMS_TOKEN_FILE": str(token),
            "GLIDEWMS_USERLOG_STATE": str(tmp_path / f"state-{who}"),
            "COLUMNS": "80",  # a pipe is not a terminal: no width applies anyway
        }
    alice, bob, root = envs["alice"], envs["bob"], envs["root"]
    pilot = {"Authorization": f"Bearer {issuer.issue('pilot', ['pilot'], fe='fe1')}"}
    api = f"{pool.url}/api/v1"
    pilots = {}
    for name, slot in (("big", BIG), ("small", SMALL)):
        r = httpx.post(f"{api}/pilots", json={"slot": slot}, headers=pilot)
        assert r.status_code == 201, r.text
        pilots[name] = r.json()["pilot_id"]

    # status: any user sees the slots, never the credential-named attribute
    ads = json.loads(run(alice, "status", "-json"))
    assert sorted(a["Name"] for a in ads) == sorted(pilots.values())
    assert all("GLIDEIN_Proxy_Token" not in a for a in ads)
    assert "s3cr3t" not in run(alice, "status") + run(alice, "status", "-json")
    lines = run(alice, "status", "-constraint", "TotalCpus >= 4", "-af", "Name", "TotalMemory")
    assert lines.splitlines() == [f"{pilots['big']} 16000"]
    table = run(alice, "status")
    assert SMALL["GLIDEIN_Site"] in table  # 160 characters on one line: not wrapped
    assert "8/8" in table and "2/2" in table
    total = run(alice, "status", "-total")
    assert "Total" in total and "10/10" in total

    work = tmp_path / "work"
    work.mkdir()
    (work / "needs.sub").write_text(
        "executable = /bin/true\nrequest_memory = 4000\n"
        "requirements = TARGET.Memory >= 4000 && TARGET.HasMagic == true\nqueue 2\n"
    )
    (work / "plain.sub").write_text("executable = /bin/true\nrequest_memory = 10\nqueue\n")
    run(alice, "submit", str(work / "needs.sub"))
    run(bob, "submit", str(work / "plain.sub"))
    alice_jobs = json.loads(run(alice, "q", "-json"))
    assert sorted(a["Owner"] for a in alice_jobs) == ["alice", "alice"]
    cluster = alice_jobs[0]["ClusterId"]
    everyone = run(alice, "q", "-allusers", "-af", "Owner", "ClusterId", "ProcId")
    assert sorted(everyone.splitlines()) == sorted(
        [f"alice {cluster} 0", f"alice {cluster} 1", f"bob {cluster + 1} 0"]
    )
    assert run(alice, "q", "-af", "ProcId", "-limit", "1").splitlines() == ["0"]
    assert run(alice, "q", "-af", "NoSuchAttr").splitlines() == ["undefined", "undefined"]
    batch = run(alice, "q")  # a row per cluster
    assert f"ID: {cluster}" in batch and f"{cluster}.0-1" in batch and "bob" not in batch
    assert "2 jobs; 2 idle" in run(alice, "q", "-totals")

    # bob's job starts on the big slot: -run shows it with its pilot; status counts it
    r = httpx.post(f"{api}/pilots/{pilots['big']}/cycle", json={"max_jobs": 1}, headers=pilot)
    assert [c["job_id"] for c in r.json()["claims"]] == [f"{cluster + 1}.0"]
    assert pilots["big"] in run(bob, "q", "-run")
    assert "0 jobs" in run(alice, "q", "-run")
    busy = run(alice, "status", "-af", "Name", "RunningJobs").splitlines()
    assert sorted(busy) == sorted([f"{pilots['big']} 1", f"{pilots['small']} 0"])

    # analyze: the clause no slot satisfies, with counts per clause
    report = run(alice, "analyze", f"{cluster}.0")
    assert "2 slot(s)" in report
    assert "no slot satisfies: TARGET.HasMagic == true" in report
    counts = {
        line.split(None, 1)[1]: int(line.split(None, 1)[0])
        for line in report.splitlines()
        if line.startswith("  ") and line.split(None, 1)[0].isdigit()
    }
    assert counts["TARGET.Memory >= 4000"] == 1
    assert counts["TARGET.HasMagic == true"] == 0
    assert counts["match all of its Requirements"] == 0
    data = json.loads(run(alice, "analyze", f"{cluster}.0", "-json"))
    assert data["slots"] == 2 and data["matching_now"] == 0
    assert "concurrency limit" in data["limits"]
    same = run(alice, "q", "-better-analyze", f"{cluster}.0")
    assert "no slot satisfies: TARGET.HasMagic == true" in same
    # the reverse: which clauses one slot fails
    small = run(alice, "analyze", f"{cluster}.0", "--slot", pilots["small"])
    assert "FAIL  TARGET.Memory >= 4000" in small and "cannot run the job" in small
    # the entries' view needs the factory: said so when it cannot be found
    alone = {**alice, "GLIDEWMS_STATE": str(tmp_path / "none")}
    alone.pop("GLIDEWMS_FACTORY_URL", None)
    assert "no factory URL" in run(alone, "analyze", f"{cluster}.0", "--entries", code=1)
    # another user's job: not theirs to analyze
    assert "not your job" in run(bob, "analyze", f"{cluster}.0", code=1)

    # -hold shows the whole reason on one line, however long, when piped
    reason = "disk quota " + "y" * 300
    run(alice, "hold", f"{cluster}.1", "--reason", reason)
    held = run(alice, "q", "-hold")
    assert any(reason in line for line in held.splitlines())
    assert f"{cluster}.0" not in held

    # history: own jobs by default, -allusers everyone's
    run(alice, "rm", str(cluster))
    run(bob, "rm", str(cluster + 1))
    mine = json.loads(run(alice, "history", "-json"))
    assert {a["Owner"] for a in mine} == {"alice"} and len(mine) == 2
    assert len(json.loads(run(alice, "history", "-json", "-allusers"))) == 3
    assert run(alice, "history", "-af", "Owner", "-allusers", "-limit", "1").splitlines() == [
        "alice"
    ]

    # usage is the admins'
    assert "history_jobs" in run(root, "pool", "usage")
    assert "admins" in run(alice, "pool", "usage", code=1)


def test_version_and_completion():
    from glidewms import __version__

    assert run(dict(os.environ), "--version").strip() == f"glidewms {__version__}"
    script = run({**os.environ, "SHELL": "/bin/bash"}, "--show-completion", "bash")
    assert "_GLIDEWMS_COMPLETE" in script or "complete" in script
