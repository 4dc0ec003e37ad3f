"""Who may read which sandbox file (docs/security.md).

Files are stored by their SHA-256, so knowing a digest must not be enough to
read a file: a user reads a file they uploaded, or one their own jobs use as
an input or produced as an output; an admin reads any. A pilot reads the
files of clusters that have a job running (on any pilot: binding a pilot's
token to the claims it holds is done where pilots are identified).

The references (`schema.file_refs`: digest, owner, cluster; cluster 0 for an
upload) are written in the same transaction as what makes them true: a
submit (its inputs), a completion (its outputs), an upload. Submitting a job
whose sandbox names a file its owner may not read is refused, so a job
cannot be used to reach someone else's file either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from glidewms.pool.lifecycle import JobState
from glidewms.pool.schema import file_refs, jobs
from glidewms.pool.shared import Shared

Ref = tuple[str, str, int]  # (sha256, owner, cluster id; 0 for an upload)
UPLOADED = 0


def grant(conn: Connection, refs: Iterable[Ref]) -> None:
    """Record references in `conn`'s transaction; ones already there are kept."""
    rows = [{"sha256": s, "owner": o, "cluster_id": c} for s, o, c in set(refs)]
    if not rows:
        return
    name = conn.dialect.name
    if name == "sqlite":
        conn.execute(sqlite_insert(file_refs).on_conflict_do_nothing(), rows)
    elif name == "postgresql":
        conn.execute(pg_insert(file_refs).on_conflict_do_nothing(), rows)
    else:
        for row in rows:
            with contextlib.suppress(sa.exc.IntegrityError), conn.begin_nested():
                conn.execute(file_refs.insert(), row)


class FileAccess:
    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    def uploaded(self, owner: str, sha256: str) -> None:
        with self.shared.engine.begin() as conn:
            grant(conn, [(sha256, owner, UPLOADED)])

    def user_may_read(self, owner: str, sha256: str) -> bool:
        with self.shared.engine.connect() as conn:
            return (
                conn.execute(
                    sa.select(file_refs.c.sha256)
                    .where(file_refs.c.sha256 == sha256, file_refs.c.owner == owner)
                    .limit(1)
                ).first()
                is not None
            )

    def readable_by_user(self, owner: str, digests: Iterable[str]) -> set[str]:
        """Those of `digests` `owner` may read."""
        wanted = sorted(set(digests))
        found: set[str] = set()
        with self.shared.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                found.update(
                    r[0]
                    for r in conn.execute(
                        sa.select(file_refs.c.sha256).where(
                            file_refs.c.owner == owner,
                            file_refs.c.sha256.in_(wanted[start : start + 500]),
                        )
                    )
                )
        return found

    def pilot_may_read(self, sha256: str) -> bool:
        """A file of a cluster that has a running job (by the owner's running
        jobs: an index seek, however large the cluster)."""
        with self.shared.engine.connect() as conn:
            return (
                conn.execute(
                    sa.select(file_refs.c.sha256)
                    .join(
                        jobs,
                        sa.and_(
                            jobs.c.owner == file_refs.c.owner,
                            jobs.c.state == JobState.RUNNING,
                            jobs.c.cluster_id == file_refs.c.cluster_id,
                        ),
                    )
                    .where(file_refs.c.sha256 == sha256)
                    .limit(1)
                ).first()
                is not None
            )
