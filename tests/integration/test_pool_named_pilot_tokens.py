"""A pool with a `name` mints pilot tokens valid there only (`pool` claim), so
pools that share a pilot issuer key (a pilot serving several pools holds a
token of each) never take one another's: in-process, against the real app."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from glidewms.config.pool import PoolConfig
from glidewms.pool.api import create_app
from tests.integration.conftest import bearer

SLOT = {"Cpus": 1, "Memory": 100, "Disk": 1000}


def mint(pool: TestClient, frontend: dict[str, str]) -> dict[str, str]:
    r = pool.post("/api/v1/tokens/pilot", json={"group": "main"}, headers=frontend)
    assert r.status_code == 200, r.text
    return bearer(r.json()["token"])


@pytest.mark.parametrize(
    ("minter", "judge", "status"),
    [
        ("a", "a", 201),  # its own pool takes it
        ("a", "b", 403),  # another pool refuses it
        ("a", None, 403),  # a pool without a name too: the token names another
        (None, "b", 201),  # a token without the claim is judged as before
    ],
)
def test_a_pilot_token_is_taken_only_by_the_pool_that_minted_it(
    pool_config: PoolConfig,
    auth: Callable[..., dict[str, str]],
    minter: str | None,
    judge: str | None,
    status: int,
) -> None:
    frontend = auth("fe1", "frontend")
    minting = pool_config.model_copy(update={"name": minter})
    judging = pool_config.model_copy(
        update={"name": judge, "state_dir": pool_config.state_dir.with_name("judge")}
    )
    with TestClient(create_app(minting, "http://testserver")) as a:
        token = mint(a, frontend)
    with TestClient(create_app(judging, "http://testserver")) as b:
        r = b.post("/api/v1/pilots", json={"slot": SLOT, "glidein_id": "g-1"}, headers=token)
        assert r.status_code == status, r.text
        if status == 403:
            assert "minted by pool 'a'" in r.json()["detail"]
        # files (user or pilot scope) are refused the same way
        f = b.get(f"/api/v1/files/{'0' * 64}", headers=token)
        assert (f.status_code == 403) == (status == 403), f.text
