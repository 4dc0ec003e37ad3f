"""PBS and LSF output parsing and state maps: tables, no commands."""

from __future__ import annotations

import json
from typing import Any

import pytest

from glidewms.config.factory import EntryConfig
from glidewms.factory.backends.base import BackendContext, BackendError, PilotState
from glidewms.factory.backends.lsf import STATE_MAP as LSF_MAP
from glidewms.factory.backends.lsf import LsfBackend, parse_bjobs
from glidewms.factory.backends.pbs import PbsBackend, parse_qstat_json, pbs_state


@pytest.mark.parametrize(
    ("job", "state"),
    [
        ({"job_state": "Q"}, PilotState.queued),
        ({"job_state": "W"}, PilotState.queued),
        ({"job_state": "H"}, PilotState.held),
        ({"job_state": "S"}, PilotState.held),
        ({"job_state": "R"}, PilotState.running),
        ({"job_state": "E"}, PilotState.running),
        ({"job_state": "F", "Exit_status": 0}, PilotState.finished),
        ({"job_state": "X", "Exit_status": 3}, PilotState.failed),
        ({"job_state": "F", "Exit_status": -3}, PilotState.failed),
        ({"job_state": "F"}, PilotState.removed),
        ({"job_state": "Z"}, PilotState.unknown),
    ],
)
def test_pbs_states(job: dict[str, Any], state: PilotState) -> None:
    assert pbs_state(job) is state


def test_qstat_json_skips_array_parents() -> None:
    text = json.dumps(
        {
            "pbs_version": "19.1.3",
            "Jobs": {
                "12[].srv": {"job_state": "B"},
                "12[0].srv": {"job_state": "R"},
                "12[1].srv": {"job_state": "X", "Exit_status": 0},
                "13.srv": {"job_state": "Q"},
            },
        }
    )
    assert parse_qstat_json(text) == {
        "12[0].srv": PilotState.running,
        "12[1].srv": PilotState.finished,
        "13.srv": PilotState.queued,
    }
    assert parse_qstat_json("") == {}
    with pytest.raises(BackendError):
        parse_qstat_json("qstat: not json")


def test_bjobs_lines() -> None:
    text = "7|RUN|-|1\n7|DONE|-|2\n7|EXIT|3|3\n8|PSUSP|-|0\n9|UNKWN|-|1\nJob <5> is not found\n"
    assert parse_bjobs(text) == {
        "7[1]": PilotState.running,
        "7[2]": PilotState.finished,
        "7[3]": PilotState.failed,
        "8": PilotState.held,
        "9[1]": PilotState.unknown,
    }
    assert set(LSF_MAP) == {
        "PEND",
        "WAIT",
        "PROV",
        "PSUSP",
        "USUSP",
        "SSUSP",
        "RUN",
        "DONE",
        "EXIT",
        "ZOMBI",
        "UNKWN",
    }


def test_log_names(tmp_path: Any) -> None:
    entry = EntryConfig(name="e1", site="S", backend="pbs")
    context = BackendContext(state_dir=tmp_path, bootstrap=tmp_path / "b")
    assert PbsBackend(context).log_names(entry, "12[3].srv") == (
        "glidewms-e1.o12.3",
        "glidewms-e1.e12.3",
    )
    assert PbsBackend(context).log_names(entry, "13.srv") == ("glidewms-e1.o13", "glidewms-e1.e13")
    assert LsfBackend(context).log_names(entry, "7[2]") == ("7.2.out", "7.2.err")
