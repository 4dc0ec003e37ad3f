"""Bulk changes and large submits in bounded batches, on SQLite and PostgreSQL.

A hold or remove over tens of thousands of jobs once kept the store locked
for minutes, and pilot turns waited. Now each batch is its own lock and
transaction: the test below serves a pilot turn in the middle of a bulk hold
(the hook between batches waits until the turn was served, so it fails if
the hold kept the lock), and then checks the end state is what one
transaction would have left: every matching job held, each exactly once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from glidewms.db import make_engine, sqlite_url
from glidewms.pool.checks import StoreLimits
from glidewms.pool.jobs import NewJob
from glidewms.pool.pilots import PilotOwner
from glidewms.pool.schema import events, jobs
from glidewms.pool.store import PoolStore
from tests.components.postgres import database_url, postgres_cluster  # noqa: F401

BULK = 50_000
BATCH = 5_000
# alice's jobs need a slot attribute the pilot lacks; bob's one runs anywhere
ALICE = '[ Cmd = "/bin/true"; RequestCpus = 1; Requirements = TARGET.Kind == "a"; ProcId = 0 ]'
BOB = '[ Cmd = "/bin/true"; RequestCpus = 1; Requirements = true ]'
SLOT = {"Cpus": 2, "Memory": 1000, "Disk": 1000}
FREE = {"cpus": 2, "memory": 1000, "disk": 1000, "gpus": 0}


@pytest.fixture
def store(tmp_path: Path, database_url: str | None) -> Iterator[PoolStore]:  # noqa: F811
    url = database_url or sqlite_url(tmp_path / "pool.sqlite")
    store = PoolStore(make_engine(url), limits=StoreLimits(batch_size=BATCH))
    yield store
    store.close()


def test_a_turn_is_served_while_a_bulk_hold_runs_and_each_job_is_held_once(
    store: PoolStore,
) -> None:
    cluster, ids = store.queue.submit("alice", [NewJob(ALICE, [], [], {})] * BULK)
    _, [bob_job] = store.queue.submit("bob", [NewJob(BOB, [], [], {})])
    pilot = store.pilots.register(dict(SLOT), "g1", PilotOwner("pilot", "fe", "main"), 3600)
    in_progress, turn_served = threading.Event(), threading.Event()
    batches: list[int] = []

    def between() -> None:  # the bulk thread, the lock released
        batches.append(1)
        if len(batches) == 1:
            in_progress.set()
            assert turn_served.wait(60), "no turn was served between batches"

    store.actions.between_batches = between
    result: dict[str, Any] = {}

    def hold() -> None:
        try:
            result["changed"] = store.actions.act_where(
                "hold", "alice", f"ClusterId == {cluster}", "bulk", "alice"
            )
        except BaseException as exc:  # reported below
            result["error"] = exc

    bulk = threading.Thread(target=hold)
    bulk.start()
    assert in_progress.wait(120), "the bulk hold never finished a batch"
    _, claims, _ = store.turns.cycle(pilot, [], dict(FREE), 60, 4, 0.0)
    turn_served.set()
    bulk.join(600)
    assert not bulk.is_alive() and "error" not in result, result.get("error")
    assert [c["job_id"] for c in claims] == [bob_job]
    assert len(batches) == BULK // BATCH
    assert sorted(result["changed"]) == sorted(ids) and len(set(result["changed"])) == BULK
    with store.engine.connect() as conn:
        states = dict(
            conn.execute(
                sa.select(jobs.c.state, sa.func.count())
                .where(jobs.c.cluster_id == cluster)
                .group_by(jobs.c.state)
            ).all()
        )
        held_events = conn.execute(
            sa.select(sa.func.count(), sa.func.count(sa.distinct(events.c.proc_id))).where(
                events.c.cluster_id == cluster, events.c.type == "held"
            )
        ).one()
    assert states == {"held": BULK}
    assert tuple(held_events) == (BULK, BULK)
    assert store.reports.queue_counts() == {"idle": 0, "running": 1}


def test_a_bulk_action_over_other_users_jobs_leaves_them_alone(store: PoolStore) -> None:
    """A constraint selects among the caller's own jobs (an admin's: all)."""
    store.queue.submit("alice", [NewJob(BOB, [], [], {})] * 3)
    _, bobs = store.queue.submit("bob", [NewJob(BOB, [], [], {})] * 2)
    assert store.actions.act_where("remove", "bob", "true", "", "bob") == bobs
    assert store.reports.queue_counts()["idle"] == 3
    changed, _ = store.actions.edit_where(None, "true", "Note", '"x"', "admin")
    assert len(changed) == 3


def test_a_large_cluster_is_inserted_in_batches(store: PoolStore) -> None:
    """No statement carries more than a batch of rows: memory stays bounded
    by the batch, not by the cluster."""
    sizes: list[int] = []

    def count(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO JOBS"):
            sizes.append(len(params) if many else 1)

    sa.event.listen(store.engine, "before_cursor_execute", count)
    try:
        _, ids = store.queue.submit("alice", [NewJob(BOB, [], [], {})] * (2 * BATCH + 7))
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", count)
    assert sum(sizes) == len(ids) == 2 * BATCH + 7
    assert max(sizes) <= BATCH and len(sizes) == 3
