"""The frontend's pure policy: matching demand to entries and sizing requests."""

from __future__ import annotations

import pytest

from glidewms.frontend.policy import (
    Decision,
    EntryDemand,
    EntrySupply,
    Limits,
    decide,
    match_demand,
)
from glidewms.frontend.service import supply_by_entry

SMALL = {"name": "small", "site": "A", "cpus": 1, "memory": 2000}
BIG = {"name": "big", "site": "B", "cpus": 8, "memory": 16000}
GPU = {"name": "gpu", "site": "C", "cpus": 4, "memory": 8000, "attributes": {"GPUs": 1}}


def ac(id_: int, idle: int, req: str = "true", cpus: int = 1, memory: int = 100,
       running: int = 0, extra: str = "") -> dict:
    ad = (f"[ RequestCpus = {cpus}; RequestMemory = {memory}; {extra}"
          f"Requirements = ({req}) && TARGET.Cpus >= RequestCpus "
          f"&& TARGET.Memory >= RequestMemory ]")
    return {"id": id_, "ad": ad, "idle": idle, "running": running,
            "request": {"cpus": cpus, "memory": memory}}


def test_jobs_go_only_where_they_fit():
    acs = [ac(1, 10), ac(2, 3, cpus=4, memory=8000),
           ac(3, 2, req="TARGET.GPUs >= 1", cpus=1)]
    d = match_demand(acs, [SMALL, BIG, GPU])
    assert d["small"].autoclusters == (1,)
    assert d["big"].autoclusters == (1, 2)
    assert d["gpu"].autoclusters == (1, 2, 3)
    assert d["big"].idle_cpus == 10 + 3 * 4


def test_site_requirements_with_stringlistmember():
    acs = [ac(1, 5, req="stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites)",
              extra='DESIRED_Sites = "B,C"; ')]
    d = match_demand(acs, [SMALL, BIG, GPU])
    assert (d["small"].idle_jobs, d["big"].idle_jobs, d["gpu"].idle_jobs) == (0, 5, 5)


def test_group_match_expression_filters_entries():
    d = match_demand([ac(1, 4)], [SMALL, BIG], match_expr='TARGET.GLIDEIN_Site == "A"')
    assert (d["small"].idle_jobs, d["big"].idle_jobs) == (4, 0)


LIM = Limits(max_idle=100, max_running=1000, running_factor=1.0)


@pytest.mark.parametrize(
    ("demand", "supply", "cpus", "limits", "idle", "max_running"),
    [
        # no idle demand: ask for nothing, keep busy pilots allowed
        (EntryDemand(0, 5, 0), EntrySupply(busy=3), 1, LIM, 0, 3),
        # 10 one-core jobs on 1-core pilots, nothing there yet
        (EntryDemand(10, 0, 10), EntrySupply(), 1, LIM, 10, 10),
        # 4-core pilots pack 4 jobs each
        (EntryDemand(10, 0, 10), EntrySupply(), 4, LIM, 3, 3),
        # registered idle and starting pilots will take jobs: ask for fewer
        (EntryDemand(10, 0, 10), EntrySupply(idle=2, starting=3), 1, LIM, 5, 10),
        # supply above need never goes negative
        (EntryDemand(2, 0, 2), EntrySupply(idle=5), 1, LIM, 0, 2),
        # capped by max idle
        (EntryDemand(500, 0, 500), EntrySupply(), 1, Limits(50, 1000, 1.0), 50, 500),
        # capped by max running
        (EntryDemand(500, 0, 500), EntrySupply(busy=10), 1, Limits(100, 200, 1.0), 100, 200),
        # running factor headroom
        (EntryDemand(10, 0, 10), EntrySupply(busy=10), 1, Limits(100, 1000, 1.15), 10, 23),
    ],
)
def test_decide(demand, supply, cpus, limits, idle, max_running):
    d = decide(demand, supply, cpus, limits)
    assert isinstance(d, Decision)
    assert (d.idle, d.max_running, d.remove) == (idle, max_running, "NO")
    assert d.reasons


def test_supply_combines_factory_and_pool_views():
    glideins = [
        {"glidein_id": "g1", "entry": "e", "group": "main", "state": "queued"},
        {"glidein_id": "g2", "entry": "e", "group": "main", "state": "running"},
        {"glidein_id": "g3", "entry": "e", "group": "main", "state": "running"},
        {"glidein_id": "g4", "entry": "e", "group": "main", "state": "running"},
        {"glidein_id": "g5", "entry": "e", "group": "main", "state": "finished"},
        {"glidein_id": "g6", "entry": "e", "group": "other", "state": "running"},
    ]
    pilots = [
        {"glidein_id": "g3", "group": "main", "running_jobs": 0},
        {"glidein_id": "g4", "group": "main", "running_jobs": 2},
    ]
    s = supply_by_entry("main", pilots, glideins)["e"]
    assert (s.queued, s.starting, s.idle, s.busy) == (1, 1, 1, 1)
