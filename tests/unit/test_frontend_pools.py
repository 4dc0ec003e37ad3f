"""A frontend group whose pilots serve several pools: its configuration, its
demand added up across the pools, and the request listing every pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from glidewms.config.frontend import FrontendConfig
from glidewms.frontend.credentials import GroupTokens
from glidewms.frontend.service import merged_answer, request_body
from glidewms.frontend.sources import PoolAnswer

POOLS = [
    {"name": "a", "url": "http://pool-a:1"},
    {"name": "b", "url": "http://pool-b:2"},
    {"name": "c", "url": "http://pool-c:3"},
]


def config(tmp_path: Path, **group: Any) -> FrontendConfig:
    return FrontendConfig(state_dir=tmp_path, pools=POOLS, groups=[{"name": "g", **group}])


def test_a_group_of_several_pools_with_shares(tmp_path: Path) -> None:
    cfg = config(tmp_path, pools=["b", "a"], pool_shares=[3, 1])
    [group] = cfg.groups
    assert [(p.name, s) for p, s in cfg.group_pools(group)] == [("b", 3), ("a", 1)]
    assert cfg.group_pool(group).name == "b"  # the first: its tokens are the request's own
    equal = config(tmp_path, pools=["a", "c"])
    assert [s for _, s in equal.group_pools(equal.groups[0])] == [1, 1]
    one = config(tmp_path, pool="c")
    assert [(p.name, s) for p, s in one.group_pools(one.groups[0])] == [("c", 1)]


@pytest.mark.parametrize(
    ("group", "problem"),
    [
        ({"pools": ["a", "x"]}, "groups[0].pools: no pool named 'x'"),
        ({"pools": ["a", "a"]}, "groups[0].pools: a pool is named twice"),
        ({"pools": ["a"]}, "at least 2"),
        ({"pools": ["a", "b"], "pool": "a"}, "give pool or pools, not both"),
        ({"pools": ["a", "b"], "pool_shares": [1]}, "groups[0].pool_shares"),
        ({"pools": ["a", "b"], "pool_shares": [1, 0]}, "groups[0].pool_shares"),
        ({"pools": ["a", "b"], "pool_shares": [1, 1000]}, "groups[0].pool_shares"),
        ({"pool_shares": [1]}, "groups[0].pool_shares"),
    ],
)
def test_a_bad_pool_list_is_refused_naming_the_key(
    tmp_path: Path, group: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError) as err:
        config(tmp_path, **group)
    assert problem in str(err.value)


def pilot(gid: str, state: str = "idle") -> dict[str, Any]:
    return {"glidein_id": gid, "group": "g", "state": state, "slot": {}}


def test_demand_adds_up_and_a_shared_pilot_counts_once() -> None:
    a = PoolAnswer(ok=True, autoclusters=[{"n": 1}], pilots=[pilot("g1"), pilot("g2")])
    b = PoolAnswer(ok=True, autoclusters=[{"n": 2}, {"n": 3}], pilots=[pilot("g1", "busy")])
    merged = merged_answer([a, b])
    assert merged.ok and [ac["n"] for ac in merged.autoclusters] == [1, 2, 3]
    assert [p["glidein_id"] for p in merged.pilots] == ["g1", "g2"]
    assert merged.pilots[0]["state"] == "idle"  # the first pool's record stands for it
    assert merged_answer([a]) is a


def test_a_group_is_blind_when_any_of_its_pools_is() -> None:
    a = PoolAnswer(ok=True, autoclusters=[{"n": 1}])
    b = PoolAnswer(ok=False, error="pool b: refused")
    merged = merged_answer([a, b])
    assert not merged.ok and merged.error == "pool b: refused" and merged.autoclusters == []


def test_the_request_lists_every_pool_with_its_share_and_own_tokens() -> None:
    entries = {"e": {"idle": 1, "max_running": 2}}
    ta, tb = GroupTokens({"e": "tok-a", "other": "x"}), GroupTokens({"e": "tok-b"})
    body = request_body(
        "http://pool-a:1",
        ta,
        entries,
        None,
        [("http://pool-a:1", 2, ta), ("http://pool-b:2", 1, tb)],
    )
    assert body["entries"]["e"]["pilot_token"] == "tok-a"
    assert body["pools"] == [
        {"pool_url": "http://pool-a:1", "share": 2, "entry_tokens": {"e": "tok-a"}},
        {"pool_url": "http://pool-b:2", "share": 1, "entry_tokens": {"e": "tok-b"}},
    ]
    single = request_body("http://pool-a:1", ta, entries, None, [("http://pool-a:1", 1, ta)])
    assert "pools" not in single
