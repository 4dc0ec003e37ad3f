"""A real single-node Slurm cluster on localhost for tests (slurmctld + slurmd).

Recipe from notes/real-components.md §1: AuthType=auth/none, its own ports,
spool, logs and pid files under a private directory, so it never touches
/etc/slurm or another cluster on the machine. Every client command must see
`SLURM_CONF` (see `SlurmCluster.env`). Started by a session fixture and always
stopped with `scontrol shutdown`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

CONF = """\
ClusterName=glidewmstest
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/none
CredType=cred/none
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MinJobAge={min_job_age}
MaxArraySize=1001
MaxJobCount=20000
KillWait=2
InactiveLimit=0
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class SlurmUnavailable(RuntimeError):
    """Slurm is not installed or cannot run here (the test says whether to skip)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SlurmCluster:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What every Slurm client command needs to find this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def wait_idle(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            out = self.run("sinfo", "-h", "-o", "%T", timeout=10).stdout.split()
            if "idle" in out or "mixed" in out or "allocated" in out:
                return
            if time.monotonic() > deadline:
                logs = (self.root / "slurmctld.log").read_text(errors="replace")[-2000:]
                raise SlurmUnavailable(f"slurm node not idle after {timeout}s: {out}\n{logs}")
            time.sleep(0.1)

    def shutdown(self, timeout: float = 30) -> None:
        """Cancel every job, wait for the node to drain, stop both daemons, and
        kill whatever of this cluster is left (a slurmstepd outlives slurmd when
        its job is still running at shutdown)."""
        deadline = time.monotonic() + timeout
        self.run("scancel", "--user=root", timeout=15)
        self.run("scancel", "--user=wmsuser", timeout=15)  # the SSH tests' remote account
        while time.monotonic() < deadline:
            busy = self.run(
                "squeue", "-h", "-t", "RUNNING,COMPLETING,PENDING", "-o", "%i", timeout=10
            )
            if busy.returncode != 0 or not busy.stdout.strip():
                break
            time.sleep(0.2)
        self.run("scontrol", "shutdown", timeout=15)
        pids = []
        for name in ("slurmctld.pid", "slurmd.pid"):
            try:
                pids.append(int((self.root / name).read_text().strip()))
            except (OSError, ValueError):
                continue
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in [*pids, *self._leftovers()]:
            if _alive(pid):
                os.kill(pid, 9)

    def _leftovers(self) -> list[int]:
        """Processes started by this cluster: their environment names its slurm.conf."""
        marker = f"SLURM_CONF={self.conf}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                environ = (proc / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                found.append(int(proc.name))
        return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@contextmanager
def slurm_cluster(root: Path, cpus: int = 64, min_job_age: int = 300) -> Iterator[SlurmCluster]:
    """Start a private Slurm cluster (as root) and always shut it down."""
    for binary in ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sacct"):
        if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
            raise SlurmUnavailable(f"{binary} not installed (Debian: slurmctld slurmd)")
    if os.geteuid() != 0:
        raise SlurmUnavailable("the test cluster runs its daemons as root")
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    root.chmod(0o755)
    cluster = SlurmCluster(root)
    cluster.conf.write_text(
        CONF.format(
            root=root,
            ctld_port=_free_port(),
            d_port=_free_port(),
            cpus=cpus,
            min_job_age=min_job_age,
        )
    )
    env = {**os.environ, **cluster.env}
    try:
        subprocess.run(
            ["/usr/sbin/slurmctld"], env=env, check=True, timeout=30, capture_output=True
        )
        subprocess.run(
            ["/usr/sbin/slurmd", "-N", "localhost"],
            env=env,
            check=True,
            timeout=30,
            capture_output=True,
        )
        cluster.wait_idle()
        yield cluster
    finally:
        cluster.shutdown()


def unavailable(reason: str) -> None:
    """Skip, except under CI=true where a missing component is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and Slurm is unavailable: {reason}")
    pytest.skip(f"Slurm unavailable: {reason}")


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """A real slurmctld + slurmd for the whole test session (import it into a test module)."""
    # Outside pytest's root-only (0700) tree: jobs of other users (the SSH tests'
    # wmsuser) must reach slurm.conf and their batch scripts in the spool.
    root = Path(tempfile.mkdtemp(prefix="glidewms-slurm-", dir="/tmp"))
    context = slurm_cluster(root)
    try:
        cluster = context.__enter__()
    except (SlurmUnavailable, subprocess.CalledProcessError, OSError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        unavailable(str(exc))
    try:
        yield cluster
    finally:
        context.__exit__(None, None, None)
        shutil.rmtree(root, ignore_errors=True)
