"""A GPU job end to end through an entry generated from a site catalogue.

Pool, factory and frontend are processes on loopback; the catalogue (CRIC-like
JSON) has a GPU queue and a CPU queue, made into entries by the real
`generate` with the local backend as the flavour's mapping. No GPU exists
here: the pilots find two through the nvidia-smi STAND-IN
(tests/components/gpu_nvidia_smi_standin.sh, first on the PATH the factory
and so its local pilots inherit), with the real `gpus` validation script.

Two `request_gpus = 1` jobs meet at a barrier the test holds (a socket on
loopback: jobs share the node's network), so they provably run at once on the
one 2-GPU pilot the entry allows; each prints its CUDA_VISIBLE_DEVICES, which
must name a different single device. Waits poll with a deadline.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from glidewms.factory.catalogue import Catalogue, Overrides, generate
from tests.harness import System, systems, wait_for

pytestmark = pytest.mark.e2e

COMPONENTS = Path(__file__).parents[1] / "components"


def queue(name: str, gpus: int) -> dict[str, object]:
    return {"name": name, "cores": 2, "memory_mb": 4096, "walltime_minutes": 60, "gpus": gpus}


CATALOGUE = {
    "sites": {
        "T2_GPU": {
            "name": "T2_GPU",
            "tier_level": 2,
            "ces": [
                {
                    "name": "ce1.example.org",
                    "flavour": "HTCONDOR-CE",
                    "endpoint": "ce1.example.org:9619",
                    "queues": [queue("gpu", 2), queue("cpu", 0)],
                }
            ],
        }
    }
}
GPU_ENTRY, CPU_ENTRY = "T2_GPU_ce1_gpu", "T2_GPU_ce1_cpu"


def catalogue_entries() -> list[dict[str, object]]:
    overrides = Overrides(
        flavours={"HTCONDOR-CE": {"backend": "local"}},
        defaults={"max_pilots": 1, "max_idle": 1, "max_per_cycle": 1, "disk": "auto"},
    )
    made = generate(Catalogue.model_validate(CATALOGUE), overrides).entries
    assert {e["name"]: e.get("gpus", 0) for e in made} == {GPU_ENTRY: 2, CPU_ENTRY: 0}
    return made


class Barrier:
    """Lets the jobs on once `parties` of them are connected at the same time."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.said: list[str] = []
        self.released = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conns = []
        while len(conns) < self.parties:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            conn.settimeout(60)
            self.said.append(conn.makefile().readline().strip())
            conns.append(conn)
        self.released.set()
        for conn in conns:
            conn.sendall(b"go\n")
            conn.close()

    def close(self) -> None:
        self.server.close()


JOB = """#!/bin/bash
echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"
echo "AssignedGPUs=${_CONDOR_AssignedGPUs-unset}"
exec 3<>"/dev/tcp/127.0.0.1/$1"
echo "$CUDA_VISIBLE_DEVICES" >&3
read -r -t 90 reply <&3
echo "barrier=${reply:-timeout}"
"""


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[System]:
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    (stand_ins / "nvidia-smi").symlink_to(COMPONENTS / "gpu_nvidia_smi_standin.sh")
    monkeypatch.setenv("PATH", f"{stand_ins}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("GPU_STANDIN_COUNT", raising=False)
    with systems(tmp_path, http_timeout=10) as start:
        yield start(entries=catalogue_entries(), claim_lease=10.0, max_pilots=4)


def test_two_gpu_jobs_on_a_catalogue_gpu_entry_each_get_their_own_device(
    system: System, tmp_path: Path
) -> None:
    s = system
    barrier = Barrier(2)
    try:
        script = tmp_path / "gpu_job.sh"
        script.write_text(JOB)
        script.chmod(0o755)
        ids = s.submit(
            f"""executable = gpu_job.sh
arguments = {barrier.port}
output = out_$(Process).txt
error = err_$(Process).txt
request_cpus = 1
request_memory = 100
request_gpus = 1
queue 2
""",
            tmp_path,
        )
        wait_for(
            lambda: all(s.job(j)["state"] == "completed" for j in ids),
            "the GPU jobs to complete",
            timeout=180,
        )
    finally:
        barrier.close()
    assert barrier.released.is_set(), "the two GPU jobs never ran at the same time"

    seen = []
    for jid in ids:
        assert s.job(jid)["exit_code"] == 0
        n = jid.split(".")[1]
        files = {p.name: p.read_text() for p in s.pool.fetch_outputs(jid, tmp_path / jid)}
        lines = dict(line.split("=", 1) for line in files[f"out_{n}.txt"].splitlines())
        assert lines["barrier"] == "go"
        seen.append(lines["CUDA_VISIBLE_DEVICES"])
        # HTCondor's AssignedGPUs name of the stand-in's GPU of that index
        assert lines["AssignedGPUs"] == f"GPU-0000000{lines['CUDA_VISIBLE_DEVICES']}"
    assert sorted(seen) == ["0", "1"], f"each job one device of its own, got {seen}"
    assert sorted(barrier.said) == ["0", "1"]

    glideins = s.factory("glideins")
    assert {g["entry"] for g in glideins} == {GPU_ENTRY}, "pilots where no GPU job fits"
    assert len(glideins) == 1  # one 2-GPU pilot ran both
    # the frontend saw the entry's GPUs (the catalogue's queue), not 0
    [view] = s.explain(GPU_ENTRY)
    assert view["size"]["gpus"] == 2
