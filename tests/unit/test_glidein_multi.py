"""Several pilots per batch job (``--multi``): each one's share of the node.

Pure decisions by tables; the gpus script runs for real against the
nvidia-smi STAND-IN (tests/components/gpu_nvidia_smi_standin.sh: no GPU here).
The srun launch itself is tested against a real Slurm in
tests/integration/test_glidein_srun.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from glidewms.glidein.agent.config import build_config
from glidewms.glidein.agent.container import gpu_device_files
from glidewms.glidein.agent.resources import detect_resources, node_share, slot_ad
from glidewms.glidein.validation import checks
from tests.unit.test_glidein_validation import COMPONENTS, GLIDEIN, standard, values
from tests.unit.test_glidein_validation import stand_in_path as stand_in_path  # fixture
from tests.unit.test_glidein_validation import work as work  # fixture

SCRIPT = GLIDEIN / "bootstrap" / "glidein_startup.sh"


@pytest.mark.parametrize(
    ("devices", "count", "index", "mine"),
    [
        (["0", "1", "2", "3"], 2, 0, ["0", "1"]),
        (["0", "1", "2", "3"], 2, 1, ["2", "3"]),
        (["0", "1", "2"], 2, 0, ["0", "1"]),
        (["0", "1", "2"], 2, 1, ["2"]),
        (["0"], 3, 2, []),
        (["5", "7"], 1, 0, ["5", "7"]),
        ([], 4, 0, []),
    ],
)
def test_gpu_share_gives_each_pilot_its_own_block(
    devices: list[str], count: int, index: int, mine: list[str]
) -> None:
    assert checks.gpu_share(devices, count, index) == mine


def test_gpu_shares_cover_every_device_once() -> None:
    devices = [str(i) for i in range(7)]
    shares = [checks.gpu_share(devices, 3, i) for i in range(3)]
    assert [d for share in shares for d in share] == devices


@pytest.mark.parametrize(
    ("values", "share"),
    [
        ({}, (1, 0)),
        ({"GLIDEIN_Multi_Count": "4", "GLIDEIN_Multi_Index": "3"}, (4, 3)),
        (
            {
                "GLIDEIN_Multi_Count": "4",
                "GLIDEIN_Multi_Index": "3",  # srun: 2 of 4 on this node
                "GLIDEIN_Multi_Local_Count": "2",
                "GLIDEIN_Multi_Local_Index": "1",
            },
            (2, 1),
        ),
        ({"GLIDEIN_Multi_Count": "2", "GLIDEIN_Multi_Index": "5"}, (1, 0)),  # inconsistent
        ({"GLIDEIN_Multi_Count": "x", "GLIDEIN_Multi_Index": "0"}, (1, 0)),
    ],
)
def test_node_share_prefers_the_pilots_on_this_node(
    values: dict[str, str], share: tuple[int, int]
) -> None:
    assert checks.node_share(values) == share == node_share(values)


def config(tmp_path: Path, **values: Any) -> Any:
    base = {
        "GLIDEIN_Pool_URL": "http://pool",
        "GLIDEIN_Id": "g-1-3",
        "GLIDEIN_Token_File": "/dev/null",
        "GLIDEIN_Work_Dir": str(tmp_path),
        "GLIDEIN_Cpus": "8",
        "GLIDEIN_Memory": "8000",
        **values,
    }
    return build_config({k: str(v) for k, v in base.items()}, str(tmp_path))


def test_srun_pilots_split_only_among_the_pilots_of_their_node(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        GLIDEIN_Multi_Count=4,
        GLIDEIN_Multi_Index=3,
        GLIDEIN_Multi_Local_Count=2,
        GLIDEIN_Multi_Local_Index=1,
        GPUs=2,
        GLIDEIN_GPUs_Assigned="true",
    )
    share = detect_resources(cfg)
    assert (share.cpus, share.memory, share.gpus) == (4, 4000, 2)  # GPUs already its own
    ad = slot_ad(cfg, share, 0.0, os_release={})
    assert (ad["GLIDEIN_Multi_Count"], ad["GLIDEIN_Multi_Index"]) == (4, 3)


def test_unassigned_gpus_are_still_split(tmp_path: Path) -> None:
    cfg = config(tmp_path, GLIDEIN_Multi_Count=2, GLIDEIN_Multi_Index=1, GPUs=3)
    assert detect_resources(cfg).gpus == 1


@pytest.mark.parametrize(
    ("visible", "kept"),
    [
        (
            None,
            ["/dev/nvidia-uvm", "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia2", "/dev/nvidiactl"],
        ),
        ("2", ["/dev/nvidia-uvm", "/dev/nvidia2", "/dev/nvidiactl"]),
        ("0,1", ["/dev/nvidia-uvm", "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl"]),
        ("", ["/dev/nvidia-uvm", "/dev/nvidiactl"]),
        (
            "GPU-aaa",
            ["/dev/nvidia-uvm", "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia2", "/dev/nvidiactl"],
        ),
    ],
)
def test_a_job_container_gets_only_its_pilots_gpu_devices(
    visible: str | None, kept: list[str]
) -> None:
    found = ["/dev/nvidia2", "/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm", "/dev/nvidia1"]
    assert list(gpu_device_files(found, visible)) == kept


@pytest.mark.parametrize(
    ("count", "index", "gpus", "cuda"),
    [
        ("2", "0", "2", "0,1"),
        ("2", "1", "1", "2"),
        ("4", "3", "0", ""),
    ],
)
def test_each_local_pilot_takes_its_gpus_from_the_stand_in(
    work: Path,
    stand_in_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    count: str,
    index: str,
    gpus: str,
    cuda: str,
) -> None:
    """Three GPUs from the nvidia-smi STAND-IN; jobs get CUDA_VISIBLE_DEVICES."""
    (stand_in_path / "nvidia-smi").symlink_to(COMPONENTS / "gpu_nvidia_smi_standin.sh")
    monkeypatch.setenv("GPU_STANDIN_COUNT", "3")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    result = standard(work, "gpus", GLIDEIN_Multi_Count=count, GLIDEIN_Multi_Index=index)
    assert result.ok, result
    got = values(work)
    assert (got["GPUs"], got["CUDA_VISIBLE_DEVICES"], got["GLIDEIN_GPUs_Node"]) == (gpus, cuda, "3")
    assert got["GLIDEIN_GPUs_Assigned"] == "true" and "CUDA_VISIBLE_DEVICES" in result.job_env


def test_pilots_split_the_batch_systems_cuda_visible_devices(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No nvidia-smi: the batch system's list alone is split."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    result = standard(work, "gpus", GLIDEIN_Multi_Count="2", GLIDEIN_Multi_Index="1")
    assert result.ok, result
    assert (values(work)["GPUs"], values(work)["CUDA_VISIBLE_DEVICES"]) == ("2", "6,7")


def test_the_launcher_is_checked(tmp_path: Path) -> None:
    """A bad --multi-launch is a usage error; srun outside an allocation fails the pilot."""
    token = tmp_path / "token"
    token.write_text("t\n")
    token.chmod(0o600)
    (tmp_path / "scratch").mkdir()
    base = [
        "bash",
        str(SCRIPT),
        "--no-factory",
        "--pool",
        "http://127.0.0.1:1",
        "--stage-dir",
        str(GLIDEIN),
        "--work-dir",
        str(tmp_path / "scratch"),
        "--multi",
        "2",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(GLIDEIN_TOKEN_FILE=str(token), GLIDEIN_PYTHON=sys.executable)
    bad = subprocess.run(
        [*base, "--multi-launch", "mpirun"], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "--multi-launch: auto, srun or local" in bad.stderr
    outside = subprocess.run(
        [*base, "--multi-launch", "srun"], env=env, capture_output=True, text=True, timeout=60
    )
    assert outside.returncode == 1 and "not in a Slurm job" in outside.stderr
    assert list((tmp_path / "scratch").iterdir()) == []
