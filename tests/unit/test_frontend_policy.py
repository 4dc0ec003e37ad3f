"""The frontend's pressure and removal arithmetic: one table row per branch."""

from __future__ import annotations

import pytest

from glidewms.frontend.matching import EntryDemand
from glidewms.frontend.policy import (
    Knobs,
    Level,
    Memory,
    RemovalRules,
    decide,
    pressure,
    removal_stage,
)
from glidewms.frontend.supply import EntrySupply
from glidewms.protocol import RemovalStage

K = Knobs()  # attenuation 3, reserve 5, 100 idle per entry, factor 1.15


def demand(units: float, old: float = 0.0, straight: float | None = None) -> EntryDemand:
    return EntryDemand(
        prop_units=units, old_prop_units=old, units=units if straight is None else straight
    )


def lvl(name: str = "entry", pilots: int = 0, idle: int = 0, **kw) -> Level:
    return Level(name=name, pilots=pilots, idle_pilots=idle, **kw)


@pytest.mark.parametrize(
    ("case", "d", "s", "levels", "knobs", "idle", "max_running", "note"),
    [
        (
            "no idle demand: nothing asked, max running = running pilots",
            demand(0),
            EntrySupply(busy=3),
            [],
            K,
            0,
            3,
            "no idle job",
        ),
        ("30 missing pilots ramp up by a third", demand(30), EntrySupply(), [], K, 10, 35, "/3"),
        ("small demand still asks for one", demand(1), EntrySupply(), [], K, 1, 2, "/3"),
        (
            "old idle jobs add a reserve, at most reserve_idle",
            demand(30, old=30),
            EntrySupply(),
            [],
            K,
            15,
            35,
            "reserve 5",
        ),
        (
            "a small old demand adds a small reserve",
            demand(6, old=3),
            EntrySupply(),
            [],
            K,
            3,
            7,
            "reserve 1",
        ),
        (
            "idle supply (registered room and starting pilots) is subtracted",
            demand(30),
            EntrySupply(starting=6, idle=3, idle_units=3.0),
            [],
            K,
            7,
            35,
            "/3",
        ),
        (
            "supply covers demand: nothing asked",
            demand(4),
            EntrySupply(idle=5, idle_units=5.0),
            [],
            K,
            0,
            6,
            "covers",
        ),
        (
            "capped by max_idle_per_entry",
            demand(3000),
            EntrySupply(),
            [],
            K,
            100,
            3450,
            "max_idle_per_entry",
        ),
        (
            "max running capped per entry",
            demand(3000),
            EntrySupply(),
            [],
            Knobs(max_running_per_entry=500),
            100,
            500,
            "max_running_per_entry",
        ),
        (
            "straight counting when proportional is off",
            demand(3, straight=30),
            EntrySupply(),
            [],
            Knobs(proportional=False),
            10,
            35,
            "/3",
        ),
        (
            "entry hard limit reached: no new pilots",
            demand(30),
            EntrySupply(queued=10),
            [lvl(pilots=10, max_pilots=10)],
            K,
            0,
            35,
            "limit",
        ),
        (
            "group idle limit reached: no new pilots",
            demand(30),
            EntrySupply(),
            [lvl("group", idle=1000, max_idle_pilots=1000)],
            K,
            0,
            35,
            "limit",
        ),
        (
            "room under a limit bounds the request before attenuation",
            demand(30),
            EntrySupply(),
            [lvl("global", pilots=94, max_pilots=100)],
            K,
            2,
            35,
            "room 6",
        ),
        (
            "one curb halves",
            demand(30),
            EntrySupply(),
            [lvl(idle=5, curb_idle_pilots=5)],
            K,
            5,
            35,
            "halved 1",
        ),
        (
            "each curb halves again",
            demand(30),
            EntrySupply(),
            [lvl(idle=5, curb_idle_pilots=5), lvl("group", pilots=9, curb_pilots=9)],
            K,
            2,
            35,
            "halved 2",
        ),
        (
            "curbs never take a positive request below one",
            demand(3),
            EntrySupply(),
            [lvl(idle=5, curb_idle_pilots=5), lvl("group", pilots=9, curb_pilots=9)],
            K,
            1,
            4,
            "halved 2",
        ),
        (
            "max_idle_per_entry 0 means never ask",
            demand(30),
            EntrySupply(),
            [],
            Knobs(max_idle_per_entry=0),
            0,
            35,
            "max_idle_per_entry",
        ),
        (
            "running pilots add to max running with the factor",
            demand(10),
            EntrySupply(busy=20),
            [],
            K,
            3,
            35,
            "/3",
        ),
    ],
)
def test_pressure(case, d, s, levels, knobs, idle, max_running, note):
    p = pressure(d, s, levels, knobs)
    assert (p.idle, p.max_running) == (idle, max_running), case
    assert any(note in r for r in (*p.reasons, *p.limits, *p.curbs)), (case, p)


def test_limits_and_curbs_are_named():
    p = pressure(
        demand(30),
        EntrySupply(),
        [lvl("group", pilots=9, curb_pilots=9), lvl("global", idle=3, max_idle_pilots=3)],
        K,
    )
    assert p.limits == ("global idle pilots 3 >= max 3",)
    p = pressure(demand(30), EntrySupply(), [lvl("group", pilots=9, curb_pilots=9)], K)
    assert p.curbs == ("group pilots 9 >= curb 9",)


R = RemovalRules(max_stage=RemovalStage.IDLE, confirm_cycles=3, escalate_cycles=2)


def upto(stage: RemovalStage) -> RemovalRules:
    return RemovalRules(max_stage=stage, confirm_cycles=3, escalate_cycles=2)


@pytest.mark.parametrize(
    ("has_demand", "before", "rules", "stage", "after"),
    [
        (True, 7, R, "NO", 0),  # demand resets everything
        (False, 0, R, "NO", 1),  # first empty cycle: unconfirmed
        (False, 1, R, "NO", 2),  # still unconfirmed
        (False, 2, R, "WAIT", 3),  # confirmed: stop submitting
        (False, 3, R, "WAIT", 4),
        (False, 4, R, "IDLE", 5),  # escalate: remove queued excess
        (False, 9, R, "IDLE", 10),  # ALL not allowed by this group
        (False, 9, upto(RemovalStage.ALL), "ALL", 10),
        (False, 9, upto(RemovalStage.WAIT), "WAIT", 10),
        (False, 9, upto(RemovalStage.NO), "NO", 10),
        (False, 0, RemovalRules(confirm_cycles=1, escalate_cycles=1), "WAIT", 1),
    ],
)
def test_removal_stage(has_demand, before, rules, stage, after):
    got, n, why = removal_stage(has_demand, Memory(no_demand_cycles=before), rules)
    assert (got, n) == (stage, after)
    assert why


def test_sudden_drop_holds_max_running_until_confirmed():
    held = decide(
        demand(0),
        EntrySupply(busy=2),
        [],
        K,
        R,
        Memory(no_demand_cycles=0, last_idle=10, last_max_running=40),
    )
    assert (held.idle, held.max_running, held.remove) == (0, 40, "NO")
    assert any("held at 40" in r for r in held.reasons)
    assert held.memory.no_demand_cycles == 1 and held.memory.last_max_running == 40
    confirmed = decide(
        demand(0), EntrySupply(busy=2), [], K, R, Memory(no_demand_cycles=2, last_max_running=40)
    )
    assert (confirmed.idle, confirmed.max_running, confirmed.remove) == (0, 2, "WAIT")


def test_margin_only_when_removing_and_all_targets_working_pilots():
    rules = RemovalRules(max_stage=RemovalStage.ALL, margin=2, confirm_cycles=1, escalate_cycles=1)
    s = EntrySupply(queued=3, idle=4, busy=2, partial=1, idle_units=4.0)
    wait = decide(demand(0), s, [], K, rules, Memory())
    assert (wait.remove, wait.remove_margin) == ("WAIT", 0)
    idle = decide(demand(0), s, [], K, rules, Memory(no_demand_cycles=1))
    assert (idle.remove, idle.remove_margin, idle.max_running) == ("IDLE", 2, 7)
    everything = decide(demand(0), s, [], K, rules, Memory(no_demand_cycles=2))
    assert (everything.remove, everything.remove_margin, everything.max_running) == ("ALL", 2, 3)
    assert everything.as_request() == {
        "idle": 0,
        "max_running": 3,
        "remove": "ALL",
        "remove_margin": 2,
    }


def test_demand_returning_cancels_removal():
    d = decide(
        demand(9),
        EntrySupply(queued=1),
        [],
        K,
        R,
        Memory(no_demand_cycles=8, last_remove=RemovalStage.IDLE),
    )
    assert (d.remove, d.idle, d.memory.no_demand_cycles) == ("NO", 3, 0)


def test_memory_round_trips_and_tolerates_junk():
    m = Memory(no_demand_cycles=3, last_idle=4, last_max_running=5, last_remove=RemovalStage.WAIT)
    assert m.to_json()["last_remove"] == "WAIT"
    assert Memory.from_json(m.to_json()) == m
    assert Memory.from_json("junk") == Memory()
    assert Memory.from_json({**m.to_json(), "last_remove": "SOME"}).last_remove is RemovalStage.NO
