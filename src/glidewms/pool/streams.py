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
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from glidewms.pool.jobs import Conflict
from glidewms.pool.lifecycle import LIVE_PILOTS, JobState
from glidewms.pool.pilots import PilotOwner
from glidewms.pool.schema import jobs, pilots, streams
from glidewms.pool.shared import Shared

CHUNK_BYTES = 64 * 1024  # the most one call may carry
KEEP_BYTES = 1024 * 1024  # the most kept per job and stream: older bytes are dropped
WHICH = ("out", "err")
MAX_OFFSET = 2**53  # offsets come from pilots: bounded before the database


@dataclass(frozen=True)
class Kept:
    """One stream as kept: the run's claim, where the run and the kept text
    start in the whole stream, and the text."""

    claim_id: str | None = None
    base: int = 0
    start: int = 0
    data: bytes = b""

    @property
    def end(self) -> int:
        return self.start + len(self.data)


def place(kept: Kept, claim_id: str, offset: int, chunk: bytes, keep: int = KEEP_BYTES) -> Kept:
    """`kept` after the chunk at `offset` of claim `claim_id`'s output.

    A new claim is a new run: it starts where the stream ends. Bytes already
    kept are not added again; a gap drops what was kept; the newest `keep`
    bytes stay."""
    base = kept.base
    if claim_id != kept.claim_id:
        base = kept.end
    at = base + offset
    start, data = kept.start, kept.data
    end = start + len(data)
    if at > end:  # a gap: what came before is dropped
        start, data = at, chunk
    elif at + len(chunk) > end:
        data = data + chunk[end - at :]
    if len(data) > keep:
        start, data = start + len(data) - keep, data[len(data) - keep :]
    return Kept(claim_id, base, start, data)


def window(kept: Kept, offset: int | None, limit: int) -> tuple[int, bytes]:
    """What a reader gets: from `offset` (None: the last `limit` bytes), at
    most `limit` bytes; (where that text starts, the text). An offset
    before the kept text starts at the kept text."""
    if offset is None:
        offset = max(kept.start, kept.end - limit)
    offset = min(max(offset, kept.start), kept.end)
    begin = offset - kept.start
    return offset, kept.data[begin : begin + limit]


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
                    holder = conn.execute(_HOLDER, {"b_claim": claim_id}).first()
                    if holder is None or (owner is not None and not owner.owns(holder)):
                        raise Conflict(_GONE)
                    key = {"b_c": holder.cluster_id, "b_p": holder.proc_id, "b_w": which}
                    row = conn.execute(_KEPT, key).first()
                    before = Kept() if row is None else _kept(row)
                    after = place(before, claim_id, offset, chunk)
                    values = {
                        "claim_id": after.claim_id,
                        "base": after.base,
                        "start": after.start,
                        "data": after.data,
                        "updated_at": now,
                    }
                    if row is None:
                        conn.execute(
                            streams.insert().values(
                                cluster_id=holder.cluster_id,
                                proc_id=holder.proc_id,
                                which=which,
                                **values,
                            )
                        )
                    elif after != before:
                        conn.execute(_UPDATE.values(**values), key)
                return {"start": after.start, "end": after.end}
            except sa.exc.IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def read(self, cluster_id: int, proc_id: int, which: str) -> Kept:
        with self.shared.engine.connect() as conn:
            row = conn.execute(_READ, {"b_c": cluster_id, "b_p": proc_id, "b_w": which}).first()
        return Kept() if row is None else _kept(row)


def _kept(row: Any) -> Kept:
    return Kept(row.claim_id, int(row.base), int(row.start), bytes(row.data))


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
_WHERE = (
    streams.c.cluster_id == sa.bindparam("b_c"),
    streams.c.proc_id == sa.bindparam("b_p"),
    streams.c.which == sa.bindparam("b_w"),
)
_READ = sa.select(streams).where(*_WHERE)
_KEPT = _READ.with_for_update()
_UPDATE = streams.update().where(*_WHERE)
