"""Pure parts of the batch backends: arrays, the job script, Slurm's state map,
and the check that every entry's backend exists."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import get_args

import pytest

from glidewms.config.factory import BackendKind, EntryConfig, FactoryConfig
from glidewms.config.loader import ConfigError
from glidewms.factory.backends import BACKENDS, PilotState, PilotSubmission
from glidewms.factory.backends.base import BackendContext
from glidewms.factory.backends.script import (
    PilotArray,
    common_arguments,
    pilot_arrays,
    render,
    render_script,
)
from glidewms.factory.backends.shell import read_tail
from glidewms.factory.backends.slurm import STATE_MAP, SlurmBackend, parse_squeue, slurm_state
from glidewms.factory.main import check_backends


def sub(gid: str, *extra: str, token: str = "/t") -> PilotSubmission:
    return PilotSubmission(gid, ("--entry", "e", "--glidein-id", gid, *extra), Path(token))


def test_common_arguments_drop_only_the_own_id() -> None:
    assert common_arguments(sub("g1", "--attr", "X=g1")) == ("--entry", "e", "--attr", "X=g1")


def test_arrays_keep_order_split_by_size_and_by_arguments() -> None:
    pilots = [sub("a"), sub("b"), sub("c"), sub("d", "--x"), sub("e"), sub("f", token="/u")]
    arrays = pilot_arrays(pilots, max_size=2)
    assert [a.glidein_ids for a in arrays] == [("a", "b"), ("c",), ("d",), ("e",), ("f",)]
    flat = [g for a in arrays for g in a.glidein_ids]
    assert flat == [p.glidein_id for p in pilots]


def test_render_refuses_missing_and_unused_values() -> None:
    assert render("a @@X@@ b", {"X": "1"}) == "a 1 b"
    with pytest.raises(KeyError, match="@@Y@@"):
        render("@@Y@@", {})
    with pytest.raises(KeyError, match="Z"):
        render("plain", {"Z": "1"})


def test_job_script_picks_the_glidein_by_task_and_hides_the_token(tmp_path: Path) -> None:
    """Run the rendered script with bash for each task index: the right id, the token
    file exported (not its content), the site environment set, argv quoted."""
    bootstrap = (
        'printf "%s\\n" "$@" > "$OUT.$SLURM_ARRAY_TASK_ID"; echo "$SITE" >> '
        '"$OUT.$SLURM_ARRAY_TASK_ID"; echo "$GLIDEIN_TOKEN_FILE" >> '
        '"$OUT.$SLURM_ARRAY_TASK_ID"\n'
    )
    array = PilotArray(("--attr", "A=b c", "--x"), ("g0", "g1"), Path("/tmp/tok en"))
    script = render_script(
        array,
        directives=["#SBATCH --array=0-1"],
        task_index=SlurmBackend.task_index,
        job_ref=SlurmBackend.job_ref,
        token_file="/tmp/tok en",
        bootstrap=bootstrap,
        environment={"SITE": "it's here"},
    )
    assert script.startswith("#!/bin/bash\n#SBATCH --array=0-1\n")
    out = tmp_path / "out"
    for task in (0, 1):
        env = {"PATH": "/usr/bin:/bin", "OUT": str(out), "SLURM_ARRAY_TASK_ID": str(task)}
        done = subprocess.run(
            ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, done.stderr
        lines = (tmp_path / f"out.{task}").read_text().splitlines()
        assert lines == [
            "--attr",
            "A=b c",
            "--x",
            "--glidein-id",
            f"g{task}",
            "it's here",
            "/tmp/tok en",
        ]
    bad = subprocess.run(
        ["bash", "-c", script],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 64 and "outside" in bad.stderr


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        ("PENDING", "Resources", PilotState.queued),
        ("PENDING", "JobHeldUser", PilotState.held),
        ("PENDING", "JobHeldAdmin", PilotState.held),
        ("RUNNING", "None", PilotState.running),
        ("COMPLETED", "", PilotState.finished),
        ("CANCELLED by 0", "", PilotState.removed),
        ("CANCELLED+", "", PilotState.removed),
        ("FAILED", "NonZeroExitCode", PilotState.failed),
        ("TIMEOUT", "", PilotState.failed),
        ("NODE_FAIL", "", PilotState.failed),
        ("OUT_OF_MEMORY", "", PilotState.failed),
        ("SUSPENDED", "", PilotState.held),
        ("REQUEUED", "", PilotState.queued),
        ("SOMETHING_NEW", "", PilotState.unknown),
        ("", "", PilotState.unknown),
    ],
)
def test_slurm_states(state: str, reason: str, expected: PilotState) -> None:
    assert slurm_state(state, reason) is expected


def test_every_slurm_state_is_mapped_to_a_real_pilot_state() -> None:
    documented = {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "CONFIGURING",
        "COMPLETING",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PENDING",
        "PREEMPTED",
        "RUNNING",
        "RESV_DEL_HOLD",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "REQUEUED",
        "RESIZING",
        "REVOKED",
        "SIGNALING",
        "SPECIAL_EXIT",
        "STAGE_OUT",
        "STOPPED",
        "SUSPENDED",
        "TIMEOUT",
    }
    assert set(STATE_MAP) == documented
    assert PilotState.unknown not in STATE_MAP.values()


def test_parse_squeue() -> None:
    text = "12_0|RUNNING|None\n12_1|PENDING|Priority\n\n13|CANCELLED|None\n"
    assert parse_squeue(text) == {
        "12_0": PilotState.running,
        "12_1": PilotState.queued,
        "13": PilotState.removed,
    }


def test_unimplemented_backend_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every backend the entry schema accepts is implemented; were one not, the
    factory would refuse to start, naming the entry."""
    for kind in get_args(BackendKind):
        check_backends(
            FactoryConfig(
                entries=[
                    EntryConfig(
                        name="a",
                        site="S",
                        backend=kind,
                        ssh={"host": "h", "user": "u", "key_file": "/k"} if kind == "ssh" else None,
                        condor={"ce_host": "ce.example.org"} if kind == "htcondor" else None,
                    )
                ]
            ),
            "f.yaml",
        )
    monkeypatch.delitem(BACKENDS, "pbs")
    config = FactoryConfig(entries=[EntryConfig(name="a", site="S", backend="pbs")])
    with pytest.raises(ConfigError, match=r"entries\[0\]\.backend: 'pbs' is not implemented"):
        check_backends(config, "f.yaml")


def test_entry_batch_and_environment_validation() -> None:
    with pytest.raises(ValueError, match="single word"):
        EntryConfig(name="a", site="S", batch={"queue": "a b"})
    with pytest.raises(ValueError, match="shell identifier"):
        EntryConfig(name="a", site="S", environment={"1X": "y"})
    with pytest.raises(ValueError, match="ssh"):
        EntryConfig(name="a", site="S", backend="ssh")
    with pytest.raises(ValueError, match="command_prefix needs log_dir"):
        EntryConfig(name="a", site="S", batch={"command_prefix": ["runuser", "-u", "x", "--"]})
    EntryConfig(
        name="a",
        site="S",
        batch={"command_prefix": ["runuser", "-u", "x", "--"], "log_dir": "/srv/pilot-logs"},
    )


def test_slurm_pilots_get_their_drain_signal_in_the_batch_script_before_the_walltime() -> None:
    entry = EntryConfig.model_validate(
        {"name": "e", "site": "S", "backend": "slurm", "walltime": 3600}
    )
    array = PilotArray(("--x",), ("g0", "g1"), Path("/t"))
    backend = SlurmBackend(BackendContext(Path("/s"), Path("/b")))
    lines = backend.directives(entry, array, "/l")
    assert "#SBATCH --signal=B:TERM@120" in lines and "#SBATCH --time=60" in lines
    short = entry.model_copy(update={"walltime": 600})
    assert not any("--signal" in line for line in backend.directives(short, array, "/l"))


def test_read_tail_keeps_the_end_of_a_log(tmp_path: Path) -> None:
    """One reader for every local log (local backend, local shell): the end, decoded."""
    log = tmp_path / "pilot.out"
    log.write_bytes(b"first line\nlast \xff line\n")
    assert read_tail(log, limit=9) == "t \ufffd line\n"  # the last 9 bytes, one not UTF-8
    assert read_tail(log) == "first line\nlast \ufffd line\n"
    assert read_tail(tmp_path / "missing.out") == ""
