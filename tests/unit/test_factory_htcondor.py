"""The HTCondor backend's pure parts: the state map, the submit description, the entry
fields (errors name the file and the key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from glidewms.config import ConfigError
from glidewms.config.factory import EntryConfig, load_factory_config
from glidewms.factory.backends import PilotState
from glidewms.factory.backends.htcondor import condor_state, quote_arguments, submit_description
from glidewms.factory.backends.script import PilotArray
from tests.components.condor_schedd_standin import expand, split_new_syntax

Q, R, H, F, X, D = (
    PilotState.queued,
    PilotState.running,
    PilotState.held,
    PilotState.finished,
    PilotState.failed,
    PilotState.removed,
)


@pytest.mark.parametrize(
    ("ad", "state"),
    [
        ({"JobStatus": 1}, Q),
        ({"JobStatus": 1, "GridJobStatus": "IDLE"}, Q),
        ({"JobStatus": 1, "GridJobStatus": "running"}, R),  # the CE started it
        ({"JobStatus": 2, "GridJobStatus": "IDLE"}, Q),  # local Running, idle at the CE
        ({"JobStatus": 2, "GridJobStatus": "HELD"}, H),  # held at the CE
        ({"JobStatus": 2, "GridJobStatus": "COMPLETED"}, R),  # local status decides ends
        ({"JobStatus": 2, "GridJobStatus": "NEW_STATE"}, R),  # unknown remote: local one
        ({"JobStatus": 2}, R),
        ({"JobStatus": 3}, D),
        ({"JobStatus": 4, "ExitCode": 0}, F),
        ({"JobStatus": 4}, F),
        ({"JobStatus": 4, "ExitCode": 3}, X),
        ({"JobStatus": 4, "ExitCode": 0, "ExitBySignal": True}, X),
        ({"JobStatus": 5, "HoldReason": "proxy expired"}, H),
        ({"JobStatus": 5, "GridJobStatus": "RUNNING"}, H),  # held locally: held
        ({"JobStatus": 6}, R),
        ({"JobStatus": 7}, H),
        ({"JobStatus": 9}, PilotState.unknown),
        ({}, PilotState.unknown),
    ],
)
def test_job_ad_to_pilot_state(ad: dict[str, Any], state: PilotState) -> None:
    assert condor_state(ad) is state


@pytest.mark.parametrize(
    "words",
    [
        ["--x", "y"],
        ["a b", "it's", 'say "hi"', "$HOME", "$(Cluster)", "", "''"],
        ["--attr", 'GLIDEIN_Start=(TARGET.VO =?= "cms") && $(x)'],
    ],
)
def test_arguments_survive_htcondor_quoting(words: list[str]) -> None:
    """What the stand-in splits (HTCondor's rules, after macro expansion) is what went in."""
    assert split_new_syntax(expand(f'"{quote_arguments(words)}"', 1, 0)) == words


def entry(**condor: Any) -> EntryConfig:
    return EntryConfig.model_validate(
        {
            "name": "ce1",
            "site": "S",
            "backend": "htcondor",
            "cpus": 8,
            "memory": 16000,
            "walltime": 7200,
            "environment": {"SITECONF": "/cvmfs/x y"},
            "batch": {"queue": "grid"},
            "condor": {"ce_host": "ce.example.org", **condor},
        }
    )


def test_submit_description_routes_to_the_ce_and_marks_every_pilot(tmp_path: Path) -> None:
    token = tmp_path / "fe1" / "main.token"
    array = PilotArray(
        ("--factory", "http://f", "--attr", "A=it's"), ("ce1-ab-1", "ce1-ab-2"), token
    )
    d = submit_description(
        entry(x509=tmp_path / "proxy", submit={"+Owner_VO": '"cms"'}),
        array,
        bootstrap=Path("/b/glidein_startup.sh"),
        log_dir="/logs",
    )
    assert d["universe"] == "grid"
    assert d["grid_resource"] == "condor ce.example.org ce.example.org:9619"
    assert d["executable"] == "/b/glidein_startup.sh"
    assert d["transfer_input_files"] == str(token)
    assert d["+GlideWMS_Entry"] == '"ce1"' and d["+GlideWMS_Factory"] == '"glidewms"'
    assert d["+queue"] == '"grid"' and d["+xcount"] == "8" and d["+maxWallTime"] == "120"
    assert d["x509userproxy"] == str(tmp_path / "proxy") and d["+Owner_VO"] == '"cms"'
    for proc, gid in enumerate(array.glidein_ids):
        assert expand(d["+GlideWMS_GlideinId"], 7, proc) == f'"{gid}"'
        assert split_new_syntax(expand(d["arguments"], 7, proc)) == [
            *array.arguments,
            "--glidein-id",
            gid,
        ]
        env = split_new_syntax(expand(d["environment"], 7, proc))
        assert sorted(env) == ["GLIDEIN_TOKEN_FILE=main.token", "SITECONF=/cvmfs/x y"]
    assert expand(d["output"], 7, 1) == "/logs/7.1.out"


def test_batch_grid_type() -> None:
    e = entry(grid_type="batch", batch_system="slurm", remote="pilots@login.example.org")
    d = submit_description(
        e, PilotArray((), ("g-1",), Path("/t/x.token")), bootstrap=Path("/b"), log_dir="/l"
    )
    assert d["grid_resource"] == "batch slurm pilots@login.example.org"
    assert d["batch_queue"] == "grid" and "+queue" not in d


@pytest.mark.parametrize(
    ("condor", "key", "words"),
    [
        (None, "entries[0]", "backend htcondor needs a `condor:` section"),
        ({}, "entries[0].condor", "needs ce_host"),
        ({"ce_host": "ce example.org"}, "entries[0].condor.ce_host", "expected a host name"),
        (
            {"ce_host": "ce.example.org", "ce_port": 70000},
            "entries[0].condor.ce_port",
            "less than or equal",
        ),
        ({"ce_host": "c", "x509": "proxy.pem"}, "entries[0].condor.x509", "absolute path"),
        ({"ce_host": "c", "scitoken": "t"}, "entries[0].condor.scitoken", "absolute path"),
        ({"grid_type": "batch"}, "entries[0].condor", "needs batch_system"),
        (
            {"grid_type": "batch", "batch_system": "slurm", "remote": "a b@h"},
            "entries[0].condor.remote",
            "[user@]host",
        ),
        ({"ce_host": "c", "schedd": "my schedd"}, "entries[0].condor.schedd", "'local' or"),
        ({"ce_host": "c", "collector": "cm:port"}, "entries[0].condor.collector", "host[:port]"),
        ({"ce_host": "c", "submit": {"bad key": "1"}}, "entries[0].condor.submit", "+MyAttr"),
        ({"ce_host": "c", "tokens": "x"}, "entries[0].condor.tokens", "Extra inputs"),
    ],
)
def test_condor_fields_are_checked(
    tmp_path: Path, condor: dict[str, Any] | None, key: str, words: str
) -> None:
    import yaml

    fields: dict[str, Any] = {"name": "a", "site": "S", "backend": "htcondor"}
    if condor is not None:
        fields["condor"] = condor
    path = tmp_path / "factory.yaml"
    path.write_text(yaml.safe_dump({"entries": [fields]}))
    with pytest.raises(ConfigError) as info:
        load_factory_config(path)
    message = str(info.value)
    assert str(path) in message and f"  {key}: " in message and words in message


def test_a_valid_condor_entry_loads(tmp_path: Path) -> None:
    e = entry(
        ce_port=9620,
        schedd="schedd@fact.example.org",
        collector="cm.example.org:9618",
        scitoken="/etc/glidewms/ce.token",
    )
    assert e.condor is not None and e.condor.ce_port == 9620
