"""Fair-share arithmetic and the idle index, as tables."""

from __future__ import annotations

import math

import pytest

from glidewms.pool.fairshare import (
    Accounting,
    best_submitter,
    decay,
    effective_priority,
    priority_factor,
    split_submitter,
    submitter_name,
    usage_after,
)
from glidewms.pool.queue_index import IdleIndex, head_key

H = 100.0  # half-life used by the tables
STEADY = H / math.log(2)  # usage of one core run forever


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [
        (0, 1.0),
        (-5, 1.0),
        (H, 0.5),
        (2 * H, 0.25),
        (H / 2, 2**-0.5),
    ],
)
def test_decay(elapsed, expected):
    assert decay(elapsed, H) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("usage", "cores", "elapsed", "expected"),
    [
        (1000, 0, 0, 1000),  # no time, no change
        (1000, 0, H, 500),  # idle: halves per half-life
        (1000, 0, 3 * H, 125),
        (0, 1, 1e-6, 1e-6),  # one core accrues ~1 core-second per second
        (0, 4, H, 4 * STEADY * 0.5),  # exact integral of a decaying accrual
        (0, 2, 1e9, 2 * STEADY),  # converges to cores x h/ln2
        (2 * STEADY, 2, 50 * H, 2 * STEADY),  # steady state stays put
    ],
)
def test_usage_after(usage, cores, elapsed, expected):
    assert usage_after(usage, cores, elapsed, H) == pytest.approx(expected, rel=1e-6)


def test_usage_after_is_consistent_when_split():
    """Updating at every change gives the same as one update over the whole span."""
    once = usage_after(300, 3, 70, H)
    twice = usage_after(usage_after(300, 3, 30, H), 3, 40, H)
    assert once == pytest.approx(twice)


@pytest.mark.parametrize(
    ("usage", "cores", "factor", "expected"),
    [
        (0, 0, 1, 0),
        (1000, 0, 1, 500),  # history counts, halved
        (0, 1, 1, STEADY / 2),  # what runs now counts at once
        (1000, 0, 10, 5000),  # the factor multiplies
        (1000, 2, 0.5, 0.5 * (500 + STEADY)),
    ],
)
def test_effective_priority(usage, cores, factor, expected):
    assert effective_priority(usage, cores, H, factor) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("owner", "group", "name"),
    [
        ("alice", None, "alice"),
        ("alice", "", "alice"),
        ("alice", "cms.prod", "cms.prod.alice"),
    ],
)
def test_submitter_names_round_trip(owner, group, name):
    assert submitter_name(owner, group) == name
    assert split_submitter(name, owner) == (group or None)


@pytest.mark.parametrize(
    ("owner", "group", "expected"),
    [
        ("alice", None, 2.0),  # named user
        ("carol", None, 1.0),  # default
        ("alice", "cms", 2.0 * 0.5),  # user x group
        ("carol", "atlas", 1.0),  # unnamed group counts 1
    ],
)
def test_priority_factor(owner, group, expected):
    assert priority_factor(owner, group, {"alice": 2.0}, {"cms": 0.5}) == expected


@pytest.mark.parametrize(
    ("priorities", "best"),
    [
        ({}, None),
        ({"a": 3.0, "b": 1.0}, "b"),
        ({"b": 1.0, "a": 1.0}, "a"),  # ties: by name, stable
    ],
)
def test_best_submitter(priorities, best):
    assert best_submitter(priorities) == best


def test_accounting_alternates_new_users_and_honours_factors():
    acct = Accounting(H, {"bob": 3.0}, {})
    acct.change("alice", "alice", None, 0, 0.0)
    acct.change("bob", "bob", None, 0, 0.0)
    picks = []
    for t in range(4):  # each pick starts one core for the picked user
        who = acct.best(["alice", "bob"], float(t))
        picks.append(who)
        acct.change(who, who, None, 1, float(t))
    # bob's factor 3 makes his one running core weigh like three of alice's
    assert picks == ["alice", "bob", "alice", "alice"]


def test_accounting_usage_accrues_and_snapshot_lists_changed_only():
    acct = Accounting(H, {}, {})
    acct.change("alice", "alice", None, 2, 0.0)
    assert acct.usage("alice", 10.0) == pytest.approx(usage_after(0, 2, 10, H))
    acct.change("alice", "alice", None, -2, 10.0)
    assert acct.usage("alice", 10.0 + H) == pytest.approx(usage_after(0, 2, 10, H) / 2)
    [(state, name, _)] = acct.snapshot(20.0)
    assert (name, state.running) == ("alice", 0)
    assert acct.snapshot(21.0) == []


def test_idle_index_counts_and_heads():
    index = IdleIndex()
    index.add(1, "alice", 10.0, 3, head_key(0, 10.0, 7, 0))
    index.add(2, "bob", 1.0, 1)
    assert sorted(index.autoclusters()) == [1, 2]
    index.heads[(1, "alice")] = head_key(0, 10.0, 7, 0)
    index.add(1, "alice", 20.0, 1, head_key(5, 20.0, 8, 0))  # higher JobPrio: new head
    assert index.heads[(1, "alice")] == head_key(5, 20.0, 8, 0)
    index.add(1, "alice", 30.0, 1, head_key(0, 30.0, 9, 0))  # later, same prio: head kept
    assert index.heads[(1, "alice")] == head_key(5, 20.0, 8, 0)
    index.remove(1, "alice", head_key(5, 20.0, 8, 0))  # the head left: forgotten
    assert (1, "alice") not in index.heads
    assert index.idle_of("alice") == 4
    index.remove(2, "bob", head_key(0, 1.0, 1, 0))
    assert sorted(index.autoclusters()) == [1]  # empty autoclusters vanish


def test_idle_index_oldest_queue_date_follows_the_jobs_that_leave():
    """Dates are counted per cluster date: the oldest is the oldest still idle."""
    index = IdleIndex()
    index.add(1, "alice", 10.0, 2)
    index.add(1, "alice", 20.0, 1)
    assert index.oldest(1, "alice") == 10.0
    index.remove(1, "alice", head_key(0, 10.0, 1, 0))
    assert index.oldest(1, "alice") == 10.0  # one of the two is still idle
    index.remove(1, "alice", head_key(0, 10.0, 1, 1))
    assert index.oldest(1, "alice") == 20.0
    assert index.idle(1, "alice") == 1 and index.idle(1, "bob") == 0
    index.remove(1, "alice", head_key(0, 20.0, 2, 0))
    assert index.oldest(1, "alice") is None


def test_idle_index_running_counts():
    index = IdleIndex()
    index.started(4, 2)
    index.stopped(4)
    assert index.running == {4: 1}
    index.stopped(4)
    assert index.running == {}


def test_idle_index_epoch_moves_only_when_a_pair_gets_idle_jobs_again():
    """What a slot can run is cached per epoch: new (autocluster, submitter)
    work must change it; more jobs of a known pair or jobs leaving need not."""
    index = IdleIndex()
    index.add(1, "alice", 1.0, 2)
    first = index.epoch
    index.add(1, "alice", 2.0, 1)
    index.remove(1, "alice", head_key(0, 1.0, 1, 0))
    assert index.epoch == first
    index.remove(1, "alice", head_key(0, 1.0, 1, 1))
    index.remove(1, "alice", head_key(0, 2.0, 2, 0))
    assert index.epoch == first and index.idle(1, "alice") == 0
    index.add(1, "alice", 3.0, 1)
    assert index.epoch == first + 1
    index.add(1, "bob", 3.0, 1)
    assert index.epoch == first + 2
