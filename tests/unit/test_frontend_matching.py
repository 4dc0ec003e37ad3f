"""Demand matching: where idle jobs can run, counted straight, proportionally,
uniquely and in pilots of each entry's size (real ClassAd library)."""

from __future__ import annotations

import pytest

from glidewms.frontend.conjuncts import Matcher, split_conjuncts
from glidewms.frontend.matching import (
    EntryInfo,
    GroupRules,
    JobRequest,
    Size,
    jobs_per_pilot,
    match_demand,
)
from glidewms.frontend.observe import entry_attributes

NOW = 1_000_000.0


def entry(name: str, site: str, cpus: int, memory: int, gpus: int = 0, **attrs) -> EntryInfo:
    size = Size(cpus, memory, gpus)
    raw = {"name": name, "site": site, "attributes": attrs}
    return EntryInfo(f"f/{name}", entry_attributes(raw, "f", size), size)


SMALL = entry("small", "A", 1, 2000)
BIG = entry("big", "B", 8, 16000)
GPU = entry("gpu", "C", 4, 8000, gpus=1)
ALL = [SMALL, BIG, GPU]


def ac(
    id_: int,
    idle: int,
    req: str = "true",
    cpus: int = 1,
    memory: int = 100,
    gpus: int = 0,
    running: int = 0,
    extra: str = "",
    oldest: float | None = None,
    owners: dict | None = None,
) -> dict:
    ad = (
        f"[ RequestCpus = {cpus}; RequestMemory = {memory}; RequestGPUs = {gpus}; {extra}"
        f"Requirements = ({req}) && TARGET.Cpus >= RequestCpus "
        f"&& TARGET.Memory >= RequestMemory ]"
    )
    return {
        "id": id_,
        "ad": ad,
        "idle": idle,
        "running": running,
        "oldest_idle": oldest,
        "owners": owners or {"alice": idle},
        "request": {"cpus": cpus, "memory": memory, "gpus": gpus},
    }


@pytest.mark.parametrize(
    ("request_", "size", "per"),
    [
        (JobRequest(1, 100), Size(8, 16000), 8),  # cores bound
        (JobRequest(1, 4000), Size(8, 16000), 4),  # memory bound
        (JobRequest(2, 100, gpus=1), Size(8, 16000, gpus=2), 2),  # gpus bound
        (JobRequest(1, 100, gpus=1), Size(8, 16000), 0),  # no GPU: never fits
        (JobRequest(16, 100), Size(8, 16000), 0),  # bigger than the pilot
        (JobRequest(1, 100, disk=2 * 1024 * 1024), Size(8, 16000, disk=1024), 0),  # disk KiB/MB
        (JobRequest(1, 100, disk=1024), Size(1, 16000, disk=None), 1),  # unknown disk: ignored
    ],
)
def test_jobs_per_pilot(request_, size, per):
    assert jobs_per_pilot(request_, size) == per


def test_jobs_go_only_where_they_fit_counted_three_ways():
    acs = [ac(1, 12), ac(2, 4, cpus=4, memory=8000), ac(3, 2, req="TARGET.GPUs >= 1", gpus=1)]
    d = match_demand(acs, ALL, GroupRules(), NOW)
    small, big, gpu = d["f/small"], d["f/big"], d["f/gpu"]
    # ac1 (12 one-core jobs) runs at all three; ac2 at big and gpu; ac3 only at gpu
    assert (small.idle_jobs, big.idle_jobs, gpu.idle_jobs) == (12, 16, 18)
    assert small.prop_jobs == pytest.approx(4)
    assert big.prop_jobs == pytest.approx(4 + 2)
    assert gpu.prop_jobs == pytest.approx(4 + 2 + 2)
    assert (small.unique_jobs, big.unique_jobs, gpu.unique_jobs) == (0, 0, 2)
    # in pilots of each entry's size: 1-core pilots take 1 job, 8-core take 8 (or 2 of 4-core)
    assert small.units == pytest.approx(12)
    assert big.units == pytest.approx(12 / 8 + 4 / 2)
    assert big.prop_units == pytest.approx(4 / 8 + 2 / 2)
    assert gpu.units == pytest.approx(12 / 4 + 4 / 1 + 2 / 1)
    assert sum(e.prop_jobs for e in d.values()) == pytest.approx(18)


def test_site_requirements_evaluated_once_per_distinct_site():
    entries = [entry(f"e{i}", f"S{i % 3}", 4, 8000) for i in range(30)]
    acs = [
        ac(
            i,
            5,
            req="stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites)",
            extra=f'DESIRED_Sites = "S{i % 2}"; ',
        )
        for i in range(10)
    ]
    matcher = Matcher(entries)
    d = match_demand(acs, entries, GroupRules(), NOW, matcher)
    assert sum(1 for x in d.values() if x.idle_jobs) == 20  # sites S0 and S1
    assert d["f/e0"].idle_jobs == 25 and d["f/e2"].idle_jobs == 0
    # site conjunct: 2 distinct job values x 3 sites; size conjuncts: 1 x 1 each
    assert matcher.evaluations <= 2 * 3 + 2


def test_group_match_and_start_expressions():
    acs = [ac(1, 4), ac(2, 3, extra="IsLong = true; ")]
    rules = GroupRules(match_expr='TARGET.GLIDEIN_Site != "C"', start_expr="TARGET.IsLong =!= true")
    d = match_demand(acs, ALL, rules, NOW)
    assert (d["f/small"].idle_jobs, d["f/big"].idle_jobs, d["f/gpu"].idle_jobs) == (4, 4, 0)


def test_job_constraint_per_owner():
    acs = [ac(1, 10, owners={"alice": 6, "bob": 4})]
    d = match_demand(acs, [BIG], GroupRules(job_constraint='Owner == "bob"'), NOW)
    assert d["f/big"].idle_jobs == 4


def test_old_jobs_and_overflow():
    sited = "stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites)"
    young = ac(1, 6, extra='DESIRED_Sites = "B"; ', oldest=NOW - 60)
    old = ac(2, 4, extra='DESIRED_Sites = "B"; ', oldest=NOW - 7200)
    rules = GroupRules(
        match_expr=sited,
        old_idle_seconds=600,
        overflow_after=3600,
        overflow_match='TARGET.GLIDEIN_Site != "C"',
    )
    d = match_demand([young, old], ALL, rules, NOW)
    assert d["f/big"].idle_jobs == 10 and d["f/big"].old_jobs == 4
    # the old jobs overflow to A (not C, excluded by the overflow match)
    assert (d["f/small"].idle_jobs, d["f/small"].overflow_jobs, d["f/gpu"].idle_jobs) == (4, 4, 0)
    assert d["f/big"].prop_jobs == pytest.approx(6 + 2)
    no_overflow = match_demand([young, old], ALL, GroupRules(match_expr=sited), NOW)
    assert no_overflow["f/small"].idle_jobs == 0


def test_running_only_autoclusters_count_running_not_idle():
    d = match_demand([ac(1, 0, running=3)], [BIG], GroupRules(), NOW)
    assert (d["f/big"].idle_jobs, d["f/big"].running_jobs, d["f/big"].units) == (0, 3, 0)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("a && b", ["a", "b"]),
        ("(a && (b && c))", ["a", "b", "c"]),
        ("(a) || (b && c)", ["(a) || (b && c)"]),
        ('x == "p && q" && y', ['x == "p && q"', "y"]),
        ("f(a && b) && {1, 2}[0] == 1", ["f(a && b)", "{1, 2}[0] == 1"]),
        ("(a) && (b)", ["a", "b"]),
        ('(x == ")" && y)', ['x == ")"', "y"]),  # a quoted parenthesis closes nothing
        ('s == "q\\"&&" && t', ['s == "q\\"&&"', "t"]),  # nor does an escaped quote end one
    ],
)
def test_split_conjuncts(text, parts):
    assert [p.strip() for p in split_conjuncts(text)] == parts


def test_memo_keeps_library_answers_across_cycles_but_not_clock_readers():
    entries = [entry(f"e{i}", f"S{i % 3}", 4, 8000) for i in range(12)]
    acs = [ac(i, 5, req='TARGET.GLIDEIN_Site =!= "S2"', extra=f"Tag = {i % 2}; ") for i in range(6)]
    rules = GroupRules(
        match_expr="TARGET.Cpus >= 2 && time() > 0", start_expr="TARGET.RequestCpus <= 4"
    )
    memo: dict = {}
    first, second = Matcher(entries, memo=memo), Matcher(entries, memo=memo)
    a = match_demand(acs, entries, rules, NOW, first)
    b = match_demand(acs, entries, rules, NOW, second)
    assert a == b and sum(d.idle_jobs for d in a.values()) == 6 * 5 * 8
    assert first.evaluations > second.evaluations
    # only the clock-reading conjunct is asked again: once per distinct job values
    assert second.evaluations == len(Matcher(entries)._partition(()))
    assert Matcher(entries).evaluations == 0


def test_group_expression_errors_are_counted_even_from_the_memo():
    memo: dict = {}
    rules = GroupRules(match_expr="TARGET.GLIDEIN_Site + 1 > 0")
    for _ in range(2):
        matcher = Matcher(ALL, memo=memo)
        d = match_demand([ac(1, 3)], ALL, rules, NOW, matcher)
        assert sum(x.idle_jobs for x in d.values()) == 0
        assert matcher.errors == {"match_expr: TARGET.GLIDEIN_Site + 1 > 0": 3}
    # a job's own Requirements erring is the job's business, not counted
    matcher = Matcher(ALL)
    match_demand([ac(1, 3, req="TARGET.GLIDEIN_Site + 1 > 0")], ALL, GroupRules(), NOW, matcher)
    assert matcher.errors == {}


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        # what pilots detect and these entries do not declare: the pool decides
        ('Machine != "x"', {"plain", "bwrap_only", "no_containers"}),
        ('TARGET.Machine == "x"', {"plain", "bwrap_only", "no_containers"}),
        ("TARGET.HasContainer && TARGET.HasSandboxImage", {"plain", "bwrap_only"}),
        # an entry that declares the attribute is answered by its value
        ("(TARGET.HasContainer) && (TARGET.HasSIF)", {"plain"}),
        ("TARGET.HAS_SINGULARITY =?= true", {"plain"}),
        (
            "countMatches(MY.RequireGPUs, TARGET.AvailableGPUs) >= 1",
            {"plain", "bwrap_only", "no_containers"},
        ),
        ('TARGET.FileSystemDomain == "fs.example"', {"plain", "bwrap_only", "no_containers"}),
        # what every entry declares, or nobody detects, stays decided here
        ('TARGET.GLIDEIN_Site == "A"', {"plain"}),
        ("TARGET.HasDocker", set()),
        ("TARGET.Nonexistent_Attribute", set()),
    ],
)
def test_attributes_only_pilots_know_do_not_keep_jobs_from_getting_pilots(req, expected):
    entries = [
        entry("plain", "A", 1, 2000),
        entry("bwrap_only", "B", 1, 2000, HasSIF=False, HAS_SINGULARITY=False),
        entry("no_containers", "C", 1, 2000, HasContainer=False, HAS_SINGULARITY=False),
    ]
    job = ac(1, 3, req=req, extra="RequireGPUs = Capability >= 8.0; ")
    for fast in (True, False):
        d = match_demand([job], entries, GroupRules(), NOW, Matcher(entries, fast=fast))
        assert {k[2:] for k, v in d.items() if v.idle_jobs} == expected, fast
