"""Optional dependencies: a missing one is named with the extra that brings it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glidewms.cli.main import app
from glidewms.db import make_engine
from glidewms.extras import MissingExtra, is_missing
from glidewms.security.tokens import generate_keypair


@pytest.fixture
def no_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    """psycopg as if not installed: importing it raises ModuleNotFoundError."""
    for name in [m for m in sys.modules if m == "psycopg" or m.startswith("psycopg.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)


def test_a_postgresql_url_without_psycopg_names_the_postgres_extra(no_psycopg) -> None:
    with pytest.raises(MissingExtra) as caught:
        make_engine("postgresql+psycopg://wms:s3cret@db.example/pool")
    assert caught.value.extra == "postgres"
    assert "pip install 'glidewms[postgres]'" in str(caught.value)
    assert "s3cret" not in str(caught.value)  # only the scheme is named


def test_the_pool_command_says_which_extra_is_missing(no_psycopg, tmp_path: Path) -> None:
    _, public = generate_keypair(tmp_path / "keys")
    config = tmp_path / "pool.yaml"
    config.write_text(
        f"listen_host: 127.0.0.1\nlisten_port: 0\nstate_dir: {tmp_path}\n"
        f"issuer_public_key: {public}\n"
        "database_url: postgresql+psycopg://wms@127.0.0.1:9/pool\n"
    )
    result = CliRunner().invoke(app, ["pool", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "glidewms[postgres]" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_broken_dependency_of_an_installed_package_is_not_called_missing() -> None:
    """Only the package itself being absent is a missing extra; a module it
    fails to import is a broken installation, reported as it is."""
    assert is_missing(ModuleNotFoundError("x", name="asyncssh"), "asyncssh")
    assert is_missing(ModuleNotFoundError("x", name="psycopg.pq"), "psycopg")
    assert not is_missing(ModuleNotFoundError("x", name="cryptography"), "asyncssh")
    assert not is_missing(ModuleNotFoundError("x"), "asyncssh")
