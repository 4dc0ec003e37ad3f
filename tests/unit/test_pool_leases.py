"""Lease renewals in memory, written in one batch per expiry pass (pool/leases.py,
pool/pilots.py), and when the agent still heartbeats (exchange.heartbeat_delay).
Real SQLite for the store's part."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from glidewms.db import make_engine, sqlite_url
from glidewms.glidein.agent.exchange import heartbeat_delay
from glidewms.pool.jobs import NewJob
from glidewms.pool.leases import LeaseBook, Renewals
from glidewms.pool.pilots import PilotOwner
from glidewms.pool.schema import jobs, pilots
from glidewms.pool.store import PoolStore

AD = '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 16; Requirements = true ]'
SLOT = {"Cpus": 4, "Memory": 64, "Disk": 1000}
FREE = {"cpus": 4, "memory": 64, "disk": 1000, "gpus": 0}
OWNER = PilotOwner("pilot", "fe", "main")


# -- the book ---------------------------------------------------------------


def test_the_book_keeps_the_latest_sighting_and_forgets_what_was_taken() -> None:
    book = LeaseBook()
    book.seen("p1", ["c1"], 10.0)
    book.seen("p1", ["c1", "c2"], 5.0)  # an older sighting changes nothing
    book.seen("p2", [], 7.0)
    renewals = book.take()
    assert renewals.pilots == {"p1": 10.0, "p2": 7.0}
    assert renewals.claims == {"c1": ("p1", 10.0), "c2": ("p1", 5.0)}
    assert book.take() == Renewals()  # written once


def test_a_long_poll_connects_until_its_last_poll_ends_then_counts_as_seen() -> None:
    book = LeaseBook()
    book.connect("p1")
    book.connect("p1")  # two polls (a retry overlapping the old one)
    book.disconnect("p1", 3.0)
    assert book.is_connected("p1") and book.connected == 1
    book.disconnect("p1", 4.0)
    assert book.take().pilots == {"p1": 4.0}
    assert not book.is_connected("p1") and book.connected == 0


def test_a_refused_call_connects_while_it_lasts_and_renews_nothing() -> None:
    book = LeaseBook()
    book.connect("someone-elses")
    assert book.is_connected("someone-elses")
    book.disconnect("someone-elses", None)  # 404: not the caller's pilot
    assert not book.is_connected("someone-elses")
    assert book.take() == Renewals()


def test_renewals_a_failed_pass_gives_back_are_kept_unless_newer_ones_came() -> None:
    book = LeaseBook()
    book.seen("p1", ["c1"], 10.0)
    taken = book.take()
    book.seen("p1", [], 12.0)  # seen again meanwhile
    book.give_back(taken)
    renewals = book.take()
    assert renewals.pilots == {"p1": 12.0}
    assert renewals.claims == {"c1": ("p1", 10.0)}


# -- the agent: when a heartbeat is due ---------------------------------------


@pytest.mark.parametrize(
    ("renews", "holds", "in_turn", "since_contact", "retiring_changed", "delay"),
    [
        # an old pool: every interval, whatever the pilot does
        (False, False, True, 5.0, False, 15.0),
        (False, False, True, 25.0, False, 0.0),
        # idle in a long-poll: none, however long ago the last contact
        (True, False, True, 500.0, False, 20.0),
        # claims, and a turn a period ago or more: now (also inside a long-poll)
        (True, True, True, 20.0, False, 0.0),
        (True, True, False, 30.0, False, 0.0),
        # claims, but a turn 5 s ago renewed them: 15 s later
        (True, True, False, 5.0, False, 15.0),
        # no claims and no long-poll (a full or waiting pilot): its own lease
        (True, False, False, 21.0, False, 0.0),
        (True, False, False, 1.0, False, 19.0),
        # a retiring that changed is said at once
        (True, False, True, 0.0, True, 0.0),
    ],
)
def test_heartbeat_delay(
    renews: bool,
    holds: bool,
    in_turn: bool,
    since_contact: float,
    retiring_changed: bool,
    delay: float,
) -> None:
    now = 1000.0
    got = heartbeat_delay(
        now,
        20.0,
        renews=renews,
        holds=holds,
        in_turn=in_turn,
        last_contact=now - since_contact,
        retiring_changed=retiring_changed,
    )
    assert got == pytest.approx(delay)


# -- the store: reads per heartbeat, one batch per pass ------------------------


@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = PoolStore(make_engine(sqlite_url(tmp_path / "pool.sqlite")))
    yield store
    store.close()


def statements(store: Any) -> list[tuple[str, bool]]:
    """(first word of each statement, was it an executemany), from now on."""
    seen: list[tuple[str, bool]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        seen.append((statement.split()[0], many))

    sa.event.listen(store.engine, "before_cursor_execute", record)
    return seen


def lease_of(store: Any, table: Any, key: Any, value: str) -> float:
    with store.engine.connect() as conn:
        return float(conn.execute(sa.select(table.c.lease_expires).where(key == value)).scalar())


def test_heartbeats_only_read_and_one_pass_writes_them_all(store: Any) -> None:
    store.queue.submit("alice", [NewJob(AD, [], [], {}) for _ in range(3)])
    ids = [store.pilots.register(dict(SLOT), "g", OWNER, 60) for _ in range(3)]
    claims = [store.turns.claim(p, dict(FREE), 60)["claim_id"] for p in ids]
    seen = statements(store)
    before = time.time()
    for p, c in zip(ids, claims, strict=True):
        answer = store.pilots.heartbeat(p, [c, "gone"], 600, 300, retiring=False, owner=OWNER)
        assert answer == {"lease_seconds": 300, "drain": False, "kill": ["gone"]}
    assert [s for s, _ in seen if s in ("UPDATE", "INSERT", "DELETE")] == []
    assert lease_of(store, pilots, pilots.c.pilot_id, ids[0]) < before + 600

    seen.clear()
    assert store.pilots.expire_leases(600, 300) == 0
    writes = [(s, many) for s, many in seen if s == "UPDATE"]
    assert writes == [("UPDATE", True), ("UPDATE", True)]  # pilots, claims: one each
    for p, c in zip(ids, claims, strict=True):
        assert lease_of(store, pilots, pilots.c.pilot_id, p) >= before + 600
        assert lease_of(store, jobs, jobs.c.claim_id, c) >= before + 300


def test_a_turn_renews_the_claims_it_lists_and_answers_the_others(store: Any) -> None:
    store.queue.submit("alice", [NewJob(AD, [], [], {})])
    pid = store.pilots.register(dict(SLOT), "g", OWNER, 60)
    claim = store.turns.claim(pid, dict(FREE), 60)["claim_id"]
    standing: dict[str, Any] = {}
    now = time.time()
    store.turns.cycle(pid, [], dict(FREE), 60, 0, now, OWNER, [claim, "x"], standing)
    assert standing == {"drain": False, "kill": ["x"]}
    store.pilots.expire_leases(600, 300)
    assert lease_of(store, jobs, jobs.c.claim_id, claim) == pytest.approx(now + 300)
    assert lease_of(store, pilots, pilots.c.pilot_id, pid) == pytest.approx(now + 600)


def test_a_connected_pilot_is_not_lost_and_a_dropped_one_is(store: Any) -> None:
    polling = store.pilots.register(dict(SLOT), "g", OWNER, -1)  # leases already out
    dropped = store.pilots.register(dict(SLOT), "g", OWNER, -1)
    book = store.pilots.leases
    book.connect(polling)
    book.connect(dropped)
    book.disconnect(dropped, time.time() - 5)  # seen 5 s ago, lease 1 s: out
    store.pilots.expire_leases(1, 1)
    states = {r.pilot_id: r.state for r in store.pilots.list_pilots(active_only=False)}
    assert states == {polling: "active", dropped: "lost"}
    # found expired while connected, its lease was renewed: not read again each pass
    assert lease_of(store, pilots, pilots.c.pilot_id, polling) > time.time()


def test_a_sighting_after_the_pass_took_its_renewals_still_counts(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pilot's long-poll ended (seen) between the pass taking the
    renewals and looking for expired leases: not lost, its claim kept; the
    next pass writes the sighting."""
    store.queue.submit("alice", [NewJob(AD, [], [], {})])
    pid = store.pilots.register(dict(SLOT), "g", OWNER, 60)
    claim = store.turns.claim(pid, dict(FREE), 60)["claim_id"]
    with store.engine.begin() as conn:  # both leases ran out
        conn.execute(pilots.update().values(lease_expires=time.time() - 1))
        conn.execute(jobs.update().values(lease_expires=time.time() - 1))
    book = store.pilots.leases
    book.seen(pid, [claim], time.time())
    monkeypatch.setattr(book, "take", lambda: Renewals())  # as if seen just after take
    assert store.pilots.expire_leases(60, 60) == 0
    monkeypatch.undo()
    assert [r.state for r in store.pilots.list_pilots()] == ["active"]
    store.pilots.expire_leases(60, 60)
    assert lease_of(store, pilots, pilots.c.pilot_id, pid) > time.time()
    assert lease_of(store, jobs, jobs.c.claim_id, claim) > time.time()
