"""A throwaway PostgreSQL 15 cluster for tests, from Debian's server binaries.

`initdb` refuses to run as root, so when the tests run as root the cluster is
created and started as an unprivileged user (`wmsuser`, else `postgres`) with
`runuser`. It listens on 127.0.0.1 at a free port with its socket inside its
own directory, runs with fsync off (it is thrown away), and is stopped and
deleted at the end of the session. Each test gets its own database.

Where PostgreSQL is missing, the tests that need it skip, except under
`CI=true`, where a missing component is a failure.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(os.environ.get("GLIDEWMS_PG_BIN", "/usr/lib/postgresql/15/bin"))
RUN_AS = ("wmsuser", "postgres")
START_DEADLINE = 60.0


class PostgresCluster:
    """One running cluster; `database()` hands out a fresh, empty database URL."""

    def __init__(self) -> None:
        self.user = _unprivileged_user()
        self.dir = Path(tempfile.mkdtemp(prefix="glidewms-pg-"))
        self.port = _free_port()
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run(
            [
                str(BIN / "initdb"),
                "-D",
                str(self.dir / "data"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            [
                str(BIN / "pg_ctl"),
                "-D",
                str(self.dir / "data"),
                "-l",
                str(self.dir / "log"),
                "-w",
                "-t",
                str(int(START_DEADLINE)),
                "-o",
                options,
                "start",
            ]
        )
        self.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str]) -> None:
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", *argv]
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=START_DEADLINE, cwd=self.dir
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )

    def database(self) -> str:
        """Create an empty database; return its SQLAlchemy URL."""
        import psycopg

        with self._lock:
            name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(
                [str(BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop"]
            )
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _unprivileged_user() -> str | None:
    """None when we are not root (run as ourselves), else a user initdb accepts."""
    if os.geteuid() != 0:
        return None
    for name in RUN_AS:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError(
        f"running as root and none of the users {RUN_AS} exists: initdb refuses root"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_reason() -> str | None:
    """Why PostgreSQL cannot be used here, or None."""
    if not (BIN / "initdb").is_file():
        return f"PostgreSQL server binaries not found in {BIN} (set GLIDEWMS_PG_BIN)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip, except in CI where every real component must be present."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and PostgreSQL is required: {reason}")
    pytest.skip(reason)


# One cluster per test process, however many modules import the fixture: each
# importing module registers its own session fixture, so they share this.
_shared: dict[str, object] = {"cluster": None, "users": 0}
_shared_lock = threading.Lock()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    reason = missing_reason()
    if reason:
        skip_or_fail(reason)
    with _shared_lock:
        if _shared["cluster"] is None:
            started = time.monotonic()
            _shared["cluster"] = PostgresCluster()
            _shared["started_in"] = time.monotonic() - started
        _shared["users"] = int(_shared["users"]) + 1  # type: ignore[call-overload]
    cluster = _shared["cluster"]
    assert isinstance(cluster, PostgresCluster)
    try:
        yield cluster
    finally:
        with _shared_lock:
            _shared["users"] = int(_shared["users"]) - 1  # type: ignore[call-overload]
            if _shared["users"] == 0:
                _shared["cluster"] = None
                cluster.stop()


DATABASES = ("sqlite", "postgresql")


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """Parametrises a test over both backends: None means the SQLite default."""
    if request.param == "sqlite":
        return None
    cluster = request.getfixturevalue("postgres_cluster")
    return cluster.database()
