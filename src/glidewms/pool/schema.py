"""The pool's tables and their migrations (SQLAlchemy Core).

Jobs keep their static ClassAd as text; the columns beside it hold what
changes (state, claim, lease) so that claims and lease expiry are single
indexed UPDATEs and never need to parse an ad.

Migrations are additive and idempotent: the first creates whatever is missing
from the current tables, later ones add the columns, tables and indexes that
older databases lack (and backfill them). So a fresh database and an upgraded
one end with the same schema, on SQLite and on PostgreSQL alike.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from glidewms import timeseries

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
    # the fair-share principal: "group.Owner" (jobs.accounting_group), or the owner alone (v2)
    sa.Column("submitter", sa.String(256), nullable=True),
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
    # cores the job holds while running: what fair-share usage counts (v2)
    sa.Column("cpus", sa.Integer, nullable=False, default=1, server_default="1"),
    sa.Column("hold_reason", sa.Text, nullable=True),
    # HTCondor's HoldReasonCode: 1 user, 3 job policy (periodic_hold, too many site failures) (v3)
    sa.Column("hold_code", sa.Integer, nullable=True),
    # the ad has PeriodicHold/PeriodicRemove/PeriodicRelease: the policy pass reads it (v3)
    sa.Column("periodic", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.Column("start_date", sa.Float, nullable=True),
    sa.Column("completion_date", sa.Float, nullable=True),
    sa.Column("wall_seconds", sa.Float, nullable=True),
    # NumJobCompletions: times the job ran to its end (max_retries, on_exit_*)
    sa.Column("completions", sa.Integer, nullable=False, default=0, server_default="0"),
    # the latest checkpoint of a self-checkpointing job: [{name, sha256}] (v7)
    sa.Column("checkpoint", sa.JSON, nullable=True),
    # NumCkpts: checkpoints the job took (exits with SuccessCheckpointExitCode) (v7)
    sa.Column("num_checkpoints", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_jobs_state_ac", "state", "autocluster_id"),
    sa.Index("ix_jobs_state_lease", "state", "lease_expires"),
    sa.Index("ix_jobs_owner_state", "owner", "state"),
    sa.Index("ix_jobs_pilot", "pilot_id"),
)

# The jobs the periodic policy pass evaluates, without scanning the others (v3).
PERIODIC_INDEX = sa.Index("ix_jobs_periodic", jobs.c.periodic, jobs.c.state)

# The best idle job of one (autocluster, submitter) is one index seek (v2).
PICK_INDEX = sa.Index(
    "ix_jobs_pick",
    jobs.c.state,
    jobs.c.autocluster_id,
    jobs.c.submitter,
    jobs.c.prio.desc(),
    jobs.c.q_date,
    jobs.c.cluster_id,
    jobs.c.proc_id,
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
    # what the pilot last reported free when claiming (v2)
    sa.Column("free", sa.JSON, nullable=True),
    # the pilot said it takes no new work (drain, lifetime reached) (v2)
    sa.Column("retiring", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    # the token that registered the pilot (with frontend and group_name, its fe and
    # group claims): every later call must come with the same identity (v5)
    sa.Column("token_subject", sa.String(256), nullable=True),
    sa.Column("token_entry", sa.String(128), nullable=True),
    sa.Column("token_site", sa.String(128), nullable=True),
    sa.Index("ix_pilots_state_lease", "state", "lease_expires"),
)

usage = sa.Table(
    "usage",
    metadata,
    sa.Column("submitter", sa.String(256), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("acct_group", sa.String(128), nullable=True),
    sa.Column("usage", sa.Float, nullable=False),  # core-seconds, decayed to updated_at
    sa.Column("updated_at", sa.Float, nullable=False),
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


# Who may read a sandbox file (v5): its uploader (cluster_id 0), and the owner
# of each cluster whose jobs use it as an input or produced it as an output.
file_refs = sa.Table(
    "file_refs",
    metadata,
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("cluster_id", sa.Integer, nullable=False),
    sa.PrimaryKeyConstraint("sha256", "owner", "cluster_id"),
)


# What a running job wrote to stdout/stderr, for `glidewms tail` (v7): per job
# and stream, where the kept text starts and ends in the whole stream (every
# run in order) and where the current run (its claim) began; the text is in
# `stream_chunks`, rows of at most a chunk's size (streams.CHUNK_BYTES), so
# an append writes at most one such row, and dropping the oldest bytes
# deletes whole rows.
streams = sa.Table(
    "streams",
    metadata,
    sa.Column("cluster_id", sa.Integer, nullable=False),
    sa.Column("proc_id", sa.Integer, nullable=False),
    sa.Column("which", sa.String(3), nullable=False),
    sa.Column("claim_id", sa.String(64), nullable=True),
    sa.Column("base", sa.BigInteger, nullable=False),
    sa.Column("kept_start", sa.BigInteger, nullable=False),
    sa.Column("kept_end", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("cluster_id", "proc_id", "which"),
)

stream_chunks = sa.Table(
    "stream_chunks",
    metadata,
    sa.Column("cluster_id", sa.Integer, nullable=False),
    sa.Column("proc_id", sa.Integer, nullable=False),
    sa.Column("which", sa.String(3), nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False),  # its first byte's place in the stream
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.PrimaryKeyConstraint("cluster_id", "proc_id", "which", "at"),
)


# Drains an operator asked for (v9; drains.py): a pilot, or every pilot of an
# entry (GLIDEIN_Entry_Name) or a site (GLIDEIN_Site), those registering later
# included, until it is lifted. `hard`: running jobs were vacated.
drains = sa.Table(
    "drains",
    metadata,
    sa.Column("kind", sa.String(8), nullable=False),  # pilot, entry, site
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("hard", sa.Boolean, nullable=False, default=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("by", sa.String(256), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("kind", "name"),
)


# Late materialisation (materialize.py; HTCondor's max_materialize/max_idle):
# a cluster kept as its common ("proto") job once and, per proc, only what
# differs from it, in chunks as the client sent them; its jobs are written to
# `jobs` a batch at a time, as the limits allow. `next_proc` is how many have
# been (ProcIds below it exist, or existed, in `jobs`); it moves in the same
# transaction as the jobs it counts. `staging`: chunks still arriving
# (invisible, dropped if never committed); `active`: procs left to
# materialise; `done`: none left; `removed`: the rest were removed (condor_rm).
late_clusters = sa.Table(
    "late_clusters",
    metadata,
    sa.Column("cluster_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("proto", sa.JSON, nullable=False),  # {attrs, sandbox, args, env}
    sa.Column("max_materialize", sa.Integer, nullable=True),  # None: no limit
    sa.Column("max_idle", sa.Integer, nullable=True),  # None: no limit
    sa.Column("staged", sa.Integer, nullable=False),  # procs received
    sa.Column("total", sa.Integer, nullable=True),  # set by the commit
    sa.Column("next_proc", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_late_clusters_state", "state"),
)

late_procs = sa.Table(
    "late_procs",
    metadata,
    sa.Column("cluster_id", sa.Integer, nullable=False),
    sa.Column("first", sa.Integer, nullable=False),  # ProcId of its first proc
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("deltas", sa.JSON, nullable=False),  # one per proc: what differs from the proto
    sa.PrimaryKeyConstraint("cluster_id", "first"),
)

# A cluster's queued jobs by state, counted each materialisation pass without
# reading its finished ones (v10).
CLUSTER_STATE_INDEX = sa.Index("ix_jobs_cluster_state", jobs.c.cluster_id, jobs.c.state)


def _initial(conn: Connection) -> None:
    metadata.create_all(conn)


def _add_missing_column(conn: Connection, table: sa.Table, name: str) -> None:
    present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    if name not in present:
        ddl = sa.schema.CreateColumn(table.c[name]).compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))


def _v2_fair_share(conn: Connection) -> None:
    """Submitters, cores per job, the pick index, the usage table, pilots' free/retiring."""
    _add_missing_column(conn, jobs, "submitter")
    _add_missing_column(conn, jobs, "cpus")
    _add_missing_column(conn, pilots, "free")
    _add_missing_column(conn, pilots, "retiring")
    conn.execute(jobs.update().where(jobs.c.submitter.is_(None)).values(submitter=jobs.c.owner))
    indexes = {i["name"] for i in sa.inspect(conn).get_indexes("jobs")}
    if PICK_INDEX.name not in indexes:
        PICK_INDEX.create(conn)
    metadata.create_all(conn, tables=[usage])


def _v3_policies(conn: Connection) -> None:
    """Hold codes and the periodic flag (jobs with periodic_* expressions)."""
    _add_missing_column(conn, jobs, "hold_code")
    _add_missing_column(conn, jobs, "periodic")
    indexes = {i["name"] for i in sa.inspect(conn).get_indexes("jobs")}
    if PERIODIC_INDEX.name not in indexes:
        PERIODIC_INDEX.create(conn)
    # jobs queued before v3 with periodic expressions: their ads say so
    conn.execute(
        jobs.update()
        .where(
            sa.or_(
                jobs.c.ad.like("%PeriodicHold =%"),
                jobs.c.ad.like("%PeriodicRemove =%"),
                jobs.c.ad.like("%PeriodicRelease =%"),
            )
        )
        .values(periodic=True)
    )


def _v4_exit_policy(conn: Connection) -> None:
    """NumJobCompletions, for max_retries and on_exit_remove (HTCondor semantics)."""
    _add_missing_column(conn, jobs, "completions")


def _v5_file_refs(conn: Connection) -> None:
    """Who may read each sandbox file, from the jobs already queued."""
    metadata.create_all(conn, tables=[file_refs])
    after = (-1, -1)
    while True:
        rows = conn.execute(
            sa.select(
                jobs.c.cluster_id, jobs.c.proc_id, jobs.c.owner, jobs.c.sandbox, jobs.c.outputs
            )
            .where(sa.tuple_(jobs.c.cluster_id, jobs.c.proc_id) > after)
            .order_by(jobs.c.cluster_id, jobs.c.proc_id)
            .limit(5000)
        ).all()
        if not rows:
            return
        after = (rows[-1].cluster_id, rows[-1].proc_id)
        refs = {
            (f["sha256"], r.owner, r.cluster_id)
            for r in rows
            for f in [*(r.sandbox or {}).get("files", []), *(r.outputs or [])]
            if isinstance(f, dict) and isinstance(f.get("sha256"), str)
        }
        known = {
            tuple(k)
            for k in conn.execute(
                sa.select(file_refs.c.sha256, file_refs.c.owner, file_refs.c.cluster_id).where(
                    file_refs.c.cluster_id.in_({c for _, _, c in refs})
                )
            )
        }
        new = [{"sha256": s, "owner": o, "cluster_id": c} for s, o, c in refs - known]
        if new:
            conn.execute(file_refs.insert(), new)


def _v6_pilot_identity(conn: Connection) -> None:
    """The identity that registered each pilot. Pilots registered before have
    none (NULL subject): they stay bound to their frontend and group only."""
    for name in ("token_subject", "token_entry", "token_site"):
        _add_missing_column(conn, pilots, name)


def _v7_checkpoints_streams(conn: Connection) -> None:
    """Self-checkpointing jobs' checkpoints and counts; streamed stdout/stderr."""
    _add_missing_column(conn, jobs, "checkpoint")
    _add_missing_column(conn, jobs, "num_checkpoints")
    metadata.create_all(conn, tables=[streams, stream_chunks])


def _v8_samples(conn: Connection) -> None:
    """The time series the web console plots (glidewms/timeseries.py). Numbered
    9: v8 comes from another branch; it creates only its own table, so
    its place in the list does not matter to the others."""
    timeseries.create_table(conn)


def _v9_drains(conn: Connection) -> None:
    """Operators' drains of pilots, entries and sites (drains.py): only its own table."""
    metadata.create_all(conn, tables=[drains])


def _v10_late_materialization(conn: Connection) -> None:
    """Late-materialising clusters (materialize.py): their own tables, and an
    index on jobs by cluster and state."""
    metadata.create_all(conn, tables=[late_clusters, late_procs])
    indexes = {i["name"] for i in sa.inspect(conn).get_indexes("jobs")}
    if CLUSTER_STATE_INDEX.name not in indexes:
        CLUSTER_STATE_INDEX.create(conn)


MIGRATIONS = [
    _initial,
    _v2_fair_share,
    _v3_policies,
    _v4_exit_policy,
    _v5_file_refs,
    _v6_pilot_identity,
    _v7_checkpoints_streams,
    _v8_samples,
    _v9_drains,
    _v10_late_materialization,
]
