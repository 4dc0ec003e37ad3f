"""A pilot serving several pools (agent/pools.py): the pure turn policy, the
pool list from glidein_config, and each pool's own token line (http.py)."""

from __future__ import annotations

import io
import json
import math
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from glidewms.glidein.agent.config import ConfigError, build_config, parse_lines
from glidewms.glidein.agent.http import select_token
from glidewms.glidein.agent.pools import (
    Candidate,
    MultiPoolAgent,
    choose_pool,
    decay_usage,
    deficit,
    pool_list,
    serves_several,
    turn_wait,
)
from glidewms.glidein.agent.resources import Resources
from tests.unit.test_glidein_agent import TOKEN, WAIT, FakePool, claim_for, config_text

NEVER = -math.inf


def c(
    index: int,
    share: float,
    usage: float,
    waiting: bool = True,
    last_turn: float = NEVER,
    empty_at: float | None = None,
) -> Candidate:
    return Candidate(index, share, usage, waiting, last_turn, empty_at)


@pytest.mark.parametrize(
    ("pools", "chosen", "why"),
    [
        ([], None, "no pool"),
        ([c(0, 1, 0, waiting=False), c(1, 1, 0, waiting=False)], None, "none waits"),
        ([c(0, 1, 0), c(1, 1, 0)], 0, "equal: the first of equals (never turned)"),
        (
            [c(0, 1, 0, last_turn=5.0), c(1, 1, 0, last_turn=3.0)],
            1,
            "equal: the one whose last turn is oldest",
        ),
        ([c(0, 2, 100), c(1, 1, 100)], 0, "2:1 shares, equal use: the bigger share"),
        ([c(0, 2, 200), c(1, 1, 50)], 1, "A above its 2/3: B"),
        ([c(0, 2, 150), c(1, 1, 50)], 1, "A above its share (3/4 > 2/3): B"),
        ([c(0, 2, 120), c(1, 1, 60)], 0, "both at their share: the older turn (A)"),
        ([c(0, 1, 0), c(1, 100, 0, waiting=False)], 0, "the deficit of one not waiting"),
        (
            [c(0, 2, 0, last_turn=9.0, empty_at=9.0), c(1, 1, 500, last_turn=8.0)],
            1,
            "A just came back empty: B, not asked since, goes first",
        ),
        (
            [c(0, 2, 0, last_turn=9.0, empty_at=9.0), c(1, 1, 500, last_turn=9.5)],
            0,
            "B has had its turn since: A's deficit counts again (one round, not a time)",
        ),
        (
            [
                c(0, 1, 0, empty_at=9.0, last_turn=9.0),
                c(1, 1, 0, empty_at=8.0, last_turn=8.0),
                c(2, 1, 0, empty_at=9.5, last_turn=9.5),
            ],
            1,
            "all empty (idle): round robin, the oldest turn",
        ),
        (
            [
                c(0, 1, 0, empty_at=9.0, last_turn=9.0),
                c(1, 1, 0, waiting=False, last_turn=1.0),
            ],
            0,
            "a pool backing off does not hold the others back",
        ),
        ([c(0, 0, 0), c(1, 0, 0)], None, "no share at all"),
    ],
)
def test_choose_pool(pools: list[Candidate], chosen: int | None, why: str) -> None:
    assert choose_pool(pools) == chosen, why


@pytest.mark.parametrize(
    ("share", "usage", "shares", "usages", "expected"),
    [
        (1, 0, 2, 0, 0.5),
        (2, 30, 3, 60, 2 / 3 - 0.5),
        (1, 60, 3, 60, 1 / 3 - 1.0),
    ],
)
def test_deficit(share: float, usage: float, shares: float, usages: float, expected: float) -> None:
    assert deficit(share, usage, shares, usages) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("usage", "cores", "seconds", "halflife", "expected"),
    [
        (0.0, 2, 10.0, 600.0, 20.0),
        (100.0, 0, 600.0, 600.0, 50.0),
        (100.0, 1, 0.0, 600.0, 100.0),
        (100.0, 1, -5.0, 600.0, 100.0),  # a clock that went back changes nothing
        (100.0, 1, 10.0, 0.0, 110.0),  # no half-life: plain sums
    ],
)
def test_decay_usage(
    usage: float, cores: float, seconds: float, halflife: float, expected: float
) -> None:
    assert decay_usage(usage, cores, seconds, halflife) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("idle_left", "pools", "slice_", "wait"),
    [
        (60.0, 2, 5.0, 5.0),  # a slice
        (6.0, 2, 5.0, 3.0),  # the idle time left, shared: both asked before the end
        (2.0, 4, 5.0, 0.5),
        (0.0, 2, 5.0, 0.001),  # a last look, never a zero wait
        (3.0, 0, 5.0, 3.0),
    ],
)
def test_turn_wait(idle_left: float, pools: int, slice_: float, wait: float) -> None:
    assert turn_wait(idle_left, pools, slice_) == pytest.approx(wait)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, [("http://a:1", 1)]),
        ({"GLIDEIN_Also_Pools": "http://b:2/"}, [("http://a:1", 1), ("http://b:2", 1)]),
        (
            {"GLIDEIN_Also_Pools": "http://b:2 https://c:3", "GLIDEIN_Pool_Shares": "3,1,2"},
            [("http://a:1", 3), ("http://b:2", 1), ("https://c:3", 2)],
        ),
    ],
)
def test_pool_list(values: dict[str, str], expected: list[tuple[str, int]]) -> None:
    assert pool_list(values, "http://a:1/") == expected


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"GLIDEIN_Also_Pools": "ftp://b:2"}, "not an http"),
        ({"GLIDEIN_Also_Pools": "http://a:1"}, "named twice"),
        ({"GLIDEIN_Also_Pools": " ".join(f"http://p{i}:1" for i in range(8))}, "at most 8"),
        ({"GLIDEIN_Also_Pools": "http://b:2", "GLIDEIN_Pool_Shares": "1"}, "expected 2"),
        ({"GLIDEIN_Also_Pools": "http://b:2", "GLIDEIN_Pool_Shares": "1,0"}, "expected 2"),
        ({"GLIDEIN_Also_Pools": "http://b:2", "GLIDEIN_Pool_Shares": "1,x"}, "expected 2"),
        ({"GLIDEIN_Also_Pools": "http://b:2", "GLIDEIN_Pool_Shares": "1,1000"}, "1-999"),
    ],
)
def test_a_bad_pool_list_names_its_key(values: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as err:
        pool_list(values, "http://a:1")
    assert "GLIDEIN_" in str(err.value)


BUNDLE = "tokA\npool http://a:1 tokA\npool http://b:2 tokB\n"


@pytest.mark.parametrize(
    ("text", "key", "token"),
    [
        ("tok\n", "", "tok"),
        ("  tok  \n", "http://a:1", "tok"),  # a one-pool file: whatever the key
        ("\n\ntok\n", "", "tok"),
        (BUNDLE, "", "tokA"),  # the bootstrap's and the factory calls' line
        (BUNDLE, "http://a:1", "tokA"),
        (BUNDLE, "http://b:2", "tokB"),
        (BUNDLE, "http://c:3", ""),  # no token of that pool: sends none, never another's
        ("tokA\npool http://b:2 tokB extra\n", "http://b:2", ""),  # a malformed line
        ("", "", ""),
    ],
)
def test_select_token_sends_each_pool_its_own(text: str, key: str, token: str) -> None:
    assert select_token(text, key) == token


# --------------------------------------------------------------------------- whole runs

TOKENS = {"a": "token-of-pool-a", "b": "token-of-pool-b"}


class OwnTokenPool(FakePool):
    """A FakePool that takes only its own token, and counts the claim calls
    in flight across every pool of the test (``shared``)."""

    def __init__(self, token: str, shared: dict[str, int]) -> None:
        super().__init__()
        self.token = token
        self.shared = shared
        self.wrong_token = 0

    def handle(self, h: Any, method: str) -> None:
        if h.path != "/test/started":
            if h.headers.get("Authorization") != f"Bearer {self.token}":
                with self.lock:
                    self.wrong_token += 1
                return self.send(h, 401, {"detail": "not our token"})
            del h.headers["Authorization"]
            h.headers["Authorization"] = f"Bearer {TOKEN}"  # what FakePool checks
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        h.rfile = io.BytesIO(raw)  # read again by FakePool
        cycle = h.path.endswith("/cycle") and json.loads(raw).get("max_jobs") != 0
        if cycle:
            with self.shared_lock:
                self.shared["now"] += 1
                self.shared["most"] = max(self.shared["most"], self.shared["now"])
        try:
            super().handle(h, method)
        finally:
            if cycle:
                with self.shared_lock:
                    self.shared["now"] -= 1

    shared_lock = threading.Lock()


def quick_claim(pool: FakePool, claim_id: str, job: int) -> dict[str, Any]:
    claim = claim_for(pool, claim_id, {"job.sh": b"#!/bin/sh\necho done > out.txt\n"})
    claim["job_id"] = f"{job}.0"  # both pools have jobs 0.0, 1.0...: sandboxes must not collide
    return claim


def run_multipool(
    tmp_path: Path, a: FakePool, b_url: str, **extra: Any
) -> tuple[int, MultiPoolAgent]:
    token = tmp_path / "token"
    token.write_text(f"{TOKENS['a']}\npool {a.url} {TOKENS['a']}\npool {b_url} {TOKENS['b']}\n")
    token.chmod(0o600)
    work = tmp_path / "work"
    work.mkdir()
    text = config_text(a, work, token, GLIDEIN_Also_Pools=b_url, **extra)
    cfg = build_config(parse_lines(text), str(work))
    assert serves_several(cfg)
    agent = MultiPoolAgent(
        cfg, total=Resources(2, 1024, 10**6), backoff=0.05, kill_grace=5, poll_slice=0.3
    )
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(rc=agent.run(install_signals=False)))
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "the pilot did not end"
    return box["rc"], agent


def test_one_pilot_serves_two_pools_one_claim_call_at_a_time(tmp_path: Path) -> None:
    shared = {"now": 0, "most": 0}
    with OwnTokenPool(TOKENS["a"], shared) as a, OwnTokenPool(TOKENS["b"], shared) as b:
        a.claims = [quick_claim(a, f"a{i}", i) for i in range(3)]
        b.claims = [quick_claim(b, f"b{i}", i) for i in range(3)]
        rc, agent = run_multipool(tmp_path, a, b.url, GLIDEIN_Pool_Shares="2,1")
    assert rc == 0 and agent.reason == "idle_timeout"
    # each result went to the pool its claim came from
    assert set(a.completed) == {"a0", "a1", "a2"} and set(b.completed) == {"b0", "b1", "b2"}
    assert all(r["exit_code"] == 0 for r in [*a.completed.values(), *b.completed.values()])
    # never two claim calls in flight, whichever the pools (the same free cores)
    assert shared["most"] == 1
    # each pool saw its own token only, and each was asked for work more than once
    assert a.wrong_token == 0 and b.wrong_token == 0
    assert len(a.cycles) >= 2 and len(b.cycles) >= 2
    assert len(a.registered) == 1 and len(b.registered) == 1
    assert len(a.deregistered) == 1 and len(b.deregistered) == 1
    report = a.reports[-1]
    assert [p["share"] for p in report["pools"]] == [2, 1]
    assert report["jobs_run"] == 6


def test_a_pool_that_is_down_does_not_stop_the_pilot_serving_the_other(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    shared = {"now": 0, "most": 0}
    with OwnTokenPool(TOKENS["a"], shared) as a:
        a.claims = [quick_claim(a, f"a{i}", i) for i in range(3)]
        rc, agent = run_multipool(tmp_path, a, down, GLIDEIN_Outage_Tolerance=1)
    assert rc == 0 and agent.reason == "idle_timeout"
    assert set(a.completed) == {"a0", "a1", "a2"}
    assert agent.links[1].gone.startswith("registration failed")
    assert len(a.deregistered) == 1
