"""What a pilot turn costs in statements, and the slot ads it reuses (real
ClassAd library, real SQLite): the pieces that keep a turn's fixed cost low
without changing which jobs it hands out."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from glidewms.db import make_engine, sqlite_url
from glidewms.pool.exit import Completion
from glidewms.pool.jobs import NewJob
from glidewms.pool.matchmaker import Matchmaker
from glidewms.pool.pilots import PilotOwner
from glidewms.pool.schema import events
from glidewms.pool.slots import SlotAds, slot_with
from glidewms.pool.store import PoolStore

AD = '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 16; Requirements = true ]'
SLOT = {"Cpus": 4, "Memory": 64, "Disk": 1000, "GLIDEIN_Site": "A", "GLIDEIN_Id": "g1"}
FREE = {"cpus": 4, "memory": 64, "disk": 1000, "gpus": 0}
_TABLE = re.compile(r"^(SELECT .*?\sFROM|UPDATE|INSERT INTO)\s+(\w+)", re.DOTALL)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = PoolStore(make_engine(sqlite_url(tmp_path / "pool.sqlite")))
    yield store
    store.close()


def test_a_turn_is_six_statements_whatever_it_carries(store: Any) -> None:
    """Pilot row, ended claims, their UPDATE, the counter, the new claims'
    UPDATE ... RETURNING, and ONE events INSERT for the whole turn. The check
    that the caller owns the pilot (as the route makes it) adds none."""
    store.queue.submit("alice", [NewJob(AD, [], [], {}) for _ in range(40)])
    owner = PilotOwner("pilot", "fe", "main")
    pid = store.pilots.register(dict(SLOT), "g1", owner, 3600)
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        found = _TABLE.match(statement)
        seen.append(f"{found.group(1).split()[0]} {found.group(2)}" if found else statement)

    held: list[str] = []
    turns = []
    for max_jobs in (4, 1, 3, 4):
        seen.clear()
        sa.event.listen(store.engine, "before_cursor_execute", record)
        _, claims, _ = store.turns.cycle(
            pid, [Completion(c, 0, [], 0.1) for c in held], FREE, 600, max_jobs, time.time(), owner
        )
        sa.event.remove(store.engine, "before_cursor_execute", record)
        turns.append(list(seen))
        held = [c["claim_id"] for c in claims]
        assert len(held) == max_jobs
    assert (
        turns[1:]
        == [
            [
                "SELECT pilots",
                "SELECT jobs",
                "UPDATE jobs",
                "UPDATE counters",
                "UPDATE jobs",
                "INSERT events",
            ]
        ]
        * 3
    )


def test_a_turn_writes_the_ended_jobs_events_before_the_started_ones(store: Any) -> None:
    store.queue.submit("alice", [NewJob(AD, [], [], {}) for _ in range(4)])
    pid = store.pilots.register(dict(SLOT), "g1", PilotOwner("pilot", "fe", "main"), 3600)
    _, first, _ = store.turns.cycle(pid, [], FREE, 600, 2, time.time())
    done, second, _ = store.turns.cycle(
        pid, [Completion(c["claim_id"], 0, [], 0.1) for c in first], FREE, 600, 2, time.time()
    )
    assert all(done.values()) and len(second) == 2
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(events.c.type, events.c.cluster_id, events.c.proc_id)
            .where(events.c.type != "submitted")
            .order_by(events.c.id)
        ).all()
    ids = [f"{r.cluster_id}.{r.proc_id}" for r in rows]
    assert [r.type for r in rows] == ["started"] * 2 + ["completed"] * 2 + ["started"] * 2
    assert ids[2:4] == [c["job_id"] for c in first]
    assert ids[4:] == [c["job_id"] for c in second]


# ---------------------------------------------------------------- SlotAds

START_CLOCK = {**SLOT, "GLIDEIN_Start": "time() > 0"}
R4 = {"cpus": 4, "memory": 64, "disk": 1000, "gpus": 0}
R2 = {"cpus": 2, "memory": 32, "disk": 1000, "gpus": 0}


def same_ad(a: Any, b: Any) -> bool:
    return {k: str(a.lookup(k)) for k in a} == {k: str(b.lookup(k)) for k in b}


@pytest.mark.parametrize("slot", [SLOT, START_CLOCK])
@pytest.mark.parametrize("resources", [R4, R2])
def test_a_remembered_slot_ad_is_what_building_it_afresh_gives(slot, resources) -> None:
    mm = Matchmaker()
    ads = SlotAds(mm)
    ad, shape = ads.get("p1", dict(slot), resources)
    fresh = slot_with(slot, resources)
    assert same_ad(ad, fresh) and shape == mm.shape(fresh)
    assert ads.get("p1", dict(slot), dict(resources)) == (ad, shape)  # built once
    # a slot whose Start reads the clock keeps the shape nothing is cached for
    assert shape.startswith("!") == (slot is START_CLOCK)


def test_each_offer_of_resources_has_its_own_ad() -> None:
    ads = SlotAds(Matchmaker())
    four, _ = ads.get("p1", SLOT, R4)
    two, _ = ads.get("p1", SLOT, R2)
    assert (four.eval("Cpus"), two.eval("Cpus")) == (4, 2)
    assert ads.get("p1", SLOT, R4)[0] is four


@pytest.mark.parametrize(
    "change, rebuilt",
    [
        ({}, False),  # an equal dict (each turn reads the slot anew)
        ({"GLIDEIN_Site": "B"}, True),
        ({"Extra": 1}, True),
    ],
)
def test_a_slot_that_differs_is_built_anew(change, rebuilt) -> None:
    ads = SlotAds(Matchmaker())
    ad, _ = ads.get("p1", dict(SLOT), R4)
    again, _ = ads.get("p1", {**SLOT, **change}, R4)
    assert (again is not ad) == rebuilt
    if rebuilt:
        assert same_ad(again, slot_with({**SLOT, **change}, R4))


def test_shapes_follow_what_autoclusters_read() -> None:
    """A new autocluster that reads another slot attribute makes shapes finer:
    a remembered shape is recomputed, not reused."""
    mm = Matchmaker()
    ads = SlotAds(mm)
    a = {**SLOT, "HasDocker": True}
    b = {**SLOT, "HasDocker": False}
    assert ads.get("a", a, R4)[1] == ads.get("b", b, R4)[1]
    mm.remember(1, "[ RequestCpus = 1; Requirements = TARGET.HasDocker ]")
    assert ads.get("a", a, R4)[1] != ads.get("b", b, R4)[1]
    assert ads.get("a", a, R4)[1] == mm.shape(slot_with(a, R4))


def test_the_memory_is_bounded_and_forgets_pilots() -> None:
    ads = SlotAds(Matchmaker(), pilots=2, per_pilot=2)
    first = ads.get("p1", SLOT, R4)[0]
    ads.get("p1", SLOT, R2)
    ads.get("p1", SLOT, {**R2, "cpus": 1})  # a third offer: the pilot's ads start over
    assert ads.get("p1", SLOT, R4)[0] is not first
    kept = ads.get("p2", SLOT, R4)[0]
    ads.forget("p2")
    assert ads.get("p2", SLOT, R4)[0] is not kept
    ads.get("p3", SLOT, R4)  # a third pilot: all start over
    assert len(ads._known) <= 2


@pytest.mark.parametrize(
    "slot_start, job_requirements",
    [
        ("time() > {at}", "true"),  # an overflow-style slot Start
        (None, "time() > {at}"),  # a job that waits for a date
    ],
)
def test_an_answer_that_reads_the_clock_changes_when_the_clock_does(
    store: Any, slot_start: str | None, job_requirements: str
) -> None:
    """The slot's choices are not remembered per shape (they were: a pilot
    refused once kept being refused until new jobs came in). ClassAd time()
    counts whole seconds, so the answer flips within 2 s; polled, with a
    deadline."""
    at = int(time.time()) + 1
    ad = (
        '[ Cmd = "/bin/true"; RequestCpus = 1; RequestMemory = 16; '
        f"Requirements = {job_requirements.format(at=at)} ]"
    )
    store.queue.submit("alice", [NewJob(ad, [], [], {}) for _ in range(2)])
    slot = dict(SLOT, **({"GLIDEIN_Start": slot_start.format(at=at)} if slot_start else {}))
    pid = store.pilots.register(slot, "g1", PilotOwner("pilot", "fe", "main"), 3600)
    assert store.turns.cycle(pid, [], FREE, 600, 1, time.time())[1] == []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        claims = store.turns.cycle(pid, [], FREE, 600, 1, time.time())[1]
        if claims:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the pilot never got the job its clock now allows")
    assert time.time() > at and len(claims) == 1
