"""The set-based bulk actions (pool/bulk.py, actions.py) against a reference:
what one job at a time, with the constraint evaluated on each job's full ad,
would have done. On SQLite and PostgreSQL.

Batches are kept small and odd-sized so that one batch holds jobs in several
states, several clusters and broken runs of ids (both the BETWEEN and the IN
forms of `_key_clauses`), and the in-memory idle index is compared with the
database after every action, cached heads included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from glidewms import classads
from glidewms.classad_limits import AdLimits
from glidewms.db import make_engine, sqlite_url
from glidewms.pool.bulk import Selection
from glidewms.pool.checks import StoreLimits
from glidewms.pool.jobs import HOLD_USER, InvalidEdit, NewJob, full_ad, job_id, stored_ad
from glidewms.pool.pilots import PilotOwner
from glidewms.pool.queue_index import head_key
from glidewms.pool.schema import events, jobs
from glidewms.pool.store import PoolStore
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401

BATCH = 7
ANY = (
    '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = {mem}; Kind = "{kind}"; '
    "Requirements = true ]"
)
# a job whose ad reads its own ProcId elsewhere: edits are worked out per job
ODD = '[ Cmd = "/bin/true"; RequestCpus = 1; Kind = "odd"; Slot = ProcId * 2; Requirements = true ]'
SLOT = {"Cpus": 2, "Memory": 100000, "Disk": 1000}
FREE = {"cpus": 2, "memory": 100000, "disk": 1000, "gpus": 0}


def _store(url: str, **limits: Any) -> PoolStore:
    return PoolStore(make_engine(url), limits=StoreLimits(batch_size=BATCH, **limits))


@pytest.fixture
def url(tmp_path: Path, database_url: str | None) -> str:  # noqa: F811
    return database_url or sqlite_url(tmp_path / "pool.sqlite")


@pytest.fixture
def store(url: str) -> Iterator[PoolStore]:
    store = _store(url)
    yield store
    store.close()


def _submit(store: PoolStore, owner: str, ad: str, n: int) -> tuple[int, list[str]]:
    return store.queue.submit(owner, [NewJob(ad, [], [], {})] * n)


def _rows(store: PoolStore) -> dict[str, Any]:
    with store.engine.connect() as conn:
        return {job_id(r.cluster_id, r.proc_id): r for r in conn.execute(sa.select(jobs))}


def _events(store: PoolStore, kind: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    with store.engine.connect() as conn:
        for r in conn.execute(sa.select(events).where(events.c.type == kind).order_by(events.c.id)):
            out.setdefault(job_id(r.cluster_id, r.proc_id), []).append(r.detail)
    return out


def _reference(store: PoolStore, owner: str | None, constraint: str) -> set[str]:
    """The queued jobs of `owner` matching `constraint` on each one's full ad."""
    expr = classads.parse_expr(constraint, "constraint")
    return {
        jid
        for jid, row in _rows(store).items()
        if row.state in ("idle", "running", "held")
        and owner in (None, row.owner)
        and classads.constraint_matches(expr, full_ad(row))
    }


def assert_index_matches_db(store: PoolStore) -> None:
    """Counts, queue dates and every cached head/prefix of the idle index
    agree with the idle jobs in the database; running counts too."""
    idle: dict[tuple[int, str], list[Any]] = {}
    running: Counter[int] = Counter()
    for row in _rows(store).values():
        if row.state == "idle":
            key = head_key(row.prio, row.q_date, row.cluster_id, row.proc_id)
            idle.setdefault((row.autocluster_id, row.submitter), []).append(key)
        elif row.state == "running":
            running[row.autocluster_id] += 1
    index = store.shared.index
    counts = {(ac, sub): n for ac, per in index.counts.items() for sub, n in per.items() if n != 0}
    assert counts == {pair: len(keys) for pair, keys in idle.items()}
    for pair, keys in idle.items():
        keys.sort()
        assert index.dates.get(pair) == dict(Counter(k[1] for k in keys)), pair
        if pair in index.heads:
            cached = [index.heads[pair], *index.upcoming.get(pair, [])]
            assert cached == keys[: len(cached)], pair
    assert not set(index.heads) - set(idle)
    assert dict(index.running) == dict(running)


def _claim(store: PoolStore, n: int) -> list[str]:
    """n jobs started by a pilot's turns (the turns cache heads as they go)."""
    pilot = store.pilots.register(dict(SLOT), "g1", PilotOwner("pilot", "fe", "main"), 3600)
    got: list[str] = []
    while len(got) < n:
        _, claims, _ = store.turns.cycle(pilot, [], dict(FREE), 60, 1, 0.0)
        assert claims, "no job was claimed"
        got += [c["job_id"] for c in claims]
    return got


def test_hold_release_remove_over_mixed_states_change_what_one_job_at_a_time_would(
    store: PoolStore,
) -> None:
    c1, ids1 = _submit(store, "alice", ANY.format(mem=100, kind="a"), 40)
    c2, ids2 = _submit(store, "alice", ANY.format(mem=200, kind="b"), 30)
    _, bobs = _submit(store, "bob", ANY.format(mem=100, kind="a"), 10)
    running = set(_claim(store, 3))
    # every third job of cluster 1 already held by hand: runs of ids broken
    # into more pieces than a statement names by ranges (the IN form)
    pre_held = set(
        store.actions.act("hold", [store.queue.get_job(j) for j in ids1[::3]], "x", "alice")
    )
    assert_index_matches_db(store)
    before = _rows(store)
    constraint = f"ClusterId >= {c1} && ClusterId <= {c2}"

    changed = store.actions.act_where("hold", "alice", constraint, "bulk", "alice")
    expected = {j for j in ids1 + ids2 if before[j].state in ("idle", "running")}
    assert sorted(changed) == sorted(expected) and len(changed) == len(set(changed))
    after = _rows(store)
    held = _events(store, "held")
    for jid in ids1 + ids2:
        assert after[jid].state == "held"
        if jid in expected:
            assert (after[jid].hold_reason, after[jid].hold_code) == ("bulk", HOLD_USER)
            assert after[jid].claim_id is None and after[jid].lease_expires is None
            assert held[jid][-1] == {"by": "alice", "reason": "bulk", "code": HOLD_USER}
        else:  # held before: left as it was, no second event
            assert after[jid].hold_reason == "x" and len(held[jid]) == 1
            assert after[jid].updated_at == before[jid].updated_at
    assert all(after[j].state == before[j].state for j in bobs), "bob's jobs were touched"
    assert {j for j in running if j in ids1 + ids2 and j not in pre_held} <= set(changed)
    assert_index_matches_db(store)

    released = store.actions.act_where("release", "alice", constraint, "", "alice")
    assert sorted(released) == sorted(ids1 + ids2)
    after = _rows(store)
    assert all(
        after[j].state == "idle" and after[j].hold_reason is None and after[j].hold_code is None
        for j in released
    )
    assert all(_events(store, "released")[j] == [{"by": "alice", "reason": ""}] for j in ids2)
    assert_index_matches_db(store)

    removed = store.actions.act_where("remove", None, 'Kind == "a"', "gone", "admin")
    assert sorted(removed) == sorted(ids1 + bobs)  # an admin's: everyone's, running ones too
    after = _rows(store)
    assert all(after[j].state == "removed" and after[j].completion_date for j in removed)
    assert all(after[j].state == "idle" for j in ids2)
    assert _events(store, "removed")[ids1[0]] == [{"by": "admin", "reason": "gone"}]
    assert_index_matches_db(store)


@pytest.mark.parametrize(
    "constraint",
    [
        "true",
        'Kind == "a"',  # an ad attribute: one verdict per stored text
        'kind == "A"',  # ClassAd names and == on strings ignore case
        "RequestMemory > 150 && ClusterId >= 1",  # SQL part and ClassAd part
        'ClusterId == 1 || Kind == "b"',  # || at the top: all ClassAd
        "ProcId % 4 == 1",  # per job
        "MY.ProcId < 5 && JobStatus == 1",  # all SQL
        "5 < ProcId && 3 >= ClusterId",  # constant first
        "JobStatus =!= 5 && !(ProcId >= 3)",
        "JobStatus == 5",
        "HoldReasonCode =?= 1",  # a column's attribute, undefined for most
        'Kind == "a && ClusterId == 1"',  # && inside a string is not a conjunct
        "Slot =?= 4",  # reads ProcId through another attribute
        "Nope > 3",  # undefined: matches nothing
        "ClusterId == 2.0",  # a real: ClassAd compares it numerically
    ],
)
def test_the_selection_matches_the_constraint_evaluated_on_each_full_ad(
    store: PoolStore, constraint: str
) -> None:
    _submit(store, "alice", ANY.format(mem=100, kind="a"), 12)
    _submit(store, "alice", ANY.format(mem=200, kind="b"), 9)
    _, odd = _submit(store, "alice", ODD, 6)
    _submit(store, "bob", ANY.format(mem=100, kind="a"), 5)
    store.actions.act("hold", [store.queue.get_job(j) for j in odd[:3]], "x", "alice")
    _claim(store, 2)
    for owner in ("alice", None):
        selection = Selection(store.engine, owner, constraint, AdLimits())
        got = [job_id(r.cluster_id, r.proc_id) for page in selection.pages(4, 8) for r in page]
        assert len(got) == len(set(got))
        assert set(got) == _reference(store, owner, constraint), (owner, constraint)


def test_a_constraint_on_the_ad_is_evaluated_once_per_stored_text(store: PoolStore) -> None:
    _submit(store, "alice", ANY.format(mem=100, kind="a"), 50)
    _submit(store, "alice", ANY.format(mem=200, kind="b"), 50)
    selection = Selection(store.engine, "alice", 'Kind == "b"', AdLimits())
    got = [r for page in selection.pages(BATCH, 10 * BATCH) for r in page]
    assert len(got) == 50 and selection.evaluated == 2
    per_job = Selection(store.engine, "alice", 'ProcId >= 0 && Kind == "b"', AdLimits())
    assert len([r for page in per_job.pages(BATCH) for r in page]) == 50
    assert per_job.evaluated == 50 + 50  # reads ProcId (the SQL part too): per job


def test_an_edit_by_constraint_writes_what_a_per_job_edit_would(store: PoolStore) -> None:
    _, ids1 = _submit(store, "alice", ANY.format(mem=100, kind="a"), 20)
    _, odd = _submit(store, "alice", ODD, 9)
    _, bobs = _submit(store, "bob", ANY.format(mem=100, kind="a"), 4)
    running = set(_claim(store, 2))
    store.actions.act("hold", [store.queue.get_job(j) for j in ids1[5:8]], "x", "alice")
    before = _rows(store)
    expr = classads.parse_expr("RequestMemory + 1", "RequestMemory")

    changed, skipped = store.actions.edit_where(
        "alice", "true", "RequestMemory", "RequestMemory + 1", "alice"
    )
    mine = ids1 + odd
    assert sorted(changed) == sorted(j for j in mine if j not in running)
    assert set(skipped) == running & set(mine)
    assert all("only idle or held" in why for why in skipped.values())
    after = _rows(store)
    edited = _events(store, "edited")
    for jid in changed:
        ad = stored_ad(before[jid].ad)
        old = str(ad.lookup("RequestMemory")) if "RequestMemory" in ad else None
        ad["RequestMemory"] = expr
        assert after[jid].ad == classads.to_text(ad), jid
        assert after[jid].state == before[jid].state
        assert edited[jid] == [
            {"by": "alice", "attribute": "RequestMemory", "old": old, "new": "RequestMemory + 1"}
        ]
    # RequestMemory is significant: the edited jobs left their autocluster
    assert after[ids1[-1]].autocluster_id != before[ids1[-1]].autocluster_id
    assert after[bobs[0]].ad == before[bobs[0]].ad and bobs[0] not in edited
    assert_index_matches_db(store)
    # a value out of range is refused for all at once
    with pytest.raises(InvalidEdit):
        store.actions.edit_where("alice", "true", "JobPrio", "1e300", "alice")


def test_an_edit_past_the_size_bound_skips_exactly_the_jobs_it_would_not_fit(
    url: str,
) -> None:
    # the same edit fits jobs 0-9 and not 10-19: their ProcId is one digit longer
    probe = _store(url)
    _, ids = _submit(probe, "alice", ANY.format(mem=100, kind="a"), 20)
    value = '"' + "x" * 50 + '"'
    ad = stored_ad(probe.queue.get_job(ids[0]).ad)
    ad["Note"] = classads.parse_expr(value, "Note")
    size = len(classads.to_text(ad).encode())
    probe.close()
    store = _store(url, ads=AdLimits(max_ad_bytes=size))
    try:
        changed, skipped = store.actions.edit_where("alice", "true", "Note", value, "alice")
        assert sorted(changed) == sorted(ids[:10])
        assert sorted(skipped) == sorted(ids[10:])
        assert all(f"at most {size}" in why for why in skipped.values())
    finally:
        store.close()


KILLED = """
import os, sys, time
import sqlalchemy as sa
from glidewms.db import make_engine
from glidewms.pool.checks import StoreLimits
from glidewms.pool.store import PoolStore

store = PoolStore(make_engine(sys.argv[1]), limits=StoreLimits(batch_size=int(sys.argv[2])))
updates = []

def stall(conn, cursor, statement, params, context, many):
    # the third batch's UPDATE ran, its transaction is open: say so, stall
    if statement.lstrip().upper().startswith("UPDATE JOBS"):
        updates.append(1)
        if len(updates) == 3:
            open(sys.argv[3], "w").close()
            time.sleep(3600)

sa.event.listen(store.engine, "after_cursor_execute", stall)
store.actions.act_where("hold", "alice", "true", "bulk", "alice")
"""


def test_a_hold_killed_midway_leaves_whole_batches_held_and_the_rest_idle(
    url: str, tmp_path: Path
) -> None:
    store = _store(url)
    _, ids = _submit(store, "alice", ANY.format(mem=100, kind="a"), 10 * BATCH)
    store.close()
    marker = tmp_path / "stalled"
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(KILLED))
    proc = subprocess.Popen([sys.executable, str(script), url, str(BATCH), str(marker)])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "the bulk hold exited before its third batch"
            assert time.monotonic() < deadline, "the third batch never started"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    store = _store(url)  # as the pool after a restart: the index rebuilt from the database
    try:
        rows = _rows(store)
        held = _events(store, "held")
        states = Counter(rows[j].state for j in ids)
        assert states == {"held": 2 * BATCH, "idle": 8 * BATCH}
        for jid in ids:
            if rows[jid].state == "held":
                assert (rows[jid].hold_reason, rows[jid].hold_code) == ("bulk", HOLD_USER)
                assert len(held[jid]) == 1
            else:
                assert rows[jid].hold_reason is None and jid not in held
        assert_index_matches_db(store)
        # the hold asked again finishes the rest, each job held once
        assert len(store.actions.act_where("hold", "alice", "true", "bulk", "alice")) == 8 * BATCH
        assert all(len(v) == 1 for v in _events(store, "held").values())
    finally:
        store.close()
