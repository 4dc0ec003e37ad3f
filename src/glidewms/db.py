"""Database plumbing shared by the services: engines and versioned migrations.

Each service owns its schema as SQLAlchemy Core tables plus an ordered list of
migrations. SQLite (WAL) is the embedded default; any SQLAlchemy URL works
whose driver is installed (PostgreSQL's, psycopg, comes with the `postgres`
extra).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from glidewms.extras import MissingExtra, is_missing

Migration = Callable[[Connection], None]


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def make_engine(url: str) -> Engine:
    """An engine with the settings each backend needs for a multi-threaded service."""
    if url.startswith("sqlite"):
        private_sqlite_files(sa.engine.make_url(url).database)
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    try:
        return sa.create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise _missing_driver(url, exc) from None


def private_sqlite_files(database: str | None) -> None:
    """Make a SQLite database, and its -wal and -shm files, readable by this
    account only (0600): they hold job environments and arguments.

    The database file is created here, before SQLite opens it, because SQLite
    gives the -wal and -shm files it creates the database file's mode; files
    made by an older version are tightened."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if each.exists() and each.stat().st_mode & 0o077:
            os.chmod(each, 0o600)


def _missing_driver(url: str, exc: ModuleNotFoundError) -> ImportError:
    """SQLAlchemy imports a URL's driver when the engine is made, and says only
    "No module named ..."; say which database needs it and how to get it. Only
    the scheme is named: the URL may hold a password."""
    scheme = url.partition("://")[0]
    if is_missing(exc, "psycopg"):
        return MissingExtra(f"the {scheme}:// database", "psycopg")
    return ImportError(
        f"the {scheme}:// database needs the driver {exc.name!r}, which is not installed"
    )


def migrate(engine: Engine, service: str, migrations: Sequence[Migration]) -> int:
    """Apply the migrations not yet applied, in order, each in its own transaction.

    The version lives in `schema_version`; migration i (1-based) brings the schema
    to version i. Returns the resulting version.
    """
    meta = sa.MetaData()
    version_table = sa.Table(
        "schema_version",
        meta,
        sa.Column("service", sa.String(32), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    meta.create_all(engine)
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(version_table.c.version).where(version_table.c.service == service)
        ).first()
        current = row[0] if row else 0
        if row is None:
            conn.execute(version_table.insert().values(service=service, version=0))
    if current > len(migrations):
        raise RuntimeError(
            f"{service} database schema is version {current}, newer than this glidewms "
            f"({len(migrations)}); upgrade glidewms"
        )
    for number, step in enumerate(migrations[current:], start=current + 1):
        with engine.begin() as conn:
            step(conn)
            conn.execute(
                version_table.update()
                .where(version_table.c.service == service)
                .values(version=number)
            )
    return len(migrations)
