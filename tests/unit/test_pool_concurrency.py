"""Concurrency limits: parsing, which limit applies, when a job may start,
and the report (HTCondor's semantics; pool/concurrency.py)."""

from __future__ import annotations

import pytest

from glidewms import classads
from glidewms.config.pool import PoolConfig
from glidewms.pool.concurrency import (
    BadLimits,
    LimitConfig,
    exceeded,
    in_use,
    limit_for,
    normalized,
    parse,
    report,
    take,
)
from glidewms.pool.jobs import accounting_group, derive
from glidewms.pool.matchmaker import Matchmaker


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("db", {"db": 1.0}),
        ("DB", {"db": 1.0}),
        ("db:2", {"db": 2.0}),
        ("db:0.5, license.matlab", {"db": 0.5, "license.matlab": 1.0}),
        ("a b,c", {"a": 1.0, "b": 1.0, "c": 1.0}),
        ("db,db", {"db": 2.0}),
        ("", {}),
        (" , ", {}),
    ],
)
def test_parse(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("db:x", "not a number"),
        ("db:0", "positive"),
        ("db:-1", "positive"),
        ("db:inf", "positive"),
        ("db:nan", "positive"),
        ("d$b", "not a limit name"),
        ("!db", "not a limit name"),
        (":2", "not a limit name"),
        ("x" * 200, "not a limit name"),
        (",".join(f"n{i}" for i in range(40)), "more than 32"),
    ],
)
def test_parse_refuses(text, why):
    with pytest.raises(BadLimits, match=why):
        parse(text)


CONFIG = LimitConfig({"db": 2, "license.west": 45}, 15, {"license": 30})


@pytest.mark.parametrize(
    ("name", "config", "limit"),
    [
        ("db", CONFIG, 2),
        ("license.west", CONFIG, 45),  # its own limit before its prefix's
        ("license.north", CONFIG, 30),  # the prefix default
        ("filer.north", CONFIG, 15),  # no prefix default: the pool's default
        ("other", CONFIG, 15),
        ("license", CONFIG, 15),  # the prefix alone is a name like any other
        ("other", LimitConfig({"db": 2}), None),  # no default: unlimited
    ],
)
def test_limit_for(name, config, limit):
    assert limit_for(name, config) == limit


@pytest.mark.parametrize(
    ("wanted", "used", "first"),
    [
        ({"db": 1}, {}, None),
        ({"db": 1}, {"db": 1}, None),
        ({"db": 1}, {"db": 2}, "db"),
        ({"db": 2}, {"db": 1}, "db"),  # the amount counts, not just the job
        ({"db": 0.5}, {"db": 1.5}, None),  # fractions add up exactly
        ({"db": 1, "other": 1}, {"other": 15}, "other"),
        ({"nolimit": 1}, {"nolimit": 1e6}, None),
    ],
)
def test_exceeded(wanted, used, first):
    config = LimitConfig({"db": 2, "other": 15})
    assert exceeded(wanted, used, config) == first


def test_a_zero_limit_never_lets_a_job_start():
    assert exceeded({"off": 1}, {}, LimitConfig({"off": 0})) == "off"


def test_usage_is_running_jobs_times_amounts_and_a_turn_adds_its_choices():
    used = in_use({1: 2, 2: 0, 3: 5}, {1: {"db": 1}, 2: {"db": 1}, 4: {"db": 9}, 3: {"x": 0.5}})
    assert used == {"db": 2.0, "x": 2.5}
    take(used, {"db": 1})
    assert used["db"] == 3.0


def test_report_says_who_waits_for_which_limit():
    config = LimitConfig({"db": 2, "spare": 3})
    rows = report(
        config,
        used={"db": 2.0},
        idle_by_ac={1: 3, 2: 1, 9: 4},
        wanted_by={1: {"db": 1}, 2: {"web": 1}},
        invalid={9},
    )
    by = {r["name"]: r for r in rows}
    assert by["db"] == {
        "name": "db",
        "limit": 2,
        "in_use": 2.0,
        "idle_jobs": 3,
        "blocked_jobs": 3,
    }
    assert by["web"]["limit"] is None and by["web"]["blocked_jobs"] == 0
    assert by["spare"]["idle_jobs"] == 0  # configured, unused: still shown
    assert by["!invalid"]["blocked_jobs"] == 4


def ad(text: str) -> object:
    return classads.parse_ad(text)


def test_limits_enter_the_autocluster_in_canonical_form():
    a = derive(ad('[ RequestCpus = 1; ConcurrencyLimits = "DB:1, x" ]'), "alice")
    b = derive(ad('[ RequestCpus = 1; ConcurrencyLimits = "x,db" ]'), "alice")
    c = derive(ad("[ RequestCpus = 1 ]"), "alice")
    expr = derive(ad('[ RequestCpus = 1; ConcurrencyLimits = strcat("d", "b,x") ]'), "alice")
    assert a.signature == b.signature == expr.signature != c.signature
    matchmaker = Matchmaker()
    matchmaker.remember(1, a.signature_ad)
    matchmaker.remember(2, c.signature_ad)
    assert matchmaker.limits == {1: {"db": 1.0, "x": 1.0}}
    assert normalized(matchmaker.limits[1]) == "db:1,x:1"


@pytest.mark.parametrize(
    "value", ["3", '"d$b"', "error", 'strcat("site_", TARGET.GLIDEIN_Site)', "TARGET.Limits"]
)
def test_unreadable_limits_are_remembered_as_such(value):
    d = derive(ad(f"[ RequestCpus = 1; ConcurrencyLimits = {value} ]"), "alice")
    matchmaker = Matchmaker()
    matchmaker.remember(7, d.signature_ad)
    assert matchmaker.invalid_limits == {7} and not matchmaker.limits


def test_undefined_limits_are_no_limits():
    d = derive(ad("[ RequestCpus = 1; ConcurrencyLimits = Missing ]"), "alice")
    assert "ConcurrencyLimits" not in d.signature_ad


@pytest.mark.parametrize(
    ("attrs", "owner", "submitter"),
    [
        ("", "alice", "alice"),
        ('AccountingGroup = "phys.alice"', "alice", "phys.alice"),
        # the user part of the ad is never trusted: the token's owner is
        ('AccountingGroup = "phys.bob"', "alice", "phys.alice"),
        ('AccountingGroup = "phys.higgs.bob"', "alice", "phys.higgs.alice"),
        ('AccountingGroup = "alice"', "alice", "alice"),  # a user name alone: no group
        ('AcctGroup = "cms"', "alice", "cms.alice"),
        ('AcctGroup = "cms"; AcctGroupUser = "bob"', "alice", "cms.alice"),
        # AccountingGroup first, as the negotiator reads it
        ('AccountingGroup = "phys.alice"; AcctGroup = "cms"', "alice", "phys.alice"),
        ('AccountingGroup = "bad group.alice"', "alice", "alice"),
        ('AcctGroup = "a..b"', "alice", "alice"),
        (f'AcctGroup = "{"g" * 200}"', "alice", "alice"),
        ("AccountingGroup = 7", "alice", "alice"),
    ],
)
def test_the_submitter_is_the_accounting_group_with_the_owner(attrs, owner, submitter):
    text = f"[ RequestCpus = 1; {attrs} ]" if attrs else "[ RequestCpus = 1 ]"
    assert derive(ad(text), owner).submitter == submitter
    group = accounting_group(ad(text))
    assert (group is None) == ("." not in submitter)


def test_pool_config_reads_limits_with_names_in_lower_case():
    config = PoolConfig(
        concurrency_limits={"DB": 2, "license.West": 45},
        concurrency_limit_default=15,
        concurrency_limit_prefix_defaults={"License": 30},
    )
    assert config.limit_config() == LimitConfig(
        {"db": 2.0, "license.west": 45.0}, 15, {"license": 30.0}
    )
    for bad in ({"d$b": 1}, {"db": -1}, {"db": 1, "DB": 2}):
        with pytest.raises(ValueError):
            PoolConfig(concurrency_limits=bad)


@pytest.mark.parametrize(
    ("ad_long", "state", "says"),
    [
        ('Cmd = "x"', "idle", "1.0 (idle): names no concurrency limit"),
        ('ConcurrencyLimits = "db"', "idle", "1.0 (idle): db:1 (2 of 2 in use); waits for db"),
        ('ConcurrencyLimits = "db"', "running", "1.0 (running): db:1 (2 of 2 in use)"),
        ('ConcurrencyLimits = "web:2"', "idle", "1.0 (idle): web:2 (0 of unlimited in use)"),
        ('ConcurrencyLimits = "d$b"', "idle", "cannot be read"),
    ],
)
def test_limits_of_a_job_say_what_keeps_it_idle(ad_long, state, says):
    from glidewms.cli.pool_cmds import _why

    rows = [{"name": "db", "limit": 2, "in_use": 2.0}]
    job = {"job_id": "1.0", "state": state, "ad_long": f'{ad_long}\nOwner = "a"'}
    assert says in _why(job, rows)
