"""`log = file`: the CLI writes the job event log from the pool's events,
and HTCondor's own reader (htcondor2.JobEventLog) reads it.

A real pool process and the real `glidewms` command; the pilot's turns are
driven by hand over HTTP, so each step is asserted from the pool's state."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from glidewms.classads import import_htcondor
from glidewms.security.tokens import TokenIssuer
from tests.integration.test_pool_durability import GLIDEWMS, PoolProcess

htcondor2 = import_htcondor()
SLOT = {"Cpus": 8, "Memory": 8000, "Disk": 1000000}


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


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [GLIDEWMS, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def read(path: Path) -> list[tuple[int, int, int, dict]]:
    return [
        (int(e.type), e.cluster, e.proc, dict(e.items()))
        for e in htcondor2.JobEventLog(str(path)).events(0)
    ]


def test_the_job_event_log_follows_the_jobs_and_htcondor_reads_it(tmp_path, pool_process):
    pool = pool_process
    issuer = TokenIssuer.from_file(pool.keys[0])
    token = tmp_path / "alice.token"
    token.write_text(issuer.issue("alice", ["user"]))
    pilot = {"Authorization": f"Bearer {issuer.issue('pilot', ['pilot'], fe='fe1')}"}
    env = {
        **os.environ,
        "GLIDEWMS_POOL_URL": pool.url,
        "GLIDEWMS_TOKEN_FILE": str(token),
        "GLIDEWMS_USERLOG_STATE": str(tmp_path / "state"),
    }
    work = tmp_path / "work"
    work.mkdir()
    (work / "job.sub").write_text(
        "executable = /bin/true\nlog = logs/cluster.log\nrequest_memory = 10\nqueue 2\n"
    )
    (work / "logs").mkdir()
    log = work / "logs" / "cluster.log"
    out = cli(env, "submit", str(work / "job.sub"))
    cluster = int(out.stdout.split("cluster")[1].strip(" .\n"))
    # submit wrote the Submit events at once
    assert [(t, c, p) for t, c, p, _ in read(log)] == [(0, cluster, 0), (0, cluster, 1)]

    api = f"{pool.url}/api/v1"
    r = httpx.post(f"{api}/pilots", json={"slot": SLOT}, headers=pilot)
    pid = r.json()["pilot_id"]
    claims = httpx.post(f"{api}/pilots/{pid}/cycle", json={"max_jobs": 2}, headers=pilot).json()[
        "claims"
    ]
    assert sorted(c["job_id"] for c in claims) == [f"{cluster}.0", f"{cluster}.1"]
    cli(env, "q")
    assert [t for t, *_ in read(log)] == [0, 0, 1, 1]
    log.unlink()  # deleted: written again from the pool's events
    cli(env, "log")
    assert [t for t, *_ in read(log)] == [0, 0, 1, 1]

    # still running: wait gives up at its timeout, with exit code 1
    waited = subprocess.run(
        [GLIDEWMS, "wait", str(cluster), "--timeout", "0.2", "--interval", "0.05"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert waited.returncode == 1 and "still queued" in waited.stderr
    assert [t for t, *_ in read(log)] == [0, 0, 1, 1]

    exit_codes = {f"{cluster}.0": 0, f"{cluster}.1": 3}
    done = [{"claim_id": c["claim_id"], "exit_code": exit_codes[c["job_id"]]} for c in claims]
    r = httpx.post(
        f"{api}/pilots/{pid}/cycle", json={"completions": done, "max_jobs": 0}, headers=pilot
    )
    assert all(r.json()["completed"].values())
    # two runs at once, then one more: each event is written exactly once
    runs = [
        subprocess.Popen([GLIDEWMS, "log"], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for run in runs:
        assert run.wait(timeout=120) == 0
    cli(env, "wait", str(cluster), "--timeout", "60")
    assert "up to date" in cli(env, "log").stdout

    events = read(log)
    kinds = [(t, p) for t, _, p, _ in events]
    assert kinds[:4] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sorted(kinds[4:]) == [(5, 0), (5, 1)]
    assert {c for _, c, _, _ in events} == {cluster}
    returns = {p: e["ReturnValue"] for t, _, p, e in events if t == 5}
    assert returns == {0: 0, 1: 3}
    assert all(e["TerminatedNormally"] for t, _, _, e in events if t == 5)
    # every job done and written: the cluster is forgotten
    assert json.loads((tmp_path / "state" / "userlogs.json").read_text())["clusters"] == {}


def test_a_cluster_s_events_page_by_id_and_are_its_owner_s_only(pool, auth):
    alice, bob, admin = auth("alice"), auth("bob"), auth("root", "admin")
    ad = '[ Cmd = "/bin/true"; RequestCpus = 1; UserLog = "/tmp/x/c$(ClusterId).log" ]'
    plain = '[ Cmd = "/bin/true"; RequestCpus = 1 ]'
    r = pool.post(
        "/api/v1/jobs", json={"jobs": [{"ad": ad}, {"ad": ad}, {"ad": plain}]}, headers=alice
    )
    cluster = r.json()["cluster_id"]
    url = f"/api/v1/clusters/{cluster}/events"
    page = pool.get(url, params={"limit": 2}, headers=alice).json()
    assert [(e["proc_id"], e["type"]) for e in page["events"]] == [
        (0, "submitted"),
        (1, "submitted"),
    ]
    assert page["more"] and not page["done"]
    log = f"/tmp/x/c{cluster}.log"
    assert page["user_logs"] == {"0": log, "1": log}  # the third job has none
    rest = pool.get(url, params={"after": page["events"][-1]["id"]}, headers=alice).json()
    assert [e["proc_id"] for e in rest["events"]] == [2] and rest["user_logs"] == {}
    assert not rest["more"]
    assert pool.get(url, headers=bob).status_code == 403
    assert pool.get(url, headers=admin).status_code == 200
    assert pool.get("/api/v1/clusters/999999/events", headers=alice).status_code == 404
    assert pool.get(url, params={"limit": 0}, headers=alice).status_code == 422
    r = pool.post("/api/v1/jobs/remove", json={"job_ids": [], "constraint": "true"}, headers=alice)
    assert r.status_code == 200, r.text
    done = pool.get(url, params={"after": 2**40}, headers=alice).json()
    assert done["done"] and done["events"] == []
