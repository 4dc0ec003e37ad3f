"""The pool's tables and their migrations (SQLAlchemy Core).

Jobs keep their static ClassAd as text; the columns beside it hold what
changes (state, claim, lease) so that claims and lease expiry are single
indexed UPDATEs and never need to parse an ad.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

metadata = sa.MetaData()

counters = sa.Table(
    "counters",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)

autoclusters = sa.Table(
    "autoclusters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("signature", sa.String(64), nullable=False, unique=True),
    sa.Column("ad", sa.Text, nullable=False),  # the significant attributes only
    sa.Column("created_at", sa.Float, nullable=False),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("cluster_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("proc_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("ad", sa.Text, nullable=False),
    sa.Column("autocluster_id", sa.Integer, sa.ForeignKey("autoclusters.id"), nullable=False),
    sa.Column("prio", sa.Integer, nullable=False, default=0),
    sa.Column("q_date", sa.Float, nullable=False),
    sa.Column("sandbox", sa.JSON, nullable=False),
    sa.Column("outputs", sa.JSON, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("claim_id", sa.String(64), nullable=True, unique=True),
    sa.Column("pilot_id", sa.String(64), nullable=True),
    sa.Column("lease_expires", sa.Float, nullable=True),
    sa.Column("num_starts", sa.Integer, nullable=False, default=0),
    sa.Column("num_restarts", sa.Integer, nullable=False, default=0),
    sa.Column("hold_reason", sa.Text, nullable=True),
    sa.Column("start_date", sa.Float, nullable=True),
    sa.Column("completion_date", sa.Float, nullable=True),
    sa.Column("wall_seconds", sa.Float, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_jobs_state_ac", "state", "autocluster_id"),
    sa.Index("ix_jobs_state_lease", "state", "lease_expires"),
    sa.Index("ix_jobs_owner_state", "owner", "state"),
    sa.Index("ix_jobs_pilot", "pilot_id"),
)

pilots = sa.Table(
    "pilots",
    metadata,
    sa.Column("pilot_id", sa.String(64), primary_key=True),
    sa.Column("glidein_id", sa.String(128), nullable=True),
    sa.Column("frontend", sa.String(128), nullable=True),
    sa.Column("group_name", sa.String(128), nullable=True),
    sa.Column("slot", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # active, draining, gone, lost
    sa.Column("registered_at", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("lease_expires", sa.Float, nullable=False),
    sa.Column("drain", sa.Boolean, nullable=False, default=False),
    sa.Column("exit_reason", sa.Text, nullable=True),
    sa.Index("ix_pilots_state_lease", "state", "lease_expires"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("cluster_id", sa.Integer, nullable=False),
    sa.Column("proc_id", sa.Integer, nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("detail", sa.JSON, nullable=True),
    sa.Index("ix_events_job", "cluster_id", "proc_id"),
)


def _initial(conn: Connection) -> None:
    metadata.create_all(conn)


MIGRATIONS = [_initial]
