"""`glidewms submit`, `q` and `rm` of large and late clusters, against a
real pool process with the real command: a bad job anywhere queues nothing,
a plain cluster past the one-body size goes compact and arrives whole, `q`
shows materialised/total, `rm` drops the jobs still to come."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from glidewms.client import ClientSettings, PoolClient
from glidewms.security.tokens import TokenIssuer
from tests.integration.test_pool_durability import GLIDEWMS, PoolProcess


@pytest.fixture
def pool_process(tmp_path: Path) -> Iterator[PoolProcess]:
    (tmp_path / "p").mkdir()
    process = PoolProcess(tmp_path / "p", None)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def run(env: dict[str, str], cwd: Path, *args: str, code: int = 0) -> str:
    done = subprocess.run(
        [GLIDEWMS, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == code, (args, done.stdout, done.stderr)
    return done.stdout + done.stderr


def test_submit_q_rm_of_late_and_large_clusters(tmp_path, pool_process):
    token = tmp_path / "alice.token"
    token.write_text(TokenIssuer.from_file(pool_process.keys[0]).issue("alice", ["user"]))
    env = {
        **os.environ,
        "GLIDEWMS_POOL_URL": pool_process.url,
        "GLIDEWMS_TOKEN_FILE": str(token),
        "GLIDEWMS_USERLOG_STATE": str(tmp_path / "state"),
    }
    client = PoolClient(ClientSettings(pool_process.url, token))
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    # job 3 of a late cluster is bad: nothing is queued, the cluster never shows
    (tmp_path / "bad.sub").write_text(
        "executable = run.sh\nrequest_memory = $(m)\nmax_idle = 2\n"
        "queue m from (\n10\n20\n30\nlots\n40\n)\n"
    )
    out = run(env, tmp_path, "submit", "bad.sub", code=2)
    assert "request_memory" in out and "nothing was queued" in out
    assert client.jobs() == [] and client.late_clusters() == []
    # a plain cluster too large for one body: sent compact, materialised whole
    (tmp_path / "big.sub").write_text(
        "executable = run.sh\narguments = $(Process)\nrequirements = TARGET.Cpus > 1000\n"
        "queue 12000\n"
    )
    out = run(env, tmp_path, "submit", "big.sub")
    assert "12000 job(s) submitted to cluster 2" in out
    big = {}
    for _ in range(600):  # the rest materialise in the upkeep passes
        big = {j["job_id"]: j for j in client.jobs("ClusterId == 2")}
        if len(big) == 12000:
            break
        subprocess.run(["sleep", "0.2"], check=True)
    assert len(big) == 12000 and big["2.11999"]["args"] == ["11999"]
    # a late cluster: q shows materialised / total; rm CLUSTER drops the rest
    (tmp_path / "late.sub").write_text(
        "executable = run.sh\nrequirements = TARGET.Cpus > 1000\nmax_materialize = 3\nqueue 50\n"
    )
    assert "50 job(s) submitted to cluster 3 (3 in the queue now" in run(
        env, tmp_path, "submit", "late.sub"
    )
    q = run(env, tmp_path, "q", "3")
    assert "3/50" in q
    out = run(env, tmp_path, "rm", "3")
    assert "3 job(s) removed" in out and "47 job(s) not yet materialised will not be" in out
    assert client.jobs("ClusterId == 3") == []
    assert [c["cluster_id"] for c in client.late_clusters()] == [2]  # the big one, whole
    assert "12000/12000" in run(env, tmp_path, "q")
