"""The user log format: every event the pool records, rendered, and read
back by HTCondor's own reader (htcondor2.JobEventLog)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from glidewms.classads import import_htcondor
from glidewms.userlog import one_line, render, render_all, submit_host

htcondor2 = import_htcondor()
T0 = 1_800_000_000.0


def read(path: Path) -> list:
    return list(htcondor2.JobEventLog(str(path)).events(0))


@pytest.mark.parametrize(
    ("event", "code", "expected"),
    [
        ({"type": "submitted", "detail": {"owner": "alice"}}, 0, {"SubmitHost": "<pool:9618>"}),
        (
            {"type": "started", "detail": {"pilot": "p-1", "site": "S"}},
            1,
            {"ExecuteHost": "<0.0.0.0:0?alias=p-1>", "SlotName": "slot1@p-1"},
        ),
        (
            {"type": "completed", "detail": {"exit_code": 3}},
            5,
            {"TerminatedNormally": True, "ReturnValue": 3},
        ),
        (
            {"type": "completed", "detail": {"exit_code": -9}},
            5,
            {"TerminatedNormally": False, "TerminatedBySignal": 9},
        ),
        (
            {"type": "requeued", "detail": {"exit_code": 1, "reason": "max_retries: 1 of 3"}},
            4,
            {"TerminatedAndRequeued": True, "TerminatedNormally": True, "ReturnValue": 1},
        ),
        (
            {"type": "evicted", "detail": {"reason": "pilot lost", "failure": "site"}},
            4,
            {"Checkpointed": False, "TerminatedAndRequeued": False},
        ),
        (
            {"type": "held", "detail": {"by": "alice", "reason": "wait", "code": 1}},
            12,
            {"HoldReason": "wait", "HoldReasonCode": 1, "HoldReasonSubCode": 0},
        ),
        (
            {"type": "held", "detail": {"by": "pool", "reason": "", "code": 3, "subcode": 7}},
            12,
            {"HoldReason": "held by pool", "HoldReasonCode": 3, "HoldReasonSubCode": 7},
        ),
        ({"type": "released", "detail": {"by": "alice", "reason": "go"}}, 13, {"Reason": "go"}),
        (
            {"type": "removed", "detail": {"by": "alice", "reason": ""}},
            9,
            {"Reason": "via glidewms rm (by alice)"},
        ),
    ],
)
def test_each_event_reads_back_as_htcondor_s(tmp_path, event, code, expected):
    text = render(42, 7, {**event, "time": T0}, "<pool:9618>")
    assert text is not None and text.endswith("\n...\n")
    log = tmp_path / "job.log"
    log.write_text(text)
    (got,) = read(log)
    assert (int(got.type), got.cluster, got.proc) == (code, 42, 7)
    assert got.timestamp == int(T0)
    for key, value in expected.items():
        assert got[key] == value, key


def test_events_without_a_user_log_event_are_left_out():
    assert render(1, 0, {"type": "edited", "time": T0, "detail": {}}) is None
    # the requeue that follows an eviction is not a second event
    assert render(1, 0, {"type": "requeued", "time": T0, "detail": {"num_restarts": 1}}) is None


def test_outside_text_cannot_end_an_event_or_forge_one(tmp_path):
    forged = "x\n...\n005 (001.000.000) 2020-01-01 00:00:00 Job terminated.\n"
    log = tmp_path / "job.log"
    log.write_text(
        "".join(
            t
            for _, _, t in render_all(
                1,
                [
                    {
                        "id": 1,
                        "proc_id": 0,
                        "type": "held",
                        "time": T0,
                        "detail": {"reason": forged},
                    },
                    {"id": 2, "proc_id": 0, "type": "removed", "time": T0, "detail": {}},
                ],
            )
        )
    )
    events = read(log)
    assert [int(e.type) for e in events] == [12, 9]
    assert "\n" not in events[0]["HoldReason"]
    assert len(one_line("y" * 5000)) == 1024


def test_a_cluster_s_jobs_share_one_log_in_event_order(tmp_path):
    events = [
        {"id": 1, "proc_id": 0, "type": "submitted", "time": T0, "detail": {}},
        {"id": 2, "proc_id": 1, "type": "submitted", "time": T0, "detail": {}},
        {"id": 3, "proc_id": 1, "type": "started", "time": T0 + 1, "detail": {"pilot": "a"}},
        {"id": 4, "proc_id": 1, "type": "edited", "time": T0 + 1, "detail": {}},
        {"id": 5, "proc_id": 1, "type": "completed", "time": T0 + 2, "detail": {"exit_code": 0}},
    ]
    rendered = render_all(12, events)
    assert [(i, p) for i, p, _ in rendered] == [(1, 0), (2, 1), (3, 1), (5, 1)]
    log = tmp_path / "c.log"
    log.write_text("".join(t for *_, t in rendered))
    assert [(int(e.type), e.proc) for e in read(log)] == [(0, 0), (0, 1), (1, 1), (5, 1)]


def test_times_are_local_as_htcondor_writes_them():
    text = render(1, 0, {"type": "submitted", "time": T0, "detail": {}}, localtime=time.gmtime)
    assert text is not None and text.startswith("000 (001.000.000) 2027-01-15 08:00:00 ")


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://127.0.0.1:9618", "<127.0.0.1:9618>"),
        ("https://pool.example.org", "<pool.example.org:443>"),
        ("http://[::1]:80", "<::1:80>"),
    ],
)
def test_submit_host(url, host):
    assert submit_host(url) == host
