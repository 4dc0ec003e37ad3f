"""Black-hole victims: jobs that failed on a broken node go back to idle as site failures.

A pilot that sees `black_hole_jobs` jobs fail within its window declares its
node a black hole (glidein/agent/policy.py). The jobs that failed quickly
there are not the users' failures but the node's, so they must run again
elsewhere, counted as site failures (NumRestarts/NumSiteFailures, held after
`max_job_restarts`) like the jobs of a pilot that was lost.

Design (docs/pool.md, "Black-hole victims"): the pilot *holds back* the
result of every quick failure for the window, while the failure could still
prove a black hole; to the pool such a job is still running under its claim
(the pilot's heartbeats renew it). Once the pilot declares a black hole it
names those claims in one call, and the pool requeues them as site failures;
a held result that never became a black hole goes to the pool as the job's
own failure when its window is over. So a job is never completed and then
reopened: a completion the user saw is final, and no job is completed twice.
If the call is lost, the pilot deregisters (its claims are requeued as site
failures anyway) or its leases run out: no job is lost either.

What a pilot may ask is bounded by what it could already do: it can only
name claims it holds now (its own pilot, from its token; the job still
running under that claim), at most `MAX_VICTIMS` per call, and only with a
non-zero exit code (a job that succeeded is no victim). A pilot that
vacates its jobs or deregisters gets them requeued as site failures too,
so the call gives no new power; it only says why.

`victims` is the pure decision; `requeue_victims` the thin I/O around it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from glidewms.pool.lifecycle import JobState
from glidewms.pool.pilots import PilotOwner, Pilots
from glidewms.pool.schema import jobs

MAX_VICTIMS = 64  # claims one black-hole call may name (more is a misbehaving pilot)


@dataclass(frozen=True)
class Victim:
    """What the pilot says of one held claim."""

    claim_id: str
    exit_code: int
    wall_seconds: float


def victims(
    pilot_id: str,
    reported: Sequence[Victim],
    held: Mapping[str, tuple[str | None, str]],
    detail: str,
) -> tuple[dict[str, str], dict[str, str]]:
    """Which reported claims to requeue and why; which are refused and why.

    ``held`` maps each reported claim the pool knows to (its pilot, its job's
    state). Returns ({claim: event reason}, {claim: refusal}). A claim is
    requeued only when it is this pilot's, its job still runs under it (not
    completed, not requeued already), and the pilot says it failed; a claim
    named twice counts once.
    """
    take: dict[str, str] = {}
    refused: dict[str, str] = {}
    for v in reported[:MAX_VICTIMS]:
        if v.claim_id in take or v.claim_id in refused:
            continue
        owner, state = held.get(v.claim_id, (None, ""))
        if owner != pilot_id:
            # a claim the pool forgot (its job completed or was requeued) looks the same
            refused[v.claim_id] = "not a claim this pilot holds"
        elif state != JobState.RUNNING:
            refused[v.claim_id] = f"the job is {state or 'gone'}, not running under this claim"
        elif v.exit_code == 0:
            refused[v.claim_id] = "exit code 0 is a success, not a black-hole victim"
        else:
            take[v.claim_id] = (
                f"black hole: pilot {pilot_id} ({detail or 'too many quick failures'}); "
                f"this job exited {v.exit_code} after {v.wall_seconds:.1f}s"
            )
    for v in reported[MAX_VICTIMS:]:
        refused.setdefault(v.claim_id, f"more than {MAX_VICTIMS} claims in one call")
    return take, refused


def requeue_victims(
    pilots: Pilots,
    pilot_id: str,
    reported: Iterable[Victim],
    detail: str,
    owner: PilotOwner | None = None,
) -> dict[str, Any]:
    """Requeue a black-hole pilot's victims as site failures, in one transaction.

    NotFound if the pilot is unknown or another's, PilotGone once it left: only
    the live pilot that holds the claims (or an admin) may name them.
    """
    reported = list(reported)
    now = time.time()
    shared = pilots.shared
    with shared.lock:
        moved = []
        with shared.engine.begin() as conn:
            pilots.live(conn, pilot_id, owner)
            ids = list({v.claim_id for v in reported[:MAX_VICTIMS]})
            held = {
                r.claim_id: (r.pilot_id, r.state)
                for r in conn.execute(
                    sa.select(jobs.c.claim_id, jobs.c.pilot_id, jobs.c.state).where(
                        jobs.c.claim_id.in_(ids)
                    )
                )
            }
            take, refused = victims(pilot_id, reported, held, detail)
            for claim_id, reason in take.items():
                moved += pilots._requeue(
                    conn,
                    sa.and_(jobs.c.claim_id == claim_id, jobs.c.pilot_id == pilot_id),
                    now,
                    reason,
                )
        for row, new_state in moved:
            shared.moved(row, new_state, now)
    done = {row.claim_id for row, _ in moved}
    for claim_id in set(take) - done:  # requeued meanwhile (its lease ran out)
        refused[claim_id] = "the job no longer runs under this claim"
    return {
        "requeued": sorted(done),
        "held": sorted(row.claim_id for row, state in moved if state is JobState.HELD),
        "refused": refused,
    }
