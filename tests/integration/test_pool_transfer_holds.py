"""Transfer failures a pilot reports hold the job, as HTCondor holds it
(docs/pool.md): the store on SQLite and PostgreSQL, then the pilot's cycle
route with the fields it carries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from glidewms.db import make_engine, sqlite_url
from glidewms.pool.exit import Completion
from glidewms.pool.jobs import NewJob, execution_spec
from glidewms.pool.pilots import PilotOwner
from glidewms.pool.store import PoolStore
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401

AD = (
    '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 10; Requirements = true; '
    'TransferOutput = "a.txt,res"; TransferInput = "https://h/in.dat"; '
    "OnExitHold = true ]"  # a transfer hold comes before the exit policy
)
SLOT = {"Cpus": 1, "Memory": 100, "Disk": 100}
FREE = {"cpus": 1, "memory": 100, "disk": 100, "gpus": 0}


@pytest.fixture
def store(tmp_path: Path, database_url: str | None) -> Iterator[PoolStore]:  # noqa: F811
    url = database_url or sqlite_url(tmp_path / "pool.sqlite")
    store = PoolStore(make_engine(url))
    yield store
    store.close()


def _claimed(store: PoolStore) -> tuple[str, str, dict[str, object]]:
    _, [jid] = store.queue.submit("alice", [NewJob(AD, [], [], {})])
    pilot = store.pilots.register(dict(SLOT), "g1", PilotOwner("pilot", "fe", "main"), 3600)
    _, [claim], _ = store.turns.cycle(pilot, [], dict(FREE), 60, 1, 0.0)
    return jid, pilot, claim


def test_a_missing_output_holds_with_code_12(store: PoolStore) -> None:
    jid, pilot, claim = _claimed(store)
    job = claim["job"]
    assert isinstance(job, dict)
    assert job["transfer_output"] == ["a.txt", "res"]
    assert job["input_urls"] == ["https://h/in.dat"]
    done = Completion(
        str(claim["claim_id"]),
        0,
        [{"name": "res/x", "sha256": "0" * 64}],
        missing_outputs=["a.txt"],
    )
    store.turns.cycle(pilot, [done], dict(FREE), 60, 0, 0.0)
    row = store.queue.get_job(jid)
    assert (row.state, row.hold_code, row.exit_code) == ("held", 12, 0)
    assert "'a.txt'" in row.hold_reason
    assert [o["name"] for o in row.outputs] == ["res/x"]
    [held] = [e for e in store.queue.job_events(jid) if e["type"] == "held"]
    assert held["detail"]["by"] == "transfer_output" and held["detail"]["subcode"] == 2


def test_an_input_that_cannot_be_fetched_holds_with_code_13(store: PoolStore) -> None:
    jid, pilot, claim = _claimed(store)
    failed = Completion(
        str(claim["claim_id"]),
        0,
        input_error={"reason": "https://h/in.dat: HTTP 404 Not Found", "subcode": 5},
    )
    store.turns.cycle(pilot, [failed], dict(FREE), 60, 0, 0.0)
    row = store.queue.get_job(jid)
    assert (row.state, row.hold_code, row.exit_code) == ("held", 13, None)
    assert row.hold_reason == "Transfer input files failure: https://h/in.dat: HTTP 404 Not Found"
    assert (row.completions or 0) == 0, "a job that never ran counted a completion"
    # released, it runs again
    assert store.actions.act("release", [store.queue.get_job(jid)], "fixed", "alice") == [jid]
    assert store.queue.get_job(jid).state == "idle"


def test_the_claim_names_what_the_pilot_transfers() -> None:
    class Row:
        ad = (
            '[ Cmd = "x"; TransferOutput = ""; x509userproxy = "/home/u/x509up_u1"; '
            'In = "/home/u/in.txt"; TransferErr = false ]'
        )
        sandbox = {"files": [{"name": "d/f", "sha256": "0" * 64}]}

    spec = execution_spec(Row())
    assert spec["transfer_output"] == []
    assert (spec["x509_proxy"], spec["in"], spec["transfer_err"]) == ("x509up_u1", "in.txt", False)
    assert "input_urls" not in spec and "transfer_out" not in spec


@pytest.mark.parametrize(("when", "kept"), [("ON_EXIT_OR_EVICT", True), ("ON_EXIT", False)])
def test_an_evicted_runs_files_go_to_the_next_run_only_with_on_exit_or_evict(
    store: PoolStore, when: str, kept: bool
) -> None:
    ad = f'[ Cmd = "x"; RequestCpus = 1; RequestMemory = 10; WhenToTransferOutput = "{when}" ]'
    _, [jid] = store.queue.submit("alice", [NewJob(ad, [], [], {})])
    pilot = store.pilots.register(dict(SLOT), "g1", PilotOwner("pilot", "fe", "main"), 3600)
    _, [claim], _ = store.turns.cycle(pilot, [], dict(FREE), 60, 1, 0.0)
    files = [{"name": "state.txt", "sha256": "1" * 64}]
    evicted = Completion(str(claim["claim_id"]), 143, checkpoint=files, evicted=True)
    store.turns.cycle(pilot, [evicted], dict(FREE), 60, 0, 0.0)
    row = store.queue.get_job(jid)
    assert (row.state, row.exit_code, row.completions or 0) == ("idle", None, 0)
    assert (row.checkpoint or []) == (files if kept else [])
    assert (row.num_checkpoints or 0) == 0, "an eviction is no checkpoint the job took"
    _, [again], _ = store.turns.cycle(pilot, [], dict(FREE), 60, 1, 0.0)
    names = [f["name"] for f in again["job"]["sandbox"]]
    assert names == (["state.txt"] if kept else [])
    [event] = [e for e in store.queue.job_events(jid) if e["type"] == "evicted"]
    assert event["detail"]["by"] == "evicted"
