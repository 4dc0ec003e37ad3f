"""A late-materialising cluster through the whole system: `glidewms submit`
of a `max_materialize = 2` cluster of 6 jobs, real pilots (the factory's
local backend) running them, the pool never holding more than 2 of them in
the queue, `q` showing materialised/total, `wait` and the job event log
seeing every job, outputs fetched."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e

JOB = """#!/bin/sh
sleep 0.3
echo "square of $1 is $(($1 * $1))" > "square_$1.txt"
"""


@pytest.fixture
def system_factory(tmp_path: Path) -> Iterator[Callable[..., System]]:
    with systems(tmp_path, claim_lease=10.0) as start:
        yield start


def glidewms(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "glidewms", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, **env},
    )


def test_a_max_materialize_cluster_runs_through_real_pilots(system_factory, tmp_path):
    s = system_factory(max_pilots=2)
    env = {
        "GLIDEWMS_POOL_URL": s.inst.services["pool"].url,
        "GLIDEWMS_TOKEN_FILE": str(s.inst.token_file("user")),
        "GLIDEWMS_USERLOG_STATE": str(tmp_path / "cli-state"),
        "COLUMNS": "200",
    }
    (tmp_path / "job.sh").write_text(JOB)
    (tmp_path / "job.sh").chmod(0o755)
    log = tmp_path / "events.log"
    (tmp_path / "late.sub").write_text(
        "executable = job.sh\narguments = $(Process)\n"
        "transfer_output_files = square_$(Process).txt\nrequest_memory = 32\n"
        f"log = {log}\nmax_materialize = 2\nqueue 6\n"
    )
    sub = glidewms("submit", "late.sub", cwd=tmp_path, env=env)
    assert sub.returncode == 0, sub.stderr
    assert "6 job(s) submitted to cluster 1 (2 in the queue now" in sub.stdout
    q = glidewms("q", cwd=tmp_path, env=env)
    assert q.returncode == 0, q.stderr
    assert "ID: 1" in q.stdout and "/6" in q.stdout  # materialised / total

    def finished() -> int:
        queued = s.pool.jobs("ClusterId == 1")
        assert len(queued) <= 2, f"more than max_materialize in the queue: {queued}"
        return len(s.pool.jobs("ClusterId == 1", history=True)) == 6

    wait_for(finished, "all 6 jobs to finish", timeout=300, interval=0.2)
    done = s.pool.jobs("ClusterId == 1", history=True)
    assert sorted(j["job_id"] for j in done) == [f"1.{p}" for p in range(6)]
    assert all(j["state"] == "completed" and j["exit_code"] == 0 for j in done)
    waited = glidewms("wait", "1", "--timeout", "60", cwd=tmp_path, env=env)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    events = log.read_text()
    assert sum(line.startswith("000 (") for line in events.splitlines()) == 6  # Submit, per job
    assert sum(line.startswith("005 (") for line in events.splitlines()) == 6  # terminated
    fetched = glidewms("fetch", "1.5", "--dest", "got", cwd=tmp_path, env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "got" / "square_5.txt").read_text() == "square of 5 is 25\n"

    # rm of a whole late cluster: its queued jobs and those still to come
    (tmp_path / "stuck.sub").write_text(
        "executable = job.sh\narguments = $(Process)\nrequirements = TARGET.Cpus > 1000\n"
        "max_materialize = 2\nqueue 10\n"
    )
    assert glidewms("submit", "stuck.sub", cwd=tmp_path, env=env).returncode == 0
    removed = glidewms("rm", "2", cwd=tmp_path, env=env)
    assert removed.returncode == 0, removed.stderr
    assert "2 job(s) removed" in removed.stdout
    assert "8 job(s) not yet materialised will not be" in removed.stdout
    assert s.pool.jobs("ClusterId == 2") == []
    assert s.pool.late_clusters() == []
