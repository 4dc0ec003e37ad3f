"""A real Son of Grid Engine cell on localhost for tests (sge_qmaster + sge_execd).

Recipe from notes/real-components.md §2, on the cell the Debian packages
created (`SGE_ROOT=/var/lib/gridengine`, cell `default`; the debconf-preseeded
install is a machine prerequisite, like `apt-get install slurmd`):

- `host_aliases` makes `localhost` and the machine's hostname one host (SGE
  checks that a client's resolved name is its own name);
- the scheduler runs every second instead of every 15 s, accounting records
  are flushed at once (qacct sees a job as soon as it ends);
- one queue `all.q`, 8 slots, no load threshold (a busy 2-core box would put
  it in alarm state) and no parallel environments.

Root cannot submit (uid < min_uid 1000): jobs are submitted as the test user
`wmsuser` (uid 2001) through `runuser -u wmsuser --`. Started by a session
fixture and always stopped with `qconf -ke` / `qconf -km` (the qmaster's
controlled shutdown takes several seconds).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SGE_ROOT = Path("/var/lib/gridengine")
CELL = "default"
SPOOL = Path("/var/spool/gridengine")
USER = "wmsuser"

QUEUE = """\
qname                 all.q
hostlist              localhost
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               NONE
rerun                 FALSE
slots                 8
tmpdir                /tmp
shell                 /bin/bash
prolog                NONE
epilog                NONE
shell_start_mode      posix_compliant
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
"""
LIMITS = [
    f"{soft_or_hard}_{name}"
    for name in ("rt", "cpu", "fsize", "data", "stack", "core", "rss", "vmem")
    for soft_or_hard in "sh"
]


class SgeUnavailable(RuntimeError):
    """Grid Engine is not installed or cannot run here (the test says whether to skip)."""


@dataclass
class SgeCluster:
    work: Path  # scratch files of the fixture
    user_dir: Path  # a directory the submitting user owns (logs, staged tokens)

    @property
    def env(self) -> dict[str, str]:
        """What every Grid Engine client command needs to find this cell."""
        return {"SGE_ROOT": str(SGE_ROOT), "SGE_CELL": CELL}

    @property
    def prefix(self) -> list[str]:
        """Run a batch command as the submitting user (root may not submit)."""
        return ["runuser", "-u", USER, "--"]

    def run(
        self, *argv: str, as_user: bool = False, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        full = [*self.prefix, *argv] if as_user else list(argv)
        return subprocess.run(
            full,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def qconf(self, *args: str) -> None:
        result = self.run("qconf", *args)
        if result.returncode != 0:
            raise SgeUnavailable(f"qconf {' '.join(args)}: {result.stderr or result.stdout}")

    def wait(self, what: str, predicate: object, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise SgeUnavailable(f"Grid Engine: {what} not reached after {timeout}s")
            time.sleep(0.1)

    def shutdown(self, timeout: float = 60) -> None:
        """Delete every test job, stop execd and qmaster, wait for both to exit."""
        self.run("qdel", "-u", USER, timeout=15)
        self.run("qconf", "-ke", "localhost", timeout=15)
        self.run("qconf", "-km", timeout=15)
        deadline = time.monotonic() + timeout
        while _daemons() and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in _daemons():
            os.kill(pid, 9)


def _daemons() -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_text().strip()
        except OSError:
            continue
        if comm in ("sge_qmaster", "sge_execd"):
            found.append(int(proc.name))
    return found


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    shutil.chown(path, "sgeadmin", "sgeadmin")


@contextmanager
def sge_cluster(work: Path, user_dir: Path) -> Iterator[SgeCluster]:
    """Configure and start the cell (as root), and always stop it."""
    for binary in ("/usr/sbin/sge_qmaster", "/usr/sbin/sge_execd"):
        if not Path(binary).exists():
            raise SgeUnavailable(f"{binary} not installed (Debian: gridengine-master -exec)")
    for binary in ("qsub", "qstat", "qdel", "qacct", "qconf", "runuser"):
        if shutil.which(binary) is None:
            raise SgeUnavailable(f"{binary} not on PATH (Debian: gridengine-client)")
    common = SGE_ROOT / CELL / "common"
    if not (common / "bootstrap").is_file():
        raise SgeUnavailable(f"{common}/bootstrap missing: the gridengine cell was not created")
    if os.geteuid() != 0:
        raise SgeUnavailable("the test cell runs its daemons as root")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        raise SgeUnavailable(f"test user {USER} does not exist (useradd -u 2001 {USER})") from None
    if _daemons():
        raise SgeUnavailable("a Grid Engine daemon is already running on this machine")
    _write(common / "host_aliases", f"localhost {socket.gethostname()}\n")
    _write(common / "act_qmaster", "localhost\n")
    for directory in (Path("/var/run/gridengine"), SPOOL / "execd"):
        directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "sgeadmin", "sgeadmin")
    work.mkdir(parents=True, exist_ok=True)
    cluster = SgeCluster(work, user_dir)
    env = {**os.environ, **cluster.env}
    try:
        subprocess.run(
            ["/usr/sbin/sge_qmaster"], env=env, check=True, timeout=30, capture_output=True
        )
        cluster.wait("qmaster answering", lambda: cluster.run("qconf", "-sh").returncode == 0)
        cluster.qconf("-as", "localhost")
        subprocess.run(
            ["/usr/sbin/sge_execd"], env=env, check=True, timeout=30, capture_output=True
        )
        cluster.wait("execd registered", lambda: "localhost" in cluster.run("qconf", "-sel").stdout)
        _configure(cluster)
        yield cluster
    finally:
        cluster.shutdown()


def _configure(cluster: SgeCluster) -> None:
    """Fast scheduler, immediate accounting, one 8-slot queue."""
    sconf = cluster.run("qconf", "-ssconf").stdout
    replace = {
        "schedule_interval": "0:0:1",
        "flush_submit_sec": "1",
        "flush_finish_sec": "1",
        "job_load_adjustments": "NONE",
    }
    lines = [
        f"{line.split()[0]} {replace[line.split()[0]]}"
        if line.split() and line.split()[0] in replace
        else line
        for line in sconf.splitlines()
    ]
    (cluster.work / "sconf").write_text("\n".join(lines) + "\n")
    cluster.qconf("-Msconf", str(cluster.work / "sconf"))
    conf = cluster.run("qconf", "-sconf").stdout.splitlines()
    conf = [
        line
        for line in conf
        if not line.startswith("reporting_params") and not line.startswith(" ")
    ]  # continuation lines of reporting_params
    conf.append(
        "reporting_params accounting=true reporting=false flush_time=00:00:01 "
        "joblog=false sharelog=00:00:00 accounting_flush_time=00:00:00"
    )
    (cluster.work / "global").write_text("\n".join(conf) + "\n")
    cluster.qconf("-Mconf", str(cluster.work / "global"))
    queue = QUEUE + "".join(f"{name:<22}INFINITY\n" for name in LIMITS)
    (cluster.work / "all.q").write_text(queue)
    exists = cluster.run("qconf", "-sq", "all.q").returncode == 0
    cluster.qconf("-Mq" if exists else "-Aq", str(cluster.work / "all.q"))
    cluster.wait("queue all.q open", lambda: _queue_ready(cluster))


def _queue_ready(cluster: SgeCluster) -> bool:
    out = cluster.run("qstat", "-f", "-q", "all.q").stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("all.q@")]
    return bool(rows) and all(len(row) < 6 for row in rows)  # a 6th column is a state (a, u, E)


def unavailable(reason: str) -> None:
    """Skip, except under CI=true where a missing component is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and Grid Engine is unavailable: {reason}")
    pytest.skip(f"Grid Engine unavailable: {reason}")


@pytest.fixture(scope="session")
def sge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SgeCluster]:
    """A real sge_qmaster + sge_execd for the whole session (import it into a test module).

    `user_dir` is a fresh directory owned by the submitting user outside pytest's
    root-only temporary tree, removed at the end.
    """
    work = tmp_path_factory.mktemp("sge")
    user_dir = Path(f"/tmp/glidewms-sge-{os.getpid()}")
    context = sge_cluster(work, user_dir)
    try:
        cluster = context.__enter__()
    except (SgeUnavailable, subprocess.CalledProcessError, OSError) as exc:
        unavailable(str(exc))
    user_dir.mkdir(mode=0o755, exist_ok=True)
    shutil.chown(user_dir, USER, USER)
    try:
        yield cluster
    finally:
        context.__exit__(None, None, None)
        shutil.rmtree(user_dir, ignore_errors=True)
