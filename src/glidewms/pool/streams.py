"""Streamed stdout/stderr of running jobs (HTCondor's `stream_output` and
`stream_error`): what pilots send while a job runs, and what its owner reads
with `glidewms tail`.

Bounds: a pilot sends at most `CHUNK_BYTES` per call (more is 413), and the
pool keeps the newest `KEEP_BYTES` of each stream of a job: older bytes are
dropped, and a reader is told where the kept text starts. The pilot paces
its calls (one per stream per `STREAM_INTERVAL` of glidein/agent/streams.py),
so a job streams at most CHUNK_BYTES per interval. Only the pilot that holds
the job's claim writes (by the claim, and the token that registered the
pilot: routes/streams.py), only the job's owner (or an admin) reads.

A stream is every run of the job in order: a chunk is placed by its offset
in its run's output (`offset`), and a run is known by its claim. A chunk
sent twice (a retry) or overlapping what is kept adds nothing twice; one
past what is kept (the pilot skipped what the pool would drop anyway) drops
what was kept. `place` is that rule, as a pure function.

Storage (schema.streams, schema.stream_chunks): the text is kept in rows of
at most CHUNK_BYTES; new bytes fill the last row up to that size, else start
a new one. So an append writes at most CHUNK_BYTES twice (not the whole
kept text), a stream has at most KEEP_BYTES / CHUNK_BYTES + 2 rows however
small the chunks a pilot sends, and dropping the oldest bytes deletes the
rows wholly before the kept start (a reader skips the rest).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from glidewms.pool.jobs import Conflict
from glidewms.pool.lifecycle import LIVE_PILOTS, JobState
from glidewms.pool.pilots import PilotOwner
from glidewms.pool.schema import jobs, pilots, stream_chunks, streams
from glidewms.pool.shared import Shared

CHUNK_BYTES = 64 * 1024  # the most one call may carry
KEEP_BYTES = 1024 * 1024  # the most kept per job and stream: older bytes are dropped
MAX_OFFSET = 2**53  # offsets come from pilots: bounded before the database


@dataclass(frozen=True)
class Kept:
    """One stream as kept: the run's claim, and where the run, the kept text
    and the stream start and end in the whole stream."""

    claim_id: str | None = None
    base: int = 0
    start: int = 0
    end: int = 0


@dataclass(frozen=True)
class Placed:
    """A chunk placed: the stream after it; `chunk[skip:]` is new, at `at`
    (the old end, or past it after a gap: then what was kept is dropped)."""

    kept: Kept
    skip: int
    at: int
    gap: bool


def place(kept: Kept, claim_id: str, offset: int, size: int, keep: int = KEEP_BYTES) -> Placed:
    """Where `size` bytes at `offset` of claim `claim_id`'s output go.

    A new claim is a new run: it starts where the stream ends. Bytes already
    kept are not added again; a gap drops what was kept; the newest `keep`
    bytes stay."""
    base = kept.end if claim_id != kept.claim_id else kept.base
    at = base + offset
    start, end = kept.start, kept.end
    if at > end:  # a gap: what came before is dropped
        placed = Placed(Kept(claim_id, base, at, at + size), 0, at, True)
    else:
        skip = min(size, end - at)
        placed = Placed(Kept(claim_id, base, start, max(end, at + size)), skip, end, False)
    after = placed.kept
    if after.end - after.start > keep:
        after = Kept(after.claim_id, after.base, after.end - keep, after.end)
    return Placed(after, placed.skip, placed.at, placed.gap)


def window(kept: Kept, offset: int | None, limit: int) -> tuple[int, int]:
    """What a reader gets: (where, how many bytes) from `offset` (None: the
    last `limit` bytes), at most `limit`. An offset before the kept text
    starts at the kept text; one past its end is its end."""
    if offset is None:
        offset = max(kept.start, kept.end - limit)
    offset = min(max(offset, kept.start), kept.end)
    return offset, min(limit, kept.end - offset)


class Streams:
    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    def append(
        self, claim_id: str, which: str, offset: int, chunk: bytes, owner: PilotOwner | None
    ) -> dict[str, int]:
        """Add a chunk of the job that claim `claim_id` runs; Conflict unless
        that claim is held by a live pilot of `owner` (None: an admin)."""
        now = time.time()
        for attempt in range(2):  # a first chunk racing another inserts once
            try:
                with self.shared.engine.begin() as conn:
                    return self._append(conn, claim_id, which, offset, chunk, owner, now)
            except sa.exc.IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _append(
        self,
        conn: Any,
        claim_id: str,
        which: str,
        offset: int,
        chunk: bytes,
        owner: PilotOwner | None,
        now: float,
    ) -> dict[str, int]:
        holder = conn.execute(_HOLDER, {"b_claim": claim_id}).first()
        if holder is None or (owner is not None and not owner.owns(holder)):
            raise Conflict(_GONE)
        key = {"b_c": holder.cluster_id, "b_p": holder.proc_id, "b_w": which}
        row = conn.execute(_META.with_for_update(), key).first()
        before = Kept() if row is None else _kept(row)
        placed = place(before, claim_id, offset, len(chunk))
        after, new = placed.kept, chunk[placed.skip :]
        meta = {
            "claim_id": after.claim_id,
            "base": after.base,
            "kept_start": after.start,
            "kept_end": after.end,
            "updated_at": now,
        }
        if row is None:
            conn.execute(streams.insert().values(**_ids(key), **meta))
        elif after != before:
            conn.execute(_UPDATE_META.values(**meta), key)
        if placed.gap:
            conn.execute(_DROP_ALL, key)
        if new:
            last = None if placed.gap else conn.execute(_LAST, key).first()
            if (
                last is not None
                and last.at + last.size == placed.at
                and (last.size + len(new) <= CHUNK_BYTES)
            ):
                conn.execute(
                    _GROW,
                    {
                        **key,
                        "b_at": last.at,
                        "b_data": last.data + new,
                        "b_size": last.size + len(new),
                    },
                )
            else:
                conn.execute(
                    stream_chunks.insert().values(
                        **_ids(key), at=placed.at, size=len(new), data=new
                    )
                )
        if after.start > before.start:
            conn.execute(_DROP_BEFORE, {**key, "b_start": after.start})
        return {"start": after.start, "end": after.end}

    def read(
        self, cluster_id: int, proc_id: int, which: str, offset: int | None, limit: int
    ) -> tuple[Kept, int, bytes]:
        """(the stream as kept, where the text starts, the text): see `window`."""
        key = {"b_c": cluster_id, "b_p": proc_id, "b_w": which}
        with self.shared.engine.connect() as conn:
            row = conn.execute(_META, key).first()
            kept = Kept() if row is None else _kept(row)
            at, size = window(kept, offset, limit)
            if size <= 0:
                return kept, at, b""
            rows = conn.execute(_RANGE, {**key, "b_from": at, "b_to": at + size}).all()
        if not rows:
            return kept, at, b""
        text = b"".join(bytes(r.data) for r in rows)
        begin = at - rows[0].at
        return kept, at, text[begin : begin + size]


def _kept(row: Any) -> Kept:
    return Kept(row.claim_id, int(row.base), int(row.kept_start), int(row.kept_end))


def _ids(key: dict[str, Any]) -> dict[str, Any]:
    return {"cluster_id": key["b_c"], "proc_id": key["b_p"], "which": key["b_w"]}


_GONE = "claim is no longer held: the job was requeued, held, removed or completed"
# The job a claim runs, with the pilot holding it (live pilots only).
_HOLDER = (
    sa.select(
        jobs.c.cluster_id,
        jobs.c.proc_id,
        pilots.c.token_subject,
        pilots.c.frontend,
        pilots.c.group_name,
        pilots.c.token_entry,
        pilots.c.token_site,
    )
    .join(pilots, pilots.c.pilot_id == jobs.c.pilot_id)
    .where(
        jobs.c.claim_id == sa.bindparam("b_claim"),
        jobs.c.state == JobState.RUNNING,
        pilots.c.state.in_(LIVE_PILOTS),
    )
)


def _where(table: sa.Table) -> tuple[Any, ...]:
    return (
        table.c.cluster_id == sa.bindparam("b_c"),
        table.c.proc_id == sa.bindparam("b_p"),
        table.c.which == sa.bindparam("b_w"),
    )


_META = sa.select(streams).where(*_where(streams))
_UPDATE_META = streams.update().where(*_where(streams))
_LAST = (
    sa.select(stream_chunks.c.at, stream_chunks.c.size, stream_chunks.c.data)
    .where(*_where(stream_chunks))
    .order_by(stream_chunks.c.at.desc())
    .limit(1)
)
_GROW = (
    stream_chunks.update()
    .where(*_where(stream_chunks), stream_chunks.c.at == sa.bindparam("b_at"))
    .values(data=sa.bindparam("b_data"), size=sa.bindparam("b_size"))
)
_DROP_ALL = stream_chunks.delete().where(*_where(stream_chunks))
_DROP_BEFORE = stream_chunks.delete().where(
    *_where(stream_chunks),
    stream_chunks.c.at + stream_chunks.c.size <= sa.bindparam("b_start", type_=sa.BigInteger),
)
_RANGE = (
    sa.select(stream_chunks.c.at, stream_chunks.c.data)
    .where(
        *_where(stream_chunks),
        stream_chunks.c.at + stream_chunks.c.size > sa.bindparam("b_from", type_=sa.BigInteger),
        stream_chunks.c.at < sa.bindparam("b_to", type_=sa.BigInteger),
    )
    .order_by(stream_chunks.c.at)
)
