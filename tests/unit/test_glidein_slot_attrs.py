"""A whole pilot's slot ad and container refusals: the real validation scripts
(the nvidia-smi STAND-IN, tests/components/gpu_nvidia_smi_standin.sh, prints
two V100s: no GPU here; bubblewrap is the real container runtime, required
under CI=true) and the real agent, registering with `FakePool`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from glidewms.glidein.agent.resources import node_name
from tests.unit.test_glidein_agent import TOKEN, FakePool, claim_for
from tests.unit.test_glidein_pilot import finish, pilot_dir, records, start

COMPONENTS = Path(__file__).parents[1] / "components"


@pytest.fixture
def pool() -> Iterator[FakePool]:
    with FakePool() as fake:
        yield fake


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def test_a_pilot_registers_gpu_property_ads_and_refuses_what_its_runtime_cannot_run(
    pool: FakePool, tmp_path: Path, token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("bwrap") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("bwrap is required when CI=true")
        pytest.skip("bwrap is not installed")
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    (stand_ins / "nvidia-smi").symlink_to(COMPONENTS / "gpu_nvidia_smi_standin.sh")
    monkeypatch.setenv("PATH", f"{stand_ins}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    work = pilot_dir(
        tmp_path, pool, token_file, GLIDEIN_Idle_Timeout=1, GLIDEIN_Container_Runtimes="bwrap"
    )
    job = {"job.sh": b"#!/bin/sh\ntouch ran\n"}
    # handed out anyway (FakePool does not match): the pilot must refuse, not crash
    pool.claims.append(
        claim_for(pool, "c1", job, container={"image": "x.sif", "kind": "sif", "in_sandbox": True})
    )
    pool.claims.append(claim_for(pool, "c2", job, cmd="", container={"image": ""}))
    thread, agent = start(work)
    finish(thread)

    slot = pool.registered[0]["slot"]
    assert slot["GPUs"] == 2 and slot["CUDAMaxSupportedVersion"] == 12020
    assert [
        (g["Id"][:12], g["Capability"], g["GlobalMemoryMb"]) for g in slot["AvailableGPUs"]
    ] == [
        ("GPU-00000000", 7.0, 16160),
        ("GPU-00000001", 7.0, 16160),
    ]
    assert all(g["MaxSupportedVersion"] == 12020 for g in slot["AvailableGPUs"])
    assert slot["Machine"] == node_name() and slot["OpSysAndVer"]
    assert (slot["HasContainer"], slot["HasSandboxImage"], slot["HasSIF"]) == (True, True, False)

    assert pool.completed == {}
    jobs = {r["content"].split(":")[0]: r["content"] for r in records(pool, "job")}
    assert "started=False" in jobs["job c1.0"] and "is a SIF image" in jobs["job c1.0"]
    assert "started=False" in jobs["job c2.0"] and "no entry point" in jobs["job c2.0"]
    assert agent.exit_code == 0 and pool.reports[0]["exit_reason"] == "idle_timeout"
