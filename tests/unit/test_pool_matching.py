"""Pure pieces of the pool: slot shapes for the match cache, the periodic
policy rule, and listing ads without a parse per job (real ClassAd library)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from glidewms import classads
from glidewms.pool import listing
from glidewms.pool.jobs import HOLD_POLICY, HOLD_USER, full_ad
from glidewms.pool.matchmaker import Matchmaker, slot_refs
from glidewms.pool.periodic import decide
from glidewms.pool.slots import slot_with, whole_slot

JOB = (
    "[ RequestCpus = 1; RequestMemory = 100; "
    "Requirements = TARGET.Cpus >= RequestCpus && Memory >= RequestMemory && "
    'stringListMember(TARGET.GLIDEIN_Site, "A,B") ]'
)
SLOT = {
    "Cpus": 8,
    "Memory": 16000,
    "Disk": 1000,
    "GLIDEIN_Site": "A",
    "GLIDEIN_Id": "g1",
    "GLIDEIN_ToDie": 12345,
}


def test_slot_refs_are_what_the_job_reads_from_the_slot_lowercased():
    assert slot_refs(classads.parse_ad(JOB)) == {"cpus", "memory", "glidein_site"}


@pytest.mark.parametrize(
    "change, same_shape",
    [
        ({"GLIDEIN_Id": "g2", "GLIDEIN_ToDie": 99}, True),  # identity nobody reads
        ({"GLIDEIN_Site": "C"}, False),  # read by the job
        ({"Memory": 50}, False),  # a resource
        ({"Start": True}, False),  # the slot's own policy
    ],
)
def test_pilots_share_a_shape_unless_they_differ_where_a_job_looks(change, same_shape):
    mm = Matchmaker()
    mm.remember(1, JOB)
    a, b = classads.ad_from_dict(SLOT), classads.ad_from_dict({**SLOT, **change})
    assert (mm.shape(a) == mm.shape(b)) is same_shape


def test_a_later_autocluster_that_reads_more_makes_shapes_finer():
    mm = Matchmaker()
    mm.remember(1, JOB)
    a, b = classads.ad_from_dict(SLOT), classads.ad_from_dict({**SLOT, "GLIDEIN_Id": "g2"})
    assert mm.shape(a) == mm.shape(b)
    mm.remember(2, '[ Requirements = TARGET.GLIDEIN_Id == "g2" ]')
    assert mm.shape(a) != mm.shape(b)
    assert not mm.fits(2, a, mm.shape(a)) and mm.fits(2, b, mm.shape(b))
    assert mm.fits(1, a, mm.shape(a)) and mm.fits(1, b, mm.shape(b))


def test_an_answer_that_reads_the_clock_is_never_reused():
    # An overflow-style Start: the job must have been queued for a while. A
    # cached first "no" would keep the job off this pilot for ever.
    qdate = int(time.time()) + 1
    mm = Matchmaker()
    mm.remember(1, f"[ QDate = {qdate}; Requirements = true ]")
    free = {"cpus": 8, "memory": 16000, "disk": 1000, "gpus": 0}
    slot = slot_with({**SLOT, "GLIDEIN_Start": "time() - TARGET.QDate >= 0"}, free)
    assert mm.shape(slot).startswith("!")
    assert not mm.fits(1, slot, mm.shape(slot))
    while time.time() < qdate + 1:  # classad time() has one-second resolution
        time.sleep(0.05)
    assert mm.fits(1, slot, mm.shape(slot))


def test_an_autocluster_that_reads_the_clock_is_not_cached():
    mm = Matchmaker()
    mm.remember(1, "[ Requirements = CurrentTime > 0 ]")
    mm.remember(2, "[ Requirements = TARGET.Cpus > 0 ]")
    slot = classads.ad_from_dict(SLOT)
    assert mm.fits(1, slot, mm.shape(slot)) and mm.fits(2, slot, mm.shape(slot))
    assert list(mm._cache) == [(2, mm.shape(slot))]


def test_slot_with_free_resources_and_whole_slot():
    free = {"cpus": 2, "memory": 100, "disk": 10, "gpus": 0}
    ad = slot_with(SLOT, free)
    assert (ad["Cpus"], ad["Memory"], ad["GPUs"]) == (2, 100, 0)
    whole = whole_slot(SLOT)
    assert (whole["Cpus"], whole["Memory"], whole["GLIDEIN_Site"]) == (8, 16000, "A")


# ------------------------------------------------------------------ periodic


def ad_of(text: str) -> Any:
    ad = classads.parse_ad(text)
    ad["JobStatus"], ad["NumRestarts"] = 1, 0
    return ad


@pytest.mark.parametrize(
    "extra, state, code, expected",
    [
        ("", "idle", None, None),
        ("PeriodicHold = true", "idle", None, ("hold", HOLD_POLICY)),
        ("PeriodicHold = true", "running", None, ("hold", HOLD_POLICY)),
        ("PeriodicHold = true", "held", HOLD_POLICY, None),  # already held
        ("PeriodicHold = NumRestarts > 3", "idle", None, None),
        ("PeriodicHold = UndefinedThing > 3", "idle", None, None),  # Undefined is false
        ("PeriodicRemove = true; PeriodicHold = true", "idle", None, ("remove", 0)),
        ("PeriodicRemove = true", "held", HOLD_USER, ("remove", 0)),
        ("PeriodicRelease = true", "held", HOLD_POLICY, ("release", 0)),
        ("PeriodicRelease = true", "held", HOLD_USER, None),  # a user's hold stays
        ("PeriodicRelease = true", "idle", None, None),
        ("PeriodicRelease = HoldReasonCode == 3", "held", HOLD_POLICY, None),  # not in this ad
    ],
)
def test_periodic_rule(extra, state, code, expected):
    ad = ad_of(f'[ Cmd = "/bin/true"{"; " + extra if extra else ""} ]')
    got = decide(ad, state, code)
    assert (None if got is None else (got[0], got[2])) == expected


def test_periodic_hold_reason_comes_from_the_job_when_it_says_one():
    ad = ad_of('[ PeriodicHold = true; PeriodicHoldReason = strcat("too long: ", 5) ]')
    assert decide(ad, "running", None) == ("hold", "too long: 5", HOLD_POLICY)
    ad = ad_of("[ PeriodicHold = NumRestarts == 0 ]")
    action, reason, _ = decide(ad, "idle", None)
    assert action == "hold"
    assert "PeriodicHold expression 'NumRestarts == 0' evaluated to TRUE" in reason


# ------------------------------------------------------------------ listing


def row(ad: str, **columns: Any) -> SimpleNamespace:
    base = {
        "state": "idle",
        "num_starts": 0,
        "num_restarts": 0,
        "updated_at": 100.5,
        "exit_code": None,
        "pilot_id": None,
        "hold_reason": None,
        "hold_code": None,
        "start_date": None,
        "completion_date": None,
    }
    return SimpleNamespace(ad=ad, **{**base, **columns})


ROWS = [
    row('[ Cmd = "/bin/true"; ClusterId = 3; ProcId = 0; Owner = "alice" ]'),
    row(
        '[ Cmd = "/bin/true"; ClusterId = 3; ProcId = 1; Owner = "alice" ]',
        state="running",
        pilot_id="p1",
        start_date=50.0,
        num_starts=1,
    ),
    row(
        '[ Cmd = "/bin/true"; ClusterId = 3; ProcId = 2; Owner = "alice" ]',
        state="held",
        hold_reason='said "no" \\ twice\nreally',
        hold_code=3,
        num_restarts=6,
    ),
    row(
        '[ Cmd = "/bin/true"; ClusterId = 3; ProcId = 3; Owner = "alice" ]',
        state="completed",
        exit_code=2,
        completion_date=70.0,
    ),
    row("[ ClusterId = 4; exitcode = 9; ProcId = 0 ]", state="completed", exit_code=1),
    row("[ ProcId = 0 ]"),
]


@pytest.mark.parametrize("r", ROWS)
def test_listing_text_is_the_full_ad(r):
    parsed = classads.parse_ad(listing.ad_text(r))
    reference = full_ad(r)
    assert {k.lower(): str(parsed.lookup(k)) for k in parsed} == {
        k.lower(): str(reference.lookup(k)) for k in reference
    }


@pytest.mark.parametrize(
    "constraint",
    [
        "JobStatus == 1",
        "ProcId >= 2",
        "ExitCode =!= undefined",
        "HoldReasonCode == 3",
        'regexp("no", HoldReason)',
        'NumJobStarts == 1 && RemotePilot == "p1"',
        "ExitCode == 1",
        "CompletionDate > 60",
    ],
)
def test_cached_ads_give_the_same_constraint_answers_as_parsing_each(constraint):
    expr = classads.parse_expr(constraint)
    cache = listing.AdCache()
    got = [classads.constraint_matches(expr, cache.full_ad(r)) for r in ROWS + ROWS[::-1]]
    want = [classads.constraint_matches(expr, full_ad(r)) for r in ROWS + ROWS[::-1]]
    assert got == want and any(want)
