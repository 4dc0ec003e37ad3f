"""Purging what is past retention: finished jobs, old events, unreferenced
sandbox files, pilots that left; and the sizes an operator watches.

Everything here runs from the pool's upkeep loop (api.upkeep) in a thread,
in transactions of at most `batch` rows or files, so pilot turns get the
store between them; one pass removes at most `max_batches` batches and the
rest waits for the next pass.

A finished job goes `history_retention` after its completion (or its last
change, for a removed job), with its events and streams; a cluster's file
references go with its last job. A sandbox file goes once nothing
references it but its upload (file_refs cluster 0) and it is older than
`sandbox_retention` (the file's mtime: when it was stored): a file any
job still lists, queued or in the history, is kept. `now` is a parameter
so tests drive the clock.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from glidewms.pool.lifecycle import TERMINAL_JOBS
from glidewms.pool.sandbox import HEX64, SandboxStore
from glidewms.pool.schema import events, file_refs, jobs, pilots, stream_chunks, streams
from glidewms.pool.shared import Shared

DAY = 86400.0
GONE_PILOTS = ("gone", "lost")
MAX_FILES_EXAMINED = 100_000  # files one purge pass looks at; the next goes on from there
MAX_USAGE_FILES = 1_000_000  # files `usage` walks; past it the sizes say "at least"


@dataclass
class Periods:
    history: float  # seconds
    events: float
    sandbox: float
    batch: int = 500
    max_batches: int = 20


class Retention:
    def __init__(self, shared: Shared, files: SandboxStore, periods: Periods) -> None:
        self.shared = shared
        self.files = files
        self.periods = periods
        self._file_cursor = ""  # where the last pass stopped in the store (digest order)

    def purge(self, now: float) -> dict[str, int]:
        """One pass of every purge; how many of each went."""
        return {
            "jobs": self.purge_history(now),
            "events": self.purge_events(now),
            "pilots": self.purge_pilots(now),
            "files": self.purge_files(now),
        }

    def purge_history(self, now: float) -> int:
        cutoff = now - self.periods.history
        ended = sa.func.coalesce(jobs.c.completion_date, jobs.c.updated_at)
        done = 0
        for _ in range(self.periods.max_batches):
            with self.shared.engine.begin() as conn:
                rows = conn.execute(
                    sa.select(jobs.c.cluster_id, jobs.c.proc_id, jobs.c.owner)
                    .where(jobs.c.state.in_(TERMINAL_JOBS), ended < cutoff)
                    .limit(self.periods.batch)
                ).all()
                if not rows:
                    break
                pairs = [(r.cluster_id, r.proc_id) for r in rows]
                for table in (events, stream_chunks, streams, jobs):
                    conn.execute(
                        table.delete().where(
                            sa.tuple_(table.c.cluster_id, table.c.proc_id).in_(pairs)
                        )
                    )
                for owner, cluster in {(r.owner, r.cluster_id) for r in rows}:
                    left = conn.execute(
                        sa.select(jobs.c.proc_id).where(jobs.c.cluster_id == cluster).limit(1)
                    ).first()
                    if left is None and cluster != 0:
                        conn.execute(
                            file_refs.delete().where(
                                file_refs.c.owner == owner, file_refs.c.cluster_id == cluster
                            )
                        )
            done += len(rows)
            if len(rows) < self.periods.batch:
                break
        return done

    def purge_events(self, now: float) -> int:
        cutoff = now - self.periods.events
        return self._purge_rows(events.c.id, events.c.time < cutoff)

    def purge_pilots(self, now: float) -> int:
        """Pilots that left, kept as long as the history."""
        cutoff = now - self.periods.history
        return self._purge_rows(
            pilots.c.pilot_id, pilots.c.state.in_(GONE_PILOTS), pilots.c.last_seen < cutoff
        )

    def _purge_rows(self, key: Any, *where: Any) -> int:
        """Delete the rows of `key`'s table that match `where`, a batch per
        transaction (so pilot turns get the database between them), at most
        max_batches batches per pass; how many went."""
        table = key.table
        done = 0
        for _ in range(self.periods.max_batches):
            with self.shared.engine.begin() as conn:
                ids = [
                    r[0]
                    for r in conn.execute(sa.select(key).where(*where).limit(self.periods.batch))
                ]
                if ids:
                    conn.execute(table.delete().where(key.in_(ids)))
            done += len(ids)
            if len(ids) < self.periods.batch:
                break
        return done

    def purge_files(self, now: float) -> int:
        """Sandbox files older than the retention that no cluster references."""
        cutoff = now - self.periods.sandbox
        old: list[str] = []
        budget = self.periods.batch * self.periods.max_batches
        examined = 0
        for digest, path in _stored(self.files.root, self._file_cursor):
            self._file_cursor = digest
            examined += 1
            try:
                if path.stat().st_mtime < cutoff:
                    old.append(digest)
            except FileNotFoundError:
                continue
            if len(old) >= budget or examined >= MAX_FILES_EXAMINED:
                break
        else:
            self._file_cursor = ""  # the whole store was seen: start over next pass
        done = 0
        for start in range(0, len(old), self.periods.batch):
            chunk = old[start : start + self.periods.batch]
            with self.shared.engine.begin() as conn:
                used = {
                    r[0]
                    for r in conn.execute(
                        sa.select(file_refs.c.sha256).where(
                            file_refs.c.sha256.in_(chunk), file_refs.c.cluster_id != 0
                        )
                    )
                }
                gone = [d for d in chunk if d not in used]
                if gone:
                    conn.execute(file_refs.delete().where(file_refs.c.sha256.in_(gone)))
                for digest in gone:
                    try:
                        self.files.path(digest).unlink()
                        done += 1
                    except FileNotFoundError:
                        pass
        return done

    def usage(self) -> dict[str, Any]:
        """Rows per table and the sandbox store's files and bytes."""
        counts: dict[str, int] = {}
        with self.shared.engine.connect() as conn:
            counts["queued_jobs"] = conn.execute(
                sa.select(sa.func.count()).where(jobs.c.state.notin_(TERMINAL_JOBS))
            ).scalar_one()
            counts["history_jobs"] = conn.execute(
                sa.select(sa.func.count()).where(jobs.c.state.in_(TERMINAL_JOBS))
            ).scalar_one()
            for name, table in (
                ("events", events),
                ("pilots", pilots),
                ("file_refs", file_refs),
                ("stream_chunks", stream_chunks),
            ):
                counts[name] = conn.execute(
                    sa.select(sa.func.count()).select_from(table)
                ).scalar_one()
        n = size = 0
        for _, path in _stored(self.files.root):
            try:
                size += path.stat().st_size
            except FileNotFoundError:
                continue
            n += 1
            if n >= MAX_USAGE_FILES:
                break
        database = None
        url = self.shared.engine.url
        if url.get_backend_name() == "sqlite" and url.database:
            try:
                database = os.path.getsize(url.database)
            except OSError:
                database = None
        return {
            "rows": counts,
            "sandbox_files": n,
            "sandbox_bytes": size,
            "sandbox_truncated": n >= MAX_USAGE_FILES,
            "database_bytes": database,
            "retention_days": {
                "history": self.periods.history / DAY,
                "events": self.periods.events / DAY,
                "sandbox": self.periods.sandbox / DAY,
            },
        }


def _stored(root: Path, after: str = "") -> Iterator[tuple[str, Path]]:
    """(digest, path) of every complete file in the store (no upload in
    flight), in digest order, from the first digest after `after`."""
    try:
        prefixes = sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return
    for prefix in prefixes:
        if prefix < after[:2]:
            continue
        with os.scandir(root / prefix) as entries:
            names = sorted(
                e.name
                for e in entries
                if HEX64.fullmatch(e.name) and e.is_file(follow_symlinks=False) and e.name > after
            )
        for name in names:
            yield name, root / prefix / name
