"""Clause-by-clause analysis, the slots users see, and the `-af`/`-json`
forms: pure functions, table-driven."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from glidewms import classads
from glidewms.cli.user import _split_af, ad_json, af_line
from glidewms.pool.analyze import analyze_job, analyze_slot, clauses_of, public_slot, slot_view

BIG = {"Cpus": 8, "Memory": 16000, "Disk": 10**6, "GLIDEIN_Site": "A", "HasDocker": True}
SMALL = {"Cpus": 2, "Memory": 1000, "Disk": 10**6, "GLIDEIN_Site": "B"}
PICKY = {**BIG, "GLIDEIN_Site": "C", "GLIDEIN_Start": 'TARGET.Owner == "carol"'}


def job(requirements: str, **attrs: object) -> classads.ClassAd:
    ad = classads.parse_ad(
        f'[ Owner = "alice"; RequestCpus = 1; RequestMemory = 100; RequestDisk = 1; '
        f"Requirements = {requirements} ]"
    )
    for name, value in attrs.items():
        ad[name] = value
    return ad


PILOTS = [("big", BIG, None), ("small", SMALL, None), ("picky", PICKY, None)]


@pytest.mark.parametrize(
    ("requirements", "counts", "all_", "accepting", "now"),
    [
        # every clause counted apart; the Start of PICKY refuses alice
        ("TARGET.Memory >= 4000 && TARGET.HasDocker", [2, 2], 2, 2, 1),
        ('TARGET.Memory >= 4000 && TARGET.GLIDEIN_Site == "B"', [2, 1], 0, 2, 0),
        ('(TARGET.Cpus >= 2) && (TARGET.GLIDEIN_Site == "Z")', [3, 0], 0, 2, 0),
        ("TARGET.Cpus >= 1", [3], 3, 2, 2),
    ],
)
def test_each_clause_counts_its_slots(requirements, counts, all_, accepting, now):
    result = analyze_job(job(requirements), PILOTS)
    assert result["slots"] == 3
    assert [c["matching"] for c in result["clauses"]] == counts
    assert result["matching_requirements"] == all_
    assert result["accepting_job"] == accepting
    assert result["matching_now"] == now


def test_free_resources_decide_matching_now():
    busy = [("big", BIG, {"cpus": 0, "memory": 16000, "disk": 10**6, "gpus": 0})]
    result = analyze_job(job("TARGET.Cpus >= RequestCpus"), busy)
    assert result["clauses"][0]["matching"] == 1  # the whole slot could
    assert result["matching_now"] == 0  # its cores are taken now


def test_a_slot_names_the_clauses_it_fails():
    result = analyze_slot(job('TARGET.Memory >= 4000 && TARGET.GLIDEIN_Site == "A"'), SMALL)
    assert result["failing"] == ["TARGET.Memory >= 4000", 'TARGET.GLIDEIN_Site == "A"']
    assert result["slot_accepts_job"] is True
    picky = analyze_slot(job("TARGET.Cpus >= 1"), PICKY)
    assert picky["failing"] == [] and picky["slot_accepts_job"] is False


def test_clauses_split_at_top_level_only():
    ad = job('(A || B) && C && regexp("a&&b", Name)')
    found = clauses_of(ad)
    assert len(found) == 3 and "A || B" in found[0] and found[1] == "C" and "a&&b" in found[2]
    assert clauses_of(classads.parse_ad("[ X = 1 ]")) == []


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("GLIDEIN_Site", True),
        ("Cpus", True),
        ("GLIDEIN_Proxy_Token", False),
        ("X509_PROXY", False),
        ("SharedSecret", False),
        ("ssh_private_file", False),
        ("api_key", False),
        ("Password", False),
        ("KeyboardLayout", False),  # over-cautious on `^key`: better hidden than leaked
        ("Monkey", True),
    ],
)
def test_credential_named_attributes_are_not_shown(name, shown):
    assert (name in public_slot({name: 1})) is shown


def test_slot_view_counts_free_and_total():
    row = SimpleNamespace(
        pilot_id="p1",
        slot=BIG,
        free={"cpus": 3, "memory": 100, "disk": 5, "gpus": 0},
        frontend="fe",
        group_name="g",
        state="active",
        retiring=True,
        registered_at=1000.0,
    )
    view = slot_view(row, running=2, now=1060.0)
    assert view["total"]["cpus"] == 8 and view["free"]["cpus"] == 3
    assert view["state"] == "retiring" and view["jobs"] == 2 and view["age"] == 60.0
    assert view["site"] == "A" and view["entry"] is None


@pytest.mark.parametrize(
    ("ids", "af", "plain", "attrs"),
    [
        (["1.0", "Owner"], ["ClusterId"], ["1.0"], ["ClusterId", "Owner"]),
        (["Cmd"], ["A,B C"], [], ["A", "B", "C", "Cmd"]),
        (["7"], None, ["7"], []),
        (["x.y"], None, ["x.y"], []),  # no -af: left for job_ids to refuse
    ],
)
def test_af_takes_the_names_after_it(ids, af, plain, attrs):
    assert _split_af(ids, af) == (plain, attrs)


def test_af_and_json_forms():
    ad = classads.parse_ad(
        '[ Owner = "alice"; Cpus = 4; Big = true; R = TARGET.Memory > 2; X = undefined ]'
    )
    assert af_line(ad, ["Owner", "Cpus", "Big", "Missing", "X"]) == (
        "alice 4 true undefined undefined"
    )
    values = json.loads(json.dumps(ad_json(ad)))
    assert values["Owner"] == "alice" and values["Cpus"] == 4 and values["Big"] is True
    assert values["R"] == "TARGET.Memory > 2"


def test_entries_are_judged_as_the_frontend_would():
    from glidewms.cli.analyze_entries import entries_lines, entries_report

    entries = [
        {"name": "magic", "site": "A", "cpus": 8, "memory": 16000, "attributes": {"HasMagic": 1}},
        {"name": "small", "site": "B", "cpus": 1, "memory": 2000, "attributes": {"HasMagic": 1}},
        {"name": "plain", "site": "C", "cpus": 8, "memory": 16000, "attributes": {}},
        {"name": "off", "site": "D", "cpus": 8, "memory": 16000, "enabled": False},
    ]
    ad = job("TARGET.Memory >= 4000 && TARGET.HasMagic == 1 && TARGET.OpSysMajorVer == 9")
    report = entries_report(ad, entries)
    assert report["entries"] == 3  # the disabled one is not asked
    # the OS version is detected on the node: every entry passes it here
    assert [r["entries"] for r in report["clauses"]] == [2, 2, 3]
    assert report["matching"] == ["magic"]
    assert "could run it: magic" in entries_lines(report)[-1]
    nowhere = entries_report(job('TARGET.GLIDEIN_Site == "Z"'), entries)
    assert nowhere["matching"] == []
    assert "no entry satisfies" in entries_lines(nowhere)[-1]
