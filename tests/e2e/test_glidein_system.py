"""Pilot behaviour in the whole system: pool, factory and frontend as processes on
loopback, pilots started by the factory's local backend as real processes (the
bootstrap, the signed stage, the validation scripts and the agent, unmodified).

What the batch system does to a pilot is done the way a batch system does it: a
SIGTERM to the pilot's process group (Slurm's and Grid Engine's end of a job).
Waits poll a condition with a deadline, since every actor is another process.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def system(tmp_path: Path) -> Iterator[Callable[..., System]]:
    with systems(tmp_path, http_timeout=30, claim_lease=60.0) as start:
        yield start


def entry(**extra: Any) -> dict[str, Any]:
    return {
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
        **extra,
    }


JOB = """#!/bin/sh
echo "started on $GLIDEIN_Id" >> log.txt
touch started
i=0
while [ $i -lt "$1" ]; do sleep 0.1; i=$((i + 1)); done
echo "finished on $GLIDEIN_Id" >> log.txt
echo done > result.txt
"""


def one_job(tmp: Path, ticks: int) -> str:
    script = tmp / "job.sh"
    script.write_text(JOB)
    script.chmod(0o755)
    return f"""
executable = job.sh
arguments = {ticks}
output = out.txt
transfer_output_files = result.txt
request_memory = 32
queue
"""


def test_sigterm_mid_job_vacates_requeues_and_the_job_completes_once_elsewhere(
    system: Callable[..., System], tmp_path: Path
) -> None:
    # The claim lease is long (60 s): only the pilot's own drain can requeue the job
    # within the test, which is what the evicted event's reason shows below.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    s = system(entries=[entry(work_dir=str(scratch))])
    [jid] = s.submit(one_job(tmp_path, ticks=60), tmp_path)
    running = wait_for(
        lambda: (j := s.pool.job(jid))["state"] == "running" and j, "the job to start"
    )
    first_pilot = running["pilot_id"]
    [first] = [p["glidein_id"] for p in s.pilots() if p["pilot_id"] == first_pilot]
    pid = s.pilot_pid(first)
    [work] = [p for p in scratch.glob("glidein_*") if f"GLIDEIN_Id {first}\n" in _read_config(p)]
    os.killpg(pid, signal.SIGTERM)  # the batch system ends the pilot's job

    job = wait_for(
        lambda: (j := s.pool.job(jid))["state"] == "completed" and j,
        "the job to complete on another pilot",
    )
    assert job["exit_code"] == 0 and job["pilot_id"] != first_pilot
    events = s.pool.events(jid)
    kinds = [e["type"] for e in events]
    assert kinds.count("completed") == 1 and kinds.count("started") == 2
    [evicted] = [e for e in events if e["type"] == "evicted"]
    assert "pilot left: signal" in str(evicted), evicted
    assert job["num_restarts"] == 1
    names = {p.name for p in s.pool.fetch_outputs(jid, tmp_path / "got")}
    assert "result.txt" in names

    # the killed pilot's last word reached the factory: report and final trail
    gone = wait_for(
        lambda: (g := s.glidein(first))["exit_reason"] and g, "the first pilot's final report"
    )
    assert gone["exit_reason"] == "signal"
    assert gone["exit_code"] == 128 + signal.SIGTERM
    assert gone["report"]["jobs_run"] == 1 and gone["report"]["jobs_failed"] == 0
    assert gone["report"]["goodput_seconds"] == 0 and gone["report"]["badput_seconds"] > 0
    logs = s.get("factory", f"glideins/{first}/logs")
    trail = logs["trail"]
    exits = [r for r in trail if r.get("type") == "exit"]
    assert exits and exits[-1]["content"].startswith("signal: got SIGTERM")
    assert trail[-1].get("final") is True, "the final flush was not marked final"
    jobs = [r for r in trail if r.get("type") == "job"]
    assert any("killed=True" in r["content"] and "completed=False" in r["content"] for r in jobs), (
        jobs
    )
    # the vacated pilot did not leave its work dir behind
    wait_for(lambda: not _alive(pid), "the first pilot's processes to end")
    assert not work.exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _read_config(work: Path) -> str:
    try:
        return (work / "glidein_config").read_text()
    except OSError:
        return ""


def test_failing_validation_never_registers_and_the_factory_knows_why(
    system: Callable[..., System], tmp_path: Path
) -> None:
    # An entry that requires an OS this node does not have: the standard os_arch
    # script fails (WN_Resource) on every pilot, and no pilot may ever join the pool.
    s = system(entries=[entry(attributes={"GLIDEIN_Required_OS": "NoSuchOS1"})])
    [jid] = s.submit(one_job(tmp_path, ticks=1), tmp_path)
    failed = wait_for(
        lambda: [
            g
            for g in s.glideins()
            if g["exit_reason"] == "validation_failed" and g["state"] in ("failed", "finished")
        ],
        "a pilot to fail its validation and end",
    )
    report = failed[0]["report"]
    assert failed[0]["exit_code"] == 4
    assert report["detail"].startswith("factory/os_arch: WN_Resource:")
    [bad] = [v for v in report["validation"] if v["status"] != "ok"]
    assert (bad["name"], bad["stage"], bad["category"]) == ("os_arch", "factory", "WN_Resource")
    assert report["jobs_run"] == 0
    # the pool never saw a pilot (not even one gone since), so nothing was claimed
    with sqlite3.connect(s.inst.path("pool", "pool.sqlite")) as conn:
        assert conn.execute("SELECT count(*) FROM pilots").fetchone() == (0,)
    job = s.pool.job(jid)
    assert job["state"] == "idle" and job.get("pilot_id") in (None, "")
    assert [e["type"] for e in s.pool.events(jid)].count("started") == 0
    trail = s.get("factory", f"glideins/{failed[0]['glidein_id']}/logs")["trail"]
    assert any(
        r.get("type") == "validation"
        and r.get("severity") == "ERROR"
        and "WN_Resource" in r.get("content", "")
        for r in trail
    )


CVMFS_JOB = """#!/bin/sh
sh /cvmfs/sw.example.org/bin/setup.sh > result.txt
"""


def test_a_job_reads_cvmfs_mounted_by_its_pilot_and_the_mount_goes_with_the_pilot(
    system: Callable[..., System], tmp_path: Path
) -> None:
    """CVMFS STAND-IN: the node has no /cvmfs; the entry requires a repository and
    names where its image is (a squashfs image built here by mksquashfs); the pilot
    mounts it with real squashfuse over real FUSE, as cvmfsexec would mount the
    repository, and every job runs in a bubblewrap container that sees it as
    /cvmfs/sw.example.org."""
    need = [t for t in ("mksquashfs", "squashfuse", "bwrap") if shutil.which(t) is None]
    if need or not os.access("/dev/fuse", os.R_OK | os.W_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"required when CI=true: {need or '/dev/fuse'}")
        pytest.skip(f"not available: {need or '/dev/fuse'}")
    tree = tmp_path / "tree" / "bin"
    tree.mkdir(parents=True)
    (tree / "setup.sh").write_text("echo experiment software v7\n")
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(
        [
            "mksquashfs",
            str(tree.parent),
            str(images / "sw.example.org.sqfs"),
            "-noappend",
            "-all-root",
            "-no-progress",
            "-quiet",
        ],
        check=True,
        timeout=60,
        capture_output=True,
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    s = system(
        entries=[
            entry(
                work_dir=str(scratch),
                attributes={
                    "GLIDEIN_CVMFS_Repos": "sw.example.org",
                    "GLIDEIN_CVMFS_Images": str(images),
                    "GLIDEIN_Container_Use": "REQUIRED",
                    # what the entry promises frontends (they match jobs to entries by it)
                    "HAS_CVMFS_sw_example_org": True,
                },
            )
        ]
    )
    (tmp_path / "job.sh").write_text(CVMFS_JOB)
    (tmp_path / "job.sh").chmod(0o755)
    [jid] = s.submit(
        "executable = job.sh\ntransfer_output_files = result.txt\n"
        "request_memory = 32\n"
        "requirements = TARGET.HAS_CVMFS_sw_example_org =?= true\nqueue\n",
        tmp_path,
    )
    job = wait_for(
        lambda: (j := s.pool.job(jid))["state"] == "completed" and j, "the job to complete"
    )
    assert job["exit_code"] == 0
    [got] = [p for p in s.pool.fetch_outputs(jid, tmp_path / "got") if p.name == "result.txt"]
    assert got.read_text() == "experiment software v7\n"
    done = wait_for(
        lambda: [g for g in s.glideins() if g["exit_reason"] == "idle_timeout"],
        "the pilot to leave",
    )
    checks = {v["name"]: v for v in done[0]["report"]["validation"]}
    assert (
        checks["cvmfs"]["status"] == "ok" and "sw.example.org (mount)" in checks["cvmfs"]["detail"]
    )
    wait_for(lambda: not list(scratch.glob("glidein_*")), "the work dir to be removed")
    assert str(scratch) not in Path("/proc/self/mounts").read_text(), "a mount was left"
