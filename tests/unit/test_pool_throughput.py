"""Pool hot paths that must stay cheap: per-kind (not per-job) work at submit,
and primary-key lookups (not an idle-queue scan) when a turn claims jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from glidewms.db import make_engine, sqlite_url
from glidewms.pool.jobs import NewJob, full_ad, template_key
from glidewms.pool.store import PoolStore
from glidewms.pool.turns import claim_statement

BASE = '[ Cmd = "/bin/true"; RequestCpus = 1; Note = "{note}"; ProcId = {proc} ]'


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        # the client numbers its jobs: only ProcId differs, one kind of job
        (BASE.format(note="x", proc=0), BASE.format(note="x", proc=17), True),
        # anything else differs: different kinds
        (BASE.format(note="x", proc=0), BASE.format(note="y", proc=0), False),
        # "ProcId = n" inside a string is not ProcId: the texts are different jobs
        ('[ Note = "ProcId = 1" ]', '[ Note = "ProcId = 2" ]', False),
        ('[ ProcId = 0; Note = "ProcId = 1" ]', '[ ProcId = 0; Note = "ProcId = 2" ]', False),
        # ProcId inside an expression: not a plain value, no sharing
        ("[ ProcId = 1 + 0; A = 1 ]", "[ ProcId = 2 + 0; A = 1 ]", False),
        ("[ A = 1 ]", "[ A = 1 ]", True),
    ],
)
def test_jobs_share_submit_work_only_when_they_differ_in_proc_id_alone(
    one: str, other: str, same: bool
) -> None:
    seen: dict[tuple[str, str], bool] = {}
    assert (template_key(one, seen) == template_key(other, seen)) is same


def test_a_bulk_cluster_keeps_each_job_its_own_proc_id(tmp_path: Path) -> None:
    store = PoolStore(make_engine(sqlite_url(tmp_path / "pool.db")))
    try:
        texts = [BASE.format(note="x", proc=p) for p in (5, 9, 2)]
        cluster, ids = store.queue.submit("alice", [NewJob(t, [], [], {}) for t in texts])
        assert ids == [f"{cluster}.0", f"{cluster}.1", f"{cluster}.2"]
        for proc, jid in enumerate(ids):
            ad = full_ad(store.queue.get_job(jid))
            assert (ad["ProcId"], ad["ClusterId"], ad["Note"]) == (proc, cluster, "x")
    finally:
        store.close()


def test_claiming_a_turn_looks_jobs_up_by_key_not_by_state(tmp_path: Path) -> None:
    """SQLite would otherwise search the state index and read every idle job
    on each turn (the cost grew with the queue)."""
    engine = make_engine(sqlite_url(tmp_path / "pool.db"))
    PoolStore(engine).close()
    compiled = claim_statement(3).compile(engine)
    with engine.connect() as conn:
        plan = [
            row[3]
            for row in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + str(compiled), tuple([0] * len(compiled.positiontup))
            )
        ]
    assert any("MULTI-INDEX OR" in step for step in plan), plan
    assert not any("state=" in step for step in plan), plan


def test_a_bulk_action_pages_by_key_not_by_owner(tmp_path: Path) -> None:
    """By the owner index SQLite would sort all of the owner's jobs for every
    page of a bulk action (quadratic in a million jobs); by the key each page
    is one range seek."""
    engine = make_engine(sqlite_url(tmp_path / "pool.db"))
    store = PoolStore(engine)
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        statements.append((statement, params))

    try:
        store.queue.submit("alice", [NewJob(BASE.format(note="x", proc=0), [], [], {})])
        sa.event.listen(engine, "before_cursor_execute", seen)
        pages = list(store.queue.pages("alice", "true"))
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
        store.close()
    assert [len(p) for p in pages] == [1]
    page, params = next(s for s in statements if "ORDER BY" in s[0])
    with engine.connect() as conn:
        plan = [r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + page, params)]
    assert not any("TEMP B-TREE" in step or "owner" in step for step in plan), plan
