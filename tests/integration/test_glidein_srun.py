"""Several pilots from one batch job, launched with srun inside a REAL Slurm allocation.

The cluster is tests/components/slurm_cluster.py (slurmctld + slurmd on
localhost, a session fixture). The batch job runs the real bootstrap with
``--multi 2``; srun starts one task per pilot, each unpacking its own copy of
the stage from srun's stdin. The pool is `FakePool` (the protocol stand-in of
tests/unit/test_glidein_agent.py) so that the test sees every registration.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import glidewms.glidein.agent as agent_pkg
from tests.components.slurm_cluster import SlurmCluster
from tests.components.slurm_cluster import slurm as slurm  # the session fixture
from tests.unit.test_glidein_agent import TOKEN, FakePool

GLIDEIN = Path(agent_pkg.__file__).parents[1]
SCRIPT = GLIDEIN / "bootstrap" / "glidein_startup.sh"
COMPONENTS = Path(__file__).parents[1] / "components"
WAIT = 120


def batch_job(root: Path, pool: FakePool, *extra: str, path_prefix: str = "") -> Path:
    """A batch script running the bootstrap by hand (``--no-factory``) with --multi."""
    token = root / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    scratch = root / "scratch"
    scratch.mkdir()
    script = root / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        f'echo "$SLURM_CPUS_ON_NODE" > {root}/allocated\n'
        f"export PATH={path_prefix}{os.environ['PATH']} GLIDEIN_PYTHON={sys.executable} "
        f"GLIDEIN_TOKEN_FILE={token}\n"
        f"exec bash {SCRIPT} --no-factory --pool {pool.url} --stage-dir {GLIDEIN} "
        f"--work-dir {scratch} --site SRUN_SITE --idle-timeout 3 --memory 1000 "
        + " ".join(extra)
        + "\n"
    )
    script.chmod(0o755)
    return script


def run_job(slurm: SlurmCluster, root: Path, script: Path, tasks: int) -> str:
    out = root / "out"
    done = slurm.run(
        "sbatch", "--wait", f"--ntasks={tasks}", "-o", str(out), str(script), timeout=WAIT
    )
    log = out.read_text(errors="replace") if out.exists() else ""
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{log}"
    return log


def test_multi_pilots_start_with_srun_and_share_the_allocation(
    slurm: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two srun tasks in a 2-task allocation: two pilots with distinct indices whose
    cpus add up to what Slurm allocated, and whose work dirs are all removed."""
    root = tmp_path_factory.mktemp("srun")
    root.chmod(0o755)
    with FakePool() as pool:
        log = run_job(slurm, root, batch_job(root, pool, "--multi", "2"), tasks=2)
    assert "starting 2 agents with srun" in log, log
    slots = [r["slot"] for r in pool.registered]
    assert sorted(s["GLIDEIN_Multi_Index"] for s in slots) == [0, 1], log
    assert {s["GLIDEIN_Multi_Count"] for s in slots} == {2}
    assert sorted(r["glidein_id"][-2:] for r in pool.registered) == ["-0", "-1"]
    allocated = int((root / "allocated").read_text())
    assert sum(s["Cpus"] for s in slots) == allocated == 2
    assert sorted(s["Memory"] for s in slots) == [500, 500]
    assert len(pool.deregistered) == 2  # both left on their idle timeout
    assert list((root / "scratch").iterdir()) == []


def test_multi_pilots_under_srun_split_the_gpus(
    slurm: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The nvidia-smi STAND-IN (no GPU here) shows four GPUs: each srun task's pilot
    offers its own two, none twice; CUDA_VISIBLE_DEVICES (its jobs' value, also
    published as a slot attribute here) names them."""
    root = tmp_path_factory.mktemp("srun_gpu")
    root.chmod(0o755)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").symlink_to(COMPONENTS / "gpu_nvidia_smi_standin.sh")
    with FakePool() as pool:
        publish = "GLIDEIN_Publish_Slot=CUDA_VISIBLE_DEVICES,GLIDEIN_GPUs_Node"
        script = batch_job(root, pool, "--multi", "2", "--set", publish, path_prefix=f"{bin_dir}:")
        text = script.read_text().replace("export PATH", "export GPU_STANDIN_COUNT=4 PATH")
        script.write_text(text)
        log = run_job(slurm, root, script, tasks=2)
    slots = sorted((r["slot"] for r in pool.registered), key=lambda s: s["GLIDEIN_Multi_Index"])
    assert [s["GPUs"] for s in slots] == [2, 2], log
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0,1", "2,3"]
    assert {s["GLIDEIN_GPUs_Node"] for s in slots} == {4}
