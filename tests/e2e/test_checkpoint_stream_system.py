"""Self-checkpointing and streaming jobs through real pilots: pool, factory and
frontend as processes on loopback, pilots started by the factory's local
backend (bootstrap, signed stage, agent, job isolation as configured).

A job and the test wait for each other through events, never sleeps: the
test waits (polling with a deadline) for what the pool says or what
`glidewms tail` shows; a job waits for a file the test creates, in a
directory it can read under any isolation mode (not /tmp, which bubblewrap
hides; world-readable, for a job running as another account).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def system_factory(tmp_path: Path) -> Iterator[Callable[..., System]]:
    with systems(tmp_path, claim_lease=10.0) as start:
        yield start


@pytest.fixture
def gate() -> Iterator[Path]:
    """A directory jobs can see, for the files the test creates to let them go on."""
    path = Path(tempfile.mkdtemp(prefix="glidewms-e2e-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def glidewms(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "glidewms", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **env},
    )


def user_env(s: System) -> dict[str, str]:
    return {
        "GLIDEWMS_POOL_URL": s.inst.services["pool"].url,
        "GLIDEWMS_TOKEN_FILE": str(s.inst.token_file("user")),
    }


# Counts in count.txt (its checkpoint): takes a checkpoint (exit 85) at counts 1
# and 2, then ends at 3. A run that started from zero would say "run 1" again.
COUNTER = """#!/bin/sh
n=0
if [ -f count.txt ]; then n=$(cat count.txt); fi
n=$((n + 1))
echo "$n" > count.tmp && mv count.tmp count.txt
echo "run $n on $GLIDEIN_Id"
if [ "$n" -lt 3 ]; then exit 85; fi
echo "counted to $n" > result.txt
"""


def checkpointing(tmp: Path, script: str, *args: str) -> str:
    (tmp / "job.sh").write_text(script)
    (tmp / "job.sh").chmod(0o755)
    return f"""
executable = job.sh
arguments = {" ".join(args)}
output = out.txt
error = err.txt
checkpoint_exit_code = 85
transfer_checkpoint_files = count.txt
transfer_output_files = result.txt
request_memory = 32
queue
"""


def completed(s: System, jid: str) -> dict:
    return wait_for(lambda: (j := s.job(jid))["state"] == "completed" and j, f"{jid} to complete")


def test_a_job_that_checkpoints_twice_resumes_each_time_and_completes(system_factory, tmp_path):
    s = system_factory(max_pilots=1)
    [jid] = s.submit(checkpointing(tmp_path, COUNTER), tmp_path)
    job = completed(s, jid)
    assert job["exit_code"] == 0
    got = {p.name: p.read_text() for p in s.pool.fetch_outputs(jid, tmp_path / "got")}
    assert got["result.txt"] == "counted to 3\n"  # resumed twice: never from zero
    # the job's stdout went with each checkpoint: every run's lines, in order
    runs = [line.split(" on ")[0] for line in got["out.txt"].splitlines()]
    assert runs == ["run 1", "run 2", "run 3"]
    kinds = [e["type"] for e in s.pool.events(jid)]
    assert kinds.count("checkpointed") == 2 and kinds.count("started") == 3
    assert kinds.count("completed") == 1
    long = s.job(jid)["ad_long"]
    assert "NumCkpts = 2" in long and "NumJobCompletions = 1" in long


# Checkpoints at count 1; the next run waits for the gate's "go" (the test
# kills its pilot meanwhile); any run after that goes on at once.
RESUMER = """#!/bin/sh
n=0
if [ -f count.txt ]; then n=$(cat count.txt); fi
n=$((n + 1))
echo "$n" > count.tmp && mv count.tmp count.txt
echo "run $n on $GLIDEIN_Id"
if [ "$n" -eq 1 ]; then exit 85; fi
i=0
while [ ! -f "$1/go" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
echo "counted to $n" > result.txt
"""


def test_a_job_whose_pilot_is_killed_resumes_from_its_checkpoint_elsewhere(
    system_factory, tmp_path, gate
):
    s = system_factory(max_pilots=1, claim_lease=2.0)
    [jid] = s.submit(checkpointing(tmp_path, RESUMER, str(gate)), tmp_path)
    # the checkpoint is taken, and the run after it has started
    again = wait_for(
        lambda: (j := s.job(jid))["state"] == "running" and j["num_starts"] == 2 and j,
        "the run after the checkpoint to start",
    )
    [first] = [p["glidein_id"] for p in s.pilots() if p["pilot_id"] == again["pilot_id"]]
    os.killpg(s.pilot_pid(first), signal.SIGKILL)  # the site kills the pilot, no goodbye
    (gate / "go").touch()  # the orphaned run may end now; a later one goes on at once

    job = completed(s, jid)
    assert job["exit_code"] == 0 and job["pilot_id"] != again["pilot_id"]
    got = {p.name: p.read_text() for p in s.pool.fetch_outputs(jid, tmp_path / "got")}
    assert got["result.txt"] == "counted to 2\n"
    # run 1 (the checkpoint) on the killed pilot, run 2 again on another: the
    # killed run 2 left nothing, and nothing started from zero
    lines = got["out.txt"].splitlines()
    assert [line.split(" on ")[0] for line in lines] == ["run 1", "run 2"]
    assert lines[0].endswith(f" on {first}") and not lines[1].endswith(f" on {first}")
    kinds = [e["type"] for e in s.pool.events(jid)]
    assert kinds.count("checkpointed") == 1 and "evicted" in kinds
    assert kinds.count("completed") == 1


STREAMER = """#!/bin/sh
echo "first line"
echo "a warning" >&2
i=0
while [ ! -f "$1/go" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
echo "second line"
"""


def test_a_streaming_jobs_output_is_read_with_tail_while_it_runs(system_factory, tmp_path, gate):
    s = system_factory(max_pilots=1)
    (tmp_path / "job.sh").write_text(STREAMER)
    (tmp_path / "job.sh").chmod(0o755)
    [jid] = s.submit(
        f"""
executable = job.sh
arguments = {gate}
output = out.txt
error = err.txt
stream_output = true
stream_error = true
request_memory = 32
queue
""",
        tmp_path,
    )
    env = user_env(s)
    seen = wait_for(
        lambda: "first line" in (r := glidewms("tail", jid, cwd=tmp_path, env=env)).stdout and r,
        "tail to show the running job's first line",
    )
    assert seen.stdout == "first line\n" and seen.returncode == 0
    assert s.job(jid)["state"] == "running"  # still waiting for the gate
    err = glidewms("tail", jid, "--stderr", cwd=tmp_path, env=env)
    assert err.stdout == "a warning\n"
    follower = subprocess.Popen(
        [sys.executable, "-m", "glidewms", "tail", "-f", "--interval", "0.2", jid],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, **env},
    )
    try:
        (gate / "go").touch()
        out, errors = follower.communicate(timeout=120)  # it ends when the job does
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, errors
    assert out == "first line\nsecond line\n"
    assert s.job(jid)["state"] == "completed"
    # after completion the streamed text is still there, and the outputs as before
    assert glidewms("tail", jid, cwd=tmp_path, env=env).stdout == "first line\nsecond line\n"
    got = {p.name: p.read_text() for p in s.pool.fetch_outputs(jid, tmp_path / "got")}
    assert got["out.txt"] == "first line\nsecond line\n" and got["err.txt"] == "a warning\n"
