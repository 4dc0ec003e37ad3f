"""The site test decided without the ClassAd library gives the library's answers.

Random entries and jobs (site names with case, spaces and commas in them,
lists with every delimiter, numbers, expressions, missing attributes) are
matched twice: with the shortcut and with every conjunct through the real
ClassAd library. The entry sets must be identical.
"""

from __future__ import annotations

import random

import pytest

from glidewms import classads
from glidewms.frontend.conjuncts import Matcher, conjuncts
from glidewms.frontend.listmember import ListMember, recognise
from glidewms.frontend.matching import EntryInfo, Size

SITE_NAMES = [
    "S1",
    "s1",
    "S2",
    "T2_US_MIT",
    "t2_us_mit",
    "A B",
    "A,B",
    "",
    "x",
    "S10",
    "é",
    "S\u0130",
]
DELIMITERS = [",", ", ", " ", "\t", "\n", "\r\n", ",,", " , ", ";"]
EXPRESSIONS = [
    "stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites)",
    "stringListMember(TARGET.GLIDEIN_Site, MY.DESIRED_Sites)",
    "stringListIMember(TARGET.GLIDEIN_Site, DESIRED_Sites)",
    "StringListMember( target.glidein_site , desired_sites )",
    "stringListMember(TARGET.Other, DESIRED_Sites)",
]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        (
            "stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites)",
            ListMember("glidein_site", "DESIRED_Sites", False),
        ),
        ("stringListIMember(TARGET.Site,MY.Wanted)", ListMember("site", "Wanted", True)),
        ('stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites, ",")', None),  # delimiters
        ("stringListMember(GLIDEIN_Site, DESIRED_Sites)", None),  # unscoped item
        ("stringListMember(TARGET.GLIDEIN_Site, TARGET.Sites)", None),  # list from entry
        ("stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites) || true", None),
    ],
)
def test_recognise_only_the_exact_form(text, found):
    assert recognise(text) == found


def _entry(i: int, rng: random.Random) -> EntryInfo:
    attrs: dict[str, object] = {"Cpus": 1}
    roll = rng.random()
    if roll < 0.75:
        attrs["GLIDEIN_Site"] = rng.choice(SITE_NAMES)
    elif roll < 0.85:
        attrs["GLIDEIN_Site"] = rng.randint(0, 3)
    if rng.random() < 0.5:
        attrs["Other"] = rng.choice(SITE_NAMES)
    return EntryInfo(f"f/e{i}", attrs, Size())


def _job(rng: random.Random) -> object:
    roll = rng.random()
    if roll < 0.7:
        names = [rng.choice(SITE_NAMES) for _ in range(rng.randint(0, 4))]
        text = ""
        for name in names:
            text += name + rng.choice(DELIMITERS)
        if rng.random() < 0.3:
            text = rng.choice([" ", ","]) + text
        value = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    elif roll < 0.8:
        value = str(rng.randint(0, 3))
    elif roll < 0.9:
        value = f'strcat("{rng.choice(SITE_NAMES[:5])}", ",S2")'
    else:
        return classads.parse_ad("[ RequestCpus = 1 ]")
    return classads.parse_ad(f"[ RequestCpus = 1; DESIRED_Sites = {value} ]")


def test_shortcut_agrees_with_the_library_on_random_inputs():
    rng = random.Random(2026)
    entries = [_entry(i, rng) for i in range(60)]
    parts = [c for text in EXPRESSIONS for c in conjuncts(text, True)]
    assert sum(c.fast is not None for c in parts) == 5
    shortcut_used = 0
    for _ in range(400):
        job = _job(rng)
        fast, slow = Matcher(entries, fast=True), Matcher(entries, fast=False)
        for conjunct in parts:
            expected = slow.passing(job, conjunct)
            assert fast.passing(job, conjunct) == expected, (conjunct.text, str(job))
        shortcut_used += fast.evaluations < slow.evaluations
    assert shortcut_used > 200  # most random jobs took the shortcut


def test_demand_is_the_same_with_and_without_the_shortcut():
    from glidewms.frontend.matching import GroupRules, match_demand

    rng = random.Random(7)
    sizes = [Size(1, 2048), Size(8, 16000), Size(8, 32000, gpus=1)]
    entries = []
    for i in range(40):
        size = sizes[i % 3]
        attrs = {
            "GLIDEIN_Site": f"S{i % 9}",
            "Cpus": size.cpus,
            "Memory": size.memory,
            "GPUs": size.gpus,
        }
        entries.append(EntryInfo(f"f/e{i}", attrs, size))
    acs = []
    for i in range(120):
        cpus, memory = rng.choice([1, 2, 8]), rng.choice([500, 2000, 6000])
        sites = " ,".join(f"S{rng.randrange(12)}" for _ in range(rng.randint(1, 3)))
        acs.append(
            {
                "id": i,
                "idle": rng.randint(0, 50),
                "running": rng.randint(0, 3),
                "owners": {},
                "oldest_idle": 0.0,
                "request": {"cpus": cpus, "memory": memory},
                "ad": f"[ RequestCpus = {cpus}; RequestMemory = {memory}; "
                f'DESIRED_Sites = "{sites}"; Requirements = '
                f"stringListMember(TARGET.GLIDEIN_Site, DESIRED_Sites) && "
                f"TARGET.Cpus >= RequestCpus && TARGET.Memory >= RequestMemory ]",
            }
        )
    rules = GroupRules(match_expr="stringListIMember(TARGET.GLIDEIN_Site, DESIRED_Sites)")
    fast = match_demand(acs, entries, rules, 1e6, Matcher(entries, fast=True))
    slow_matcher = Matcher(entries, fast=False)
    slow = match_demand(acs, entries, rules, 1e6, slow_matcher)
    assert fast == slow
    assert sum(d.idle_jobs for d in fast.values()) > 0
    assert slow_matcher.evaluations > 100
