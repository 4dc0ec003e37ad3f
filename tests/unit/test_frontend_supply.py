"""Supply: which pilots will take the idle jobs, from the factory's and pool's views."""

from __future__ import annotations

import pytest

from glidewms.config.frontend import GroupConfig
from glidewms.frontend.matching import JobRequest, Size
from glidewms.frontend.observe import FactoryView, entry_size, observe_group
from glidewms.frontend.supply import entry_supply, usable_fraction

BIG = Size(8, 16000)
ONE_CORE = {JobRequest(1, 1000): 10.0}
HIGH_MEM = {JobRequest(1, 12000): 3.0}


def pilot(free: dict | None = None, running: int = 0, **kw) -> dict:
    p = {
        "group": "main",
        "frontend": "fe",
        "running_jobs": running,
        "state": "active",
        "slot": {"Cpus": 8, "Memory": 16000, "GLIDEIN_Entry_Name": "big"},
        **kw,
    }
    if free is not None:
        p["free"] = free
    return p


@pytest.mark.parametrize(
    ("free", "requests", "fraction"),
    [
        (BIG, ONE_CORE, 1.0),  # a whole free pilot
        (Size(4, 8000), ONE_CORE, 0.5),  # half free
        (Size(8, 2000), HIGH_MEM, 0.0),  # too little memory for these jobs
        (Size(8, 16000), {JobRequest(1, 100, gpus=1): 1.0}, 0.0),  # GPU jobs, no GPU
        (BIG, {}, 0.0),  # no idle jobs: nothing to supply
        (Size(8, 12000), {**ONE_CORE, **HIGH_MEM}, 1.0),  # best fitting shape counts
    ],
)
def test_usable_fraction(free, requests, fraction):
    assert usable_fraction(free, BIG, requests) == pytest.approx(fraction)


def test_categories_from_factory_and_pool():
    pilots = [
        pilot(),  # idle, no free report yet: the whole slot
        pilot({"cpus": 4, "memory": 8000}, running=4),  # partial
        pilot({"cpus": 0, "memory": 0}, running=8),  # busy
        pilot({"cpus": 8, "memory": 500}),  # unusable for 1000 MB jobs
        pilot(retiring=True),  # retiring: never idle supply
        pilot(state="draining"),
    ]
    s = entry_supply({"queued": 2, "running": 9, "removing": 1}, pilots, BIG, ONE_CORE)
    assert (s.queued, s.starting, s.idle, s.partial, s.busy, s.unusable, s.retiring) == (
        2,
        3,
        1,
        1,
        1,
        1,
        2,
    )
    assert s.idle_units == pytest.approx(1.5)
    assert s.idle_supply == pytest.approx(4.5)
    assert (s.running, s.total, s.idle_pilots, s.working) == (9, 12, 5, 2)


@pytest.mark.parametrize(
    ("running", "exited", "registered", "starting", "kept"),
    [
        (3, 0, 1, 2, 0),  # two pilots still bootstrapping
        (3, 2, 1, 0, 2),  # two black holes keeping their nodes: not starting
        (3, 1, 1, 1, 1),
        (2, 5, 0, 0, 2),  # never more exited than running (counts read apart)
        (3, -4, 1, 2, 0),  # a nonsense count changes nothing
    ],
)
def test_a_node_a_black_hole_keeps_is_not_starting_supply(
    running: int, exited: int, registered: int, starting: int, kept: int
) -> None:
    counts = {"running": running, "exited": exited}
    s = entry_supply(counts, [pilot()] * registered, BIG, ONE_CORE)
    assert (s.starting, s.exited) == (starting, kept)
    assert s.idle_pilots == starting + registered  # the registered one is idle
    assert s.running == max(running, registered)  # still batch slots max_running bounds


def test_auto_entry_size_learned_from_pilots():
    group = GroupConfig(auto_cpus=2, auto_memory=1024)
    auto = {"name": "e", "cpus": "auto", "memory": "auto", "attributes": {"GPUs": 2}}
    assert entry_size(auto, [], group) == Size(2, 1024, 2, 102400)
    assert entry_size(auto, [pilot()], group) == Size(8, 16000, 2, 102400)
    assert entry_size({"cpus": 4, "memory": 100, "disk": 50}, [pilot()], group) == Size(
        4, 100, 0, 50
    )


def test_observe_group_combines_views_and_filters():
    entries = [
        {"name": "big", "site": "B", "cpus": 8, "memory": 16000},
        {"name": "off", "site": "B", "cpus": 8, "memory": 16000, "enabled": False},
        {"name": "other", "site": "X", "cpus": 8, "memory": 16000},
    ]
    acs = [
        {
            "id": 1,
            "ad": "[ RequestCpus = 1; RequestMemory = 1000; Requirements = true ]",
            "idle": 16,
            "running": 0,
            "owners": {"u": 16},
            "request": {"cpus": 1, "memory": 1000},
        }
    ]
    group = GroupConfig(entry_constraint='GLIDEIN_Site == "B"')
    pilots = [pilot(), pilot(group="other"), pilot(frontend="someone-else")]
    factory = FactoryView(name="f", url="http://f", entries=entries, counts={"big": {"queued": 1}})
    view = observe_group(group, "fe", acs, pilots, [factory], 0.0)
    assert set(view.observations) == {"f/big"}
    assert view.skipped == {
        "f/off": "entry disabled at the factory",
        "f/other": "entry_constraint is not true for this entry",
    }
    o = view.observations["f/big"]
    assert o.demand.units == pytest.approx(2)
    assert (o.supply.queued, o.supply.idle, o.supply.idle_units) == (1, 1, 1.0)
