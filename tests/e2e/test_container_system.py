"""Container jobs and slot attributes through the whole system: pool, factory
and frontend as processes on loopback, pilots started by the factory's local
backend (bootstrap, signed stage, validation scripts and agent, unmodified).

Bubblewrap IS the container runtime here (the real one; Apptainer cannot be
installed on these machines): the pilots' container validation finds it, the
slot says it runs directory images and not SIF files, and jobs match by that.
The directory image is a real, self-contained rootfs built here from the
host's shell and the C library it links (nothing of the host's /usr in it).
Under CI=true a missing bwrap is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from glidewms.glidein.agent.resources import node_name
from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def system(tmp_path: Path) -> Iterator[Callable[..., System]]:
    with systems(tmp_path, http_timeout=30, claim_lease=60.0) as start:
        yield start


@pytest.fixture
def images() -> Iterator[Path]:
    """Where images live: readable by every account, since jobs run as their own
    (the pytest tmp dir is private to the account running the tests)."""
    where = Path(tempfile.mkdtemp(prefix="glidewms_images_"))
    where.chmod(0o755)
    yield where
    shutil.rmtree(where, ignore_errors=True)


def need_bwrap() -> None:
    if shutil.which("bwrap") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("bwrap is required when CI=true")
        pytest.skip("bwrap is not installed")


def rootfs(where: Path) -> Path:
    """A directory image: /bin/sh (the host's dash, copied) and the libraries
    ldd says it needs, mount points, and an /etc of its own with a marker."""
    root = where / "el-tiny"
    for name in ("bin", "etc", "proc", "dev", "tmp", "srv"):
        (root / name).mkdir(parents=True)
    shell = Path(os.path.realpath("/bin/sh"))
    shutil.copy2(shell, root / "bin" / "sh")
    linked = subprocess.run(["ldd", str(shell)], capture_output=True, text=True, check=True)
    for path in re.findall(r"(/\S+\.so[.\d]*)", linked.stdout):
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(path), target)
    (root / "etc" / "image-marker").write_text("el-tiny rootfs\n")
    return root


CONTAINER_JOB = """#!/bin/sh
read marker < /etc/image-marker
{
  echo "marker=$marker"
  echo "pwd=$(pwd)"
  if [ -e /usr/bin/python3 ]; then echo "host_usr=visible"; else echo "host_usr=absent"; fi
  echo "args=$*"
} > result.txt
"""

SUBMIT = """
universe = container
container_image = {image}
transfer_container = false
executable = {executable}
arguments = one two
output = out.txt
error = err.txt
transfer_output_files = result.txt
request_memory = 32
queue
"""


def entry(scratch: Path, **attributes: Any) -> dict[str, Any]:
    return {
        "name": "bwrap_site",
        "site": "LOCAL",
        "backend": "local",
        "cpus": 1,
        "memory": "auto",
        "disk": "auto",
        "walltime": 3600,
        "max_pilots": 1,
        "max_idle": 1,
        "max_per_cycle": 1,
        "work_dir": str(scratch),
        "attributes": {"GLIDEIN_Container_Runtimes": "bwrap", **attributes},
    }


def test_a_container_job_runs_in_its_directory_image_under_bubblewrap_and_a_sif_job_waits(
    system: Callable[..., System], tmp_path: Path, images: Path
) -> None:
    need_bwrap()
    image = rootfs(images)
    (images / "el9.sif").write_bytes(b"not a real SIF: no pilot here may take it")
    (tmp_path / "job.sh").write_text(CONTAINER_JOB)
    (tmp_path / "job.sh").chmod(0o755)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # the entry says what a frontend cannot learn from pilots before they run:
    # its site has bubblewrap, no SIF runtime
    s = system(entries=[entry(scratch, HasSIF=False)])
    [sif] = s.submit(SUBMIT.format(image=images / "el9.sif", executable="job.sh"), tmp_path)
    [box] = s.submit(SUBMIT.format(image=image, executable="job.sh"), tmp_path)
    [anywhere] = s.submit(
        'executable = job.sh\nrequirements = Machine != "no-such-node.example"\n'
        "transfer_output_files = result.txt\nrequest_memory = 32\nqueue\n",
        tmp_path,
    )

    # while a pilot is in the pool: its slot says what it runs, and the SIF job's
    # autocluster has no pilot to match (what frontends read from the pool)
    def seen() -> tuple[dict[str, Any], dict[str, Any]] | None:
        active = [p for p in s.pilots() if p["state"] == "active"]
        if not active:
            return None
        demand = s.get("pool", "demand")["autoclusters"]
        [sif_ac] = [a for a in demand if "el9.sif" in a["ad"]] or [None]
        return (active[0]["slot"], sif_ac) if sif_ac else None

    slot, sif_ac = wait_for(seen, "a pilot to register")
    assert slot["GLIDEIN_Container_Runtime"] == "bwrap"
    assert (slot["HasContainer"], slot["HasSandboxImage"]) == (True, True)
    assert (slot["HasSIF"], slot["HasDockerURL"], slot["HasDocker"]) == (False, False, False)
    assert slot["Machine"] == node_name() and slot["OpSys"] == "LINUX"
    assert sif_ac["idle"] == 1 and sif_ac["matching_pilots"] == 0

    done = {
        jid: wait_for(lambda j=jid: (x := s.job(j))["state"] == "completed" and x, f"job {jid}")
        for jid in (box, anywhere)
    }
    assert all(j["exit_code"] == 0 for j in done.values()), {
        k: (j["exit_code"], [p.read_text() for p in s.pool.fetch_outputs(k, tmp_path / k)])
        for k, j in done.items()
    }
    [got] = [p for p in s.pool.fetch_outputs(box, tmp_path / "got") if p.name == "result.txt"]
    # it ran in the image (its own /etc, no host /usr), in the sandbox at /srv
    assert dict(line.split("=", 1) for line in got.read_text().splitlines()) == {
        "marker": "el-tiny rootfs",
        "pwd": "/srv",
        "host_usr": "absent",
        "args": "one two",
    }
    # the SIF job never started anywhere, and the frontend does not ask this entry for it
    assert s.job(sif)["state"] == "idle"
    assert [e["type"] for e in s.pool.events(sif)].count("started") == 0
    record = wait_for(
        lambda: next(
            (r for r in s.explain("bwrap_site") if r.get("demand", {}).get("idle_jobs") == 0),
            None,
        ),
        "the frontend to see no demand for this entry left",
    )
    assert s.job(sif)["state"] == "idle", record
