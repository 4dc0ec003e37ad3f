"""The factory's tables and the migrations that made them, version by version.

`FactoryStore` (store.py) reads and writes them; a database made by any
earlier version is brought up to date by `MIGRATIONS` at start (glidewms.db).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from glidewms import timeseries

metadata = sa.MetaData()

requests_table = sa.Table(
    "requests",
    metadata,
    sa.Column("frontend", sa.String(64), primary_key=True),
    sa.Column("group", sa.String(64), primary_key=True),
    sa.Column("pool_url", sa.Text, nullable=False),
    sa.Column("entries", sa.JSON, nullable=False),
    sa.Column("token_expires", sa.Float, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
    # Expiry of each entry's own pilot token ({entry: epoch}); the tokens are in files.
    sa.Column("entry_tokens", sa.JSON, nullable=True),
    # The frontend's signed VO stage: {"url", "manifest_sha256", "manifest_key"} or null.
    sa.Column("vo_stage", sa.JSON, nullable=True),
    # Pilots serving several pools: [{"url", "share"}], the first is pool_url; or null.
    sa.Column("pools", sa.JSON, nullable=True),
)

glideins_table = sa.Table(
    "glideins",
    metadata,
    sa.Column("glidein_id", sa.String(128), primary_key=True),
    sa.Column("entry", sa.String(64), nullable=False, index=True),
    sa.Column("backend", sa.String(32), nullable=False),
    sa.Column("frontend", sa.String(64), nullable=False, index=True),
    sa.Column("group", sa.String(64), nullable=False),
    sa.Column("backend_id", sa.String(256), nullable=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("submitted_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("exit_reason", sa.String(64), nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("report", sa.JSON, nullable=True),
    sa.Column("logs_archived", sa.Float, nullable=True),
    sa.Column("releases", sa.Integer, nullable=False, server_default="0"),
    sa.Column("state_since", sa.Float, nullable=True),
    # Entry health (pilot_health.py): when its trail said it registered with the pool,
    # and what of it was counted (null, "started", "ended").
    sa.Column("registered_at", sa.Float, nullable=True),
    sa.Column("health_counted", sa.String(16), nullable=True, index=True),
)

# Submission failures and pauses per entry: a restarted factory keeps its pauses.
entry_health_table = sa.Table(
    "entry_health",
    metadata,
    sa.Column("entry", sa.String(64), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("next_try", sa.Float, nullable=False),
    sa.Column("paused_at", sa.Float, nullable=True),
    sa.Column("paused_reason", sa.Text, nullable=True),
    # Version 6: pauses by pilots or operators, the pilot failure streak and probes.
    sa.Column("paused_by", sa.String(16), nullable=True),
    sa.Column("pilot_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_pilot_failure", sa.Text, nullable=True),
    sa.Column("probe_at", sa.Float, nullable=True),
    sa.Column("probe_id", sa.String(128), nullable=True),
    sa.Column("probes", sa.Integer, nullable=False, server_default="0"),
)


downtimes_table = sa.Table(
    "downtimes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("entry", sa.String(64), nullable=False),  # "*" = every entry
    sa.Column("frontend", sa.String(64), nullable=False),  # "*" = every frontend
    sa.Column("start", sa.Float, nullable=False),
    sa.Column("end", sa.Float, nullable=True),  # None = until removed
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_by", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


# Entries a reload removed while pilots remained: their last configuration, so a
# restarted factory keeps watching those pilots (and adopts their interrupted ones).
retired_entries_table = sa.Table(
    "retired_entries",
    metadata,
    sa.Column("entry", sa.String(64), primary_key=True),
    sa.Column("config", sa.JSON, nullable=False),  # EntryConfig.model_dump(mode="json")
    sa.Column("retired_at", sa.Float, nullable=False),
)


def _create_tables(conn: Connection) -> None:
    metadata.create_all(conn, tables=[requests_table, glideins_table])


def _downtimes_and_archive(conn: Connection) -> None:
    """Version 2: downtimes, and when each pilot's logs were archived."""
    downtimes_table.create(conn, checkfirst=True)
    # A database made by version 1 lacks the column; a fresh one got it from step 1.
    columns = {c["name"] for c in sa.inspect(conn).get_columns("glideins")}
    if "logs_archived" not in columns:
        conn.execute(sa.text("ALTER TABLE glideins ADD COLUMN logs_archived FLOAT"))


def _recovery(conn: Connection) -> None:
    """Version 3: entry pauses, release counts and when a pilot entered its state."""
    entry_health_table.create(conn, checkfirst=True)
    columns = {c["name"] for c in sa.inspect(conn).get_columns("glideins")}
    if "releases" not in columns:
        conn.execute(sa.text("ALTER TABLE glideins ADD COLUMN releases INTEGER NOT NULL DEFAULT 0"))
    if "state_since" not in columns:
        conn.execute(sa.text("ALTER TABLE glideins ADD COLUMN state_since FLOAT"))


def _entry_tokens_and_vo_stage(conn: Connection) -> None:
    """Version 4: per-entry pilot token expiries and the VO stage of a request."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns("requests")}
    for name in ("entry_tokens", "vo_stage"):
        if name not in columns:
            conn.execute(sa.text(f"ALTER TABLE requests ADD COLUMN {name} JSON"))


def _retired_entries(conn: Connection) -> None:
    """Version 5: entries removed by a reload while their pilots remain."""
    retired_entries_table.create(conn, checkfirst=True)


def _pilot_health(conn: Connection) -> None:
    """Version 6: entry health from pilots (pilot_health.py).

    Pilots already in the database are marked counted: their history was never
    counted and must not pause an entry the moment a factory is upgraded.
    """
    health = {c["name"] for c in sa.inspect(conn).get_columns("entry_health")}
    for name, kind in (
        ("paused_by", "VARCHAR(16)"),
        ("pilot_failures", "INTEGER NOT NULL DEFAULT 0"),
        ("last_pilot_failure", "TEXT"),
        ("probe_at", "FLOAT"),
        ("probe_id", "VARCHAR(128)"),
        ("probes", "INTEGER NOT NULL DEFAULT 0"),
    ):
        if name not in health:
            conn.execute(sa.text(f"ALTER TABLE entry_health ADD COLUMN {name} {kind}"))
    columns = {c["name"] for c in sa.inspect(conn).get_columns("glideins")}
    if "registered_at" not in columns:
        conn.execute(sa.text("ALTER TABLE glideins ADD COLUMN registered_at FLOAT"))
    if "health_counted" not in columns:
        conn.execute(sa.text("ALTER TABLE glideins ADD COLUMN health_counted VARCHAR(16)"))
    indexes = {i["name"] for i in sa.inspect(conn).get_indexes("glideins")}
    if "ix_glideins_health_counted" not in indexes:
        conn.execute(
            sa.text("CREATE INDEX ix_glideins_health_counted ON glideins (health_counted)")
        )
    conn.execute(sa.text("UPDATE glideins SET health_counted = 'ended'"))


def _samples(conn: Connection) -> None:
    """Version 7: the time series the web console plots (glidewms/timeseries.py)."""
    timeseries.create_table(conn)


def _request_pools(conn: Connection) -> None:
    """Version 8: the pools a group's pilots serve, with their shares (issue 15)."""
    columns = {c["name"] for c in sa.inspect(conn).get_columns("requests")}
    if "pools" not in columns:
        conn.execute(sa.text("ALTER TABLE requests ADD COLUMN pools JSON"))


MIGRATIONS = [
    _create_tables,
    _downtimes_and_archive,
    _recovery,
    _entry_tokens_and_vo_stage,
    _retired_entries,
    _pilot_health,
    _samples,
    _request_pools,
]
