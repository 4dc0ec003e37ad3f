"""Realistic submit files, in the style of public research repositories.

tests/data/submit/ holds submit files written the way OSG, CMS, LIGO, IceCube,
ATLAS and CHTC users write them (getenv, queue from, containers, macros,
request_* with units, policy expressions, sites), with the small files they
name. Each must be accepted, with the job count and the attributes
condor_submit would give its first job; every ad must parse with classad2.
`<D>` in an expected value stands for the directory of the files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import classad2
import htcondor2  # noqa: F401  (before classad2 is used)
import pytest
from typer.testing import CliRunner

from glidewms.cli.main import app
from glidewms.submit import load_submit

DATA = Path(__file__).resolve().parents[1] / "data" / "submit"
ENV = {
    "USER": "alice",
    "HOME": "/home/alice",
    "PATH": "/usr/bin:/bin",
    "LAL_DATA_PATH": "/lal",
    "LAL_DEBUG_LEVEL": "3",
    "SHELL": "/bin/bash",
}
STDIN = "120 1.5\n125 2.0\n"
BASE_REQ = (
    "(TARGET.Cpus >= RequestCpus) && (TARGET.Memory >= RequestMemory) && "
    "(TARGET.Disk >= RequestDisk)"
)

EXPECTED: dict[str, tuple[int, dict[str, str]]] = {
    "osg_hello.sub": (
        10,
        {
            "Cmd": '"<D>/bin/analyze.sh"',
            "Arguments": '"--index 0 --out result_$(ClusterId)_0.txt"',
            "Out": '"<D>/logs/job_$(ClusterId)_0.out"',
            "UserLog": '"<D>/logs/job_$(ClusterId).log"',
            "RequestMemory": "1024",
            "RequestDisk": "2097152",
            "ProjectName": '"OSG-Staff"',
            "Requirements": '((OSGVO_OS_STRING == "RHEL 9") && (HAS_MODULES =?= true)) && '
            + BASE_REQ,
        },
    ),
    "osg_singularity.sub": (
        1,
        {
            "SingularityImage": '"/cvmfs/singularity.opensciencegrid.org/opensciencegrid/'
            'osgvo-el9:latest"',
            "SingularityBindCVMFS": "True",
            "ShouldTransferFiles": '"IF_NEEDED"',
            "Requirements": "(HAS_SINGULARITY == TRUE) && "
            + BASE_REQ
            + " && (TARGET.HasContainer) && (TARGET.HasSandboxImage)",
        },
    ),
    "container_universe.sub": (
        3,
        {
            "WantContainer": "true",
            "WantDockerImage": "true",
            "ContainerImage": '"docker://hub.opensciencegrid.org/htc/rocky:9"',
            "ContainerImageSource": '"docker"',
            "Arguments": '"run001.dat"',
            "TransferInput": '"<D>/inputs/data/run001.dat"',
            "RequestMemory": "512",
            "RequestDisk": "1048576",
            "Requirements": BASE_REQ + " && (TARGET.HasContainer) && (TARGET.HasDockerURL)",
        },
    ),
    "cms_crab_like.sub": (
        3,
        {
            "x509userproxy": '"<D>/inputs/x509up_u1000"',
            "DESIRED_Sites": '"T2_US_Nebraska,T2_US_Wisconsin,T1_US_FNAL"',
            "MaxWallTimeMins": "1315",
            "AccountingGroup": '"analysis.cmsuser"',
            "MaxRetries": "3",
            "RequestCpus": "4",
            "RequestMemory": "8000",
            "RequestDisk": "10000000",
            "Environment": '""',
            "OnExitRemove": "(ExitBySignal == False) && (ExitCode == 0)",
            "Arguments": '"analysis.py --jobid $(ClusterId).0"',
        },
    ),
    "cms_lpc_sites.sub": (
        3,
        {
            "WhenToTransferOutput": '"ON_EXIT_OR_EVICT"',
            "JobNotification": "0",
            "OnExitHoldReason": 'strcat("Job held by ON_EXIT_HOLD due to ",ifThenElse((ExitBySignal'
            ' == True), "exit by signal", strcat("exit code ",ExitCode)), ".")',
            "JobMachineAttrs": '"\\"GLIDEIN_CMSSite\\""',
            "DesiredOS": "REQUIRED_OS",
            "DESIRED_Sites": '"T1_US_FNAL"',
            "WantGracefulRemoval": "true",
        },
    ),
    "ligo_pe.sub": (
        2,
        {
            "AcctGroup": '"ligo.dev.o4.cbc.pe.bilby"',
            "AcctGroupUser": '"albert.einstein"',
            "AccountingGroup": '"ligo.dev.o4.cbc.pe.bilby.albert.einstein"',
            "Arguments": '"bilby_pipe_analysis.py --label GW150914_0 --data-dump-file '
            'GW150914_0_data.pickle"',
            "SuccessCheckpointExitCode": "77",
            "TransferCheckpoint": '"outdir/result"',
            "RequestCpus": "16",
            "RequestMemory": "4096",
            "UserLog": '"<D>/logs/GW150914_0.log"',
        },
    ),
    "ligo_env.sub": (
        1,
        {
            "Iwd": '"<D>/run"',
            "Cmd": '"<D>/bin/analyze.sh"',
            "Environment": '"HOME=/home/alice PATH=/usr/bin:/bin LAL_DATA_PATH=/lal '
            "OMP_NUM_THREADS=1 HDF5_USE_FILE_LOCKING=FALSE LABEL='two words'\"",
            "TransferInput": '"<D>/run/config.yaml,<D>/inputs/data/"',
            "Out": '"<D>/run/pe.out"',
        },
    ),
    "icecube_gpu.sub": (
        5,
        {
            "RequestGPUs": "1",
            "GPUsMinMemory": "8192",
            "TransferOutput": '""',
            "RequireGPUs": "(Capability >= 7.0) && GlobalMemoryMb >= GPUsMinMemory",
            "Requirements": "(HAS_CVMFS_icecube_opensciencegrid_org && (OpSysMajorVer == 9)) && "
            + BASE_REQ
            + " && (countMatches(MY.RequireGPUs, TARGET.AvailableGPUs)"
            " >= RequestGPUs)",
        },
    ),
    "icecube_queue_from.sub": (
        2,
        {
            "Arguments": '"run001.dat out/run001.i3"',
            "TransferOutput": '"run001.i3"',
            "TransferOutputRemaps": '"run001.i3 = results/run001.i3"',
            "Out": '"<D>/logs/run001.out"',
        },
    ),
    "matching.sub": (
        3,
        {"Arguments": '"run001.dat run001"', "TransferInput": '"<D>/inputs/data/run001.dat"'},
    ),
    "self_checkpoint.sub": (
        1,
        {
            "SuccessCheckpointExitCode": "85",
            "TransferCheckpoint": '"checkpoint.dat, state/"',
            "StreamOut": "true",
            "StreamErr": "true",
            "TransferOutput": '"result.dat"',
            "is_resumable": "true",
        },
    ),
    "materialize.sub": (
        500,
        {
            "JobBatchName": '"sweep $(ClusterId)"',
            "Arguments": '"0 0"',
            "RequestMemory": "1024",
            "RequestDisk": "2097152",
        },
    ),
    "conditional_template.sub": (
        2,
        {
            "Arguments": '"--seed 1"',
            "RequestMemory": "2048",
            "WantSIF": "true",
            "ContainerImage": '"pythia.sif"',
            "Out": '"<D>/logs/alice_$(ClusterId)_0.out"',
            "Requirements": '((Arch == "X86_64")) && '
            + BASE_REQ
            + " && (TARGET.HasContainer) && (TARGET.HasSIF)",
        },
    ),
    "url_inputs.sub": (
        2,
        {
            "TransferInput": '"https://data.example.org/run/events_0.root,'
            'http://mirror.example.org/calib.db,<D>/inputs/config.yaml"',
            "WantTransferPluginMethods": '"http,https"',
        },
    ),
    "docker_universe.sub": (
        1,
        {
            "WantDocker": "true",
            "DockerImage": '"rootproject/root:6.30.04-ubuntu22.04"',
            "DockerPullPolicy": '"always"',
            "Requirements": BASE_REQ + " && (TARGET.HasDocker)",
        },
    ),
    "stdin_queue.sub": (
        2,
        {"Arguments": '"--mass 120 --width 1.5"', "Out": '"<D>/logs/scan_120.out"'},
    ),
    "shell_expr.sub": (
        1,
        {
            "Cmd": '"/bin/sh"',
            "Arguments": "\"-c 'tar xzf inputs.tgz && ./run.sh --events 1000'\"",
            "RequestMemory": "ifthenelse(MemoryUsage =!= undefined, MAX({MemoryUsage * 3 / 2, 2048}),"  # noqa: E501
            " 2048)",
            "RequestDisk": "2 * 1024 * 1024",
            "PeriodicHoldSubCode": "42",
            "PeriodicHoldReason": '"Used more memory than requested"',
        },
    ),
    "atlas_like.sub": (
        4,
        {
            "ConcurrencyLimits": '"atlas_prod_db:2"',
            "JobBatchName": '"atlas pilots"',
            "JobPrio": "-5",
            "AccountingGroup": '"group_atlas.analysis.alice"',
            "OnExitHoldSubCode": "ExitCode",
            "MaxRetries": "2",
            "JobLeaseDuration": "7200",
        },
    ),
    "shared_fs.sub": (
        2,
        {
            "Cmd": '"/bin/echo"',
            "TransferExecutable": "false",
            "ShouldTransferFiles": '"NO"',
            "Out": '"/tmp/shared_0.out"',
            "Requirements": BASE_REQ + " && (TARGET.FileSystemDomain == MY.FileSystemDomain)",
        },
    ),
    "multi_block.sub": (5, {"Arguments": '"--verbose --color=never --stage prepare --fast"'}),
    "queue_arguments.sub": (
        3,
        {"Arguments": '"-s topol1.tpr -nsteps 5000"', "RequestMemory": "16384", "RequestCpus": "8"},
    ),
    "getenv_everything.sub": (
        1,
        {
            "Environment": '"USER=alice HOME=/home/alice PATH=/usr/bin:/bin LAL_DATA_PATH=/lal '
            "LAL_DEBUG_LEVEL=3 SHELL=/bin/bash X509_USER_PROXY=<D>/inputs/x509up_u1000"
            ' ANALYSIS_MODE=full"'
        },
    ),
}


def environ() -> dict[str, str]:
    return {**ENV, "X509_USER_PROXY": str(DATA / "inputs" / "x509up_u1000")}


def test_every_fixture_has_expectations() -> None:
    assert sorted(EXPECTED) == sorted(p.name for p in DATA.glob("*.sub"))
    assert len(EXPECTED) >= 20


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_realistic_file_is_accepted_with_the_right_ads(name: str) -> None:
    count, expected = EXPECTED[name]
    desc = load_submit(DATA / name, environ=environ(), stdin=STDIN)
    assert len(desc.jobs) == count
    assert desc.warnings == []
    attrs = desc.jobs[0].attrs
    for attr, value in expected.items():
        assert attrs.get(attr) == value.replace("<D>", str(DATA)), attr
    for job in desc.jobs[:50]:
        ad = classad2.parseOne(job.with_cluster(77).ad_text())
        assert set(ad.keys()) == set(job.attrs) | {"ClusterId"}


def test_item_rows_reach_every_job() -> None:
    desc = load_submit(DATA / "queue_arguments.sub", environ=ENV)
    assert [j.args[-1] for j in desc.jobs] == ["5000", "10000", "20000"]
    sites = load_submit(DATA / "cms_lpc_sites.sub", environ=ENV)
    assert [j.attrs["DESIRED_Sites"] for j in sites.jobs] == [
        '"T1_US_FNAL"',
        '"T2_US_Caltech"',
        '"T2_US_Florida"',
    ]
    blocks = load_submit(DATA / "multi_block.sub", environ=ENV)
    assert [j.attrs["RequestMemory"] for j in blocks.jobs] == [
        "128",
        "3072",
        "3072",
        "3072",
        "1024",
    ]
    assert blocks.jobs[3].args[-1] == "2"
    matched = load_submit(DATA / "matching.sub", environ=ENV)
    assert [j.args[1] for j in matched.jobs] == ["run001", "run002", "run003"]


def test_dry_run_prints_the_ads_without_a_pool(tmp_path: Path) -> None:
    shutil.copytree(DATA, tmp_path / "d")
    result = CliRunner().invoke(
        app,
        [
            "submit",
            "--dry-run",
            str(tmp_path / "d" / "atlas_like.sub"),
            "--pool",
            "http://127.0.0.1:9",
        ],
    )
    assert result.exit_code == 0, result.output
    ads = [block for block in result.stdout.strip().split("\n\n")]
    assert len(ads) == 4
    parsed = [classad2.parseOne("[ " + "; ".join(a.splitlines()) + " ]") for a in ads]
    assert [ad["ProcId"] for ad in parsed] == [0, 1, 2, 3]
    assert all(ad["ClusterId"] == 1 for ad in parsed)
    assert parsed[2]["Out"] == str(tmp_path / "d" / "logs" / "pilot_1.2.out")
    assert "4 job(s) dry-run to cluster 1." in result.stderr
