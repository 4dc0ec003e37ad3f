"""The whole system on loopback: pool, factory, frontend as separate processes,
pilots started by the factory's local backend as real processes.

Waits poll a condition with a deadline (the services are other processes, so
there is no in-process event to await); no test asserts on timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def system_factory(tmp_path: Path) -> Iterator[Callable[..., System]]:
    with systems(tmp_path, claim_lease=10.0) as start:
        yield start


JOB = """#!/bin/sh
echo "hello from job $1"
sleep "$2"
echo "square of $1 is $(($1 * $1))" > "square_$1.txt"
"""


def workload(tmp: Path, n: int, seconds: float = 0.2) -> str:
    script = tmp / "job.sh"
    script.write_text(JOB)
    script.chmod(0o755)
    return f"""
executable = job.sh
arguments = $(Process) {seconds}
output = out_$(Process).txt
error = err_$(Process).txt
transfer_output_files = square_$(Process).txt
request_memory = 32
queue {n}
"""


def test_no_pilots_without_demand_then_jobs_run_with_outputs(system_factory, tmp_path):
    s = system_factory(max_pilots=2)
    wait_for(lambda: s.frontend_status()["cycles"] >= 3, "three frontend cycles")
    assert s.factory("glideins") == [], "pilots were requested for an empty queue"

    ids = s.submit(workload(tmp_path, 12), tmp_path)
    wait_for(lambda: all(s.job(j)["state"] == "completed" for j in ids), "all jobs to complete")
    for jid in ids:
        job = s.job(jid)
        assert job["exit_code"] == 0
        n = jid.split(".")[1]
        dest = tmp_path / "outputs" / jid
        files = {p.name: p.read_text() for p in s.pool.fetch_outputs(jid, dest)}
        assert files[f"out_{n}.txt"] == f"hello from job {n}\n"
        assert files[f"square_{n}.txt"] == f"square of {n} is {int(n) ** 2}\n"

    glideins = s.factory("glideins")
    assert 1 <= len(glideins) <= 2
    assert {g["frontend"] for g in glideins} == {"frontend"}
    # once the queue is empty the pilots leave by themselves
    done = wait_for(
        lambda: (
            [g for g in s.factory("glideins") if g["state"] in ("finished", "failed")]
            if all(g["state"] in ("finished", "failed") for g in s.factory("glideins"))
            else None
        ),
        "pilots to leave",
    )
    assert {g["exit_reason"] for g in done} == {"idle_timeout"}
    assert s.pilots() == []


def test_killed_pilot_job_runs_again_elsewhere_exactly_once(system_factory, tmp_path):
    s = system_factory(max_pilots=1, claim_lease=2.0)
    [jid] = s.submit(workload(tmp_path, 1, seconds=4), tmp_path)
    running = wait_for(lambda: (j := s.job(jid))["state"] == "running" and j, "the job to start")
    first_pilot = running["pilot_id"]
    [glidein] = [p["glidein_id"] for p in s.pilots() if p["pilot_id"] == first_pilot]
    os.killpg(s.pilot_pid(glidein), signal.SIGKILL)  # the site kills the pilot, no goodbye

    job = wait_for(
        lambda: (j := s.job(jid))["state"] == "completed" and j,
        "the job to complete on another pilot",
    )
    events = s.pool.events(jid)
    kinds = [e["type"] for e in events]
    assert kinds.count("completed") == 1
    assert kinds.count("started") == 2 and "evicted" in kinds
    assert job["pilot_id"] != first_pilot
    assert job["num_restarts"] == 1
    out = tmp_path / "again"
    names = {p.name for p in s.pool.fetch_outputs(jid, out)}
    assert "square_0.txt" in names


def live_members(pgid: int) -> list[int]:
    """Processes of a process group that are not zombies (a zombie leader waits
    for its parent, the factory, to reap it: it runs nothing)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_stopping_the_installation_drains_its_local_pilots(system_factory, tmp_path):
    # `glidewms up` stopped with Ctrl-C: the pilots it started here must not
    # linger; SIGTERM makes them drain, so the running job goes back to the queue.
    s = system_factory(max_pilots=1)
    [jid] = s.submit(workload(tmp_path, 1, seconds=600), tmp_path)
    running = wait_for(lambda: (j := s.job(jid))["state"] == "running" and j, "the job to start")
    [glidein] = [p["glidein_id"] for p in s.pilots() if p["pilot_id"] == running["pilot_id"]]
    pid = s.pilot_pid(glidein)
    s.inst.services["frontend"].process.terminate()  # no new pilots while this one drains
    s.inst.services["frontend"].process.wait(30)
    assert s.inst.stop_local_pilots() == 1
    assert live_members(pid) == [], "processes of the pilot outlived the stop"
    job = s.job(jid)
    assert job["state"] == "idle", job
    assert "evicted" in [e["type"] for e in s.pool.events(jid)]


def test_tampered_pilot_file_is_refused(system_factory, tmp_path):
    s = system_factory(max_pilots=1)
    stage_file = s.inst.path("factory", "stage", "agent", "agent.py")
    stage_file.write_text(stage_file.read_text() + "\n# tampered after the manifest was made\n")
    [jid] = s.submit(workload(tmp_path, 1), tmp_path)
    wait_for(
        lambda: [
            g
            for g in s.factory("glideins")
            if g["exit_reason"] == "corruption" and g["state"] == "failed"
        ],
        "a pilot refused for corruption and ended",
    )
    assert s.pilots() == [], "a pilot with a tampered file registered in the pool"
    assert s.job(jid)["state"] == "idle"


def test_demo_command_exits_zero_when_all_jobs_succeed(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "glidewms",
            "demo",
            "--jobs",
            "6",
            "--job-seconds",
            "0",
            "--max-pilots",
            "2",
            "--state-dir",
            str(tmp_path / "demo"),
            "--timeout",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 / 6" in result.stdout
    outputs = tmp_path / "demo" / "outputs"
    for n in range(6):
        assert (outputs / f"result_{n}.txt").read_text() == f"result of job {n}: {n * n}\n"


def glidewms(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "glidewms", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **env},
    )


def test_user_commands_through_the_cli(system_factory, tmp_path):
    s = system_factory(max_pilots=1)
    env = {
        "GLIDEWMS_POOL_URL": s.inst.services["pool"].url,
        "GLIDEWMS_TOKEN_FILE": str(s.inst.token_file("user")),
        "COLUMNS": "200",
    }
    (tmp_path / "bad.sub").write_text("executable = /bin/true\nrequest_memory = lots\nqueue\n")
    bad = glidewms("submit", "bad.sub", cwd=tmp_path, env=env)
    assert bad.returncode == 2
    assert "bad.sub:2:" in bad.stderr and "request_memory" in bad.stderr
    assert s.pool.jobs() == [], "a malformed submit file queued something"

    (tmp_path / "job.sub").write_text(workload(tmp_path, 2) + "\n")
    (tmp_path / "hold.sub").write_text(
        "executable = job.sh\narguments = 9 0\nrequirements = TARGET.Cpus > 1000\nqueue\n"
    )
    ok = glidewms("submit", "job.sub", cwd=tmp_path, env=env)
    assert ok.returncode == 0 and "2 job(s) submitted to cluster 1" in ok.stdout
    assert glidewms("submit", "hold.sub", cwd=tmp_path, env=env).returncode == 0
    assert "2.0" in glidewms("q", "--constraint", "ClusterId == 2", cwd=tmp_path, env=env).stdout
    assert "1 job(s) held" in glidewms("hold", "2", cwd=tmp_path, env=env).stdout
    assert s.job("2.0")["state"] == "held"
    assert "1 job(s) released" in glidewms("release", "2.0", cwd=tmp_path, env=env).stdout
    assert "1 job(s) removed" in glidewms("rm", "2", cwd=tmp_path, env=env).stdout
    wait_for(
        lambda: all(s.job(j)["state"] == "completed" for j in ("1.0", "1.1")),
        "cluster 1 to complete",
    )
    hist = glidewms("history", cwd=tmp_path, env=env).stdout
    assert "1.0" in hist and "1.1" in hist and "removed" in hist
    long = glidewms("history", "-l", "1.1", cwd=tmp_path, env=env).stdout
    assert "ExitCode = 0" in long and "completed" in long
    fetched = glidewms("fetch", "1.1", "--dest", "got", cwd=tmp_path, env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "got" / "square_1.txt").read_text() == "square of 1 is 1\n"


def test_services_refuse_missing_and_wrong_tokens(system_factory):
    s = system_factory()
    user = {"Authorization": f"Bearer {s.inst.token_file('user').read_text().strip()}"}
    for name, path in (("pool", "demand"), ("factory", "entries"), ("frontend", "status")):
        url = f"{s.inst.services[name].url}/api/v1/{path}"
        assert httpx.get(url).status_code == 401, name
        assert httpx.get(url, headers=user).status_code == 403, name
        assert httpx.get(url, headers=s.admin).status_code == 200, name
        schema = httpx.get(f"{s.inst.services[name].url}/openapi.json").json()
        assert f"/api/v1/{path}" in schema["paths"], name


def test_the_metrics_token_reads_metrics_and_nothing_else(system_factory):
    """`up` mints a read-only token for Prometheus (tokens/metrics.token)."""
    s = system_factory()
    token = s.inst.token_file("metrics")
    assert token.stat().st_mode & 0o077 == 0
    metrics = {"Authorization": f"Bearer {token.read_text().strip()}"}
    for name, path in (("pool", "demand"), ("factory", "entries"), ("frontend", "status")):
        base = s.inst.services[name].url
        scrape = httpx.get(f"{base}/metrics", headers=metrics)
        assert scrape.status_code == 200, name
        assert "glidewms_" in scrape.text, name
        assert httpx.get(f"{base}/api/v1/{path}", headers=metrics).status_code == 403, name
