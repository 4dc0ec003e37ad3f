"""Node validation: the pure checks, the script runner, and the standard scripts as shipped.

The standard scripts run as real processes against this machine. What cannot
exist here is replaced by stand-ins on PATH, named as such:
`tests/components/gpu_nvidia_smi_standin.sh` for nvidia-smi (no GPU) and
`tests/components/bwrap_apptainer_standin.sh` for apptainer (cannot be
installed here; the stand-in runs the same command line with bubblewrap).
Bubblewrap itself is real; with CI=true its absence fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import glidewms.glidein.agent as agent_pkg
from glidewms.glidein.agent import validation
from glidewms.glidein.agent.config import ConfigError
from glidewms.glidein.validation import checks

GLIDEIN = Path(agent_pkg.__file__).parents[1]
COMPONENTS = Path(__file__).parents[1] / "components"
CI = os.environ.get("CI") == "true"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if CI:
            pytest.fail(f"{tool} is required when CI=true")
        pytest.skip(f"{tool} is not installed")
    return path


# --------------------------------------------------------------------------- pure checks


@pytest.mark.parametrize(
    ("env", "host", "expected"),
    [
        ({}, "n1", None),
        ({"SLURM_CPUS_ON_NODE": "8"}, "n1", (8, "SLURM_CPUS_ON_NODE")),
        ({"SLURM_JOB_CPUS_PER_NODE": "4(x2),2"}, "n1", (4, "SLURM_JOB_CPUS_PER_NODE")),
        ({"PBS_NUM_PPN": "6", "PBS_NP": "12"}, "n1", (6, "PBS_NUM_PPN")),
        ({"NCPUS": "3"}, "n1", (3, "NCPUS")),
        ({"LSB_MCPU_HOSTS": "n0 4 n1.example.org 2"}, "n1", (2, "LSB_MCPU_HOSTS")),
        (
            {"LSB_MCPU_HOSTS": "n0 4 n1 2", "LSB_DJOB_NUMPROC": "6"},
            "other",
            (6, "LSB_DJOB_NUMPROC"),
        ),
        ({"LSB_MCPU_HOSTS": "n0 4"}, "other", (4, "LSB_MCPU_HOSTS")),
        ({"NSLOTS": "5"}, "n1", (5, "NSLOTS")),
        ({"SLURM_CPUS_ON_NODE": "junk"}, "n1", None),
    ],
)
def test_batch_cpus(env: dict[str, str], host: str, expected: Any) -> None:
    assert checks.batch_cpus(env, host) == expected


@pytest.mark.parametrize(
    ("cpu_max", "quota", "period", "expected"),
    [
        ("max 100000", None, None, None),
        ("200000 100000", None, None, 2),
        ("150000 100000", None, None, 2),
        ("50000 100000", None, None, 1),
        (None, "-1", "100000", None),
        (None, "300000", "100000", 3),
        (None, None, None, None),
    ],
)
def test_cgroup_cpus(
    cpu_max: str | None, quota: str | None, period: str | None, expected: int | None
) -> None:
    assert checks.cgroup_cpus(cpu_max, quota, period) == expected


@pytest.mark.parametrize(
    ("mode", "batch", "cgroup", "affinity", "expected"),
    [
        ("4", None, None, 8, (4, "configured")),
        ("node", 2, 1, 8, (16, "node")),
        ("slot", 2, None, 8, (2, "batch")),
        ("auto", None, None, 8, (8, "affinity")),
        ("auto", 4, None, 8, (4, "batch")),
        ("auto", 4, 2, 8, (2, "cgroup")),
        ("", None, 3, 8, (3, "cgroup")),
    ],
)
def test_decide_cpus(
    mode: str, batch: int | None, cgroup: int | None, affinity: int, expected: tuple[int, str]
) -> None:
    assert checks.decide_cpus(mode, batch, cgroup, affinity, 16) == expected


@pytest.mark.parametrize(
    ("mode", "batch", "message"),
    [
        ("slot", None, "no batch system variable"),
        ("lots", None, "expected a number, auto, node or slot"),
    ],
)
def test_decide_cpus_refuses_with_a_reason(mode: str, batch: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        checks.decide_cpus(mode, batch, None, 4, 4)


@pytest.mark.parametrize(
    ("env", "cpus", "limit", "mode", "expected"),
    [
        ({}, 1, None, "auto", (32000, "node")),
        ({"SLURM_MEM_PER_NODE": "4000"}, 1, None, "auto", (4000, "batch")),
        ({"SLURM_MEM_PER_CPU": "1000"}, 3, None, "auto", (3000, "batch")),
        ({}, 1, str(2048 * 1024 * 1024), "auto", (2048, "cgroup")),
        ({}, 1, "max", "auto", (32000, "node")),
        ({}, 1, str(1 << 62), "auto", (32000, "node")),
        ({"SLURM_MEM_PER_NODE": "4000"}, 1, None, "node", (32000, "node")),
        ({}, 1, None, "1500", (1500, "configured")),
    ],
)
def test_memory(
    env: dict[str, str], cpus: int, limit: str | None, mode: str, expected: tuple[int, str]
) -> None:
    batch = checks.batch_memory_mb(env, cpus)
    assert checks.decide_memory(mode, batch, checks.cgroup_memory_mb(limit), 32000) == expected


SMI = "0, GPU-a, Tesla V100-SXM2-16GB, 16160, 7.0\n1, GPU-b, Tesla V100-SXM2-16GB, 16160, 7.0\n"


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("", {}, {"GPUs": 0}),
        ("", {"CUDA_VISIBLE_DEVICES": "0,1,2"}, {"GPUs": 3, "GPUs_DeviceIds": "0,1,2"}),
        ("", {"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, {"GPUs": 0}),
        (
            SMI,
            {},
            {
                "GPUs": 2,
                "GPUs_DeviceName": "Tesla V100-SXM2-16GB",
                "GPUs_GlobalMemoryMb": 16160,
                "GPUs_Capability": 7.0,
                "GPUs_DeviceIds": "0,1",
            },
        ),
        (
            SMI,
            {"CUDA_VISIBLE_DEVICES": "1"},
            {
                "GPUs": 1,
                "GPUs_DeviceName": "Tesla V100-SXM2-16GB",
                "GPUs_GlobalMemoryMb": 16160,
                "GPUs_Capability": 7.0,
                "GPUs_DeviceIds": "1",
            },
        ),
        (
            SMI,
            {"CUDA_VISIBLE_DEVICES": "GPU-b"},
            {
                "GPUs": 1,
                "GPUs_DeviceName": "Tesla V100-SXM2-16GB",
                "GPUs_GlobalMemoryMb": 16160,
                "GPUs_Capability": 7.0,
                "GPUs_DeviceIds": "1",
            },
        ),
    ],
)
def test_gpu_attributes(text: str, env: dict[str, str], expected: dict[str, Any]) -> None:
    rows = checks.parse_nvidia_smi(text)
    assert checks.gpu_attributes(rows, checks.visible_devices(env)) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "Driver Version                            : 535.104.05\n"
            "CUDA Version                              : 12.2\n",
            12020,
        ),
        ("CUDA Version : 11.8\n", 11080),
        ("CUDA Version : 10.10\n", 10100),
        ("Driver Version : 535.104.05\n", None),  # an old driver that does not say
        ("CUDA Version : N/A\n", None),
        ("", None),
    ],
)
def test_cuda_version_as_htcondor_encodes_it(text: str, expected: int | None) -> None:
    assert checks.cuda_version(text) == expected


def test_gpu_properties_are_one_ad_per_visible_gpu() -> None:
    rows = checks.parse_nvidia_smi(SMI + "2, GPU-c, NVIDIA A100, 81920, 8.0\n")
    v100 = {"DeviceName": "Tesla V100-SXM2-16GB", "Capability": 7.0, "GlobalMemoryMb": 16160}
    versions = {"MaxSupportedVersion": 12020, "DriverVersion": 12.2}
    assert checks.gpu_properties(rows, None, 12020) == [
        {"Id": "GPU-a", **v100, **versions},
        {"Id": "GPU-b", **v100, **versions},
        {
            "Id": "GPU-c",
            "DeviceName": "NVIDIA A100",
            "Capability": 8.0,
            "GlobalMemoryMb": 81920,
            **versions,
        },
    ]
    # the batch system's CUDA_VISIBLE_DEVICES (index or UUID); no driver version known
    assert checks.gpu_properties(rows, ["2", "GPU-a"], None) == [
        {"Id": "GPU-a", **v100},
        {"Id": "GPU-c", "DeviceName": "NVIDIA A100", "Capability": 8.0, "GlobalMemoryMb": 81920},
    ]
    assert checks.gpu_properties(rows, [], 12020) == []


def test_token_expiry_reads_the_exp_claim_without_verifying() -> None:
    import base64

    payload = base64.urlsafe_b64encode(json.dumps({"exp": 1234}).encode()).rstrip(b"=").decode()
    assert checks.token_expiry(f"e30.{payload}.sig") == 1234.0
    assert checks.token_expiry("not-a-jwt") is None
    assert checks.token_expiry("a.!!!.c") is None


def test_own_cgroup_file_prefers_the_process_cgroup(tmp_path: Path) -> None:
    (tmp_path / "job42").mkdir()
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "job42" / "cpu.max").write_text("200000 100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job42\n")
    assert checks.own_cgroup_file("cpu.max", str(tmp_path), str(proc)) == "200000 100000"
    proc.write_text("0::/elsewhere\n")
    assert checks.own_cgroup_file("cpu.max", str(tmp_path), str(proc)) == "max 100000"


# --------------------------------------------------------------------------- runner


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """A work dir laid out as the bootstrap leaves it: agent/, validation/, glidein_config."""
    work = tmp_path / "work"
    for name in ("agent", "validation"):
        shutil.copytree(GLIDEIN / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    token = tmp_path / "token"
    token.write_text("opaque-token\n")
    (work / "glidein_config").write_text(
        f"GLIDEIN_Work_Dir {work}\nGLIDEIN_Cpus auto\nGLIDEIN_Memory auto\n"
        f"GLIDEIN_Token_File {token}\n"
    )
    yield work


def add_list(work: Path, name: str, lines: str, scripts: dict[str, str]) -> None:
    folder = work / name
    folder.mkdir(exist_ok=True)
    (folder / "scripts.list").write_text(lines)
    for script, text in scripts.items():
        (folder / script).write_text(text)
    with (work / "glidein_config").open("a") as f:
        f.write(f"GLIDEIN_Script_Lists {name}/scripts.list\n")


def run(work: Path) -> list[validation.Result]:
    config = str(work / "glidein_config")
    return validation.run_all(
        validation.discover(str(work), validation.read_values(config)), config, timeout=30
    )


VO_OK = """#!/bin/bash
source "$(dirname "$0")/../validation/gconfig.sh"
echo "order $(basename "$0")" >> "$(dirname "$0")/../order.txt"
gconfig_add VO_SOFTWARE "v1.2 final"
publish_slot VO_SOFTWARE
publish_env VO_SOFTWARE
result_ok "software there: $(gconfig_get GLIDEIN_Cpus) cpus"
"""


def test_scripts_run_by_stage_publish_and_report(work: Path) -> None:
    add_list(
        work,
        "vo",
        "final last.sh\ngroup vo.sh\n",
        {"vo.sh": VO_OK, "last.sh": VO_OK.replace("VO_SOFTWARE", "VO_LAST")},
    )
    results = run(work)
    names = [(r.stage, r.name) for r in results]
    assert names[-2:] == [("group", "vo"), ("final", "last")]
    assert names[0][0] == "factory" and all(r.ok for r in results), results
    assert (work / "order.txt").read_text() == "order vo.sh\norder last.sh\n"
    vo = results[-2]
    assert vo.detail.startswith("software there: ") and vo.detail != "software there:  cpus"
    values = validation.read_values(str(work / "glidein_config"))
    attrs, env = validation.published(values, results)
    assert attrs["VO_SOFTWARE"] == "v1.2 final" and env["VO_SOFTWARE"] == "v1.2 final"
    assert attrs["HAS_CONTAINER"] in (True, False) and isinstance(attrs["GPUs"], int)
    assert values["GLIDEIN_Cpus"].isdigit()  # auto resolved by cpus.py
    assert "GLIDEIN_Cpus" not in attrs  # only what is declared is published


def test_a_failure_stops_the_run_with_its_category(work: Path) -> None:
    failing = (
        '#!/bin/bash\nsource "$(dirname "$0")/../validation/gconfig.sh"\n'
        'result_failed VO_Config "no experiment software"\n'
    )
    add_list(work, "vo", "entry bad.sh\nentry never.sh\n", {"bad.sh": failing, "never.sh": VO_OK})
    results = run(work)
    assert (results[-1].name, results[-1].status, results[-1].category) == (
        "bad",
        "failed",
        "VO_Config",
    )
    assert "never" not in [r.name for r in results]
    assert validation.failure_summary(results) == "entry/bad: VO_Config: no experiment software"


@pytest.mark.parametrize(
    ("script", "status", "category", "detail"),
    [
        ("#!/bin/sh\nexit 0\n", "ok", "", ""),
        ("#!/bin/sh\necho broken >&2\nexit 3\n", "failed", "WN_Resource", "exit status 3: broken"),
        (
            '#!/bin/sh\necho "{not json" > "$GLIDEIN_RESULT_FILE"\n',
            "failed",
            "Corruption",
            "unreadable result file",
        ),
        (
            '#!/bin/sh\necho \'{"status": "failed", "category": "Bogus"}\' > "$GLIDEIN_RESULT_FILE"\n'  # noqa: E501
            "exit 1\n",
            "failed",
            "WN_Resource",
            "",
        ),
    ],
)
def test_results_without_a_proper_result_file(
    work: Path, script: str, status: str, category: str, detail: str
) -> None:
    path = work / "plain"
    path.write_text(script)  # no x bit: the runner sets it (downloads lose it)
    result = validation.run_script(
        validation.Script("plain", str(path), "final"), str(work / "glidein_config"), timeout=30
    )
    assert (result.status, result.category) == (status, category)
    assert result.detail.startswith(detail)


def test_a_script_that_hangs_is_killed_with_its_children(work: Path) -> None:
    path = work / "hang.sh"
    path.write_text("sleep 300 &\necho $! > child.pid\nwait\n")
    result = validation.run_script(
        validation.Script("hang", str(path), "final"), str(work / "glidein_config"), timeout=1
    )
    assert (result.status, result.detail) == ("failed", "timed out after 1s")
    child = int((work / "child.pid").read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel reaps the killed child asynchronously
    assert (
        not Path(f"/proc/{child}").exists()
        or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("later x.sh\n", "STAGE one of factory, entry, group, final"),
        ("factory\n", "expected 'STAGE PATH"),
        ("factory ../x.sh\n", "must stay under"),
        ("factory x.sh every=5\n", "unknown option"),
    ],
)
def test_bad_script_lists_are_refused_with_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        validation.parse_script_list("# header\n" + text, "/w", "vo/scripts.list")
    assert "vo/scripts.list:2" in str(info.value)


def test_skip_and_missing_lists(work: Path) -> None:
    values = {"GLIDEIN_Validation_Skip": "gpus,container"}
    names = [s.name for s in validation.discover(str(work), values)]
    assert "gpus" not in names and "cpus" in names
    assert [s.period for s in validation.discover(str(work), {}) if s.name == "disk"] == [600]
    with pytest.raises(ConfigError, match="does not exist"):
        validation.discover(str(work), {"GLIDEIN_Script_Lists": "nope/scripts.list"})


# --------------------------------------------------------------------------- standard scripts


def standard(work: Path, name: str, **config: Any) -> validation.Result:
    with (work / "glidein_config").open("a") as f:
        for key, value in config.items():
            f.write(f"{key} {value}\n")
    return validation.run_script(
        validation.Script(name, str(work / "validation" / f"{name}.py"), "factory"),
        str(work / "glidein_config"),
        timeout=60,
    )


def values(work: Path) -> dict[str, str]:
    return validation.read_values(str(work / "glidein_config"))


def test_cpus_follow_the_slurm_allocation(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "1")
    result = standard(work, "cpus", GLIDEIN_Cpus="slot")
    assert result.ok and values(work)["GLIDEIN_Cpus"] == "1"
    assert values(work)["GLIDEIN_Cpus_Source"] == "batch (SLURM_CPUS_ON_NODE)"


def test_cpus_slot_without_a_batch_system_is_a_config_failure(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "SLURM_CPUS_ON_NODE",
        "SLURM_JOB_CPUS_PER_NODE",
        "PBS_NUM_PPN",
        "NCPUS",
        "PBS_NP",
        "LSB_MCPU_HOSTS",
        "LSB_DJOB_NUMPROC",
        "NSLOTS",
    ):
        monkeypatch.delenv(name, raising=False)
    result = standard(work, "cpus", GLIDEIN_Cpus="slot")
    assert (result.status, result.category) == ("failed", "Config")


def test_memory_and_disk_minimums_fail_as_wn_resource(work: Path) -> None:
    assert standard(work, "memory", GLIDEIN_Min_Memory_MB=10).ok
    result = standard(work, "memory", GLIDEIN_Min_Memory_MB=10**9)
    assert (result.status, result.category) == ("failed", "WN_Resource")
    assert standard(work, "disk", GLIDEIN_Min_Disk_MB=1).ok
    result = standard(work, "disk", GLIDEIN_Min_Disk_MB=10**12)
    assert (result.category, "GLIDEIN_Min_Disk_MB" in result.detail) == ("WN_Resource", True)


def test_os_requirements(work: Path) -> None:
    assert standard(work, "os_arch").ok and values(work)["GLIDEIN_OS"]
    result = standard(work, "os_arch", GLIDEIN_Required_OS="plan9")
    assert (result.status, result.category) == ("failed", "WN_Resource")


def test_an_expiring_token_is_a_vo_proxy_failure(work: Path, tmp_path: Path) -> None:
    import base64

    def jwt(exp: float) -> str:
        body = base64.urlsafe_b64encode(json.dumps({"exp": exp}).encode()).decode().rstrip("=")
        return f"e30.{body}.c2ln"

    (tmp_path / "token").write_text(jwt(time.time() + 3600))
    assert standard(work, "credential").ok
    assert int(values(work)["GLIDEIN_Token_Expires"]) > time.time()
    (tmp_path / "token").write_text(jwt(time.time() + 10))
    result = standard(work, "credential")
    assert (result.status, result.category) == ("failed", "VO_Proxy")
    assert "jwt" not in result.output and "e30." not in result.detail + result.output


@pytest.fixture
def stand_in_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH directory for stand-ins, ahead of the system's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def test_gpus_from_the_nvidia_smi_stand_in(
    work: Path, stand_in_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nvidia-smi is a STAND-IN script (no GPU here) printing two V100s."""
    (stand_in_path / "nvidia-smi").symlink_to(COMPONENTS / "gpu_nvidia_smi_standin.sh")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    result = standard(work, "gpus")
    assert result.ok, result
    got = values(work)
    assert (got["GPUs"], got["GPUs_DeviceName"], got["GPUs_Capability"]) == (
        "2",
        "Tesla V100-SXM2-16GB",
        "7.0",
    )
    assert got["CUDA_VISIBLE_DEVICES"] == "0,1" and result.job_env == ["CUDA_VISIBLE_DEVICES"]
    assert "GPUs_GlobalMemoryMb" in result.slot_attrs
    # the per-GPU property ads (HTCondor's AvailableGPUs) and the driver's CUDA version
    assert got["CUDAMaxSupportedVersion"] == "12020" and "CUDAMaxSupportedVersion" in (
        result.slot_attrs
    )
    properties = json.loads(got["GLIDEIN_GPUs_Properties"])
    assert [p["Id"] for p in properties] == [
        "GPU-00000000-aaaa-bbbb-cccc-dddddddddddd",
        "GPU-00000001-aaaa-bbbb-cccc-dddddddddddd",
    ]
    assert properties[0] == {
        "Id": "GPU-00000000-aaaa-bbbb-cccc-dddddddddddd",
        "DeviceName": "Tesla V100-SXM2-16GB",
        "Capability": 7.0,
        "GlobalMemoryMb": 16160,
        "MaxSupportedVersion": 12020,
        "DriverVersion": 12.2,
    }
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert standard(work, "gpus").ok and values(work)["GPUs"] == "1"
    [only] = json.loads(values(work)["GLIDEIN_GPUs_Properties"])
    assert only["Id"] == "GPU-00000001-aaaa-bbbb-cccc-dddddddddddd"
    result = standard(work, "gpus", GLIDEIN_GPUs=2)
    assert (result.status, result.category) == ("failed", "WN_Resource")
    monkeypatch.setenv("GPU_STANDIN_FAIL", "1")
    result = standard(work, "gpus")
    assert result.category == "WN_Resource" and "couldn't communicate" in result.detail


def test_container_runtime_bubblewrap_is_found_and_test_run(work: Path) -> None:
    need("bwrap")
    result = standard(work, "container", GLIDEIN_Container_Runtimes="auto")
    assert result.ok, result
    got = values(work)
    assert (got["GLIDEIN_Container_Runtime"], got["HAS_CONTAINER"], got["HAS_SINGULARITY"]) == (
        "bwrap",
        "true",
        "false",
    )
    # bubblewrap is the container runtime: directory images only
    kinds = ("HasContainer", "HasSandboxImage", "HasSIF", "HasDockerURL", "HasDocker")
    assert [got[k] for k in kinds] == ["true", "true", "false", "false", "false"]
    assert set(result.slot_attrs) == {
        "GLIDEIN_Container_Runtime",
        "HAS_CONTAINER",
        "HAS_SINGULARITY",
        "HasSingularity",
        *kinds,
    }


def test_containers_disabled_offer_no_container_to_jobs(work: Path) -> None:
    need("bwrap")
    result = standard(work, "container", GLIDEIN_Container_Use="NEVER")
    assert result.ok, result
    got = values(work)
    assert got["GLIDEIN_Container_Runtime"] == "bwrap"  # validation scripts may still use it
    assert got["HasContainer"] == got["HasSandboxImage"] == got["HAS_CONTAINER"] == "false"


def test_an_entry_narrows_the_container_attributes_but_never_widens_them(work: Path) -> None:
    need("bwrap")
    result = standard(
        work,
        "container",
        GLIDEIN_Container_Runtimes="bwrap",
        HasSandboxImage="false",
        HasSIF="true",
    )
    assert result.ok, result
    got = values(work)
    assert (got["HasContainer"], got["HasSandboxImage"], got["HasSIF"]) == (
        "true",
        "false",
        "false",
    )


def test_container_runtime_prefers_apptainer_stand_in(
    work: Path, stand_in_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apptainer is a STAND-IN (bwrap_apptainer_standin.sh): Apptainer cannot be installed."""
    need("bwrap")
    (stand_in_path / "apptainer").symlink_to(COMPONENTS / "bwrap_apptainer_standin.sh")
    log = tmp_path / "apptainer.log"
    monkeypatch.setenv("APPTAINER_STANDIN_LOG", str(log))
    result = standard(work, "container")
    assert result.ok, result
    got = values(work)
    assert (got["GLIDEIN_Container_Runtime"], got["HAS_SINGULARITY"]) == ("apptainer", "true")
    assert (got["HasSIF"], got["HasSandboxImage"], got["HasDockerURL"]) == ("true", "true", "true")
    assert "--contain --cleanenv" in log.read_text()  # the test run went through it


def test_a_broken_runtime_is_skipped_and_required_containers_fail(
    work: Path, stand_in_path: Path
) -> None:
    broken = stand_in_path / "bwrap"
    broken.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n"
    )
    broken.chmod(0o755)
    result = standard(work, "container", GLIDEIN_Container_Runtimes="bwrap")
    assert result.ok and values(work)["HAS_CONTAINER"] == "false"
    assert values(work)["HasContainer"] == values(work)["HasSandboxImage"] == "false"
    assert "No permissions" in result.detail
    result = standard(work, "container", GLIDEIN_Container_Use="REQUIRED")
    assert (result.status, result.category) == ("failed", "WN_Resource")


def test_the_whole_validation_runs_under_python_39(work: Path) -> None:
    """Worker nodes may only have Python 3.9: the runner and every standard script."""
    import ast
    import subprocess

    from tests.unit.test_glidein_agent import python39

    for path in sorted((GLIDEIN / "validation").glob("*.py")):
        ast.parse(path.read_text(), str(path), feature_version=(3, 9))
    old = python39()
    if old is None:
        pytest.skip("no python3.9 on this machine")
    code = (
        "import json, sys; sys.path.insert(0, '.'); from agent import validation as v\n"
        "r = v.run_all(v.discover('.', v.read_values('glidein_config')), "
        "sys.argv[1], 60)\nprint(json.dumps([(x.name, x.status) for x in r]))"
    )
    out = subprocess.run(
        [old, "-c", code, str(work / "glidein_config")],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    statuses = json.loads(out.stdout)
    assert len(statuses) == 9 and all(status == "ok" for _, status in statuses), statuses
