"""Real job requirements against real pilot slot ads, as the pool matches them.

The slots are what the pilot's own code builds (`resources.slot_ad`, with the
container attributes `container.capabilities` gives each runtime and GPU
property ads as the `gpus` validation script writes them); the jobs are what
`glidewms submit` makes of HTCondor submit files. Matching goes through the
pool's matchmaker and `slots.slot_with` (a pilot's free resources), and the
container wish a pilot is handed through `jobs.container_request`.
"""

from __future__ import annotations

import json
import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest

from glidewms import classads
from glidewms.classad_limits import DEFAULT_LIMITS
from glidewms.glidein.agent.config import GlideinConfig
from glidewms.glidein.agent.container import capabilities
from glidewms.glidein.agent.resources import Resources, slot_ad
from glidewms.pool.checks import Refused, check_slot
from glidewms.pool.jobs import container_request, stored_ad
from glidewms.pool.matchmaker import Matchmaker
from glidewms.pool.slots import free_from, slot_with
from glidewms.submit import parse_submit

V100 = {
    "Id": "GPU-a",
    "DeviceName": "Tesla V100-SXM2-16GB",
    "Capability": 7.0,
    "GlobalMemoryMb": 16160,
    "MaxSupportedVersion": 12020,
    "DriverVersion": 12.2,
}
A100 = {**V100, "Id": "GPU-b", "DeviceName": "NVIDIA A100", "Capability": 8.0}
A100["GlobalMemoryMb"] = 81920


def pilot(runtime: str = "none", gpus: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The slot ad a pilot registers (JSON), as its agent builds it."""
    values = {"GLIDEIN_GPUs_Properties": json.dumps(gpus or [])}
    attrs = {**capabilities(runtime), "GLIDEIN_Container_Runtime": runtime}
    cfg = GlideinConfig("http://pool", "g1", "/t", "/w", attrs=attrs, values=values)
    ad = slot_ad(cfg, Resources(8, 16000, 10**8, len(gpus or [])), to_die=2e9)
    return json.loads(json.dumps(ad))  # what travels


def job_ad(base: Path, lines: str) -> str:
    text = textwrap.dedent(lines) + "\nrequest_memory = 100\nqueue\n"
    return parse_submit(text, "job.sub", base).jobs[0].with_cluster(1).ad_text()


def fits(ad_text: str, slot: dict[str, Any], gpus_free: int | None = None) -> bool:
    check_slot(slot, DEFAULT_LIMITS)  # the pool takes it as registered
    free = free_from(slot, None if gpus_free is None else {"gpus": gpus_free})
    mm = Matchmaker()
    mm.remember(1, ad_text)
    ad = slot_with(slot, free)
    return mm.fits(1, ad, mm.shape(ad))


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "img.sif").write_bytes(b"SIF")
    return tmp_path


@pytest.mark.parametrize(
    ("requirements", "expected"),
    [
        ('Machine != "no-such-node.example"', True),
        ('TARGET.Machine == "no-such-node.example"', False),
        ('OpSys == "LINUX" && Arch == "X86_64"', True),
        ("OpSysMajorVer >= 1 && OpSysAndVer =!= undefined", True),
        ("TARGET.Cpus >= 8 && TARGET.Memory >= 16000 && Disk > 0", True),
        ("HasContainer", False),  # no runtime on this pilot
        ("GPUs >= 1", False),
    ],
)
def test_requirements_that_real_jobs_write_match_pilot_slots(
    base: Path, requirements: str, expected: bool
) -> None:
    ad = job_ad(base, f"executable = run.sh\nrequirements = {requirements}")
    assert fits(ad, pilot()) is expected


def test_a_shared_file_system_job_matches_a_pilot_on_the_submit_node(base: Path) -> None:
    ad = job_ad(base, "executable = run.sh\nshould_transfer_files = NO")
    assert fits(ad, pilot())
    assert not fits(ad, {**pilot(), "FileSystemDomain": "elsewhere.example"})
    assert socket.getfqdn() in ad


@pytest.mark.parametrize(
    ("gpu_lines", "slot_gpus", "free", "expected"),
    [
        ("request_gpus = 1", [V100], None, True),
        ("request_gpus = 1\nrequire_gpus = Capability >= 8.0", [V100], None, False),
        ("request_gpus = 1\nrequire_gpus = Capability >= 8.0", [V100, A100], None, True),
        ("request_gpus = 2\nrequire_gpus = Capability >= 8.0", [V100, A100], None, False),
        ("request_gpus = 1\ngpus_minimum_capability = 8.0", [A100], None, True),
        ("request_gpus = 1\ngpus_minimum_memory = 20000", [V100], None, False),
        ("request_gpus = 1\ngpus_minimum_memory = 20000", [A100], None, True),
        ("request_gpus = 1\ngpus_minimum_runtime = 12.0", [V100], None, True),
        ("request_gpus = 1\ngpus_minimum_runtime = 12.4", [V100], None, False),
        # a partitionable slot offers only its free GPUs
        ("request_gpus = 1\nrequire_gpus = Capability >= 7.0", [V100], 0, False),
        ("request_gpus = 1\nrequire_gpus = Capability >= 7.0", [], None, False),
    ],
)
def test_require_gpus_matches_the_slots_gpu_property_ads(
    base: Path, gpu_lines: str, slot_gpus: list[dict[str, Any]], free: int | None, expected: bool
) -> None:
    ad = job_ad(base, f"executable = run.sh\n{gpu_lines}")
    assert fits(ad, pilot(gpus=slot_gpus), free) is expected


# the slot's version is the CUDA API's (12.2 is 12020, as HTCondor's GPU discovery
# reports it); condor_submit codes cuda_version as major * 1000 + minor
@pytest.mark.parametrize(("cuda", "expected"), [("12.0", True), ("12", True), ("13.0", False)])
def test_cuda_version_matches_the_drivers_cuda_version(
    base: Path, cuda: str, expected: bool
) -> None:
    slot = {**pilot(gpus=[V100]), "CUDAMaxSupportedVersion": 12020}  # the gpus script's
    ad = job_ad(base, f"executable = run.sh\nrequest_gpus = 1\ncuda_version = {cuda}")
    assert fits(ad, slot) is expected
    assert not fits(ad, pilot())  # a pilot without GPUs


@pytest.mark.parametrize(
    ("lines", "none", "bwrap", "apptainer"),
    [
        # a directory image at a path on the execute node
        ("container_image = ROOT/rootfs\ntransfer_container = false", False, True, True),
        ("container_image = ROOT/rootfs", False, True, True),  # travels with the job
        ("container_image = ROOT/img.sif", False, False, True),
        ("container_image = docker://almalinux:9", False, False, True),
        ("docker_image = almalinux:9", False, False, True),
        ("universe = docker\ndocker_image = almalinux:9", False, False, False),
        ('+SingularityImage = "/cvmfs/img/el9:latest"', False, True, True),
    ],
)
def test_container_jobs_match_only_pilots_whose_runtime_runs_their_image(
    base: Path, lines: str, none: bool, bwrap: bool, apptainer: bool
) -> None:
    universe = "" if "universe" in lines or "+" in lines else "universe = container\n"
    ad = job_ad(base, f"executable = run.sh\n{universe}{lines.replace('ROOT', str(base))}")
    assert [fits(ad, pilot(r)) for r in ("none", "bwrap", "apptainer")] == [
        none,
        bwrap,
        apptainer,
    ]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("universe = vanilla", None),
        (
            "universe = container\ncontainer_image = ROOT/rootfs\ntransfer_container = false",
            {"image": "ROOT/rootfs", "kind": "sandbox"},
        ),
        (
            "universe = container\ncontainer_image = ROOT/rootfs",
            {"image": "rootfs", "kind": "sandbox", "in_sandbox": True},
        ),
        (
            "universe = container\ncontainer_image = img.sif",
            {"image": "img.sif", "kind": "sif", "in_sandbox": True},
        ),
        (
            "universe = container\ncontainer_image = docker://almalinux:9",
            {"image": "docker://almalinux:9", "kind": "docker"},
        ),
        (
            "universe = container\ndocker_image = almalinux:9",
            {"image": "docker://almalinux:9", "kind": "docker"},
        ),
        (
            "universe = docker\ndocker_image = almalinux:9",
            {"image": "docker://almalinux:9", "kind": "docker"},
        ),
        (
            '+SingularityImage = "/cvmfs/img/el9:latest"',
            {"image": "/cvmfs/img/el9:latest", "kind": "sandbox"},
        ),
        ("+WantContainer = true", {"image": ""}),
    ],
)
def test_the_pilot_is_handed_the_image_its_kind_and_where_it_is(
    base: Path, lines: str, expected: dict[str, Any] | None
) -> None:
    ad = stored_ad(job_ad(base, f"executable = run.sh\n{lines.replace('ROOT', str(base))}"))
    if expected is not None:
        expected = {
            k: v.replace("ROOT", str(base)) if k == "image" else v for k, v in expected.items()
        }
    assert container_request(ad) == expected


def test_an_image_that_did_not_travel_stays_where_it_is() -> None:
    ad = classads.parse_ad(
        '[ ContainerImage = "img.sif"; ContainerImageSource = "cedar"; TransferContainer = false ]'
    )
    assert container_request(ad) == {"image": "img.sif", "kind": "sif"}


def test_gpu_property_ads_are_held_to_the_pools_bounds() -> None:
    slot = pilot(gpus=[V100])
    too_many = {**slot, "AvailableGPUs": [V100] * (DEFAULT_LIMITS.max_list_items + 1)}
    with pytest.raises(Refused):
        check_slot(too_many, DEFAULT_LIMITS)
    nested = {**slot, "AvailableGPUs": [{"a": [{"b": [{"c": [1]}]}]}] * 1}
    deep: Any = nested
    for _ in range(DEFAULT_LIMITS.max_nesting + 2):
        deep = {"x": [deep]}
    with pytest.raises(Refused):
        check_slot({**slot, "AvailableGPUs": [deep]}, DEFAULT_LIMITS)
