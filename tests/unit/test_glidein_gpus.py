"""GPUs per claim: the pilot's devices are named, each claim holds its own while
its job runs, its job is told only those and its container gets only their
device files. Device files are fake ones a test makes (no GPU here); the
pilot's view of them comes from the same glidein_config keys the ``gpus``
validation script writes (driven by the nvidia-smi stand-in in the pilot
tests)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import cast

import pytest

from glidewms.glidein.agent.claims import ClaimRunner, Outcome
from glidewms.glidein.agent.completions import CompletionQueue
from glidewms.glidein.agent.container import (
    ContainerSetup,
    bwrap_argv,
    claim_container,
    wrap,
)
from glidewms.glidein.agent.http import Api
from glidewms.glidein.agent.isolation import Isolation
from glidewms.glidein.agent.jobs import JobProcess, JobSpec, job_environment
from glidewms.glidein.agent.resources import Gpu, Resources, gpu_environment, pilot_gpus
from glidewms.glidein.agent.slot import Slot
from glidewms.glidein.agent.trail import Trail
from glidewms.glidein.validation import checks
from tests.unit.test_glidein_container import need_bwrap

PROPS = [
    {"Id": f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd", "DeviceName": "Tesla V100"}
    for i in range(2)
]
VALUES = {
    "GPUs": "2",
    "CUDA_VISIBLE_DEVICES": "0,1",
    "GLIDEIN_GPUs_Properties": json.dumps(PROPS),
}


def test_the_pilots_gpus_are_named_as_validation_found_them() -> None:
    gpus = pilot_gpus(VALUES, 2)
    assert [g.device for g in gpus] == ["0", "1"]
    assert [g.properties["DeviceName"] for g in gpus] == ["Tesla V100"] * 2
    # HTCondor's AssignedGPUs names: GPU- and the UUID's first 8 hex digits
    assert [g.assigned for g in gpus] == ["GPU-00000000", "GPU-00000001"]
    # the batch system gave devices 2 and 3 of the node: those are the pilot's
    assert [g.device for g in pilot_gpus({**VALUES, "CUDA_VISIBLE_DEVICES": "2,3"}, 2)] == [
        "2",
        "3",
    ]
    # GPUs set by hand, nothing names them: the node's first ones; no UUID, CUDA<n>
    by_hand = pilot_gpus({"GPUs": "2"}, 2)
    assert [(g.device, g.assigned) for g in by_hand] == [("0", "CUDA0"), ("1", "CUDA1")]
    assert pilot_gpus(VALUES, 0) == []


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        (
            [Gpu("1", PROPS[1])],
            {
                "CUDA_VISIBLE_DEVICES": "1",
                "GPU_DEVICE_ORDINAL": "1",
                "NVIDIA_VISIBLE_DEVICES": "1",
                "_CONDOR_AssignedGPUs": "GPU-00000001",
            },
        ),
        (
            [Gpu("0"), Gpu("1")],
            {
                "CUDA_VISIBLE_DEVICES": "0,1",
                "GPU_DEVICE_ORDINAL": "0,1",
                "NVIDIA_VISIBLE_DEVICES": "0,1",
                "_CONDOR_AssignedGPUs": "CUDA0,CUDA1",
            },
        ),
        (  # HTCondor's value for a job without GPUs on a GPU machine: no such index
            [],
            {
                "CUDA_VISIBLE_DEVICES": "10000",
                "GPU_DEVICE_ORDINAL": "10000",
                "NVIDIA_VISIBLE_DEVICES": "none",
                "_CONDOR_AssignedGPUs": "10000",
            },
        ),
    ],
)
def test_what_a_job_is_told_of_its_gpus(gpus: list[Gpu], expected: dict[str, str]) -> None:
    assert gpu_environment(gpus) == expected


def test_the_claims_gpus_replace_the_pilots_list_in_the_job_environment() -> None:
    spec = JobSpec(cmd="x", env={"CUDA_VISIBLE_DEVICES": "0,1", "_CONDOR_AssignedGPUs": "all"})
    published = {"CUDA_VISIBLE_DEVICES": "0,1"}  # what validation published for jobs
    env = job_environment(spec, "/s", published, gpu_environment([Gpu("1", PROPS[1])]))
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["_CONDOR_AssignedGPUs"] == "GPU-00000001"
    none = job_environment(spec, "/s", published, gpu_environment([]))
    assert none["CUDA_VISIBLE_DEVICES"] == "10000" and none["_CONDOR_AssignedGPUs"] == "10000"
    # a pilot without GPUs leaves what was published (a multi-pilot node's "")
    assert (
        job_environment(spec, "/s", {"CUDA_VISIBLE_DEVICES": ""}, None)["CUDA_VISIBLE_DEVICES"]
        == ""
    )


class HeldRunner(ClaimRunner):
    """A claim whose job is "running" until the test lets it end."""

    def __init__(self, claim_id: str, gpus: int, tmp: Path) -> None:
        spec = JobSpec(cmd="x", request={"cpus": 1, "memory": 1, "disk": 0, "gpus": gpus})
        super().__init__(
            {"claim_id": claim_id}, spec, cast(Api, None), work_dir=str(tmp), job_env={}
        )
        self.release = threading.Event()

    def run(self) -> Outcome:
        self.release.wait(30)
        return Outcome(started=True, exit_code=0)


def make_slot(gpus: int, named: list[Gpu] | None = None) -> tuple[Slot, threading.Condition]:
    lock = threading.Condition()
    slot = Slot(
        Resources(cpus=8, memory=8000, disk=10**6, gpus=gpus),
        lock=lock,
        results=CompletionQueue(),
        trail=Trail(None, "g"),
        ended=lambda outcome: None,
        gpus=named or (),
    )
    return slot, lock


def test_each_claim_holds_its_own_gpus_until_its_job_ends(tmp_path: Path) -> None:
    slot, lock = make_slot(2, pilot_gpus(VALUES, 2))
    a, b, c = (HeldRunner(n, g, tmp_path) for n, g in (("a", 1), ("b", 1), ("c", 0)))
    with lock:
        for runner in (a, b, c):
            slot.reserve(runner)
    assert a.gpus is not None and b.gpus is not None
    assert [g.device for g in a.gpus] == ["0"] and [g.device for g in b.gpus] == ["1"]
    assert c.gpus == ()  # on a GPU pilot a job without GPUs is told so
    assert slot.free_gpus == [] and slot.free.gpus == 0
    for runner in (a, b, c):
        slot.run(runner)
    b.release.set()
    with lock:
        assert lock.wait_for(lambda: "b" not in slot.runners, 30)
        assert [g.device for g in slot.free_gpus] == ["1"] and slot.free.gpus == 1
        d = HeldRunner("d", 1, tmp_path)
        slot.reserve(d)
    assert d.gpus is not None and [g.device for g in d.gpus] == ["1"]  # b's, now free
    slot.run(d)
    for runner in (a, c, d):
        runner.release.set()
    with lock:
        assert lock.wait_for(lambda: not slot.runners, 30)
        assert [g.device for g in slot.free_gpus] == ["0", "1"]  # back in the node's order


def test_a_pilot_without_gpus_tells_its_jobs_nothing(tmp_path: Path) -> None:
    slot, lock = make_slot(0)
    runner = HeldRunner("a", 0, tmp_path)
    with lock:
        slot.reserve(runner)
    assert runner.gpus is None


def fake_devices(tmp_path: Path) -> Path:
    """Fake /dev/nvidia* files (regular files: bubblewrap binds them as it would
    the real character devices)."""
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-caps"):
        (dev / name).write_text(f"{name}\n")
    return dev


def test_a_claims_container_gets_only_its_gpus_device_files(tmp_path: Path) -> None:
    dev = fake_devices(tmp_path)
    setup = ContainerSetup.from_values(
        {
            **VALUES,
            "GLIDEIN_Container_Runtime": "bwrap",
            "GLIDEIN_Container_Path": "/usr/bin/bwrap",
            "GLIDEIN_GPU_Device_Dir": str(dev),
        }
    )
    names = sorted(Path(p).name for p in setup.gpu_devices)
    assert names == ["nvidia-caps", "nvidia-uvm", "nvidia0", "nvidia1", "nvidiactl"]
    mine = claim_container(setup, ["1"])
    assert sorted(Path(p).name for p in mine.gpu_devices) == [
        "nvidia-caps",
        "nvidia-uvm",
        "nvidia1",
        "nvidiactl",
    ]
    argv = bwrap_argv("/usr/bin/bwrap", "host", "/s", (), mine.gpu_devices, ["/s/job"])
    assert ["--dev-bind-try", str(dev / "nvidia1"), "/dev/nvidia1"] == argv[
        argv.index(str(dev / "nvidia1")) - 1 : argv.index(str(dev / "nvidia1")) + 2
    ]
    assert str(dev / "nvidia0") not in argv
    none = claim_container(setup, [])
    assert sorted(Path(p).name for p in none.gpu_devices) == [
        "nvidia-caps",
        "nvidia-uvm",
        "nvidiactl",
    ]
    with pytest.raises(ValueError, match="GLIDEIN_GPU_Device_Dir"):
        ContainerSetup.from_values({**VALUES, "GLIDEIN_GPU_Device_Dir": "dev"})


def test_in_bubblewrap_the_job_sees_only_its_own_gpu_device(tmp_path: Path) -> None:
    dev = fake_devices(tmp_path)
    setup = ContainerSetup.from_values(
        {
            **VALUES,
            "GLIDEIN_Container_Runtime": "bwrap",
            "GLIDEIN_Container_Path": need_bwrap(),
            "GLIDEIN_GPU_Device_Dir": str(dev),
        }
    )
    mine = claim_container(setup, ["1"])
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    script = sandbox / "job.sh"
    script.write_text(
        "#!/bin/sh\n"
        'echo "visible=$CUDA_VISIBLE_DEVICES" > /srv/seen\n'
        "cd /dev && ls -d nvidia* >> /srv/seen\n"
        "cat /dev/nvidia1 >> /srv/seen\n"
    )
    script.chmod(0o755)
    spec = JobSpec(cmd=str(script))
    env = job_environment(spec, str(sandbox), {}, gpu_environment([Gpu("1")]))

    def launcher(argv: list[str], e: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        return wrap(mine, "host", str(sandbox), argv, e)

    assert JobProcess(spec, str(sandbox), env, launcher).run() == 0
    seen = (sandbox / "seen").read_text().split()
    assert seen == [
        "visible=1",
        "nvidia-caps",
        "nvidia-uvm",
        "nvidia1",
        "nvidiactl",
        "nvidia1",  # the content of the fake device: it is the claim's own file
    ]


def test_an_isolated_job_sees_its_own_gpu_device_in_bubblewraps_fresh_dev(
    tmp_path: Path,
) -> None:
    """Job isolation (sandbox mode) gives the job a fresh /dev: without the
    claim's device files bound in it, a GPU job there would see no GPU."""
    dev = fake_devices(tmp_path)
    setup = ContainerSetup.from_values({**VALUES, "GLIDEIN_GPU_Device_Dir": str(dev)})
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    script = sandbox / "job.sh"
    script.write_text('#!/bin/sh\ncd /dev && ls -d nvidia* > "$HOME/seen"\n')
    script.chmod(0o755)
    spec = JobSpec(cmd=str(script))
    env = job_environment(spec, str(sandbox), {}, gpu_environment([Gpu("0")]))
    isolation = Isolation("sandbox", bwrap=need_bwrap())
    devices = claim_container(setup, ["0"]).gpu_devices
    assert JobProcess(spec, str(sandbox), env, None, isolation, devices=devices).run() == 0
    assert (sandbox / "seen").read_text().split() == [
        "nvidia-caps",
        "nvidia-uvm",
        "nvidia0",
        "nvidiactl",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("10000", []), ("", []), ("-1", []), ("0,2", ["0", "2"]), (None, None)],
)
def test_a_pilot_in_an_htcondor_slot_without_gpus_counts_none(
    value: str | None, expected: list[str] | None
) -> None:
    """HTCondor sets CUDA_VISIBLE_DEVICES=10000 in a slot without GPUs: a pilot
    started there (behind an HTCondor-CE) must not take it for one GPU."""
    env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    assert checks.visible_devices(env) == expected
    assert checks.gpu_attributes([], checks.visible_devices(env))["GPUs"] == len(expected or [])
