"""Drains through the whole system: the operator's `glidewms pool drain` and
`undrain` against the real pool, and real pilots (the factory's local backend,
the unmodified bootstrap and agent) that hear it in their heartbeats.

This replaces the agent unit test that drained a pilot from a stand-in pool:
here the pool sets the drain, the pilot follows it, and the jobs show it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from glidewms.cli.main import app
from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def system(tmp_path: Path) -> Iterator[Callable[..., System]]:
    with systems(tmp_path, http_timeout=30, claim_lease=60.0) as start:
        yield start


ENTRY = {
    "name": "local",
    "site": "LOCAL",
    "backend": "local",
    "cpus": 1,
    "memory": "auto",
    "disk": "auto",
    "walltime": 3600,
    "max_pilots": 1,
    "max_idle": 1,
    "max_per_cycle": 1,
}

JOB = """#!/bin/sh
i=0
while [ $i -lt "$1" ]; do sleep 0.1; i=$((i + 1)); done
echo done > result.txt
"""
# Long enough for the test to drain the pilot while the job runs (the job cannot
# see a file of the test's: its pilot may isolate it), short enough to wait for.
TICKS = 80


def submit(s: System, tmp: Path, ticks: int = TICKS) -> str:
    """A job that runs `ticks` tenths of a second."""
    script = tmp / "job.sh"
    script.write_text(JOB)
    script.chmod(0o755)
    [jid] = s.submit(
        f"executable = job.sh\narguments = {ticks}\n"
        "transfer_output_files = result.txt\nrequest_memory = 32\nqueue\n",
        tmp,
    )
    return jid


def cli(s: System, *args: str) -> str:
    result = CliRunner().invoke(
        app,
        [
            *args,
            "--pool",
            s.inst.services["pool"].url,
            "--token-file",
            str(s.inst.token_file("admin")),
        ],
    )
    assert result.exit_code == 0, result.output
    return result.output


def pilot_of(s: System, pilot_id: str) -> dict[str, Any]:
    return next(p for p in s.get("pool", "pilots") if p["pilot_id"] == pilot_id)


def test_gentle_entry_drain_finishes_the_job_stops_the_pilot_and_holds_until_undrained(
    system: Callable[..., System], tmp_path: Path
) -> None:
    s = system(entries=[ENTRY])
    jid = submit(s, tmp_path)
    running = wait_for(lambda: (j := s.job(jid))["state"] == "running" and j, "the job to run")
    first = running["pilot_id"]
    [glidein] = [p["glidein_id"] for p in s.pilots() if p["pilot_id"] == first]

    said = cli(s, "pool", "drain", "--entry", "local", "--reason", "maintenance")
    assert "1 pilot(s) draining, 0 job(s) vacated" in said
    assert pilot_of(s, first)["state"] == "draining"
    assert "maintenance" in cli(s, "pool", "drains")
    # a job queued now is not taken by the draining pilot, nor by any later one
    second = submit(s, tmp_path, ticks=1)
    # the first job ends normally on its pilot
    job = wait_for(lambda: (j := s.job(jid))["state"] == "completed" and j, "the job to finish")
    assert job["pilot_id"] == first and job["exit_code"] == 0 and job["num_restarts"] == 0
    gone = wait_for(
        lambda: (g := s.glidein(glidein))["exit_reason"] and g, "the drained pilot's report"
    )
    assert gone["exit_code"] == 0 and "drain requested by the pool" in gone["report"]["detail"]
    assert gone["report"]["jobs_run"] == 1
    # pilots the factory sends to the drained entry meanwhile are drained at once
    later = wait_for(
        lambda: [p for p in s.pilots() if p["pilot_id"] != first], "a pilot to register later"
    )
    assert all(p["state"] == "draining" for p in later)
    assert s.job(second)["state"] == "idle"

    assert "undrained" in cli(s, "pool", "undrain", "--entry", "local")
    done = wait_for(
        lambda: (j := s.job(second))["state"] == "completed" and j, "the second job after undrain"
    )
    assert done["exit_code"] == 0
    assert "no drains" in cli(s, "pool", "drains")


def test_hard_pilot_drain_vacates_the_job_which_completes_on_another_pilot(
    system: Callable[..., System], tmp_path: Path
) -> None:
    s = system(entries=[ENTRY])
    jid = submit(s, tmp_path)
    running = wait_for(lambda: (j := s.job(jid))["state"] == "running" and j, "the job to run")
    first = running["pilot_id"]
    [glidein] = [p["glidein_id"] for p in s.pilots() if p["pilot_id"] == first]

    said = cli(s, "pool", "drain", "--pilot", first, "--hard")
    assert "1 pilot(s) draining, 1 job(s) vacated" in said
    # the pilot hears it, kills the job and leaves; the factory's next pilot runs it
    gone = wait_for(
        lambda: (g := s.glidein(glidein))["exit_reason"] and g, "the drained pilot's report"
    )
    assert "drain requested by the pool" in gone["report"]["detail"]
    rerun = wait_for(
        lambda: (j := s.job(jid))["state"] == "running" and j["pilot_id"] != first and j,
        "the job to run on another pilot",
    )
    job = wait_for(lambda: (j := s.job(jid))["state"] == "completed" and j, "the job to finish")
    assert job["pilot_id"] == rerun["pilot_id"] and job["exit_code"] == 0
    assert job["num_restarts"] == 0  # an operator's drain is nobody's failure
    kinds = [e["type"] for e in s.pool.events(jid)]
    assert kinds.count("started") == 2 and kinds.count("completed") == 1
    [evicted] = [e for e in s.pool.events(jid) if e["type"] == "evicted"]
    assert f"hard drain of pilot {first}" in str(evicted)


def test_an_undrain_reaches_a_busy_pilot_which_then_takes_the_next_job(
    system: Callable[..., System], tmp_path: Path
) -> None:
    # max_pilots 1: while the first pilot lives, only it can run the second job
    s = system(entries=[ENTRY])
    jid = submit(s, tmp_path)
    running = wait_for(lambda: (j := s.job(jid))["state"] == "running" and j, "the job to run")
    first = running["pilot_id"]
    cli(s, "pool", "drain", "--pilot", first)
    second = submit(s, tmp_path, ticks=1)
    # the pilot heard the drain: it says it is retiring in its heartbeats
    wait_for(lambda: pilot_of(s, first)["retiring"], "the pilot to hear the drain")
    assert "1 pilot(s)" in cli(s, "pool", "undrain", "--pilot", first)
    wait_for(lambda: not pilot_of(s, first)["retiring"], "the pilot to hear the undrain")
    done = wait_for(
        lambda: (j := s.job(second))["state"] == "completed" and j, "the second job to complete"
    )
    assert done["pilot_id"] == first  # the undrained pilot took it instead of leaving
    assert s.job(jid)["state"] == "completed"
    # the operator's other lever, through the CLI too: the owner's past usage
    owner = done["owner"]
    said = cli(s, "userprio", "--set-accum", owner, "2.5")
    assert said.startswith(f"{owner}: usage 2.50 core-h"), said
