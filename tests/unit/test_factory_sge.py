"""Grid Engine output parsing and state mapping: tables, no daemons (those are in
tests/integration/test_factory_sge.py)."""

from __future__ import annotations

import pytest

from glidewms.factory.backends.base import BackendError, PilotState
from glidewms.factory.backends.script import walltime
from glidewms.factory.backends.sge import (
    LETTERS,
    parse_marked_arrays,
    parse_qacct,
    parse_qstat_xml,
    sge_state,
)


@pytest.mark.parametrize(
    ("word", "state"),
    [
        ("qw", PilotState.queued),
        ("Rq", PilotState.queued),
        ("hqw", PilotState.held),
        ("hRwq", PilotState.held),
        ("Eqw", PilotState.held),
        ("r", PilotState.running),
        ("t", PilotState.running),
        ("Rr", PilotState.running),
        ("Rt", PilotState.running),
        ("s", PilotState.held),
        ("ts", PilotState.held),
        ("S", PilotState.held),
        ("T", PilotState.held),
        ("dr", PilotState.removed),
        ("dt", PilotState.removed),
        ("dRr", PilotState.removed),
        ("dqw", PilotState.removed),
        ("qwX", PilotState.unknown),
        ("", PilotState.unknown),
    ],
)
def test_state_words(word: str, state: PilotState) -> None:
    assert sge_state(word) is state


def test_every_letter_is_mapped_to_a_real_state() -> None:
    assert set(LETTERS) == set("dEhsSTrtRqw")
    assert PilotState.unknown not in LETTERS.values()


QSTAT = """<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>12</JB_job_number><JB_name>glidewms-e</JB_name><state>r</state>
      <tasks>1</tasks>
    </job_list>
    <job_list state="running">
      <JB_job_number>12</JB_job_number><JB_name>glidewms-e</JB_name><state>dr</state>
      <tasks>2</tasks>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>12</JB_job_number><state>qw</state><tasks>3-7:2</tasks>
    </job_list>
    <job_list state="pending">
      <JB_job_number>13</JB_job_number><state>hqw</state>
    </job_list>
    <job_list state="pending">
      <JB_job_number>14</JB_job_number><state>Eqw</state><tasks>1,4</tasks>
    </job_list>
  </job_info>
</job_info>
"""


def test_qstat_xml_lists_every_task() -> None:
    assert parse_qstat_xml(QSTAT) == {
        "12.1": PilotState.running,
        "12.2": PilotState.removed,
        "12.3": PilotState.queued,
        "12.5": PilotState.queued,
        "12.7": PilotState.queued,
        "13": PilotState.held,
        "14.1": PilotState.held,
        "14.4": PilotState.held,
    }
    assert parse_qstat_xml("<job_info><queue_info/><job_info/></job_info>") == {}
    with pytest.raises(BackendError, match="does not parse"):
        parse_qstat_xml("error: commlib error")


def record(job: int, task: str, failed: str, status: str) -> str:
    return (
        f"{'=' * 62}\nqname        all.q\nowner        wmsuser\njobname      glidewms-e\n"
        f"jobnumber    {job}\ntaskid       {task}\nfailed       {failed}\n"
        f"exit_status  {status}\nru_wallclock 2s\n"
    )


def test_qacct_records() -> None:
    text = (
        record(7, "1", "0", "0")
        + record(7, "2", "0", "3")
        + record(7, "3", "100 : assumedly after job", "137                  (Killed)")
        + record(8, "undefined", "0", "0")
        + record(7, "4", "0", "1")
        + record(7, "4", "0", "0")
    )
    assert parse_qacct(text) == {
        "7.1": PilotState.finished,
        "7.2": PilotState.failed,
        "7.3": PilotState.failed,
        "8": PilotState.finished,
        "7.4": PilotState.finished,  # the newest record of a reused id wins
    }
    assert parse_qacct("") == {}


@pytest.mark.parametrize(
    ("seconds", "text"), [(60, "0:01:00"), (86400, "24:00:00"), (3725, "1:02:05")]
)
def test_walltime(seconds: int, text: str) -> None:
    assert walltime(seconds) == text


MARKED = """<?xml version='1.0'?>
<job_info>
  <queue_info>
    <job_list state="running">
      <JB_job_number>20</JB_job_number><JB_name>glidewms-e-ab-7</JB_name><state>r</state>
      <tasks>2</tasks>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>20</JB_job_number><JB_name>glidewms-e-ab-7</JB_name><state>qw</state>
      <tasks>1,3</tasks>
    </job_list>
    <job_list state="pending">
      <JB_job_number>21</JB_job_number><JB_name>glidewms-other-ab-1</JB_name><state>qw</state>
      <tasks>1</tasks>
    </job_list>
    <job_list state="pending">
      <JB_job_number>22</JB_job_number><JB_name>someone</JB_name><state>qw</state>
    </job_list>
  </job_info>
</job_info>
"""


def test_marked_arrays_of_an_entry_from_qstat() -> None:
    """An array named glidewms-<first glidein id>: its tasks in task order (10 after 9)."""
    assert parse_marked_arrays(MARKED, "e") == {"e-ab-7": ["20.1", "20.2", "20.3"]}
    assert parse_marked_arrays(MARKED, "other") == {"other-ab-1": ["21.1"]}
