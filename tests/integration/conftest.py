"""Fixtures for in-process service tests: real keys, real tokens, real SQLite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from glidewms.config.pool import PoolConfig
from glidewms.pool.api import create_app
from glidewms.security.tokens import TokenIssuer, generate_keypair


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys")


@pytest.fixture
def issuer(keys: tuple[Path, Path]) -> TokenIssuer:
    return TokenIssuer.from_file(keys[0])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def auth(issuer: TokenIssuer) -> Callable[..., dict[str, str]]:
    """Authorization headers for a subject with one scope (and extra claims)."""

    def make(subject: str, scope: str = "user", **claims: str) -> dict[str, str]:
        return bearer(issuer.issue(subject, [scope], **claims))

    return make


@pytest.fixture
def pool_config(tmp_path: Path, keys: tuple[Path, Path]) -> PoolConfig:
    """A pool that mints pilot tokens with its own pilot issuer key (never issuer.key)."""
    pilot_private, pilot_public = generate_keypair(keys[0].parent, "pilot_issuer")
    return PoolConfig(
        state_dir=tmp_path / "pool",
        issuer_public_key=keys[1],
        pilot_issuer_public_key=pilot_public,
        pilot_issuer_private_key=pilot_private,
        claim_lease_seconds=30,
        lease_check_seconds=0.05,
    )


@pytest.fixture
def pool(pool_config: PoolConfig) -> Iterator[TestClient]:
    with TestClient(create_app(pool_config, "http://testserver")) as client:
        yield client
