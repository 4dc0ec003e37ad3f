"""srun-launched pilots against the REAL Slurm: the site's SIGTERM drains every pilot,
and cvmfsexec mode works in each srun task.

The cluster is tests/components/slurm_cluster.py (slurmctld + slurmd on
localhost). The batch job runs the real bootstrap with ``--multi 2``; srun
starts one task per pilot. The factory and the pool are `StagedPool`: the
protocol stand-in `FakePool` of tests/unit/test_glidein_agent.py that also
serves the stage (agent/ and validation/ of this package, by manifest), so the
pilots run in factory mode and send their final reports. CVMFS is the
squashfuse STAND-IN of tests/integration/test_glidein_cvmfsexec.py.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import pytest

import glidewms.glidein.agent as agent_pkg
from tests.components.slurm_cluster import SlurmCluster
from tests.components.slurm_cluster import slurm as slurm  # the session fixture
from tests.harness import wait_for
from tests.integration.test_glidein_cvmfsexec import (
    BLOCKING_JOB,
    PYTHON,
    REPO,
    SETUP,
    squashfuse_left,
)
from tests.integration.test_glidein_cvmfsexec import images as images  # the fixture
from tests.unit.test_glidein_agent import TOKEN, FakePool, claim_for

GLIDEIN = Path(agent_pkg.__file__).parents[1]
SCRIPT = GLIDEIN / "bootstrap" / "glidein_startup.sh"
WAIT = 120
SLEEPING_JOB = b"""import sys, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
opener.open(urllib.request.Request(sys.argv[1] + "/test/started", data=b"{}"), timeout=10)
time.sleep(600)
"""


def stage_files() -> dict[str, bytes]:
    """The factory's stage as the pilot downloads it: agent/ and validation/."""
    return {
        str(p.relative_to(GLIDEIN)): p.read_bytes()
        for d in ("agent", "validation")
        for p in sorted((GLIDEIN / d).rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


class StagedPool(FakePool):
    """FakePool that also serves the factory's stage (manifest and files)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = stage_files()
        self.manifest = "".join(
            f"{hashlib.sha256(data).hexdigest()}  {path}\n" for path, data in self.stage.items()
        ).encode()

    def handle(self, h: Any, method: str) -> None:
        prefix = "/api/v1/stage/files/"
        body = None
        if h.path == "/api/v1/stage/manifest":
            body = self.manifest
        elif h.path.startswith(prefix):
            body = self.stage.get(h.path[len(prefix) :])
        if body is None:
            return super().handle(h, method)
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
        return None


def batch_script(root: Path, pool: StagedPool, *extra: str) -> Path:
    """The bootstrap in factory mode with --multi 2, as a factory would submit it."""
    token = root / "token"  # on a path every node of the job shares
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    (root / "scratch").mkdir()
    sha = hashlib.sha256(pool.manifest).hexdigest()
    script = root / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"export PATH={os.environ['PATH']} GLIDEIN_PYTHON={PYTHON} GLIDEIN_TOKEN_FILE={token}\n"
        f"exec bash {SCRIPT} --factory {pool.url} --manifest-sha256 {sha} --pool {pool.url} "
        f"--glidein-id g-srun --entry e1 --site SRUN_SITE --work-dir {root / 'scratch'} "
        "--idle-timeout 600 --memory 1000 --multi 2 --set GLIDEIN_Validation_Skip=container "
        + " ".join(extra)
        + "\n"
    )
    script.chmod(0o755)
    return script


def submit(slurm: SlurmCluster, root: Path, script: Path) -> str:
    out = slurm.run("sbatch", "--parsable", "--ntasks=2", "-o", str(root / "out"), str(script))
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def job_log(root: Path) -> str:
    path = root / "out"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_gone(slurm: SlurmCluster, job_id: str, root: Path) -> None:
    wait_for(
        lambda: slurm.run("squeue", "-h", "-j", job_id).stdout.strip() == "",
        f"batch job {job_id} to end\n{job_log(root)}",
        timeout=WAIT,
        interval=0.2,
    )


def sigterm_the_job(slurm: SlurmCluster, job_id: str) -> None:
    """SIGTERM to the batch script only: what ``sbatch --signal=B:TERM@N`` does ahead of
    the walltime, or ``scancel --batch``. (A SIGTERM to srun itself makes srun SIGKILL
    its tasks at once, see srun(1): no pilot can drain then, docs/glidein.md.)"""
    done = slurm.run("scancel", "--batch", "--signal=TERM", job_id)
    assert done.returncode == 0, done.stderr


def test_the_batch_scripts_sigterm_drains_every_srun_pilot_which_reports_and_cleans_up(
    slurm: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("srun_term")
    root.chmod(0o755)
    with StagedPool() as pool:
        for n in (1, 2):
            pool.claims.append(
                claim_for(
                    pool,
                    f"c{n}",
                    {"job.py": SLEEPING_JOB},
                    cmd=sys.executable,
                    args=["job.py", pool.url],
                )
            )
        job_id = submit(slurm, root, batch_script(root, pool))
        try:
            wait_for(
                lambda: len(pool.started_jobs) == 2,
                f"both jobs to run\n{job_log(root)}",
                timeout=WAIT,
            )
            sigterm_the_job(slurm, job_id)
            wait_gone(slurm, job_id, root)
        finally:
            slurm.run("scancel", job_id)
        log = job_log(root)
    assert "starting 2 agents with srun" in log, log
    reports = sorted(pool.reports, key=lambda r: r.get("exit_code", 0))
    assert [r["exit_reason"] for r in reports] == ["signal", "signal"], log
    assert {r["exit_code"] for r in reports} == {143}
    assert len(pool.deregistered) == 2, log  # each pilot drained: its job goes back
    assert pool.completed == {}  # vacated, never completed
    assert list((root / "scratch").iterdir()) == []


def test_srun_pilots_run_in_the_cvmfsexec_namespace(
    slurm: SlurmCluster, tmp_path_factory: pytest.TempPathFactory, images: Path
) -> None:
    """Each srun task probes and starts the cvmfsexec helper: its job reads /cvmfs.
    Then the site's SIGTERM: no squashfuse is left and the work dirs are gone."""
    root = tmp_path_factory.mktemp("srun_cvmfs")
    root.chmod(0o755)
    with StagedPool() as pool:
        for n in (1, 2):
            pool.claims.append(
                claim_for(
                    pool, f"c{n}", {"job.py": BLOCKING_JOB}, cmd=PYTHON, args=["job.py", pool.url]
                )
            )
        script = batch_script(
            root,
            pool,
            "--set",
            "GLIDEIN_CVMFS_Mount=namespace",
            "--set",
            f"GLIDEIN_CVMFS_Repos={REPO}",
            "--set",
            f"GLIDEIN_CVMFS_Images={images}",
        )
        job_id = submit(slurm, root, script)
        try:
            wait_for(
                lambda: len(pool.started_jobs) == 2,
                f"both jobs to run\n{job_log(root)}",
                timeout=WAIT,
            )
            mounts = squashfuse_left(images)
            sigterm_the_job(slurm, job_id)
            wait_gone(slurm, job_id, root)
        finally:
            slurm.run("scancel", job_id)
        log = job_log(root)
    assert [j["setup"] for j in pool.started_jobs] == [SETUP, SETUP], log
    assert {j["env"] for j in pool.started_jobs} == {"/cvmfs"}
    assert len(mounts) == 2, mounts  # one per srun task: each has its own namespace
    slots = [r["slot"] for r in pool.registered]
    assert {s["GLIDEIN_CVMFS_Source"] for s in slots} == {"namespace"}, log
    assert [r["exit_reason"] for r in pool.reports] == ["signal", "signal"], log
    wait_for(lambda: not squashfuse_left(images), "squashfuse to end", timeout=WAIT)
    assert list((root / "scratch").iterdir()) == []
