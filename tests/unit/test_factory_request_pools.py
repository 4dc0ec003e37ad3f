"""A request whose pilots serve several pools: what the factory checks, the one
token file per entry holding a line per pool, and what pilots are told."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from fastapi import HTTPException
from pydantic import ValidationError

from glidewms.config.factory import EntryConfig
from glidewms.factory.pilot_args import pilot_arguments, request_problem
from glidewms.factory.requests import RequestBody, accept_request, bundle_text, token_file
from glidewms.factory.stage import Stage
from glidewms.factory.store import StoredRequest
from glidewms.glidein.agent.http import select_token
from glidewms.security.tokens import TokenIssuer, TokenVerifier, generate_keypair

A, B = "http://pool-a:1", "http://pool-b:2"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[TokenIssuer, TokenVerifier]:
    private, public = generate_keypair(tmp_path / "keys")
    return TokenIssuer.from_file(private), TokenVerifier.from_file(public)


def pilot(issuer: TokenIssuer, pool: str, **claims: Any) -> str:
    return issuer.issue("pilot", ["pilot"], 600, fe="fe1", group="main", pool=pool, **claims)


def body(pools: list[dict[str, Any]] | None, **top: Any) -> RequestBody:
    data: dict[str, Any] = {"pool_url": A, "entries": {"e": {"idle": 1, "max_running": 2}}, **top}
    if pools is not None:
        data["pools"] = pools
    return RequestBody.model_validate(data)


def test_each_entry_file_holds_a_line_per_pool_and_each_pool_reads_its_own(
    keys: tuple[TokenIssuer, TokenVerifier], tmp_path: Path
) -> None:
    issuer, verifier = keys
    ta, tb = pilot(issuer, "a", entry="e"), pilot(issuer, "b", entry="e")
    accepted = accept_request(
        verifier,
        body(
            [
                {"pool_url": A, "share": 2, "entry_tokens": {"e": ta}},
                {"pool_url": B, "share": 1, "entry_tokens": {"e": tb}},
            ]
        ),
        "fe1",
        "main",
        tmp_path / "cred",
    )
    path = token_file(tmp_path / "cred", "fe1", "main", "e")
    text = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert text.splitlines()[0] == ta  # the bootstrap reads the first line
    assert select_token(text, A) == ta and select_token(text, B) == tb
    assert accepted.pools == [{"url": A, "share": 2}, {"url": B, "share": 1}]
    assert set(accepted.entry_tokens) == {"e"}
    assert ta not in repr(accepted) and tb not in repr(accepted)


def test_the_first_pool_may_use_the_requests_own_tokens(
    keys: tuple[TokenIssuer, TokenVerifier], tmp_path: Path
) -> None:
    issuer, verifier = keys
    ta, tb = pilot(issuer, "a", entry="e"), pilot(issuer, "b", entry="e")
    data = body(
        [{"pool_url": A}, {"pool_url": B, "pilot_token": tb}],
        entries={"e": {"idle": 1, "max_running": 2, "pilot_token": ta}},
    )
    accept_request(verifier, data, "fe1", "main", tmp_path / "cred")
    text = token_file(tmp_path / "cred", "fe1", "main", "e").read_text()
    assert text == bundle_text([(A, ta), (B, tb)])


@pytest.mark.parametrize(
    ("pools", "problem"),
    [
        ([{"pool_url": B}, {"pool_url": A}], "pools[0].pool_url must be pool_url"),
        ([{"pool_url": A}, {"pool_url": A}], "given twice"),
        ([{"pool_url": A}], "at least 2"),
        ([{"pool_url": A}] + [{"pool_url": f"http://p{i}:1"} for i in range(8)], "at most 8"),
        ([{"pool_url": A}, {"pool_url": B, "share": 0}], "greater than or equal to 1"),
        ([{"pool_url": A}, {"pool_url": B, "share": 1000}], "less than or equal to 999"),
        ([{"pool_url": A}, {"pool_url": "ftp://x"}], "http"),
        ([{"pool_url": A}, {"pool_url": B, "extra": 1}], "Extra inputs"),
    ],
)
def test_a_bad_pool_list_is_refused(pools: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        body(pools)


@pytest.mark.parametrize(
    ("pools", "problem"),
    [
        (
            lambda i: [{"pool_url": A, "pilot_token": pilot(i, "a")}, {"pool_url": B}],
            "pools[1].entry_tokens.e: required",
        ),
        (
            lambda i: [
                {"pool_url": A, "pilot_token": pilot(i, "a")},
                {"pool_url": B, "entry_tokens": {"e": pilot(i, "b", entry="other")}},
            ],
            "pools[1].entry_tokens.e: its entry claim",
        ),
        (
            lambda i: [
                {"pool_url": A, "pilot_token": pilot(i, "a")},
                {"pool_url": B, "entry_tokens": {"e": "not-a-token"}},
            ],
            "pools[1].entry_tokens.e: not a valid token",
        ),
        (
            lambda i: [
                {"pool_url": A, "pilot_token": pilot(i, "a")},
                {"pool_url": B, "pilot_token": pilot(i, "b"), "entry_tokens": {"x": "t"}},
            ],
            "pools[1].entry_tokens: no such entry 'x'",
        ),
    ],
)
def test_every_pool_needs_a_good_token_per_entry_and_nothing_is_written_otherwise(
    keys: tuple[TokenIssuer, TokenVerifier], tmp_path: Path, pools: Any, problem: str
) -> None:
    issuer, verifier = keys
    with pytest.raises(HTTPException) as err:
        accept_request(verifier, body(pools(issuer)), "fe1", "main", tmp_path / "cred")
    assert err.value.status_code == 422 and problem in str(err.value.detail)
    assert not (tmp_path / "cred").exists()


def stored(pools: list[dict[str, Any]] | None) -> StoredRequest:
    return StoredRequest("fe1", "main", A, {"e": {"idle": 1}}, None, 0.0, {}, None, pools)


def test_pilots_are_told_every_pool_and_the_shares() -> None:
    stage = Stage(root=Path("/s"), files={}, manifest_sha256="f" * 64, public_key_b64="")
    entry = EntryConfig(name="e", site="S")
    args = pilot_arguments(
        entry, stored([{"url": A, "share": 2}, {"url": B, "share": 1}]), "g", "http://f:1", stage
    )
    assert args[args.index("--pool") + 1] == A
    assert args[args.index("--also-pool") + 1] == B
    assert args[args.index("--pool-shares") + 1] == "2,1"
    alone = pilot_arguments(entry, stored(None), "g", "http://f:1", stage)
    assert "--also-pool" not in alone and "--pool-shares" not in alone


def test_a_stored_pool_url_that_does_not_parse_is_refused_for_pilots() -> None:
    bad = stored([{"url": A, "share": 1}, {"url": "http://b:2\nGLIDEIN_X 1", "share": 1}])
    assert "pools[1].url" in (request_problem(bad, "e") or "")
